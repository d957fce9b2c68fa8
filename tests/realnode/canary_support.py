"""Helpers for tests/realnode/test_canary.py: real MNIST traffic through a Service that records
which version answered each request and whether it was right, and the operator as a process on
this machine (where the test's Prometheus, on 127.0.0.1, is reachable)."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Answer:
    at: float  # time.time()
    version: str
    correct: bool


@dataclass
class Traffic:
    """Real test digits, one per request, each on a new connection (kube-proxy picks an endpoint
    per connection, so the Service splits requests as it splits connections)."""

    host: str
    images: np.ndarray[Any, Any]
    labels: np.ndarray[Any, Any]
    clients: int = 4
    # A pause after each request: a new connection per request leaves a port in TIME_WAIT for a
    # minute, and unpaced (~400 requests/s) the client's ephemeral ports ran out (EADDRNOTAVAIL)
    # after about a minute. Paced, about 100 requests/s.
    pause: float = 0.03
    answers: list[Answer] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)
    failure_log: list[tuple[float, str]] = field(default_factory=list)  # (time.time(), what)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Traffic:
        for i in range(self.clients):
            thread = threading.Thread(target=self._run, args=(i,), daemon=True, name=f"traffic-{i}")
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)

    def _run(self, offset: int) -> None:
        i = offset
        while not self._stop.is_set():
            image, label = self.images[i % len(self.images)], int(self.labels[i % len(self.labels)])
            i += self.clients
            body = json.dumps(
                {
                    "inputs": [
                        {
                            "name": "images",
                            "shape": [1, 28, 28],
                            "datatype": "FP32",
                            "data": image.ravel().tolist(),
                        }
                    ]
                }
            )
            conn = http.client.HTTPConnection(self.host, 80, timeout=10)
            try:
                conn.request("POST", "/v2/models/mnist/infer", body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                payload = response.read()
            except (OSError, http.client.HTTPException) as exc:
                with self._lock:
                    self.failures[type(exc).__name__] += 1
                    self.failure_log.append((time.time(), f"{type(exc).__name__}: {exc}"))
                time.sleep(0.05)
                continue
            finally:
                conn.close()
            self._stop.wait(self.pause)
            if response.status != 200:
                with self._lock:
                    self.failures[f"HTTP {response.status}"] += 1
                continue
            answer = json.loads(payload)
            digit = int(np.argmax(answer["outputs"][0]["data"]))
            with self._lock:
                self.answers.append(Answer(time.time(), str(answer["model_version"]), digit == label))

    def between(self, start: float, end: float) -> list[Answer]:
        with self._lock:
            return [a for a in self.answers if start <= a.at <= end]


def shares(answers: list[Answer]) -> dict[str, float]:
    counts = Counter(a.version for a in answers)
    total = sum(counts.values()) or 1
    return {version: n / total for version, n in counts.items()}


def wrong_share(answers: list[Answer]) -> float:
    return sum(1 for a in answers if not a.correct) / max(len(answers), 1)


def parse_time(value: str) -> float:
    from datetime import UTC, datetime

    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
