"""Pure status logic: from what the cluster shows to the MnistModel's status and conditions.

Conditions follow the Kubernetes convention (type, status, CamelCase reason, message,
observedGeneration, lastTransitionTime that moves only when status flips). Ready is the summary:
True only when the Deployment has observed the latest template, every replica runs it and is
available, and the requested exposure works; never during a rollout or with unavailable pods.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

from mnist_operator import api
from mnist_operator.builders import Owner, selector_string
from mnist_operator.conditions import (
    FETCH_REASONS,
    QUIET_REASONS,
    STUCK_POD_REASONS,
    ConditionType,
    EventReason,
    Reason,
)
from mnist_operator.spec import MnistModelSpec
from mnist_operator.storage import FETCH_CONTAINER, SHA256_ANNOTATION

READY = ConditionType.READY
AVAILABLE = ConditionType.AVAILABLE
PROGRESSING = ConditionType.PROGRESSING
EXPOSURE_READY = ConditionType.EXPOSURE_READY
MONITORING_READY = ConditionType.MONITORING_READY

TRUE, FALSE, UNKNOWN = "True", "False", "Unknown"

_MAX_PODS_IN_MESSAGE = 3


class MnistModelStatus(TypedDict, total=False):
    """The status subresource: every key is the operator's to write, and one it leaves out is
    removed from the stored status (so a field added here is written with no other change)."""

    observedGeneration: int
    url: str
    modelVersion: str  # what the pods serve; left out while none does
    modelSHA256: str  # the digest of the archive they serve it from (spec.source); else left out
    replicas: int
    readyReplicas: int
    selector: str
    conditions: list[dict[str, Any]]
    canary: dict[str, Any]  # the canary strategy's state (canary.py); left out without one


STATUS_KEYS: tuple[str, ...] = tuple(MnistModelStatus.__annotations__)


@dataclass(frozen=True)
class Condition:
    type: str
    status: str
    reason: str
    message: str


@dataclass(frozen=True)
class Problem:
    """Something the reconcile could not do; becomes Ready=False with this reason."""

    reason: str
    message: str


@dataclass(frozen=True)
class Observed:
    """What the cluster shows for one MnistModel (from the watch caches)."""

    deployment: Mapping[str, Any] | None = None
    pods: Sequence[Mapping[str, Any]] = ()
    exposure: Mapping[str, Any] | None = None  # the Route or the Ingress
    service_monitor: Mapping[str, Any] | None = None
    problem: Problem | None = None
    # What the operator's policy refused (and so did not apply), by the condition that says so:
    # ExposureReady, MonitoringReady.
    refused: Mapping[str, Problem] = field(default_factory=dict)
    # A canary under way: Progressing is True with this reason and message (the stable
    # Deployment, which Progressing otherwise follows, does not change meanwhile).
    progress: Problem | None = None


@dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass(frozen=True)
class PodProblem:
    pod: str
    reason: str
    message: str


@dataclass(frozen=True)
class RolloutState:
    exists: bool
    observed: bool  # the Deployment controller has seen the latest Deployment spec
    desired: int
    total: int
    updated: int
    ready: int
    available: int
    unavailable: int
    deadline_exceeded: bool
    minimum_available: bool
    # The Deployment controller's own verdict that the current ReplicaSet finished rolling out.
    new_replica_set_available: bool
    template_version: str | None
    template_sha256: str | None = None  # a version from storage (spec.source)

    @property
    def rolled_out(self) -> bool:
        """Every pod runs the latest template and the rollout itself finished (pods may fail later)."""
        return (
            self.exists
            and self.observed
            and self.updated == self.desired
            and self.total == self.desired
            and (self.available == self.desired or self.new_replica_set_available)
        )

    @property
    def complete(self) -> bool:
        """Rolled out and every replica available right now."""
        return self.rolled_out and self.available == self.desired and self.unavailable == 0


def rollout_state(deployment: Mapping[str, Any] | None) -> RolloutState:
    if deployment is None:
        return RolloutState(False, False, 0, 0, 0, 0, 0, 0, False, False, False, None, None)
    meta = deployment.get("metadata") or {}
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    progressing = conditions.get("Progressing") or {}
    available = conditions.get("Available") or {}
    template_meta = (spec.get("template") or {}).get("metadata") or {}
    labels = template_meta.get("labels") or {}
    return RolloutState(
        exists=True,
        observed=int(status.get("observedGeneration") or 0) >= int(meta.get("generation") or 1),
        desired=int(spec.get("replicas", 1)),
        total=int(status.get("replicas") or 0),
        updated=int(status.get("updatedReplicas") or 0),
        ready=int(status.get("readyReplicas") or 0),
        available=int(status.get("availableReplicas") or 0),
        unavailable=int(status.get("unavailableReplicas") or 0),
        deadline_exceeded=progressing.get("status") == FALSE
        and progressing.get("reason") == "ProgressDeadlineExceeded",
        minimum_available=available.get("status") == TRUE,
        new_replica_set_available=progressing.get("status") == TRUE
        and progressing.get("reason") == "NewReplicaSetAvailable",
        template_version=labels.get(api.LABEL_VERSION),
        template_sha256=(template_meta.get("annotations") or {}).get(SHA256_ANNOTATION),
    )


def pod_problems(pods: Sequence[Mapping[str, Any]]) -> list[PodProblem]:
    """Why pods are not ready, read from their container states and conditions; most severe first."""
    found: list[tuple[int, PodProblem]] = []
    for pod in sorted(pods, key=lambda p: str(p.get("name"))):
        if pod.get("deleting"):
            continue
        problem = _pod_problem(pod)
        if problem is not None:
            severity = (
                STUCK_POD_REASONS.index(problem.reason)
                if problem.reason in STUCK_POD_REASONS
                else len(STUCK_POD_REASONS)
            )
            found.append((severity, problem))
    return [p for _, p in sorted(found, key=lambda item: item[0])]


def _pod_problem(pod: Mapping[str, Any]) -> PodProblem | None:
    name = str(pod.get("name"))
    for cs in pod.get("initContainerStatuses") or []:
        problem = _init_problem(name, cs)
        if problem is not None:
            return problem
    for cs in pod.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        last = cs.get("lastTerminated") or {}
        if waiting.get("reason") == Reason.CRASH_LOOP_BACK_OFF and last:
            return _crash(name, cs.get("name"), last, restarting=True)
        if waiting.get("reason") in STUCK_POD_REASONS:
            return PodProblem(name, waiting["reason"], _one_line(waiting.get("message", "")))
        terminated = (cs.get("state") or {}).get("terminated") or {}
        if terminated:
            return _crash(name, cs.get("name"), terminated, restarting=False)
    conditions = {c.get("type"): c for c in pod.get("conditions") or []}
    scheduled = conditions.get("PodScheduled") or {}
    if scheduled.get("status") == FALSE:
        return PodProblem(
            name, scheduled.get("reason") or Reason.UNSCHEDULABLE, _one_line(scheduled.get("message", ""))
        )
    ready = conditions.get("Ready") or {}
    if ready.get("status") == TRUE:
        return None
    if pod.get("phase") == "Running":
        restarts = sum(int(cs.get("restartCount") or 0) for cs in pod.get("containerStatuses") or [])
        hint = f" after {restarts} restarts" if restarts else ""
        return PodProblem(
            name, Reason.NOT_READY, f"running but not ready{hint} (the model is loading or /readyz fails)"
        )
    return PodProblem(name, Reason.PENDING, f"pod is {pod.get('phase') or 'Pending'}")


def _init_problem(pod: str, cs: Mapping[str, Any]) -> PodProblem | None:
    """Why an init container (the model fetch) holds the pod back; None once it succeeded.

    After a failure the kubelet runs it again with back-off: the failure stays the pod's reason
    while it retries, so the condition does not flap between it and "fetching"."""
    state = cs.get("state") or {}
    terminated = state.get("terminated") or {}
    if terminated.get("exitCode") == 0:
        return None
    if terminated:
        return _crash(pod, cs.get("name"), terminated, restarting=False)
    last = cs.get("lastTerminated") or {}
    waiting = state.get("waiting") or {}
    if last and (waiting or state.get("running")):
        return _crash(pod, cs.get("name"), last, restarting=True)
    if waiting.get("reason") in STUCK_POD_REASONS:
        return PodProblem(pod, waiting["reason"], _one_line(waiting.get("message", "")))
    if state.get("running"):
        what = "fetching and verifying the model" if cs.get("name") == FETCH_CONTAINER else "initialising"
        return PodProblem(pod, Reason.PENDING, f"init container {cs.get('name')} is {what}")
    return None


def _crash(pod: str, container: object, terminated: Mapping[str, Any], *, restarting: bool) -> PodProblem:
    """A container that ended: OOMKilled says so; a model fetch that failed says why in its own
    reason; otherwise its exit code and its last words (the termination message, or with
    FallbackToLogsOnError its last log lines)."""
    code = terminated.get("exitCode")
    then = ", restarting with back-off" if restarting else ""
    fetch_reason, _, fetch_message = str(terminated.get("message") or "").strip().partition(": ")
    if fetch_reason in FETCH_REASONS:  # one line, bounded by the fetcher (it names two digests)
        said = " ".join(fetch_message.split())[:400]
        return PodProblem(pod, fetch_reason, said + then.replace(", ", "; "))
    if terminated.get("reason") == Reason.OOM_KILLED:
        return PodProblem(
            pod,
            Reason.OOM_KILLED,
            f"container {container} was killed for using more than its memory limit{then}",
        )
    said = _last_words(str(terminated.get("message") or ""))
    reason = Reason.CRASH_LOOP_BACK_OFF if restarting else (terminated.get("reason") or Reason.TERMINATED)
    return PodProblem(
        pod, reason, f"container {container} exited with code {code}{then}" + (f": {said}" if said else "")
    )


def _last_words(text: str) -> str:
    """The end of a log tail or termination message, on one line (a traceback ends with its point)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(" ".join(lines[-2:]).split())[-200:]


