"""The cluster admin's policy on what a MnistModel may ask of the cluster: pure functions.

Whoever may create a MnistModel is trusted with their own namespace, not with what every team
shares: the ingress controller (its annotations configure it; host names are one space for all
namespaces), images and ServiceAccounts (pull secrets, cloud identities), tainted nodes set aside
for others, Prometheus. `evaluate` checks a spec against the operator's settings and what the
operator knows of other namespaces' hosts, and says what it refuses, part by part, so that the rest
of the model is still deployed:

- workload (image, ServiceAccount, tolerations, where the model is fetched from): no new
  Deployment is applied; one that already runs is left as it is (tearing it down would turn a
  refused edit into an outage);
- exposure (annotations, host): no Route or Ingress, and one that exists is deleted;
- monitoring (scrape interval): no ServiceMonitor, and one that exists is deleted.

The settings' lists are parsed here too (`parse_*`, used by settings.py), so the language of an
entry and its matching live side by side.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from mnist_operator import api
from mnist_operator.cache import owner_key
from mnist_operator.spec import HOST_PATTERN, MnistModelSpec
from mnist_operator.storage import HttpLocation, ModelSource, S3Location

if TYPE_CHECKING:
    from mnist_operator.settings import OperatorSettings

ANY = "*"  # a list that holds only this allows anything
NONE = "none"  # a list given as this allows nothing beyond what is always allowed
NAMESPACE_PLACEHOLDER = "{namespace}"
PVC_SOURCES = "pvc"  # an allowed model source: the namespace's own PersistentVolumeClaims
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
DEFAULT_SERVICE_ACCOUNT = "default"

_DURATION_PART = re.compile(r"([0-9]+)(ms|s|m|h)")
_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
_URL_PREFIX = re.compile(r"^https?://[^/?#@\s]+(/[^?#\s]*)?$")
_ANNOTATION_PREFIX = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_./]*)?$")
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9][-A-Za-z0-9_.]*$"
)


class Part(StrEnum):
    """What a refusal holds back (see the module docstring)."""

    WORKLOAD = "workload"
    EXPOSURE = "exposure"
    MONITORING = "monitoring"


@dataclass(frozen=True)
class Refusal:
    part: Part
    field: str  # the spec field at fault, e.g. spec.image
    rule: str  # the operator setting that refuses it, e.g. MNIST_OPERATOR_ALLOWED_IMAGES
    message: str
    taken_host: str | None = None  # the host another namespace holds, when that is the reason

    def __str__(self) -> str:
        return f"{self.field}: {self.message} ({self.rule})"


@dataclass(frozen=True)
class Verdict:
    refusals: tuple[Refusal, ...] = ()

    def refuses(self, part: Part) -> bool:
        return any(r.part == part for r in self.refusals)

    def describe(self, *parts: Part) -> str:
        """The refusals of these parts (all when none is named), for a condition's message."""
        chosen = [str(r) for r in self.refusals if not parts or r.part in parts]
        return "the operator's policy refuses " + "; ".join(chosen) if chosen else ""

    @property
    def taken_host(self) -> str | None:
        return next((r.taken_host for r in self.refusals if r.taken_host), None)

    def effective(self, spec: MnistModelSpec) -> MnistModelSpec:
        """The spec as far as it is carried out: refused exposure and monitoring switched off."""
        if self.refuses(Part.EXPOSURE):
            spec = dataclasses.replace(spec, exposure=dataclasses.replace(spec.exposure, enabled=False))
        if self.refuses(Part.MONITORING):
            monitor = dataclasses.replace(spec.service_monitor, enabled=False)
            spec = dataclasses.replace(spec, service_monitor=monitor)
        return spec


@dataclass(frozen=True, order=True)
class HostClaim:
    """A host in use by a Route or Ingress of a MnistModel. The oldest claim keeps the host."""

    created: str  # the Route's or Ingress's creationTimestamp (RFC 3339 in UTC sorts as text)
    namespace: str
    name: str  # the MnistModel's (and its Route's or Ingress's)


HostClaims = Mapping[str, Iterable[HostClaim]]  # a kopf index: host -> claims


class CombinedClaims(Mapping[str, Iterable[HostClaim]]):
    """The claims of several kopf indexes (the Routes' and the Ingresses') as one mapping."""

    def __init__(self, *indexes: HostClaims) -> None:
        self._indexes = indexes

    def __getitem__(self, host: str) -> list[HostClaim]:
        found = [claim for index in self._indexes for claim in index.get(host, ())]
        if not found:
            raise KeyError(host)
        return found

    def __iter__(self) -> Iterator[str]:
        return iter({host for index in self._indexes for host in index})

    def __len__(self) -> int:
        return len({host for index in self._indexes for host in index})


