"""bench/ without running a benchmark: the report is a pure function of the figures (the checked-in
docs/benchmarks.md is what it makes of docs/benchmarks.json, through `bench/run.py --render` too),
sweep variants and failed runs land where they should, and the server selection's pure parts."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))

import report  # noqa: E402
import scenarios  # noqa: E402


@pytest.fixture
def figures() -> dict[str, Any]:
    return json.loads((ROOT / "docs" / "benchmarks.json").read_text())  # type: ignore[no-any-return]


def test_the_checked_in_report_is_rendered_from_its_figures(figures: dict[str, Any]) -> None:
    assert report.render(figures) == (ROOT / "docs" / "benchmarks.md").read_text()


def test_run_render_writes_the_same_report(tmp_path: Path) -> None:
    """The CLI's --render path: run.py's imports (hack/devkit.py among them) resolve from make bench."""
    output = tmp_path / "benchmarks.md"
    figures = ROOT / "docs" / "benchmarks.json"
    subprocess.run(
        [sys.executable, str(BENCH / "run.py"), "--render", str(figures), "--output", str(output)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert output.read_text() == (ROOT / "docs" / "benchmarks.md").read_text()


def test_sweep_variants_only_in_the_tuning_table_and_failures_reported(figures: dict[str, Any]) -> None:
    data = copy.deepcopy(figures)
    onnx = next(run for run in data["runs"] if run["key"] == "ours-onnx")
    variant = copy.deepcopy(onnx) | {"key": "ours-onnx[sweep:no-batching]", "notes": "no batching"}
    broken = copy.deepcopy(onnx) | {"key": "ours-onnx[sweep:broken]", "error": "RuntimeError: boom"}
    data["runs"] += [variant, broken]
    baseline = next(run for run in data["runs"] if run["key"] == "baseline")
    baseline |= {"error": "WaitTimeoutError: timed out", "results": []}
    onnx["results"][0] |= {"errors": 12, "error_detail": {"status": 12}}

    text = report.render(data)

    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert headings == [
        "## Targets (issue 6)",
        "## Targets (issue 11)",
        "## Compute limit: batched inference in-process, no HTTP",
        "## Over HTTP",
        "## Ratios to the peers (same payload, same concurrency)",
        "## Slow clients and overload",
        "## Tuning: how the defaults were chosen",
        "## Notes",
        "## The servers",
        "## Payloads",
    ]
    main_tables, tuning = text.split("## Tuning", 1)
    assert "sweep:" not in main_tables
    assert "| no-batching | tutorial-1 | 1 |" in tuning
    assert "| broken | failed: RuntimeError: boom |" in tuning
    assert "**no-batching**: no batching" in tuning
    assert f"| {baseline['label']} | failed: WaitTimeoutError: timed out |" in main_tables
    assert "| 12 refused |" in main_tables
    assert f"| {baseline['label']} |" not in main_tables.split("## Ratios", 1)[1].split("## Slow", 1)[0]


def test_variants_and_scenario_selection() -> None:
    name, env = scenarios.parse_variant("8-threads: MNIST_SERVER_THREADS=8")
    assert (name, env) == ("8-threads", {"MNIST_SERVER_THREADS": "8"})
    with pytest.raises(SystemExit):
        scenarios.parse_variant("bad: OTHER=1")

    version_dir = Path("/models/mnist/1")
    specs = scenarios.server_specs(version_dir, None, {"ours-onnx", "baseline", "kserve"})
    assert [spec.key for spec in specs] == ["ours-onnx", "baseline"]  # no KServe without its venv
    kept = scenarios.only(specs, "tutorial-1@32,v2bin-64@4")
    assert [[f"{s.payload}@{s.concurrency}" for s in spec.scenarios] for spec in kept] == [
        ["tutorial-1@32", "v2bin-64@4"],
        ["tutorial-1@32"],
    ]
    (variant,) = scenarios.ours_variants(specs[0], ["2-workers: MNIST_SERVER_WORKERS=2"], sweep=True)
    assert variant.key == "ours-onnx[sweep:2-workers]"
    assert variant.env["MNIST_SERVER_WORKERS"] == "2"
    assert variant.env["MNIST_SERVER_MODEL_ROOT"] == "/models"

    on_port = specs[1].on_port(8123, 8124)
    assert "8123" in on_port.command and "{port}" not in on_port.command
    assert on_port.env["MNIST_SERVER_PORT"] == "8123"
    assert on_port.probe_port is None and "MNIST_SERVER_PROBE_PORT" not in on_port.env
    assert specs[1].command.count("{port}") == 1  # the spec itself is unchanged
    # Our server answers probes on a port of its own, and so do its variants.
    assert specs[0].on_port(8123, 8124).env["MNIST_SERVER_PROBE_PORT"] == "8124"
    assert variant.on_port(8123, 8124).probe_port == 8124


def test_the_overload_target_judges_the_probes_where_the_kubelet_sends_them(figures: dict[str, Any]) -> None:
    import report_targets

    data = copy.deepcopy(figures)
    ours = next(run for run in data["runs"] if run["key"] == "ours-onnx")
    observed = ours["robustness"]["overload"]["observer"]
    for key in [k for k in observed if k.startswith("probe port ")]:
        del observed[key]
    slow = {"count": 60, "p50_ms": 30.0, "p99_ms": 80.0}
    observed.update({"/healthz 200": slow, "/readyz 200": slow})

    def overload_row() -> str:
        rows = report_targets.targets_issue_11(data)
        return next(r[2] for r in rows if r[0].startswith("4x capacity") and r[1] == ours["label"])

    assert "probes p99 80.0 ms" in overload_row()  # no probe port: the serving port's
    observed["probe port /healthz 200"] = {"count": 60, "p50_ms": 2.0, "p99_ms": 6.0}
    observed["probe port /readyz 200"] = {"count": 60, "p50_ms": 2.0, "p99_ms": 7.5}
    assert "probe port probes p99 7.5 ms" in overload_row()
    assert "| probe port /healthz p50 / p99 ms |" in report.render(data)


def test_the_overload_observers_sample_refusals_back_to_back_and_probes_on_both_ports() -> None:
    """The refusal's p99 is judged from the prediction observer's samples: it must not wait its
    turn behind the probes (a p99 of some seventy samples is their worst)."""
    import http.server
    import threading
    import time

    import robustness

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler) for _ in range(2)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    port, probe_port = (server.server_address[1] for server in servers)
    try:
        watching = robustness.observers(port, b"{}", probe_port)
        for observer in watching:
            observer.start()
        time.sleep(0.5)
        for observer in watching:
            observer.done.set()
            observer.join(5)
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
    predictions, probes = (observer.latencies for observer in watching)
    assert set(predictions) == {"/predict 503"}
    assert set(probes) == {
        "/healthz 200",
        "/readyz 200",
        "probe port /healthz 200",
        "probe port /readyz 200",
    }
    # No pause between predictions: several times as many as any probe gets in the same time.
    assert len(predictions["/predict 503"]) > 3 * len(probes["/healthz 200"])
