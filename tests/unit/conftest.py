"""Model server fixtures (all named ``server_*`` so other suites' fixtures cannot clash).

- ``server_fake_model``: a deterministic stand-in for the TensorFlow model (no TF import): it
  predicts digit ``round(mean pixel * 10)`` clipped to 0..9, with probability 0.91.
- ``server_registry``: a fresh CollectorRegistry per test.
- ``server_settings`` / ``server_client``: an app over the fake model with small limits.
- ``server_tiny_model_root`` (session): a tiny real Keras model exported with ``export_model``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client import CollectorRegistry
from testkit import tiny_keras_model

from mnist_server.app import create_app
from mnist_server.settings import Settings

sys.path.insert(0, str(Path(__file__).parent))
from server_support import SERVER_MAX_BATCH, SERVER_MAX_BODY, FakeModel


@pytest.fixture
def server_registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def server_settings(tmp_path: Path) -> Settings:
    return Settings(
        model_root=tmp_path,
        host="127.0.0.1",
        max_batch=SERVER_MAX_BATCH,
        max_body_bytes=SERVER_MAX_BODY,
    )


@pytest.fixture
def server_fake_model() -> FakeModel:
    model = FakeModel()
    model.load()
    return model


@pytest.fixture
def server_make_app(server_settings: Settings, server_registry: CollectorRegistry) -> Callable[..., Flask]:
    def make(model: Any, settings: Settings | None = None) -> Flask:
        app = create_app(settings or server_settings, model, server_registry)
        app.testing = True
        return app

    return make


@pytest.fixture
def server_app(server_make_app: Callable[..., Flask], server_fake_model: FakeModel) -> Flask:
    return server_make_app(server_fake_model)


@pytest.fixture
def server_client(server_app: Flask) -> Iterator[FlaskClient]:
    with server_app.test_client() as client:
        yield client


@pytest.fixture(scope="session")
def server_tiny_model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<root>/mnist/1``: a tiny Keras model (seeded, untrained) exported by ``export_model``."""
    from mnist_server.export import export_model

    model = tiny_keras_model(seed=3)
    root = tmp_path_factory.mktemp("server-models")
    export_model(model, root, "mnist", "1", {"purpose": "server unit tests"})
    np.save(root / "reference-input.npy", _reference_images())
    np.save(root / "reference-output.npy", model.predict(_reference_images(), verbose=0))
    return root


def _reference_images() -> np.ndarray:
    return np.random.default_rng(5).random((4, 28, 28), dtype=np.float32)
