"""The condition registry (mnist_operator.conditions) is the one list: the docs, the error
metric, the dashboard and the Argo CD docs agree with it, and its sets do not contradict each
other. (The Argo CD health check itself is held to it in test_argocd_health.py.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

from mnist_operator import metrics
from mnist_operator.conditions import (
    FAILURE_REASONS,
    QUIET_REASONS,
    STUCK_POD_REASONS,
    TRANSIENT_REASONS,
    ConditionType,
    EventReason,
    Reason,
)

ROOT = Path(__file__).resolve().parents[2]
CAMEL = re.compile(r"`([A-Z][A-Za-z]+)`")


def section(doc: Path, heading: str) -> str:
    text = doc.read_text()
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start : end if end != -1 else len(text)]


def test_the_docs_name_every_condition_type_and_reason_and_no_other() -> None:
    text = section(ROOT / "docs" / "operator.md", "## Status and conditions")
    types = {str(t) for t in ConditionType}
    rows = {m.group(1) for m in re.finditer(r"^\| `(\w+)`", text, re.MULTILINE)}
    assert rows == types
    named = set(CAMEL.findall(text)) - {"Unknown"}
    assert named == {str(r) for r in Reason} | {str(e) for e in EventReason} | types


def test_the_error_metric_counts_exactly_the_reconcile_failures() -> None:
    assert set(metrics.ERROR_REASONS) == {*FAILURE_REASONS, metrics.UNEXPECTED}
    dashboard = json.loads((ROOT / "manifests" / "monitoring" / "mnist-dashboard.json").read_text())
    panel = next(p for p in dashboard["panels"] if p.get("title") == "Reconcile errors by reason")
    assert set(re.findall(r"\b[A-Z][A-Za-z]+\b", panel["description"].split(":", 1)[1])) >= set(
        metrics.ERROR_REASONS
    )


def test_argo_cds_health_table_in_the_install_docs_matches_the_transient_reasons() -> None:
    text = section(ROOT / "docs" / "install.md", "| Progressing |")
    progressing = next(line for line in text.splitlines() if line.startswith("| Progressing |"))
    suspended = next(line for line in text.splitlines() if line.startswith("| Suspended |"))
    assert set(CAMEL.findall(progressing)) == {str(r) for r in TRANSIENT_REASONS}
    assert set(CAMEL.findall(suspended)) == {Reason.SCALED_TO_ZERO}


def test_the_reason_sets_do_not_contradict_each_other() -> None:
    stuck = set(STUCK_POD_REASONS)
    assert len(stuck) == len(STUCK_POD_REASONS)
    # A stuck pod, a failure and a stuck rollout always get a Warning Event...
    assert not QUIET_REASONS & (stuck | FAILURE_REASONS | {Reason.PROGRESS_DEADLINE_EXCEEDED})
    # ... and Argo CD calls them Degraded, not Progressing.
    assert not TRANSIENT_REASONS & (stuck | {Reason.PROGRESS_DEADLINE_EXCEEDED, Reason.INVALID_SPEC})
    # Asked for, so quiet; but Suspended in Argo CD, not Progressing.
    assert Reason.SCALED_TO_ZERO in QUIET_REASONS - TRANSIENT_REASONS
