"""The MnistModel spec, parsed once into frozen dataclasses.

The CRD's schema and CEL rules already reject bad input at the API server; this parser applies the
same defaults (objects stored before a CRD upgrade may lack them) and fails with a `SpecError`
naming the field, so the operator never acts on half-understood input.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from mnist_operator import api
from mnist_operator.storage import (
    DEFAULT_REGION,
    SOURCE_KINDS,
    SOURCE_RESERVED_ENV,
    HttpLocation,
    ModelSource,
    PvcLocation,
    S3Location,
)

TLSMode = Literal["none", "edge", "reencrypt"]
TLS_MODES: tuple[TLSMode, ...] = ("none", "edge", "reencrypt")
# Required: a pod that cannot be placed without piling up waits (DoNotSchedule); Preferred: the
# scheduler spreads where it can (ScheduleAnyway); None: no constraint (a plain string in YAML,
# unlike Off, which YAML 1.1 reads as false).
SpreadMode = Literal["Required", "Preferred", "None"]
SPREAD_MODES: tuple[SpreadMode, ...] = ("Required", "Preferred", "None")
IntOrPercent = int | str

MODEL_VERSION_PATTERN = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$")
HOST_PATTERN = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?\.)*[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
PERCENT_PATTERN = re.compile(r"^(100|[1-9]?[0-9])%$")
DURATION_PATTERN = re.compile(r"^([0-9]+(ms|s|m|h))+$")
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
HTTP_URL_PATTERN = re.compile(r"^https?://[^/?#@\s]+(/[^\s]*)?$")
ENDPOINT_PATTERN = re.compile(r"^https?://[^/?#@\s]+/?$")
BUCKET_PATTERN = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
NAME_PATTERN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

DEFAULT_REPLICAS = 1


class SpecError(ValueError):
    """The spec cannot be acted on; `field` is the path of the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"spec.{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class Autoscaling:
    min_replicas: int
    max_replicas: int
    target_cpu_utilization_percentage: int


RolloutStrategy = Literal["RollingUpdate", "Canary"]
ROLLOUT_STRATEGIES: tuple[RolloutStrategy, ...] = ("RollingUpdate", "Canary")
MAX_CANARY_STEPS = 10


@dataclass(frozen=True)
class CanaryStep:
    """Send `weight` percent of the traffic to the new version for `pause_seconds`, then judge it."""

    weight: int
    pause_seconds: int = 60


@dataclass(frozen=True)
class Analysis:
    """What a canary step must show, on the new version's own requests over the step's window,
    compared with the stable version's over the same window (canary.py has the measures)."""

    min_requests: int = 200
    max_error_rate: float = 0.01
    max_p99_latency_seconds: float = 0.5
    # Jensen-Shannon distance (base 2, in [0, 1]) between the canary's and the stable version's
    # distributions of predicted digits, and of top-class probability (the confidence buckets).
    max_digit_divergence: float = 0.2
    max_confidence_divergence: float = 0.2


DEFAULT_CANARY_STEPS: tuple[CanaryStep, ...] = (CanaryStep(10, 60), CanaryStep(50, 60))


@dataclass(frozen=True)
class Canary:
    steps: tuple[CanaryStep, ...] = DEFAULT_CANARY_STEPS
    analysis: Analysis = field(default_factory=Analysis)


@dataclass(frozen=True)
class Rollout:
    max_surge: IntOrPercent = 1
    max_unavailable: IntOrPercent = 0
    progress_deadline_seconds: int = 600
    strategy: RolloutStrategy = "RollingUpdate"
    # Set (with its defaults) when the strategy is Canary, else None.
    canary: Canary | None = None


@dataclass(frozen=True)
class GatewayRef:
    """The Gateway API Gateway a model's HTTPRoute attaches to (its parentRef)."""

    name: str
    namespace: str | None = None  # the model's own namespace when unset
    section_name: str | None = None  # one listener of the Gateway; all of them when unset


