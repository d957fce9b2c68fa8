"""The pure builders: which children a MnistModel gets, and what each one carries."""

from __future__ import annotations

from typing import Any

import pytest

from mnist_operator import api
from mnist_operator.builders import Owner, desired, selector_string, with_canary_backend
from mnist_operator.settings import OperatorSettings
from mnist_operator.spec import parse_spec

SETTINGS = OperatorSettings(default_image="mnist-server:test")
OWNER = Owner(
    name="digits",
    namespace="ml",
    uid="uid-1",
    generation=3,
    labels={"team": "vision", "app.kubernetes.io/instance": "argo-app", "argocd.argoproj.io/instance": "x"},
)
PLAIN = api.Capabilities()
OPENSHIFT = api.Capabilities(routes=True, service_monitors=True)


def build(spec: dict[str, Any], caps: api.Capabilities = PLAIN) -> dict[str, dict[str, Any]]:
    return {obj["kind"]: obj for obj in desired(parse_spec(spec), OWNER, SETTINGS, caps)}


@pytest.mark.parametrize(
    ("spec", "caps", "kinds"),
    [
        ({"modelVersion": "1"}, PLAIN, ["Deployment", "Service"]),
        ({"modelVersion": "1"}, OPENSHIFT, ["Deployment", "Service"]),
        ({"modelVersion": "1", "exposure": {"enabled": True}}, PLAIN, ["Deployment", "Service", "Ingress"]),
        ({"modelVersion": "1", "exposure": {"enabled": True}}, OPENSHIFT, ["Deployment", "Service", "Route"]),
        (
            {"modelVersion": "1", "exposure": {"enabled": False, "host": "a.b"}},
            OPENSHIFT,
            ["Deployment", "Service"],
        ),
        # An Ingress cannot re-encrypt: nothing half-configured is created; status says why.
        (
            {"modelVersion": "1", "exposure": {"enabled": True, "host": "a.b", "tls": "reencrypt"}},
            PLAIN,
            ["Deployment", "Service"],
        ),
        (
            {"modelVersion": "1", "monitoring": {"serviceMonitor": {"enabled": True}}},
            PLAIN,
            ["Deployment", "Service"],
        ),
        (
            {"modelVersion": "1", "monitoring": {"serviceMonitor": {"enabled": True}}},
            OPENSHIFT,
            ["Deployment", "Service", "ServiceMonitor"],
        ),
        (
            {"modelVersion": "1", "autoscaling": {"maxReplicas": 3}},
            PLAIN,
            ["Deployment", "Service", "HorizontalPodAutoscaler"],
        ),
        # A budget from 2 replicas on (with autoscaling: from minReplicas 2), unless turned off.
        ({"modelVersion": "1", "replicas": 2}, PLAIN, ["Deployment", "Service", "PodDisruptionBudget"]),
        (
            {"modelVersion": "1", "autoscaling": {"minReplicas": 2, "maxReplicas": 3}},
            PLAIN,
            ["Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"],
        ),
        (
            {
                "modelVersion": "1",
                "replicas": 5,
                "availability": {"podDisruptionBudget": {"enabled": False}},
            },
            PLAIN,
            ["Deployment", "Service"],
        ),
        ({"modelVersion": "1", "replicas": 0}, PLAIN, ["Deployment", "Service"]),
    ],
)
def test_children_depend_on_spec_and_capabilities(
    spec: dict[str, Any], caps: api.Capabilities, kinds: list[str]
) -> None:
    assert list(build(spec, caps)) == kinds


