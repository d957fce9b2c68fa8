"""The alert rules and the dashboard: valid for Prometheus, unit-tested, and on real metric names.

- `promtool check rules` and `promtool test rules` (tests/unit/prometheus_rules.test.yaml) on the
  rules of manifests/monitoring/prometheus-rule.yaml, as Prometheus would load them;
- every metric the rules and the dashboard query is one the code really exports (the server's
  and the operator's metric classes, instantiated on fresh registries) or one of the few
  kube-state-metrics series they document;
Evaluating the dashboard's queries against a real Prometheus is tests/integration/monitoring; the
dashboard ConfigMap that kustomize renders is checked in tests/integration/packaging.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from mnist_operator.metrics import Metrics
from mnist_server.metrics import ServerMetrics

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "manifests" / "monitoring"
RULE_FILE = MONITORING / "prometheus-rule.yaml"
DASHBOARD_FILE = MONITORING / "mnist-dashboard.json"
RULE_TESTS = Path(__file__).with_name("prometheus_rules.test.yaml")
PROMTOOL = shutil.which("promtool")

# kube-state-metrics series the rules and the dashboard read (see the rule file's header).
KUBE_STATE_METRICS = {
    "kube_deployment_spec_replicas",
    "kube_deployment_status_replicas_available",
    "kube_deployment_status_replicas_ready",
    "kube_deployment_labels",
}
METRIC_NAME = re.compile(r"\b(?:mnist_server|mnist_operator|kube)_[a-z0-9_]+\b|\bup(?=\{)")

needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (bash .ci/run installs prometheus)"
)


def rule_groups() -> dict[str, Any]:
    rule = yaml.safe_load(RULE_FILE.read_text())
    assert rule["kind"] == "PrometheusRule"
    spec: dict[str, Any] = rule["spec"]
    return spec


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD_FILE.read_text())
    return loaded


def dashboard_exprs() -> list[str]:
    exprs = [t["expr"] for panel in dashboard()["panels"] for t in panel.get("targets", [])]
    assert exprs
    return exprs


def rule_exprs() -> list[str]:
    return [rule["expr"] for group in rule_groups()["groups"] for rule in group["rules"]]


def exported_series() -> set[str]:
    """Series names the operator and the server really expose (types decide the suffixes)."""
    registry = CollectorRegistry()
    ServerMetrics(registry, "mnist", "1")
    Metrics.create(registry)
    names: set[str] = set()
    for family in registry.collect():
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(family.name)
    return names


@needs_promtool
def test_promtool_checks_and_unit_tests_the_rules(tmp_path: Path) -> None:
    assert PROMTOOL is not None
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule_groups(), sort_keys=False))
    shutil.copy(RULE_TESTS, tmp_path / "tests.yaml")
    check = subprocess.run(
        [PROMTOOL, "check", "rules", "rules.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 11 rules found" in check.stdout
    tested = subprocess.run(
        [PROMTOOL, "test", "rules", "tests.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_has_a_unit_test_and_a_runbook() -> None:
    alerts = {rule["alert"] for group in rule_groups()["groups"] for rule in group["rules"]}
    assert alerts == {
        "MnistModelHighErrorRate",
        "MnistModelHighLatency",
        "MnistModelNoReadyReplicas",
        "MnistModelVersionMismatch",
        "MnistOperatorDown",
        "MnistOperatorReconcileErrors",
        "MnistOperatorWorkQueueStuck",
        "MnistOperatorNoLeader",
        "MnistOperatorSeveralLeaders",
        "MnistModelCanaryRolledBack",
        "MnistModelCanaryStuck",
    }
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    firing = {
        case["alertname"] for test in tests for case in test["alert_rule_test"] if case.get("exp_alerts")
    }
    assert firing == alerts
    operations = (ROOT / "docs" / "operations.md").read_text()
    for group in rule_groups()["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("warning", "critical")
            anchor = f"docs/operations.md#{rule['alert'].lower()}"
            assert anchor in rule["annotations"]["description"]
            assert f"### {rule['alert']}" in operations, f"no runbook section for {rule['alert']}"


@pytest.mark.parametrize("source", ["rules", "dashboard"])
def test_queries_use_only_metrics_that_exist(source: str) -> None:
    exprs = rule_exprs() if source == "rules" else dashboard_exprs()
    used = {name for expr in exprs for name in METRIC_NAME.findall(expr)}
    known = exported_series() | KUBE_STATE_METRICS | {"up"}
    assert used - known == set()
    # Each family the issue asks for is really on the dashboard.
    if source == "dashboard":
        for needed in (
            "mnist_server_requests_total",
            "mnist_server_request_duration_seconds_bucket",
            "mnist_server_errors_total",
            "mnist_server_predictions_total",
            "mnist_server_model_info",
            "kube_deployment_status_replicas_available",
            "mnist_operator_reconciles_total",
            "mnist_operator_reconcile_errors_total",
        ):
            assert needed in used, needed


def test_dashboard_is_wellformed() -> None:
    board = dashboard()
    assert board["uid"] == "mnist-operator"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in board["templating"]["list"]}
    assert variables == {"datasource", "namespace", "model"}
    for panel in board["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["title"] and panel["description"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        for target in panel["targets"]:
            # Only variables the dashboard defines, or Grafana's own.
            for var in re.findall(r"\$(\w+)", target["expr"]):
                assert var in variables | {"__rate_interval", "__range"}, (panel["title"], var)