@dataclass(frozen=True)
class Exposure:
    enabled: bool = False
    host: str | None = None
    tls: TLSMode = "none"
    tls_secret_name: str | None = None
    ingress_class_name: str | None = None
    annotations: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    # Set: exposed by an HTTPRoute attached to this Gateway, instead of a Route or an Ingress.
    gateway: GatewayRef | None = None


@dataclass(frozen=True)
class ServiceMonitorSpec:
    enabled: bool = False
    interval: str = "30s"
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class Availability:
    """How the model stays up while nodes are drained or fail."""

    # A PodDisruptionBudget while the model runs 2 or more replicas (never with one: a budget
    # there either blocks every drain or protects nothing).
    disruption_budget: bool = True
    max_unavailable: IntOrPercent = 1
    spread_nodes: SpreadMode = "Preferred"
    spread_zones: SpreadMode = "Preferred"


@dataclass(frozen=True)
class EnvVar:
    name: str
    value: str | None = None
    # Already validated by the CRD schema (secretKeyRef, configMapKeyRef or fieldRef).
    value_from: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class MnistModelSpec:
    model_version: str
    image: str | None = None
    image_pull_policy: str | None = None
    replicas: int | None = None
    autoscaling: Autoscaling | None = None
    resources: Mapping[str, Mapping[str, IntOrPercent]] | None = None
    env: tuple[EnvVar, ...] = ()
    node_selector: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    tolerations: tuple[Mapping[str, Any], ...] = ()
    service_account_name: str | None = None
    rollout: Rollout = field(default_factory=Rollout)
    exposure: Exposure = field(default_factory=Exposure)
    service_monitor: ServiceMonitorSpec = field(default_factory=ServiceMonitorSpec)
    availability: Availability = field(default_factory=Availability)
    # None: the version baked into the image's model repository.
    source: ModelSource | None = None

    @property
    def fixed_replicas(self) -> int | None:
        """The Deployment's replica count, or None when the HPA owns it."""
        if self.autoscaling is not None:
            return None
        return DEFAULT_REPLICAS if self.replicas is None else self.replicas

    @property
    def min_replicas(self) -> int:
        """The fewest replicas the model runs: its replica count, or the HPA's minimum."""
        if self.autoscaling is not None:
            return self.autoscaling.min_replicas
        return DEFAULT_REPLICAS if self.replicas is None else self.replicas


def parse_spec(raw: Mapping[str, Any] | None) -> MnistModelSpec:
    """Parse and check a MnistModel `spec`; raises SpecError naming the first bad field."""
    if not isinstance(raw, Mapping):
        raise SpecError("", "spec is missing")
    version = _str(raw, "modelVersion", required=True)
    assert version is not None
    if not MODEL_VERSION_PATTERN.match(version):
        raise SpecError(
            "modelVersion", f"{version!r} is not a lowercase DNS-safe name of at most 63 characters"
        )

    replicas = _int(raw, "replicas", minimum=0)
    autoscaling = _autoscaling(raw.get("autoscaling"))
    if autoscaling is not None and replicas is not None:
        raise SpecError("replicas", "set either replicas or autoscaling, not both")

    image = _str(raw, "image")
    if image is not None and not image.strip():
        raise SpecError("image", "must not be empty")
    source = _source(raw.get("source"))
    env = _env(raw.get("env"))
    if source is not None:
        for i, var in enumerate(env):
            if var.name in SOURCE_RESERVED_ENV:
                raise SpecError(f"env[{i}].name", f"{var.name} would serve something else than spec.source")

    return MnistModelSpec(
        model_version=version,
        image=image,
        image_pull_policy=_str(raw, "imagePullPolicy"),
        replicas=replicas,
        autoscaling=autoscaling,
        resources=_resources(raw.get("resources")),
        env=env,
        node_selector=_str_map(raw, "nodeSelector"),
        tolerations=tuple(_mapping_list(raw, "tolerations")),
        service_account_name=_str(raw, "serviceAccountName"),
        rollout=_rollout(raw.get("rollout")),
        exposure=_exposure(raw.get("exposure")),
        service_monitor=_service_monitor(raw.get("monitoring")),
        availability=_availability(raw.get("availability")),
        source=source,
    )


