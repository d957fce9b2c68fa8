"""Load generation: wrk (bench/wrk/requests.lua) drives one scenario against a running server while
the server's process tree is sampled; a Result holds what one scenario measured."""

from __future__ import annotations

import json
import resource
import subprocess
import time
from dataclasses import dataclass
from typing import Any

import payloads
from host import BENCH, load_average
from procstat import TreeSampler, TreeUsage
from scenarios import Scenario, ServerSpec
from servers import settle

LUA = BENCH / "wrk" / "requests.lua"
# A request slower than this counts as a timeout error: long enough that the slow baseline's
# queue at high concurrency is measured rather than cut off.
WRK_TIMEOUT_S = 30


@dataclass
class Result:
    server: str
    label: str
    payload: str
    path: str
    concurrency: int
    images_per_request: int
    requests: int
    seconds: float
    requests_per_s: float
    images_per_s: float
    latency_ms: dict[str, float]
    errors: int
    error_detail: dict[str, int]
    server_cores: float
    server_max_rss_mb: float
    server_total_rss_mb: float
    server_total_pss_mb: float
    server_processes: int
    wrk_cores: float
    load_before: float


def run_wrk(
    url: str, payload: payloads.PayloadSet, concurrency: int, seconds: float
) -> tuple[dict[str, Any], float]:
    command = [
        "wrk",
        "-t",
        "1",
        "-c",
        str(concurrency),
        "-d",
        f"{seconds:g}s",
        "--timeout",
        f"{WRK_TIMEOUT_S}s",
    ]
    command += ["-s", str(LUA), url, "--", str(payload.directory)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started_at = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=False)
    wall = time.monotonic() - started_at
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    for line in result.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            return json.loads(line.removeprefix("BENCH_RESULT ")), wrk_cpu / wall
    raise RuntimeError(
        f"wrk printed no result ({result.returncode}): {result.stdout[-500:]} {result.stderr[-500:]}"
    )


def measure(
    *,
    spec: ServerSpec,
    process: subprocess.Popen[bytes],
    base: str,
    scenario: Scenario,
    sets: dict[str, payloads.PayloadSet],
    seconds: float,
    warmup: float,
) -> Result:
    payload = sets[scenario.payload]
    url = base + scenario.path
    settle(base + spec.probe.path, sets[spec.probe.payload])
    if warmup > 0:
        run_wrk(url, payload, scenario.concurrency, warmup)
        # The warm-up's last requests, abandoned by wrk, finish before the measured run starts
        # (else a server with bounded admission may refuse its first requests).
        settle(base + spec.probe.path, sets[spec.probe.payload])
    load_before = load_average()
    sampler = TreeSampler(process.pid).start()
    stats, wrk_cores = run_wrk(url, payload, scenario.concurrency, seconds)
    usage: TreeUsage = sampler.stop()
    duration = stats["duration_us"] / 1e6
    errors = stats["errors"]
    error_count = sum(errors.values())
    ok = max(0, stats["requests"] - errors["status"])
    return Result(
        server=spec.key,
        label=spec.label,
        payload=scenario.payload,
        path=scenario.path,
        concurrency=scenario.concurrency,
        images_per_request=payload.images_per_request,
        requests=stats["requests"],
        seconds=duration,
        # Answered requests only: under overload our server refuses the excess with a 503.
        requests_per_s=ok / duration,
        images_per_s=ok * payload.images_per_request / duration,
        latency_ms={key: value / 1000 for key, value in stats["latency_us"].items()},
        errors=error_count,
        error_detail={key: value for key, value in errors.items() if value},
        server_cores=usage.cores,
        server_max_rss_mb=usage.max_process_rss_mb,
        server_total_rss_mb=usage.total_rss_mb,
        server_total_pss_mb=usage.total_pss_mb,
        server_processes=usage.processes,
        wrk_cores=wrk_cores,
        load_before=load_before,
    )


def summary(r: Result) -> str:
    return (
        f"{r.requests_per_s:9.1f} req/s {r.images_per_s:9.1f} img/s  p50 {r.latency_ms['p50']:8.2f} ms  "
        f"p99 {r.latency_ms['p99']:8.2f} ms  errors {r.errors}  cpu {r.server_cores:.2f}  "
        f"rss {r.server_max_rss_mb:.0f} MB  wrk {r.wrk_cores:.2f}"
    )
