"""Server settings, read once per process from ``MNIST_SERVER_*`` environment variables.

One table (``VARIABLES``) is the single source for parsing, defaults, ``mnist-server --help``
and the settings table in docs/server.md, so they cannot drift apart.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnist_server.repository import NAME_PATTERN, VERSION_PATTERN

PREFIX = "MNIST_SERVER_"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
BACKEND_CHOICES = ("auto", "tensorflow", "onnx")


class SettingsError(ValueError):
    """A setting has an invalid value; the message names the variable and the value."""


@dataclass(frozen=True)
class Settings:
    model_root: Path = Path("/models")
    model_name: str = "mnist"
    # None: the newest complete version in the repository, resolved once at start-up.
    model_version: str | None = None
    host: str = "0.0.0.0"  # a container must listen on its pod IP, not only on loopback
    port: int = 8080
    # A second port answering only /healthz and /readyz, on a thread of its own (mnist_server.probes),
    # for the kubelet's probes; 0: none. The operator's Deployments set 8081.
    probe_port: int = 0
    workers: int = 1
    # Threads per worker that decode image uploads (JSON bodies above 64 KiB have one thread of
    # their own); everything else runs on the worker's event loop. Also bounds the memory
    # decoding can take at once (docs/server.md).
    threads: int = 4
    max_body_bytes: int = 4 * 1024 * 1024
    max_batch: int = 128
    log_level: str = "info"
    timeout: int = 60
    # From SIGTERM to exit, drain included: below Kubernetes' default grace period of 30 s.
    graceful_timeout: int = 25
    # Seconds of serving after SIGTERM, not ready, while endpoints and load balancers catch up.
    drain_delay: int = 5
    backend: str = "auto"
    # Images per model call, and how long a call may wait for more requests to join it; chosen
    # by measurement (docs/benchmarks.md): greedy batching (no wait) is best on two cores.
    batch_max_size: int = 64
    batch_max_wait_ms: float = 0.0
    # 0: the available CPUs shared out between the workers (at least one thread each).
    inference_threads: int = 0
    # Requests per worker being decoded, waiting for the model or in it; more get a 503 at once.
    # A refusal waits behind the admitted requests' work on the event loop: under a flood at four
    # times capacity on two cores, with 8 admitted refusals took 5.5 ms at the median, with 16
    # 9 ms, with 32 17 ms (64 under asyncio's loop: 40 ms), and 2,000, 2,430 and 2,730 requests/s
    # were answered (docs/server.md, "Admission").
    max_inflight: int = 32
    # Seconds a request body may take to arrive (408 after), and an idle keep-alive connection
    # (or a client sending its headers) may stay open.
    body_timeout: int = 15
    keep_alive_timeout: int = 5
    # Open connections per worker; more wait in the listen backlog until one closes.
    max_connections: int = 1024

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        values: dict[str, Any] = {}
        for var in VARIABLES:
            raw = env.get(var.env_name)
            if raw is None or raw.strip() == "":
                continue
            try:
                values[var.field] = var.parse(raw.strip())
            except ValueError as exc:
                raise SettingsError(f"{var.env_name}={raw!r}: {exc}") from None
        try:
            return cls(**values)
        except ValueError as exc:
            raise SettingsError(str(exc)) from None

    def __post_init__(self) -> None:
        if self.probe_port == self.port:
            raise ValueError(f"{PREFIX}PROBE_PORT must differ from {PREFIX}PORT (both {self.port})")
        if self.graceful_timeout and self.drain_delay >= self.graceful_timeout:
            raise ValueError(
                f"{PREFIX}DRAIN_DELAY={self.drain_delay} must be less than {PREFIX}GRACEFUL_TIMEOUT="
                f"{self.graceful_timeout}, which bounds the whole shutdown (in-flight requests need "
                "time after the drain)"
            )


@dataclass(frozen=True)
class Variable:
    field: str
    parse: Callable[[str], Any]
    help: str

    @property
    def env_name(self) -> str:
        return PREFIX + self.field.upper()

    @property
    def flag(self) -> str:
        return "--" + self.field.replace("_", "-")

    @property
    def default(self) -> Any:
        return _DEFAULTS[self.field]


def _int_in(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError("not an integer") from None
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}")
        return value

    return parse


def _model_name(raw: str) -> str:
    if not NAME_PATTERN.match(raw):
        raise ValueError("must be lowercase letters, digits, '.' or '-' (at most 63)")
    return raw


def _model_version(raw: str) -> str | None:
    if raw == "latest":
        return None
    if not VERSION_PATTERN.match(raw):
        raise ValueError("must be 'latest' or lowercase letters, digits, '.' or '-' (at most 63)")
    return raw


def _log_level(raw: str) -> str:
    level = raw.lower()
    if level not in LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
    return level


def _backend(raw: str) -> str:
    backend = raw.lower()
    if backend not in BACKEND_CHOICES:
        raise ValueError(f"must be one of {', '.join(BACKEND_CHOICES)}")
    return backend


def _milliseconds(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError("not a number") from None
    if not 0.0 <= value <= 1000.0:
        raise ValueError("must be between 0 and 1000 (milliseconds)")
    return value


def _host(raw: str) -> str:
    if any(ch.isspace() or ch == "/" for ch in raw):
        raise ValueError("must be an IP address or host name")
    return raw


VARIABLES: tuple[Variable, ...] = (
    Variable("model_root", Path, "directory of the model repository (<root>/<name>/<version>/)"),
    Variable("model_name", _model_name, "model to serve: a directory under the model root"),
    Variable("model_version", _model_version, "version to serve; unset or 'latest': the newest complete one"),
    Variable("host", _host, "address to listen on"),
    Variable("port", _int_in(1, 65535), "TCP port to listen on"),
    Variable(
        "probe_port",
        _int_in(0, 65535),
        "port answering only /healthz and /readyz, on a thread of its own so that probes do not wait "
        "behind requests; 0: none",
    ),
    Variable(
        "workers", _int_in(1, 64), "worker processes; each holds its own copy of TensorFlow and the model"
    ),
    Variable("threads", _int_in(1, 256), "threads per worker decoding image uploads"),
    Variable("max_body_bytes", _int_in(1024, 1024**3), "largest request body accepted (413 above)"),
    Variable("max_batch", _int_in(1, 100_000), "most images accepted in one request (413 above)"),
    Variable("log_level", _log_level, "one of " + ", ".join(LOG_LEVELS)),
    Variable(
        "timeout", _int_in(1, 3600), "seconds a request may wait for the model before it fails with 503"
    ),
    Variable(
        "graceful_timeout",
        _int_in(0, 3600),
        "seconds from SIGTERM to exit: the drain, then in-flight requests finish; 0: wait for them",
    ),
    Variable(
        "drain_delay",
        _int_in(0, 3600),
        "seconds the server keeps serving after SIGTERM, not ready, before it stops accepting",
    ),
    Variable(
        "backend",
        _backend,
        "inference backend: tensorflow, onnx (model.onnx beside the SavedModel), or auto (onnx when "
        "the version has model.onnx and ONNX Runtime is installed, else tensorflow)",
    ),
    Variable("batch_max_size", _int_in(1, 4096), "most images per model call when batching requests"),
    Variable(
        "batch_max_wait_ms", _milliseconds, "how long a model call may wait for more requests to join it"
    ),
    Variable(
        "inference_threads",
        _int_in(0, 256),
        "backend threads per worker; 0: the CPUs shared out between workers",
    ),
    Variable(
        "max_inflight",
        _int_in(1, 100_000),
        "requests per worker being decoded or waiting for the model; more get 503 at once",
    ),
    Variable("body_timeout", _int_in(1, 3600), "seconds a request body may take to arrive (408 after)"),
    Variable(
        "keep_alive_timeout",
        _int_in(1, 60),
        "seconds an idle keep-alive connection stays open, and a client may take to send its headers",
    ),
    Variable("max_connections", _int_in(16, 65_535), "open connections per worker; more wait to be accepted"),
)

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Settings)}


def unknown_variables(env: Mapping[str, str]) -> list[str]:
    """``MNIST_SERVER_*`` names that no setting reads: most likely typos worth a warning."""
    known = {var.env_name for var in VARIABLES}
    return sorted(name for name in env if name.startswith(PREFIX) and name not in known)


def format_default(value: Any) -> str:
    return "newest complete version" if value is None else str(value)