def test_every_child_is_named_owned_and_labelled() -> None:
    spec = {
        "modelVersion": "7",
        "exposure": {"enabled": True},
        "autoscaling": {"maxReplicas": 2},
        "monitoring": {"serviceMonitor": {"enabled": True}},
    }
    for obj in build(spec, OPENSHIFT).values():
        meta = obj["metadata"]
        assert (meta["name"], meta["namespace"]) == ("digits", "ml")
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "aidevsecops.dev/v1alpha1",
                "kind": "MnistModel",
                "name": "digits",
                "uid": "uid-1",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        labels = meta["labels"]
        assert labels["app.kubernetes.io/name"] == "mnist-server"
        assert labels["app.kubernetes.io/instance"] == "digits"  # ours, never Argo CD's value
        assert labels["app.kubernetes.io/component"] == "model-server"
        assert labels["app.kubernetes.io/managed-by"] == "mnist-operator"
        assert labels["app.kubernetes.io/version"] == "7"
        assert labels["team"] == "vision"  # the model's own labels are inherited by the children
        assert not any(k.startswith("argocd.argoproj.io/") for k in labels)


def test_pod_template_carries_only_the_standard_labels() -> None:
    template = build({"modelVersion": "7"})["Deployment"]["spec"]["template"]
    assert template["metadata"] == {
        "labels": {
            "app.kubernetes.io/name": "mnist-server",
            "app.kubernetes.io/instance": "digits",
            "app.kubernetes.io/component": "model-server",
            "app.kubernetes.io/managed-by": "mnist-operator",
            "app.kubernetes.io/version": "7",
        }
    }


def test_a_label_edit_on_the_model_does_not_touch_the_pod_template() -> None:
    before = desired(parse_spec({"modelVersion": "1"}), OWNER, SETTINGS, PLAIN)[0]
    relabelled = Owner(OWNER.name, OWNER.namespace, OWNER.uid, OWNER.generation, {"team": "other"})
    after = desired(parse_spec({"modelVersion": "1"}), relabelled, SETTINGS, PLAIN)[0]
    assert before["spec"]["template"] == after["spec"]["template"]
    assert before["metadata"]["labels"] != after["metadata"]["labels"]


def test_deployment_runs_the_server_restricted_with_probes() -> None:
    deployment = build({"modelVersion": "4", "replicas": 3})["Deployment"]
    spec = deployment["spec"]
    assert spec["replicas"] == 3
    assert spec["selector"] == {
        "matchLabels": {"app.kubernetes.io/name": "mnist-server", "app.kubernetes.io/instance": "digits"}
    }
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    assert spec["progressDeadlineSeconds"] == 600
    pod = spec["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    assert pod["volumes"] == [{"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}}]
    (container,) = pod["containers"]
    assert container["image"] == "mnist-server:test"
    assert container["ports"] == [
        {"name": "http", "containerPort": 8080, "protocol": "TCP"},
        {"name": "probes", "containerPort": 8081, "protocol": "TCP"},
    ]
    # The probes go to the server's probe listener, answered on a thread of its own.
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "probes"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "probes"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "probes"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert container["env"][:4] == [
        {"name": "MNIST_SERVER_MODEL_VERSION", "value": "4"},
        {"name": "MNIST_SERVER_HOST", "value": "0.0.0.0"},
        {"name": "MNIST_SERVER_PORT", "value": "8080"},
        {"name": "MNIST_SERVER_PROBE_PORT", "value": "8081"},
    ]
    assert container["resources"] == {
        "requests": {"cpu": "100m", "memory": "256Mi"},
        "limits": {"memory": "1Gi"},
    }


