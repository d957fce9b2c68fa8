"""The operator's own Prometheus metrics: few, with units in their names and bounded labels."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from mnist_operator.conditions import FAILURE_REASONS

# Bounded label values: the reconcile failures' reasons, and one for any other failure (a bug).
RESULTS = ("success", "retry", "error")
UNEXPECTED = "Unexpected"
ERROR_REASONS = (*sorted(FAILURE_REASONS), UNEXPECTED)
# The canary strategy's phases (canary.Phase): under way, and how one ends.
CANARY_ACTIVE_PHASES = ("Progressing", "Paused")
CANARY_RESULTS = ("Promoted", "RolledBack", "Aborted")


@dataclass(frozen=True)
class Metrics:
    reconciles: Counter
    errors: Counter
    duration: Histogram
    writes: Counter
    queue_depth: Gauge
    queue_oldest_age: Gauge
    queue_retries: Counter
    worker_restarts: Counter
    cache_purged: Counter
    leader: Gauge
    canaries: Gauge
    canary_outcomes: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> Metrics:
        metrics = cls._create(registry)
        metrics.start_canary_series()
        return metrics

    @classmethod
    def _create(cls, registry: CollectorRegistry) -> Metrics:
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
            queue_depth=Gauge(
                "mnist_operator_workqueue_depth",
                "MnistModels waiting for a reconcile (retries are counted once they are due).",
                registry=registry,
            ),
            queue_oldest_age=Gauge(
                "mnist_operator_workqueue_oldest_item_age_seconds",
                "How long the MnistModel that has waited longest for a reconcile has waited "
                "(0 when none waits; growing without bound: the queue is stuck).",
                registry=registry,
            ),
            queue_retries=Counter(
                "mnist_operator_workqueue_retries_total",
                "Reconciles scheduled again after a failure, with backoff.",
                registry=registry,
            ),
            worker_restarts=Counter(
                "mnist_operator_workqueue_worker_restarts_total",
                "Reconcile workers that ended unexpectedly and were replaced (0 unless there is a bug).",
                registry=registry,
            ),
            cache_purged=Counter(
                "mnist_operator_cache_purged_total",
                "Objects the periodic relist found deleted although the watch cache still held them "
                "(their deletion fell into a watch gap), by kind.",
                ["kind"],
                registry=registry,
            ),
            leader=Gauge(
                "mnist_operator_leader",
                "1 while this replica reconciles (it holds the leader Lease, or runs without leader "
                "election), else 0 (a standby).",
                registry=registry,
            ),
            canaries=Gauge(
                "mnist_operator_canaries",
                "MnistModels with a canary under way, by phase (Progressing, or Paused: no verdict "
                "yet, too few requests or Prometheus unreachable).",
                ["phase"],
                registry=registry,
            ),
            canary_outcomes=Counter(
                "mnist_operator_canary_outcomes_total",
                "Canaries that ended, by result (Promoted, RolledBack, Aborted).",
                ["result"],
                registry=registry,
            ),
        )

    def watch_queue(self, *, depth: Callable[[], float], oldest_age: Callable[[], float]) -> None:
        """Read the queue's depth and oldest age at scrape time (from the metrics server's thread)."""
        self.queue_depth.set_function(depth)
        self.queue_oldest_age.set_function(oldest_age)

    def observe_write(self, verb: str, kind: str) -> None:
        self.writes.labels(verb=verb, kind=kind or "unknown").inc()

    def observe_error(self, reason: str) -> None:
        self.errors.labels(reason=str(reason) if reason in ERROR_REASONS else UNEXPECTED).inc()

    def start_canary_series(self) -> None:
        """Every canary series at 0 from the start, so increase() and the alerts see the first."""
        for phase in CANARY_ACTIVE_PHASES:
            self.canaries.labels(phase=phase).set(0)
        for result in CANARY_RESULTS:
            self.canary_outcomes.labels(result=result)
