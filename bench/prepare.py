"""What a run needs before any server starts: a model version (found, or trained and cached), its
ONNX conversion, the compute limit measured in-process (bench/compute_limit.py), and KServe's
virtualenv."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from host import BENCH, CACHE, ROOT, package_versions, python_env, run_checked
from scenarios import KSERVE_VERSION, MODEL_NAME

KSERVE_VENV = CACHE / "bench-kserve-venv"


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


def model_metadata(version_dir: Path) -> dict[str, Any]:
    try:
        meta = json.loads((version_dir / "metadata.json").read_text())
    except (OSError, ValueError):
        return {}
    keys = ("architecture", "parameters", "test_accuracy", "train_size", "epochs")
    return {key: meta[key] for key in keys if key in meta}