def test_pods_drain_before_the_server_stops_and_say_why_they_failed() -> None:
    """A stopping pod keeps serving while Services stop routing to it (preStop pause), has the
    pause plus the server's own shutdown as its grace period, and turns its last log lines into
    the termination message when it fails (an unknown modelVersion shows on the MnistModel)."""
    pod = build({"modelVersion": "1"})["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["lifecycle"] == {"preStop": {"sleep": {"seconds": 5}}}
    assert pod["terminationGracePeriodSeconds"] == 5 + 30
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"

    slow = OperatorSettings(default_image="mnist-server:test", drain_seconds=15)
    pod = desired(parse_spec({"modelVersion": "1"}), OWNER, slow, PLAIN)[0]["spec"]["template"]["spec"]
    assert pod["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"] == 15
    assert pod["terminationGracePeriodSeconds"] == 45

    off = OperatorSettings(default_image="mnist-server:test", drain_seconds=0)
    pod = desired(parse_spec({"modelVersion": "1"}), OWNER, off, PLAIN)[0]["spec"]["template"]["spec"]
    assert "lifecycle" not in pod["containers"][0]
    assert pod["terminationGracePeriodSeconds"] == 30


def test_deployment_takes_the_user_settings() -> None:
    pod = build(
        {
            "modelVersion": "4",
            "image": "mine:1",
            "imagePullPolicy": "Always",
            "resources": {"limits": {"cpu": 2}},
            "env": [
                {"name": "A", "value": "1"},
                {"name": "EMPTY", "value": ""},
                {"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k", "optional": False}}},
            ],
            "nodeSelector": {"pool": "cpu"},
            "tolerations": [{"key": "k", "operator": "Exists", "value": ""}],
            "serviceAccountName": "runner",
            "rollout": {"maxSurge": "50%", "maxUnavailable": 1, "progressDeadlineSeconds": 60},
        }
    )["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert (container["image"], container["imagePullPolicy"]) == ("mine:1", "Always")
    assert container["resources"] == {"limits": {"cpu": 2}}
    # Empty strings are dropped as the API server drops them, or every resync would see drift.
    assert container["env"][4:] == [
        {"name": "A", "value": "1"},
        {"name": "EMPTY"},
        {"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k", "optional": False}}},
    ]
    assert pod["nodeSelector"] == {"pool": "cpu"}
    assert pod["tolerations"] == [{"key": "k", "operator": "Exists"}]
    assert pod["serviceAccountName"] == "runner"


def test_with_autoscaling_the_deployment_leaves_replicas_to_the_hpa() -> None:
    children = build(
        {
            "modelVersion": "1",
            "autoscaling": {"minReplicas": 2, "maxReplicas": 6, "targetCPUUtilizationPercentage": 70},
        }
    )
    assert "replicas" not in children["Deployment"]["spec"]
    hpa = children["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"] == {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "digits"},
        "minReplicas": 2,
        "maxReplicas": 6,
        "metrics": [
            {
                "type": "Resource",
                "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}},
            }
        ],
    }


def test_pod_disruption_budget_selects_the_pods_and_never_blocks_on_broken_ones() -> None:
    budget = build({"modelVersion": "1", "replicas": 3})["PodDisruptionBudget"]
    assert budget["apiVersion"] == "policy/v1"
    assert budget["spec"] == {
        "maxUnavailable": 1,
        "selector": {
            "matchLabels": {"app.kubernetes.io/name": "mnist-server", "app.kubernetes.io/instance": "digits"}
        },
        "unhealthyPodEvictionPolicy": "AlwaysAllow",
    }
    custom = {"podDisruptionBudget": {"maxUnavailable": "50%"}}
    budget = build({"modelVersion": "1", "replicas": 4, "availability": custom})["PodDisruptionBudget"]
    assert budget["spec"]["maxUnavailable"] == "50%"


def test_replicas_spread_over_nodes_and_zones_whatever_their_number() -> None:
    def spread(spec: dict[str, Any]) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = build(spec)["Deployment"]["spec"]["template"]["spec"].get(
            "topologySpreadConstraints", []
        )
        return found

    selector = {
        "matchLabels": {"app.kubernetes.io/name": "mnist-server", "app.kubernetes.io/instance": "digits"}
    }
    common = {"maxSkew": 1, "labelSelector": selector, "matchLabelKeys": ["pod-template-hash"]}
    assert spread({"modelVersion": "1"}) == [
        {**common, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway",
         "nodeTaintsPolicy": "Honor"},
        {**common, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway",
         "nodeTaintsPolicy": "Honor"},
    ]  # fmt: skip
    # Scaling must not change the pod template (that would roll every pod).
    one = build({"modelVersion": "1", "replicas": 1})["Deployment"]["spec"]["template"]
    assert build({"modelVersion": "1", "replicas": 7})["Deployment"]["spec"]["template"] == one
    required = spread(
        {"modelVersion": "1", "availability": {"topologySpread": {"nodes": "Required", "zones": "None"}}}
    )
    assert [(c["topologyKey"], c["whenUnsatisfiable"]) for c in required] == [
        ("kubernetes.io/hostname", "DoNotSchedule")
    ]
    off = {"topologySpread": {"nodes": "None", "zones": "None"}}
    pod = build({"modelVersion": "1", "availability": off})["Deployment"]["spec"]["template"]["spec"]
    assert "topologySpreadConstraints" not in pod