def host_claims(body: Mapping[str, Any]) -> dict[str, HostClaim]:
    """The hosts a Route or Ingress of ours serves, each with who claims it (for a kopf index)."""
    key = owner_key(body)
    if key is None:
        return {}
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    if body.get("kind") == api.ROUTE.kind:
        hosts = [spec.get("host")]
    else:
        hosts = [rule.get("host") for rule in spec.get("rules") or []]
    claim = HostClaim(str(meta.get("creationTimestamp") or ""), *key)
    return {str(host): claim for host in hosts if host}


def evaluate(
    spec: MnistModelSpec,
    namespace: str,
    settings: OperatorSettings,
    capabilities: api.Capabilities,
    claims: HostClaims,
) -> Verdict:
    """What of this spec the policy refuses, given the hosts other namespaces' models hold."""
    return Verdict(
        (
            *_workload(spec, settings),
            *_exposure(spec, namespace, settings, capabilities, claims),
            *_monitoring(spec, settings),
        )
    )


def _workload(spec: MnistModelSpec, settings: OperatorSettings) -> list[Refusal]:
    refusals = []
    if spec.image is not None and not image_allowed(spec.image, settings):
        allowed = ", ".join(allowed_image_entries(settings))
        refusals.append(
            Refusal(
                Part.WORKLOAD,
                "spec.image",
                "MNIST_OPERATOR_ALLOWED_IMAGES",
                f"image {spec.image!r} is not allowed here (allowed: {allowed})",
            )
        )
    account = spec.service_account_name or DEFAULT_SERVICE_ACCOUNT
    if not _listed(account, settings.allowed_service_accounts) and account != DEFAULT_SERVICE_ACCOUNT:
        allowed = ", ".join((DEFAULT_SERVICE_ACCOUNT, *settings.allowed_service_accounts))
        refusals.append(
            Refusal(
                Part.WORKLOAD,
                "spec.serviceAccountName",
                "MNIST_OPERATOR_ALLOWED_SERVICE_ACCOUNTS",
                f"the ServiceAccount {account!r} is not allowed here (allowed: {allowed})",
            )
        )
    refusals += _model_source(spec.source, settings)
    rules = [parse_toleration_rule(entry) for entry in settings.allowed_tolerations if entry != ANY]
    for i, toleration in enumerate(spec.tolerations):
        if ANY not in settings.allowed_tolerations and not any(r.matches(toleration) for r in rules):
            refusals.append(
                Refusal(
                    Part.WORKLOAD,
                    f"spec.tolerations[{i}]",
                    "MNIST_OPERATOR_ALLOWED_TOLERATIONS",
                    f"tolerating {describe_toleration(toleration)} is not allowed here "
                    f"(allowed: {', '.join(settings.allowed_tolerations) or 'none'})",
                )
            )
    return refusals


def _exposure(
    spec: MnistModelSpec,
    namespace: str,
    settings: OperatorSettings,
    capabilities: api.Capabilities,
    claims: HostClaims,
) -> list[Refusal]:
    exposure = spec.exposure
    if not exposure.enabled:
        return []
    refusals = []
    prefixes = settings.allowed_annotation_prefixes
    denied = sorted(k for k in exposure.annotations if not _prefixed(k, prefixes))
    if denied:
        refusals.append(
            Refusal(
                Part.EXPOSURE,
                "spec.exposure.annotations",
                "MNIST_OPERATOR_ALLOWED_ANNOTATION_PREFIXES",
                f"{', '.join(denied)} may not be set on a shared Route or Ingress "
                f"(allowed prefixes: {', '.join(prefixes) or 'none'})",
            )
        )
    host = exposure.host
    if host is None:
        # An HTTPRoute without hostnames takes its Gateway listener's: the Gateway's owner decides.
        if exposure.gateway is None and not capabilities.routes and settings.require_ingress_host:
            refusals.append(
                Refusal(
                    Part.EXPOSURE,
                    "spec.exposure.host",
                    "MNIST_OPERATOR_REQUIRE_INGRESS_HOST",
                    "an Ingress needs a host: without one it would answer for every host name the "
                    "ingress controller serves",
                )
            )
        return refusals  # a Route without a host gets a generated, unique one
    domains = allowed_domains(settings, namespace)
    if domains and not any(host == d or host.endswith("." + d) for d in domains):
        refusals.append(
            Refusal(
                Part.EXPOSURE,
                "spec.exposure.host",
                "MNIST_OPERATOR_ALLOWED_HOST_SUFFIXES",
                f"{host} is not under a domain this namespace may use ({', '.join(domains)})",
            )
        )
    holders = sorted(claims.get(host, ()))
    if holders and holders[0].namespace != namespace:
        # Named only in the operator's log: which namespaces exist is not this user's business.
        refusals.append(
            Refusal(
                Part.EXPOSURE,
                "spec.exposure.host",
                "hosts are never shared between namespaces",
                f"{host} is already used by a MnistModel in another namespace",
                taken_host=host,
            )
        )
    return refusals


