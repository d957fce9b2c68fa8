"""The MnistModel CRD: documented, structural, strict, and in step with the operator's parser.

(The CEL rules themselves are exercised against the real API server in the integration tests.)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mnist_operator import api
from mnist_operator.spec import (
    MODEL_VERSION_PATTERN,
    ROLLOUT_STRATEGIES,
    SPREAD_MODES,
    ServiceMonitorSpec,
    parse_spec,
)

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / "aidevsecops.dev_mnistmodels.yaml"


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_FILE.read_text())


@pytest.fixture(scope="module")
def version(crd: dict[str, Any]) -> dict[str, Any]:
    (only,) = crd["spec"]["versions"]
    return only


@pytest.fixture(scope="module")
def spec_schema(version: dict[str, Any]) -> dict[str, Any]:
    return version["schema"]["openAPIV3Schema"]["properties"]["spec"]


def walk(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, child in (schema.get("properties") or {}).items():
        yield from walk(child, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}{{}}")


def test_names_scope_and_subresources(crd: dict[str, Any], version: dict[str, Any]) -> None:
    assert crd["metadata"]["name"] == f"{api.PLURAL}.{api.GROUP}"
    spec = crd["spec"]
    assert (spec["group"], spec["scope"], spec["names"]["kind"]) == (api.GROUP, "Namespaced", api.KIND)
    assert spec["names"]["shortNames"] == ["mnist", "mm"]
    assert version["name"] == api.VERSION and version["served"] and version["storage"]
    assert version["subresources"] == {
        "status": {},
        "scale": {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        },
    }


def test_printer_columns(version: dict[str, Any]) -> None:
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Version"] == ".spec.modelVersion"
    assert columns["Ready"] == '.status.conditions[?(@.type=="Ready")].status'
    assert columns["Replicas"] == ".status.replicas"
    assert columns["URL"] == ".status.url"
    assert columns["Age"] == ".metadata.creationTimestamp"


def test_every_field_is_described_so_kubectl_explain_teaches_it(
    spec_schema: dict[str, Any], version: dict[str, Any]
) -> None:
    status_schema = version["schema"]["openAPIV3Schema"]["properties"]["status"]
    undocumented = [
        path
        for schema in (spec_schema, status_schema)
        for path, node in walk(schema)
        if not path.endswith("{}") and not node.get("description")
    ]
    assert undocumented == []


def test_schema_is_strict(version: dict[str, Any]) -> None:
    for path, node in walk(version["schema"]["openAPIV3Schema"]):
        assert not node.get("x-kubernetes-preserve-unknown-fields"), path
        if node.get("type") == "object" and path not in ("", ".metadata"):
            assert "properties" in node or "additionalProperties" in node, f"{path} accepts anything"


def test_strings_and_lists_are_bounded_for_cel_cost(spec_schema: dict[str, Any]) -> None:
    for path, node in walk(spec_schema):
        if node.get("type") == "string" and "enum" not in node:
            assert "maxLength" in node, path
        if node.get("type") == "array":
            assert "maxItems" in node, path


def test_cross_field_rules_are_cel(spec_schema: dict[str, Any]) -> None:
    rules = [r["rule"] for _, node in walk(spec_schema) for r in node.get("x-kubernetes-validations", [])]
    assert "!(has(self.autoscaling) && has(self.replicas))" in rules
    assert "!has(self.minReplicas) || self.minReplicas <= self.maxReplicas" in rules
    assert "self.matches('^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$')" in rules
    assert any("has(self.host)" in r for r in rules)
    for _, node in walk(spec_schema):
        for rule in node.get("x-kubernetes-validations", []):
            assert rule.get("message"), f"rule {rule['rule']!r} has no message"


def test_replicas_has_no_default_so_autoscaling_can_exclude_it(spec_schema: dict[str, Any]) -> None:
    assert "default" not in spec_schema["properties"]["replicas"]


def test_model_version_rule_matches_the_parser_and_the_repository(spec_schema: dict[str, Any]) -> None:
    from mnist_server.repository import VERSION_PATTERN

    (rule,) = spec_schema["properties"]["modelVersion"]["x-kubernetes-validations"]
    regex = rule["rule"].split("'")[1]
    assert regex == MODEL_VERSION_PATTERN.pattern == VERSION_PATTERN.pattern


def test_reserved_env_names_match_the_operator(spec_schema: dict[str, Any]) -> None:
    (rule,) = spec_schema["properties"]["env"]["x-kubernetes-validations"]
    for name in api.RESERVED_ENV:
        assert f"'{name}'" in rule["rule"]


def test_schema_defaults_match_the_parser_defaults(spec_schema: dict[str, Any]) -> None:
    props = spec_schema["properties"]
    rollout = {
        k: v["default"]
        for k, v in props["rollout"]["properties"].items()
        if "default" in v and k not in ("strategy", "canary")
    }
    autoscaling = {k: v["default"] for k, v in props["autoscaling"]["properties"].items() if "default" in v}
    monitor = props["monitoring"]["properties"]["serviceMonitor"]["properties"]
    parsed = parse_spec({"modelVersion": "1", "autoscaling": {"maxReplicas": 5}})
    assert rollout == {
        "maxSurge": parsed.rollout.max_surge,
        "maxUnavailable": parsed.rollout.max_unavailable,
        "progressDeadlineSeconds": parsed.rollout.progress_deadline_seconds,
    }
    assert parsed.autoscaling is not None
    assert autoscaling == {
        "minReplicas": parsed.autoscaling.min_replicas,
        "targetCPUUtilizationPercentage": parsed.autoscaling.target_cpu_utilization_percentage,
    }
    assert monitor["interval"]["default"] == ServiceMonitorSpec.interval
    assert monitor["enabled"]["default"] is False
    assert props["exposure"]["properties"]["tls"]["default"] == "none"
    availability = props["availability"]["properties"]
    budget = availability["podDisruptionBudget"]["properties"]
    spread = availability["topologySpread"]["properties"]
    assert (budget["enabled"]["default"], budget["maxUnavailable"]["default"]) == (
        parsed.availability.disruption_budget,
        parsed.availability.max_unavailable,
    )
    assert (spread["nodes"]["default"], spread["zones"]["default"]) == (
        parsed.availability.spread_nodes,
        parsed.availability.spread_zones,
    )
    assert spread["nodes"]["enum"] == spread["zones"]["enum"] == list(SPREAD_MODES)


def test_kustomization_lists_the_crd() -> None:
    kustomization = yaml.safe_load((ROOT / "crds" / "kustomization.yaml").read_text())
    assert kustomization["resources"] == [CRD_FILE.name]


def test_canary_defaults_match_the_parser_and_a_model_without_one_gets_none(
    spec_schema: dict[str, Any],
) -> None:
    rollout = spec_schema["properties"]["rollout"]["properties"]
    # No default strategy nor canary: objects stored before the canary existed default as before.
    assert "default" not in rollout["strategy"] and "default" not in rollout["canary"]
    canary = rollout["canary"]["properties"]
    parsed = parse_spec({"modelVersion": "1", "rollout": {"strategy": "Canary"}}).rollout.canary
    assert parsed is not None
    assert canary["steps"]["default"] == [
        {"weight": step.weight, "pauseSeconds": step.pause_seconds} for step in parsed.steps
    ]
    assert canary["steps"]["items"]["properties"]["pauseSeconds"]["default"] == parsed.steps[0].pause_seconds
    analysis = {k: v["default"] for k, v in canary["analysis"]["properties"].items()}
    assert analysis == {
        "minRequests": parsed.analysis.min_requests,
        "maxErrorRate": parsed.analysis.max_error_rate,
        "maxP99LatencySeconds": parsed.analysis.max_p99_latency_seconds,
        "maxDigitDivergence": parsed.analysis.max_digit_divergence,
        "maxConfidenceDivergence": parsed.analysis.max_confidence_divergence,
    }
    assert rollout["strategy"]["enum"] == list(ROLLOUT_STRATEGIES)
