"""Helpers shared by the monitoring conftest and tests (imported by path, like tests/unit's)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests
import yaml
from testkit import free_port, wait_for

SERVER_SCRIPT = Path(sys.executable).parent / "mnist-server"

# How the Prometheus operator would label the model server's target (from the ServiceMonitor the
# operator makes for MnistModel ml/mnist-demo) and the operator's target.
MODEL_TARGET_LABELS = {"namespace": "ml", "service": "mnist-demo", "pod": "mnist-demo-5c9f7-x2x4k"}
OPERATOR_TARGET_LABELS = {"namespace": "mnist-operator-system", "pod": "mnist-operator-6b7d9-q8f2m"}

T = TypeVar("T")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@dataclass
class Prometheus:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        result: list[dict[str, Any]] = data["result"] if data["resultType"] == "vector" else []
        return result


PROMETHEUS = shutil.which("prometheus")


@contextlib.contextmanager
def running_prometheus(config: dict[str, Any], work: Path) -> Iterator[Prometheus]:
    """/usr/bin/prometheus with `config` on a free 127.0.0.1 port and a data dir in `work`,
    ready (/-/ready) when this yields, stopped after; skips the test where it is not installed."""
    if PROMETHEUS is None:
        pytest.skip("prometheus is not installed (bash .ci/run installs it)")
    (work / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    log_path = work / "prometheus.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [PROMETHEUS, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT, cwd=work,
        )  # fmt: skip
    prometheus = Prometheus(f"http://127.0.0.1:{port}", process, log_path)

    def ready() -> bool | None:
        if process.poll() is not None:
            pytest.fail(f"prometheus exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{prometheus.url}/-/ready", timeout=2) as response:
                return True if response.status == 200 else None
        except (urllib.error.URLError, OSError):
            return None

    try:
        wait_for(ready, "prometheus /-/ready", timeout=60)
        yield prometheus
    finally:
        stop(process)


def start_model_server(
    root: Path, version: str, log: Path, *, ready: bool = True
) -> tuple[str, subprocess.Popen[bytes]]:
    """mnist-server (one worker) serving `version` from `root` on a free port, once /readyz says it
    is ready (or, with `ready=False`, once it says the model failed to load); logs to `log`."""
    port = free_port()
    env = {
        **os.environ,
        "MNIST_SERVER_MODEL_ROOT": str(root),
        "MNIST_SERVER_MODEL_VERSION": version,
        "MNIST_SERVER_HOST": "127.0.0.1",
        "MNIST_SERVER_PORT": str(port),
        "MNIST_SERVER_WORKERS": "1",
    }
    with log.open("wb") as out:
        process = subprocess.Popen([str(SERVER_SCRIPT)], env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool | None:
        if process.poll() is not None:
            pytest.fail(f"mnist-server exited with {process.returncode}:\n{log.read_text()}")
        try:
            answer = requests.get(f"{url}/readyz", timeout=2)
        except requests.RequestException:
            return None
        if not ready:  # a model that cannot load: up, but failed (503 load_failed)
            return True if answer.status_code == 503 and "load_failed" in answer.text else None
        return True if answer.status_code == 200 else None

    wait_for(healthy, f"mnist-server version {version} /readyz", timeout=180, interval=0.3)
    return url, process
