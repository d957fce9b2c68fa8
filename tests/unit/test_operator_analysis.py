"""The canary analysis: PromQL for both sides, the Jensen-Shannon distance and the verdict."""

from __future__ import annotations

import math
import random

import pytest

from mnist_operator.analysis import (
    CheckName,
    Result,
    Side,
    bucket_counts,
    js_distance,
    judge,
    pod_pattern,
    queries,
)
from mnist_operator.spec import Analysis

# MNIST's test set: how often each digit occurs.
MNIST_DIGITS = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)
CONFIDENT = {"0.9": 2.0, "0.99": 5.0, "0.999": 30.0, "+Inf": 1000.0}


def side(requests: float, errors: float = 0, p99: float | None = 0.01, scale: float = 1.0) -> Side:
    digits = {str(d): n * scale * requests / 10000 for d, n in enumerate(MNIST_DIGITS)}
    confidence = {le: v * requests / 1000 for le, v in CONFIDENT.items()}
    return Side(requests, errors, p99, digits, confidence)


def test_pods_of_each_side_are_told_apart_by_name() -> None:
    import re

    stable, canary = re.compile(pod_pattern("digits", False)), re.compile(pod_pattern("digits", True))
    assert stable.fullmatch("digits-7d9f8c6b5-x2x9q")
    assert not stable.fullmatch("digits-canary-6c8b9d7f4-abcde")
    assert canary.fullmatch("digits-canary-6c8b9d7f4-abcde")
    assert not canary.fullmatch("digits-7d9f8c6b5-x2x9q")


def test_both_sides_are_asked_the_same_window_of_the_prediction_endpoints() -> None:
    canary, stable = queries("ml", "digits", True, 60), queries("ml", "digits", False, 60)
    assert 'pod=~"digits-canary-[a-z0-9]+-[a-z0-9]+"' in canary.requests
    assert 'pod=~"digits-[a-z0-9]+-[a-z0-9]+"' in stable.requests
    for q in (canary, stable):
        assert 'namespace="ml"' in q.requests and "[60s]" in q.requests
        assert 'endpoint=~"/predict|/v2/models/.+/infer|/v1/models/.+:predict"' in q.errors
        assert 'status_class="5xx"' in q.errors
        assert q.p99_latency.startswith("histogram_quantile(0.99, sum by (le)")
        assert "sum by (digit)" in q.digits and "mnist_server_prediction_confidence_bucket" in q.confidence


def test_js_distance_is_0_for_equal_1_for_disjoint_and_symmetric() -> None:
    assert js_distance([0.5, 0.5], [0.5, 0.5]) == 0
    assert js_distance([1, 0], [0, 1]) == pytest.approx(1)
    p, q = [0.7, 0.2, 0.1], [0.1, 0.3, 0.6]
    assert js_distance(p, q) == pytest.approx(js_distance(q, p))
    assert 0 < js_distance(p, q) < 1


def test_bucket_counts_turn_cumulative_buckets_into_bins() -> None:
    assert bucket_counts({"+Inf": 10, "0.5": 3, "0.9": 7}) == [3, 4, 3]


def test_a_canary_like_the_stable_version_passes() -> None:
    verdict = judge(side(300), side(2700), Analysis())
    assert verdict.result is Result.PASS, verdict.summary
    assert {c.name for c in verdict.checks} == set(CheckName)


def test_too_few_requests_is_no_verdict_whatever_the_rest_shows() -> None:
    verdict = judge(side(50, errors=50), side(2700), Analysis())
    assert verdict.result is Result.INCONCLUSIVE
    assert all(c.result is Result.INCONCLUSIVE for c in verdict.checks)
    assert "50 canary and 2700 stable requests, 200 needed on each side" in verdict.summary
    assert judge(side(300), side(100), Analysis()).result is Result.INCONCLUSIVE


def test_errors_or_latency_fail_the_health_checks() -> None:
    errors = judge(side(300, errors=9), side(2700), Analysis())
    assert errors.result is Result.FAIL
    assert [c.name for c in errors.failed] == [CheckName.ERROR_RATE]
    assert "errorRate 0.03 (at most 0.01)" in errors.summary
    slow = judge(side(300, p99=2.5), side(2700), Analysis())
    assert [c.name for c in slow.failed] == [CheckName.P99_LATENCY]


def test_a_model_that_answers_200_but_guesses_fails_the_behaviour_checks() -> None:
    # Trained on shuffled labels: it favours a few digits, and is never sure.
    guessing = Side(
        300,
        0,
        0.01,
        {"1": 200, "7": 100},
        {"0.2": 250, "0.3": 300, "0.9": 300, "0.99": 300, "0.999": 300, "+Inf": 300},
    )
    verdict = judge(guessing, side(2700), Analysis())
    assert verdict.result is Result.FAIL
    assert {c.name for c in verdict.failed} == {CheckName.DIGIT_DIVERGENCE, CheckName.CONFIDENCE_DIVERGENCE}
    confidence = next(c for c in verdict.checks if c.name is CheckName.CONFIDENCE_DIVERGENCE)
    assert confidence.canary is not None and confidence.canary > 0.9
    assert confidence.as_status()["result"] == "Fail"


def test_no_prediction_metrics_is_inconclusive_not_a_pass() -> None:
    verdict = judge(Side(300, 0, 0.01, {}, {}), side(2700), Analysis())
    assert verdict.result is Result.INCONCLUSIVE


def test_the_default_thresholds_stay_above_the_sampling_noise_of_the_default_minimum() -> None:
    """Two samples of the same digit distribution differ by chance; at 200 canary requests
    (against 9 times as many) the distance stays under the default 0.2 in 999 of 1,000 trials."""
    rng = random.Random(14)
    total = sum(MNIST_DIGITS)
    weights = [n / total for n in MNIST_DIGITS]

    def sample(n: int) -> list[float]:
        counts = [0.0] * 10
        for digit in rng.choices(range(10), weights, k=n):
            counts[digit] += 1
        return [c / n for c in counts]

    distances = sorted(js_distance(sample(200), sample(1800)) for _ in range(1000))
    assert distances[998] < Analysis().max_digit_divergence
    assert not math.isnan(distances[0])
