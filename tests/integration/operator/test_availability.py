"""Availability against the real control plane: the PodDisruptionBudget the operator makes is what
the API server's eviction checks hold a drain to, and replicas really spread over nodes.

Pods on kwok nodes become Ready, so the disruption controller counts them as healthy and the
eviction subresource answers exactly as it would on a real cluster: 201 while the budget allows,
429 once it does not.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localcluster import LocalCluster

sys.path.insert(0, str(Path(__file__).parent))
from operator_support import Kube, StartOperator

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

KWOK_ANNOTATION = {"kwok.x-k8s.io/node": "fake"}  # kwok plays the kubelet of such nodes


def mnist(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "aidevsecops.dev/v1alpha1",
        "kind": "MnistModel",
        "metadata": {"name": name},
        "spec": {"modelVersion": "1", **spec},
    }


def pods(op_kube: Kube, name: str) -> list[dict[str, Any]]:
    found = json.loads(
        op_kube.kubectl("get", "pods", "-l", f"app.kubernetes.io/instance={name}", "-o", "json").stdout
    )["items"]
    return [p for p in found if not p["metadata"].get("deletionTimestamp")]


def ready_pods(op_kube: Kube, name: str, count: int) -> list[dict[str, Any]] | None:
    found = [
        p
        for p in pods(op_kube, name)
        if any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions") or [])
    ]
    return found if len(found) == count else None


def evict(op_kube: Kube, pod: str) -> tuple[bool, str]:
    """POST the pod's eviction subresource, as `kubectl drain` does; (allowed, what the server said)."""
    eviction = {
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": pod, "namespace": op_kube.namespace},
    }
    done = op_kube.cluster.kubectl(
        "create",
        "--raw",
        f"/api/v1/namespaces/{op_kube.namespace}/pods/{pod}/eviction",
        "-f",
        "-",
        input=json.dumps(eviction),
        check=False,
    )
    return done.returncode == 0, done.stderr


def budget_allows(op_kube: Kube, name: str, allowed: int) -> dict[str, Any] | None:
    budget = op_kube.get("pdb", name)
    status = (budget or {}).get("status") or {}
    current = status.get("observedGeneration") == (budget or {}).get("metadata", {}).get("generation")
    return budget if current and status.get("disruptionsAllowed") == allowed else None


def test_an_eviction_that_would_break_the_budget_is_refused(op_kube: Kube, op_start: StartOperator) -> None:
    op_start(op_kube.namespace)
    op_kube.apply(mnist("guarded", replicas=2))
    model = op_kube.wait_ready("guarded")
    budget = op_kube.wait_for(
        lambda: budget_allows(op_kube, "guarded", 1), "the budget to allow 1 disruption"
    )
    assert budget["spec"]["maxUnavailable"] == 1
    assert budget["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert budget["metadata"]["ownerReferences"][0]["uid"] == model["metadata"]["uid"]

    first = op_kube.wait_for(lambda: ready_pods(op_kube, "guarded", 2), "2 ready pods")[0]["metadata"]["name"]
    allowed, said = evict(op_kube, first)  # what a drain does: the budget allows one pod
    assert allowed, said
    op_kube.wait_for(lambda: budget_allows(op_kube, "guarded", 1), "the replacement to restore the budget")

    # One pod stops being ready (kwok runs no containers: report what a kubelet would). The
    # budget now allows no disruption: evicting the ready pod would leave none, and the API
    # server refuses it ...
    broken, healthy = (p["metadata"]["name"] for p in ready_pods(op_kube, "guarded", 2) or [])
    unready = {"status": {"conditions": [{"type": "Ready", "status": "False"}]}}
    op_kube.kubectl("patch", "pod", broken, "--subresource=status", "--type=merge", "-p", json.dumps(unready))
    op_kube.wait_for(lambda: budget_allows(op_kube, "guarded", 0), "the budget to allow no disruption")
    allowed, said = evict(op_kube, healthy)
    assert not allowed
    assert "Cannot evict pod as it would violate the pod's disruption budget" in said, said
    # ... while the broken pod may always go: a crash-looping pod never blocks a node drain.
    allowed, said = evict(op_kube, broken)
    assert allowed, said
    op_kube.wait_ready("guarded")

    # Below 2 replicas there is no budget (it could only block drains or protect nothing) ...
    op_kube.kubectl("scale", "mnistmodel", "guarded", "--replicas=1")
    op_kube.wait_gone("pdb", "guarded", timeout=30)
    # ... and the spec can turn it off at any count.
    op_kube.merge_patch(
        "mnistmodel",
        "guarded",
        {"spec": {"replicas": 3, "availability": {"podDisruptionBudget": {"enabled": False}}}},
    )
    op_kube.wait_for(lambda: op_kube.get("deployment", "guarded")["spec"]["replicas"] == 3, "3 replicas")
    op_kube.wait_ready("guarded")
    assert op_kube.get("pdb", "guarded") is None


def test_autoscaled_models_get_a_budget_from_min_replicas_2(op_kube: Kube, op_start: StartOperator) -> None:
    op_start(op_kube.namespace)
    op_kube.apply(mnist("elastic", autoscaling={"minReplicas": 2, "maxReplicas": 4}))
    op_kube.wait_exists("pdb", "elastic")
    op_kube.merge_patch("mnistmodel", "elastic", {"spec": {"autoscaling": {"minReplicas": 1}}})
    op_kube.wait_gone("pdb", "elastic", timeout=30)


@pytest.fixture
def spare_nodes(cluster: LocalCluster) -> Iterator[list[str]]:
    """Two more kwok nodes in two zones (the cluster's own kwok node has no zone label)."""
    names = ["avail-node-a", "avail-node-b"]
    for name, zone in zip(names, ("zone-a", "zone-b"), strict=True):
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {**KWOK_ANNOTATION, "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "topology.kubernetes.io/zone": zone,
                    "type": "kwok",
                },
            },
            "spec": {},
        }
        cluster.kubectl("apply", "-f", "-", input=json.dumps(node))
    cluster.kubectl("wait", "--for=condition=Ready", *(f"node/{n}" for n in names), "--timeout=60s")
    try:
        yield names
    finally:
        cluster.kubectl("delete", "node", *names, "--ignore-not-found", "--wait=false", check=False)