def _source(raw: Any) -> ModelSource | None:
    if raw is None:
        return None
    section = _section(raw, "source")
    digest = _str(section, "sha256", required=True, prefix="source.")
    assert digest is not None
    if not SHA256_PATTERN.match(digest):
        raise SpecError("source.sha256", "must be 64 lowercase hexadecimal digits (the archive's SHA-256)")
    kinds = [kind for kind in SOURCE_KINDS if section.get(kind) is not None]
    if len(kinds) != 1:
        raise SpecError("source", f"needs exactly one of {', '.join(SOURCE_KINDS)} (got {len(kinds)})")
    kind = kinds[0]
    where = _section(section[kind], f"source.{kind}")
    prefix = f"source.{kind}."
    location: HttpLocation | S3Location | PvcLocation
    if kind == "http":
        url = _str(where, "url", required=True, prefix=prefix) or ""
        if not HTTP_URL_PATTERN.match(url):
            raise SpecError(f"{prefix}url", f"{url!r} is not an http:// or https:// URL")
        location = HttpLocation(url)
    elif kind == "s3":
        endpoint = _str(where, "endpoint", required=True, prefix=prefix) or ""
        if not ENDPOINT_PATTERN.match(endpoint):
            raise SpecError(f"{prefix}endpoint", f"{endpoint!r} is not http(s)://host[:port]")
        bucket = _str(where, "bucket", required=True, prefix=prefix) or ""
        if not BUCKET_PATTERN.match(bucket):
            raise SpecError(f"{prefix}bucket", f"{bucket!r} is not an S3 bucket name")
        key = _str(where, "key", required=True, prefix=prefix) or ""
        if not key or key.startswith("/"):
            raise SpecError(f"{prefix}key", "must be a non-empty object key without a leading '/'")
        secret = _str(where, "secretName", prefix=prefix)
        if secret is not None and not NAME_PATTERN.match(secret):
            raise SpecError(f"{prefix}secretName", f"{secret!r} is not a Secret name")
        region = _str(where, "region", prefix=prefix) or DEFAULT_REGION
        location = S3Location(endpoint.rstrip("/"), bucket, key, region, secret)
    else:
        claim = _str(where, "claimName", required=True, prefix=prefix) or ""
        if not NAME_PATTERN.match(claim):
            raise SpecError(f"{prefix}claimName", f"{claim!r} is not a PersistentVolumeClaim name")
        path = _str(where, "path", required=True, prefix=prefix) or ""
        if not path or path.startswith("/") or ".." in path.split("/"):
            raise SpecError(
                f"{prefix}path", f"{path!r} must be a relative path inside the volume, without '..'"
            )
        location = PvcLocation(claim, path)
    return ModelSource(digest, location)


def _autoscaling(raw: Any) -> Autoscaling | None:
    if raw is None:
        return None
    section = _section(raw, "autoscaling")
    max_replicas = _int(section, "maxReplicas", minimum=1, prefix="autoscaling.")
    if max_replicas is None:
        raise SpecError("autoscaling.maxReplicas", "is required")
    min_replicas = _int(section, "minReplicas", minimum=1, prefix="autoscaling.") or 1
    if min_replicas > max_replicas:
        raise SpecError(
            "autoscaling.minReplicas", f"{min_replicas} is greater than maxReplicas {max_replicas}"
        )
    target = _int(section, "targetCPUUtilizationPercentage", minimum=1, prefix="autoscaling.") or 80
    if target > 100:
        raise SpecError("autoscaling.targetCPUUtilizationPercentage", "must be at most 100")
    return Autoscaling(min_replicas, max_replicas, target)


