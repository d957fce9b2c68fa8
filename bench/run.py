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

Here: the command line and the run as a whole. The parts: scenarios.py (what runs), prepare.py
(the model, the compute limit, KServe's virtualenv), benchmark.py (one server's run), servers.py
(a server as a process, requests to it), loadgen.py (wrk and what a scenario measured), host.py
(this machine), report.py (docs/benchmarks.md from the figures).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
# The server's package, hack/devkit.py (free_port, wait_for, shared with the tests and the demo),
# and this directory's modules.
sys.path.insert(0, str(ROOT / "model_server"))
sys.path.insert(0, str(ROOT / "hack"))
sys.path.insert(0, str(BENCH))

import numpy as np  # noqa: E402
import payloads  # noqa: E402
import report  # noqa: E402
from benchmark import ServerRun, benchmark_server  # noqa: E402
from host import load_average, machine, package_versions, wait_for_idle  # noqa: E402
from prepare import (  # noqa: E402
    compute_limits,
    ensure_kserve_venv,
    ensure_onnx,
    find_or_train_model,
    model_metadata,
)
from scenarios import (  # noqa: E402
    DEFAULT_VARIANTS,
    SWEEP_SCENARIOS,
    SWEEP_VARIANTS,
    ServerSpec,
    only,
    ours_variants,
    server_specs,
)


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

    runs: list[ServerRun] = []
    for spec in selected_servers(args, version_dir, kserve_python, which):
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
        "model": {"dir": str(version_dir), "metadata": model_metadata(version_dir)},
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
    write(args, data)
    return 1 if any(run.error for run in runs) else 0


def selected_servers(
    args: argparse.Namespace, version_dir: Path, kserve_python: Path | None, which: set[str]
) -> list[ServerSpec]:
    """The servers asked for (--servers, --before), then our onnx server's variants (--variant)
    and the tuning sweep, each with the scenarios --only keeps (the sweep: its own)."""
    specs = only(server_specs(version_dir, kserve_python, which, args.before), args.only)
    base = next((spec for spec in server_specs(version_dir, None, {"ours-onnx"})), None)
    if base is not None and (args.variant or args.sweep):
        if args.variant:
            specs += only(ours_variants(base, args.variant), args.only)
        if args.sweep:
            default = ours_variants(base, ["defaults: MNIST_SERVER_LOG_LEVEL=warning"], sweep=True)
            specs += only(default + ours_variants(base, list(SWEEP_VARIANTS), sweep=True), SWEEP_SCENARIOS)
    return specs


def write(args: argparse.Namespace, data: dict[str, Any]) -> None:
    """The report and its raw figures beside it (or, with --no-write, the figures on stdout)."""
    if args.no_write:
        print(json.dumps(data, indent=2))
    else:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
        args.output.write_text(report.render(data))
        print(f"wrote {args.output} and {args.output.with_suffix('.json')}")


if __name__ == "__main__":
    sys.exit(main())