def _monitoring(spec: MnistModelSpec, settings: OperatorSettings) -> list[Refusal]:
    monitor = spec.service_monitor
    if not monitor.enabled:
        return []
    if duration_seconds(monitor.interval) >= settings.min_scrape_interval_seconds:
        return []
    return [
        Refusal(
            Part.MONITORING,
            "spec.monitoring.serviceMonitor.interval",
            "MNIST_OPERATOR_MIN_SCRAPE_INTERVAL_SECONDS",
            f"scraping every {monitor.interval} is more often than allowed here "
            f"(the shortest interval is {settings.min_scrape_interval_seconds:g}s)",
        )
    ]


# ----- matching -------------------------------------------------------------------------------


def _model_source(source: ModelSource | None, settings: OperatorSettings) -> list[Refusal]:
    allowed = settings.allowed_model_sources
    if source is None or ANY in allowed:
        return []
    where = source.location
    if isinstance(where, HttpLocation | S3Location):
        url = where.url if isinstance(where, HttpLocation) else f"{where.endpoint}/{where.bucket}/{where.key}"
        url = url.partition("?")[0]  # a pre-signed URL's query is no place for a match, nor a message
        if any(source_matches(url, entry) for entry in allowed if entry != PVC_SOURCES):
            return []
        field = "spec.source.http.url" if isinstance(where, HttpLocation) else "spec.source.s3"
        what = url
    elif PVC_SOURCES in allowed:
        return []
    else:
        field, what = "spec.source.pvc", "a PersistentVolumeClaim"
    return [
        Refusal(
            Part.WORKLOAD,
            field,
            "MNIST_OPERATOR_ALLOWED_MODEL_SOURCES",
            f"fetching a model from {what} is not allowed here (allowed: {', '.join(allowed) or 'none'})",
        )
    ]


def source_matches(url: str, entry: str) -> bool:
    """A URL prefix allows itself and what is under it: `http://store:9000` allows
    `http://store:9000/models/x.tar.gz`, never `http://store:90001/...` or `http://store:9000.evil/...`."""
    return url == entry or url.startswith(entry if entry.endswith("/") else entry + "/")


def _listed(value: str, allowed: Sequence[str]) -> bool:
    return ANY in allowed or value in allowed


def _prefixed(key: str, prefixes: Sequence[str]) -> bool:
    return ANY in prefixes or any(key.startswith(p) for p in prefixes)


def image_repository(image: str) -> str:
    """registry/path/name of an image reference, without its tag or digest."""
    name = image.partition("@")[0]
    if name.rfind(":") > name.rfind("/"):
        name = name[: name.rfind(":")]
    return name


def allowed_image_entries(settings: OperatorSettings) -> tuple[str, ...]:
    """The shared image's repository is always allowed (any of its tags)."""
    return (image_repository(settings.default_image), *settings.allowed_images)


def image_allowed(image: str, settings: OperatorSettings) -> bool:
    if ANY in settings.allowed_images or image == settings.default_image:
        return True
    return any(image_matches(image, entry) for entry in allowed_image_entries(settings))


def image_matches(image: str, entry: str) -> bool:
    """An entry ending in / allows everything under it; any other names one repository (any tag
    or digest) or one exact image. Matching is textual: `mnist-server` is not
    `docker.io/library/mnist-server`."""
    if entry.endswith("/"):
        return image.startswith(entry)
    if image == entry:
        return True
    if not image.startswith(entry) or len(image) == len(entry):
        return False
    # After the repository only a tag or a digest, never more path: the entry `localhost` must
    # not allow `localhost:5000/anything`.
    separator, rest = image[len(entry)], image[len(entry) + 1 :]
    return separator in ":@" and "/" not in rest


