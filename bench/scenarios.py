"""What runs: the servers (ours, its variants and the peers), the command that starts each, and
the scenarios (payload, path, concurrency) each is driven with. Definitions only: nothing here
starts a process."""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path

from host import BENCH

MODEL_NAME = "mnist"
KSERVE_VERSION = "0.21.0"

# Our server's settings for the benchmark beyond the model location (defaults otherwise).
OURS_ENV = {"MNIST_SERVER_LOG_LEVEL": "warning"}

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
    # A GET that answers 200 only once every worker process is ready (one 200 from `probe` may
    # come from the one worker that has loaded its model), or None.
    ready_path: str | None = None
    # This project's current server: it answers probes on a port of their own
    # (MNIST_SERVER_PROBE_PORT), which the overload scenario measures beside the serving port.
    has_probe_port: bool = False
    probe_port: int | None = None

    def on_port(self, port: int, probe_port: int) -> ServerSpec:
        """This server listening on `port`: ``{port}`` in its command and MNIST_SERVER_PORT, and
        its probes on `probe_port` if it has a probe port."""
        env = self.env | {"MNIST_SERVER_PORT": str(port)}
        if self.has_probe_port:
            env["MNIST_SERVER_PROBE_PORT"] = str(probe_port)
        return replace(
            self,
            command=[part.replace("{port}", str(port)) for part in self.command],
            env=env,
            probe_port=probe_port if self.has_probe_port else None,
        )


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
                ready_path=base.ready_path,
                has_probe_port=base.has_probe_port,
            )
        )
    return specs


def only(specs: list[ServerSpec], selection: str | None) -> list[ServerSpec]:
    """Keep the scenarios named ``payload@concurrency`` in ``selection`` (all when None)."""
    if not selection:
        return specs
    wanted = set(selection.split(","))
    return [
        replace(spec, scenarios=[s for s in spec.scenarios if f"{s.payload}@{s.concurrency}" in wanted])
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
                ready_path="/readyz",
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
                ready_path="/readyz",
                has_probe_port=True,
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
