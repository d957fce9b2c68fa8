"""Parsing a MnistModel spec: defaults, and a SpecError naming the field for every bad input."""

from __future__ import annotations

from typing import Any

import pytest

from mnist_operator.spec import (
    Analysis,
    Autoscaling,
    Availability,
    Canary,
    CanaryStep,
    Exposure,
    GatewayRef,
    MnistModelSpec,
    Rollout,
    ServiceMonitorSpec,
    SpecError,
    parse_spec,
)


def test_minimal_spec_gets_every_default() -> None:
    spec = parse_spec({"modelVersion": "3"})
    assert spec == MnistModelSpec(model_version="3")
    assert spec.fixed_replicas == 1
    assert spec.rollout == Rollout(max_surge=1, max_unavailable=0, progress_deadline_seconds=600)
    assert spec.exposure == Exposure()
    assert spec.service_monitor == ServiceMonitorSpec(enabled=False, interval="30s")


def test_full_spec_is_parsed_into_dataclasses() -> None:
    spec = parse_spec(
        {
            "modelVersion": "2024-06-01",
            "image": "registry.local/mnist-server:2",
            "imagePullPolicy": "IfNotPresent",
            "autoscaling": {"minReplicas": 2, "maxReplicas": 5, "targetCPUUtilizationPercentage": 60},
            "resources": {"requests": {"cpu": "250m", "memory": 1073741824}},
            "env": [
                {"name": "MNIST_SERVER_THREADS", "value": "4"},
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
            ],
            "nodeSelector": {"pool": "cpu"},
            "tolerations": [{"key": "dedicated", "operator": "Exists"}],
            "serviceAccountName": "mnist",
            "rollout": {"maxSurge": "25%", "maxUnavailable": 1, "progressDeadlineSeconds": 120},
            "exposure": {
                "enabled": True,
                "host": "mnist.apps.example.com",
                "tls": "edge",
                "tlsSecretName": "cert",
                "ingressClassName": "nginx",
                "annotations": {"a": "b"},
            },
            "monitoring": {
                "serviceMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "prom"}}
            },
        }
    )
    assert spec.autoscaling == Autoscaling(2, 5, 60)
    assert spec.fixed_replicas is None  # the HPA owns the count
    assert spec.resources == {"requests": {"cpu": "250m", "memory": 1073741824}}
    assert [e.name for e in spec.env] == ["MNIST_SERVER_THREADS", "TOKEN"]
    assert spec.env[1].value_from == {"secretKeyRef": {"name": "s", "key": "k"}}
    assert spec.rollout == Rollout("25%", 1, 120)
    assert spec.exposure.tls == "edge" and spec.exposure.tls_secret_name == "cert"
    assert dict(spec.service_monitor.labels) == {"release": "prom"}
    assert spec.tolerations[0]["key"] == "dedicated"


def test_autoscaling_defaults() -> None:
    assert parse_spec({"modelVersion": "1", "autoscaling": {"maxReplicas": 4}}).autoscaling == Autoscaling(
        1, 4, 80
    )


def test_availability_defaults_and_the_fewest_replicas_the_model_runs() -> None:
    spec = parse_spec({"modelVersion": "1"})
    assert spec.availability == Availability(True, 1, "Preferred", "Preferred")
    assert spec.min_replicas == 1
    assert parse_spec({"modelVersion": "1", "replicas": 3}).min_replicas == 3
    scaled = parse_spec({"modelVersion": "1", "autoscaling": {"minReplicas": 2, "maxReplicas": 9}})
    assert scaled.min_replicas == 2
    custom = parse_spec(
        {
            "modelVersion": "1",
            "availability": {
                "podDisruptionBudget": {"enabled": False, "maxUnavailable": "25%"},
                "topologySpread": {"nodes": "Required", "zones": "None"},
            },
        }
    )
    assert custom.availability == Availability(False, "25%", "Required", "None")