def allowed_domains(settings: OperatorSettings, namespace: str) -> list[str]:
    """The host suffixes this namespace may use, placeholders filled in; empty: any host."""
    if ANY in settings.allowed_host_suffixes:
        return []
    return [s.replace(NAMESPACE_PLACEHOLDER, namespace) for s in settings.allowed_host_suffixes]


@dataclass(frozen=True)
class TolerationRule:
    """`key`, `key=value`, `key:effect` or `key=value:effect` (the syntax of `kubectl taint`)."""

    key: str
    value: str | None = None
    effect: str | None = None

    def matches(self, toleration: Mapping[str, Any]) -> bool:
        key = toleration.get("key") or ""
        operator = toleration.get("operator") or "Equal"
        effect = toleration.get("effect") or ""  # empty tolerates every effect
        if key != self.key:  # an empty key with Exists tolerates every taint: never matches
            return False
        if self.value is not None and (operator != "Equal" or (toleration.get("value") or "") != self.value):
            return False
        return self.effect is None or effect == self.effect


def describe_toleration(toleration: Mapping[str, Any]) -> str:
    key = toleration.get("key") or ""
    if not key:
        return "every taint (an empty key)"
    text = key
    if (toleration.get("operator") or "Equal") == "Equal":
        text += f"={toleration.get('value') or ''}"
    return text + (f":{toleration['effect']}" if toleration.get("effect") else " (every effect)")


def duration_seconds(text: str) -> float:
    """A Prometheus duration such as 30s or 1m30s, in seconds (the spec's pattern is checked)."""
    return sum(int(n) * _SECONDS[unit] for n, unit in _DURATION_PART.findall(text))


# ----- parsing the settings' lists (ValueError names what is wrong) ---------------------------


def parse_list(raw: str, entry: Any) -> tuple[str, ...]:
    """Comma-separated entries, each checked (and normalised) by `entry`; `*` alone allows
    anything, `none` nothing beyond what is always allowed."""
    items = [item.strip() for item in raw.split(",") if item.strip()]
    if [i.lower() for i in items] == [NONE]:
        return ()
    if ANY in items:
        if len(items) > 1:
            raise ValueError(f"{ANY} allows anything and cannot be combined with other entries")
        return (ANY,)
    return tuple(entry(item) for item in items)


def parse_annotation_prefix(item: str) -> str:
    if not _ANNOTATION_PREFIX.match(item):
        raise ValueError(f"{item!r} is not an annotation key or key prefix")
    return item


def parse_host_suffix(item: str) -> str:
    # `*.apps.example.com`, `.apps.example.com` and `apps.example.com` all mean the domain and
    # every name under it, never `evilapps.example.com`.
    suffix = item.lower().removeprefix("*.").lstrip(".")
    bare = suffix.replace(NAMESPACE_PLACEHOLDER, "")
    if "{" in bare or "}" in bare:
        raise ValueError(f"{item!r}: the only placeholder is {NAMESPACE_PLACEHOLDER}")
    if not HOST_PATTERN.match(suffix.replace(NAMESPACE_PLACEHOLDER, "ns")):
        raise ValueError(
            f"{item!r} is not a DNS domain such as apps.example.com "
            f"or {NAMESPACE_PLACEHOLDER}.apps.example.com"
        )
    return suffix


def parse_image_entry(item: str) -> str:
    if any(c.isspace() for c in item) or ANY in item:
        raise ValueError(f"{item!r} is not an image, a repository or a registry path ending in /")
    return item


def parse_model_source_entry(item: str) -> str:
    if item.lower() == PVC_SOURCES:
        return PVC_SOURCES
    if not _URL_PREFIX.match(item):
        raise ValueError(f"{item!r} is not pvc or an http(s):// URL prefix (no user info, query or fragment)")
    return item


def parse_service_account(item: str) -> str:
    if not _NAME.match(item) or len(item) > 253:
        raise ValueError(f"{item!r} is not a ServiceAccount name")
    return item


def parse_toleration_rule(item: str) -> TolerationRule:
    rest, _, effect = item.partition(":")
    key, equals, value = rest.partition("=")
    if not _LABEL_KEY.match(key):
        raise ValueError(f"{item!r}: {key!r} is not a taint key (key[=value][:effect])")
    if effect and effect not in TAINT_EFFECTS:
        raise ValueError(f"{item!r}: the effect must be one of {', '.join(TAINT_EFFECTS)}")
    return TolerationRule(key, value if equals else None, effect or None)


def check_toleration_rule(item: str) -> str:
    parse_toleration_rule(item)
    return item
