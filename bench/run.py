"""``make bench``: our model server against its peers, on this machine, in one go.

1. Finds a model version (``--model-dir``) or trains one with the project's trainer (cached by
   the trainer's source hash), and converts it to ONNX.
2. Measures the compute limit: batched inference in-process, no HTTP (bench/compute_limit.py).
3. Starts each server on a free 127.0.0.1 port, checks that it classifies real test images, and
   drives it with wrk (bench/wrk/requests.lua) at each scenario's concurrency, sampling the
   server's CPU and memory from /proc and wrk's own CPU:
   - ours, on the onnx and the tensorflow backends;
   - a tutorial-style baseline (bench/baseline_server.py: Flask, ``model.predict`` per request);
   - KServe's Python model server (bench/kserve_peer.py, v2 protocol) on the same model.onnx on
     ONNX Runtime, from a virtualenv of its own that this script creates on first use (kserve
     pins many packages);
   - with ``--before TREE``, our server from another source tree (an earlier commit, extracted
     with ``git archive``), on the onnx backend: before and after, in the same conditions.
4. Runs the slow-client and overload scenarios against our onnx server(s) (bench/robustness.py).
5. Writes docs/benchmarks.md (and the raw figures to docs/benchmarks.json).

Servers are stopped at the end of their scenarios, whatever happens. Every request loop is
bounded in time; traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT / "model_server"))
sys.path.insert(0, str(BENCH))

import numpy as np  # noqa: E402
import payloads  # noqa: E402
import report  # noqa: E402
import robustness  # noqa: E402
from procstat import TreeSampler, TreeUsage  # noqa: E402

LUA = BENCH / "wrk" / "requests.lua"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mnist-operator"
KSERVE_VENV = CACHE / "bench-kserve-venv"
KSERVE_VERSION = "0.21.0"
MODEL_NAME = "mnist"
READY_TIMEOUT_S = 300.0
SANITY_IMAGES = 64
# A request slower than this counts as a timeout error: long enough that the slow baseline's
# queue at high concurrency is measured rather than cut off.
WRK_TIMEOUT_S = 30

# Our server's settings for the benchmark beyond the model location (defaults otherwise).
OURS_ENV = {"MNIST_SERVER_LOG_LEVEL": "warning"}


@dataclass(frozen=True)
class Scenario:
    payload: str  # a payload set name (bench/payloads.py)
    path: str
    concurrency: int


@dataclass(frozen=True)
class ServerSpec:
    key: str
    label: str
    command: list[str]
    env: dict[str, str]
    scenarios: list[Scenario]
    probe: Scenario  # readiness probe and sanity check: a single-image request
    notes: str


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


# --- environment ------------------------------------------------------------------------------


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def wait_for_idle(threshold: float, max_wait_s: float) -> None:
    deadline = time.monotonic() + max_wait_s
    while load_average() >= threshold and time.monotonic() < deadline:
        print(f"  waiting for the load average ({load_average():.2f}) to drop below {threshold}", flush=True)
        time.sleep(15)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def run_checked(command: list[str], env: dict[str, str] | None = None, timeout: float = 1800) -> str:
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result.stdout


def python_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "model_server"), env.get("PYTHONPATH")]))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def machine() -> dict[str, Any]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    memory_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))  # type: ignore[union-attr]
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False).stdout.split("\n")[0]
    wrk = wrk.split(" Copyright")[0]
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(memory_kb / 1024**2, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "wrk": wrk.strip(),
    }


def package_versions(python: Path, names: list[str]) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for n in sys.argv[1:]:\n"
        "    try: out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(out))\n"
    )
    return json.loads(run_checked([str(python), "-c", code, *names]))  # type: ignore[no-any-return]


# --- model ------------------------------------------------------------------------------------


def find_or_train_model(explicit: Path | None) -> Path:
    if explicit is not None:
        return explicit.resolve()
    trainer = ROOT / "model_server" / "mnist_server" / "training.py"
    digest = hashlib.sha256(trainer.read_bytes()).hexdigest()[:12]
    root = CACHE / "bench-models" / digest
    version_dir = root / MODEL_NAME / "1"
    if not (version_dir / "saved_model.pb").is_file():
        # The architecture is what costs time per image; a short training on a subset gives the
        # same architecture with a useful accuracy (reported), in a minute or two.
        print(f"training a benchmark model (the project's architecture) into {root}", flush=True)
        shutil.rmtree(root / MODEL_NAME, ignore_errors=True)
        run_checked(
            [
                sys.executable,
                "-m",
                "mnist_server.training",
                "--output",
                str(root),
                "--version",
                "1",
                "--subset",
                "12000",
                "--epochs",
                "2",
                "--batch-size",
                "64",
                "--quiet",
            ],
            env=python_env(),
        )
    return version_dir


def ensure_onnx(version_dir: Path) -> None:
    if not (version_dir / "model.onnx").is_file():
        print("converting the SavedModel to ONNX", flush=True)
        run_checked(
            [sys.executable, "-m", "mnist_server.backends.onnx_export", str(version_dir)], python_env()
        )


def compute_limits(version_dir: Path, backends: list[str], seconds: float) -> dict[str, Any]:
    limits = {}
    for backend in backends:
        print(f"measuring the compute limit ({backend}, no HTTP)", flush=True)
        out = run_checked(
            [
                sys.executable,
                str(BENCH / "compute_limit.py"),
                str(version_dir),
                backend,
                "--seconds",
                str(seconds),
            ],
            python_env(),
        )
        limits[backend] = json.loads(out.strip().splitlines()[-1])
    return limits


# --- KServe's virtualenv ----------------------------------------------------------------------


def ensure_kserve_venv(onnxruntime_version: str) -> Path:
    python = KSERVE_VENV / "bin" / "python"
    # The peer runs the same model.onnx on the same ONNX Runtime as our onnx backend.
    wanted = {"kserve": KSERVE_VERSION, "onnxruntime": onnxruntime_version}
    if python.exists():
        have = package_versions(python, list(wanted))
        if have == wanted:
            return python
    print(f"creating {KSERVE_VENV} with kserve {KSERVE_VERSION} (first run only; a few minutes)", flush=True)
    if not python.exists():
        run_checked([sys.executable, "-m", "venv", "--clear", str(KSERVE_VENV)])
    run_checked([str(python), "-m", "pip", "install", "--quiet", *(f"{k}=={v}" for k, v in wanted.items())])
    return python


# --- servers ----------------------------------------------------------------------------------


@contextmanager
def started(spec: ServerSpec, port: int, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            spec.command,
            env={**python_env(), **spec.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stopped as one, workers included
        )
        try:
            yield process
        finally:
            stop(process)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=40)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    except ProcessLookupError:
        pass


def first_body(payload: payloads.PayloadSet) -> tuple[bytes, dict[str, str]]:
    return bodies(payload)[0]


def bodies(payload: payloads.PayloadSet) -> list[tuple[bytes, dict[str, str]]]:
    out = []
    for line in (payload.directory / "index.tsv").read_text().splitlines():
        name, *header_fields = line.split("\t")
        headers = dict(field.split(": ", 1) for field in header_fields)
        out.append(((payload.directory / name).read_bytes(), headers))
    return out


def post(url: str, body: bytes, headers: dict[str, str], timeout: float = 30) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, b""


def wait_ready(process: subprocess.Popen[bytes], url: str, body: bytes, headers: dict[str, str]) -> float:
    started_at = time.monotonic()
    while time.monotonic() - started_at < READY_TIMEOUT_S:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode} before it was ready")
        status, _ = post(url, body, headers, timeout=10)
        if status == 200:
            return time.monotonic() - started_at
        time.sleep(0.5)
    raise RuntimeError(f"the server was not ready within {READY_TIMEOUT_S:.0f} s")


def settle(url: str, probe: payloads.PayloadSet, timeout_s: float = 120.0) -> None:
    """Wait until the server answers a fresh request: requests a previous run left queued (wrk
    stops without waiting for them) must not steal time from the next run."""
    body, headers = first_body(probe)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if post(url, body, headers, timeout=timeout_s)[0] == 200:
            return
        time.sleep(0.5)
    raise RuntimeError(f"the server did not answer a request within {timeout_s:.0f} s after the last run")


def predicted_digits(payload_name: str, response: bytes) -> list[int]:
    data = json.loads(response)
    if "outputs" in data:  # v2
        output = data["outputs"][0]
        return [int(d) for d in np.asarray(output["data"]).reshape(output["shape"]).argmax(axis=1)]
    if "predictions" in data:
        return [int(p["prediction"]) for p in data["predictions"]]
    return [int(data["prediction"])]


def sanity_accuracy(url: str, payload: payloads.PayloadSet, labels: np.ndarray) -> float:
    """Accuracy on the payload's first images: each server must be serving the same, real model."""
    correct = 0
    sample = bodies(payload)[:SANITY_IMAGES]
    for index, (body, headers) in enumerate(sample):
        status, response = post(url, body, headers)
        if status != 200:
            raise RuntimeError(f"sanity request {index} got HTTP {status}: {response[:300]!r}")
        correct += predicted_digits(payload.name, response)[0] == int(labels[index])
    return correct / len(sample)


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
    port = free_port()
    command = [part.replace("{port}", str(port)) for part in spec.command]
    spec = ServerSpec(
        spec.key,
        spec.label,
        command,
        spec.env | {"MNIST_SERVER_PORT": str(port)},
        spec.scenarios,
        spec.probe,
        spec.notes,
    )
    base = f"http://127.0.0.1:{port}"
    log_path = workdir / f"{spec.key}.log"
    print(f"{spec.label}: starting on port {port} (log {log_path})", flush=True)
    run = ServerRun(spec.key, spec.label, spec.notes, 0.0, 0.0, 0.0, 0.0)
    with started(spec, port, log_path) as process:
        try:
            probe = sets[spec.probe.payload]
            run.ready_seconds = wait_ready(process, base + spec.probe.path, *first_body(probe))
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
                run.robustness = robustness_scenarios(run, base, port, sets, seconds)
        except Exception as exc:
            run.error = f"{type(exc).__name__}: {exc}"
            tail = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
            print(f"  FAILED: {run.error}\n  log tail:\n{tail}", flush=True)
    return run


