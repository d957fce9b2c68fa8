"""Which threads decode request bodies: image uploads THREADS of them, large JSON one (small JSON
and v2 binary tensors stay on the event loop: test_server_v2_binary.py)."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from server_support import image_with_digit
from test_server_app import png_bytes

from mnist_server import app as app_module
from mnist_server.app import INLINE_DECODE_BYTES
from mnist_server.protocols import tutorial
from mnist_server.settings import Settings


def test_uploads_are_decoded_on_the_decoding_threads_and_large_json_on_a_thread_of_its_own(
    server_make_app: Callable[..., Any],
    server_fake_model: Any,
    server_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Parsing JSON holds the GIL throughout, so large JSON bodies take one thread; the image
    decoders release it for much of their work, so uploads get THREADS."""
    settings = dataclasses.replace(server_settings, threads=3, max_batch=64, max_body_bytes=1 << 20)
    app = server_make_app(server_fake_model, settings)
    seen: dict[str, set[str]] = {"upload": set(), "json": set()}

    def recorded(kind: str, parse: Callable[..., Any]) -> Callable[..., Any]:
        def parse_and_record(*args: Any) -> Any:
            seen[kind].add(threading.current_thread().name)
            return parse(*args)

        return parse_and_record

    monkeypatch.setattr(app_module, "images_from_upload", recorded("upload", app_module.images_from_upload))
    monkeypatch.setattr(tutorial, "parse_request", recorded("json", tutorial.parse_request))
    digit = png_bytes((image_with_digit(3) * 255).round().astype(np.uint8))
    body = json.dumps({"inputs": np.zeros((64, 28, 28)).tolist()})
    assert len(body) > INLINE_DECODE_BYTES
    with app.test_client() as client:
        for _ in range(12):
            assert client.post("/predict", data=digit, content_type="image/png").status_code == 200
            assert client.post("/predict", data=body, content_type="application/json").status_code == 200
    assert seen["json"] == {"decode-json_0"}
    assert seen["upload"] and all(name.startswith("decode_") for name in seen["upload"])
    assert app._decoder(upload=True)._max_workers == 3