def test_explicit_zero_replicas_is_kept() -> None:
    assert parse_spec({"modelVersion": "1", "replicas": 0}).fixed_replicas == 0


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({}, "modelVersion"),
        ({"modelVersion": "V1"}, "modelVersion"),
        ({"modelVersion": "a" * 64}, "modelVersion"),
        ({"modelVersion": "-1"}, "modelVersion"),
        ({"modelVersion": 3}, "modelVersion"),
        ({"modelVersion": "1", "replicas": -1}, "replicas"),
        ({"modelVersion": "1", "replicas": True}, "replicas"),
        ({"modelVersion": "1", "replicas": 2, "autoscaling": {"maxReplicas": 3}}, "replicas"),
        ({"modelVersion": "1", "autoscaling": {}}, "autoscaling.maxReplicas"),
        (
            {"modelVersion": "1", "autoscaling": {"minReplicas": 4, "maxReplicas": 3}},
            "autoscaling.minReplicas",
        ),
        (
            {"modelVersion": "1", "autoscaling": {"maxReplicas": 3, "targetCPUUtilizationPercentage": 101}},
            "autoscaling.targetCPUUtilizationPercentage",
        ),
        ({"modelVersion": "1", "image": " "}, "image"),
        ({"modelVersion": "1", "rollout": {"maxSurge": 0, "maxUnavailable": "0%"}}, "rollout.maxUnavailable"),
        ({"modelVersion": "1", "rollout": {"maxSurge": "101%"}}, "rollout.maxSurge"),
        ({"modelVersion": "1", "rollout": {"maxSurge": -1}}, "rollout.maxSurge"),
        ({"modelVersion": "1", "exposure": {"host": "https://x.example.com"}}, "exposure.host"),
        ({"modelVersion": "1", "exposure": {"host": "X.example.com"}}, "exposure.host"),
        ({"modelVersion": "1", "exposure": {"tls": "edge"}}, "exposure.host"),
        ({"modelVersion": "1", "exposure": {"tls": "passthrough", "host": "a.b"}}, "exposure.tls"),
        ({"modelVersion": "1", "exposure": {"enabled": "yes"}}, "exposure.enabled"),
        (
            {"modelVersion": "1", "monitoring": {"serviceMonitor": {"interval": "30"}}},
            "monitoring.serviceMonitor.interval",
        ),
        ({"modelVersion": "1", "env": [{"name": "MNIST_SERVER_MODEL_VERSION", "value": "2"}]}, "env[0].name"),
        ({"modelVersion": "1", "env": [{"value": "2"}]}, "env[0].name"),
        ({"modelVersion": "1", "resources": {"limits": {"cpu": ["1"]}}}, "resources.limits"),
        ({"modelVersion": "1", "nodeSelector": {"a": 1}}, "nodeSelector"),
        (
            {"modelVersion": "1", "availability": {"podDisruptionBudget": {"maxUnavailable": 0}}},
            "availability.podDisruptionBudget.maxUnavailable",
        ),
        (
            {"modelVersion": "1", "availability": {"podDisruptionBudget": {"maxUnavailable": "0%"}}},
            "availability.podDisruptionBudget.maxUnavailable",
        ),
        (
            {"modelVersion": "1", "availability": {"podDisruptionBudget": {"enabled": "no"}}},
            "availability.podDisruptionBudget.enabled",
        ),
        (
            {"modelVersion": "1", "availability": {"topologySpread": {"zones": "Always"}}},
            "availability.topologySpread.zones",
        ),
    ],
)
def test_bad_input_names_the_field(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(spec)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"spec.{field}:")


def test_missing_spec_is_an_error() -> None:
    with pytest.raises(SpecError):
        parse_spec(None)


def test_rolling_update_is_the_default_and_has_no_canary() -> None:
    spec = parse_spec({"modelVersion": "1", "rollout": {"maxSurge": 1}})
    assert spec.rollout.strategy == "RollingUpdate"
    assert spec.rollout.canary is None


def test_canary_strategy_gets_default_steps_and_thresholds() -> None:
    spec = parse_spec({"modelVersion": "1", "rollout": {"strategy": "Canary"}})
    assert spec.rollout.canary == Canary(
        steps=(CanaryStep(10, 60), CanaryStep(50, 60)),
        analysis=Analysis(
            min_requests=200,
            max_error_rate=0.01,
            max_p99_latency_seconds=0.5,
            max_digit_divergence=0.2,
            max_confidence_divergence=0.2,
        ),
    )