def test_service_selects_the_pods_on_the_named_port() -> None:
    svc = build({"modelVersion": "1"})["Service"]["spec"]
    assert svc == {
        "type": "ClusterIP",
        "selector": {"app.kubernetes.io/name": "mnist-server", "app.kubernetes.io/instance": "digits"},
        "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
    }


@pytest.mark.parametrize(
    ("exposure", "expected"),
    [
        (
            {"enabled": True},
            {
                "to": {"kind": "Service", "name": "digits", "weight": 100},
                "port": {"targetPort": "http"},
                "wildcardPolicy": "None",
            },
        ),
        (
            {"enabled": True, "host": "m.example.com", "tls": "edge"},
            {
                "to": {"kind": "Service", "name": "digits", "weight": 100},
                "port": {"targetPort": "http"},
                "wildcardPolicy": "None",
                "host": "m.example.com",
                "tls": {"termination": "edge", "insecureEdgeTerminationPolicy": "Redirect"},
            },
        ),
        (
            {"enabled": True, "host": "m.example.com", "tls": "reencrypt"},
            {
                "to": {"kind": "Service", "name": "digits", "weight": 100},
                "port": {"targetPort": "http"},
                "wildcardPolicy": "None",
                "host": "m.example.com",
                "tls": {"termination": "reencrypt", "insecureEdgeTerminationPolicy": "Redirect"},
            },
        ),
    ],
)
def test_route(exposure: dict[str, Any], expected: dict[str, Any]) -> None:
    route = build({"modelVersion": "1", "exposure": exposure}, OPENSHIFT)["Route"]
    assert route["apiVersion"] == "route.openshift.io/v1"
    assert route["spec"] == expected


def test_ingress_with_tls_class_and_annotations() -> None:
    ingress = build(
        {
            "modelVersion": "1",
            "exposure": {
                "enabled": True,
                "host": "m.example.com",
                "tls": "edge",
                "ingressClassName": "nginx",
                "annotations": {"cert-manager.io/cluster-issuer": "letsencrypt"},
            },
        }
    )["Ingress"]
    assert ingress["metadata"]["annotations"] == {"cert-manager.io/cluster-issuer": "letsencrypt"}
    assert ingress["spec"] == {
        "ingressClassName": "nginx",
        "rules": [
            {
                "host": "m.example.com",
                "http": {
                    "paths": [
                        {
                            "path": "/",
                            "pathType": "Prefix",
                            "backend": {"service": {"name": "digits", "port": {"name": "http"}}},
                        }
                    ]
                },
            }
        ],
        "tls": [{"hosts": ["m.example.com"], "secretName": "digits-tls"}],
    }


def test_ingress_without_host_or_tls() -> None:
    spec = build({"modelVersion": "1", "exposure": {"enabled": True}})["Ingress"]["spec"]
    assert "tls" not in spec and "ingressClassName" not in spec
    assert "host" not in spec["rules"][0]


