"""Helpers for the real-node tests: installing the operator in-cluster, MnistModels that land on
the real node, real predictions through a Service's ClusterIP, and steady client load."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from demo import OPERATOR_NAMESPACE, install_in_cluster
from testkit import WaitTimeoutError, wait_for, wait_until_ok

from localcluster import LocalCluster, node
from localcluster.images import Images

# Set by tests/conftest.py before the first test: the built images, or why they did not build.
IMAGES_KEY = pytest.StashKey[Images]()
IMAGE_ERROR_KEY = pytest.StashKey[str]()


@dataclass(frozen=True, eq=False)
class Digits:
    images: np.ndarray[Any, Any]  # float32 [n, 28, 28] in [0, 1]
    labels: np.ndarray[Any, Any]  # [n] 0..9


@dataclass(frozen=True)
class OperatorInstall:
    kustomization: Path
    pods: list[str]
    seconds_to_ready: float


def install_operator(cluster: LocalCluster, images: Images, workdir: Path) -> OperatorInstall:
    """The shipped install, as `make demo` does it (hack/demo.py)."""
    started = time.monotonic()
    pods = install_in_cluster(cluster, images, workdir)
    return OperatorInstall(workdir, pods, time.monotonic() - started)


def uninstall_operator(cluster: LocalCluster, install: OperatorInstall) -> None:
    """Stop the in-cluster operator (the CRD and RBAC stay, as after any uninstall of the operator)."""
    cluster.kubectl("delete", "deployment", "mnist-operator", "-n", OPERATOR_NAMESPACE, "--wait=true",
                    "--timeout=60s", check=False)  # fmt: skip


def mnist_model(name: str, version: str = "1", *, replicas: int = 1, **spec: Any) -> dict[str, Any]:
    """An MnistModel whose pods run on the real node."""
    return {
        "apiVersion": "aidevsecops.dev/v1alpha1",
        "kind": "MnistModel",
        "metadata": {"name": name},
        "spec": {
            "modelVersion": version,
            "replicas": replicas,
            "nodeSelector": dict(node.NODE_SELECTOR),
            "tolerations": [dict(node.TOLERATION)],
            **spec,
        },
    }


def apply(cluster: LocalCluster, namespace: str, doc: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(doc))


def get(cluster: LocalCluster, namespace: str, kind: str, name: str) -> dict[str, Any]:
    return dict(json.loads(cluster.kubectl("get", kind, name, "-n", namespace, "-o", "json").stdout))


def condition(model: dict[str, Any], kind: str = "Ready") -> dict[str, Any]:
    for c in model.get("status", {}).get("conditions", []):
        if c.get("type") == kind:
            return dict(c)
    return {}


def wait_condition(cluster: LocalCluster, namespace: str, name: str, status: str, *,
                   reason: str | None = None, timeout: float = 180.0) -> dict[str, Any]:  # fmt: skip
    def probe() -> dict[str, Any] | None:
        model = get(cluster, namespace, "mnistmodel", name)
        ready = condition(model)
        if ready.get("status") == status and (reason is None or ready.get("reason") == reason):
            return model
        return None

    what = f"MnistModel {namespace}/{name} Ready={status}" + (f" ({reason})" if reason else "")
    try:
        return wait_for(probe, what, timeout=timeout, interval=0.5)
    except WaitTimeoutError:
        last = condition(get(cluster, namespace, "mnistmodel", name))
        pods = cluster.kubectl("get", "pods", "-n", namespace, "-o", "wide", check=False).stdout
        pytest.fail(f"{what}: last Ready condition {last}\n{pods}")


def pods_of(cluster: LocalCluster, namespace: str, name: str) -> list[dict[str, Any]]:
    out = cluster.kubectl(
        "get", "pods", "-n", namespace, "-l", f"app.kubernetes.io/instance={name}", "-o", "json"
    )
    return list(json.loads(out.stdout)["items"])


def routed_cluster_ip(cluster: LocalCluster, namespace: str, name: str, timeout: float = 60) -> str:
    """The Service's ClusterIP, once it routes to a ready pod. The operator's Ready follows the
    Deployment's available pods; kube-proxy programs the Service's endpoints after that (about a
    second; longer on a busy node with many Services), and until then the ClusterIP refuses
    connections. Clients of a new model meet the same gap."""
    ip = str(get(cluster, namespace, "service", name)["spec"]["clusterIP"])
    wait_until_ok(f"http://{ip}/readyz", f"the Service {namespace}/{name} routing to a ready pod", timeout)
    return ip


def predict(host: str, images: np.ndarray[Any, Any], port: int = 80, batch: int = 50) -> np.ndarray[Any, Any]:
    """Digits predicted through the tutorial's /predict, in batches, over one connection."""
    conn = http.client.HTTPConnection(host, port, timeout=30)
    predictions: list[int] = []
    try:
        for start in range(0, len(images), batch):
            body = json.dumps({"inputs": images[start : start + batch].tolist()})
            conn.request("POST", "/predict", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            payload = json.loads(response.read())
            assert response.status == 200, payload
            predictions += [int(p) for p in payload["predictions"]]
    finally:
        conn.close()
    return np.array(predictions)


@dataclass
class LoadResult:
    ok: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    versions: Counter[str] = field(default_factory=Counter)
    # (monotonic time, served model version) of every answered request.
    timeline: list[tuple[float, str]] = field(default_factory=list)
    # (monotonic time, what failed) of every failure: when they happened tells why.
    failure_times: list[tuple[float, str]] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return sum(self.failures.values())


class SteadyLoad:
    """Clients sending real single-image v2 inference requests, each over a keep-alive
    connection that reconnects when the server says `Connection: close` (as HTTP clients do).
    Every error, refused connection or non-200 is a failure; nothing is retried."""

    def __init__(self, host: str, image: np.ndarray[Any, Any], *, clients: int = 6, port: int = 80) -> None:
        self.host, self.port = host, port
        self.body = json.dumps(
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
        self.result = LoadResult()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]
        self.started = 0.0
        self.seconds = 0.0

    def __enter__(self) -> SteadyLoad:
        self.started = time.monotonic()
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)
        self.seconds = time.monotonic() - self.started

    @property
    def rate(self) -> float:
        return self.result.ok / max(self.seconds, 1e-9)

    def _run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while not self._stop.is_set():
            if conn is None:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
            try:
                conn.request(
                    "POST", "/v2/models/mnist/infer", self.body, {"Content-Type": "application/json"}
                )
                response = conn.getresponse()
                payload = response.read()
                closing = response.getheader("Connection", "").lower() == "close"
            except (OSError, http.client.HTTPException) as e:
                self._record(failure=type(e).__name__)
                conn.close()
                conn = None
                continue
            if response.status == 200:
                self._record(version=str(json.loads(payload).get("model_version")))
            else:
                self._record(failure=f"HTTP {response.status}")
            if closing:
                conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def _record(self, *, version: str | None = None, failure: str | None = None) -> None:
        with self._lock:
            if failure is not None:
                self.result.failures[failure] += 1
                self.result.failure_times.append((time.monotonic(), failure))
            else:
                assert version is not None
                self.result.ok += 1
                self.result.versions[version] += 1
                self.result.timeline.append((time.monotonic(), version))
