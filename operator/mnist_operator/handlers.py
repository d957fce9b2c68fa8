"""Thin kopf handlers: keep the caches (kopf indexes) and turn watch events into queued reconciles.

No create/update/resume handlers, no daemons or timers: those make kopf write progress
annotations, a diff base, or a finalizer to every MnistModel. Everything here only reads.
- index handlers keep an in-memory copy of the MnistModels and of their children and pods
  (children and pods are watched with a server-side label selector: only ours are listed);
- event handlers queue the owning MnistModel's key, so a hand-deleted or hand-edited child is
  put back within seconds and status follows the pods;
- a CRD event for the Route or ServiceMonitor API re-runs discovery and every reconcile (unless
  a namespaced operator may not watch CRDs: it then reads nothing cluster-scoped);
- two more indexes hold the hosts our Routes and Ingresses serve, for the policy's "a host is never
  shared between namespaces";
- every resync starts with an authoritative relist (relist.py) that removes from the indexes what
  was deleted while a watch was down;
- with leader election (leader.py), every replica watches and keeps its caches warm, and only the
  holder of the Lease runs the work queue and writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import kopf

from mnist_operator import api, policy, relist
from mnist_operator.cache import Cache, owner_key, pod_projection, snapshot
from mnist_operator.controller import Reconciler
from mnist_operator.kube import ApiError, Discovery, KubeClient, default_login
from mnist_operator.leader import ElectionThread, Elector, Timing, process_identity
from mnist_operator.metrics import Metrics
from mnist_operator.settings import OperatorSettings
from mnist_operator.workqueue import WorkQueue

logger = logging.getLogger(__name__)

WATCHED_CHILDREN = (*api.CHILD_KINDS, api.POD)
OPTIONAL_CRDS = {f"{k.plural}.{k.group}" for k in api.OPTIONAL_KINDS}
OPTIONAL_API_RECHECK_DELAYS = (0.0, 2.0, 10.0)  # seconds after a Route/ServiceMonitor CRD event
# After kopf lists again (a watch gap), wait this long for it to list every kind before relisting.
RELIST_AFTER_GAP_DELAY = 2.0
EXPOSURE_KINDS = (api.INGRESS, api.ROUTE)


def index_id(kind: api.ResourceKind) -> str:
    return f"index_{kind.kind.lower()}"


def hosts_index_id(kind: api.ResourceKind) -> str:
    return f"hosts_{kind.kind.lower()}"


async def may_read_cluster(client: KubeClient) -> bool:
    """Whether this identity may watch CRDs: a namespaced install holds Roles only, and kopf must
    then not try (it would retry a forbidden watch forever)."""
    try:
        return await client.allowed("watch", api.CRD)
    except ApiError as exc:
        logger.warning("could not ask whether CRDs may be watched (%s): assuming not", exc)
        return False
    finally:
        await client.close()


def configure_kopf(settings: kopf.OperatorSettings, *, namespaced: bool = False) -> None:
    """kopf settings that keep the operator from writing anything it does not mean to.

    `namespaced` (an operator on Roles only): kopf neither lists namespaces nor watches CRDs (both
    cluster-scoped, which a Role cannot grant); the namespaces are taken as given, the APIs as
    found at start-up.
    """
    settings.posting.enabled = False  # our own Events, on transitions only; no "Handler succeeded"
    settings.scanning.disabled = namespaced
    # kopf keeps a worker per object for this long after its last watch event, holding that event
    # (a whole object with its managedFields): with 5 s, the default, a burst of a thousand models
    # held some thousands of them at once.
    settings.queueing.idle_timeout = 1.0
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    for kind in WATCHED_CHILDREN:
        settings.watching.label_selectors[kind.group, kind.version, kind.plural] = api.MANAGED_SELECTOR


class Operator:
    """Everything one operator process shares between its handlers."""

    def __init__(
        self,
        settings: OperatorSettings,
        metrics: Metrics,
        client: KubeClient | None = None,
        *,
        cluster_reads: bool = True,
        identity: str = "",
    ) -> None:
        self.settings = settings
        # Whether kopf may list namespaces and watch CRDs (cluster-scoped): always when watching
        # the whole cluster; a namespaced operator may hold only Roles (see `may_read_cluster`).
        self.cluster_reads = cluster_reads or not settings.namespaces
        self.metrics = metrics
        self.cache = Cache()
        self.identity = identity or process_identity()
        # The replica's identity in the user agent: the audit log tells the replicas' writes apart.
        self.client = client or KubeClient(
            on_write=metrics.observe_write, user_agent=f"{api.USER_AGENT} ({self.identity})"
        )
        self.discovery = Discovery(self.client, settings.discovery_ttl_seconds)
        self.reconciler = Reconciler(settings, self.client, self.discovery, self.cache, metrics)
        self.queue = WorkQueue(
            self.reconciler,
            workers=settings.workers,
            stall_after=settings.queue_stall_seconds,
            metrics=metrics,
        )
        # A canary step's pause ends: its model is reconciled then, with no event needed.
        self.reconciler.schedule = self._schedule
        self._resync: asyncio.Task[None] | None = None
        self._rechecks: set[asyncio.TimerHandle] = set()
        # Whether this replica reconciles: at once without leader election, else while it holds
        # the Lease (the elector's callbacks); every write is gated on the Lease too (fencing).
        self.elector: Elector | None = None
        if settings.leader_election:
            self.elector = Elector(
                settings.leader_election_namespace or "default",
                self.identity,
                Timing(
                    settings.lease_duration_seconds,
                    settings.renew_deadline_seconds,
                    settings.retry_period_seconds,
                ),
                on_started_leading=self._elected,
                on_stopped_leading=self._deposed,
            )
            self.client.write_gate = self.elector.write_budget
        self.leading = self.elector is None
        self._election: ElectionThread | None = None
        self._loop: (
            asyncio.AbstractEventLoop
        )  # the operator's, once started: the elector's callbacks run there
        # kopf runs event handlers only once every index is loaded: the first one says so, and
        # until then a reconcile could mistake "not listed yet" for "missing".
        self.synced = False
        self._stopping = False
        self._gap_relist: asyncio.TimerHandle | None = None  # pending, or running, until it ends
        self._gap_relist_task: asyncio.Task[None] | None = None
        self._relisting = asyncio.Lock()  # one relist at a time (the resync's, a watch gap's)

    async def start(self, indices: Mapping[str, Any]) -> None:
        self.cache.attach(api.KIND, indices[index_id(api.MNISTMODEL)])
        for kind in WATCHED_CHILDREN:
            hosts = [indices[hosts_index_id(kind)]] if kind in EXPOSURE_KINDS else []
            self.cache.attach(kind.kind, indices[index_id(kind)], *hosts)
        self.reconciler.host_claims = policy.CombinedClaims(
            *(indices[hosts_index_id(kind)] for kind in EXPOSURE_KINDS)
        )
        self._resync = asyncio.create_task(self._resync_forever(), name="resync")
        if self.elector is None:
            self._lead()
        else:
            self.metrics.leader.set(0)
            self._loop = asyncio.get_running_loop()
            # On a thread of its own, so that a busy event loop never delays a renewal.
            self._election = ElectionThread(self.elector)
            self._election.start()

    async def stop(self) -> None:
        self._stopping = True  # an election won from now on must not start the queue again
        for handle in self._rechecks:
            handle.cancel()
        self._rechecks.clear()
        if self._gap_relist is not None:
            self._gap_relist.cancel()
        if self._resync is not None:
            self._resync.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._resync
        await self.queue.stop()
        if self._election is not None:
            await self._election.stop()  # nothing writes any more: it releases the Lease
        if self.reconciler.prometheus is not None:
            await self.reconciler.prometheus.close()
        await self.client.close()

    # The elector's callbacks, called on its thread: the work happens on the operator's loop.
    def _elected(self) -> None:
        self._loop.call_soon_threadsafe(self._lead)

    async def _deposed(self) -> None:
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._stand_by(), self._loop))

    def _lead(self) -> None:
        if self._stopping:
            return
        self.leading = True
        self.metrics.leader.set(1)
        self.queue.start()
        self.enqueue_all()  # whatever happened while another replica led, or none did

    async def _stand_by(self) -> None:
        self.leading = False
        self.metrics.leader.set(0)
        await self.queue.stop()
        self.queue.clear()  # the new leader reconciles everything; a standby must not look stalled

    def event_seen(self, type: str | None) -> None:
        """Every event handler calls this first. kopf runs them only once every index is loaded, so
        the first event says the caches are complete. An event of a listing (no type) after that
        says kopf listed again after a watch gap (410 Gone): what it did not list is still cached,
        so relist soon rather than at the next resync (once more at start-up, which costs a few
        LISTs)."""
        if not self.synced:
            self.synced = True
            self.enqueue_all()
        elif type is None and self._gap_relist is None and not self._stopping:
            self._gap_relist = asyncio.get_running_loop().call_later(
                RELIST_AFTER_GAP_DELAY, self._start_relist_after_gap
            )

    def _start_relist_after_gap(self) -> None:
        self._gap_relist_task = asyncio.create_task(self._relist_after_gap(), name="relist-after-gap")

    async def _relist_after_gap(self) -> None:
        try:
            await self.relist()
        except Exception:  # a bug: logged; the resync's relist comes anyway
            logger.exception("the relist failed")
        finally:
            self._gap_relist = None

    def enqueue(self, key: tuple[str, str]) -> None:
        if self.leading:
            self.queue.add(key)

    def _schedule(self, key: tuple[str, str], delay: float) -> None:
        if self.leading:
            self.queue.add_after(key, delay)

    def enqueue_all(self) -> None:
        if not self.synced:
            return  # the first event handler does it, once the caches are complete
        for key in self.cache.model_keys():
            self.enqueue(key)

    async def _resync_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.resync_seconds)
            try:
                await self.relist()
            except Exception:  # a bug: logged, and the resync goes on
                logger.exception("the relist failed")
            logger.debug("periodic resync of %d models", len(self.cache.model_keys()))
            self.enqueue_all()

    async def relist(self) -> None:
        """Forget what was deleted while a watch was down, and reconcile the models concerned."""
        async with self._relisting:
            await self._relist()

    async def _relist(self) -> None:
        for kind in [api.KINDS_BY_KIND[k] for k in self.cache.kinds()]:
            try:
                listing = await relist.list_objects(self.client, kind, self.settings.namespaces)
            except ApiError as exc:
                logger.warning("could not list %s to check the cache (next resync): %s", kind.plural, exc)
                continue
            if listing is None:
                continue  # not served
            purged = self.cache.purge(kind.kind, listing.objects, listing.resource_version)
            if not purged:
                continue
            logger.warning(
                "%d %s deleted while a watch was down (a watch gap): forgotten", len(purged), kind.plural
            )
            self.metrics.cache_purged.labels(kind=kind.kind).inc(len(purged))
            for key in set(purged):
                if kind == api.MNISTMODEL:
                    self.model_gone(key)
                else:
                    self.enqueue_owner(key)

    def model_gone(self, key: tuple[str, str]) -> None:
        self.reconciler.forget(key)
        self.queue.forget(key)
        self.cache.drop(*key)
        self.reconciler.waiting_for_host.pop(key, None)

    def recheck_optional_apis(self) -> None:
        """Re-run discovery and every reconcile now, and again shortly after.

        The API server publishes a new CRD's group in discovery a moment after the CRD is
        Established, so a single re-check right after the CRD event can still see the old API set.
        """
        loop = asyncio.get_running_loop()
        for delay in OPTIONAL_API_RECHECK_DELAYS:
            handle = loop.call_later(delay, self._recheck_now)
            self._rechecks.add(handle)

    def _recheck_now(self) -> None:
        # Forget the handles that have fired, so the set only holds re-checks still to come.
        now = asyncio.get_running_loop().time()
        self._rechecks = {handle for handle in self._rechecks if handle.when() > now}
        self.discovery.invalidate()
        self.enqueue_all()

    def enqueue_owner(self, key: tuple[str, str] | None) -> None:
        if key is not None and self.cache.model(*key) is not None:
            self.enqueue(key)

    def enqueue_waiting_for_host(self) -> None:
        """A Route or Ingress changed: a host a model was refused may be free now."""
        for key in list(self.reconciler.waiting_for_host):
            self.enqueue_owner(key)


def register(registry: kopf.OperatorRegistry, op: Operator) -> None:
    managed = {api.LABEL_MANAGED_BY: api.MANAGED_BY}

    @kopf.on.startup(id="start", registry=registry)
    async def start(settings: kopf.OperatorSettings, **kwargs: Any) -> None:
        # The one place kopf is configured: startup handlers finish before any watch starts.
        configure_kopf(settings, namespaced=not op.cluster_reads)
        await op.start(kwargs)

    @kopf.on.login(id="login", registry=registry)
    async def login(**_: Any) -> kopf.ConnectionInfo:
        return await default_login()  # the same credentials as our own client

    @kopf.on.cleanup(id="stop", registry=registry)
    async def stop(**_: Any) -> None:
        await op.stop()

    @kopf.on.probe(id="queued", registry=registry)
    def queued(**_: Any) -> int:
        return len(op.queue)

    @kopf.on.probe(id="progress", registry=registry)
    async def progress(**_: Any) -> dict[str, float]:
        stall = op.queue.stall()
        if stall is not None:
            # A probe handler that fails permanently makes kopf's /healthz answer 500 at once (an
            # ordinary exception would be retried first), so the kubelet restarts the operator.
            raise kopf.PermanentError(stall)
        return {"oldest_waiting_seconds": round(op.queue.oldest_age(), 1)}

    @kopf.index(api.GROUP, api.VERSION, api.PLURAL, id=index_id(api.MNISTMODEL), registry=registry)
    def index_models(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
        return {(namespace or "", name): snapshot(body)}

    # Event handlers are coroutines on purpose: kopf runs plain functions in a thread pool, and the
    # work queue (asyncio.Queue, timers) must only be touched from the event loop's thread.
    @kopf.on.event(api.GROUP, api.VERSION, api.PLURAL, id="event_mnistmodel", registry=registry)
    async def model_event(type: str, namespace: str | None, name: str, **_: Any) -> None:
        op.event_seen(type)
        key = (namespace or "", name)
        if type == "DELETED":
            op.model_gone(key)
        else:
            op.enqueue(key)

    for kind in api.CHILD_KINDS:
        _register_child(registry, op, kind, managed)

    @kopf.index(
        api.POD.group,
        api.POD.version,
        api.POD.plural,
        id=index_id(api.POD),
        labels=managed,
        registry=registry,
    )
    def index_pods(
        namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any
    ) -> dict[Any, Any]:
        instance = labels.get(api.LABEL_INSTANCE)
        return {(namespace or "", instance): pod_projection(body)} if instance else {}

    @kopf.on.event(
        api.POD.group, api.POD.version, api.POD.plural, id="event_pod", labels=managed, registry=registry
    )
    async def pod_event(type: str, namespace: str | None, labels: Mapping[str, str], **_: Any) -> None:
        op.event_seen(type)
        instance = labels.get(api.LABEL_INSTANCE)
        op.enqueue_owner((namespace or "", instance) if instance else None)

    if op.cluster_reads:
        _register_optional_crds(registry, op)


def _register_optional_crds(registry: kopf.OperatorRegistry, op: Operator) -> None:
    @kopf.on.event(
        api.CRD.group,
        api.CRD.version,
        api.CRD.plural,
        id="event_optional_crd",
        registry=registry,
        when=lambda name, **_: name in OPTIONAL_CRDS,
    )
    async def optional_api_changed(name: str, type: str, **_: Any) -> None:
        op.event_seen(type)
        if not type:
            return  # the initial listing (kopf passes None): discovery is fresh anyway
        logger.info("CRD %s changed (%s): re-checking the optional APIs", name, type)
        op.recheck_optional_apis()


def _register_child(
    registry: kopf.OperatorRegistry, op: Operator, kind: api.ResourceKind, managed: dict[str, str]
) -> None:
    keep_replicas_owners = kind == api.DEPLOYMENT  # read by the HPA hand-over

    def index_child(body: kopf.Body, **_: Any) -> dict[Any, Any]:
        key = owner_key(body)
        return {key: snapshot(body, keep_replicas_owners=keep_replicas_owners)} if key else {}

    async def child_event(type: str, body: kopf.Body, **_: Any) -> None:
        op.event_seen(type)
        if type == "DELETED":
            op.cache.observe_deletion(body)
        op.enqueue_owner(owner_key(body))
        if kind in EXPOSURE_KINDS:
            op.enqueue_waiting_for_host()

    kopf.index(kind.group, kind.version, kind.plural, id=index_id(kind), labels=managed, registry=registry)(
        index_child
    )
    kopf.on.event(
        kind.group,
        kind.version,
        kind.plural,
        id=f"event_{kind.kind.lower()}",
        labels=managed,
        registry=registry,
    )(child_event)
    if kind in EXPOSURE_KINDS:

        def index_hosts(body: kopf.Body, **_: Any) -> dict[Any, Any]:
            return policy.host_claims(body)

        kopf.index(
            kind.group, kind.version, kind.plural, id=hosts_index_id(kind), labels=managed, registry=registry
        )(index_hosts)
