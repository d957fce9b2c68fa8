"""Operator settings from `MNIST_OPERATOR_*` environment variables, validated once at start-up."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, cast

PREFIX = "MNIST_OPERATOR_"
LogFormat = Literal["plain", "json"]
LOG_LEVELS = ("debug", "info", "warning", "error")
_Getter = Callable[[str], "str | None"]


class SettingsError(ValueError):
    """An environment variable holds a value the operator cannot use; the message names it."""


@dataclass(frozen=True)
class OperatorSettings:
    # The shared model-server image, used when a MnistModel sets no spec.image.
    default_image: str = "mnist-server:0.1.0"
    # A model pod keeps serving this long after it is asked to stop (a preStop pause) before the
    # server gets SIGTERM: the time Services, kube-proxy and ingress controllers take to stop
    # sending it new requests. 0 turns the pause off.
    drain_seconds: int = 5
    # Namespaces to watch; empty means every namespace (cluster-wide).
    namespaces: tuple[str, ...] = ()
    log_format: LogFormat = "plain"
    log_level: str = "info"
    bind_address: str = "0.0.0.0"
    health_port: int = 8081
    metrics_port: int = 8080
    # Concurrent reconciles; each is mostly waiting on the API server.
    workers: int = 16
    # Every model is reconciled again this often even without events (a safety net, not the drift path).
    resync_seconds: float = 600.0
    # How long the answer "is the Route / ServiceMonitor API served?" is trusted.
    discovery_ttl_seconds: float = 30.0
    # Liveness fails once models have waited this long for a reconcile while none has finished:
    # far above the longest healthy reconcile (a few API calls of at most 30 s each).
    queue_stall_seconds: float = 300.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> OperatorSettings:
        def get(name: str) -> str | None:
            value = env.get(PREFIX + name)
            return value.strip() if value is not None and value.strip() else None

        defaults = cls()
        image = get("IMAGE") or defaults.default_image
        namespaces = tuple(ns.strip() for ns in (get("NAMESPACES") or "").split(",") if ns.strip())
        log_format = (get("LOG_FORMAT") or defaults.log_format).lower()
        if log_format not in ("plain", "json"):
            raise SettingsError(f"{PREFIX}LOG_FORMAT={log_format!r}: expected plain or json")
        log_level = (get("LOG_LEVEL") or defaults.log_level).lower()
        if log_level not in LOG_LEVELS:
            raise SettingsError(f"{PREFIX}LOG_LEVEL={log_level!r}: expected one of {', '.join(LOG_LEVELS)}")
        health_port = _port(get, "HEALTH_PORT", defaults.health_port)
        metrics_port = _port(get, "METRICS_PORT", defaults.metrics_port)
        if health_port == metrics_port and health_port != 0:
            raise SettingsError(
                f"{PREFIX}HEALTH_PORT and {PREFIX}METRICS_PORT must differ (both {health_port})"
            )
        return cls(
            default_image=image,
            drain_seconds=int(_number(get, "DRAIN_SECONDS", defaults.drain_seconds, minimum=0, integer=True)),
            namespaces=namespaces,
            log_format=cast(LogFormat, log_format),
            log_level=log_level,
            bind_address=get("BIND_ADDRESS") or defaults.bind_address,
            health_port=health_port,
            metrics_port=metrics_port,
            workers=int(_number(get, "WORKERS", defaults.workers, minimum=1, integer=True)),
            resync_seconds=_number(get, "RESYNC_SECONDS", defaults.resync_seconds, minimum=1),
            discovery_ttl_seconds=_number(
                get, "DISCOVERY_TTL_SECONDS", defaults.discovery_ttl_seconds, minimum=0
            ),
            queue_stall_seconds=_number(get, "QUEUE_STALL_SECONDS", defaults.queue_stall_seconds, minimum=1),
        )


def _port(get: _Getter, name: str, default: int) -> int:
    value = int(_number(get, name, default, minimum=0, integer=True))
    if value > 65535:
        raise SettingsError(f"{PREFIX}{name}={value}: not a TCP port")
    return value


def _number(get: _Getter, name: str, default: float, *, minimum: float, integer: bool = False) -> float:
    raw = get(name)
    if raw is None:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise SettingsError(f"{PREFIX}{name}={raw!r}: expected {kind}") from None
    if value < minimum:
        raise SettingsError(f"{PREFIX}{name}={raw!r}: must be at least {minimum:g}")
    return value
