"""This machine and the processes the benchmark starts: where things are, the load average, a
description of the machine and of installed packages, and running a helper command."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

from devkit import WaitTimeoutError, wait_for

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mnist-operator"


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def wait_for_idle(threshold: float, max_wait_s: float) -> None:
    """Wait (at most `max_wait_s`) for the load average to drop below `threshold`; run anyway after."""

    def idle() -> bool:
        load = load_average()
        if load < threshold:
            return True
        print(f"  waiting for the load average ({load:.2f}) to drop below {threshold}", flush=True)
        return False

    with contextlib.suppress(WaitTimeoutError):
        wait_for(idle, f"a load average below {threshold}", max_wait_s, interval=15)


def run_checked(command: list[str], env: dict[str, str] | None = None, timeout: float = 1800) -> str:
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result.stdout


def python_env() -> dict[str, str]:
    """The environment of the Python processes the benchmark starts: this project's server importable."""
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
