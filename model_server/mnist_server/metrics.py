"""The server's Prometheus metrics: few, with units in their names and bounded labels.

Metrics are registered on the registry passed in (a fresh one per test). With several worker
processes, prometheus_client's multiprocess mode stores every worker's values in files
under ``PROMETHEUS_MULTIPROC_DIR`` and ``/metrics`` serves their aggregate
(see ``exposition_registry``); that mode must be chosen before prometheus_client is imported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.multiprocess import MultiProcessCollector

from mnist_server.errors import Reason
from mnist_server.repository import NUM_CLASSES, ModelSource

PREFIX = "mnist_server_"
# Label value for requests that matched no route: keeps the endpoint label bounded.
UNMATCHED = "unmatched"
# The endpoint label of the requests refused before routing (mnist_server.fast_refusals).
REFUSED_ON_ARRIVAL = "(refused on arrival)"

REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
INFERENCE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# The top-class probability of a softmax over 10 digits lies in [0.1, 1]. A healthy model puts most
# answers above 0.99; one that has learnt little sits at 0.1-0.5. The buckets resolve both ends,
# and the same fixed buckets on every server are what lets a canary's distribution be compared
# with the stable version's bucket by bucket (the operator's canary analysis).
# The route templates that answer predictions (app.Endpoints.routes()).
PREDICT_ROUTES = (
    "/predict",
    "/v2/models/<name>/infer",
    "/v2/models/<name>/versions/<version>/infer",
    "/v1/models/<name>:predict",
    "/v1/models/<name>/versions/<version>:predict",
)
CONFIDENCE_BUCKETS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999)


class ServerMetrics:
    def __init__(
        self,
        registry: CollectorRegistry,
        model_name: str,
        model_version: str,
        source: ModelSource | None = None,
    ) -> None:
        self.requests = Counter(
            PREFIX + "requests",
            "HTTP requests answered, by route template and status class.",
            ["endpoint", "status_class"],
            registry=registry,
        )
        self.request_duration = Histogram(
            PREFIX + "request_duration_seconds",
            "Time to answer an HTTP request, by route template and status class.",
            ["endpoint", "status_class"],
            buckets=REQUEST_BUCKETS,
            registry=registry,
        )
        self.inference_duration = Histogram(
            PREFIX + "inference_duration_seconds",
            "Time of one model call (one batch: the images of one or more requests).",
            buckets=INFERENCE_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            PREFIX + "inference_batch_size",
            "Images per model call.",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.predictions = Counter(
            PREFIX + "predictions",
            "Images classified, by predicted digit.",
            ["digit"],
            registry=registry,
        )
        self.confidence = Histogram(
            PREFIX + "prediction_confidence",
            "Top-class probability of each image classified (the model's confidence in its answer).",
            buckets=CONFIDENCE_BUCKETS,
            registry=registry,
        )
        self.errors = Counter(
            PREFIX + "errors",
            "Error responses, by machine-readable reason.",
            ["reason"],
            registry=registry,
        )
        self.model_info = Gauge(
            PREFIX + "model_info",
            "The model this server serves (always 1).",
            ["model_name", "model_version"],
            registry=registry,
            # Across workers: one series per model version, gone when its worker is gone.
            multiprocess_mode="livemax",
        )
        # One series per server: which bytes answer (a fetched version's archive digest), so a
        # digest pinned in a MnistModel can be checked against what every pod really serves.
        self.model_source_info = Gauge(
            PREFIX + "model_source_info",
            "Where the served version came from (image: baked into the image; http, s3, pvc: fetched "
            "and verified) and the SHA-256 of its archive (empty for image). Always 1.",
            ["source", "sha256"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        # Zero series from the start, so rate() and alerts see them before the first event.
        # Children are kept: ``labels()`` costs a lock and a lookup on every request otherwise.
        self._digit_counters = [self.predictions.labels(digit=str(digit)) for digit in range(NUM_CLASSES)]
        self._request_series: dict[tuple[str, int], tuple[Any, Any]] = {}
        self._error_counters = {reason: self.errors.labels(reason=reason.value) for reason in Reason}
        # The prediction routes' request series too: a series born at its first request loses that
        # first scrape's count from increase() and rate(), which a canary's analysis window (and a
        # new pod's first minute) would miss.
        for endpoint in PREDICT_ROUTES:
            for status in (200, 400, 500):
                self._series(endpoint, status)
        self.model_info.labels(model_name=model_name, model_version=model_version).set(1)
        self.model_source_info.labels(
            source=source.kind if source else "image", sha256=source.sha256 if source else ""
        ).set(1)

    def _series(self, endpoint: str, status: int) -> tuple[Any, Any]:
        series = self._request_series.get((endpoint, status // 100))
        if series is None:
            labels = {"endpoint": endpoint, "status_class": f"{status // 100}xx"}
            series = (self.requests.labels(**labels), self.request_duration.labels(**labels))
            self._request_series[(endpoint, status // 100)] = series
        return series

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        series = self._series(endpoint, status)
        series[0].inc()
        series[1].observe(seconds)

    def observe_batch(self, images: int, seconds: float) -> None:
        """One model call on ``images`` images (a batch of one or more requests)."""
        self.inference_duration.observe(seconds)
        self.batch_size.observe(images)

    def observe_predictions(self, probabilities: npt.NDArray[np.floating[Any]]) -> None:
        """The answers to some images: each one's predicted digit and its top-class probability."""
        digits = probabilities.argmax(axis=1)
        for digit, count in enumerate(np.bincount(digits, minlength=NUM_CLASSES).tolist()):
            if count:
                self._digit_counters[digit].inc(count)
        for top in probabilities.max(axis=1).tolist():
            self.confidence.observe(top)

    def observe_inference(self, probabilities: npt.NDArray[np.floating[Any]], seconds: float) -> None:
        """One request answered by a model call of its own (a model that does not batch)."""
        self.observe_batch(len(probabilities), seconds)
        self.observe_predictions(probabilities)

    def observe_error(self, reason: Reason) -> None:
        self._error_counters[reason].inc()

    def observe_refused_on_arrival(self, count: int) -> None:
        """POSTs refused 503 ``overloaded`` before they reached Python (their route unknown, their
        time next to nothing: counted in the requests and errors, not in the durations)."""
        if count > 0:
            self.requests.labels(endpoint=REFUSED_ON_ARRIVAL, status_class="5xx").inc(count)
            self._error_counters[Reason.OVERLOADED].inc(count)


def exposition_registry(registry: CollectorRegistry, multiprocess_dir: Path | None) -> CollectorRegistry:
    """What ``/metrics`` serves: the registry itself, or every worker's files aggregated."""
    if multiprocess_dir is None:
        return registry
    aggregate = CollectorRegistry()
    MultiProcessCollector(aggregate, path=str(multiprocess_dir))  # type: ignore[no-untyped-call]
    return aggregate
