"""The report's tables of measured figures: every scenario over HTTP, our server against its
peers, slow clients and overload, and the tuning sweep."""

from __future__ import annotations

from typing import Any

from report_figures import errors_cell, fmt, is_sweep_variant, our_runs, result_of, run_of


def http_section(data: dict[str, Any]) -> list[str]:
    lines = [
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
        if is_sweep_variant(run):
            continue
        if run["error"]:
            lines.append(f"| {run['label']} | failed: {run['error']} | | | | | | | | | | |")
            continue
        for r in run["results"]:
            lines.append(
                f"| {run['label']} | {r['payload']} | {r['concurrency']} | {r['requests_per_s']:,.1f} | "
                f"{r['images_per_s']:,.0f} | {r['latency_ms']['p50']:.2f} | {r['latency_ms']['p99']:.2f} | "
                f"{errors_cell(r)} | {r['server_cores']:.2f} | {r['server_max_rss_mb']:.0f} | "
                f"{r['server_total_pss_mb']:.0f} | {r['wrk_cores']:.2f} |"
            )
    return lines


def ratios_section(data: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "## Ratios to the peers (same payload, same concurrency)",
        "",
        "| ours | peer | payload | conc. | req/s ratio | p50 ratio (peer / ours) |",
        "| --- | --- | --- | ---: | ---: | ---: |",
    ]
    for ours in our_runs(data):
        if ours["error"]:
            continue
        key = ours["key"]
        for peer_key in ("kserve", "baseline"):
            peer = run_of(data, peer_key)
            if peer is None or peer["error"]:
                continue
            for r in peer["results"]:
                mine = result_of(data, key, r["payload"], r["concurrency"])
                if mine is None or not r["requests_per_s"]:
                    continue
                lines.append(
                    f"| {ours['label']} | {peer['label']} | {r['payload']} | {r['concurrency']} | "
                    f"{mine['requests_per_s'] / r['requests_per_s']:.1f}x | "
                    f"{r['latency_ms']['p50'] / max(mine['latency_ms']['p50'], 1e-9):.1f}x |"
                )
    return lines


def robustness_section(data: dict[str, Any]) -> list[str]:
    runs = [run for run in data["runs"] if run.get("robustness") and not is_sweep_variant(run)]
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
            f"were cut during the run (median after {fmt(cut['body_seconds_median'], '.1f', ' s')} and "
            f"{fmt(cut['header_seconds_median'], '.1f', ' s')}); what they got: {answers}."
        )
    lines += [
        "",
        "**Overload**: wrk paces 960 connections to offer four times the single-image rate the server "
        "answered at 32 connections (its capacity here), for the scenario's duration (each connection "
        "waits for its answer, so what they offer falls short of that once answers slow: the offered "
        "column is what they sent); meanwhile "
        "two observers send one request at a time, each on a new connection, and record its status "
        "and latency: one sends predictions back to back (as many as the run allows, so that the p99 "
        "is not one outlier), the other `/healthz` and `/readyz` every 10 ms or so, then both probes "
        "again on the server's probe port if it has one (`MNIST_SERVER_PROBE_PORT`, where the "
        "operator points the kubelet). wrk's own percentiles cover every request it sent, answered "
        "and refused. "
        "Then the same flood goes to the floor: bench/refuse_all.py, a Granian app served like ours "
        "(one worker, uvloop) that only reads each body and answers 503. How fast it refuses is the "
        "best any app on this interface can do on this machine, with wrk on the same cores.",
        "",
        "| server | capacity req/s | offered req/s | answered req/s | refused | wrk: all requests p50 / p99 "
        "ms | observer: answered /predict p50 / p99 ms | refused /predict p50 / p99 ms | /healthz p50 / "
        "p99 ms | /readyz p50 / p99 ms | probe port /healthz p50 / p99 ms | probe port /readyz p50 / p99 "
        "ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]

    def cell(observed: dict[str, Any], key: str) -> str:
        m = observed.get(key)
        return f"{m['p50_ms']:.1f} / {m['p99_ms']:.1f} (n={m['count']})" if m else "none"

    for run in runs:
        over = run["robustness"]["overload"]
        observed = over["observer"]
        lines.append(
            f"| {run['label']} | {over['capacity_per_s']:,.0f} | {over['offered_per_s']:,.0f} | "
            f"{over['answered_per_s']:,.0f} | {over['refused_share']:.0%} | {wrk_cell(over)} | "
            f"{cell(observed, '/predict 200')} | {cell(observed, '/predict 503')} | "
            f"{cell(observed, '/healthz 200')} | {cell(observed, '/readyz 200')} | "
            f"{cell(observed, 'probe port /healthz 200')} | {cell(observed, 'probe port /readyz 200')} |"
        )
        others = {k: v for k, v in observed.items() if not k.endswith((" 200", " 503"))}
        if others or over["socket_errors"]:
            also = ", ".join(f"{key} x{value['count']}" for key, value in others.items())
            lines.append(
                f"| {run['label']}: also | | | | | | {also} | wrk socket errors {over['socket_errors']} "
                "| | | | |"
            )
        floor = run["robustness"].get("overload_floor")
        if floor:
            lines.append(
                f"| {run['label']}: the floor (an app that only refuses) | | {floor['offered_per_s']:,.0f} | "
                f"0 | {floor['refused_share']:.0%} | {wrk_cell(floor)} | | | | | | |"
            )
    return lines


def wrk_cell(figures: dict[str, Any]) -> str:
    if "wrk_p50_ms" not in figures:  # runs before the column existed
        return f"p99 {figures['wrk_p99_ms']:.1f}"
    return f"{figures['wrk_p50_ms']:.1f} / {figures['wrk_p99_ms']:.1f}"


def tuning_section(data: dict[str, Any]) -> list[str]:
    variants = [run for run in data["runs"] if is_sweep_variant(run)]
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
