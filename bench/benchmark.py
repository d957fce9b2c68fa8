"""One server's benchmark: start it on a free port, wait until it answers, check its accuracy,
sample it idle, drive each of its scenarios with wrk and, for our onnx server, the slow-client and
overload scenarios (bench/robustness.py); stop it whatever happens. A failure is recorded in the
ServerRun, with the server's log tail printed, and the next server runs."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import payloads
import robustness
from devkit import free_ports
from loadgen import Result, measure, summary
from procstat import TreeSampler
from scenarios import ServerSpec
from servers import SANITY_IMAGES, first_body, sanity_accuracy, started, wait_ready


@dataclass
class ServerRun:
    key: str
    label: str
    notes: str
    ready_seconds: float
    sanity_accuracy: float
    idle_max_rss_mb: float
    idle_total_pss_mb: float
    results: list[Result] = field(default_factory=list)
    error: str | None = None
    robustness: dict[str, Any] | None = None


def benchmark_server(
    spec: ServerSpec,
    *,
    sets: dict[str, payloads.PayloadSet],
    labels: np.ndarray,
    workdir: Path,
    seconds: float,
    warmup: float,
    robust: bool = False,
) -> ServerRun:
    port, probe_port = free_ports(2)
    spec = spec.on_port(port, probe_port)
    base = f"http://127.0.0.1:{port}"
    log_path = workdir / f"{spec.key}.log"
    print(f"{spec.label}: starting on port {port} (log {log_path})", flush=True)
    run = ServerRun(spec.key, spec.label, spec.notes, 0.0, 0.0, 0.0, 0.0)
    with started(spec, log_path) as process:
        try:
            _start_up(run, spec=spec, process=process, base=base, sets=sets, labels=labels)
            for scenario in spec.scenarios:
                result = measure(
                    spec=spec,
                    process=process,
                    base=base,
                    scenario=scenario,
                    sets=sets,
                    seconds=seconds,
                    warmup=warmup,
                )
                run.results.append(result)
                print(f"  {scenario.payload:<12} c={scenario.concurrency:<4} {summary(result)}", flush=True)
            if robust:
                run.robustness = robustness_scenarios(
                    run, base, port, sets, seconds, probe_port=spec.probe_port
                )
        except Exception as exc:
            run.error = f"{type(exc).__name__}: {exc}"
            tail = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
            print(f"  FAILED: {run.error}\n  log tail:\n{tail}", flush=True)
    return run


def _start_up(
    run: ServerRun,
    *,
    spec: ServerSpec,
    process: subprocess.Popen[bytes],
    base: str,
    sets: dict[str, payloads.PayloadSet],
    labels: np.ndarray,
) -> None:
    """Time to the first answer, accuracy on real test images, and memory idle, into `run`."""
    probe = sets[spec.probe.payload]
    ready_url = base + spec.ready_path if spec.ready_path else None
    run.ready_seconds = wait_ready(process, base + spec.probe.path, *first_body(probe), ready_url=ready_url)
    run.sanity_accuracy = sanity_accuracy(base + spec.probe.path, probe, labels)
    idle = TreeSampler(process.pid)
    idle.start()
    time.sleep(1.0)
    idle_usage = idle.stop()
    run.idle_max_rss_mb, run.idle_total_pss_mb = (
        idle_usage.max_process_rss_mb,
        idle_usage.total_pss_mb,
    )
    print(
        f"  ready in {run.ready_seconds:.1f} s; sanity accuracy {run.sanity_accuracy:.3f} on "
        f"{SANITY_IMAGES} test images; idle RSS {run.idle_max_rss_mb:.0f} MB",
        flush=True,
    )


def robustness_scenarios(
    run: ServerRun,
    base: str,
    port: int,
    sets: dict[str, payloads.PayloadSet],
    seconds: float,
    *,
    probe_port: int | None,
) -> dict[str, Any]:
    """Slow clients, then overload at four times the single-image rate answered at c=32."""
    single = sets["tutorial-1"].directory
    print("  slow clients: 256 connections trickling headers and bodies", flush=True)
    slow = robustness.slow_clients(base, port, single, min(seconds, 4.0))
    for name in ("usual", "trickling"):
        figures = "  ".join(f"{path} p99 {m['p99_ms']:.1f} ms" for path, m in slow[name].items())
        print(f"    {name:<10} {figures}")
    print(f"    cut: {slow['cut']}", flush=True)
    at_32 = next((r for r in run.results if r.payload == "tutorial-1" and r.concurrency == 32), None)
    capacity = at_32.requests_per_s if at_32 else 1000.0
    print(f"  overload: 4 x {capacity:.0f} req/s offered", flush=True)
    over = robustness.overload(base, port, single, capacity, seconds, probe_port=probe_port)
    print(f"    {over}", flush=True)
    print("  overload: the same flood against an app that only refuses (the floor here)", flush=True)
    floor = robustness.refusal_floor(single, over, seconds)
    print(f"    {floor}", flush=True)
    return {"slow_clients": slow, "overload": over, "overload_floor": floor}
