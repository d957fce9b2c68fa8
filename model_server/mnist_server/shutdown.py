"""Shutting down without failing requests: drain on SIGTERM, then stop within the grace period.

Kubernetes sends SIGTERM while it removes the pod from the Service's endpoints, not after: for a
few seconds kube-proxies, ingress controllers and clients' keep-alive connections still send
requests here. Granian alone would stop accepting at once and refuse them. So on SIGTERM the
master:

1. flips a flag shared with every worker: readiness (``/readyz``, the v2 ready endpoints) fails
   at once, and each response carries ``Connection: close``, so clients' keep-alive
   connections move to other pods instead of breaking when this one stops;
2. keeps serving for ``DRAIN_DELAY`` seconds;
3. stops the workers: they accept no more connections and finish the requests in flight within
   what is left of ``GRACEFUL_TIMEOUT`` (counted from the SIGTERM); workers still busy then are
   killed, so the process exits in time.

SIGINT (Ctrl-C) and a second SIGTERM skip the rest of the drain. A server none of whose workers
ever became ready has had nothing routed to it, and stops at once.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import signal
import threading
import time
from typing import Any

from granian.server.mp import MPServer

log = logging.getLogger(__name__)


class Lifecycle:
    """Flags in memory shared by the master and its workers (inherited at the fork, or handed to
    a spawned worker with its arguments); reading one costs about as much as an attribute."""

    _READY, _DRAINING = 0, 1

    def __init__(self) -> None:
        self._flags = multiprocessing.RawArray("b", 2)

    def mark_ready(self) -> None:
        """A worker has loaded the model: from now on, traffic may be routed to this server."""
        self._flags[self._READY] = 1

    @property
    def ever_ready(self) -> bool:
        return bool(self._flags[self._READY])

    def start_draining(self) -> None:
        self._flags[self._DRAINING] = 1

    def draining(self) -> bool:
        return bool(self._flags[self._DRAINING])


class DrainingServer(MPServer):
    """Granian's multi-process server, with a drain between SIGTERM and stopping the workers.

    ``graceful_timeout_s`` bounds the whole shutdown, drain included (0: wait for in-flight
    requests however long they take); Granian's ``workers_kill_timeout`` gets what the drain left.
    """

    def __init__(
        self,
        *args: Any,
        lifecycle: Lifecycle,
        drain_delay_s: float,
        graceful_timeout_s: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.workers_kill_timeout = math.ceil(graceful_timeout_s) or None
        self.lifecycle = lifecycle
        self.drain_delay_s = drain_delay_s
        self.graceful_timeout_s = graceful_timeout_s
        self._signalled_at: float | None = None
        self._drain: threading.Timer | None = None

    # No lock: this runs in the main thread (a signal handler) and the timer's thread only calls
    # stop_serving, which may safely run twice.
    def signal_handler_interrupt(self, *args: Any, **kwargs: Any) -> None:
        """SIGTERM or SIGINT (``args`` are the signal handler's ``signum, frame``)."""
        signum = args[0] if args else None
        self.lifecycle.start_draining()
        if self._signalled_at is None:
            self._signalled_at = time.monotonic()
            if signum == signal.SIGTERM and self.drain_delay_s > 0 and self.lifecycle.ever_ready:
                log.info(
                    "SIGTERM: not ready any more; serving for %g s while traffic moves away, then stopping",
                    self.drain_delay_s,
                )
                self._drain = threading.Timer(self.drain_delay_s, self.stop_serving)
                self._drain.daemon = True
                self._drain.start()
                return
        elif self._drain is not None:
            self._drain.cancel()
            log.info("signal %s: skipping the rest of the drain", signum)
        self.stop_serving()

    def stop_serving(self) -> None:
        """Stop the workers now: in-flight requests get what is left of the graceful timeout."""
        if self.graceful_timeout_s > 0 and self._signalled_at is not None:
            left = self.graceful_timeout_s - (time.monotonic() - self._signalled_at)
            self.workers_kill_timeout = max(1, math.floor(left))
        super().signal_handler_interrupt()  # type: ignore[no-untyped-call]