def test_replicas_spread_over_nodes_and_a_drain_keeps_the_model_serving(
    op_kube: Kube, op_start: StartOperator, spare_nodes: list[str]
) -> None:
    op_start(op_kube.namespace)
    spread = {"topologySpread": {"nodes": "Required"}}
    op_kube.apply(mnist("spread", replicas=3, availability=spread))
    op_kube.wait_ready("spread")
    placed = op_kube.wait_for(lambda: ready_pods(op_kube, "spread", 3), "3 ready pods")
    nodes = [p["spec"]["nodeName"] for p in placed]
    assert len(set(nodes)) == 3, nodes  # one per node: a node going away takes one replica
    op_kube.wait_for(lambda: budget_allows(op_kube, "spread", 1), "the budget")

    # `kubectl drain` goes through the eviction API and so honours the budget; the model keeps
    # at least 2 of its 3 replicas available throughout, and ends up spread again.
    target = spare_nodes[0]
    try:
        done = op_kube.cluster.kubectl(
            "drain", target, "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=90s", check=False
        )
        assert done.returncode == 0, done.stderr
        op_kube.wait_ready("spread")
        placed = op_kube.wait_for(lambda: ready_pods(op_kube, "spread", 3), "3 ready pods after the drain")
        assert target not in {p["spec"]["nodeName"] for p in placed}
        assert op_kube.conditions("spread")["Available"]["status"] == "True"
    finally:
        op_kube.cluster.kubectl("uncordon", target, check=False)


BAD_AVAILABILITY = [
    (
        {"podDisruptionBudget": {"maxUnavailable": 0}},
        "spec.availability.podDisruptionBudget.maxUnavailable must be at least 1",
    ),
    (
        {"podDisruptionBudget": {"maxUnavailable": "0%"}},
        "spec.availability.podDisruptionBudget.maxUnavailable must be at least 1",
    ),
    ({"podDisruptionBudget": {"maxUnavailable": "half"}}, "percentage from 1% to 100%"),
    (
        {"topologySpread": {"nodes": "Always"}},
        'spec.availability.topologySpread.nodes: Unsupported value: "Always"',
    ),
    ({"topologySpread": {"zones": False}}, "spec.availability.topologySpread.zones"),
]


@pytest.mark.parametrize(("availability", "message"), BAD_AVAILABILITY)
def test_the_api_server_rejects_bad_availability_naming_the_field(
    op_kube: Kube, availability: dict[str, Any], message: str
) -> None:
    body = mnist("bad", availability=availability)
    done = op_kube.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(body), check=False)
    assert done.returncode != 0, f"accepted: {availability}"
    assert message in done.stderr, done.stderr


def test_availability_defaults(op_kube: Kube) -> None:
    done = op_kube.kubectl(
        "create", "--dry-run=server", "-o", "json", "-f", "-", input=json.dumps(mnist("fine"))
    )
    assert json.loads(done.stdout)["spec"]["availability"] == {
        "podDisruptionBudget": {"enabled": True, "maxUnavailable": 1},
        "topologySpread": {"nodes": "Preferred", "zones": "Preferred"},
    }
