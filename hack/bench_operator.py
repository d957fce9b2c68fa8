"""Benchmark the MnistModel operator on the local control plane (not a test).

Measures, with `mnist-operator` running as a subprocess against a real API server and kwok nodes:
- time from create to Ready for one MnistModel;
- time until all of N MnistModels (default 200; the issue's figure is 1,000) created at once are
  Ready (and the spread);
- the operator's resident memory once those N are Ready, after idle resyncs, and its peak;
- API writes the operator makes while creating them, and during idle resyncs (should be none;
  each resync now starts with the authoritative relist, so this includes its reads).

    python hack/bench_operator.py [--models 1000] [--state-dir DIR] [--json FILE]

Without --state-dir it starts (and afterwards stops) its own cluster in a temporary directory;
with --state-dir it attaches to a cluster started by `make cluster-up`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from devkit import free_port, wait_for

from localcluster import NODE_ANNOTATION, OPERATOR_USER, REPO_ROOT, LocalCluster

PODS_PER_NODE = 110


class Operator:
    def __init__(self, cluster: LocalCluster, namespace: str, log: Path, resync_seconds: float) -> None:
        self.metrics_port = free_port()
        self.health_port = free_port()
        env = {
            **os.environ,
            "KUBECONFIG": str(cluster.operator_kubeconfig),
            "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "operator"), os.environ.get("PYTHONPATH", "")]),
            "MNIST_OPERATOR_NAMESPACES": namespace,
            "MNIST_OPERATOR_BIND_ADDRESS": "127.0.0.1",
            "MNIST_OPERATOR_METRICS_PORT": str(self.metrics_port),
            "MNIST_OPERATOR_HEALTH_PORT": str(self.health_port),
            "MNIST_OPERATOR_RESYNC_SECONDS": str(resync_seconds),
            "MNIST_OPERATOR_LOG_LEVEL": "warning",
        }
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mnist_operator.main"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(self._healthy, "the operator's liveness endpoint", 30, interval=0.1)

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"the operator exited with {self.proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def metric(self, name: str) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
            lines = resp.read().decode().splitlines()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in lines
            if line.startswith(name + "{") or line.startswith(name + " ")
        )

    def rss_mib(self, field: str = "VmRSS") -> float:
        """Resident memory now (VmRSS), or its peak so far (VmHWM)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no {field}")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@contextmanager
def a_cluster(state_dir: Path | None) -> Iterator[LocalCluster]:
    if state_dir is not None:
        yield LocalCluster.attach(state_dir)
        return
    with tempfile.TemporaryDirectory(prefix="bench-operator-") as tmp:
        cluster = LocalCluster(Path(tmp), bound_to_parent=True)
        cluster.start()
        try:
            yield cluster
        finally:
            cluster.stop()


def ensure_nodes(cluster: LocalCluster, pods: int) -> None:
    """Enough fake nodes for `pods` pods (kwok nodes hold 110 pods, like real ones by default)."""
    capacity = {"cpu": "64", "memory": "512Gi", "pods": str(PODS_PER_NODE), "ephemeral-storage": "1Ti"}
    needed = -(-pods // PODS_PER_NODE) + 1
    for i in range(1, needed):
        name = f"kwok-bench-{i}"
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {NODE_ANNOTATION[0]: NODE_ANNOTATION[1]},
                "labels": {"kubernetes.io/hostname": name, "type": "kwok"},
            },
            "status": {"capacity": capacity, "allocatable": capacity},
        }
        status, body = cluster.request("POST", "/api/v1/nodes", node)
        if status not in (201, 409):
            raise RuntimeError(f"creating node {name}: {status} {body}")

    def all_ready() -> bool:
        nodes = json.loads(cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]
        ready = [
            n
            for n in nodes
            if any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"].get("conditions", []))
        ]
        return len(ready) >= needed

    wait_for(all_ready, f"{needed} ready nodes", 60, 0.5)


def model(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "aidevsecops.dev/v1alpha1",
        "kind": "MnistModel",
        "metadata": {"name": name},
        "spec": {"modelVersion": "1"},
    }


