"""A canary step's analysis: what to ask Prometheus, and the verdict on the answers. Pure.

The canary and the stable version are measured over the same window ending at the same instant,
on the servers' own metrics, told apart by pod name: a MnistModel `digits` runs its stable pods
as `digits-<hash>-<id>` and its canary's as `digits-canary-<hash>-<id>` (Deployment pod names).

Checks, each Pass, Fail or Inconclusive:
- requests: both sides answered at least `minRequests` prediction requests in the window (no
  verdict before: a handful of requests proves nothing, so the canary waits, never promotes blind);
- errorRate: the canary's share of prediction requests answered 5xx (4xx are the client's);
- p99LatencySeconds: the 99th percentile of the canary's prediction request durations;
- digitDivergence: Jensen-Shannon distance between the distributions of the digits each side
  predicted (`mnist_server_predictions_total`);
- confidenceDivergence: the same between the distributions of each side's top-class
  probability (`mnist_server_prediction_confidence` buckets).

The Jensen-Shannon distance is the square root of the Jensen-Shannon divergence with base-2
logarithms: symmetric, 0 for identical distributions, 1 for disjoint ones, and defined when
either side has empty bins (unlike the Kullback-Leibler divergence). Two samples of the same
distribution still differ by chance: for MNIST's ten nearly equally frequent digits, a canary of
n requests against a stable side of 9n, the distance's 99.9th percentile is about 0.24 at n=100,
0.18 at n=200, 0.11 at n=500 and 0.075 at n=1000 (docs/operator.md), hence the defaults
(minRequests 200, thresholds 0.2).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from mnist_operator.spec import Analysis

# The prediction endpoints (route templates); probes and metadata are not the model's answers.
PREDICT_ENDPOINTS = "/predict|/v2/models/.+/infer|/v1/models/.+:predict"
DIGITS = tuple(str(d) for d in range(10))
CANARY_SUFFIX = "-canary"


class Result(StrEnum):
    PASS = "Pass"
    FAIL = "Fail"
    INCONCLUSIVE = "Inconclusive"


class CheckName(StrEnum):
    REQUESTS = "requests"
    ERROR_RATE = "errorRate"
    P99_LATENCY = "p99LatencySeconds"
    DIGIT_DIVERGENCE = "digitDivergence"
    CONFIDENCE_DIVERGENCE = "confidenceDivergence"


def pod_pattern(model: str, canary: bool) -> str:
    """The pod names of one side (Prometheus regexes match the whole value)."""
    return f"{model}{CANARY_SUFFIX if canary else ''}-[a-z0-9]+-[a-z0-9]+"


def selector(namespace: str, model: str, canary: bool) -> str:
    return f'namespace="{namespace}",pod=~"{pod_pattern(model, canary)}"'


@dataclass(frozen=True)
class Queries:
    """The PromQL of one side over one window (`window` in whole seconds)."""

    requests: str
    errors: str
    p99_latency: str
    digits: str
    confidence: str


def queries(namespace: str, model: str, canary: bool, window: int) -> Queries:
    sel = selector(namespace, model, canary)
    predict = f'{sel},endpoint=~"{PREDICT_ENDPOINTS}"'
    w = f"[{max(window, 1)}s]"
    return Queries(
        requests=f"sum(increase(mnist_server_requests_total{{{predict}}}{w}))",
        errors=f'sum(increase(mnist_server_requests_total{{{predict},status_class="5xx"}}{w}))',
        p99_latency=(
            f"histogram_quantile(0.99, sum by (le) "
            f"(increase(mnist_server_request_duration_seconds_bucket{{{predict}}}{w})))"
        ),
        digits=f"sum by (digit) (increase(mnist_server_predictions_total{{{sel}}}{w}))",
        confidence=f"sum by (le) (increase(mnist_server_prediction_confidence_bucket{{{sel}}}{w}))",
    )


@dataclass(frozen=True)
class Side:
    """One side's figures over the window (counts are Prometheus's increase(): may be fractional)."""

    requests: float = 0.0
    errors: float = 0.0
    p99_latency: float | None = None  # None: no requests, so no quantile
    digits: Mapping[str, float] = field(default_factory=dict)
    # Cumulative bucket counts by upper bound, as the histogram exposes them (le -> count).
    confidence: Mapping[str, float] = field(default_factory=dict)

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests > 0 else None


@dataclass(frozen=True)
class Check:
    name: CheckName
    result: Result
    threshold: float
    canary: float | None = None
    stable: float | None = None

    def as_status(self) -> dict[str, object]:
        out: dict[str, object] = {
            "name": str(self.name),
            "threshold": self.threshold,
            "result": str(self.result),
        }
        if self.canary is not None:
            out["canary"] = round(self.canary, 4)
        if self.stable is not None:
            out["stable"] = round(self.stable, 4)
        return out

    def describe(self) -> str:
        value = "no value" if self.canary is None else f"{self.canary:.4g}"
        if self.name == CheckName.REQUESTS:
            return (
                f"{self.canary or 0:.0f} canary and {self.stable or 0:.0f} stable requests, "
                f"{self.threshold:.0f} needed on each side"
            )
        limit = "at most"
        return f"{self.name} {value} ({limit} {self.threshold:g})"


@dataclass(frozen=True)
class Verdict:
    result: Result
    checks: tuple[Check, ...]

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.result is Result.FAIL)

    @property
    def summary(self) -> str:
        if self.result is Result.FAIL:
            return "; ".join(c.describe() for c in self.failed)
        if self.result is Result.INCONCLUSIVE:
            return "; ".join(c.describe() for c in self.checks if c.result is Result.INCONCLUSIVE)
        return ", ".join(c.describe() for c in self.checks)


def distribution(counts: Sequence[float]) -> list[float] | None:
    total = sum(max(c, 0.0) for c in counts)
    if total <= 0:
        return None
    return [max(c, 0.0) / total for c in counts]


def js_distance(p: Sequence[float], q: Sequence[float]) -> float:
    """Jensen-Shannon distance (base 2) between two distributions over the same bins, in [0, 1]."""
    if len(p) != len(q):
        raise ValueError("the distributions must have the same bins")

    def kl(a: Sequence[float], m: Sequence[float]) -> float:
        return sum(x * math.log2(x / y) for x, y in zip(a, m, strict=True) if x > 0)

    mid = [(x + y) / 2 for x, y in zip(p, q, strict=True)]
    divergence = 0.5 * kl(p, mid) + 0.5 * kl(q, mid)
    return math.sqrt(min(max(divergence, 0.0), 1.0))


def bucket_counts(cumulative: Mapping[str, float]) -> list[float]:
    """Per-bucket counts from a histogram's cumulative ones, in order of their upper bounds."""
    bounds = sorted(cumulative, key=lambda le: math.inf if le == "+Inf" else float(le))
    counts, below = [], 0.0
    for le in bounds:
        value = cumulative[le]
        counts.append(max(value - below, 0.0))
        below = max(below, value)
    return counts