def _rollout(raw: Any) -> Rollout:
    section = _section(raw, "rollout")
    surge = _int_or_percent(section, "maxSurge", Rollout.max_surge, prefix="rollout.")
    unavailable = _int_or_percent(section, "maxUnavailable", Rollout.max_unavailable, prefix="rollout.")
    if surge in (0, "0%") and unavailable in (0, "0%"):
        raise SpecError("rollout.maxUnavailable", "maxSurge and maxUnavailable cannot both be 0")
    deadline = _int(section, "progressDeadlineSeconds", minimum=1, prefix="rollout.")
    strategy = _str(section, "strategy", prefix="rollout.") or Rollout.strategy
    if strategy not in ROLLOUT_STRATEGIES:
        raise SpecError("rollout.strategy", f"{strategy!r} is not one of {', '.join(ROLLOUT_STRATEGIES)}")
    if section.get("canary") is not None and strategy != "Canary":
        raise SpecError("rollout.canary", "is set but rollout.strategy is not Canary")
    return Rollout(
        surge,
        unavailable,
        Rollout.progress_deadline_seconds if deadline is None else deadline,
        strategy,
        _canary(section.get("canary")) if strategy == "Canary" else None,
    )


def _canary(raw: Any) -> Canary:
    section = _section(raw, "rollout.canary")
    prefix = "rollout.canary."
    steps = DEFAULT_CANARY_STEPS
    raw_steps = section.get("steps")
    if raw_steps is not None:
        if not isinstance(raw_steps, Sequence) or isinstance(raw_steps, str):
            raise SpecError(f"{prefix}steps", "must be a list")
        if not 1 <= len(raw_steps) <= MAX_CANARY_STEPS:
            raise SpecError(f"{prefix}steps", f"must hold 1 to {MAX_CANARY_STEPS} steps")
        parsed: list[CanaryStep] = []
        for i, item in enumerate(raw_steps):
            step = _section(item, f"{prefix}steps[{i}]")
            where = f"{prefix}steps[{i}]."
            weight = _int(step, "weight", minimum=1, prefix=where)
            if weight is None:
                raise SpecError(f"{where}weight", "is required")
            if weight > 99:
                raise SpecError(f"{where}weight", "must be at most 99 (100 % is the promotion)")
            if parsed and weight <= parsed[-1].weight:
                raise SpecError(f"{where}weight", "must be greater than the step before's")
            pause = _int(step, "pauseSeconds", minimum=10, prefix=where)
            parsed.append(CanaryStep(weight, CanaryStep.pause_seconds if pause is None else pause))
        steps = tuple(parsed)
    analysis = _section(section.get("analysis"), f"{prefix}analysis")
    where = f"{prefix}analysis."
    min_requests = _int(analysis, "minRequests", minimum=1, prefix=where)
    return Canary(
        steps,
        Analysis(
            min_requests=Analysis.min_requests if min_requests is None else min_requests,
            max_error_rate=_fraction(
                analysis, "maxErrorRate", Analysis.max_error_rate, prefix=where, zero=True
            ),
            max_p99_latency_seconds=_number(
                analysis, "maxP99LatencySeconds", Analysis.max_p99_latency_seconds, prefix=where
            ),
            max_digit_divergence=_fraction(
                analysis, "maxDigitDivergence", Analysis.max_digit_divergence, prefix=where
            ),
            max_confidence_divergence=_fraction(
                analysis, "maxConfidenceDivergence", Analysis.max_confidence_divergence, prefix=where
            ),
        ),
    )


def _number(raw: Mapping[str, Any], key: str, default: float, *, prefix: str, zero: bool = False) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpecError(prefix + key, "must be a number")
    if value < 0 or (value == 0 and not zero):
        raise SpecError(prefix + key, "must be at least 0" if zero else "must be greater than 0")
    return float(value)


