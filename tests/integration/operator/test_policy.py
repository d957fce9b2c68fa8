"""The cluster admin's policy against the real control plane: what it refuses never reaches the
cluster, the MnistModel says why (condition and Event), and the rest of the model still runs."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localcluster import LocalCluster

sys.path.insert(0, str(Path(__file__).parent))
from operator_support import Kube, StartOperator

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

HOST = "digits.apps.example.test"


def mnist(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "aidevsecops.dev/v1alpha1",
        "kind": "MnistModel",
        "metadata": {"name": name},
        "spec": {"modelVersion": "1", **spec},
    }


@pytest.fixture
def other_team(cluster: LocalCluster, mnist_crd: str) -> Iterator[Kube]:
    name = f"other-team-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    yield Kube(cluster, name)
    cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


def test_a_host_is_never_shared_between_namespaces(
    op_kube: Kube, other_team: Kube, op_start: StartOperator, plain_apis: None
) -> None:
    operator = op_start(op_kube.namespace, other_team.namespace)
    first = mnist("digits", exposure={"enabled": True, "host": HOST})
    op_kube.apply(first)
    op_kube.wait_ready("digits")
    assert op_kube.wait_exists("ingress", "digits")["spec"]["rules"][0]["host"] == HOST

    # Another team asks for the same host: its model is deployed, but gets no Ingress.
    other_team.apply(mnist("copycat", exposure={"enabled": True, "host": HOST}))
    exposure = other_team.wait_condition("copycat", "ExposureReady", "False", "PolicyViolation")
    assert f"{HOST} is already used by a MnistModel in another namespace" in exposure["message"]
    assert op_kube.namespace not in exposure["message"]  # which namespaces exist is not its business
    ready = other_team.wait_condition("copycat", "Ready", "False", "ExposureNotReady")
    assert "(hosts are never shared between namespaces)" in ready["message"]
    assert other_team.get("ingress", "copycat") is None
    assert other_team.wait_exists("deployment", "copycat")
    assert ("Warning", "PolicyViolation") in [(t, r) for t, r, _ in other_team.events("copycat")]
    assert f"held by {op_kube.namespace}/digits" in operator.log_tail(200)  # the admin may know

    # The first team lets the host go: the waiting model gets it within seconds, without an edit.
    op_kube.merge_patch("mnistmodel", "digits", {"spec": {"exposure": {"enabled": False}}})
    other_team.wait_exists("ingress", "copycat", timeout=30)
    other_team.wait_ready("copycat")
    # Now the first team is the one refused.
    op_kube.merge_patch("mnistmodel", "digits", {"spec": {"exposure": {"enabled": True}}})
    op_kube.wait_condition("digits", "ExposureReady", "False", "PolicyViolation")
    assert op_kube.get("ingress", "digits") is None


def test_refused_annotations_never_reach_the_ingress_and_the_model_keeps_serving(
    op_kube: Kube, op_start: StartOperator, plain_apis: None
) -> None:
    op_start(op_kube.namespace)
    issuer = {"cert-manager.io/cluster-issuer": "letsencrypt"}
    op_kube.apply(mnist("annotated", exposure={"enabled": True, "host": HOST, "annotations": issuer}))
    op_kube.wait_ready("annotated")
    assert op_kube.wait_exists("ingress", "annotated")["metadata"]["annotations"] == issuer

    snippet = {"nginx.ingress.kubernetes.io/server-snippet": "location /admin { proxy_pass http://x; }"}
    op_kube.merge_patch("mnistmodel", "annotated", {"spec": {"exposure": {"annotations": snippet}}})
    exposure = op_kube.wait_condition("annotated", "ExposureReady", "False", "PolicyViolation")
    assert (
        "nginx.ingress.kubernetes.io/server-snippet may not be set on a shared Route or Ingress"
        in (exposure["message"])
    )
    assert "(MNIST_OPERATOR_ALLOWED_ANNOTATION_PREFIXES)" in exposure["message"]
    op_kube.wait_gone("ingress", "annotated", timeout=30)
    model = op_kube.model("annotated")
    assert model["status"]["url"] == f"http://annotated.{op_kube.namespace}.svc"
    assert model["status"]["readyReplicas"] == 1  # still serving in-cluster

    # No host at all: an Ingress would be a catch-all for the whole ingress controller.
    op_kube.apply(mnist("catchall", exposure={"enabled": True}))
    exposure = op_kube.wait_condition("catchall", "ExposureReady", "False", "PolicyViolation")
    assert "MNIST_OPERATOR_REQUIRE_INGRESS_HOST" in exposure["message"]
    assert op_kube.get("ingress", "catchall") is None


def test_a_refused_image_service_account_or_toleration_deploys_nothing_new(
    op_kube: Kube, op_start: StartOperator
) -> None:
    op_start(
        op_kube.namespace,
        allowed_images="registry.example.test/ml/",
        allowed_tolerations="dedicated=ml:NoSchedule",
        allowed_host_suffixes="{namespace}.apps.example.test",
    )
    original = {"image": "registry.example.test/ml/mnist-server:2"}
    op_kube.apply(mnist("workload", replicas=2, **original))
    op_kube.wait_ready("workload")
    before = op_kube.get("deployment", "workload")
    assert before is not None

    for refused, field, rule in (
        ({"image": "docker.io/someone/miner:latest"}, "spec.image", "MNIST_OPERATOR_ALLOWED_IMAGES"),
        (
            {"serviceAccountName": "cloud-admin"},
            "spec.serviceAccountName",
            "MNIST_OPERATOR_ALLOWED_SERVICE_ACCOUNTS",
        ),
        (
            {
                "tolerations": [
                    {"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}
                ]
            },
            "spec.tolerations[0]",
            "MNIST_OPERATOR_ALLOWED_TOLERATIONS",
        ),
    ):
        op_kube.merge_patch("mnistmodel", "workload", {"spec": {**refused, "modelVersion": "2"}})
        ready = op_kube.wait_condition("workload", "Ready", "False", "PolicyViolation")
        assert f"{field}: " in ready["message"] and f"({rule})" in ready["message"], ready["message"]
        # The running Deployment is untouched: same template, same generation, version 1 serving.
        after = op_kube.get("deployment", "workload")
        assert after is not None
        assert after["metadata"]["generation"] == before["metadata"]["generation"]
        assert after["spec"]["template"] == before["spec"]["template"]
        assert op_kube.model("workload")["status"]["modelVersion"] == "1"
        undo = {key: original.get(key) for key in refused}
        op_kube.merge_patch("mnistmodel", "workload", {"spec": {**undo, "modelVersion": "1"}})
        op_kube.wait_ready("workload")
        assert op_kube.get("deployment", "workload") == after  # nothing to roll back either
    # Ready was True, so each refusal is a Degraded warning naming the reason and the rule.
    warnings = [m for t, r, m in op_kube.events("workload") if (t, r) == ("Warning", "Degraded")]
    assert len(warnings) == 3 and all(m.startswith("PolicyViolation: ") for m in warnings), warnings

    # What the admin allowed goes through.
    allowed = [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}]
    host = f"digits.{op_kube.namespace}.apps.example.test"
    op_kube.merge_patch(
        "mnistmodel",
        "workload",
        {"spec": {"tolerations": allowed, "exposure": {"enabled": True, "host": host}}},
    )
    op_kube.wait_for(
        lambda: (
            (op_kube.get("deployment", "workload") or {})["spec"]["template"]["spec"].get("tolerations")
            == allowed
        ),
        "the allowed toleration on the pods",
    )
    op_kube.wait_exists("ingress", "workload")
    op_kube.merge_patch(
        "mnistmodel", "workload", {"spec": {"exposure": {"host": "digits.elsewhere.example.test"}}}
    )
    exposure = op_kube.wait_condition("workload", "ExposureReady", "False", "PolicyViolation")
    assert (
        f"not under a domain this namespace may use ({op_kube.namespace}.apps.example.test)"
        in exposure["message"]
    )


def test_a_scrape_interval_below_the_floor_gets_no_service_monitor(
    op_kube: Kube, op_start: StartOperator, openshift_apis: None
) -> None:
    op_start(op_kube.namespace, min_scrape_interval_seconds="30")
    op_kube.apply(mnist("scraped", monitoring={"serviceMonitor": {"enabled": True, "interval": "5s"}}))
    op_kube.wait_ready("scraped")  # monitoring never holds a model back
    monitoring = op_kube.wait_condition("scraped", "MonitoringReady", "False", "PolicyViolation")
    assert (
        "scraping every 5s is more often than allowed here (the shortest interval is 30s)"
        in monitoring["message"]
    )
    assert op_kube.get("servicemonitor", "scraped") is None
    op_kube.merge_patch(
        "mnistmodel", "scraped", {"spec": {"monitoring": {"serviceMonitor": {"interval": "1m"}}}}
    )
    op_kube.wait_exists("servicemonitor", "scraped")
    op_kube.wait_condition("scraped", "MonitoringReady", "True", "ServiceMonitorReady")
