"""Helpers for the operator's integration tests and their conftest (imported by path, like
tests/unit's; tests/integration/faults uses them too): `mnist-operator` as a subprocess
(`OperatorProcess`, started by the `op_start` fixture, a `StartOperator`, from
`started_operators`) and kubectl and API helpers for one namespace (`Kube`, the `op_kube`
fixture)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest
import yaml
from testkit import WaitTimeoutError, free_port, wait_for

from localcluster import OPERATOR_USER, REPO_ROOT, LocalCluster

T = TypeVar("T")


def mnist_model(name: str, **spec: Any) -> dict[str, Any]:
    """A MnistModel manifest (modelVersion "1" unless the spec says otherwise)."""
    return {
        "apiVersion": "aidevsecops.dev/v1alpha1",
        "kind": "MnistModel",
        "metadata": {"name": name},
        "spec": {"modelVersion": "1", **spec},
    }


class OperatorProcess:
    """`mnist-operator` in a subprocess, as it runs in its Deployment (but on 127.0.0.1)."""

    def __init__(
        self, cluster: LocalCluster, namespaces: list[str], log_path: Path, env: dict[str, str]
    ) -> None:
        self.cluster = cluster
        self.log_path = log_path
        self.health_port = free_port()
        self.metrics_port = free_port()
        pythonpath = os.pathsep.join([str(REPO_ROOT / "operator"), os.environ.get("PYTHONPATH", "")])
        self.env = {
            **os.environ,
            "KUBECONFIG": str(cluster.operator_kubeconfig),
            "PYTHONPATH": pythonpath,
            "MNIST_OPERATOR_NAMESPACES": ",".join(namespaces),
            "MNIST_OPERATOR_BIND_ADDRESS": "127.0.0.1",
            "MNIST_OPERATOR_HEALTH_PORT": str(self.health_port),
            "MNIST_OPERATOR_METRICS_PORT": str(self.metrics_port),
            "MNIST_OPERATOR_IMAGE": "mnist-server:test",
            "MNIST_OPERATOR_DISCOVERY_TTL_SECONDS": "2",
            # The test's own Lease: operators of different tests never stand by for each other,
            # and two started for one namespace are two replicas of one install.
            "MNIST_OPERATOR_LEADER_ELECTION_NAMESPACE": namespaces[0] if namespaces else "",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mnist_operator.main"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(self.healthy, f"the operator's liveness endpoint (log: {self.log_path})", timeout=30)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def identity(self) -> str:
        """Its name as the Lease's holder and in its user agent (mnist_operator.leader)."""
        assert self.proc is not None
        return f"{socket.gethostname()}@{self.proc.pid}"

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def leading(self) -> bool:
        return self.metric("mnist_operator_leader") == 1

    def healthy(self) -> bool:
        if not self.alive():
            pytest.fail(f"the operator exited with {self.proc and self.proc.returncode}:\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGCONT)  # a test may have frozen it
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
            return str(resp.read().decode())

    def metric(self, name: str, labels: str = "") -> float:
        """Sum of a metric's samples whose label set contains `labels` (e.g. 'result="success"')."""
        total = 0.0
        for line in self.metrics().splitlines():
            if (line.startswith(name + "{") or line.startswith(name + " ")) and labels in line:
                total += float(line.rsplit(" ", 1)[1])
        return total

    def log_tail(self, lines: int = 60) -> str:
        with contextlib.suppress(FileNotFoundError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


class StartOperator(Protocol):
    """The `op_start` fixture: start `mnist-operator` watching these namespaces, with extra
    settings as keyword arguments (`workers="2"` is MNIST_OPERATOR_WORKERS=2), as the cluster's
    `mnist-operator` user or with another kubeconfig."""

    def __call__(self, *namespaces: str, kubeconfig: Path | None = None, **env: str) -> OperatorProcess: ...


@contextlib.contextmanager
def started_operators(
    cluster: LocalCluster, log_dir: Path, request: pytest.FixtureRequest
) -> Iterator[StartOperator]:
    """The `op_start` fixture: operators a test starts are stopped after it, and their logs shown
    when it failed (the conftest's makereport hook sets `rep_call`)."""
    started: list[OperatorProcess] = []

    def start(*namespaces: str, kubeconfig: Path | None = None, **env: str) -> OperatorProcess:
        log = log_dir / f"operator-{len(started)}.log"
        settings = {f"MNIST_OPERATOR_{k.upper()}": v for k, v in env.items()}
        if kubeconfig is not None:
            settings["KUBECONFIG"] = str(kubeconfig)
        process = OperatorProcess(cluster, list(namespaces), log, settings)
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.stop()
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        for process in started:
            print(f"--- operator log {process.log_path} ---\n{process.log_tail(200)}")


class Kube:
    """kubectl and API helpers for one namespace."""

    wait_for = staticmethod(wait_for)

    def __init__(self, cluster: LocalCluster, namespace: str) -> None:
        self.cluster = cluster
        self.namespace = namespace

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.cluster.kubectl("-n", self.namespace, *args, input=input, check=check)

    def apply(self, obj: dict[str, Any] | str) -> None:
        text = obj if isinstance(obj, str) else yaml.safe_dump(obj)
        self.kubectl("apply", "-f", "-", input=text)

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        done = self.kubectl("get", kind, name, "-o", "json", "--ignore-not-found")
        return json.loads(done.stdout) if done.stdout.strip() else None

    def merge_patch(self, kind: str, name: str, patch: dict[str, Any]) -> None:
        self.kubectl("patch", kind, name, "--type=merge", "-p", json.dumps(patch))

    def model(self, name: str) -> dict[str, Any]:
        body = self.get("mnistmodel", name)
        assert body is not None, f"MnistModel {name} not found"
        return body

    def conditions(self, name: str) -> dict[str, dict[str, Any]]:
        return {c["type"]: c for c in (self.model(name).get("status") or {}).get("conditions") or []}

    def wait_ready(self, name: str, *, version: str | None = None, timeout: float = 90.0) -> dict[str, Any]:
        last: dict[str, Any] = {}

        def ready() -> dict[str, Any] | None:
            body = self.model(name)
            last["body"] = body
            status = body.get("status") or {}
            conds = {c["type"]: c for c in status.get("conditions") or []}
            ok = (
                conds.get("Ready", {}).get("status") == "True"
                and status.get("observedGeneration") == body["metadata"]["generation"]
                and (version is None or status.get("modelVersion") == version)
            )
            return body if ok else None

        what = f"MnistModel {name} Ready" + (f" serving {version}" if version else "")
        try:
            return wait_for(ready, what, timeout)
        except WaitTimeoutError as exc:
            # Whether the operator gave up, is behind, or reports what it sees: the status says which.
            try:
                seen = self.describe(last.get("body"))
            except subprocess.CalledProcessError as error:  # the API server is down, say: keep the timeout
                seen = f"(could not describe it: {error})"
            raise WaitTimeoutError(f"{exc}; last seen: {seen}") from None

    def describe(self, body: dict[str, Any] | None) -> str:
        """A model's generation, status, Deployment and pods in one line, for a failed wait's message."""
        if body is None:
            return "nothing read"
        status = body.get("status") or {}
        conditions = "; ".join(
            f"{c['type']}={c['status']} {c.get('reason', '')}: {c.get('message', '')}"
            for c in status.get("conditions") or []
        )
        name = body["metadata"]["name"]
        deployment = self.get("deployment", name) or {}
        listed = self.kubectl("get", "pods", "-l", f"app.kubernetes.io/instance={name}", "-o", "json")
        pods = ", ".join(
            f"{pod['metadata']['name']} {pod['status'].get('phase')} on {pod['spec'].get('nodeName')}"
            for pod in json.loads(listed.stdout)["items"]
        )
        return (
            f"generation {body['metadata'].get('generation')}, observedGeneration "
            f"{status.get('observedGeneration')}, conditions [{conditions}], Deployment spec.replicas "
            f"{(deployment.get('spec') or {}).get('replicas')} status {deployment.get('status')}, "
            f"pods [{pods}]"
        )

    def wait_condition(
        self, name: str, type_: str, status: str, reason: str | None = None, timeout: float = 60.0
    ) -> dict[str, Any]:
        def match() -> dict[str, Any] | None:
            cond = self.conditions(name).get(type_) or {}
            ok = cond.get("status") == status and (reason is None or cond.get("reason") == reason)
            return cond if ok else None

        return wait_for(match, f"{name}: {type_}={status} {reason or ''}", timeout)

    def wait_gone(self, kind: str, name: str, timeout: float = 60.0) -> None:
        wait_for(lambda: self.get(kind, name) is None, f"{kind}/{name} to be deleted", timeout)

    def wait_exists(self, kind: str, name: str, timeout: float = 60.0) -> dict[str, Any]:
        return wait_for(lambda: self.get(kind, name), f"{kind}/{name} to exist", timeout)

    def events(self, name: str) -> list[tuple[str, str, str]]:
        done = self.kubectl("get", "events", "--field-selector", f"involvedObject.name={name}", "-o", "json")
        return [
            (e["type"], e["reason"], e["message"])
            for e in json.loads(done.stdout)["items"]
            if e["involvedObject"]["kind"] == "MnistModel"
        ]

    def operator_writes(self, since: datetime, user: str = OPERATOR_USER) -> list[dict[str, Any]]:
        """Write requests the operator's identity made in this namespace since `since` (audit log)."""

        def mine(event: dict[str, Any]) -> bool:
            when = datetime.fromisoformat(event["requestReceivedTimestamp"].replace("Z", "+00:00"))
            return (
                event.get("user", {}).get("username") == user
                and event.get("objectRef", {}).get("namespace") == self.namespace
                and when >= since
            )

        return self.cluster.audit_events(mine)


# ----- fixtures and a hook shared by the conftests that run the operator (operator/, faults/);
# each conftest imports them, and provides `cluster` and `mnist_crd` at the scope it needs.


def install_mnist_crd(cluster: LocalCluster) -> str:
    cluster.kubectl("apply", "-k", str(REPO_ROOT / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "crd/mnistmodels.aidevsecops.dev", "--timeout=60s")
    return "mnistmodels.aidevsecops.dev"


@pytest.fixture
def op_start(
    cluster: LocalCluster, mnist_crd: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[StartOperator]:
    with started_operators(cluster, tmp_path, request) as start:
        yield start


@pytest.fixture
def op_kube(cluster: LocalCluster, namespace: str, mnist_crd: str) -> Kube:
    return Kube(cluster, namespace)


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Each phase's report on the item (rep_setup, rep_call), so fixtures can tell a failed test."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{report.when}", report)
