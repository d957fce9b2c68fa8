"""Leader election: who may take the Lease, what is written, and the fence (no write once the
Lease may have passed on), with a fake clock and an in-memory API server that has optimistic
concurrency; the write gate against kmock's HTTP server; a standby that reconciles nothing."""

from __future__ import annotations

import asyncio
import copy
import itertools
import threading
from typing import Any

import kopf
import pytest
from kmock import RawHandler
from prometheus_client import CollectorRegistry

from mnist_operator import api
from mnist_operator.handlers import Operator
from mnist_operator.kube import ApiError, KubeClient
from mnist_operator.leader import (
    ElectionThread,
    Elector,
    LeaseRecord,
    NotLeader,
    Timing,
    lease_body,
    may_take,
)
from mnist_operator.metrics import Metrics
from mnist_operator.settings import OperatorSettings, SettingsError
from mnist_operator.workqueue import StopRetrying, WorkQueue

TIMING = Timing(lease_duration=15, renew_deadline=10, retry_period=2)


def record(holder: str, rv: str = "1", duration: float = 15) -> LeaseRecord:
    return LeaseRecord(holder, duration, 3, "2026-01-01T00:00:00.000000Z", None, rv)


def test_a_lease_is_taken_when_absent_free_ours_or_unrenewed_for_its_duration() -> None:
    assert may_take(None, "a", seen_unchanged_since=0, now=0)
    assert may_take(record(""), "a", 0, 0)  # released
    assert may_take(record("a"), "a", 0, 0)  # ours: renew
    assert not may_take(record("b"), "a", seen_unchanged_since=100, now=114.9)
    assert may_take(record("b"), "a", seen_unchanged_since=100, now=115)
    # The holder's own duration counts, not ours.
    assert not may_take(record("b", duration=60), "a", seen_unchanged_since=100, now=115)


def test_what_is_written_renewing_taking_over_and_releasing() -> None:
    def spec(holder: str, previous: LeaseRecord | None) -> dict[str, Any]:
        body = lease_body("ns", "l", holder=holder, duration=15, now="NOW", previous=previous)
        return {**body["spec"], "rv": body["metadata"].get("resourceVersion")}

    assert spec("a", None) == {
        "holderIdentity": "a",
        "leaseDurationSeconds": 15,
        "acquireTime": "NOW",
        "renewTime": "NOW",
        "leaseTransitions": 0,
        "rv": None,
    }
    renewed = spec("a", record("a", rv="7"))
    assert (renewed["acquireTime"], renewed["leaseTransitions"], renewed["rv"]) == (
        "2026-01-01T00:00:00.000000Z",
        3,
        "7",  # conditional on the version we read
    )
    taken = spec("a", record("b"))
    assert (taken["acquireTime"], taken["leaseTransitions"]) == ("NOW", 4)
    released = spec("", record("a"))
    assert (released["holderIdentity"], released["leaseTransitions"]) == (None, 3)