def test_canary_steps_and_analysis_are_parsed() -> None:
    spec = parse_spec(
        {
            "modelVersion": "2",
            "rollout": {
                "strategy": "Canary",
                "canary": {
                    "steps": [{"weight": 5}, {"weight": 25, "pauseSeconds": 120}, {"weight": 75}],
                    "analysis": {"minRequests": 500, "maxErrorRate": 0, "maxP99LatencySeconds": 0.25},
                },
            },
        }
    )
    assert spec.rollout.canary is not None
    assert spec.rollout.canary.steps == (CanaryStep(5, 60), CanaryStep(25, 120), CanaryStep(75, 60))
    analysis = spec.rollout.canary.analysis
    assert (analysis.min_requests, analysis.max_error_rate, analysis.max_p99_latency_seconds) == (
        500,
        0,
        0.25,
    )
    assert analysis.max_digit_divergence == 0.2


CANARY = {"strategy": "Canary"}


@pytest.mark.parametrize(
    ("rollout", "field"),
    [
        ({"strategy": "BlueGreen"}, "rollout.strategy"),
        ({"canary": {}}, "rollout.canary"),
        ({**CANARY, "canary": {"steps": []}}, "rollout.canary.steps"),
        ({**CANARY, "canary": {"steps": [{"weight": 10}] * 11}}, "rollout.canary.steps"),
        ({**CANARY, "canary": {"steps": [{"pauseSeconds": 10}]}}, "rollout.canary.steps[0].weight"),
        ({**CANARY, "canary": {"steps": [{"weight": 100}]}}, "rollout.canary.steps[0].weight"),
        ({**CANARY, "canary": {"steps": [{"weight": 0}]}}, "rollout.canary.steps[0].weight"),
        ({**CANARY, "canary": {"steps": [{"weight": 50}, {"weight": 20}]}}, "rollout.canary.steps[1].weight"),
        (
            {**CANARY, "canary": {"steps": [{"weight": 50, "pauseSeconds": 5}]}},
            "rollout.canary.steps[0].pauseSeconds",
        ),
        ({**CANARY, "canary": {"analysis": {"minRequests": 0}}}, "rollout.canary.analysis.minRequests"),
        ({**CANARY, "canary": {"analysis": {"maxErrorRate": 1.5}}}, "rollout.canary.analysis.maxErrorRate"),
        (
            {**CANARY, "canary": {"analysis": {"maxP99LatencySeconds": 0}}},
            "rollout.canary.analysis.maxP99LatencySeconds",
        ),
        (
            {**CANARY, "canary": {"analysis": {"maxDigitDivergence": "0.1"}}},
            "rollout.canary.analysis.maxDigitDivergence",
        ),
        (
            {**CANARY, "canary": {"analysis": {"maxConfidenceDivergence": 0}}},
            "rollout.canary.analysis.maxConfidenceDivergence",
        ),
    ],
)
def test_bad_canary_names_the_field(rollout: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec({"modelVersion": "1", "rollout": rollout})
    assert caught.value.field == field


def test_a_gateway_is_parsed_and_absent_by_default() -> None:
    assert parse_spec({"modelVersion": "1"}).exposure.gateway is None
    exposure = {"enabled": True, "gateway": {"name": "public", "namespace": "gw", "sectionName": "https"}}
    parsed = parse_spec({"modelVersion": "1", "exposure": exposure}).exposure
    assert parsed.gateway == GatewayRef(name="public", namespace="gw", section_name="https")
    assert parse_spec({"modelVersion": "1", "exposure": {"gateway": {"name": "p"}}}).exposure.gateway == (
        GatewayRef(name="p")
    )


@pytest.mark.parametrize(
    ("exposure", "field"),
    [
        ({"gateway": {}}, "exposure.gateway.name"),
        ({"gateway": "public"}, "exposure.gateway"),
        ({"gateway": {"name": "Public"}}, "exposure.gateway.name"),
        ({"gateway": {"name": "p", "namespace": "a_b"}}, "exposure.gateway.namespace"),
        ({"gateway": {"name": "p", "sectionName": 1}}, "exposure.gateway.sectionName"),
        ({"gateway": {"name": "p"}, "ingressClassName": "nginx"}, "exposure.ingressClassName"),
        ({"gateway": {"name": "p"}, "tls": "edge", "host": "a.b"}, "exposure.tls"),
    ],
)
def test_a_bad_gateway_names_the_field(exposure: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec({"modelVersion": "1", "exposure": exposure})
    assert caught.value.field == field
