"""Request bodies for the benchmark, built from real MNIST test images.

Each payload set is a directory that ``bench/wrk/requests.lua`` reads: ``index.tsv`` lists the
body files and their headers. Pixel values are written the way a Python client writes them
(``json.dumps`` of ``image.tolist()``): full float precision, no rounding to flatter the server.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

JSON = "application/json"
BINARY_HEADER = "Inference-Header-Content-Length"


@dataclass(frozen=True)
class PayloadSet:
    name: str
    directory: Path
    images_per_request: int
    description: str


def _write_set(directory: Path, bodies: list[tuple[bytes, dict[str, str]]]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    lines = []
    for index, (body, headers) in enumerate(bodies):
        name = f"{index:04d}.body"
        (directory / name).write_bytes(body)
        lines.append("\t".join([name, *(f"{key}: {value}" for key, value in headers.items())]))
    (directory / "index.tsv").write_text("\n".join(lines) + "\n")


def _tutorial(images: np.ndarray) -> bytes:
    value: Any = images[0].tolist() if len(images) == 1 else images.tolist()
    return json.dumps({"inputs": value}).encode()


def _v2_json(images: np.ndarray) -> bytes:
    tensor = {
        "name": "images",
        "shape": list(images.shape),
        "datatype": "FP32",
        "data": images.ravel().tolist(),
    }
    return json.dumps({"inputs": [tensor]}).encode()


def _v2_binary(images: np.ndarray) -> tuple[bytes, dict[str, str]]:
    raw = np.ascontiguousarray(images, dtype="<f4").tobytes()
    tensor = {
        "name": "images",
        "shape": list(images.shape),
        "datatype": "FP32",
        "parameters": {"binary_data_size": len(raw)},
    }
    header = json.dumps({"inputs": [tensor]}).encode()
    return header + raw, {"Content-Type": "application/octet-stream", BINARY_HEADER: str(len(header))}


def build(images: np.ndarray, root: Path, count: int = 64, batch: int = 64) -> dict[str, PayloadSet]:
    """Payload sets of ``count`` distinct requests each: single images and batches of ``batch``."""
    singles = [images[i : i + 1] for i in range(count)]
    batches = [images[(i * batch) % (len(images) - batch) :][:batch] for i in range(max(8, count // 8))]
    json_headers = {"Content-Type": JSON}
    specs: list[tuple[str, list[np.ndarray], str, Any]] = [
        ("tutorial-1", singles, "/predict JSON, one 28x28 image", lambda x: (_tutorial(x), json_headers)),
        ("tutorial-64", batches, f"/predict JSON, {batch} images", lambda x: (_tutorial(x), json_headers)),
        ("v2-1", singles, "v2 JSON, one image (flat data)", lambda x: (_v2_json(x), json_headers)),
        ("v2-64", batches, f"v2 JSON, {batch} images", lambda x: (_v2_json(x), json_headers)),
        ("v2bin-1", singles, "v2 binary tensor extension, one image", _v2_binary),
        ("v2bin-64", batches, f"v2 binary tensor extension, {batch} images", _v2_binary),
    ]
    sets = {}
    for name, groups, description, encode in specs:
        directory = root / name
        _write_set(directory, [encode(group) for group in groups])
        sets[name] = PayloadSet(name, directory, int(groups[0].shape[0]), description)
    return sets


def body_size(payload: PayloadSet) -> int:
    """Mean body size in bytes (for the report)."""
    sizes = [p.stat().st_size for p in payload.directory.glob("*.body")]
    return sum(sizes) // max(1, len(sizes))
