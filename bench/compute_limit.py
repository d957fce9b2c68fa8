"""The compute limit: the model's throughput in-process, no HTTP, batched, through one backend.

``python bench/compute_limit.py <version dir> <backend> [--seconds S]`` prints one JSON line:
images/s and seconds per call at several batch sizes, with the backend's default threads (all
cores) - the most this machine can classify, which the HTTP figures are compared against.
Run once per backend, each in a fresh process, so one backend's thread pools cannot slow another.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "model_server"))

import numpy as np

from mnist_server.backends import ONNX_FILE, open_runner
from mnist_server.data import load_mnist

BATCH_SIZES = (1, 16, 64, 256)


def measure(call: Callable[[np.ndarray], np.ndarray], images: np.ndarray, seconds: float) -> dict[str, float]:
    for _ in range(3):
        call(images)
    calls, started = 0, time.perf_counter()
    deadline = started + seconds
    while True:
        call(images)
        calls += 1
        now = time.perf_counter()
        if now >= deadline and calls >= 5:
            break
    elapsed = now - started
    return {
        "batch": len(images),
        "images_per_s": calls * len(images) / elapsed,
        "ms_per_call": 1000 * elapsed / calls,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("version_dir", type=Path)
    parser.add_argument("backend")
    parser.add_argument("--seconds", type=float, default=3.0, help="per batch size (%(default)s)")
    args = parser.parse_args()
    test = load_mnist().test.images
    runner = open_runner(args.backend, args.version_dir)
    points = []
    for size in BATCH_SIZES:
        images = np.ascontiguousarray(test[:size])
        points.append({**measure(runner, images, args.seconds), "config": "default threads"})
    if args.backend == "onnx":
        # The limit is the best this machine does, not what the server's settings do: also try
        # one thread, and pool threads that spin between calls (the server's runner does not).
        from mnist_server.backends.onnx import OnnxRunner

        for threads, spin in ((1, False), (None, True)):
            tuned = OnnxRunner(args.version_dir / ONNX_FILE, threads, spin=spin)
            config = f"{threads or 'default'} thread(s), {'spinning' if spin else 'no spinning'}"
            for size in BATCH_SIZES[-2:]:
                images = np.ascontiguousarray(test[:size])
                points.append({**measure(tuned, images, args.seconds), "config": config})
    best = max(points, key=lambda p: cast(float, p["images_per_s"]))
    print(json.dumps({"backend": args.backend, "points": points, "best": best}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
