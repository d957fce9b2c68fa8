"""One idempotent reconcile of one MnistModel: apply what differs, delete what is unwanted, report.

Reads come from the watch caches; writes happen only when the desired state differs from what the
cluster shows (children) or the computed status differs from the stored one, so an unchanged
MnistModel costs no write however often it is reconciled.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from mnist_operator import analysis, api, builders, canary, compare, policy
from mnist_operator.builders import Owner
from mnist_operator.cache import Cache
from mnist_operator.conditions import STUCK_POD_REASONS, ConditionType, EventReason, Reason
from mnist_operator.kube import ApiError, Discovery, KubeClient
from mnist_operator.metrics import CANARY_ACTIVE_PHASES, CANARY_RESULTS, UNEXPECTED, Metrics
from mnist_operator.prometheus import PrometheusClient, PrometheusError, measure
from mnist_operator.settings import OperatorSettings
from mnist_operator.spec import Canary, MnistModelSpec, SpecError, parse_spec
from mnist_operator.status import (
    STATUS_KEYS,
    Event,
    MnistModelStatus,
    Observed,
    Problem,
    compute_status,
    pod_problems,
    rollout_state,
    transition_events,
)
from mnist_operator.workqueue import Requeue, StopRetrying

logger = logging.getLogger(__name__)


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Failure:
    """A problem to report in Ready, and how soon trying again could help."""

    problem: Problem
    retry_after: float


def classify(exc: ApiError, verb: str, kind: str) -> Failure:
    """Turn an API error into a user-facing reason and a retry delay."""
    if exc.status == 403:
        return Failure(
            Problem(
                Reason.FORBIDDEN,
                f"the operator may not {verb} {kind}: {exc.message} (check the operator's RBAC)",
            ),
            30,
        )
    if exc.status == 422:
        return Failure(
            Problem(Reason.CHILD_INVALID, f"the API server rejected the {kind}: {exc.message}"), 60
        )
    if exc.retryable:
        return Failure(
            Problem(
                Reason.API_UNAVAILABLE, f"the API server did not answer a {verb} of {kind}: {exc.message}"
            ),
            2,
        )
    return Failure(
        Problem(Reason.APPLY_FAILED, f"could not {verb} {kind}: {exc.status} {exc.reason}: {exc.message}"), 5
    )


def policy_problems(verdict: policy.Verdict) -> tuple[Problem | None, dict[str, Problem]]:
    """Ready's problem when the workload was refused, and the problems of ExposureReady and
    MonitoringReady when those parts were."""
    refused = {
        str(condition): Problem(Reason.POLICY_VIOLATION, verdict.describe(part))
        for condition, part in (
            (ConditionType.EXPOSURE_READY, policy.Part.EXPOSURE),
            (ConditionType.MONITORING_READY, policy.Part.MONITORING),
        )
        if verdict.refuses(part)
    }
    workload = (
        Problem(Reason.POLICY_VIOLATION, verdict.describe(policy.Part.WORKLOAD))
        if verdict.refuses(policy.Part.WORKLOAD)
        else None
    )
    return workload, refused


@dataclass
class CanaryPlan:
    """What the canary strategy asks of one reconcile (see canary.py)."""

    state: canary.State | None = None  # status.canary; None: leave it out
    keep_stable: bool = False  # the stable Deployment is neither applied nor deleted
    deployment: dict[str, Any] | None = None  # the canary Deployment to apply
    service: dict[str, Any] | None = None  # the canary's own Service (a weighted split)
    route_weight: int | None = None  # the Route's or HTTPRoute's share for the canary's Service
    # The canary is over: its Deployment is scaled to 0 (kept, so that the operator needs no
    # delete permission on Deployments; the garbage collector deletes it with the model).
    delete: bool = False
    ready: Problem | None = None  # Ready=False with this, unless something worse
    progress: Problem | None = None  # Progressing=True with this
    events: tuple[tuple[str, str, str], ...] = ()
    run_again_in: float | None = None  # reconcile again then (a step's pause ends, a retry)


@dataclass
class Reconciler:
    settings: OperatorSettings
    client: KubeClient
    discovery: Discovery
    cache: Cache
    metrics: Metrics
    now: Callable[[], str] = utc_now
    # Hosts in use by our Routes and Ingresses (kopf indexes: host -> claims), for the policy.
    host_claims: policy.HostClaims = field(default_factory=dict)
    # Models refused a host another namespace holds (key -> host): reconciled again whenever a
    # Route or Ingress changes, so they get the host as soon as it is free.
    waiting_for_host: dict[tuple[str, str], str] = field(default_factory=dict)
    # The canary strategy: its clock, the Prometheus it asks (settings.prometheus_url) and how a
    # model is reconciled again when a step's pause ends (the work queue's add_after).
    clock: Callable[[], float] = time.time
    prometheus: PrometheusClient | None = None
    schedule: Callable[[tuple[str, str], float], None] | None = None

    # The phase of each model's canary under way (for mnist_operator_canaries).
    canary_phases: dict[tuple[str, str], str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.prometheus is None and self.settings.prometheus_url:
            self.prometheus = PrometheusClient(self.settings.prometheus_url)

    def forget(self, key: tuple[str, str]) -> None:
        """A model is gone: its canary no longer counts."""
        if self.canary_phases.pop(key, None) is not None:
            self._count_canaries()

    def _count_canaries(self) -> None:
        for phase in CANARY_ACTIVE_PHASES:
            self.metrics.canaries.labels(phase=phase).set(
                sum(1 for p in self.canary_phases.values() if p == phase)
            )

    def _observe_canary(self, key: tuple[str, str], before: Any, state: canary.State | None) -> None:
        phase = str(state.phase) if state is not None else None
        if phase in CANARY_ACTIVE_PHASES:
            self.canary_phases[key] = phase
        else:
            self.canary_phases.pop(key, None)
        self._count_canaries()
        if (
            state is not None
            and phase in CANARY_RESULTS
            and isinstance(before, Mapping)
            and (before.get("phase"), before.get("version")) != (phase, state.version)
        ):
            self.metrics.canary_outcomes.labels(result=phase).inc()

    async def __call__(self, key: tuple[str, str]) -> None:
        body = self.cache.model(*key)
        if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
            return  # gone, or going: the garbage collector removes the children
        started = time.perf_counter()
        result = "error"
        try:
            await self.reconcile(body)
            result = "success"
        except Requeue:
            result = "retry"
            raise
        except StopRetrying:
            raise
        except Exception:
            # Not one of the failures reconcile() reports itself: still seen in the error metric
            # (and its alert), not only in the log.
            self.metrics.observe_error(UNEXPECTED)
            raise
        finally:
            self.metrics.reconciles.labels(result=result).inc()
            self.metrics.duration.observe(time.perf_counter() - started)

    async def reconcile(self, body: Mapping[str, Any]) -> None:
        owner = Owner.from_body(body)
        spec: MnistModelSpec | None
        failure: Failure | None = None
        try:
            spec = parse_spec(body.get("spec"))
        except SpecError as exc:
            spec, failure = None, Failure(Problem(Reason.INVALID_SPEC, str(exc)), 0)
        try:
            capabilities = await self.discovery.capabilities()
        except ApiError as exc:
            raise Requeue(f"API discovery failed: {exc}", delay=2) from exc

        verdict = policy.Verdict()
        plan = CanaryPlan()
        if spec is not None:
            verdict = self._judge(spec, owner, capabilities)
            spec = verdict.effective(spec)  # what is carried out; status describes that
            kept: set[str] = set()
            if verdict.refuses(policy.Part.WORKLOAD):
                kept.add(api.DEPLOYMENT.kind)
                spec = self._as_running(spec, owner)
            else:
                plan = await self._canary(spec, owner, body, capabilities)
                if plan.keep_stable:
                    kept.add(api.DEPLOYMENT.kind)
                    spec = self._as_running(spec, owner)
            failure = await self._apply_children(spec, owner, capabilities, kept, plan.route_weight)
            failure = await self._carry_out(plan, spec, owner) or failure
        refused_workload, refused = policy_problems(verdict)

        exposure_kind = _exposure_kind(spec, capabilities)
        observed = Observed(
            deployment=self.cache.get(api.DEPLOYMENT.kind, owner.namespace, owner.name),
            # The stable version's pods (a canary's are judged by the canary strategy).
            pods=[p for p in self.cache.pods(owner.namespace, owner.name) if not p.get("canary")],
            exposure=self.cache.get(exposure_kind.kind, owner.namespace, owner.name),
            service_monitor=(
                self.cache.get(api.SERVICE_MONITOR.kind, owner.namespace, owner.name)
                if capabilities.service_monitors
                else None
            ),
            problem=refused_workload or (failure.problem if failure else None) or plan.ready,
            refused=refused,
            progress=plan.progress,
        )
        status = compute_status(
            spec=spec,
            owner=owner,
            observed=observed,
            capabilities=capabilities,
            previous=body.get("status"),
            now=self.now(),
        )
        self._observe_canary(owner.key, (body.get("status") or {}).get("canary") or {}, plan.state)
        if plan.state is not None:
            status["canary"] = plan.state.as_status()
            before = (body.get("status") or {}).get("canary") or {}
            if {k: before.get(k) for k in ("version", "phase", "step")} != {
                k: status["canary"].get(k) for k in ("version", "phase", "step")
            }:
                logger.info(
                    "%s/%s: canary of version %s %s at step %d: %s",
                    owner.namespace,
                    owner.name,
                    plan.state.version,
                    plan.state.phase,
                    plan.state.step,
                    plan.state.message,
                )
        try:
            await self._write_status(body, status, plan.events)
        except ApiError as exc:
            self.metrics.observe_error(Reason.API_UNAVAILABLE if exc.retryable else Reason.APPLY_FAILED)
            raise Requeue(f"could not write the status: {exc}", delay=2) from exc

        if plan.run_again_in is not None and self.schedule is not None:
            self.schedule(owner.key, plan.run_again_in)
        if failure is not None:
            self.metrics.observe_error(failure.problem.reason)
            if spec is None:
                raise StopRetrying(failure.problem.message)
            raise Requeue(failure.problem.message, delay=failure.retry_after)

    # --- the canary strategy (canary.py) ----------------------------------------------------

    async def _canary(
        self, spec: MnistModelSpec, owner: Owner, body: Mapping[str, Any], capabilities: api.Capabilities
    ) -> CanaryPlan:
        ns, name = owner.namespace, owner.name
        canary_name = canary.canary_name(name)
        live_canary = self.cache.get(api.DEPLOYMENT.kind, ns, canary_name, owner=name)
        has_canary = live_canary is not None and compare.controller_uid(live_canary) == owner.uid
        settings = spec.rollout.canary
        if settings is None:  # RollingUpdate: no canary, and no status of one
            return CanaryPlan(delete=has_canary)
        previous = canary.State.from_status((body.get("status") or {}).get("canary"))
        stable = rollout_state(self.cache.get(api.DEPLOYMENT.kind, ns, name))
        target = spec.model_version
        if stable.template_version is None:  # the first Deployment: nothing to compare with
            return CanaryPlan(state=previous, delete=has_canary)
        if target == stable.template_version:
            if previous is not None and previous.phase in canary.ACTIVE:
                message = (
                    f"the canary of version {previous.version} was aborted: spec.modelVersion is "
                    f"{target}, the stable version, again"
                )
                ended = previous.replace(
                    phase=canary.Phase.ABORTED, reason=Reason.CANARY_ABORTED, message=message
                )
                return CanaryPlan(
                    state=ended, delete=has_canary, events=(("Normal", Reason.CANARY_ABORTED, message),)
                )
            # Promoted: the canary serves on until the stable Deployment has rolled out.
            done = stable.rolled_out and not any(
                p.get("version") != target for p in self.cache.pods(ns, name) if not p.get("canary")
            )
            return CanaryPlan(state=previous, delete=has_canary and done)

        state = previous
        events: list[tuple[str, str, str]] = []
        if state is None or state.version != target or state.stable_version != stable.template_version:
            state = canary.start(settings, target, stable.template_version)
            events.append(
                (
                    "Normal",
                    EventReason.CANARY_STARTED,
                    f"version {target} on trial beside version {stable.template_version}: "
                    f"{len(settings.steps)} steps, "
                    + ", ".join(f"{s.weight} % for {s.pause_seconds} s" for s in settings.steps),
                )
            )
        annotations = (body.get("metadata") or {}).get("annotations") or {}
        asked = canary.manual_action(annotations, target) if state.phase in canary.ACTIVE else None
        if asked is canary.Phase.ABORTED:
            message = f"the canary of version {target} was aborted by hand ({canary.ABORT_ANNOTATION})"
            state = state.replace(phase=asked, reason=Reason.CANARY_ABORTED, message=message)
            events.append(("Normal", Reason.CANARY_ABORTED, message))
        elif asked is canary.Phase.PROMOTED:
            message = (
                f"version {target} was promoted by hand ({canary.PROMOTE_ANNOTATION}) at step {state.step}"
            )
            state = state.replace(phase=asked, reason=Reason.CANARY_PROMOTED, message=message)
            events.append(("Normal", Reason.CANARY_PROMOTED, message))

        if state.phase in canary.ENDED:
            return CanaryPlan(
                state=state,
                keep_stable=True,
                delete=has_canary,
                ready=Problem(state.reason, f"{state.message}; version {state.stable_version} serves"),
                events=tuple(events),
            )
        if state.phase is canary.Phase.PROMOTED:  # the stable Deployment rolls to the new version
            return CanaryPlan(state=state, events=tuple(events))
        exposed_by = _exposure_kind(spec, capabilities)
        return await self._canary_step(
            spec,
            owner,
            settings,
            state=state,
            live_canary=live_canary,
            events=events,
            # A Deployment's selector cannot change: the split the canary Deployment was first
            # made for sticks with it.
            routed=_routed(live_canary, name)
            if live_canary
            else spec.exposure.enabled and _weighs(exposed_by, capabilities),
            weighted_by=_split_by(exposed_by),
        )

    async def _canary_step(
        self,
        spec: MnistModelSpec,
        owner: Owner,
        settings: Canary,
        *,
        state: canary.State,
        live_canary: Mapping[str, Any] | None,
        events: list[tuple[str, str, str]],
        routed: bool = False,
        weighted_by: str = api.ROUTE.kind,
    ) -> CanaryPlan:
        """One step of a canary; `routed`: a Route or an HTTPRoute (`weighted_by`, the kind that
        exposes the model) splits the traffic by weight, else the ready-pod ratio does."""
        ns, name = owner.namespace, owner.name
        stable_live = self.cache.get(api.DEPLOYMENT.kind, ns, name) or {}
        stable_replicas = int((stable_live.get("spec") or {}).get("replicas", spec.min_replicas))
        replicas = canary.canary_replicas(state.weight, stable_replicas)
        split = weighted_by if routed else "Replicas"
        weight_now = state.weight if routed else canary.traffic_weight(replicas, stable_replicas)
        state = state.replace(traffic_weight=weight_now, traffic_split=split)
        wanted = builders.canary_deployment(spec, owner, self.settings, replicas, routed=routed)
        # With a Route the canary's pods are not the model's (another instance label): the pod
        # cache does not hold them, and their Deployment's status says how they are.
        pods = [p for p in self.cache.pods(ns, name) if p.get("canary") and not p.get("deleting")]
        stuck = [p for p in pod_problems(pods) if p.reason in STUCK_POD_REASONS]
        running = rollout_state(live_canary)
        if stuck or (running.deadline_exceeded and running.template_version == state.version):
            culprit = (
                f"its pod {stuck[0].pod} is {stuck[0].reason}: {stuck[0].message}"
                if stuck
                else "its Deployment exceeded its progress deadline"
            )
            message = f"version {state.version} rolled back at step {state.step}: {culprit}"
            state = state.replace(
                phase=canary.Phase.ROLLED_BACK, reason=Reason.CANARY_ROLLED_BACK, message=message
            )
            return CanaryPlan(
                state=state,
                keep_stable=True,
                delete=live_canary is not None,
                ready=Problem(state.reason, f"{message}; version {state.stable_version} serves"),
                events=(*events, ("Warning", Reason.CANARY_ROLLED_BACK, message)),
            )
        ready = (
            running.rolled_out
            and running.desired == replicas
            and running.template_version == state.version
            and running.ready >= replicas
            and (
                routed
                or sum(1 for p in pods if p.get("version") == state.version and _pod_ready(p)) >= replicas
            )
        )
        now = self.clock()
        step = canary.tick(state, settings, ready=ready, now=now)
        state = step.state
        run_again: float | None = None
        if step.due_in is not None and step.due_in > 0:
            run_again = step.due_in + 0.5
        elif step.due_in is not None:
            if self.prometheus is None:
                state = canary.unreachable(
                    state, "no Prometheus to ask (set MNIST_OPERATOR_PROMETHEUS_URL)", now
                )
            else:
                try:
                    canary_side, stable_side = await measure(
                        self.prometheus, ns, name, window=step.window, at=now
                    )
                except PrometheusError as exc:
                    state = canary.unreachable(state, str(exc), now)
                else:
                    verdict = analysis.judge(canary_side, stable_side, settings.analysis)
                    outcome = canary.after_verdict(state, settings, verdict, now)
                    state = outcome.state
                    events.extend(outcome.events)
            if state.phase is canary.Phase.PAUSED:
                if state.reason != step.state.reason or step.state.phase is not canary.Phase.PAUSED:
                    events.append(("Warning", Reason.CANARY_PAUSED, state.message))
                run_again = canary.RETRY_SECONDS
            elif state.phase is canary.Phase.ROLLED_BACK:
                return CanaryPlan(
                    state=state,
                    keep_stable=True,
                    delete=True,
                    ready=Problem(state.reason, f"{state.message}; version {state.stable_version} serves"),
                    events=tuple(events),
                )
            elif state.phase is canary.Phase.PROMOTED:
                return CanaryPlan(state=state, events=tuple(events))
            else:  # the next step: the canary grows
                next_replicas = canary.canary_replicas(state.weight, stable_replicas)
                share = state.weight if routed else canary.traffic_weight(next_replicas, stable_replicas)
                state = state.replace(traffic_weight=share)
                wanted = builders.canary_deployment(spec, owner, self.settings, next_replicas, routed=routed)
        reason = Reason.CANARY_PAUSED if state.phase is canary.Phase.PAUSED else Reason.CANARY_PROGRESSING
        problem = Problem(reason, state.message)
        return CanaryPlan(
            state=state,
            keep_stable=True,
            deployment=wanted,
            service=builders.canary_service(spec, owner) if routed else None,
            # The Route sends the canary its share once its pods are ready for the step.
            route_weight=(state.weight if state.step_started_at is not None else 0) if routed else None,
            ready=problem,
            progress=problem,
            events=tuple(events),
            run_again_in=run_again,
        )

    async def _carry_out(self, plan: CanaryPlan, spec: MnistModelSpec, owner: Owner) -> Failure | None:
        name = canary.canary_name(owner.name)
        if plan.service is not None:
            failure = await self._apply_named(plan.service, api.SERVICE, owner)
            if failure is not None:
                return failure
        wanted = plan.deployment
        if wanted is None and plan.delete:
            live = self.cache.get(api.DEPLOYMENT.kind, owner.namespace, name, owner=owner.name)
            version = rollout_state(live).template_version
            if live is None or version is None:
                return None
            ended = dataclasses.replace(spec, model_version=version)
            wanted = builders.canary_deployment(
                ended, owner, self.settings, 0, routed=_routed(live, owner.name)
            )
        if wanted is not None:
            try:
                live = self.cache.get(api.DEPLOYMENT.kind, owner.namespace, name, owner=owner.name)
                if live is None:
                    live = await self.client.get(api.DEPLOYMENT, owner.namespace, name)
                if live is not None and compare.controller_uid(live) != owner.uid:
                    return Failure(
                        Problem(
                            Reason.CHILD_CONFLICT,
                            f"a Deployment named {name} already exists and is not controlled by this "
                            f"MnistModel: delete or rename it (the canary needs the name)",
                        ),
                        10,
                    )
                stamped = compare.stamp(wanted)
                if compare.needs_apply(stamped, live):
                    logger.info(
                        "%s/%s: applying the canary Deployment (%s replicas)",
                        owner.namespace,
                        owner.name,
                        stamped["spec"].get("replicas"),
                    )
                    self.cache.remember(await self.client.apply(stamped))
            except ApiError as exc:
                return classify(exc, "apply", "Deployment")
        return None

    def _judge(self, spec: MnistModelSpec, owner: Owner, capabilities: api.Capabilities) -> policy.Verdict:
        verdict = policy.evaluate(spec, owner.namespace, self.settings, capabilities, self.host_claims)
        host = verdict.taken_host
        if host is None:
            self.waiting_for_host.pop(owner.key, None)
        elif self.waiting_for_host.get(owner.key) != host:
            self.waiting_for_host[owner.key] = host
            # The user is told only "another namespace"; the admin may know which.
            holder = min(self.host_claims.get(host, ()), default=None)
            logger.info(
                "%s/%s: host %s refused, held by %s",
                owner.namespace,
                owner.name,
                host,
                f"{holder.namespace}/{holder.name}" if holder else "another namespace",
            )
        return verdict

    def _as_running(self, spec: MnistModelSpec, owner: Owner) -> MnistModelSpec:
        """The spec with the version the kept Deployment runs: no rollout is coming, so status
        must not announce one (nor the other children's labels a version nobody serves)."""
        running = rollout_state(self.cache.get(api.DEPLOYMENT.kind, owner.namespace, owner.name))
        if running.template_version is None:
            return spec
        return dataclasses.replace(spec, model_version=running.template_version)

    async def _apply_named(self, obj: dict[str, Any], kind: api.ResourceKind, owner: Owner) -> Failure | None:
        """Apply a child not named after its model (the canary's Service) when it differs."""
        name = obj["metadata"]["name"]
        try:
            live = self.cache.get(kind.kind, owner.namespace, name, owner=owner.name)
            if live is None:
                live = await self.client.get(kind, owner.namespace, name)
            if live is not None and compare.controller_uid(live) != owner.uid:
                return Failure(
                    Problem(
                        Reason.CHILD_CONFLICT,
                        f"a {kind.kind} named {name} already exists and is not controlled by this MnistModel",
                    ),
                    10,
                )
            stamped = compare.stamp(obj)
            if compare.needs_apply(stamped, live):
                logger.info("%s/%s: applying %s %s", owner.namespace, owner.name, kind.kind, name)
                self.cache.remember(await self.client.apply(stamped))
        except ApiError as exc:
            return classify(exc, "apply", kind.kind)
        return None

    async def _apply_children(
        self,
        spec: MnistModelSpec,
        owner: Owner,
        capabilities: api.Capabilities,
        kept: set[str],
        canary_weight: int | None = None,
    ) -> Failure | None:
        """Apply what differs and delete what is unwanted; children are independent, so in parallel.

        Kinds in `kept` are neither applied nor deleted: left as they are.
        """
        wanted = [
            compare.stamp(obj)
            for obj in builders.desired(spec, owner, self.settings, capabilities)
            if obj["kind"] not in kept
        ]
        if canary_weight is not None:  # a canary behind the model's Route or HTTPRoute
            weighted = {k.kind for k in api.WEIGHTED_KINDS}
            wanted = [
                compare.stamp(builders.with_canary_backend(obj, owner, canary_weight))
                if obj["kind"] in weighted
                else obj
                for obj in wanted
            ]
        wanted_kinds = {obj["kind"] for obj in wanted} | kept
        unwanted = [k for k in api.CHILD_KINDS if k.kind not in wanted_kinds and capabilities.serves(k)]
        outcomes = await asyncio.gather(
            *(self._apply_child(obj, owner) for obj in wanted),
            *(self._delete_child(kind, owner) for kind in unwanted),
        )
        return next((failure for failure in outcomes if failure is not None), None)

    async def _apply_child(self, obj: dict[str, Any], owner: Owner) -> Failure | None:
        kind = api.KINDS_BY_KIND[obj["kind"]]
        try:
            live = await self._live_child(kind, owner)
            if live is not None and compare.controller_uid(live) != owner.uid:
                return Failure(
                    Problem(
                        Reason.CHILD_CONFLICT,
                        f"a {kind.kind} named {owner.name} already exists and is not controlled by this "
                        f"MnistModel: delete or rename it, or rename the MnistModel",
                    ),
                    10,
                )
            if kind == api.DEPLOYMENT and live is not None and "replicas" not in obj["spec"]:
                await self._hand_replicas_over(live)
            if compare.needs_apply(obj, live):
                logger.info("%s/%s: applying %s", owner.namespace, owner.name, kind.kind)
                self.cache.remember(await self.client.apply(obj))
        except ApiError as exc:
            if exc.status == 404 and kind in api.OPTIONAL_KINDS:
                self.discovery.invalidate()  # the API went away since discovery
                return Failure(Problem(Reason.API_UNAVAILABLE, f"the {kind.api_version} API disappeared"), 1)
            return classify(exc, "apply", kind.kind)
        return None

    async def _delete_child(self, kind: api.ResourceKind, owner: Owner) -> Failure | None:
        live = self.cache.get(kind.kind, owner.namespace, owner.name)
        if live is None or compare.controller_uid(live) != owner.uid:
            return None
        logger.info("%s/%s: deleting %s, no longer wanted", owner.namespace, owner.name, kind.kind)
        try:
            await self.client.delete(
                kind, owner.namespace, owner.name, (live.get("metadata") or {}).get("uid")
            )
        except ApiError as exc:
            return classify(exc, "delete", kind.kind)
        self.cache.forget(kind.kind, owner.namespace, owner.name)
        return None

    async def _live_child(self, kind: api.ResourceKind, owner: Owner) -> Mapping[str, Any] | None:
        live = self.cache.get(kind.kind, owner.namespace, owner.name)
        if live is None:
            # Not in the (label-filtered) cache: make sure we do not take over someone else's object.
            live = await self.client.get(kind, owner.namespace, owner.name)
        return live

    async def _hand_replicas_over(self, live: Mapping[str, Any]) -> None:
        """Before autoscaling takes over, let a second field manager co-own spec.replicas.

        Otherwise dropping the field from our apply would reset it to the default of 1 until the
        HPA's next sync, briefly scaling a busy model down.
        """
        if not compare.manager_owns(live, api.FIELD_MANAGER, ("spec", "replicas")):
            return
        meta = live["metadata"]
        await self.client.apply(
            {
                "apiVersion": api.DEPLOYMENT.api_version,
                "kind": api.DEPLOYMENT.kind,
                "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
                "spec": {"replicas": (live.get("spec") or {}).get("replicas", 1)},
            },
            manager=api.HANDOVER_FIELD_MANAGER,
        )

    async def _write_status(
        self, body: Mapping[str, Any], status: MnistModelStatus, extra: tuple[tuple[str, str, str], ...] = ()
    ) -> None:
        current = body.get("status") or {}
        if all(current.get(k) == status.get(k) for k in STATUS_KEYS):
            return
        patch: dict[str, Any] = {k: status.get(k) for k in STATUS_KEYS}  # None removes a field
        if patch.get("canary") is not None:
            # A merge patch merges objects: a key the new state leaves out must be sent as null,
            # or the last canary's stepStartedAt (say) would live on in the next one's.
            patch["canary"] = {k: patch["canary"].get(k) for k in canary.STATUS_FIELDS}
        meta = body["metadata"]
        updated = await self.client.patch_status(meta["namespace"], meta["name"], patch)
        if updated is None:
            # Gone (404): deleted meanwhile, or while a watch was down, so that the cache still
            # holds it. Hidden until the watch or the next relist says so; otherwise every event
            # of its children and pods would reconcile it, and write its status, again.
            self.cache.forget(api.KIND, meta["namespace"], meta["name"])
            return
        self.cache.remember(updated)
        events = transition_events(current.get("conditions") or [], status.get("conditions") or [])
        events += [Event(*e) for e in extra]  # the canary's: posted once its state is stored
        await asyncio.gather(*(self._post_event(updated, event) for event in events))

    async def _post_event(self, model: Mapping[str, Any], event: Event) -> None:
        try:
            await self.client.post_event(model, type=event.type, reason=event.reason, message=event.message)
        except ApiError as exc:  # an Event is worth a log line, never a failed reconcile
            meta = model["metadata"]
            logger.warning(
                "%s/%s: could not post the %s event: %s", meta["namespace"], meta["name"], event.reason, exc
            )


def _pod_ready(pod: Mapping[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in pod.get("conditions") or [])


def _exposure_kind(spec: MnistModelSpec | None, capabilities: api.Capabilities) -> api.ResourceKind:
    """What exposes the model: an HTTPRoute when it names a Gateway, else a Route or an Ingress."""
    gateway = spec is not None and spec.exposure.gateway is not None
    return capabilities.exposure_kind_for(gateway)


def _weighs(kind: api.ResourceKind, capabilities: api.Capabilities) -> bool:
    """Whether `kind` splits traffic by weight (a Route or an HTTPRoute) and the cluster serves it."""
    return kind in api.WEIGHTED_KINDS and capabilities.serves(kind)


def _split_by(kind: api.ResourceKind) -> str:
    """status.canary.trafficSplit of a weighted split: the HTTPRoute's, else the Route's (as it
    was before; a canary made for a Route keeps its own Service when the exposure changes)."""
    return kind.kind if kind in api.WEIGHTED_KINDS else api.ROUTE.kind


def _routed(canary_deployment: Mapping[str, Any], model: str) -> bool:
    """Whether a canary Deployment was made for a weighted split by a Route or an HTTPRoute (its
    pods are not the model's)."""
    labels = ((canary_deployment.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    return bool(labels.get(api.LABEL_INSTANCE) == model + api.CANARY_SUFFIX)
