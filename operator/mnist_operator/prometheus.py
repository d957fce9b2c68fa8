"""Thin asynchronous Prometheus I/O for the canary analysis: instant queries over the HTTP API.

Only `GET /api/v1/query` with an explicit evaluation time, so the canary's and the stable
version's figures describe the same instant and window. Any failure (unreachable, an HTTP
error, a query error, a time-out) is a `PrometheusError`, which the canary turns into a pause
with the reason, never a verdict.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from typing import Any

import aiohttp

from mnist_operator import analysis

QUERY_TIMEOUT_SECONDS = 10.0


class PrometheusError(Exception):
    """No answer to rely on; the message says why (it becomes the canary's pause message)."""


Sample = tuple[Mapping[str, str], float]


class PrometheusClient:
    def __init__(self, url: str, timeout: float = QUERY_TIMEOUT_SECONDS) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def query(self, promql: str, at: float) -> list[Sample]:
        """An instant vector (or scalar) at unix time `at`: (labels, value) pairs."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        try:
            async with self._session.get(
                f"{self.url}/api/v1/query", params={"query": promql, "time": f"{at:.3f}"}
            ) as response:
                try:
                    body: Any = await response.json(content_type=None)
                except ValueError:
                    body = None
                if response.status != 200 or not isinstance(body, Mapping) or body.get("status") != "success":
                    detail = body.get("error") if isinstance(body, Mapping) else None
                    raise PrometheusError(
                        f"Prometheus at {self.url} answered HTTP {response.status}"
                        + (f": {detail}" if detail else "")
                    )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise PrometheusError(
                f"Prometheus at {self.url} could not be reached: {exc.__class__.__name__} {exc}".rstrip()
            ) from None
        data = body.get("data") or {}
        result = data.get("result")
        if data.get("resultType") == "scalar":
            return [({}, _value(result))]
        if not isinstance(result, list):
            raise PrometheusError(f"Prometheus at {self.url} gave an answer that is not a vector")
        return [(item.get("metric") or {}, _value(item.get("value"))) for item in result]


def _value(pair: Any) -> float:
    try:
        return float(pair[1])
    except (TypeError, ValueError, IndexError):
        return math.nan


async def measure_side(
    client: PrometheusClient, namespace: str, model: str, *, canary: bool, window: int, at: float
) -> analysis.Side:
    """One side's figures over `window` seconds ending at `at`."""
    q = analysis.queries(namespace, model, canary, window)
    requests, errors, p99, digits, confidence = await asyncio.gather(
        client.query(q.requests, at),
        client.query(q.errors, at),
        client.query(q.p99_latency, at),
        client.query(q.digits, at),
        client.query(q.confidence, at),
    )
    latency = _scalar(p99)
    return analysis.Side(
        requests=_scalar(requests) or 0.0,
        errors=_scalar(errors) or 0.0,
        p99_latency=latency,
        digits={labels.get("digit", ""): v for labels, v in digits if not math.isnan(v)},
        confidence={labels.get("le", ""): v for labels, v in confidence if not math.isnan(v)},
    )


def _scalar(samples: list[Sample]) -> float | None:
    """The one value of a sum() (none when no series matched; NaN, as a quantile of nothing, is none)."""
    if not samples:
        return None
    value = samples[0][1]
    return None if math.isnan(value) or math.isinf(value) else value


async def measure(
    client: PrometheusClient, namespace: str, model: str, *, window: int, at: float
) -> tuple[analysis.Side, analysis.Side]:
    """(canary, stable) over the same window ending at the same instant."""
    canary, stable = await asyncio.gather(
        measure_side(client, namespace, model, canary=True, window=window, at=at),
        measure_side(client, namespace, model, canary=False, window=window, at=at),
    )
    return canary, stable