def ready_names(cluster: LocalCluster, namespace: str) -> set[str]:
    status, body = cluster.request(
        "GET", f"/apis/aidevsecops.dev/v1alpha1/namespaces/{namespace}/mnistmodels"
    )
    if status != 200:
        raise RuntimeError(f"listing MnistModels: {status}")
    out = set()
    for item in body["items"]:
        status_ = item.get("status") or {}
        if status_.get("observedGeneration") != item["metadata"]["generation"]:
            continue
        if any(c["type"] == "Ready" and c["status"] == "True" for c in status_.get("conditions") or []):
            out.add(item["metadata"]["name"])
    return out


def wait_all_ready(cluster: LocalCluster, namespace: str, count: int, started: float) -> dict[str, float]:
    """When each of the `count` models first turned Ready, in seconds after `started`."""
    first_ready: dict[str, float] = {}
    budget = max(600.0, 1.2 * count)
    deadline = started + budget
    poll = 0.25 if count <= 200 else 1.0  # listing 1,000 models costs the API server too
    while len(first_ready) < count and time.monotonic() < deadline:
        now = time.monotonic() - started
        for name in ready_names(cluster, namespace) - {"single"} - set(first_ready):
            first_ready[name] = now
        time.sleep(poll)
    if len(first_ready) < count:
        raise TimeoutError(f"only {len(first_ready)} of {count} models Ready after {budget:.0f} s")
    return first_ready


def operator_lag(cluster: LocalCluster, namespace: str) -> dict[str, float]:
    """How long after its Deployment turned Available each model turned Ready (1 s resolution):
    the operator's own share of the time to Ready, apart from the controllers' and kwok's."""

    def since(conditions: list[dict[str, Any]], type_: str) -> datetime:
        (cond,) = [c for c in conditions if c["type"] == type_]
        return datetime.fromisoformat(cond["lastTransitionTime"].replace("Z", "+00:00"))

    deployments = json.loads(cluster.kubectl("-n", namespace, "get", "deployments", "-o", "json").stdout)[
        "items"
    ]
    available = {d["metadata"]["name"]: since(d["status"]["conditions"], "Available") for d in deployments}
    models = json.loads(cluster.kubectl("-n", namespace, "get", "mnistmodels", "-o", "json").stdout)["items"]
    lags = sorted(
        (since(m["status"]["conditions"], "Ready") - available[m["metadata"]["name"]]).total_seconds()
        for m in models
    )
    return {
        "ready_after_available_p50_seconds": statistics.median(lags),
        "ready_after_available_max_seconds": lags[-1],
    }


def operator_writes(cluster: LocalCluster, namespace: str, since: datetime) -> int:
    def mine(event: dict[str, Any]) -> bool:
        when = datetime.fromisoformat(event["requestReceivedTimestamp"].replace("Z", "+00:00"))
        return (
            event.get("user", {}).get("username") == OPERATOR_USER
            and event.get("objectRef", {}).get("namespace") == namespace
            and when >= since
        )

    return len(cluster.audit_events(mine))


def measure_idle(
    cluster: LocalCluster, operator: Operator, namespace: str, count: int, resync: float
) -> dict[str, Any]:
    """Two resync rounds over every model, nothing changed: they must write nothing."""
    results: dict[str, Any] = {}
    # Idle: two resync rounds over every model must write nothing.
    reconciles = operator.metric("mnist_operator_reconciles_total")
    writes_before = operator.metric("mnist_operator_api_writes_total")
    since = datetime.now(UTC)
    wait_for(
        lambda: operator.metric("mnist_operator_reconciles_total") >= reconciles + 2 * (count + 1),
        "two idle resyncs",
        4 * resync + 60 + 0.2 * count,
        0.5,
    )
    results["idle_resync_reconciles"] = int(operator.metric("mnist_operator_reconciles_total") - reconciles)
    results["idle_resync_writes"] = int(operator.metric("mnist_operator_api_writes_total") - writes_before)
    time.sleep(1)
    results["idle_resync_audit_writes"] = operator_writes(cluster, namespace, since)
    results["rss_mib_after_resync"] = round(operator.rss_mib(), 1)
    results["rss_mib_peak"] = round(operator.rss_mib("VmHWM"), 1)
    return results


