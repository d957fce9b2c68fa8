"""Exposure through the Gateway API (spec.exposure.gateway) against a real API server and kwok nodes.

The HTTPRoute API is a minimal CRD written here (the real one's schema is not what is tested):
the operator attaches an HTTPRoute to the named Gateway, splits a canary by the HTTPRoute's
backend weights like a Route's, and reports a cluster without the API in ExposureReady.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localcluster import LocalCluster

sys.path.insert(0, str(Path(__file__).parent))
from operator_support import Kube, StartOperator, mnist_model
from test_canary import STEPS, StandInPrometheus, canary, canary_state, wait_phase

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

HTTPROUTE_CRD = "httproutes.gateway.networking.k8s.io"
MINIMAL_HTTPROUTE_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    # The Gateway API's group is a protected *.k8s.io one: its CRDs carry the approval annotation.
    "metadata": {
        "name": HTTPROUTE_CRD,
        "annotations": {
            "api-approved.kubernetes.io": "https://github.com/kubernetes-sigs/gateway-api/pull/2466"
        },
    },
    "spec": {
        "group": "gateway.networking.k8s.io",
        "scope": "Namespaced",
        "names": {
            "kind": "HTTPRoute",
            "listKind": "HTTPRouteList",
            "plural": "httproutes",
            "singular": "httproute",
        },
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                        },
                    }
                },
            }
        ],
    },
}
GATEWAY = {"name": "public", "namespace": "gateways", "sectionName": "http"}


def _present(cluster: LocalCluster) -> bool:
    return (
        cluster.kubectl("get", "crd", HTTPROUTE_CRD, "--ignore-not-found", "-o", "name").stdout.strip() != ""
    )


@contextlib.contextmanager
def http_route_api(cluster: LocalCluster, present: bool) -> Iterator[None]:
    before = _present(cluster)
    if present and not before:
        cluster.kubectl("apply", "-f", "-", input=json.dumps(MINIMAL_HTTPROUTE_CRD))
    elif not present and before:
        cluster.kubectl("delete", "crd", HTTPROUTE_CRD, "--wait=true", "--timeout=60s")
    try:
        if present:
            cluster.kubectl("wait", "--for=condition=Established", f"crd/{HTTPROUTE_CRD}", "--timeout=60s")
        yield
    finally:
        if present and not before:
            cluster.kubectl("delete", "crd", HTTPROUTE_CRD, "--wait=true", "--timeout=60s")


@pytest.fixture
def gateway_api(cluster: LocalCluster) -> Iterator[None]:
    with http_route_api(cluster, present=True):
        yield


@pytest.fixture
def no_gateway_api(cluster: LocalCluster) -> Iterator[None]:
    with http_route_api(cluster, present=False):
        yield


@pytest.mark.parametrize(
    ("exposure", "message"),
    [
        ({"gateway": GATEWAY, "ingressClassName": "nginx"}, "spec.exposure.ingressClassName cannot be set"),
        ({"gateway": GATEWAY, "tls": "edge", "host": "a.example.com"}, "spec.exposure.tls must be none"),
        ({"gateway": {"namespace": "gateways"}}, "spec.exposure.gateway.name: Required value"),
    ],
    ids=["ingress-class", "tls", "no-name"],
)
def test_the_api_server_rejects_a_bad_gateway_naming_the_field(
    op_kube: Kube, exposure: dict[str, Any], message: str
) -> None:
    body = mnist_model("gw", exposure={"enabled": True, **exposure})
    done = op_kube.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(body), check=False)
    assert done.returncode != 0, f"accepted: {body}"
    assert message in done.stderr


def backends(op_kube: Kube, name: str) -> list[dict[str, Any]]:
    route = op_kube.get("httproute", name) or {}
    [rule] = (route.get("spec") or {}).get("rules") or [{}]
    found: list[dict[str, Any]] = rule.get("backendRefs") or []
    return found


@pytest.mark.usefixtures("gateway_api")
def test_an_http_route_attaches_to_the_gateway_and_splits_a_canary_by_weight(
    op_kube: Kube, op_start: StartOperator
) -> None:
    with StandInPrometheus() as prometheus:
        op_start(op_kube.namespace, prometheus_url=prometheus.url)
        model = canary("gw", canary={"steps": STEPS})
        model["spec"]["replicas"] = 2
        model["spec"]["exposure"] = {"enabled": True, "host": "gw.example.com", "gateway": GATEWAY}
        op_kube.apply(model)
        op_kube.wait_ready("gw", version="1")

        route = op_kube.wait_exists("httproute", "gw")
        assert route["spec"]["parentRefs"] == [
            {"group": "gateway.networking.k8s.io", "kind": "Gateway", **GATEWAY}
        ]
        assert route["spec"]["hostnames"] == ["gw.example.com"]
        assert backends(op_kube, "gw") == [{"group": "", "kind": "Service", "name": "gw", "port": 80}]
        assert op_kube.get("ingress", "gw") is None
        exposure = op_kube.conditions("gw")["ExposureReady"]
        assert (exposure["status"], exposure["reason"]) == ("Unknown", "AwaitingAcceptance")

        # The Gateway's controller accepts it.
        status = {
            "parents": [
                {
                    "parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", **GATEWAY},
                    "controllerName": "example.com/gateway-controller",
                    "conditions": [
                        {
                            "type": "Accepted",
                            "status": "True",
                            "reason": "Accepted",
                            "message": "",
                            "lastTransitionTime": "2026-01-01T00:00:00Z",
                            "observedGeneration": route["metadata"]["generation"],
                        }
                    ],
                }
            ]
        }
        op_kube.kubectl(
            "patch",
            "httproute",
            "gw",
            "--subresource=status",
            "--type=merge",
            "-p",
            json.dumps({"status": status}),
        )
        accepted = op_kube.wait_condition("gw", "ExposureReady", "True", "HTTPRouteAccepted")
        assert "Gateway public" in accepted["message"] and "http://gw.example.com" in accepted["message"]

        # A canary: the HTTPRoute's weights are the step's, the canary behind its own Service.
        op_kube.merge_patch("mnistmodel", "gw", {"spec": {"modelVersion": "2"}})

        def weighted() -> list[dict[str, Any]] | None:
            refs = backends(op_kube, "gw")
            return refs if len(refs) == 2 and refs[1].get("weight") == 10 else None

        refs = op_kube.wait_for(weighted, "the HTTPRoute sending 10 % to the canary", timeout=60)
        assert refs == [
            {"group": "", "kind": "Service", "name": "gw", "port": 80, "weight": 90},
            {"group": "", "kind": "Service", "name": "gw-canary", "port": 80, "weight": 10},
        ]
        state = canary_state(op_kube, "gw")
        assert (state["trafficSplit"], state["trafficWeight"]) == ("HTTPRoute", 10)
        selector = (op_kube.get("service", "gw-canary") or {})["spec"]["selector"]
        assert selector["app.kubernetes.io/instance"] == "gw-canary"

        wait_phase(op_kube, "gw", "2", "Promoted", timeout=90)
        op_kube.wait_ready("gw", version="2", timeout=90)
        op_kube.wait_for(
            lambda: backends(op_kube, "gw") == [{"group": "", "kind": "Service", "name": "gw", "port": 80}],
            "the HTTPRoute all to the stable Service again",
            timeout=30,
        )
        assert (op_kube.get("httproute", "gw") or {})["spec"]["parentRefs"][0]["name"] == "public"


@pytest.mark.usefixtures("no_gateway_api")
def test_a_gateway_on_a_cluster_without_the_http_route_api_is_reported(
    op_kube: Kube, op_start: StartOperator
) -> None:
    op_start(op_kube.namespace)
    op_kube.apply(mnist_model("nogw", exposure={"enabled": True, "gateway": {"name": "public"}}))
    missing = op_kube.wait_condition("nogw", "ExposureReady", "False", "GatewayAPIMissing")
    assert "gateway.networking.k8s.io/v1 HTTPRoute API is not served" in missing["message"]
    # The model itself serves. The missing API is reported at the first reconcile, before the
    # Deployment's pods are available, so this waits rather than reads.
    op_kube.wait_condition("nogw", "Available", "True")
    assert op_kube.get("ingress", "nogw") is None
