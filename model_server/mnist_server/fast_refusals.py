"""Refusals made before a request reaches Python: the worker's side of the admission that the
server's Granian build (third_party/granian, see its PATCHED.md) does on its I/O thread.

A POST refused in Python waits for the GIL and for the event loop, the two things the admitted
requests are using: under a flood at four times capacity on two cores, such refusals took 40 ms
at the median and cost half of the capacity. Granian's build counts the POSTs it handed to this
worker and that are not answered yet, less those still reading their body (a slow body must not
hold a place, so the worker reports those), and refuses at once while that count is at
``MAX_INFLIGHT``. The worker's own admission (``App._admit``) stays behind it, for the requests
that were already handed over, and for a Granian without the build (then every refusal is made
in Python, as before).
"""

from __future__ import annotations

from typing import Any


class FastRefusals:
    """Granian's admission for this worker process, or nothing when Granian lacks it."""

    def __init__(self, native: Any | None) -> None:
        self._native = native
        self._started = False

    @classmethod
    def of_granian(cls) -> FastRefusals:
        try:
            from granian import _granian
        except ImportError:
            return cls(None)
        return cls(_granian if hasattr(_granian, "rsgi_admission_limit") else None)

    @property
    def available(self) -> bool:
        return self._native is not None

    @property
    def started(self) -> bool:
        return self._started

    def start(self, limit: int, body: bytes) -> bool:
        """Refuse, with ``body``, the POSTs beyond ``limit``; False when Granian cannot."""
        if self._native is None:
            return False
        self._native.rsgi_admission_limit(limit, body)
        self._started = True
        return True

    def reading(self, delta: int) -> None:
        """``+1`` when a request starts reading its body, ``-1`` when it stops (however)."""
        if self._started:
            self._native.rsgi_admission_reading(delta)  # type: ignore[union-attr]

    def refused(self) -> int:
        """POSTs this process refused before they reached Python, since it started."""
        if not self._started:
            return 0
        return int(self._native.rsgi_admission_stats()[0])  # type: ignore[union-attr]
