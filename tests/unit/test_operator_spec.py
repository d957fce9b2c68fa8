"""Parsing a MnistModel spec: defaults, and a SpecError naming the field for every bad input."""

from __future__ import annotations

from typing import Any

import pytest

from mnist_operator.spec import (
    Autoscaling,
    Availability,
    Exposure,
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
