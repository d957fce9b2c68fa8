"""Faults of the control plane and of the operator, injected for real (kill by pid, restart with
the same command line, admission and flow control configured in the API server), each followed
by the same checks (fault_support.py): every model converges, nothing is lost or duplicated, the
operator's writes stay bounded (audit log), and the operator never needed a restart."""

from __future__ import annotations

import math
import signal
import time
from datetime import UTC, datetime
from pathlib import Path

from demo import install_rbac, service_account_kubeconfig
from fault_support import (
    FailingWebhook,
    assert_converged,
    assert_never_restarted,
    create_models,
    flow_control,
    successful,
    tally,
    writes,
)
from operator_support import Kube, StartOperator, mnist_model, wait_for

from localcluster import LocalCluster

RESYNC = "10"
STORM = 20  # seconds


def per_model(events: list[dict[str, object]], count: int) -> float:
    return len(events) / count


def test_the_api_server_killed_mid_reconcile(
    cluster: LocalCluster, op_kube: Kube, op_start: StartOperator
) -> None:
    operator = op_start(op_kube.namespace, resync_seconds=RESYNC)
    pid = operator.proc.pid  # type: ignore[union-attr]
    since = datetime.now(UTC)
    names = create_models(op_kube, 20)
    wait_for(lambda: writes(op_kube, since), "the operator's first writes", 30, 0.05)
    cluster.kill("kube-apiserver")  # reconciles in flight
    time.sleep(12)  # past the renew deadline: the operator also stops leading, and must lead again
    cluster.restart("kube-apiserver")

    assert_converged(op_kube, names)
    assert_never_restarted(operator, pid)
    log = operator.log_path.read_text()
    assert log.index("lost the Lease") < log.rindex("holds the Lease")  # stood by, and led again
    done = successful(writes(op_kube, since))
    counts = tally(done)
    print("API server killed:", dict(counts))
    # Each child applied once, or twice where the killed server had done a write it never answered;
    # status patched a few times per model on its way to Ready.
    assert sum(n for k, n in counts.items() if k.startswith("patch deployments ")) <= 2 * len(names)
    assert sum(n for k, n in counts.items() if k.startswith("patch services ")) <= 2 * len(names)
    assert per_model(done, len(names)) <= 8


def test_etcd_restarted_while_models_change(
    cluster: LocalCluster, op_kube: Kube, op_start: StartOperator
) -> None:
    operator = op_start(op_kube.namespace, resync_seconds=RESYNC)
    pid = operator.proc.pid  # type: ignore[union-attr]
    names = create_models(op_kube, 10)
    assert_converged(op_kube, names)
    since = datetime.now(UTC)
    scaled = names[:5]
    for name in scaled:
        op_kube.kubectl("scale", "mnistmodel", name, "--replicas=2")
    cluster.kill("etcd")  # the operator is reconciling the scale-ups: its writes get 5xx
    time.sleep(8)
    cluster.restart("etcd")

    assert_converged(op_kube, names, replicas=dict.fromkeys(scaled, 2))
    assert_never_restarted(operator, pid)
    done = successful(writes(op_kube, since))
    print("etcd restarted:", dict(tally(done)))
    assert per_model(done, len(scaled)) <= 8  # a Deployment apply and a few status patches each


def test_the_operator_killed_between_two_child_applies(
    cluster: LocalCluster, op_kube: Kube, op_start: StartOperator
) -> None:
    """A quota refuses Services, so the first operator applies the Deployment and fails on the
    Service; SIGKILLed there, and the quota gone, its successor applies the Service only."""
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "no-services"},
        "spec": {"hard": {"services": "0"}},
    }
    op_kube.apply(quota)
    first = op_start(op_kube.namespace, resync_seconds=RESYNC)
    op_kube.apply(mnist_model("split"))
    op_kube.wait_exists("deployment", "split")
    op_kube.wait_condition("split", "Ready", "False", "Forbidden")
    assert op_kube.get("service", "split") is None
    first.signal(signal.SIGKILL)
    op_kube.kubectl("delete", "resourcequota", "no-services")
    since = datetime.now(UTC)

    second = op_start(op_kube.namespace, resync_seconds=RESYNC)
    pid = second.proc.pid  # type: ignore[union-attr]
    assert_converged(op_kube, ["split"], timeout=60)  # after the dead one's Lease expires
    assert_never_restarted(second, pid)
    counts = tally(successful(writes(op_kube, since)))
    print("operator killed between two applies:", dict(counts))
    assert counts["patch services 201"] == 1  # the Service, created once
    assert not any(k.startswith("patch deployments") for k in counts)  # the Deployment left alone
    assert sum(counts.values()) <= 4


def test_real_429s_from_api_priority_and_fairness(
    cluster: LocalCluster, op_kube: Kube, op_start: StartOperator, tmp_path: Path
) -> None:
    # As installed: the shipped RBAC's ServiceAccount (the cluster's mnist-operator user is in
    # system:masters, which API Priority and Fairness exempts).
    ns = op_kube.namespace
    account = install_rbac(cluster, ns, suffix=f"-{ns}"[:30], work=tmp_path / "rbac")
    kubeconfig = service_account_kubeconfig(cluster, ns, account, tmp_path / "operator.kubeconfig")
    user = f"system:serviceaccount:{ns}:{account}"
    undo = flow_control(cluster, f"tight-{ns}"[:60], ns, user)
    try:
        operator = op_start(ns, kubeconfig=kubeconfig, resync_seconds=RESYNC)
        pid = operator.proc.pid  # type: ignore[union-attr]
        since = datetime.now(UTC)
        names = create_models(op_kube, 30)
        assert_converged(op_kube, names, timeout=240)  # converging under the limit, not after it
    finally:
        undo()
    assert_never_restarted(operator, pid)
    events = writes(op_kube, since, user)
    counts = tally(events)
    print("throttled:", dict(counts))
    throttled = sum(n for k, n in counts.items() if k.endswith(" 429"))
    assert throttled > 0, "API Priority and Fairness rejected nothing: the limit was not tight"
    # Two applies and a few status patches per model, as without the limit; the 429s included,
    # backoff keeps the attempts few.
    assert per_model(successful(events), len(names)) <= 9
    assert per_model(events, len(names)) <= 16


def test_a_storm_of_5xx_answers(cluster: LocalCluster, op_kube: Kube, op_start: StartOperator) -> None:
    operator = op_start(op_kube.namespace, resync_seconds=RESYNC)
    pid = operator.proc.pid  # type: ignore[union-attr]
    webhook = FailingWebhook(cluster)
    with webhook.installed(f"storm-{op_kube.namespace}"[:60], op_kube.namespace):
        since = datetime.now(UTC)
        names = create_models(op_kube, 10)
        time.sleep(STORM)  # every write of the operator's fails
        failed = tally(writes(op_kube, since))
        webhook.failing = False
        assert_converged(op_kube, names, timeout=90)
    assert_never_restarted(operator, pid)
    events = writes(op_kube, since)
    counts = tally(events)
    print("5xx storm:", dict(counts), "webhook calls:", webhook.calls)
    assert sum(n for k, n in failed.items() if k.endswith(" 500")) >= len(names)
    assert per_model(successful(events), len(names)) <= 8
    # Each failed reconcile tries its three writes (Deployment, Service, status); reconciles come
    # with backoff (2, 4, 8, 16 s: 1 + log2(storm / 2) of them) and at each resync.
    tries = 1 + math.ceil(math.log2(STORM / 2)) + STORM / int(RESYNC)
    assert per_model(events, len(names)) <= 3 * tries + 8
