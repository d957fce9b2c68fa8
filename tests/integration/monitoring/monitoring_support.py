"""Helpers shared by the monitoring conftest and tests (imported by path, like tests/unit's)."""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

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