def _fraction(raw: Mapping[str, Any], key: str, default: float, *, prefix: str, zero: bool = False) -> float:
    value = _number(raw, key, default, prefix=prefix, zero=zero)
    if value > 1:
        raise SpecError(prefix + key, "must be at most 1")
    return value


def _exposure(raw: Any) -> Exposure:
    section = _section(raw, "exposure")
    host = _str(section, "host", prefix="exposure.")
    if host is not None and not HOST_PATTERN.match(host):
        raise SpecError("exposure.host", f"{host!r} is not a lowercase DNS name")
    tls = _str(section, "tls", prefix="exposure.") or "none"
    if tls not in TLS_MODES:
        raise SpecError("exposure.tls", f"{tls!r} is not one of {', '.join(TLS_MODES)}")
    if tls != "none" and host is None:
        raise SpecError("exposure.host", f"is required when exposure.tls is {tls}")
    enabled = section.get("enabled", False)
    if not isinstance(enabled, bool):
        raise SpecError("exposure.enabled", "must be a boolean")
    return Exposure(
        enabled=enabled,
        host=host,
        tls=tls,
        tls_secret_name=_str(section, "tlsSecretName", prefix="exposure."),
        ingress_class_name=_str(section, "ingressClassName", prefix="exposure."),
        annotations=_str_map(section, "annotations", prefix="exposure."),
        gateway=_gateway(section),
    )


# What selects a Route's or an Ingress's behaviour; a Gateway's listener decides those instead.
GATEWAY_EXCLUDES = ("ingressClassName", "tlsSecretName")


def _gateway(exposure: Mapping[str, Any]) -> GatewayRef | None:
    section = _section(exposure.get("gateway"), "exposure.gateway")
    if "gateway" not in exposure or exposure["gateway"] is None:
        return None
    for key in GATEWAY_EXCLUDES:
        if exposure.get(key) is not None:
            raise SpecError(f"exposure.{key}", "cannot be set with exposure.gateway (Route and Ingress only)")
    if (exposure.get("tls") or "none") != "none":
        raise SpecError("exposure.tls", "must be none with exposure.gateway (TLS is the Gateway listener's)")
    prefix = "exposure.gateway."
    name = _str(section, "name", required=True, prefix=prefix)
    assert name is not None
    namespace = _str(section, "namespace", prefix=prefix)
    for key, value in (("name", name), ("namespace", namespace)):
        if value is not None and not HOST_PATTERN.match(value):
            raise SpecError(prefix + key, f"{value!r} is not a lowercase DNS name")
    return GatewayRef(
        name=name, namespace=namespace, section_name=_str(section, "sectionName", prefix=prefix)
    )


def _service_monitor(raw: Any) -> ServiceMonitorSpec:
    section = _section(_section(raw, "monitoring").get("serviceMonitor"), "monitoring.serviceMonitor")
    prefix = "monitoring.serviceMonitor."
    interval = _str(section, "interval", prefix=prefix) or ServiceMonitorSpec.interval
    if not DURATION_PATTERN.match(interval):
        raise SpecError(f"{prefix}interval", f"{interval!r} is not a duration such as 30s or 1m")
    enabled = section.get("enabled", False)
    if not isinstance(enabled, bool):
        raise SpecError(f"{prefix}enabled", "must be a boolean")
    return ServiceMonitorSpec(enabled, interval, _str_map(section, "labels", prefix=prefix))


