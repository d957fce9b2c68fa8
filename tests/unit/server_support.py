"""Test support for the model server's unit tests (imported by name: conftest adds this directory
to sys.path, since pytest's importlib mode does not make conftest itself importable)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from mnist_server.errors import ModelLoadError, NotReadyError
from mnist_server.model import Images, LoadState, Probabilities

SERVER_MAX_BATCH = 8
SERVER_MAX_BODY = 256 * 1024
FAKE_CONFIDENCE = 0.91


class FakeModel:
    """Implements ``mnist_server.model.Model``; ``fail_with`` makes ``load`` fail."""

    platform = "fake"

    def __init__(self, name: str = "mnist", version: str = "3", fail_with: str | None = None) -> None:
        self.name = name
        self.version = version
        self.metadata: Mapping[str, Any] = {"test_accuracy": 0.5}
        self.state = LoadState.PENDING
        self.state_message = "model not loaded yet"
        self.fail_with = fail_with
        self.calls: list[int] = []  # batch sizes seen by predict

    @property
    def ready(self) -> bool:
        return self.state is LoadState.READY

    def load(self) -> None:
        if self.fail_with:
            self.state, self.state_message = LoadState.FAILED, f"model failed to load: {self.fail_with}"
            raise ModelLoadError(self.state_message)
        self.state, self.state_message = LoadState.READY, ""

    def predict(self, images: Images) -> Probabilities:
        if not self.ready:
            raise NotReadyError(self.state_message)
        assert images.dtype == np.float32
        assert images.ndim == 3
        assert images.shape[1:] == (28, 28)
        self.calls.append(len(images))
        return fake_probabilities(images)


def fake_digits(images: np.ndarray) -> np.ndarray:
    means = np.asarray(images, dtype=np.float64).reshape(len(images), -1).mean(axis=1)
    return np.clip(np.rint(means * 10), 0, 9).astype(int)


def fake_probabilities(images: np.ndarray) -> np.ndarray:
    digits = fake_digits(images)
    probabilities = np.full((len(images), 10), (1 - FAKE_CONFIDENCE) / 9, dtype=np.float32)
    probabilities[np.arange(len(images)), digits] = FAKE_CONFIDENCE
    return probabilities


def image_with_digit(digit: int) -> np.ndarray:
    """A 28x28 image the fake model classifies as ``digit`` (its mean is digit / 10)."""
    return np.full((28, 28), digit / 10, dtype=np.float32)
