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

from mnist_operator import api, builders, compare, policy
from mnist_operator.builders import Owner
from mnist_operator.cache import Cache
from mnist_operator.conditions import ConditionType, Reason
from mnist_operator.kube import ApiError, Discovery, KubeClient
from mnist_operator.metrics import UNEXPECTED, Metrics
from mnist_operator.settings import OperatorSettings
from mnist_operator.spec import MnistModelSpec, SpecError, parse_spec
from mnist_operator.status import (
    STATUS_KEYS,
    Event,
    MnistModelStatus,
    Observed,
    Problem,
    compute_status,
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
        if spec is not None:
            verdict = self._judge(spec, owner, capabilities)
            spec = verdict.effective(spec)  # what is carried out; status describes that
            kept: set[str] = set()
            if verdict.refuses(policy.Part.WORKLOAD):
                kept.add(api.DEPLOYMENT.kind)
                spec = self._as_running(spec, owner)
            failure = await self._apply_children(spec, owner, capabilities, kept)
        refused_workload, refused = policy_problems(verdict)

        exposure_kind = capabilities.exposure_kind
        observed = Observed(
            deployment=self.cache.get(api.DEPLOYMENT.kind, owner.namespace, owner.name),
            pods=self.cache.pods(owner.namespace, owner.name),
            exposure=self.cache.get(exposure_kind.kind, owner.namespace, owner.name),
            service_monitor=(
                self.cache.get(api.SERVICE_MONITOR.kind, owner.namespace, owner.name)
                if capabilities.service_monitors
                else None
            ),
            problem=refused_workload or (failure.problem if failure else None),
            refused=refused,
        )
        status = compute_status(
            spec=spec,
            owner=owner,
            observed=observed,
            capabilities=capabilities,
            previous=body.get("status"),
            now=self.now(),
        )
        try:
            await self._write_status(body, status)
        except ApiError as exc:
            self.metrics.observe_error(Reason.API_UNAVAILABLE if exc.retryable else Reason.APPLY_FAILED)
            raise Requeue(f"could not write the status: {exc}", delay=2) from exc

        if failure is not None:
            self.metrics.observe_error(failure.problem.reason)
            if spec is None:
                raise StopRetrying(failure.problem.message)
            raise Requeue(failure.problem.message, delay=failure.retry_after)

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

    async def _apply_children(
        self, spec: MnistModelSpec, owner: Owner, capabilities: api.Capabilities, kept: set[str]
    ) -> Failure | None:
        """Apply what differs and delete what is unwanted; children are independent, so in parallel.

        Kinds in `kept` are neither applied nor deleted: left as they are.
        """
        wanted = [
            compare.stamp(obj)
            for obj in builders.desired(spec, owner, self.settings, capabilities)
            if obj["kind"] not in kept
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

    async def _write_status(self, body: Mapping[str, Any], status: MnistModelStatus) -> None:
        current = body.get("status") or {}
        if all(current.get(k) == status.get(k) for k in STATUS_KEYS):
            return
        patch: dict[str, Any] = {k: status.get(k) for k in STATUS_KEYS}  # None removes a field
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
        await asyncio.gather(*(self._post_event(updated, event) for event in events))

    async def _post_event(self, model: Mapping[str, Any], event: Event) -> None:
        try:
            await self.client.post_event(model, type=event.type, reason=event.reason, message=event.message)
        except ApiError as exc:  # an Event is worth a log line, never a failed reconcile
            meta = model["metadata"]
            logger.warning(
                "%s/%s: could not post the %s event: %s", meta["namespace"], meta["name"], event.reason, exc
            )