def _divergence(name: CheckName, canary: list[float], stable: list[float], threshold: float) -> Check:
    p, q = distribution(canary), distribution(stable)
    if p is None or q is None or len(p) != len(q):
        return Check(name, Result.INCONCLUSIVE, threshold)
    distance = js_distance(p, q)
    return Check(name, Result.PASS if distance <= threshold else Result.FAIL, threshold, distance)


def judge(canary: Side, stable: Side, analysis: Analysis) -> Verdict:
    """The verdict on one step: Fail if any check fails (once both sides have enough requests),
    Inconclusive while they have not, Pass when every check passes."""
    enough = canary.requests >= analysis.min_requests and stable.requests >= analysis.min_requests
    requests = Check(
        CheckName.REQUESTS,
        Result.PASS if enough else Result.INCONCLUSIVE,
        analysis.min_requests,
        canary.requests,
        stable.requests,
    )
    error_rate = canary.error_rate
    checks = [
        requests,
        Check(
            CheckName.ERROR_RATE,
            Result.INCONCLUSIVE
            if error_rate is None
            else Result.PASS
            if error_rate <= analysis.max_error_rate
            else Result.FAIL,
            analysis.max_error_rate,
            error_rate,
            stable.error_rate,
        ),
        Check(
            CheckName.P99_LATENCY,
            Result.INCONCLUSIVE
            if canary.p99_latency is None
            else Result.PASS
            if canary.p99_latency <= analysis.max_p99_latency_seconds
            else Result.FAIL,
            analysis.max_p99_latency_seconds,
            canary.p99_latency,
            stable.p99_latency,
        ),
        _divergence(
            CheckName.DIGIT_DIVERGENCE,
            [canary.digits.get(d, 0.0) for d in DIGITS],
            [stable.digits.get(d, 0.0) for d in DIGITS],
            analysis.max_digit_divergence,
        ),
        _divergence(
            CheckName.CONFIDENCE_DIVERGENCE,
            _aligned(canary.confidence, stable.confidence),
            _aligned(stable.confidence, canary.confidence),
            analysis.max_confidence_divergence,
        ),
    ]
    if not enough:
        # Too few requests: nothing else is judged yet, whatever it shows.
        checks = [requests, *(c if c.result is Result.INCONCLUSIVE else _unjudged(c) for c in checks[1:])]
        return Verdict(Result.INCONCLUSIVE, tuple(checks))
    if any(c.result is Result.FAIL for c in checks):
        return Verdict(Result.FAIL, tuple(checks))
    if any(c.result is Result.INCONCLUSIVE for c in checks):
        return Verdict(Result.INCONCLUSIVE, tuple(checks))
    return Verdict(Result.PASS, tuple(checks))


def _unjudged(check: Check) -> Check:
    return Check(check.name, Result.INCONCLUSIVE, check.threshold, check.canary, check.stable)


def _aligned(side: Mapping[str, float], other: Mapping[str, float]) -> list[float]:
    """One side's per-bucket counts over the bounds both sides have (the same buckets on every
    server of one image; a bound only one side has is merged into the next)."""
    shared = {le: side.get(le, 0.0) for le in set(side) | set(other)}
    return bucket_counts(shared) if shared else []