def _availability(raw: Any) -> Availability:
    section = _section(raw, "availability")
    prefix = "availability.podDisruptionBudget."
    budget = _section(section.get("podDisruptionBudget"), prefix[:-1])
    enabled = budget.get("enabled", Availability.disruption_budget)
    if not isinstance(enabled, bool):
        raise SpecError(f"{prefix}enabled", "must be a boolean")
    unavailable = _int_or_percent(budget, "maxUnavailable", Availability.max_unavailable, prefix=prefix)
    if unavailable in (0, "0%"):
        raise SpecError(f"{prefix}maxUnavailable", "must be at least 1 or 1%: 0 would block every node drain")
    spread = _section(section.get("topologySpread"), "availability.topologySpread")
    modes: dict[str, SpreadMode] = {}
    for key, default in (("nodes", Availability.spread_nodes), ("zones", Availability.spread_zones)):
        mode = _str(spread, key, prefix="availability.topologySpread.") or default
        if mode not in SPREAD_MODES:
            raise SpecError(
                f"availability.topologySpread.{key}", f"{mode!r} is not one of {', '.join(SPREAD_MODES)}"
            )
        modes[key] = mode
    return Availability(enabled, unavailable, modes["nodes"], modes["zones"])


def _env(raw: Any) -> tuple[EnvVar, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        raise SpecError("env", "must be a list")
    out: list[EnvVar] = []
    for i, item in enumerate(raw):
        entry = _section(item, f"env[{i}]")
        name = _str(entry, "name", required=True, prefix=f"env[{i}].")
        assert name is not None
        if name in api.RESERVED_ENV:
            raise SpecError(f"env[{i}].name", f"{name} is set by the operator from the spec")
        value_from = entry.get("valueFrom")
        if value_from is not None and not isinstance(value_from, Mapping):
            raise SpecError(f"env[{i}].valueFrom", "must be an object")
        out.append(
            EnvVar(
                name,
                _str(entry, "value", prefix=f"env[{i}]."),
                MappingProxyType(dict(value_from)) if value_from is not None else None,
            )
        )
    return tuple(out)


def _resources(raw: Any) -> Mapping[str, Mapping[str, IntOrPercent]] | None:
    if raw is None:
        return None
    section = _section(raw, "resources")
    out: dict[str, Mapping[str, IntOrPercent]] = {}
    for key in ("limits", "requests"):
        values = section.get(key)
        if values is None:
            continue
        if not isinstance(values, Mapping) or not all(isinstance(v, int | str) for v in values.values()):
            raise SpecError(f"resources.{key}", "must map resource names to quantities")
        out[key] = MappingProxyType(dict(values))
    return MappingProxyType(out)


def _section(raw: Any, name: str) -> Mapping[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise SpecError(name, "must be an object")
    return raw


def _str(raw: Mapping[str, Any], key: str, *, required: bool = False, prefix: str = "") -> str | None:
    value = raw.get(key)
    if value is None:
        if required:
            raise SpecError(prefix + key, "is required")
        return None
    if not isinstance(value, str):
        raise SpecError(prefix + key, "must be a string")
    return value


def _int(raw: Mapping[str, Any], key: str, *, minimum: int, prefix: str = "") -> int | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(prefix + key, "must be an integer")
    if value < minimum:
        raise SpecError(prefix + key, f"must be at least {minimum}")
    return value


def _int_or_percent(raw: Mapping[str, Any], key: str, default: IntOrPercent, *, prefix: str) -> IntOrPercent:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise SpecError(prefix + key, "must be an integer or a percentage")
    if isinstance(value, int) and value < 0:
        raise SpecError(prefix + key, "must not be negative")
    if isinstance(value, str) and not PERCENT_PATTERN.match(value):
        raise SpecError(prefix + key, f"{value!r} is not a percentage such as 25%")
    return value


def _str_map(raw: Mapping[str, Any], key: str, *, prefix: str = "") -> Mapping[str, str]:
    value = raw.get(key)
    if value is None:
        return MappingProxyType({})
    if not isinstance(value, Mapping) or not all(isinstance(v, str) for v in value.values()):
        raise SpecError(prefix + key, "must map strings to strings")
    return MappingProxyType(dict(value))


def _mapping_list(raw: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    value = raw.get(key)
    if value is None:
        return []
    if not isinstance(value, Sequence) or not all(isinstance(v, Mapping) for v in value):
        raise SpecError(key, "must be a list of objects")
    return [MappingProxyType(dict(v)) for v in value]
