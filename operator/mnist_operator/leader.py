"""Leader election on a coordination.k8s.io Lease, as client-go's leaderelection package (and so
controller-runtime) does it, so that two or more replicas can run and only one reconciles.

Every replica watches and keeps warm caches; only the holder of the Lease reconciles and writes.
The timing is client-go's, with its defaults:
- a standby takes the Lease over once it has not seen the Lease change for `lease_duration`
  (15 s), measured on its own clock from when it saw the last change, never from the timestamps
  inside the Lease (clocks of different nodes disagree);
- the leader renews every `retry_period` (2 s), and once `renew_deadline` (10 s) has passed
  since the last renewal that succeeded it stops writing and reconciling.

Fencing. The leader's deadline is counted from when its successful renewal was *sent*; a standby
counts its `lease_duration` from when it *saw* that renewal, which is later. So a leader that
cannot renew has stopped writing `lease_duration - renew_deadline` (5 s) before anyone may take
over. `write_budget` is asked before every write the operator sends (KubeClient's write gate):
after the deadline it raises `NotLeader`, and before it the write carries, as its server-side
`timeout`, the time left until a standby could take over, so that not even a write that the API
server queues (API Priority and Fairness) can land after a new leader started. A process frozen
between that check and the send (a few microseconds of work) is the one case left unfenced, as
with client-go.

The election runs on a thread of its own, with its own event loop and connections
(`ElectionThread`): an operator busy with a thousand models still renews on time, so "cannot
renew" means the API server cannot be reached, never that the operator is busy.

A leader that stops gracefully releases the Lease (an empty holder), so a standby takes over
within one `retry_period`. Losing the Lease is not fatal (client-go's callers exit): the replica
becomes a standby again, with its caches, and campaigns like the others.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mnist_operator import api
from mnist_operator.kube import ApiError, KubeClient
from mnist_operator.workqueue import StopRetrying

logger = logging.getLogger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# client-go's JitterFactor is 1.2 (up to 120 % more); less here, for a tighter failover bound.
ACQUIRE_JITTER = 0.2
# A write ends on the server at least this long before a standby could take over.
WRITE_MARGIN = 1.0


class NotLeader(StopRetrying):
    """This replica does not hold the Lease (any more): it must not write; the leader reconciles."""


@dataclass(frozen=True)
class Timing:
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0


@dataclass(frozen=True)
class LeaseRecord:
    """What a Lease says, as far as the election reads it."""

    holder: str
    lease_duration: float
    transitions: int
    acquire_time: str | None
    renew_time: str | None
    resource_version: str | None

    @classmethod
    def from_lease(cls, lease: Mapping[str, Any]) -> LeaseRecord:
        spec = lease.get("spec") or {}
        return cls(
            holder=str(spec.get("holderIdentity") or ""),
            lease_duration=float(spec.get("leaseDurationSeconds") or 0),
            transitions=int(spec.get("leaseTransitions") or 0),
            acquire_time=spec.get("acquireTime"),
            renew_time=spec.get("renewTime"),
            resource_version=(lease.get("metadata") or {}).get("resourceVersion"),
        )


def may_take(record: LeaseRecord | None, identity: str, seen_unchanged_since: float, now: float) -> bool:
    """Whether to write the Lease as ours now: it does not exist, is free (released), is already
    ours, or its holder has not renewed it for its whole duration as we have watched it."""
    if record is None or not record.holder or record.holder == identity:
        return True
    return now >= seen_unchanged_since + record.lease_duration


def lease_body(
    namespace: str,
    name: str,
    *,
    holder: str,
    duration: float,
    now: str,
    previous: LeaseRecord | None,
) -> dict[str, Any]:
    """The Lease that says `holder` holds it from `now` (an empty holder: released).

    Renewing keeps the acquire time and the transitions; taking it over counts a transition.
    The resource version makes the write conditional: of two replicas that both saw the Lease
    free, one write succeeds and the other gets 409 Conflict.
    """
    renewing = previous is not None and previous.holder == holder and holder != ""
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if previous is not None and previous.resource_version:
        metadata["resourceVersion"] = previous.resource_version
    transitions = 0 if previous is None else previous.transitions + (0 if renewing or not holder else 1)
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": metadata,
        "spec": {
            "holderIdentity": holder or None,
            "leaseDurationSeconds": max(int(duration), 1),
            "acquireTime": previous.acquire_time if renewing and previous else now,
            "renewTime": now,
            "leaseTransitions": transitions,
        },
    }


def micro_time() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def process_identity() -> str:
    """Who this process is: the Lease's holder, kopf's identity, the user agent's comment.

    The pod's name and the pid: a container restarted in the same pod takes its own Lease back
    at once (the old process is gone), and two processes on one machine are told apart.
    kopf's default asks getpass.getuser(), which raises for a UID with no passwd entry: the
    image's own non-root user, and OpenShift's arbitrary UIDs, crashed the operator at start-up.
    """
    return f"{socket.gethostname()}@{os.getpid()}"


async def lease_namespace(client: KubeClient, account_file: Path = SERVICE_ACCOUNT_NAMESPACE) -> str:
    """Where the Lease is when the settings name no namespace: the pod's own (its service
    account's namespace file, as client-go finds it); outside a cluster, the namespace of the
    ServiceAccount whose credentials are used (a SelfSubjectReview says who we are), which its
    RBAC covers; else `default`."""
    try:
        return account_file.read_text().strip() or "default"
    except OSError:
        pass
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    try:
        answer = await client.request(
            "POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", body=review
        )
    except ApiError as exc:
        logger.warning("could not ask who this operator is (%s): the Lease goes to default", exc)
        return "default"
    finally:
        await client.close()
    user = str(((answer.get("status") or {}).get("userInfo") or {}).get("username") or "")
    prefix, _, rest = user.partition("system:serviceaccount:")
    return rest.split(":")[0] if not prefix and rest else "default"


class Elector:
    """Campaigns for the Lease, renews it while leading, and says whether this replica may write."""

    def __init__(
        self,
        namespace: str,
        identity: str,
        timing: Timing,
        *,
        on_started_leading: Callable[[], None],
        on_stopped_leading: Callable[[], Awaitable[None]],
        client: KubeClient | None = None,
        name: str = api.LEASE_NAME,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.timing = timing
        self._on_started = on_started_leading
        self._on_stopped = on_stopped_leading
        # Its own connections, so that a renewal never waits behind the reconciles' requests.
        self._client = client or KubeClient(timeout=timing.retry_period)
        self._clock = clock
        self._sleep = sleep
        self._renewed_at: float | None = None  # when the last successful renewal was sent
        self._acting = False  # whether the on_started callback ran and on_stopped has not
        self._observed: LeaseRecord | None = None
        self._observed_at = clock()
        self.holder = ""  # who holds the Lease, as last seen
        self._forbidden = False

    @property
    def path(self) -> str:
        return api.LEASE.path(self.namespace, self.name)

    @property
    def leading(self) -> bool:
        """Whether the Lease is certainly ours now: renewed less than `renew_deadline` ago."""
        renewed = self._renewed_at
        return renewed is not None and self._clock() < renewed + self.timing.renew_deadline

    def write_budget(self) -> float:
        """Seconds a write sent now may take on the server; raises NotLeader when none."""
        renewed = self._renewed_at
        now = self._clock()
        if renewed is None or now >= renewed + self.timing.renew_deadline:
            raise NotLeader(
                f"this replica ({self.identity}) does not hold the Lease {self.namespace}/{self.name}"
                + (f" (held by {self.holder})" if self.holder and self.holder != self.identity else "")
            )
        return renewed + self.timing.lease_duration - WRITE_MARGIN - now

    async def run(self) -> None:
        """Campaign and renew until cancelled."""
        while True:
            try:
                ours = await self._try_acquire_or_renew()
                self._forbidden = False
            except ApiError as exc:
                ours = False
                self._log_failure(exc)
            if ours and not self._acting:
                self._acting = True
                logger.info(
                    "leader election: %s holds the Lease %s/%s", self.identity, self.namespace, self.name
                )
                self._on_started()
            elif self._acting and not self.leading:
                self._acting = False
                logger.warning(
                    "leader election: %s lost the Lease %s/%s (not renewed for %gs); standing by",
                    self.identity,
                    self.namespace,
                    self.name,
                    self.timing.renew_deadline,
                )
                await self._on_stopped()
            await self._sleep(self._next_try())

    def _log_failure(self, exc: ApiError) -> None:
        if exc.status != 403:
            logger.debug("leader election: %s/%s: %s", self.namespace, self.name, exc)
        elif not self._forbidden:  # this replica can never lead: say so loudly, once
            self._forbidden = True
            logger.error(
                "leader election: may not use the Lease %s/%s (%s): no replica reconciles until "
                "the operator's RBAC grants get, create and update of it (manifests/rbac/leader-election), "
                "or MNIST_OPERATOR_LEADER_ELECTION=false",
                self.namespace,
                self.name,
                exc.message,
            )

    def _next_try(self) -> float:
        if self._acting:
            # Renew on time, and notice the deadline on time if renewals keep failing.
            renewed = self._renewed_at or self._clock()
            until_deadline = renewed + self.timing.renew_deadline - self._clock()
            return max(min(self.timing.retry_period, until_deadline), 0.0)
        return self.timing.retry_period * (1 + random.uniform(0, ACQUIRE_JITTER))

    async def _try_acquire_or_renew(self) -> bool:
        current = await self._client.get(api.LEASE, self.namespace, self.name)
        record = LeaseRecord.from_lease(current) if current is not None else None
        now = self._clock()
        if record != self._observed:
            self._observed, self._observed_at = record, now
        self.holder = record.holder if record else ""
        if not may_take(record, self.identity, self._observed_at, now):
            return False
        body = lease_body(
            self.namespace,
            self.name,
            holder=self.identity,
            duration=self.timing.lease_duration,
            now=micro_time(),
            previous=record,
        )
        sent = self._clock()
        try:
            if record is None:
                written = await self._client.request("POST", api.LEASE.path(self.namespace), body=body)
            else:
                written = await self._client.request("PUT", self.path, body=body)
        except ApiError as exc:
            if exc.status in (409, 404):  # someone else was faster, or it was deleted meanwhile
                return False
            raise
        self._renewed_at = sent
        self._observed, self._observed_at = LeaseRecord.from_lease(written), sent
        self.holder = self.identity
        return True

    async def release(self) -> None:
        """Give the Lease up (graceful stop), so that a standby takes over at once. Call only once
        nothing writes any more."""
        was_ours = self._renewed_at is not None and self.holder == self.identity
        self._renewed_at = None
        self._acting = False
        try:
            if was_ours:
                record = self._observed
                body = lease_body(
                    self.namespace, self.name, holder="", duration=1, now=micro_time(), previous=record
                )
                await self._client.request("PUT", self.path, body=body)
                logger.info(
                    "leader election: %s released the Lease %s/%s", self.identity, self.namespace, self.name
                )
        except ApiError as exc:  # it expires anyway
            logger.warning("leader election: could not release the Lease: %s", exc)
        finally:
            await self._client.close()


class ElectionThread:
    """Runs an Elector on a thread of its own, with its own event loop and connections.

    The operator's loop can be busy for seconds with a burst of watch events; a renewal that had
    to wait for it could miss the renew deadline, and a busy leader would keep losing the Lease.
    The elector's callbacks are called on this thread: they must hand over to the operator's loop.
    """

    def __init__(self, elector: Elector) -> None:
        self.elector = elector
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._serve(),), name="leader-election", daemon=True
        )

    def start(self) -> None:
        self._thread.start()
        self._ready.wait()

    async def stop(self) -> None:
        """Stop campaigning and release the Lease: call once nothing writes any more."""
        if self._loop is not None and self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
        await asyncio.to_thread(self._thread.join)

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self.elector.run())
        self._ready.set()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        finally:
            await self.elector.release()