def _replicas(count: int, adjective: str = "") -> str:
    words = [str(count), adjective, "replica" if count == 1 else "replicas"]
    return " ".join(w for w in words if w)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())[:200]


def _describe(problems: Sequence[PodProblem]) -> str:
    shown = [
        f"pod {p.pod}: {p.reason}" + (f" ({p.message})" if p.message else "")
        for p in problems[:_MAX_PODS_IN_MESSAGE]
    ]
    more = len(problems) - len(shown)
    return "; ".join(shown) + (f"; and {more} more" if more > 0 else "")


def _top_reason(problems: Sequence[PodProblem]) -> str:
    """The most severe reason; among equally severe ones, the most common."""
    first = problems[0].reason
    same = [p.reason for p in problems if (p.reason in STUCK_POD_REASONS) == (first in STUCK_POD_REASONS)]
    return first if first in STUCK_POD_REASONS else Counter(same).most_common(1)[0][0]


def url(spec: MnistModelSpec | None, owner: Owner, exposure: Mapping[str, Any] | None) -> str:
    """Where the model answers: the exposed host when exposed, else the in-cluster Service."""
    if spec is not None and spec.exposure.enabled:
        scheme = "https" if spec.exposure.tls != "none" else "http"
        host = spec.exposure.host or _exposed_host(exposure)
        if host:
            return f"{scheme}://{host}"
    return f"http://{owner.name}.{owner.namespace}.svc"


