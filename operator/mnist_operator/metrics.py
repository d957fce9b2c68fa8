"""The operator's own Prometheus metrics: few, with units in their names and bounded labels."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram

# Bounded label values.
RESULTS = ("success", "retry", "error")
ERROR_REASONS = (
    "InvalidSpec",
    "ChildConflict",
    "ChildInvalid",
    "Forbidden",
    "ApiUnavailable",
    "ApplyFailed",
    "Unexpected",
)


@dataclass(frozen=True)
class Metrics:
    reconciles: Counter
    errors: Counter
    duration: Histogram
    writes: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> Metrics:
        return cls(
            reconciles=Counter(
                "mnist_operator_reconciles_total",
                "Reconciles of MnistModel resources, by result (success, retry, error).",
                ["result"],
                registry=registry,
            ),
            errors=Counter(
                "mnist_operator_reconcile_errors_total",
                "Reconcile errors by reason (the Ready condition's reason).",
                ["reason"],
                registry=registry,
            ),
            duration=Histogram(
                "mnist_operator_reconcile_duration_seconds",
                "Time one reconcile of one MnistModel takes, including API calls.",
                buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
                registry=registry,
            ),
            writes=Counter(
                "mnist_operator_api_writes_total",
                "Write requests the operator sent to the Kubernetes API, by verb and kind "
                "(flat while nothing changes).",
                ["verb", "kind"],
                registry=registry,
            ),
        )

    def observe_write(self, verb: str, kind: str) -> None:
        self.writes.labels(verb=verb, kind=kind or "unknown").inc()

    def observe_error(self, reason: str) -> None:
        self.errors.labels(reason=reason if reason in ERROR_REASONS else "Unexpected").inc()
