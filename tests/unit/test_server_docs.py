"""docs/server.md keeps up with the code: every setting, error reason and metric is documented."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry
from server_support import FakeModel

from mnist_server import metrics
from mnist_server.errors import Reason
from mnist_server.settings import VARIABLES, format_default

DOC = (Path(__file__).parents[2] / "docs" / "server.md").read_text()


def test_every_setting_is_in_the_settings_table() -> None:
    for var in VARIABLES:
        row = next((line for line in DOC.splitlines() if line.startswith(f"| `{var.env_name}`")), None)
        assert row is not None, var.env_name
        assert f"`{var.flag}`" in row
        default = format_default(var.default)
        assert default in row or default == "newest complete version", (var.env_name, default)


def test_every_error_reason_is_in_the_errors_table() -> None:
    for reason in Reason:
        assert f"`{reason.value}`" in DOC, reason


def test_every_metric_is_in_the_metrics_table() -> None:
    registry = CollectorRegistry()
    model = FakeModel()
    metrics.ServerMetrics(registry, model.name, model.version)
    names = {family.name for family in registry.collect()}
    assert len(names) == 9
    for name in names:
        documented = f"| `{name}_total`" if f"`{name}_total`" in DOC else f"| `{name}`"
        assert documented in DOC, name
