"""The report's target tables: each target of issues 6 and 11, where it was measured, the figure
and whether it was met."""

from __future__ import annotations

from typing import Any

from report_figures import fmt, our_runs, result_of, run_of
from robustness import PROBE_PORT_PREFIX

Row = tuple[str, str, str, str]  # target, where, measured, verdict


def table(rows: list[Row]) -> list[str]:
    return [
        "| target | where | measured | |",
        "| --- | --- | --- | --- |",
        *(f"| {t} | {w} | {m} | {v} |" for t, w, m, v in rows),
    ]


def best_limit(data: dict[str, Any]) -> tuple[str, float, int]:
    best = ("", 0.0, 0)
    for backend, limit in data["compute_limit"].items():
        point = limit["best"]
        if point["images_per_s"] > best[1]:
            best = (backend, point["images_per_s"], point["batch"])
    return best


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "**not met**")


def ratio_of(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def rate(result: dict[str, Any] | None) -> float | None:
    """A scenario result's requests per second, if it ran."""
    return None if result is None else float(result["requests_per_s"])


def targets(data: dict[str, Any]) -> list[Row]:
    """(target, where, measured, verdict) rows."""
    rows: list[Row] = []
    limit_backend, limit, limit_batch = best_limit(data)
    kserve = result_of(data, "kserve", "v2-1", 32)
    baseline = result_of(data, "baseline", "tutorial-1", 32)
    for run in our_runs(data):
        if run["error"]:
            continue
        key, name = run["key"], run["label"]
        c1 = result_of(data, key, "tutorial-1", 1)
        p50 = c1["latency_ms"]["p50"] if c1 else None
        rows.append(
            (
                "single image, c=1: p50 < 2 ms",
                f"{name}, /predict JSON",
                fmt(p50, ".2f", " ms"),
                verdict(None if p50 is None else p50 < 2.0),
            )
        )
        v2_32 = result_of(data, key, "v2-1", 32)
        ratio = ratio_of(rate(v2_32), rate(kserve))
        rows.append(
            (
                "single images, c=32: >= 3x KServe req/s",
                f"{name}, v2 JSON vs KServe v2 JSON",
                fmt(ratio, ".1f", "x"),
                verdict(None if ratio is None else ratio >= 3),
            )
        )
        t32 = result_of(data, key, "tutorial-1", 32)
        ratio = ratio_of(rate(t32), rate(baseline))
        rows.append(
            (
                "single images, c=32: >= 100x baseline req/s",
                f"{name}, /predict JSON vs baseline",
                fmt(ratio, ".0f", "x"),
                verdict(None if ratio is None else ratio >= 100),
            )
        )
        if t32:
            ok = t32["latency_ms"]["p99"] < 50 and t32["errors"] == 0
            rows.append(
                (
                    "single images, c=32: p99 < 50 ms, no errors",
                    f"{name}, /predict JSON",
                    f"p99 {t32['latency_ms']['p99']:.1f} ms, {t32['errors']} errors",
                    verdict(ok),
                )
            )
        batch = [r for r in run["results"] if r["images_per_request"] > 1]
        if batch and limit:
            top = max(batch, key=lambda r: r["images_per_s"])
            share = top["images_per_s"] / limit
            rows.append(
                (
                    "batches of 64: >= 60 % of the compute limit",
                    f"{name}, {top['payload']} c={top['concurrency']} vs {limit_backend} batch {limit_batch}",
                    f"{share:.0%} ({top['images_per_s']:.0f} of {limit:.0f} images/s)",
                    verdict(share >= 0.6),
                )
            )
        rss = max((r["server_max_rss_mb"] for r in run["results"]), default=None)
        cap = 150 if key.startswith("ours-onnx") else 600
        rows.append(
            (
                f"memory: RSS < {cap} MB",
                f"{name}, largest process, peak under load",
                fmt(rss, ".0f", " MB"),
                verdict(None if rss is None else rss < cap),
            )
        )
    return rows


def targets_issue_11(data: dict[str, Any]) -> list[Row]:
    """(target, where, measured, verdict) rows: speed against KServe on the same runtime, slow
    clients and overload."""
    rows: list[Row] = []
    kserve = result_of(data, "kserve", "v2-1", 32)
    for key in ("ours-onnx", "ours-onnx-before"):
        run = run_of(data, key)
        if run is None or run["error"]:
            continue
        name = run["label"]
        v2_32 = result_of(data, key, "v2-1", 32)
        ratio = ratio_of(rate(v2_32), rate(kserve))
        ok = None if ratio is None or v2_32 is None else ratio >= 3 and v2_32["latency_ms"]["p99"] < 50
        rows.append(
            (
                "single images, c=32, one worker: >= 3x KServe (ONNX Runtime) req/s, p99 < 50 ms",
                f"{name}, v2 JSON vs KServe v2 JSON",
                "n/a"
                if ratio is None or v2_32 is None
                else f"{ratio:.1f}x, p99 {v2_32['latency_ms']['p99']:.1f} ms",
                verdict(ok),
            )
        )
        c1 = result_of(data, key, "tutorial-1", 1)
        p50 = c1["latency_ms"]["p50"] if c1 else None
        rows.append(
            (
                "single image, c=1: p50 < 1 ms",
                f"{name}, /predict JSON",
                fmt(p50, ".2f", " ms"),
                verdict(None if p50 is None else p50 < 1.0),
            )
        )
        robust = run.get("robustness")
        if not robust:
            continue
        trickling = robust["slow_clients"]["trickling"]
        answered = all(m["requests_per_s"] > 0 and m["errors"] == 0 for m in trickling.values())
        worst = max(m["p99_ms"] for m in trickling.values())
        rows.append(
            (
                "256 trickling connections: /healthz, /readyz, /predict p99 < 50 ms",
                name,
                ", ".join(
                    f"{path} {m['p99_ms']:.1f} ms" if m["requests_per_s"] else f"{path} no answer"
                    for path, m in trickling.items()
                ),
                verdict(answered and worst < 50),
            )
        )
        over = robust["overload"]
        observed = over["observer"]
        refused = observed.get("/predict 503")
        # The kubelet's probes go to the probe port where the server has one (the operator's pods).
        on_probe_port = any(k.startswith(PROBE_PORT_PREFIX) for k in observed)
        prefix = PROBE_PORT_PREFIX if on_probe_port else ""
        probes = [observed[prefix + k] for k in ("/healthz 200", "/readyz 200") if prefix + k in observed]
        probe_p99 = max((m["p99_ms"] for m in probes), default=None)
        answered_share = over["answered_per_s"] / over["capacity_per_s"]
        rows.append(
            (
                "4x capacity: refused fast (503 p99), throughput kept, probes p99 < 50 ms",
                name,
                (f"503 p99 {refused['p99_ms']:.1f} ms" if refused else "no 503 seen")
                + f", {over['answered_per_s']:,.0f} req/s answered ({answered_share:.0%} of capacity)"
                + (f", {prefix}probes p99 {probe_p99:.1f} ms" if probe_p99 is not None else ""),
                verdict(
                    refused is not None
                    and refused["p99_ms"] < 50
                    and answered_share >= 0.5
                    and probe_p99 is not None
                    and probe_p99 < 50
                ),
            )
        )
    return rows


def section(data: dict[str, Any]) -> list[str]:
    """Issue 6's targets, then issue 11's when the run measured any of them."""
    lines = ["", "## Targets (issue 6)", "", *table(targets(data))]
    issue_11 = targets_issue_11(data)
    if issue_11:
        lines += ["", "## Targets (issue 11)", "", *table(issue_11)]
    return lines