def _exposed_host(exposure: Mapping[str, Any] | None) -> str | None:
    if exposure is None:
        return None
    if exposure.get("kind") == api.HTTPROUTE.kind:  # the Gateway's address is not the HTTPRoute's
        return None
    if exposure.get("kind") == api.ROUTE.kind:  # OpenShift generates a host when none is given
        host = (exposure.get("spec") or {}).get("host")
        return str(host) if host else None
    for lb in ((exposure.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []:
        address = lb.get("hostname") or lb.get("ip")
        if address:
            return str(address)
    return None


def available_condition(rollout: RolloutState, problems: Sequence[PodProblem]) -> Condition:
    if not rollout.exists:
        return Condition(AVAILABLE, FALSE, Reason.DEPLOYMENT_PENDING, "the Deployment does not exist yet")
    if rollout.desired == 0:
        return Condition(AVAILABLE, FALSE, Reason.SCALED_TO_ZERO, "replicas is 0: no pod serves the model")
    counts = f"{rollout.available} of {_replicas(rollout.desired)} available"
    if rollout.available >= 1 and rollout.minimum_available:
        return Condition(AVAILABLE, TRUE, Reason.MINIMUM_REPLICAS_AVAILABLE, counts)
    if problems:
        return Condition(AVAILABLE, FALSE, _top_reason(problems), f"{counts}: {_describe(problems)}")
    return Condition(AVAILABLE, FALSE, Reason.MINIMUM_REPLICAS_UNAVAILABLE, counts)


def progressing_condition(
    rollout: RolloutState, spec: MnistModelSpec | None, deadline: int | None, problems: Sequence[PodProblem]
) -> Condition:
    version = spec.model_version if spec is not None else rollout.template_version
    if not rollout.exists:
        return Condition(PROGRESSING, TRUE, Reason.DEPLOYMENT_PENDING, "creating the Deployment")
    if rollout.deadline_exceeded:
        detail = f": {_describe(problems)}" if problems else ""
        within = f" within {deadline}s" if deadline else ""
        return Condition(
            PROGRESSING,
            FALSE,
            Reason.PROGRESS_DEADLINE_EXCEEDED,
            f"the rollout of version {version} made no progress{within}{detail}",
        )
    if not rollout.observed or (spec is not None and rollout.template_version != spec.model_version):
        return Condition(
            PROGRESSING,
            TRUE,
            Reason.ROLLOUT_PENDING,
            f"waiting for the Deployment controller to start rolling out version {version}",
        )
    if not rollout.rolled_out:
        message = (
            f"rolling out version {version}: {rollout.updated} of {rollout.desired} updated replicas, "
            f"{rollout.available} available"
        )
        old = rollout.total - rollout.updated
        if old > 0:
            message += f", {_replicas(old, 'old')} still running"
        return Condition(PROGRESSING, TRUE, Reason.ROLLING_OUT, message)
    return Condition(
        PROGRESSING,
        FALSE,
        Reason.ROLLOUT_COMPLETE,
        f"version {rollout.template_version} is rolled out to {_replicas(rollout.desired)}",
    )


def exposure_condition(
    spec: MnistModelSpec, owner: Owner, capabilities: api.Capabilities, exposure: Mapping[str, Any] | None
) -> Condition:
    if not spec.exposure.enabled:
        return Condition(
            EXPOSURE_READY,
            TRUE,
            Reason.DISABLED,
            f"exposure is disabled; the model answers in-cluster at {url(spec, owner, None)}",
        )
    if spec.exposure.gateway is not None:
        return _http_route_condition(spec, owner, capabilities, exposure)
    if capabilities.routes:
        if exposure is None:
            return Condition(
                EXPOSURE_READY, FALSE, Reason.ROUTE_PENDING, f"the Route {owner.name} does not exist yet"
            )
        return _route_condition(exposure)
    if spec.exposure.tls == "reencrypt":
        return Condition(
            EXPOSURE_READY,
            FALSE,
            Reason.REENCRYPT_UNSUPPORTED,
            "exposure.tls=reencrypt needs an OpenShift Route and this cluster serves no "
            "route.openshift.io API; use tls: edge with an Ingress",
        )
    if exposure is None:
        return Condition(
            EXPOSURE_READY, FALSE, Reason.INGRESS_PENDING, f"the Ingress {owner.name} does not exist yet"
        )
    address = _exposed_host({"status": exposure.get("status")})
    if address:
        return Condition(
            EXPOSURE_READY,
            TRUE,
            Reason.INGRESS_READY,
            f"the Ingress {owner.name} routes {url(spec, owner, exposure)} (address {address})",
        )
    return Condition(
        EXPOSURE_READY,
        UNKNOWN,
        Reason.AWAITING_ADDRESS,
        f"the Ingress {owner.name} exists; no ingress controller has published an address yet",
    )


def _http_route_condition(
    spec: MnistModelSpec, owner: Owner, capabilities: api.Capabilities, route: Mapping[str, Any] | None
) -> Condition:
    gateway = spec.exposure.gateway
    assert gateway is not None
    if not capabilities.http_routes:
        return Condition(
            EXPOSURE_READY,
            FALSE,
            Reason.GATEWAY_API_MISSING,
            "the gateway.networking.k8s.io/v1 HTTPRoute API is not served: install the Gateway API "
            "and a Gateway controller, or remove spec.exposure.gateway",
        )
    if route is None:
        return Condition(
            EXPOSURE_READY, FALSE, Reason.HTTPROUTE_PENDING, f"the HTTPRoute {owner.name} does not exist yet"
        )
    accepted: list[Mapping[str, Any]] = []
    for parent in (route.get("status") or {}).get("parents") or []:
        ref = parent.get("parentRef") or {}
        for cond in parent.get("conditions") or []:
            if cond.get("type") == "Accepted":
                controller = parent.get("controllerName")
                accepted.append({**cond, "gateway": ref.get("name"), "controller": controller})
    if any(c.get("status") == TRUE for c in accepted):
        c = next(c for c in accepted if c.get("status") == TRUE)
        return Condition(
            EXPOSURE_READY,
            TRUE,
            Reason.HTTPROUTE_ACCEPTED,
            f"the HTTPRoute {owner.name} is accepted by Gateway {c.get('gateway')} "
            f"({c.get('controller')}); the model answers at {url(spec, owner, route)}",
        )
    rejected = [c for c in accepted if c.get("status") == FALSE]
    if rejected:
        c = rejected[0]
        return Condition(
            EXPOSURE_READY,
            FALSE,
            Reason.HTTPROUTE_NOT_ACCEPTED,
            f"Gateway {c.get('gateway')} did not accept the HTTPRoute {owner.name}: "
            f"{c.get('reason') or ''} {_one_line(c.get('message') or '')}".strip(),
        )
    return Condition(
        EXPOSURE_READY,
        UNKNOWN,
        Reason.AWAITING_ACCEPTANCE,
        f"the HTTPRoute {owner.name} exists; Gateway {gateway.name} has not accepted it yet",
    )


def _route_condition(route: Mapping[str, Any]) -> Condition:
    name = (route.get("metadata") or {}).get("name")
    admitted: list[Mapping[str, Any]] = []
    for ingress in (route.get("status") or {}).get("ingress") or []:
        for cond in ingress.get("conditions") or []:
            if cond.get("type") == "Admitted":
                admitted.append(
                    {**cond, "routerName": ingress.get("routerName"), "host": ingress.get("host")}
                )
    rejected = [c for c in admitted if c.get("status") == FALSE]
    if rejected:
        c = rejected[0]
        return Condition(
            EXPOSURE_READY,
            FALSE,
            Reason.ROUTE_NOT_ADMITTED,
            f"router {c.get('routerName')} rejected the Route {name}: "
            f"{c.get('reason') or ''} {_one_line(c.get('message') or '')}".strip(),
        )
    accepted = [c for c in admitted if c.get("status") == TRUE]
    if accepted:
        return Condition(
            EXPOSURE_READY,
            TRUE,
            Reason.ADMITTED,
            f"the Route {name} is admitted by router {accepted[0].get('routerName')} "
            f"at {accepted[0].get('host')}",
        )
    return Condition(
        EXPOSURE_READY,
        UNKNOWN,
        Reason.AWAITING_ADMISSION,
        f"the Route {name} exists; no router has admitted it yet",
    )


def monitoring_condition(
    spec: MnistModelSpec, owner: Owner, capabilities: api.Capabilities, monitor: Mapping[str, Any] | None
) -> Condition:
    if not spec.service_monitor.enabled:
        return Condition(
            MONITORING_READY, TRUE, Reason.DISABLED, "monitoring.serviceMonitor.enabled is false"
        )
    if not capabilities.service_monitors:
        return Condition(
            MONITORING_READY,
            FALSE,
            Reason.SERVICE_MONITOR_API_MISSING,
            "the monitoring.coreos.com/v1 ServiceMonitor API is not served: install the Prometheus "
            "operator or set monitoring.serviceMonitor.enabled=false",
        )
    if monitor is None:
        return Condition(
            MONITORING_READY,
            FALSE,
            Reason.SERVICE_MONITOR_PENDING,
            f"the ServiceMonitor {owner.name} does not exist yet",
        )
    return Condition(
        MONITORING_READY,
        TRUE,
        Reason.SERVICE_MONITOR_READY,
        f"the ServiceMonitor {owner.name} scrapes /metrics every {spec.service_monitor.interval}",
    )


def ready_condition(
    *,
    spec: MnistModelSpec | None,
    owner: Owner,
    rollout: RolloutState,
    problems: Sequence[PodProblem],
    progressing: Condition,
    exposure: Condition | None,
    problem: Problem | None,
    served_url: str,
) -> Condition:
    if problem is not None:
        return Condition(READY, FALSE, problem.reason, problem.message)
    if not rollout.exists:
        return Condition(
            READY, FALSE, Reason.DEPLOYMENT_PENDING, f"the Deployment {owner.name} does not exist yet"
        )
    if rollout.deadline_exceeded:
        return Condition(READY, FALSE, Reason.PROGRESS_DEADLINE_EXCEEDED, progressing.message)
    if rollout.desired == 0:
        return Condition(READY, FALSE, Reason.SCALED_TO_ZERO, "replicas is 0: no pod serves the model")
    stuck = [p for p in problems if p.reason in STUCK_POD_REASONS]
    if not rollout.rolled_out or progressing.status == TRUE:
        if stuck:
            return Condition(READY, FALSE, _top_reason(stuck), f"{progressing.message}: {_describe(stuck)}")
        reason = (
            Reason.ROLLOUT_PENDING
            if progressing.reason == Reason.ROLLOUT_PENDING
            else Reason.ROLLOUT_IN_PROGRESS
        )
        return Condition(READY, FALSE, reason, progressing.message)
    if not rollout.complete or rollout.ready < rollout.desired:
        counts = f"{min(rollout.ready, rollout.available)} of {_replicas(rollout.desired)} ready"
        if problems:
            return Condition(READY, FALSE, _top_reason(problems), f"{counts}: {_describe(problems)}")
        return Condition(READY, FALSE, Reason.PODS_NOT_READY, counts)
    if exposure is not None and exposure.status == FALSE:
        return Condition(READY, FALSE, Reason.EXPOSURE_NOT_READY, exposure.message)
    version = spec.model_version if spec is not None else rollout.template_version
    if rollout.template_sha256:
        version = f"{version} (archive sha256 {rollout.template_sha256[:12]}...)"
    return Condition(
        READY,
        TRUE,
        Reason.SERVING,
        f"version {version} is served by {_replicas(rollout.ready, 'ready')} at {served_url}",
    )


def _refused(type_: str, observed: Observed) -> Condition | None:
    problem = observed.refused.get(type_)
    return Condition(type_, FALSE, problem.reason, problem.message) if problem else None


def conditions_for(
    spec: MnistModelSpec | None, owner: Owner, observed: Observed, capabilities: api.Capabilities
) -> list[Condition]:
    rollout = rollout_state(observed.deployment)
    problems = pod_problems(observed.pods)
    deadline = spec.rollout.progress_deadline_seconds if spec is not None else None
    progressing = progressing_condition(rollout, spec, deadline, problems)
    if observed.progress is not None:
        progressing = Condition(PROGRESSING, TRUE, observed.progress.reason, observed.progress.message)
    available = available_condition(rollout, problems)
    if spec is None:
        reason = observed.problem.reason if observed.problem else Reason.INVALID_SPEC
        exposure = Condition(EXPOSURE_READY, UNKNOWN, reason, "the spec is not valid")
        monitoring = Condition(MONITORING_READY, UNKNOWN, reason, "the spec is not valid")
    else:
        exposure = _refused(EXPOSURE_READY, observed) or exposure_condition(
            spec, owner, capabilities, observed.exposure
        )
        monitoring = _refused(MONITORING_READY, observed) or monitoring_condition(
            spec, owner, capabilities, observed.service_monitor
        )
    ready = ready_condition(
        spec=spec,
        owner=owner,
        rollout=rollout,
        problems=problems,
        progressing=progressing,
        exposure=exposure,
        problem=observed.problem,
        served_url=url(spec, owner, observed.exposure),
    )
    return [ready, available, progressing, exposure, monitoring]


def compute_status(
    *,
    spec: MnistModelSpec | None,
    owner: Owner,
    observed: Observed,
    capabilities: api.Capabilities,
    previous: Mapping[str, Any] | None,
    now: str,
) -> MnistModelStatus:
    """The complete status subresource for a MnistModel (keys with no value are left out)."""
    previous = previous or {}
    rollout = rollout_state(observed.deployment)
    conditions = conditions_for(spec, owner, observed, capabilities)
    # Old pods keep answering while they drain after the Deployment counts them gone: the
    # version (and digest) moves only when no pod of another version is left.
    latest = (rollout.template_version, rollout.template_sha256)
    draining = any((p.get("version"), p.get("sha256")) != latest for p in observed.pods)
    if rollout.rolled_out and rollout.desired > 0 and not draining:
        served, digest = latest
    elif rollout.exists and rollout.desired == 0:
        served, digest = None, None
    else:  # mid-rollout the pods still serve what they served before
        served, digest = previous.get("modelVersion"), previous.get("modelSHA256")
    deployment_status = (observed.deployment or {}).get("status") or {}
    status: MnistModelStatus = {
        "observedGeneration": owner.generation,
        "url": url(spec, owner, observed.exposure),
        "replicas": int(deployment_status.get("replicas") or 0),
        "readyReplicas": int(deployment_status.get("readyReplicas") or 0),
        "selector": selector_string(owner),
        "conditions": merge_conditions(previous.get("conditions") or [], conditions, owner.generation, now),
    }
    if served is not None:
        status["modelVersion"] = served
        if digest is not None:
            status["modelSHA256"] = digest
    return status


def merge_conditions(
    previous: Sequence[Mapping[str, Any]], new: Sequence[Condition], generation: int, now: str
) -> list[dict[str, Any]]:
    """New conditions, keeping each one's lastTransitionTime unless its status flipped.

    Conditions of types we do not own (set by someone else) are kept as they are.
    """
    old = {c.get("type"): c for c in previous}
    merged: list[dict[str, Any]] = []
    for cond in new:
        before = old.get(cond.type) or {}
        unchanged = before.get("status") == cond.status and before.get("lastTransitionTime")
        merged.append(
            {
                # Plain strings, not the registry's enums: the status is JSON (and YAML) data.
                "type": str(cond.type),
                "status": cond.status,
                "reason": str(cond.reason),
                "message": cond.message,
                "observedGeneration": generation,
                "lastTransitionTime": before["lastTransitionTime"] if unchanged else now,
            }
        )
    ours = {c.type for c in new}
    merged.extend(dict(c) for c in previous if c.get("type") not in ours)
    return merged


def transition_events(
    previous: Sequence[Mapping[str, Any]], current: Sequence[Mapping[str, Any]]
) -> list[Event]:
    """Kubernetes Events worth posting for a status change: transitions only, never every loop."""
    old = {c.get("type"): c for c in previous}
    events: list[Event] = []
    for cond in current:
        before = old.get(cond["type"]) or {}
        status, reason, message = cond["status"], cond["reason"], cond["message"]
        flipped = before.get("status") != status
        new_reason = before.get("reason") != reason
        if cond["type"] == READY:
            if status == TRUE and flipped:
                events.append(Event("Normal", EventReason.READY, message))
            elif status == FALSE and new_reason and reason not in QUIET_REASONS:
                events.append(
                    Event(
                        "Warning",
                        EventReason.DEGRADED if before.get("status") == TRUE else reason,
                        f"{reason}: {message}",
                    )
                )
        elif cond["type"] == PROGRESSING:
            if status == TRUE and flipped:
                events.append(Event("Normal", EventReason.ROLLOUT_STARTED, message))
            elif reason == Reason.PROGRESS_DEADLINE_EXCEEDED and new_reason:
                events.append(Event("Warning", reason, message))
        elif cond["type"] in (EXPOSURE_READY, MONITORING_READY) and status == FALSE and new_reason:
            events.append(Event("Warning", reason, message))
    return events
