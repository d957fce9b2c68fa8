"""Operator settings from `MNIST_OPERATOR_*` environment variables, validated once at start-up.

One table (`VARIABLES`) is the single source for parsing, `mnist-operator --help` and the settings
table in docs/operator.md, as the model server's settings are. To add a setting: a field of
`OperatorSettings` (with its default) and a row of `VARIABLES`, then the docs row.
"""

from __future__ import annotations

import dataclasses
import re
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from mnist_operator import policy

PREFIX = "MNIST_OPERATOR_"
LogFormat = Literal["plain", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("plain", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")


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
    # Run as one of several replicas: only the holder of a coordination.k8s.io Lease reconciles
    # (leader.py). Off: this process reconciles at once, and must be the only one.
    leader_election: bool = True
    # The Lease's namespace; empty: the pod's own (outside a cluster: that of the ServiceAccount
    # whose credentials are used, else default).
    leader_election_namespace: str = ""
    # client-go's defaults: a standby takes over a Lease not renewed for LEASE_DURATION; the
    # leader renews every RETRY_PERIOD and stops writing once RENEW_DEADLINE passes without a
    # renewal, before anyone may take over.
    lease_duration_seconds: float = 15.0
    renew_deadline_seconds: float = 10.0
    retry_period_seconds: float = 2.0

    # The cluster admin's policy on what a MnistModel may ask of what every team shares
    # (policy.py; docs/security.md). Lists: "*" alone allows anything.
    # Annotation keys or key prefixes a MnistModel may put on its Route or Ingress: annotations
    # configure the shared ingress controller (snippets, auth URLs), so only known-harmless ones.
    allowed_annotation_prefixes: tuple[str, ...] = ("cert-manager.io/",)
    # An Ingress without a host answers for every host name its controller serves.
    require_ingress_host: bool = True
    # Domains a host must be in ({namespace}: the model's namespace); empty: any host.
    allowed_host_suffixes: tuple[str, ...] = ()
    # Images besides the default image's repository: a registry path ending in /, a repository
    # (any tag), or one image.
    allowed_images: tuple[str, ...] = ()
    # ServiceAccounts besides the namespace's default one (they bring pull secrets and cloud
    # identities).
    allowed_service_accounts: tuple[str, ...] = ()
    # Taints a MnistModel may tolerate, as key[=value][:effect]; empty: none (tainted nodes are
    # usually set aside for someone).
    allowed_tolerations: tuple[str, ...] = ()
    # The shortest ServiceMonitor scrape interval a MnistModel may ask for.
    min_scrape_interval_seconds: float = 10.0
    # Where spec.source may fetch a model from: URL prefixes of archives and S3 objects, "pvc" for
    # the namespace's own PersistentVolumeClaims. Any by default: what is served is only ever the
    # pinned digest; this bounds where the pods connect (and which store sees the access key ID).
    allowed_model_sources: tuple[str, ...] = (policy.ANY,)
    # Where the canary strategy asks for the model servers' metrics (a Prometheus HTTP API base URL,
    # e.g. http://prometheus-operated.monitoring.svc:9090); empty: a canary pauses at its first
    # verdict with the reason, and never promotes blind.
    prometheus_url: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> OperatorSettings:
        values: dict[str, Any] = {}
        for var in VARIABLES:
            raw = (env.get(var.env_name) or "").strip()
            if not raw:  # unset or blank: the default
                continue
            try:
                values[var.field] = var.parse(raw)
            except ValueError as exc:
                raise SettingsError(f"{var.env_name}={raw!r}: {exc}") from None
        try:
            return cls(**values)
        except ValueError as exc:
            raise SettingsError(str(exc)) from None

    def __post_init__(self) -> None:
        if self.health_port == self.metrics_port and self.health_port != 0:
            raise ValueError(
                f"{PREFIX}HEALTH_PORT and {PREFIX}METRICS_PORT must differ (both {self.health_port})"
            )
        # client-go's own checks: the leader must stop before a standby may take over, and renew
        # more often than it must.
        if not self.lease_duration_seconds > self.renew_deadline_seconds > 1.2 * self.retry_period_seconds:
            raise ValueError(
                f"{PREFIX}LEASE_DURATION_SECONDS ({self.lease_duration_seconds:g}) must exceed "
                f"{PREFIX}RENEW_DEADLINE_SECONDS ({self.renew_deadline_seconds:g}), which must exceed 1.2 "
                f"times {PREFIX}RETRY_PERIOD_SECONDS ({self.retry_period_seconds:g})"
            )


@dataclass(frozen=True)
class Variable:
    """One MNIST_OPERATOR_* variable: which setting it sets, how its text is read, what it means."""

    field: str
    parse: Callable[[str], Any]
    help: str
    name: str = ""  # the variable's name after the prefix, when it is not the field's

    @property
    def env_name(self) -> str:
        return PREFIX + (self.name or self.field.upper())

    @property
    def default(self) -> Any:
        return _DEFAULTS[self.field]


def _integer(minimum: int, maximum: int | None = None, what: str = "") -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError("expected an integer") from None
        if value < minimum:
            raise ValueError(f"must be at least {minimum}")
        if maximum is not None and value > maximum:
            raise ValueError(what or f"must be at most {maximum}")
        return value

    return parse


def _seconds(minimum: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError("expected a number") from None
        if value < minimum:
            raise ValueError(f"must be at least {minimum:g}")
        return value

    return parse


def _choice(choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.lower()
        if value not in choices:
            raise ValueError(
                f"expected {' or '.join(choices)}"
                if len(choices) == 2
                else (f"expected one of {', '.join(choices)}")
            )
        return value

    return parse


def _boolean(raw: str) -> bool:
    value = raw.lower()
    if value not in ("true", "false"):
        raise ValueError("expected true or false")
    return value == "true"


def _allow_list(entry: Callable[[str], Any]) -> Callable[[str], tuple[str, ...]]:
    def parse(raw: str) -> tuple[str, ...]:
        return policy.parse_list(raw, entry)

    return parse


def _namespaces(raw: str) -> tuple[str, ...]:
    return tuple(ns.strip() for ns in raw.split(",") if ns.strip())


_PORT = _integer(0, 65535, "not a TCP port")


def _http_url(raw: str) -> str:
    if not re.match(r"^https?://[^/?#@\s]+(/[^\s?#]*)?$", raw):
        raise ValueError("expected an http:// or https:// URL such as http://prometheus:9090")
    return raw.rstrip("/")


# The one table of settings: from_env, `mnist-operator --help` and the table in docs/operator.md
# (a test holds it to this) all come from it.
VARIABLES: tuple[Variable, ...] = (
    Variable("default_image", str, "model-server image for MnistModels without spec.image", name="IMAGE"),
    Variable(
        "drain_seconds",
        _integer(0),
        "a model pod keeps serving this long after it is told to stop, while Services stop routing "
        "to it (a preStop pause; 0: none)",
    ),
    Variable("namespaces", _namespaces, "comma-separated namespaces to watch (empty: the whole cluster)"),
    Variable("log_format", _choice(LOG_FORMATS), "plain or json"),
    Variable("log_level", _choice(LOG_LEVELS), "one of " + ", ".join(LOG_LEVELS)),
    Variable("bind_address", str, "address of the health and metrics servers"),
    Variable("health_port", _PORT, "the liveness endpoint GET /healthz (kopf's liveness probe)"),
    Variable("metrics_port", _PORT, "Prometheus GET /metrics"),
    Variable("workers", _integer(1), "concurrent reconciles"),
    Variable("resync_seconds", _seconds(1), "reconcile every model this often even without events"),
    Variable(
        "discovery_ttl_seconds",
        _seconds(0),
        "how long the answer to 'is the Route / ServiceMonitor API served?' is trusted",
    ),
    Variable(
        "queue_stall_seconds",
        _seconds(1),
        "/healthz fails when models have been due this long and no reconcile has finished meanwhile",
    ),
    Variable(
        "leader_election",
        _boolean,
        "only the replica holding the Lease mnist-operator reconciles, so several may run (false: "
        "this one reconciles at once, and must be the only one)",
    ),
    Variable(
        "leader_election_namespace",
        str,
        "namespace of the Lease (empty: the pod's own; outside a cluster, that of the ServiceAccount "
        "whose credentials are used, else default)",
    ),
    Variable(
        "lease_duration_seconds",
        _seconds(1),
        "a standby takes the Lease over once it has seen it unrenewed this long",
    ),
    Variable(
        "renew_deadline_seconds",
        _seconds(1),
        "the leader stops writing once it has not renewed the Lease for this long",
    ),
    Variable("retry_period_seconds", _seconds(0.1), "how often the Lease is renewed or tried for"),
    Variable(
        "allowed_annotation_prefixes",
        _allow_list(policy.parse_annotation_prefix),
        "annotation keys or key prefixes a MnistModel may set on its Route or Ingress "
        "(comma-separated; none: no annotations; *: any)",
    ),
    Variable(
        "require_ingress_host",
        _boolean,
        "refuse an Ingress without spec.exposure.host (it would answer for every host name)",
    ),
    Variable(
        "allowed_host_suffixes",
        _allow_list(policy.parse_host_suffix),
        "domains exposure hosts must be in, {namespace} standing for the model's namespace "
        "(comma-separated; empty: any host)",
    ),
    Variable(
        "allowed_images",
        _allow_list(policy.parse_image_entry),
        "images allowed besides any tag of the default image's repository: registry paths ending "
        "in /, repositories, images (comma-separated; *: any)",
    ),
    Variable(
        "allowed_service_accounts",
        _allow_list(policy.parse_service_account),
        "ServiceAccounts a MnistModel may run as besides its namespace's default one "
        "(comma-separated; *: any)",
    ),
    Variable(
        "allowed_tolerations",
        _allow_list(policy.check_toleration_rule),
        "taints a MnistModel may tolerate, as key[=value][:effect] (comma-separated; empty: none; *: any)",
    ),
    Variable(
        "min_scrape_interval_seconds",
        _seconds(0),
        "the shortest ServiceMonitor interval a MnistModel may ask for",
    ),
    Variable(
        "allowed_model_sources",
        _allow_list(policy.parse_model_source_entry),
        "where spec.source may fetch from: URL prefixes http(s)://host[:port][/path] of archives and of "
        "S3 objects (endpoint/bucket/key), pvc for the namespace's PersistentVolumeClaims "
        "(comma-separated; none: no source; *: any)",
    ),
    Variable(
        "prometheus_url",
        _http_url,
        "base URL of the Prometheus HTTP API the canary strategy judges canaries with (empty: none, "
        "so a canary pauses at its first verdict)",
    ),
)

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(OperatorSettings)}


def format_default(value: Any) -> str:
    """A default as --help and the docs show it."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(value) or "empty"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def describe_variables() -> str:
    """The variables, their meaning and their default, for `mnist-operator --help`."""
    width = max(len(var.env_name) for var in VARIABLES) + 2
    lines = []
    for var in VARIABLES:
        text = f"{var.help} (default: {format_default(var.default)})"
        wrapped = textwrap.wrap(text, 100 - width - 2) or [""]
        lines.append(f"  {var.env_name:<{width}}{wrapped[0]}")
        lines.extend(" " * (width + 2) + line for line in wrapped[1:])
    return "\n".join(lines)