class LeaseServer:
    """One Lease in memory, with the API server's optimistic concurrency (409 on a stale
    resourceVersion); `down` makes every call fail as an unreachable API server would."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.down = False
        self._rv = itertools.count(1)

    def client(self) -> Any:
        server = self

        class Client:
            async def get(self, kind: api.ResourceKind, namespace: str, name: str) -> dict[str, Any] | None:
                server.check()
                return copy.deepcopy(server.lease)

            async def request(self, method: str, path: str, *, body: Any = None, **_: Any) -> Any:
                server.check()
                current = (server.lease or {}).get("metadata", {}).get("resourceVersion")
                if (method == "POST") != (server.lease is None) or body["metadata"].get(
                    "resourceVersion"
                ) != current:
                    raise ApiError(409, "Conflict", "the object has been modified", method, path)
                server.lease = copy.deepcopy(body)
                server.lease["metadata"]["resourceVersion"] = str(next(server._rv))
                return copy.deepcopy(server.lease)

            async def close(self) -> None:
                pass

        return Client()

    def check(self) -> None:
        if self.down:
            raise ApiError(0, "ConnectionError", "connection refused", "GET", "/")

    @property
    def holder(self) -> str | None:
        return (self.lease or {}).get("spec", {}).get("holderIdentity")


def elector(server: LeaseServer, identity: str, clock: list[float], events: list[str]) -> Elector:
    async def stopped() -> None:
        events.append(f"{identity} stopped")

    return Elector(
        "ns",
        identity,
        TIMING,
        on_started_leading=lambda: events.append(f"{identity} started"),
        on_stopped_leading=stopped,
        client=server.client(),
        clock=lambda: clock[0],
    )


@pytest.mark.asyncio
async def test_one_leader_the_standby_takes_over_only_after_the_lease_duration() -> None:
    server, clock, events = LeaseServer(), [0.0], []
    a, b = elector(server, "a", clock, events), elector(server, "b", clock, events)

    assert await a._try_acquire_or_renew() and server.holder == "a"
    assert not await b._try_acquire_or_renew()  # b saw the Lease at 0
    assert a.write_budget() == pytest.approx(15 - 1)  # ends before anyone may take over

    # a is gone (no more renewals): b waits its whole lease duration from when it saw the last change.
    clock[0] = 14.9
    assert not await b._try_acquire_or_renew()
    clock[0] = 15.0
    assert await b._try_acquire_or_renew() and server.holder == "b"
    assert b.write_budget() > 0
    # a stopped writing 5 s before b could take over, and cannot renew what b holds.
    with pytest.raises(NotLeader, match="does not hold the Lease ns/mnist-operator"):
        a.write_budget()
    assert not a.leading
    assert not await a._try_acquire_or_renew()
    with pytest.raises(NotLeader, match="held by b"):
        a.write_budget()


@pytest.mark.asyncio
async def test_a_leader_that_cannot_renew_stops_writing_at_the_renew_deadline() -> None:
    server, clock, events = LeaseServer(), [0.0], []
    a = elector(server, "a", clock, events)
    assert await a._try_acquire_or_renew()
    server.down = True
    clock[0] = 9.9
    assert a.write_budget() == pytest.approx(15 - 1 - 9.9)
    clock[0] = 10.0
    with pytest.raises(NotLeader):
        a.write_budget()
    # The API server is back, nobody took the Lease: it is still ours to renew.
    server.down = False
    assert await a._try_acquire_or_renew()
    assert a.leading and issubclass(NotLeader, StopRetrying)


@pytest.mark.asyncio
async def test_the_run_loop_calls_back_on_winning_and_on_losing_and_a_release_frees_the_lease() -> None:
    server, clock, events = LeaseServer(), [0.0], []
    ticks = 0

    async def tick(seconds: float) -> None:
        nonlocal ticks
        ticks += 1
        clock[0] += seconds or 0.5
        if ticks == 3:
            server.down = True  # renewals fail from here on
        if ticks == 30:
            raise RuntimeError("enough")

    a = Elector(
        "ns",
        "a",
        TIMING,
        on_started_leading=lambda: events.append(f"started at {clock[0]:g}"),
        on_stopped_leading=lambda: _append(events, f"stopped at {clock[0]:g}"),
        client=server.client(),
        clock=lambda: clock[0],
        sleep=tick,
    )
    with pytest.raises(RuntimeError, match="enough"):
        await a.run()
    # Renewed every 2 s until the API server went away at 6 s; the last renewal (sent at 4 s)
    # is 10 s old at 14 s: standing by then, not later.
    assert events == ["started at 0", "stopped at 14"]
    server.down = False
    assert await a._try_acquire_or_renew()
    await a.release()
    assert server.holder is None


async def _append(events: list[str], event: str) -> None:
    events.append(event)


@pytest.mark.asyncio
async def test_the_election_runs_on_a_thread_of_its_own_and_releases_the_lease_on_stop() -> None:
    """A busy operator loop must not delay renewals: the elector has its own thread and loop."""
    server = LeaseServer()
    loop = asyncio.get_running_loop()
    won = asyncio.Event()
    threads: list[str] = []

    def on_started() -> None:
        threads.append(threading.current_thread().name)
        loop.call_soon_threadsafe(won.set)

    async def on_stopped() -> None:
        pass

    elector = Elector(
        "ns",
        "a",
        TIMING,
        on_started_leading=on_started,
        on_stopped_leading=on_stopped,
        client=server.client(),
    )
    election = ElectionThread(elector)
    election.start()
    await asyncio.wait_for(won.wait(), 5)
    assert threads == ["leader-election"] and server.holder == "a" and elector.leading
    await election.stop()
    assert server.holder is None and not elector.leading


def test_lease_timing_is_checked_as_client_go_checks_it() -> None:
    OperatorSettings(lease_duration_seconds=15, renew_deadline_seconds=10, retry_period_seconds=2)
    for duration, deadline, retry in ((10, 10, 2), (15, 10, 9), (5, 10, 2)):
        with pytest.raises(SettingsError, match="LEASE_DURATION_SECONDS"):
            OperatorSettings.from_env(
                {
                    "MNIST_OPERATOR_LEASE_DURATION_SECONDS": str(duration),
                    "MNIST_OPERATOR_RENEW_DEADLINE_SECONDS": str(deadline),
                    "MNIST_OPERATOR_RETRY_PERIOD_SECONDS": str(retry),
                }
            )


@pytest.mark.asyncio
@pytest.mark.kmock(cls=RawHandler)
async def test_every_write_passes_the_gate_and_carries_its_budget_as_a_server_timeout(
    kmock: RawHandler,
) -> None:
    kmock["patch"] << {"kind": "Deployment"}
    kmock["get"] << {"kind": "Deployment"}
    budget: list[float | None] = [4.25]

    def gate() -> float:
        if budget[0] is None:
            raise NotLeader("not the leader")
        return budget[0]

    async def login() -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=str(kmock.url), token="t")

    client = KubeClient(login, write_gate=gate)
    obj = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "namespace": "ns"}}
    await client.apply(obj)
    await client.get(api.DEPLOYMENT, "ns", "d")  # reads are never gated
    budget[0] = None
    with pytest.raises(NotLeader):
        await client.apply(obj)
    await client.close()
    assert [(r.method, r.params.get("timeout")) for r in kmock] == [("PATCH", "4.250s"), ("GET", None)]


@pytest.mark.asyncio
async def test_a_standby_queues_nothing_and_the_new_leader_reconciles_every_model() -> None:
    async def reconcile(key: tuple[str, str]) -> None:
        pass

    op = Operator(OperatorSettings(leader_election_namespace="ns"), Metrics.create(CollectorRegistry()))
    op.queue = WorkQueue(reconcile, workers=1)
    models = {("ns", "a"): [{"metadata": {"name": "a"}}], ("ns", "b"): [{"metadata": {"name": "b"}}]}
    op.cache.attach(api.KIND, models)
    assert not op.leading
    op.event_seen("ADDED")  # the caches are complete
    op.enqueue(("ns", "a"))
    op.enqueue_owner(("ns", "b"))
    assert len(op.queue) == 0 and op.queue.stall() is None

    op._lead()
    assert op.leading and len(op.queue) == 2
    assert op.metrics.leader._value.get() == 1
    await op._stand_by()
    assert len(op.queue) == 0 and op.queue.idle.is_set()
    assert op.metrics.leader._value.get() == 0
    await op.client.close()