def run(cluster: LocalCluster, count: int, work: Path, resync: float) -> dict[str, Any]:
    cluster.kubectl("apply", "-k", str(REPO_ROOT / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "crd/mnistmodels.aidevsecops.dev", "--timeout=60s")
    ensure_nodes(cluster, count + 10)
    namespace = f"bench-{int(time.time())}"
    cluster.kubectl("create", "namespace", namespace)
    operator = Operator(cluster, namespace, work / "operator.log", resync)
    results: dict[str, Any] = {"models": count}
    try:
        # One model: create to Ready.
        started = time.monotonic()
        status, body = cluster.request(
            "POST", f"/apis/aidevsecops.dev/v1alpha1/namespaces/{namespace}/mnistmodels", model("single")
        )
        if status != 201:
            raise RuntimeError(f"create: {status} {body}")
        wait_for(lambda: "single" in ready_names(cluster, namespace), "one model Ready", 60, 0.05)
        results["one_model_ready_seconds"] = round(time.monotonic() - started, 2)

        # N models at once: concurrent creates (kubectl would pace them at its client-side 5 QPS).
        since = datetime.now(UTC)
        writes_before = operator.metric("mnist_operator_api_writes_total")
        cpu_before = operator.cpu_seconds()
        reconciles_before = operator.metric("mnist_operator_reconciles_total")
        reconcile_seconds_before = operator.metric("mnist_operator_reconcile_duration_seconds_sum")
        path = f"/apis/aidevsecops.dev/v1alpha1/namespaces/{namespace}/mnistmodels"
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=16) as pool:
            codes = list(
                pool.map(lambda i: cluster.request("POST", path, model(f"m-{i:04d}"))[0], range(count))
            )
        if set(codes) != {201}:
            raise RuntimeError(f"creates answered {sorted(set(codes))}")
        created = time.monotonic() - started
        times = sorted(wait_all_ready(cluster, namespace, count, started).values())
        results.update(
            {
                "create_seconds": round(created, 2),
                "all_ready_seconds": round(times[-1], 1),
                "p50_ready_seconds": round(statistics.median(times), 1),
                "p95_ready_seconds": round(times[int(0.95 * (count - 1))], 1),
                "rss_mib_at_all_ready": round(operator.rss_mib(), 1),
                "operator_cpu_seconds_to_all_ready": round(operator.cpu_seconds() - cpu_before, 1),
            }
        )
        reconciles = operator.metric("mnist_operator_reconciles_total") - reconciles_before
        busy = operator.metric("mnist_operator_reconcile_duration_seconds_sum") - reconcile_seconds_before
        results["reconciles_per_model"] = round(reconciles / count, 1)
        results["mean_reconcile_ms"] = round(1000 * busy / max(reconciles, 1), 1)
        results.update(operator_lag(cluster, namespace))
        time.sleep(3)  # the last status writes and events
        writes = operator.metric("mnist_operator_api_writes_total") - writes_before
        results["writes_per_model"] = round(writes / count, 2)
        results["audit_writes_per_model"] = round(operator_writes(cluster, namespace, since) / count, 2)

        results.update(measure_idle(cluster, operator, namespace, count, resync))
    finally:
        operator.stop()
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=1000, help="how many MnistModels to create at once")
    parser.add_argument("--state-dir", type=Path, help="attach to a cluster started by `make cluster-up`")
    parser.add_argument("--resync-seconds", type=float, default=10.0, help="the operator's resync period")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    with (
        tempfile.TemporaryDirectory(prefix="bench-operator-work-") as work,
        a_cluster(args.state_dir) as cluster,
    ):
        results = run(cluster, args.models, Path(work), args.resync_seconds)
    results["machine"] = f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}"
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
