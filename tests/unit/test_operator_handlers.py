"""The kopf wiring: only read-only handler kinds, ours filtered by label, kopf's own writes off,
and a liveness endpoint that fails when the work queue stalls."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import kopf
import pytest
from prometheus_client import CollectorRegistry
from testkit import free_port

from mnist_operator import api
from mnist_operator.handlers import WATCHED_CHILDREN, Operator, configure_kopf, may_read_cluster, register
from mnist_operator.kube import ApiError
from mnist_operator.metrics import Metrics
from mnist_operator.settings import OperatorSettings
from mnist_operator.workqueue import WorkQueue


def registry() -> kopf.OperatorRegistry:
    reg = kopf.OperatorRegistry()
    register(reg, Operator(OperatorSettings(), Metrics.create(CollectorRegistry())))
    return reg


def test_no_handler_makes_kopf_write_to_the_objects() -> None:
    reg = registry()
    # create/update/resume/delete handlers store progress and a diff base in annotations (and
    # delete handlers a finalizer); daemons and timers need a finalizer. None of them here.
    assert list(reg._changing.get_all_handlers()) == []
    assert list(reg._spawning.get_all_handlers()) == []


def test_every_watched_kind_is_indexed_and_triggers_reconciles() -> None:
    reg = registry()
    indexed = {h.id for h in reg._indexing.get_all_handlers()}
    watched = {h.id for h in reg._watching.get_all_handlers()}
    assert indexed == {
        "index_mnistmodel",
        *(f"index_{k.kind.lower()}" for k in WATCHED_CHILDREN),
        "hosts_ingress",  # the hosts our exposures serve, for the policy
        "hosts_route",
    }
    assert watched == {
        "event_mnistmodel",
        "event_optional_crd",
        *(f"event_{k.kind.lower()}" for k in WATCHED_CHILDREN),
    }
    for handler in [*reg._indexing.get_all_handlers(), *reg._watching.get_all_handlers()]:
        if handler.id not in ("index_mnistmodel", "event_mnistmodel", "event_optional_crd"):
            assert handler.labels == {api.LABEL_MANAGED_BY: api.MANAGED_BY}, handler.id


def test_kopf_settings_post_no_events_and_list_only_our_children() -> None:
    settings = kopf.OperatorSettings()
    configure_kopf(settings)
    assert settings.posting.enabled is False
    selectors = dict(settings.watching.label_selectors.items())
    assert len(selectors) == len(WATCHED_CHILDREN)
    assert set(selectors.values()) == {"app.kubernetes.io/managed-by=mnist-operator"}


def test_a_namespaced_operator_on_roles_alone_reads_nothing_cluster_scoped() -> None:
    """Watching some namespaces, without leave to watch CRDs (a Role-only install): no CRD
    handler, and kopf neither lists namespaces nor watches CRDs."""
    namespaced = OperatorSettings(namespaces=("team-a",))
    metrics = Metrics.create(CollectorRegistry())
    reg = kopf.OperatorRegistry()
    register(reg, Operator(namespaced, metrics, cluster_reads=False))
    handlers = [*reg._indexing.get_all_handlers(), *reg._watching.get_all_handlers()]
    assert all(h.selector is not None and h.selector.group != api.CRD.group for h in handlers)
    settings = kopf.OperatorSettings()
    configure_kopf(settings, namespaced=True)
    assert settings.scanning.disabled is True
    configure_kopf(settings)
    assert settings.scanning.disabled is False  # kopf notices APIs that come and go
    # With leave to (a ClusterRole), or cluster-wide whatever it says, CRDs are watched.
    for operator in (
        Operator(namespaced, metrics, cluster_reads=True),
        Operator(OperatorSettings(), metrics, cluster_reads=False),
    ):
        reg = kopf.OperatorRegistry()
        register(reg, operator)
        assert "event_optional_crd" in {h.id for h in reg._watching.get_all_handlers()}


@pytest.mark.asyncio
async def test_whether_crds_may_be_watched_is_asked_of_the_api_server() -> None:
    class Client:
        def __init__(self, answer: bool | ApiError) -> None:
            self.answer, self.asked, self.closed = answer, [], False

        async def allowed(self, verb: str, kind: api.ResourceKind) -> bool:
            self.asked.append((verb, kind.plural))
            if isinstance(self.answer, ApiError):
                raise self.answer
            return self.answer

        async def close(self) -> None:
            self.closed = True

    for answer, expected in ((True, True), (False, False), (ApiError(503, "Down", "x", "POST", "/"), False)):
        client = Client(answer)
        assert await may_read_cluster(client) is expected  # type: ignore[arg-type]
        assert client.asked == [("watch", "customresourcedefinitions")] and client.closed


@pytest.mark.asyncio
async def test_a_stalled_work_queue_makes_kopfs_liveness_endpoint_fail() -> None:
    # kopf's own /healthz server (kopf.run(liveness_endpoint=...) starts this one) with our probes.
    from kopf._core.engines.probing import health_reporter  # kopf has no public way in

    now = [0.0]

    async def reconcile(key: tuple[str, str]) -> None:
        pass

    op = Operator(OperatorSettings(), Metrics.create(CollectorRegistry()))
    op.queue = WorkQueue(reconcile, workers=1, stall_after=60, clock=lambda: now[0])
    reg = kopf.OperatorRegistry()
    register(reg, op)
    url = f"http://127.0.0.1:{free_port()}/healthz"
    ready = asyncio.Event()
    server = asyncio.create_task(
        health_reporter(
            url,
            memo=kopf.Memo(),
            indices={},
            registry=reg,
            settings=kopf.OperatorSettings(),
            ready_flag=ready,
        )
    )
    try:
        await asyncio.wait_for(ready.wait(), 5)
        async with aiohttp.ClientSession() as session:
            op.queue.add(("ml", "digits"))  # no worker runs yet: it waits, and nothing finishes
            now[0] = 61
            async with session.get(url) as stalled:
                assert stalled.status == 500
            op.queue.start()
            await asyncio.wait_for(op.queue.idle.wait(), 5)
            async with session.get(url) as healthy:  # a failure is not cached: this asks again
                assert healthy.status == 200
                assert await healthy.json() == {"queued": 0, "progress": {"oldest_waiting_seconds": 0.0}}
    finally:
        await op.queue.stop()
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server
