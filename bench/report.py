"""docs/benchmarks.md from the figures bench/run.py collected (a pure function of them)."""

from __future__ import annotations

from typing import Any

OURS = ("ours-onnx", "ours-tensorflow")


def _find(data: dict[str, Any], server: str, payload: str, concurrency: int) -> dict[str, Any] | None:
    for run in data["runs"]:
        if run["key"] != server:
            continue
        for result in run["results"]:
            if result["payload"] == payload and result["concurrency"] == concurrency:
                return result  # type: ignore[no-any-return]
    return None


def _run(data: dict[str, Any], key: str) -> dict[str, Any] | None:
    return next((run for run in data["runs"] if run["key"] == key), None)


def _best_limit(data: dict[str, Any]) -> tuple[str, float, int]:
    best = ("", 0.0, 0)
    for backend, limit in data["compute_limit"].items():
        point = limit["best"]
        if point["images_per_s"] > best[1]:
            best = (backend, point["images_per_s"], point["batch"])
    return best


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "**not met**")


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _fmt(value: float | None, spec: str = ".1f", suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def targets(data: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(target, where, measured, verdict) rows."""
    rows: list[tuple[str, str, str, str]] = []
    limit_backend, limit, limit_batch = _best_limit(data)
    kserve = _find(data, "kserve", "v2-1", 32)
    baseline = _find(data, "baseline", "tutorial-1", 32)
    for run in _ours(data):
        if run["error"]:
            continue
        key, name = run["key"], run["label"]
        c1 = _find(data, key, "tutorial-1", 1)
        p50 = c1["latency_ms"]["p50"] if c1 else None
        rows.append(
            (
                "single image, c=1: p50 < 2 ms",
                f"{name}, /predict JSON",
                _fmt(p50, ".2f", " ms"),
                _verdict(None if p50 is None else p50 < 2.0),
            )
        )
        v2_32 = _find(data, key, "v2-1", 32)
        ratio = _ratio(v2_32 and v2_32["requests_per_s"], kserve and kserve["requests_per_s"])
        rows.append(
            (
                "single images, c=32: >= 3x KServe req/s",
                f"{name}, v2 JSON vs KServe v2 JSON",
                _fmt(ratio, ".1f", "x"),
                _verdict(None if ratio is None else ratio >= 3),
            )
        )
        t32 = _find(data, key, "tutorial-1", 32)
        ratio = _ratio(t32 and t32["requests_per_s"], baseline and baseline["requests_per_s"])
        rows.append(
            (
                "single images, c=32: >= 100x baseline req/s",
                f"{name}, /predict JSON vs baseline",
                _fmt(ratio, ".0f", "x"),
                _verdict(None if ratio is None else ratio >= 100),
            )
        )
        if t32:
            ok = t32["latency_ms"]["p99"] < 50 and t32["errors"] == 0
            rows.append(
                (
                    "single images, c=32: p99 < 50 ms, no errors",
                    f"{name}, /predict JSON",
                    f"p99 {t32['latency_ms']['p99']:.1f} ms, {t32['errors']} errors",
                    _verdict(ok),
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
                    _verdict(share >= 0.6),
                )
            )
        rss = max((r["server_max_rss_mb"] for r in run["results"]), default=None)
        cap = 150 if key.startswith("ours-onnx") else 600
        rows.append(
            (
                f"memory: RSS < {cap} MB",
                f"{name}, largest process, peak under load",
                _fmt(rss, ".0f", " MB"),
                _verdict(None if rss is None else rss < cap),
            )
        )
    return rows


def targets_issue_11(data: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(target, where, measured, verdict) rows: speed against KServe on the same runtime, slow
    clients and overload."""
    rows: list[tuple[str, str, str, str]] = []
    kserve = _find(data, "kserve", "v2-1", 32)
    for key in ("ours-onnx", "ours-onnx-before"):
        run = _run(data, key)
        if run is None or run["error"]:
            continue
        name = run["label"]
        v2_32 = _find(data, key, "v2-1", 32)
        ratio = _ratio(v2_32 and v2_32["requests_per_s"], kserve and kserve["requests_per_s"])
        ok = None if ratio is None or v2_32 is None else ratio >= 3 and v2_32["latency_ms"]["p99"] < 50
        rows.append(
            (
                "single images, c=32, one worker: >= 3x KServe (ONNX Runtime) req/s, p99 < 50 ms",
                f"{name}, v2 JSON vs KServe v2 JSON",
                "n/a"
                if ratio is None or v2_32 is None
                else f"{ratio:.1f}x, p99 {v2_32['latency_ms']['p99']:.1f} ms",
                _verdict(ok),
            )
        )
        c1 = _find(data, key, "tutorial-1", 1)
        p50 = c1["latency_ms"]["p50"] if c1 else None
        rows.append(
            (
                "single image, c=1: p50 < 1 ms",
                f"{name}, /predict JSON",
                _fmt(p50, ".2f", " ms"),
                _verdict(None if p50 is None else p50 < 1.0),
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
                _verdict(answered and worst < 50),
            )
        )
        over = robust["overload"]
        observed = over["observer"]
        refused = observed.get("/predict 503")
        probes = [observed[k] for k in ("/healthz 200", "/readyz 200") if k in observed]
        probe_p99 = max((m["p99_ms"] for m in probes), default=None)
        answered_share = over["answered_per_s"] / over["capacity_per_s"]
        rows.append(
            (
                "4x capacity: refused fast (503 p99), throughput kept, probes p99 < 50 ms",
                name,
                (f"503 p99 {refused['p99_ms']:.1f} ms" if refused else "no 503 seen")
                + f", {over['answered_per_s']:,.0f} req/s answered ({answered_share:.0%} of capacity)"
                + (f", probes p99 {probe_p99:.1f} ms" if probe_p99 is not None else ""),
                _verdict(
                    refused is not None
                    and refused["p99_ms"] < 50
                    and answered_share >= 0.5
                    and probe_p99 is not None
                    and probe_p99 < 50
                ),
            )
        )
    return rows


def robustness_section(data: dict[str, Any]) -> list[str]:
    runs = [run for run in data["runs"] if run.get("robustness") and not _is_variant(run)]
    if not runs:
        return []
    lines = [
        "",
        "## Slow clients and overload",
        "",
        "**Slow clients** (bench/robustness.py): 256 connections trickle a byte a second, half of them "
        "their headers, half a body (each one the server cuts is replaced at once). wrk measures "
        "`/healthz` and `/readyz` (4 connections) and single-image `/predict` (8 connections), first "
        "without the tricklers (usual), then with them.",
        "",
        "| server | path | usual req/s | usual p50 ms | usual p99 ms | trickling req/s | trickling p50 ms "
        "| trickling p99 ms | errors |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in runs:
        slow = run["robustness"]["slow_clients"]
        for path, usual in slow["usual"].items():
            under = slow["trickling"][path]
            latency = (
                f"{under['p50_ms']:.2f} | {under['p99_ms']:.2f}"
                if under["requests_per_s"]
                else "no answer | no answer"
            )
            lines.append(
                f"| {run['label']} | {path} | {usual['requests_per_s']:,.0f} | {usual['p50_ms']:.2f} | "
                f"{usual['p99_ms']:.2f} | {under['requests_per_s']:,.0f} | {latency} | {under['errors']} |"
            )
    lines += [""]
    for run in runs:
        cut = run["robustness"]["slow_clients"]["cut"]
        answers = ", ".join(f"{key} x{count}" for key, count in cut["answers"].items()) or "none"
        lines.append(
            f"- {run['label']}: {cut['bodies']} trickled bodies and {cut['headers']} trickled headers "
            f"were cut during the run (median after {_fmt(cut['body_seconds_median'], '.1f', ' s')} and "
            f"{_fmt(cut['header_seconds_median'], '.1f', ' s')}); what they got: {answers}."
        )
    lines += [
        "",
        "**Overload**: wrk paces 960 connections to offer four times the single-image rate the server "
        "answered at 32 connections (its capacity here), for the scenario's duration (each connection "
        "waits for its answer, so what they offer falls short of that once answers slow: the offered "
        "column is what they sent); an observer "
        "meanwhile sends one request at a time (a prediction, `/healthz`, `/readyz`, each on a new "
        "connection) and records its status and latency.",
        "",
        "| server | capacity req/s | offered req/s | answered req/s | refused | observer: answered /predict "
        "p50 / p99 ms | refused /predict p50 / p99 ms | /healthz p50 / p99 ms | /readyz p50 / p99 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]

    def cell(observed: dict[str, Any], key: str) -> str:
        m = observed.get(key)
        return f"{m['p50_ms']:.1f} / {m['p99_ms']:.1f} (n={m['count']})" if m else "none"

    for run in runs:
        over = run["robustness"]["overload"]
        observed = over["observer"]
        lines.append(
            f"| {run['label']} | {over['capacity_per_s']:,.0f} | {over['offered_per_s']:,.0f} | "
            f"{over['answered_per_s']:,.0f} | {over['refused_share']:.0%} | "
            f"{cell(observed, '/predict 200')} | {cell(observed, '/predict 503')} | "
            f"{cell(observed, '/healthz 200')} | {cell(observed, '/readyz 200')} |"
        )
        others = {k: v for k, v in observed.items() if not k.endswith((" 200", " 503"))}
        if others or over["socket_errors"]:
            also = ", ".join(f"{key} x{value['count']}" for key, value in others.items())
            lines.append(
                f"| {run['label']}: also | | | | | {also} | wrk socket errors {over['socket_errors']} | | |"
            )
    return lines


def render(data: dict[str, Any]) -> str:
    machine = data["machine"]
    model = data["model"]["metadata"]
    lines = [
        "# Model server benchmarks",
        "",
        "<!-- Generated by bench/run.py (`make bench`); do not edit by hand: re-run it. -->",
        "",
        f"Measured {data['started']} to {data['finished']} with `{data['command']}` "
        f"({data['duration_s']:g} s per scenario after {data['warmup_s']:g} s of unrecorded warm-up).",
        "",
        f"- Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB, "
        f"Linux {machine['kernel']}, Python {machine['python']}, {machine['wrk']}.",
        f"- Load average (1 min) at start {data['load']['start']:.2f}, at end {data['load']['end']:.2f}; "
        "each row's load before it ran is in the raw figures (docs/benchmarks.json).",
        f"- Model: {model.get('architecture', '?')}, {model.get('parameters', '?'):,} parameters "
        f"(test accuracy {model.get('test_accuracy', 0):.4f} after a short benchmark training; "
        "speed does not depend on it).",
        "- Versions: ours "
        + ", ".join(f"{k} {v}" for k, v in sorted(data["versions"]["ours"].items()))
        + (
            "; KServe's venv " + ", ".join(f"{k} {v}" for k, v in sorted(data["versions"]["kserve"].items()))
            if data["versions"]["kserve"]
            else ""
        ),
        "",
        "## Targets (issue 6)",
        "",
        "| target | where | measured | |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| {t} | {w} | {m} | {v} |" for t, w, m, v in targets(data)]
    issue_11 = targets_issue_11(data)
    if issue_11:
        lines += [
            "",
            "## Targets (issue 11)",
            "",
            "| target | where | measured | |",
            "| --- | --- | --- | --- |",
        ]
        lines += [f"| {t} | {w} | {m} | {v} |" for t, w, m, v in issue_11]
    lines += [
        "",
        "## Compute limit: batched inference in-process, no HTTP",
        "",
        "The backend called in a loop on real test images (bench/compute_limit.py), in a fresh process "
        "per backend. The compute limit is the best of these rows.",
        "",
        "| backend | configuration | batch | images/s | ms per call |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for backend, limit in data["compute_limit"].items():
        for point in limit["points"]:
            rate, ms = point["images_per_s"], point["ms_per_call"]
            config = point.get("config", "default threads")
            lines.append(f"| {backend} | {config} | {point['batch']} | {rate:,.0f} | {ms:.3f} |")
    lines += [
        "",
        "## Over HTTP",
        "",
        "wrk (one thread, closed loop: each connection sends its next request when the answer arrives) on "
        '127.0.0.1. req/s counts answered requests; "refused" are answers with an HTTP error (our '
        "server's 503 past MAX_INFLIGHT, 64 per worker by default). Latency is end to end as wrk sees "
        "it, refusals included. Server CPU is the server's whole process tree in "
        "cores (2.0 = both cores busy); RSS is the largest single process at its peak during the run, PSS "
        "the whole tree's proportional share. wrk CPU shows the load generator is not the bottleneck.",
        "",
        "| server | payload | conc. | req/s | images/s | p50 ms | p99 ms | errors | server CPU | RSS MB "
        "| PSS MB | wrk CPU |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in data["runs"]:
        if _is_variant(run):
            continue
        if run["error"]:
            lines.append(f"| {run['label']} | failed: {run['error']} | | | | | | | | | | |")
            continue
        for r in run["results"]:
            lines.append(
                f"| {run['label']} | {r['payload']} | {r['concurrency']} | {r['requests_per_s']:,.1f} | "
                f"{r['images_per_s']:,.0f} | {r['latency_ms']['p50']:.2f} | {r['latency_ms']['p99']:.2f} | "
                f"{_errors(r)} | {r['server_cores']:.2f} | {r['server_max_rss_mb']:.0f} | "
                f"{r['server_total_pss_mb']:.0f} | {r['wrk_cores']:.2f} |"
            )
    lines += ["", "## Ratios to the peers (same payload, same concurrency)", ""]
    lines += [
        "| ours | peer | payload | conc. | req/s ratio | p50 ratio (peer / ours) |",
        "| --- | --- | --- | ---: | ---: | ---: |",
    ]
    for ours in _ours(data):
        if ours["error"]:
            continue
        key = ours["key"]
        for peer_key in ("kserve", "baseline"):
            peer = _run(data, peer_key)
            if peer is None or peer["error"]:
                continue
            for r in peer["results"]:
                mine = _find(data, key, r["payload"], r["concurrency"])
                if mine is None or not r["requests_per_s"]:
                    continue
                lines.append(
                    f"| {ours['label']} | {peer['label']} | {r['payload']} | {r['concurrency']} | "
                    f"{mine['requests_per_s'] / r['requests_per_s']:.1f}x | "
                    f"{r['latency_ms']['p50'] / max(mine['latency_ms']['p50'], 1e-9):.1f}x |"
                )
    lines += robustness_section(data)
    lines += _tuning(data)
    lines += [
        "",
        "## Notes",
        "",
        "- The machine is shared: other work ran on its two cores during the runs (the load average "
        "above), so every figure is noisy, by 20-30 % from one run to the next; compare rows of the "
        "same run, and repeat a scenario (`--only`) before trusting a difference.",
        "- KServe runs one process (its default), on the same model.onnx and the same ONNX Runtime "
        "(and session options) as our onnx backend, so the ratio measures the serving stack alone.",
        "- Our server runs under Granian's RSGI interface: HTTP in Rust, each request on the worker's "
        "asyncio event loop, JSON of lone small requests decoded on the loop, the model in the "
        "micro-batcher's thread. One worker process is bound by the Python side of a request (JSON "
        "and NumPy conversion, the glue, under the GIL); a second worker on the second core nearly "
        "doubles single-image throughput. Batches of 64 are bound by the model instead.",
    ]
    lines += ["", "## The servers", ""]
    for run in data["runs"]:
        if _is_variant(run):
            continue
        lines.append(
            f"- **{run['label']}**: {run['notes']}. Ready {run['ready_seconds']:.1f} s after start; "
            f"accuracy on the first 64 test images {run['sanity_accuracy']:.3f}; idle RSS "
            f"{run['idle_max_rss_mb']:.0f} MB (largest process), "
            f"PSS {run['idle_total_pss_mb']:.0f} MB (tree)."
        )
    lines += [
        "",
        "## Payloads",
        "",
        "| name | what | images | bytes per request |",
        "| --- | --- | ---: | ---: |",
    ]
    for name, payload in data["payloads"].items():
        lines.append(f"| {name} | {payload['description']} | {payload['images']} | {payload['bytes']:,} |")
    lines += [
        "",
        "Pixel values are real MNIST test images written as a Python client writes them "
        "(`json.dumps(image.tolist())`, full float precision). `v2bin` uses the Open Inference "
        "Protocol's binary tensor extension (`Inference-Header-Content-Length`), raw little-endian FP32.",
        "",
    ]
    return "\n".join(lines)


def _errors(result: dict[str, Any]) -> str:
    """Failed requests; those answered with an HTTP error (our server's 503s past MAX_INFLIGHT)
    said so: they are refusals, not failures."""
    detail = result.get("error_detail", {})
    if result["errors"] and set(detail) == {"status"}:
        return f"{result['errors']:,} refused"
    return f"{result['errors']:,}"


def _is_variant(run: dict[str, Any]) -> bool:
    """A sweep variant: reported in the tuning table only."""
    return "[sweep:" in run["key"]


def _ours(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Our server's runs for the main tables: each backend, and variants given with --variant."""
    return [run for run in data["runs"] if run["key"].startswith(OURS) and not _is_variant(run)]


def _tuning(data: dict[str, Any]) -> list[str]:
    variants = [run for run in data["runs"] if _is_variant(run)]
    if not variants:
        return []
    lines = [
        "",
        "## Tuning: how the defaults were chosen",
        "",
        "Our server (onnx backend) with one setting changed at a time (`--sweep`). CPU per request is "
        "the server's CPU time divided by the requests answered: what the settings cost, less "
        "sensitive to other load on the machine than the rates are.",
        "",
        "| variant | payload | conc. | req/s | images/s | p50 ms | p99 ms | errors | server CPU "
        "| CPU ms/request |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in variants:
        name = run["key"].split("[sweep:", 1)[1].rstrip("]")
        if run["error"]:
            lines.append(f"| {name} | failed: {run['error']} | | | | | | | | |")
            continue
        for r in run["results"]:
            per_request = 1000 * r["server_cores"] / r["requests_per_s"] if r["requests_per_s"] else 0.0
            lines.append(
                f"| {name} | {r['payload']} | {r['concurrency']} | {r['requests_per_s']:,.1f} | "
                f"{r['images_per_s']:,.0f} | {r['latency_ms']['p50']:.2f} | {r['latency_ms']['p99']:.2f} | "
                f"{r['errors']} | {r['server_cores']:.2f} | {per_request:.2f} |"
            )
    lines += [
        "",
        "Variants: "
        + "; ".join(
            f"**{run['key'].split('[sweep:', 1)[1].rstrip(']')}**: {run['notes']}" for run in variants
        )
        + ".",
    ]
    return lines