def test_service_monitor_scrapes_metrics_with_extra_labels() -> None:
    monitor = build(
        {
            "modelVersion": "1",
            "monitoring": {
                "serviceMonitor": {
                    "enabled": True,
                    "interval": "15s",
                    "labels": {"release": "prom", "app.kubernetes.io/name": "not-allowed"},
                }
            },
        },
        OPENSHIFT,
    )["ServiceMonitor"]
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["metadata"]["labels"]["app.kubernetes.io/name"] == "mnist-server"
    assert monitor["spec"] == {
        "selector": {
            "matchLabels": {"app.kubernetes.io/name": "mnist-server", "app.kubernetes.io/instance": "digits"}
        },
        "endpoints": [{"port": "http", "path": "/metrics", "scheme": "http", "interval": "15s"}],
    }


def test_selector_string_matches_the_selector() -> None:
    assert selector_string(OWNER) == "app.kubernetes.io/instance=digits,app.kubernetes.io/name=mnist-server"


def test_builders_are_deterministic() -> None:
    spec = {"modelVersion": "1", "exposure": {"enabled": True}, "autoscaling": {"maxReplicas": 2}}
    assert build(spec, OPENSHIFT) == build(spec, OPENSHIFT)


GATEWAY_API = api.Capabilities(routes=True, http_routes=True)


def test_a_gateway_gets_an_http_route_instead_of_a_route_or_an_ingress() -> None:
    exposure = {
        "enabled": True,
        "host": "digits.example.com",
        "gateway": {"name": "public", "namespace": "gateways", "sectionName": "https"},
        "annotations": {"team": "vision"},
    }
    children = build({"modelVersion": "1", "exposure": exposure}, GATEWAY_API)
    assert set(children) == {"Deployment", "Service", "HTTPRoute"}
    route = children["HTTPRoute"]
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["metadata"]["name"] == "digits" and route["metadata"]["annotations"] == {"team": "vision"}
    assert route["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert route["spec"] == {
        "parentRefs": [
            {
                "group": "gateway.networking.k8s.io",
                "kind": "Gateway",
                "name": "public",
                "namespace": "gateways",
                "sectionName": "https",
            }
        ],
        "hostnames": ["digits.example.com"],
        "rules": [
            {
                "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                "backendRefs": [{"group": "", "kind": "Service", "name": "digits", "port": api.SERVICE_PORT}],
            }
        ],
    }
    # The Service's port is the one the backend names.
    assert children["Service"]["spec"]["ports"][0]["port"] == api.SERVICE_PORT


def test_a_gateway_without_host_namespace_or_listener_leaves_them_out() -> None:
    spec = {"modelVersion": "1", "exposure": {"enabled": True, "gateway": {"name": "public"}}}
    route = build(spec, GATEWAY_API)["HTTPRoute"]
    assert route["spec"]["parentRefs"] == [
        {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public"}
    ]
    assert "hostnames" not in route["spec"]


@pytest.mark.parametrize("caps", [PLAIN, OPENSHIFT], ids=["plain", "openshift"])
def test_a_gateway_without_the_http_route_api_gets_no_route_or_ingress_in_its_place(
    caps: api.Capabilities,
) -> None:
    spec = {"modelVersion": "1", "exposure": {"enabled": True, "gateway": {"name": "public"}}}
    assert set(build(spec, caps)) == {"Deployment", "Service"}  # ExposureReady says why


def test_a_disabled_exposure_gets_no_http_route() -> None:
    spec = {"modelVersion": "1", "exposure": {"enabled": False, "gateway": {"name": "public"}}}
    assert set(build(spec, GATEWAY_API)) == {"Deployment", "Service"}


def test_the_canary_backend_weighs_an_http_routes_two_services() -> None:
    spec = {"modelVersion": "1", "exposure": {"enabled": True, "gateway": {"name": "public"}}}
    route = with_canary_backend(build(spec, GATEWAY_API)["HTTPRoute"], OWNER, 10)
    [rule] = route["spec"]["rules"]
    assert [(b["name"], b["weight"], b["port"]) for b in rule["backendRefs"]] == [
        ("digits", 90, api.SERVICE_PORT),
        ("digits-canary", 10, api.SERVICE_PORT),
    ]
    assert route["spec"]["parentRefs"][0]["name"] == "public"