def robustness_scenarios(
    run: ServerRun, base: str, port: int, sets: dict[str, payloads.PayloadSet], seconds: float
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
    over = robustness.overload(base, port, single, capacity, seconds)
    print(f"    {over}", flush=True)
    return {"slow_clients": slow, "overload": over}


def summary(r: Result) -> str:
    return (
        f"{r.requests_per_s:9.1f} req/s {r.images_per_s:9.1f} img/s  p50 {r.latency_ms['p50']:8.2f} ms  "
        f"p99 {r.latency_ms['p99']:8.2f} ms  errors {r.errors}  cpu {r.server_cores:.2f}  "
        f"rss {r.server_max_rss_mb:.0f} MB  wrk {r.wrk_cores:.2f}"
    )


# --- what runs --------------------------------------------------------------------------------

SINGLE_CONCURRENCY = (1, 8, 32, 128)
BATCH_CONCURRENCY = 4
V2 = f"/v2/models/{MODEL_NAME}/infer"


# One factor at a time away from the defaults: how the batching and process defaults were chosen.
SWEEP_VARIANTS = (
    "no-batching: MNIST_SERVER_BATCH_MAX_SIZE=1",
    "batch-16: MNIST_SERVER_BATCH_MAX_SIZE=16",
    "wait-1ms: MNIST_SERVER_BATCH_MAX_WAIT_MS=1",
    "wait-5ms: MNIST_SERVER_BATCH_MAX_WAIT_MS=5",
    "2-workers: MNIST_SERVER_WORKERS=2",
    "1-thread: MNIST_SERVER_INFERENCE_THREADS=1",
    "2-threads: MNIST_SERVER_THREADS=2",
    "8-threads: MNIST_SERVER_THREADS=8",
    "32-threads: MNIST_SERVER_THREADS=32",
)
# Our server with one worker per core, beside the defaults, in the main tables.
DEFAULT_VARIANTS = ("2-workers: MNIST_SERVER_WORKERS=2",)
SWEEP_SCENARIOS = "tutorial-1@1,tutorial-1@32,tutorial-1@128,v2bin-64@4"


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    """``"name: KEY=VALUE KEY=VALUE"`` -> (name, env)."""
    name, _, assignments = text.partition(":")
    env = dict(pair.split("=", 1) for pair in assignments.split())
    if not name.strip() or not env or not all(key.startswith("MNIST_SERVER_") for key in env):
        raise SystemExit(f"bench: --variant {text!r}: expected 'name: MNIST_SERVER_X=value ...'")
    return name.strip(), env


def ours_variants(base: ServerSpec, variants: list[str], sweep: bool = False) -> list[ServerSpec]:
    specs = []
    for text in variants:
        name, env = parse_variant(text)
        described = " ".join(f"{k}={v}" for k, v in env.items())
        specs.append(
            ServerSpec(
                key=f"{base.key}[{'sweep:' if sweep else ''}{name}]",
                label=f"{base.label} {name}",
                command=base.command,
                env=base.env | env,
                scenarios=base.scenarios,
                probe=base.probe,
                notes=f"{base.notes}, {described}",
            )
        )
    return specs


def only(specs: list[ServerSpec], selection: str | None) -> list[ServerSpec]:
    """Keep the scenarios named ``payload@concurrency`` in ``selection`` (all when None)."""
    if not selection:
        return specs
    wanted = set(selection.split(","))
    return [
        ServerSpec(
            spec.key,
            spec.label,
            spec.command,
            spec.env,
            [s for s in spec.scenarios if f"{s.payload}@{s.concurrency}" in wanted],
            spec.probe,
            spec.notes,
        )
        for spec in specs
    ]


def server_specs(
    version_dir: Path, kserve_python: Path | None, which: set[str], before: Path | None = None
) -> list[ServerSpec]:
    venv_python = sys.executable
    model_env = {
        "MNIST_SERVER_MODEL_ROOT": str(version_dir.parent.parent),
        "MNIST_SERVER_MODEL_NAME": version_dir.parent.name,
        "MNIST_SERVER_MODEL_VERSION": version_dir.name,
        "MNIST_SERVER_HOST": "127.0.0.1",
        **OURS_ENV,
    }
    ours_scenarios = [Scenario("tutorial-1", "/predict", c) for c in SINGLE_CONCURRENCY]
    ours_scenarios += [Scenario("v2-1", V2, c) for c in (1, 32)]
    ours_scenarios += [Scenario("v2bin-1", V2, 32)]
    ours_scenarios += [
        Scenario(name, path, BATCH_CONCURRENCY)
        for name, path in (("tutorial-64", "/predict"), ("v2-64", V2), ("v2bin-64", V2))
    ]
    specs = []
    if before is not None:
        specs.append(
            ServerSpec(
                key="ours-onnx-before",
                label="mnist-server (onnx) before",
                command=[venv_python, "-m", "mnist_server.cli"],
                env=model_env
                | {"MNIST_SERVER_BACKEND": "onnx", "PYTHONPATH": str(before.resolve() / "model_server")},
                scenarios=ours_scenarios,
                probe=Scenario("tutorial-1", "/predict", 1),
                notes=f"this project's server from {before} (an earlier commit), default settings, "
                "MNIST_SERVER_BACKEND=onnx",
            )
        )
    for backend in ("onnx", "tensorflow"):
        specs.append(
            ServerSpec(
                key=f"ours-{backend}",
                label=f"mnist-server ({backend})",
                command=[venv_python, "-m", "mnist_server.cli"],
                env=model_env | {"MNIST_SERVER_BACKEND": backend},
                scenarios=ours_scenarios,
                probe=Scenario("tutorial-1", "/predict", 1),
                notes=f"this project's server, default settings, MNIST_SERVER_BACKEND={backend}",
            )
        )
    specs.append(
        ServerSpec(
            key="baseline",
            label="tutorial-style baseline",
            command=[
                venv_python,
                str(BENCH / "baseline_server.py"),
                "--model-dir",
                str(version_dir),
                "--port",
                "{port}",
            ],
            env={},
            scenarios=[Scenario("tutorial-1", "/predict", c) for c in SINGLE_CONCURRENCY]
            + [Scenario("tutorial-64", "/predict", BATCH_CONCURRENCY)],
            probe=Scenario("tutorial-1", "/predict", 1),
            notes="Flask's threaded server, Keras `model.predict` on every request "
            "(bench/baseline_server.py)",
        )
    )
    if kserve_python is not None:
        specs.append(
            ServerSpec(
                key="kserve",
                label=f"KServe {KSERVE_VERSION}",
                command=[
                    str(kserve_python),
                    str(BENCH / "kserve_peer.py"),
                    "--model_dir",
                    str(version_dir),
                    "--model_name",
                    MODEL_NAME,
                    "--http_port",
                    "{port}",
                    "--enable_grpc",
                    "false",
                    "--enable_latency_logging",
                    "false",
                    "--log_config_file",
                    str(BENCH / "kserve_logging.json"),
                ],
                env={},
                scenarios=[Scenario("v2-1", V2, c) for c in SINGLE_CONCURRENCY]
                + [Scenario("v2bin-1", V2, 32)]
                + [Scenario(name, V2, BATCH_CONCURRENCY) for name in ("v2-64", "v2bin-64")],
                probe=Scenario("v2-1", V2, 1),
                notes="KServe's Python model server, one process (its default), a custom `kserve.Model` "
                "running the same model.onnx on the same ONNX Runtime with our onnx backend's session "
                "options (bench/kserve_peer.py); per-request logging off",
            )
        )
    return [spec for spec in specs if spec.key in which or spec.key == "ours-onnx-before"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark the model server against its peers.")
    parser.add_argument(
        "--model-dir", type=Path, help="a model version directory (default: train one, cached)"
    )
    parser.add_argument(
        "--servers", default="ours-onnx,ours-tensorflow,baseline,kserve", help="(%(default)s)"
    )
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per scenario (%(default)s)")
    parser.add_argument(
        "--warmup", type=float, default=2.0, help="seconds of unrecorded load first (%(default)s)"
    )
    parser.add_argument("--quick", action="store_true", help="3 s per scenario, 1 s warm-up: a smoke run")
    parser.add_argument(
        "--wait-idle", type=float, default=0.0, help="wait (up to 10 min) for a lower load average"
    )
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--no-write", action="store_true", help="print the results, write no report")
    parser.add_argument(
        "--render", type=Path, metavar="JSON", help="only re-render the report from a previous run's figures"
    )
    parser.add_argument(
        "--only", help="run only these scenarios, e.g. tutorial-1@32,v2bin-64@4 (payload@concurrency)"
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=None,
        help="also run our onnx server with other settings: 'name: MNIST_SERVER_X=value ...' "
        f"(repeatable; default: {DEFAULT_VARIANTS[0]!r})",
    )
    parser.add_argument(
        "--before",
        type=Path,
        metavar="TREE",
        help="also run our server from this source tree (e.g. `git archive <commit> model_server | tar -x "
        "-C TREE`), on the onnx backend, labelled 'before'",
    )
    parser.add_argument(
        "--no-robustness",
        dest="robustness",
        action="store_false",
        help="skip the slow-client and overload scenarios (bench/robustness.py)",
    )
    parser.add_argument(
        "--no-sweep",
        dest="sweep",
        action="store_false",
        help=f"skip the tuning variants ({len(SWEEP_VARIANTS)}, one setting each, on {SWEEP_SCENARIOS})",
    )
    args = parser.parse_args()
    if args.variant is None:
        args.variant = list(DEFAULT_VARIANTS)
    if args.quick:
        args.duration, args.warmup = 3.0, 1.0
    return args


def main() -> int:
    args = parse_args()
    if args.render:
        data = json.loads(args.render.read_text())
        args.output.write_text(report.render(data))
        print(f"wrote {args.output} from {args.render}")
        return 0
    if shutil.which("wrk") is None:
        print("bench: wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    which = set(args.servers.split(","))
    command_line = " ".join(["python", "bench/run.py", *sys.argv[1:]])
    if args.wait_idle:
        wait_for_idle(args.wait_idle, 600)
    started_at = datetime.now(UTC)
    load_start = load_average()

    version_dir = find_or_train_model(args.model_dir)
    ensure_onnx(version_dir)
    from mnist_server.data import load_mnist

    test = load_mnist().test
    workdir = Path(tempfile.mkdtemp(prefix="mnist-bench-"))
    sets = payloads.build(np.asarray(test.images), workdir / "payloads")
    limits = compute_limits(version_dir, ["onnx", "tensorflow"], seconds=1.0 if args.quick else 3.0)

    ours_versions = package_versions(
        Path(sys.executable),
        ["tensorflow-cpu", "tensorflow", "onnxruntime", "numpy", "flask", "granian", "orjson", "keras"],
    )
    kserve_python = None
    kserve_versions: dict[str, str] = {}
    if "kserve" in which:
        kserve_python = ensure_kserve_venv(ours_versions.get("onnxruntime", "1.32.0"))
        kserve_versions = package_versions(
            kserve_python, ["kserve", "onnxruntime", "fastapi", "uvicorn", "numpy", "orjson"]
        )

    specs = only(server_specs(version_dir, kserve_python, which, args.before), args.only)
    base = next((spec for spec in server_specs(version_dir, None, {"ours-onnx"})), None)
    if base is not None and (args.variant or args.sweep):
        if args.variant:
            specs += only(ours_variants(base, args.variant), args.only)
        if args.sweep:
            default = ours_variants(base, ["defaults: MNIST_SERVER_LOG_LEVEL=warning"], sweep=True)
            specs += only(default + ours_variants(base, list(SWEEP_VARIANTS), sweep=True), SWEEP_SCENARIOS)
    runs = []
    for spec in specs:
        runs.append(
            benchmark_server(
                spec,
                sets=sets,
                labels=np.asarray(test.labels),
                workdir=workdir,
                seconds=args.duration,
                warmup=args.warmup,
                robust=args.robustness and spec.key in ("ours-onnx", "ours-onnx-before"),
            )
        )

    data = {
        "started": started_at.isoformat(timespec="seconds"),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command_line,
        "machine": machine(),
        "load": {"start": load_start, "end": load_average()},
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "model": {"dir": str(version_dir), "metadata": _metadata(version_dir)},
        "versions": {"ours": ours_versions, "kserve": kserve_versions},
        "payloads": {
            name: {
                "description": p.description,
                "images": p.images_per_request,
                "bytes": payloads.body_size(p),
            }
            for name, p in sets.items()
        },
        "compute_limit": limits,
        "runs": [asdict(run) for run in runs],
    }
    shutil.rmtree(workdir, ignore_errors=True)
    if args.no_write:
        print(json.dumps(data, indent=2))
    else:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
        args.output.write_text(report.render(data))
        print(f"wrote {args.output} and {args.output.with_suffix('.json')}")
    return 1 if any(run.error for run in runs) else 0


def _metadata(version_dir: Path) -> dict[str, Any]:
    try:
        meta = json.loads((version_dir / "metadata.json").read_text())
    except (OSError, ValueError):
        return {}
    keys = ("architecture", "parameters", "test_accuracy", "train_size", "epochs")
    return {key: meta[key] for key in keys if key in meta}


if __name__ == "__main__":
    sys.exit(main())
