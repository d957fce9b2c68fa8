"""A worst-case corpus for the server's memory: the largest requests it accepts, and the costliest
ones it must refuse, in every format (used by ``bench/run.py`` and tests/e2e/test_server_memory.py).

``python bench/worst_case.py URL WORKER_PID`` sends the corpus from ``--clients`` threads (twice
``MNIST_SERVER_THREADS`` by default, so every decoding thread is busy) for ``--rounds`` rounds and
prints the worker's peak RSS (VmHWM) before and after as JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

JSON = {"Content-Type": "application/json"}
MAX_BODY = 4 * 1024 * 1024  # the server's default MNIST_SERVER_MAX_BODY_BYTES


@dataclass(frozen=True)
class Case:
    name: str
    path: str
    body: bytes
    headers: dict[str, str]


def _png(array: np.ndarray, **options: Any) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", **options)
    return buffer.getvalue()


def _jpeg(array: np.ndarray, **options: Any) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", **options)
    return buffer.getvalue()


def _canvas(side: int, channels: int, rng: np.random.Generator) -> np.ndarray:
    # Smooth with a little noise: compresses to well under the body limit, yet decodes to the
    # whole canvas.
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    base = (ramp[:, None] + ramp[None, :]) / 2
    noise = rng.integers(0, 4, (side, side), dtype=np.uint8)
    gray = (base.astype(np.uint8) // 8 * 8) + noise
    return gray if channels == 1 else np.repeat(gray[:, :, None], channels, axis=2)


def corpus(max_batch: int = 128, max_body: int = MAX_BODY, seed: int = 0) -> list[Case]:
    """The largest accepted image of each kind, the largest JSON and v2 bodies, and bodies that
    would be costly to parse if they were not refused first."""
    rng = np.random.default_rng(seed)
    images = rng.random((max_batch, 28, 28))
    palette = _canvas(2048, 1, rng) // 16
    cases = [
        Case("png-2048-rgba", "/predict", _png(_canvas(2048, 4, rng)), {"Content-Type": "image/png"}),
        Case(
            "png-2048-gray16",
            "/predict",
            _png(_canvas(2048, 1, rng).astype(np.uint16) * 257),  # mode I;16
            {"Content-Type": "image/png"},
        ),
        Case("png-2048-palette", "/predict", _palette_png(palette), {"Content-Type": "image/png"}),
        Case(
            "jpeg-4096-baseline",
            "/predict",
            _jpeg(_canvas(4096, 3, rng), quality=30),
            {"Content-Type": "image/jpeg"},
        ),
        Case(
            "jpeg-2048-progressive-444",
            "/predict",
            _jpeg(_canvas(2048, 3, rng), quality=50, progressive=True, subsampling=0),
            {"Content-Type": "image/jpeg"},
        ),
        Case("json-tutorial-max-batch", "/predict", json.dumps({"inputs": images.tolist()}).encode(), JSON),
        Case(
            "json-tfserving-objects",
            "/v1/models/mnist:predict",
            json.dumps({"instances": [{"images": image} for image in images.tolist()]}).encode(),
            JSON,
        ),
        Case("json-v2-max-batch", "/v2/models/mnist/infer", _v2(images), JSON),
        Case("v2-binary-max-batch", "/v2/models/mnist/infer", *_v2_binary(images)),
        # Refused before parsing: 4 MiB of small JSON values would cost >100 MiB as objects.
        Case("json-small-objects", "/predict", _fill(b'{"inputs": [', b"{},", b"{}]}", max_body), JSON),
        Case("json-small-numbers", "/predict", _fill(b'{"inputs": [', b"0,", b"0]}", max_body), JSON),
        Case("json-empty-arrays", "/predict", _fill(b'{"inputs": [', b"[],", b"[]]}", max_body), JSON),
        Case("json-one-object-many-keys", "/predict", _many_keys(max_body), JSON),
        Case("json-deep-nesting", "/predict", b"[" * (max_body // 2 - 1) + b"]" * (max_body // 2 - 1), JSON),
        Case("json-huge-string", "/predict", b'{"inputs": "' + b"x" * (max_body - 20) + b'"}', JSON),
        Case(
            "v2-binary-oversize-batch",
            "/v2/models/mnist/infer",
            *_v2_binary(rng.random((max_body // 3200, 28, 28))),
        ),
    ]
    return [case for case in cases if len(case.body) <= max_body]


def _palette_png(indices: np.ndarray) -> bytes:
    from PIL import Image

    image = Image.fromarray(indices.astype(np.uint8), mode="L").convert("P")
    image.info["transparency"] = 0
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", transparency=0)
    return buffer.getvalue()


def _fill(head: bytes, item: bytes, tail: bytes, size: int) -> bytes:
    return head + item * ((size - len(head) - len(tail)) // len(item)) + tail


def _many_keys(size: int) -> bytes:
    count = (size - 40) // 14
    return b'{"inputs": 0, ' + b",".join(b'"k%09d":0' % i for i in range(count)) + b"}"


def _v2(images: np.ndarray) -> bytes:
    tensor = {
        "name": "images",
        "shape": list(images.shape),
        "datatype": "FP64",
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
    return header + raw, {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def send(url: str, case: Case, timeout: float = 60) -> int:
    request = urllib.request.Request(url + case.path, data=case.body, headers=case.headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as error:
        error.read()
        return int(error.code)
    except (urllib.error.URLError, ConnectionError):
        # Refused while still sending: past the worker's body budget the server answers 503 and
        # closes the connection without reading the rest.
        return 0


def run(
    url: str,
    pid: int,
    cases: list[Case],
    *,
    clients: int,
    rounds: int,
    on_result: Callable[[str, int], None],
) -> dict[str, Any]:
    """Send every case ``rounds`` times from ``clients`` threads at once (each starting at a
    different case); the worker's peak RSS before and after, and what each case got."""
    before = {"rss_mb": rss_mb(pid), "peak_rss_mb": peak_rss_mb(pid)}
    errors: list[BaseException] = []
    started = time.monotonic()

    def client(offset: int) -> None:
        try:
            for round_ in range(rounds):
                for index in range(len(cases)):
                    case = cases[(index + offset + round_) % len(cases)]
                    on_result(case.name, send(url, case))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(offset,)) for offset in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return {
        "clients": clients,
        "rounds": rounds,
        "seconds": time.monotonic() - started,
        "before": before,
        "after": {"rss_mb": rss_mb(pid), "peak_rss_mb": peak_rss_mb(pid)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("url")
    parser.add_argument("pid", type=int, help="the worker process")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    statuses: dict[str, set[int]] = {}
    lock = threading.Lock()

    def record(name: str, status: int) -> None:
        with lock:
            statuses.setdefault(name, set()).add(status)

    cases = corpus()
    result = run(args.url, args.pid, cases, clients=args.clients, rounds=args.rounds, on_result=record)
    result["statuses"] = {name: sorted(codes) for name, codes in statuses.items()}
    result["sizes"] = {case.name: len(case.body) for case in cases}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
