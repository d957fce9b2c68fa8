"""The kopf wiring: only read-only handler kinds, ours filtered by label, kopf's own writes off,
and a liveness endpoint that fails when the work queue stalls."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import aiohttp
import kopf
import pytest
from prometheus_client import CollectorRegistry

from mnist_operator import api
from mnist_operator.handlers import WATCHED_CHILDREN, Operator, configure_kopf, register
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
    assert indexed == {"index_mnistmodel", *(f"index_{k.kind.lower()}" for k in WATCHED_CHILDREN)}
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
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/healthz"
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
