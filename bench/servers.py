"""A server under test as a process: started in a process group of its own and stopped as one,
whatever happens; requests to it (the payloads' bodies over urllib), waiting until it answers,
and a check that it classifies real test images."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import payloads
from devkit import wait_for
from host import python_env
from scenarios import ServerSpec

READY_TIMEOUT_S = 300.0
SANITY_IMAGES = 64


@contextmanager
def started(spec: ServerSpec, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            spec.command,
            env={**python_env(), **spec.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stopped as one, workers included
        )
        try:
            yield process
        finally:
            stop(process)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=40)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    except ProcessLookupError:
        pass


def first_body(payload: payloads.PayloadSet) -> tuple[bytes, dict[str, str]]:
    return bodies(payload)[0]


def bodies(payload: payloads.PayloadSet) -> list[tuple[bytes, dict[str, str]]]:
    out = []
    for line in (payload.directory / "index.tsv").read_text().splitlines():
        name, *header_fields = line.split("\t")
        headers = dict(field.split(": ", 1) for field in header_fields)
        out.append(((payload.directory / name).read_bytes(), headers))
    return out


def post(url: str, body: bytes, headers: dict[str, str], timeout: float = 30) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, b""


def wait_ready(
    process: subprocess.Popen[bytes],
    url: str,
    body: bytes,
    headers: dict[str, str],
    ready_url: str | None = None,
) -> float:
    """Seconds until the server answers `body` at `url` with a 200 and, with `ready_url`, a GET
    there with a 200 too (an error if it exits first)."""
    started_at = time.monotonic()

    def answered() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode} before it was ready")
        if post(url, body, headers, timeout=10)[0] != 200:
            return False
        return ready_url is None or get_status(ready_url) == 200

    wait_for(answered, f"the server to answer {url}", READY_TIMEOUT_S, interval=0.5)
    return time.monotonic() - started_at


def get_status(url: str, timeout: float = 10) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0


def settle(url: str, probe: payloads.PayloadSet, timeout_s: float = 120.0) -> None:
    """Wait until the server answers a fresh request: requests a previous run left queued (wrk
    stops without waiting for them) must not steal time from the next run."""
    body, headers = first_body(probe)
    wait_for(
        lambda: post(url, body, headers, timeout=timeout_s)[0] == 200,
        f"the server to answer {url} after the last run",
        timeout_s,
        interval=0.5,
    )


def predicted_digits(payload_name: str, response: bytes) -> list[int]:
    data = json.loads(response)
    if "outputs" in data:  # v2
        output = data["outputs"][0]
        return [int(d) for d in np.asarray(output["data"]).reshape(output["shape"]).argmax(axis=1)]
    if "predictions" in data:
        return [int(p["prediction"]) for p in data["predictions"]]
    return [int(data["prediction"])]


def sanity_accuracy(url: str, payload: payloads.PayloadSet, labels: np.ndarray) -> float:
    """Accuracy on the payload's first images: each server must be serving the same, real model."""
    correct = 0
    sample = bodies(payload)[:SANITY_IMAGES]
    for index, (body, headers) in enumerate(sample):
        status, response = post(url, body, headers)
        if status != 200:
            raise RuntimeError(f"sanity request {index} got HTTP {status}: {response[:300]!r}")
        correct += predicted_digits(payload.name, response)[0] == int(labels[index])
    return correct / len(sample)
