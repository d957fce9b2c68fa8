"""Multiprocess metrics: two workers' values (simulated in one process) add up on /metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, multiprocess, values
from prometheus_client.parser import text_string_to_metric_families
from server_support import FakeModel, image_with_digit

from mnist_server.app import create_app
from mnist_server.metrics import CONFIDENCE_BUCKETS, PREDICT_ROUTES, ServerMetrics
from mnist_server.settings import Settings


def scrape(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_two_workers_metrics_are_aggregated_and_a_dead_workers_info_disappears(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server_settings: Settings
) -> None:
    # What the workers do with WORKERS > 1: each process writes its own files in the directory.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    pid = {"current": 1001}
    monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue(lambda: pid["current"]))

    def worker(worker_pid: int, version: str) -> FakeModel:
        pid["current"] = worker_pid
        model = FakeModel(version=version)
        model.load()
        return model

    first = create_app(server_settings, worker(1001, "3"), CollectorRegistry(), multiprocess_dir=tmp_path)
    first.test_client().post("/predict", json={"inputs": image_with_digit(4).tolist()})
    second = create_app(server_settings, worker(1002, "4"), CollectorRegistry(), multiprocess_dir=tmp_path)
    client = second.test_client()
    client.post("/predict", json={"inputs": [image_with_digit(4).tolist(), image_with_digit(2).tolist()]})
    client.post("/predict", json={"inputs": "nope"})

    samples = scrape(client.get("/metrics").get_data(as_text=True))

    def value(name: str, **labels: str) -> float:
        return samples[(name, frozenset(labels.items()))]

    assert value("mnist_server_requests_total", endpoint="/predict", status_class="2xx") == 2
    assert value("mnist_server_requests_total", endpoint="/predict", status_class="4xx") == 1
    assert value("mnist_server_predictions_total", digit="4") == 2
    assert value("mnist_server_predictions_total", digit="2") == 1
    assert value("mnist_server_inference_batch_size_sum") == 3
    assert value("mnist_server_errors_total", reason="wrong_dtype") == 1
    assert value("mnist_server_model_info", model_name="mnist", model_version="3") == 1
    assert value("mnist_server_model_info", model_name="mnist", model_version="4") == 1

    multiprocess.mark_process_dead(1001, str(tmp_path))  # as the next worker to start does

    after = scrape(client.get("/metrics").get_data(as_text=True))
    # Absent in real workers; here the first app's objects live on in "worker" 1002 at 0.
    dead_info = ("mnist_server_model_info", frozenset({("model_name", "mnist"), ("model_version", "3")}))
    assert after.get(dead_info, 0) == 0
    assert (
        after[("mnist_server_model_info", frozenset({("model_name", "mnist"), ("model_version", "4")}))] == 1
    )
    # Counters keep what the dead worker counted: they must never go backwards.
    key = ("mnist_server_requests_total", frozenset({("endpoint", "/predict"), ("status_class", "2xx")}))
    assert after[key] == 2


def test_predictions_count_each_digit_and_bucket_each_top_class_probability() -> None:
    """What the operator's canary analysis compares: the predicted-digit counter (10 series) and
    the confidence histogram (12 buckets), both label-free beyond the digit, so bounded."""
    registry = CollectorRegistry()
    metrics = ServerMetrics(registry, "mnist", "1")
    probabilities = np.full((3, 10), 0.0, dtype=np.float32)
    probabilities[0, 3] = 0.9995  # confident 3
    probabilities[1, 3] = 0.55  # unsure 3
    probabilities[1, 8] = 0.45
    probabilities[2, 7] = 0.15  # a guess: nearly uniform
    probabilities[2, :7] = 0.85 / 7
    metrics.observe_predictions(probabilities)

    def get(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    assert get("mnist_server_predictions_total", digit="3") == 2
    assert get("mnist_server_predictions_total", digit="7") == 1
    assert get("mnist_server_prediction_confidence_count") == 3
    assert get("mnist_server_prediction_confidence_bucket", le="0.2") == 1
    assert get("mnist_server_prediction_confidence_bucket", le="0.5") == 1
    assert get("mnist_server_prediction_confidence_bucket", le="0.6") == 2
    assert get("mnist_server_prediction_confidence_bucket", le="0.999") == 2
    assert get("mnist_server_prediction_confidence_bucket", le="+Inf") == 3
    family = next(f for f in registry.collect() if f.name == "mnist_server_prediction_confidence")
    assert len([s for s in family.samples if s.name.endswith("_bucket")]) == len(CONFIDENCE_BUCKETS) + 1


def test_the_prediction_routes_request_series_exist_from_start_up(server_app: Any) -> None:
    """So that rate() and increase() count a new pod's first requests (a canary's window)."""
    router = server_app.router
    posted = {by_method["POST"].rule for _, by_method in router._templates if "POST" in by_method}
    posted |= {rule for rule, by_method in router._exact.items() if "POST" in by_method}
    assert set(PREDICT_ROUTES) == posted  # every route that answers predictions, and only those
    registry = CollectorRegistry()
    ServerMetrics(registry, "mnist", "1")
    for endpoint in PREDICT_ROUTES:
        for status_class in ("2xx", "4xx", "5xx"):
            labels = {"endpoint": endpoint, "status_class": status_class}
            assert registry.get_sample_value("mnist_server_requests_total", labels) == 0
            assert registry.get_sample_value("mnist_server_request_duration_seconds_count", labels) == 0
