"""The canary strategy on the real node: real pods, real MNIST traffic through the model's
Service, a real Prometheus scraping the pods, and the operator judging by them.

- a good new version (the image's quick model 2, trained normally) is promoted through every step,
  the traffic each side answered is measured against its weight, and an operator restarted in the
  middle of a step resumes it (same step, same window);
- a bad version, trained on shuffled labels and fetched from an HTTP server on the node's bridge
  address (spec.source), answers every request with HTTP 200 but guesses: it is rolled back by the
  behaviour check alone, and users saw wrong answers only from the canary's share;
- a slow version (its pods throttled to 20m of CPU) is rolled back by the latency check alone.

The operator runs as a process on this machine (as in tests/integration/operator), so that it
reaches the test's Prometheus on 127.0.0.1; Prometheus finds the pods through the Service's
EndpointSlices (tests/realnode/test_monitoring.py's discovery and relabelling).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from demo import OPERATOR_NAMESPACE
from integration.monitoring.monitoring_support import Prometheus, running_prometheus
from integration.operator.operator_support import OperatorProcess, install_mnist_crd
from realnode.canary_support import Traffic, parse_time, shares, wrong_share
from realnode.realnode_support import Digits, apply, get, mnist_model, routed_cluster_ip
from realnode.test_monitoring import EndpointsDiscovery, scrape_config
from storage_servers import ArchiveServer
from testkit import wait_for

from localcluster import LocalCluster, node
from localcluster.images import Images
from mnist_server.publish import publish

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from canary_models import train_canary_models

pytestmark = pytest.mark.slow
log = logging.getLogger(__name__)

STABLE_REPLICAS = 3
PAUSE = 30
# One canary pod beside three (25 %), then three beside three (50 %).
STEPS = [{"weight": 25, "pauseSeconds": PAUSE}, {"weight": 50, "pauseSeconds": PAUSE}]
# The measured share of requests a side answered, against the share of ready pods it has: each
# new connection goes to a random endpoint (kube-proxy, iptables), so over ~1,000 requests the
# share's standard deviation is about 1.4 points.
SPLIT_TOLERANCE = 0.07


@dataclass
class Setup:
    cluster: LocalCluster
    namespace: str
    prometheus: Prometheus
    operator: OperatorProcess
    images: Images
    log_dir: Path

    def model(self) -> dict[str, Any]:
        return get(self.cluster, self.namespace, "mnistmodel", "digits")

    def canary(self) -> dict[str, Any]:
        state: dict[str, Any] = (self.model().get("status") or {}).get("canary") or {}
        return state

    def wait_canary(self, version: str, timeout: float = 240, **wanted: Any) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            state = self.canary()
            ok = state.get("version") == version and all(state.get(k) == v for k, v in wanted.items())
            return state if ok else None

        return wait_for(reached, f"the canary of {version} with {wanted}", timeout=timeout, interval=0.5)

    def restart_operator(self) -> None:
        self.operator.stop()
        self.operator = start_operator(
            self.cluster, self.namespace, self.prometheus, self.images, self.log_dir
        )


def start_operator(
    cluster: LocalCluster, namespace: str, prometheus: Prometheus, images: Images, log_dir: Path
) -> OperatorProcess:
    env = {
        "MNIST_OPERATOR_IMAGE": images.server,
        "MNIST_OPERATOR_PROMETHEUS_URL": prometheus.url,
        "MNIST_OPERATOR_LEADER_ELECTION": "false",
        "MNIST_OPERATOR_ALLOWED_TOLERATIONS": "*",  # the real node's taint
    }
    log_path = log_dir / f"operator-{time.monotonic_ns()}.log"
    return OperatorProcess(cluster, [namespace], log_path, env).start()


@pytest.fixture
def setup(rn_cluster: LocalCluster, rn_images: Images, rn_namespace: str, tmp_path: Path) -> Iterator[Setup]:
    deployed = rn_cluster.kubectl(
        "get", "deployment", "mnist-operator", "-n", OPERATOR_NAMESPACE, "--ignore-not-found", "-o", "json"
    ).stdout
    if deployed.strip() and json.loads(deployed)["spec"].get("replicas", 1) > 0:
        pytest.skip("an in-cluster operator runs here: it would reconcile this test's models too")
    install_mnist_crd(rn_cluster)
    discovery = EndpointsDiscovery(rn_cluster, rn_namespace)
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [scrape_config(discovery)],
    }
    with discovery, running_prometheus(config, tmp_path) as prometheus:
        operator = start_operator(rn_cluster, rn_namespace, prometheus, rn_images, tmp_path)
        running = Setup(rn_cluster, rn_namespace, prometheus, operator, rn_images, tmp_path)
        try:
            yield running
        finally:
            running.operator.stop()
            print(f"--- operator log ---\n{running.operator.log_tail(80)}")


def canary_model(version: str, **spec: Any) -> dict[str, Any]:
    return mnist_model(
        "digits",
        version,
        replicas=STABLE_REPLICAS,
        rollout={
            "strategy": "Canary",
            "canary": {"steps": STEPS, "analysis": {"minRequests": 200}},
        },
        **spec,
    )


def start_stable(setup: Setup, digits: Digits) -> Traffic:
    apply(setup.cluster, setup.namespace, canary_model("1"))
    wait_for(
        lambda: (
            (setup.model().get("status") or {}).get("modelVersion") == "1"
            and any(
                c["type"] == "Ready" and c["status"] == "True" for c in setup.model()["status"]["conditions"]
            )
        ),
        "version 1 Ready",
        timeout=240,
    )
    ip = routed_cluster_ip(setup.cluster, setup.namespace, "digits")

    def scraped() -> bool:
        up = setup.prometheus.query(f'count(up{{namespace="{setup.namespace}"}} == 1)')
        return bool(up) and int(up[0]["value"][1]) == STABLE_REPLICAS

    wait_for(scraped, "Prometheus scraping the three stable pods", timeout=60)
    return Traffic(ip, digits.images, digits.labels)


def test_a_good_version_is_promoted_through_every_step_with_the_traffic_split_measured(
    setup: Setup, rn_digits: Digits
) -> None:
    with start_stable(setup, rn_digits) as traffic:
        time.sleep(5)
        changed = time.time()
        apply(setup.cluster, setup.namespace, canary_model("2"))
        step1 = setup.wait_canary("2", step=1, phase="Progressing", timeout=120)
        step1 = wait_for(
            lambda: setup.canary().get("stepStartedAt") and setup.canary(), "step 1's window", 180
        )
        started1 = parse_time(step1["stepStartedAt"])
        # An operator restart in the middle of the step: the same step and window afterwards.
        time.sleep(PAUSE / 3)
        setup.restart_operator()
        resumed = setup.canary()
        assert (resumed["step"], resumed["stepStartedAt"]) == (1, step1["stepStartedAt"])
        step2 = setup.wait_canary("2", step=2, timeout=PAUSE + 60)
        ended1 = parse_time(step2["analyzedAt"])
        window1 = traffic.between(started1 + 2, ended1 - 1)
        step2 = wait_for(
            lambda: setup.canary().get("stepStartedAt") and setup.canary(), "step 2's window", 180
        )
        started2 = parse_time(step2["stepStartedAt"])
        promoted = setup.wait_canary("2", phase="Promoted", timeout=PAUSE + 60)
        window2 = traffic.between(started2 + 2, parse_time(promoted["analyzedAt"]) - 1)
        wait_for(
            lambda: (setup.model().get("status") or {}).get("modelVersion") == "2",
            "the stable Deployment serving version 2",
            timeout=240,
        )
        done = time.time()
    checks1 = {c["name"]: c for c in step2["checks"]}
    checks2 = {c["name"]: c for c in promoted["checks"]}
    share1, share2 = shares(window1).get("2", 0), shares(window2).get("2", 0)
    report = {
        "step1_trafficWeight": resumed["trafficWeight"],
        "step1_measured_canary_share": round(share1, 3),
        "step1_requests": len(window1),
        "step2_trafficWeight": promoted["trafficWeight"],
        "step2_measured_canary_share": round(share2, 3),
        "step2_requests": len(window2),
        "checks_step1": {k: v.get("canary") for k, v in checks1.items()},
        "checks_step2": {k: v.get("canary") for k, v in checks2.items()},
        "change_to_promoted_s": round(parse_time(promoted["analyzedAt"]) - changed, 1),
        "change_to_served_s": round(done - changed, 1),
        "failures": dict(traffic.failures),
        "answers": len(traffic.answers),
    }
    print("\ncanary (good version):", json.dumps(report))
    assert resumed["trafficWeight"] == 25 and promoted["trafficWeight"] == 50
    assert abs(share1 - 0.25) <= SPLIT_TOLERANCE, report
    assert abs(share2 - 0.50) <= SPLIT_TOLERANCE, report
    assert all(c["result"] == "Pass" for c in step2["checks"] + promoted["checks"]), report
    # The window judged after the restart is the step's whole window, counted once: the
    # canary's requests Prometheus saw are about those the clients got from it.
    canary_seen = len([a for a in traffic.between(started1, ended1) if a.version == "2"])
    assert checks1["requests"]["canary"] == pytest.approx(canary_seen, rel=0.25), report
    assert not traffic.failures, report
    ready = next(c for c in setup.model()["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"


@pytest.fixture(scope="module")
def guessing_version(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ArchiveServer, str]]:
    """Version 3, trained on shuffled labels, published to an HTTP server pods can reach."""
    root = tmp_path_factory.mktemp("guessing")
    models = train_canary_models(root, good=(), bad="3")
    assert models.accuracy["3"] < 0.3, models.accuracy
    web = ArchiveServer(tmp_path_factory.mktemp("web"), host=node.NODE_IP).start()
    try:
        published = publish(root / "mnist" / "3", f"{web.url}/")
        yield web, published.sha256
    finally:
        web.stop()


def test_a_version_that_guesses_is_rolled_back_by_the_behaviour_check_alone(
    setup: Setup, rn_digits: Digits, guessing_version: tuple[ArchiveServer, str]
) -> None:
    web, digest = guessing_version
    with start_stable(setup, rn_digits) as traffic:
        time.sleep(5)
        before = traffic.between(0, time.time())
        source = {"sha256": digest, "http": {"url": f"{web.url}/mnist-3.tar.gz"}}
        apply(setup.cluster, setup.namespace, canary_model("3", source=source))
        started = wait_for(
            lambda: setup.canary().get("stepStartedAt") and setup.canary(), "step 1's window", 240
        )
        rolled_back = setup.wait_canary("3", phase="RolledBack", timeout=PAUSE + 60)
        ended = parse_time(rolled_back["analyzedAt"])
        window = traffic.between(parse_time(started["stepStartedAt"]), ended)
        time.sleep(10)  # the canary's pods are gone: every answer is the stable version's again
        after = traffic.between(ended + 5, time.time())
    checks = {c["name"]: c for c in rolled_back["checks"]}
    report = {
        "step": rolled_back["step"],
        "trafficWeight": rolled_back["trafficWeight"],
        "checks": {k: (v.get("canary"), v.get("result")) for k, v in checks.items()},
        "canary_share": round(shares(window).get("3", 0), 3),
        "wrong_answers_during_step": round(wrong_share(window), 3),
        "wrong_answers_before": round(wrong_share(before), 3),
        "wrong_answers_after": round(wrong_share(after), 3),
        "canary_wrong": round(wrong_share([a for a in window if a.version == "3"]), 3),
        "failures": dict(traffic.failures),
        "failures_seconds_after_verdict": sorted({round(t - ended) for t, _ in traffic.failure_log}),
        "failure_kinds": sorted({what for _, what in traffic.failure_log})[:5],
    }
    print("\ncanary (guessing version):", json.dumps(report))
    assert rolled_back["step"] == 1
    assert checks["errorRate"]["result"] == "Pass" and checks["p99LatencySeconds"]["result"] == "Pass"
    assert checks["confidenceDivergence"]["result"] == "Fail", report
    assert "3" not in shares(after), report
    # Users saw the guesses only from the canary's share: the wrong answers during the step are
    # about the canary's share of its (mostly wrong) answers plus the stable version's few.
    share = shares(window).get("3", 0)
    assert share <= 0.25 + SPLIT_TOLERANCE, report
    assert wrong_share(window) <= share + wrong_share(before) + 0.03, report
    assert not traffic.failures, report
    model = setup.model()
    ready = next(c for c in model["status"]["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "CanaryRolledBack" and model["status"]["modelVersion"] == "1"
    stable = get(setup.cluster, setup.namespace, "deployment", "digits")
    assert stable["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/version"] == "1"


def test_a_slow_version_is_rolled_back_by_the_latency_check(setup: Setup, rn_digits: Digits) -> None:
    """Version 2 again, but its pods get a fiftieth of a CPU (the stable pods are not touched, so
    only the canary runs with it): the kernel throttles it, and its p99 exceeds the 50 ms this
    model allows, while the stable version answers in a few milliseconds."""
    analysis = {"minRequests": 200, "maxP99LatencySeconds": 0.05}
    slow = {"requests": {"cpu": "20m", "memory": "256Mi"}, "limits": {"cpu": "20m", "memory": "1Gi"}}
    with start_stable(setup, rn_digits) as traffic:
        model = canary_model("1")
        model["spec"]["rollout"]["canary"]["analysis"] = analysis
        apply(setup.cluster, setup.namespace, model)
        time.sleep(5)
        model = canary_model("2", resources=slow)
        model["spec"]["rollout"]["canary"]["analysis"] = analysis
        apply(setup.cluster, setup.namespace, model)
        rolled_back = setup.wait_canary("2", phase="RolledBack", timeout=PAUSE + 400)
    checks = {c["name"]: c for c in rolled_back["checks"]}
    report = {
        "step": rolled_back["step"],
        "checks": {k: (v.get("canary"), v.get("stable"), v.get("result")) for k, v in checks.items()},
        "failures": dict(traffic.failures),
    }
    print("\ncanary (slow version):", json.dumps(report))
    assert rolled_back["step"] == 1, report
    failed = {name for name, c in checks.items() if c["result"] == "Fail"}
    assert "p99LatencySeconds" in failed and failed <= {"p99LatencySeconds", "errorRate"}, report
    assert checks["p99LatencySeconds"]["stable"] < 0.05, report
    stable = get(setup.cluster, setup.namespace, "deployment", "digits")
    assert "limits" not in stable["spec"]["template"]["spec"]["containers"][0]["resources"] or (
        stable["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"].get("cpu") is None
    )
