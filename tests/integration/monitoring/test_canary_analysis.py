"""The canary analysis against a real Prometheus scraping real `mnist-server` processes.

Three versions trained on real MNIST (tests/canary_models.py): two good ones (different seeds)
and one trained on shuffled labels. The stable version and a canary each run as a real server;
Prometheus scrapes them with the labels the Prometheus operator gives the pods of a MnistModel
`digits` (stable `digits-<hash>-<id>`, canary `digits-canary-<hash>-<id>`), real test digits are
sent to both (nine to one), and the operator's own queries and verdict function judge the canary.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from mnist_operator import analysis
from mnist_operator.prometheus import PrometheusClient, PrometheusError, measure
from mnist_operator.spec import Analysis

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from canary_models import CanaryModels, train_canary_models
from monitoring_support import Prometheus, running_prometheus, start_model_server, stop
from testkit import free_port, wait_for

pytestmark = pytest.mark.slow

NAMESPACE = "ml"
CANARY_REQUESTS = 300
ANALYSIS = Analysis(min_requests=200)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> CanaryModels:
    trained = train_canary_models(tmp_path_factory.mktemp("canary-models"))
    assert all(trained.accuracy[v] > 0.9 for v in trained.good), trained.accuracy
    assert trained.accuracy[trained.bad] < 0.3, trained.accuracy
    return trained


BROKEN = "9"


@pytest.fixture(scope="module")
def servers(models: CanaryModels, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """stable (good version 1), good (version 2), bad (shuffled labels) and broken canaries (a
    version whose model files are damaged: the server runs, and answers every prediction 503)."""
    broken = models.root / "mnist" / BROKEN
    shutil.copytree(models.root / "mnist" / models.good[0], broken)
    for name in ("model.onnx", "saved_model.pb"):
        (broken / name).write_bytes(b"not a model")
    logs = tmp_path_factory.mktemp("canary-servers")
    started: dict[str, tuple[str, subprocess.Popen[bytes]]] = {}
    try:
        roles = (
            ("stable", models.good[0]),
            ("good", models.good[1]),
            ("bad", models.bad),
            ("broken", BROKEN),
        )
        for role, version in roles:
            started[role] = start_model_server(
                models.root, version, logs / f"{role}.log", ready=role != "broken"
            )
        yield {role: url for role, (url, _) in started.items()}
    finally:
        for _, process in started.values():
            stop(process)


@pytest.fixture(scope="module")
def prometheus(servers: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    # Two MnistModels as Prometheus would see them: `digits` (stable + good canary) and `guess`
    # (the same stable server + the bad canary).
    targets = {
        "digits-stable": (servers["stable"], "digits-5c9f7d8b6-x2x4k"),
        "digits-canary": (servers["good"], "digits-canary-6d8f9c7b5-q8f2m"),
        "guess-stable": (servers["stable"], "guess-7b8c9d6f5-a1b2c"),
        "guess-canary": (servers["bad"], "guess-canary-8c9d7f6b4-z9y8x"),
        "broken-stable": (servers["stable"], "broken-6b7c8d9f5-k3l4m"),
        "broken-canary": (servers["broken"], "broken-canary-5f6b7c8d9-n5p6q"),
    }
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": job,
                "static_configs": [
                    {
                        "targets": [url.removeprefix("http://")],
                        "labels": {"namespace": NAMESPACE, "pod": pod, "service": job.split("-")[0]},
                    }
                ],
            }
            for job, (url, pod) in targets.items()
        ],
    }
    with running_prometheus(config, tmp_path_factory.mktemp("canary-prometheus")) as running:
        # Prometheus starts scraping a few seconds after it is ready (its discovery updates are
        # batched): traffic sent before a target's first scrape would be in no window.
        def scraping() -> bool:
            rows = running.query("count(up == 1)")
            return bool(rows) and int(rows[0]["value"][1]) == len(targets)

        wait_for(scraping, "every target scraped once", timeout=30)
        yield running


def send(url: str, models: CanaryModels, count: int, offset: int = 0) -> list[int]:
    """Real test digits, one per request, 8 at a time: the predicted digits."""
    images = models.test.images

    def one(i: int) -> int:
        image = images[(offset + i) % len(images)]
        response = requests.post(f"{url}/predict", json={"inputs": image.tolist()}, timeout=10)
        response.raise_for_status()
        return int(response.json()["prediction"])

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(count)))


def judged(prometheus: Prometheus, model: str, window: int) -> analysis.Verdict:
    async def run() -> analysis.Verdict:
        client = PrometheusClient(prometheus.url)
        try:
            canary, stable = await measure(client, NAMESPACE, model, window=window, at=time.time())
        finally:
            await client.close()
        return analysis.judge(canary, stable, ANALYSIS)

    return asyncio.run(run())


def scraped(prometheus: Prometheus, pod: str, at_least: int) -> bool:
    rows = prometheus.query(f'sum(mnist_server_requests_total{{pod="{pod}",endpoint="/predict"}})')
    return bool(rows) and float(rows[0]["value"][1]) >= at_least


def test_a_good_version_passes_and_a_guessing_one_fails_on_behaviour_alone(
    prometheus: Prometheus, servers: dict[str, str], models: CanaryModels
) -> None:
    started = time.time()
    # Nine stable requests to one canary request, as at a 10 % step.
    send(servers["stable"], models, 9 * CANARY_REQUESTS)
    good = send(servers["good"], models, CANARY_REQUESTS, offset=7)
    bad = send(servers["bad"], models, CANARY_REQUESTS, offset=7)
    labels = models.test.labels
    assert sum(p == labels[(7 + i) % len(labels)] for i, p in enumerate(bad)) < CANARY_REQUESTS * 0.3
    assert sum(p == labels[(7 + i) % len(labels)] for i, p in enumerate(good)) > CANARY_REQUESTS * 0.9
    for pod in ("digits-5c9f7d8b6-x2x4k", "digits-canary-6d8f9c7b5-q8f2m", "guess-canary-8c9d7f6b4-z9y8x"):
        expected = 9 * CANARY_REQUESTS if "canary" not in pod else CANARY_REQUESTS
        wait_for(lambda pod=pod, n=expected: scraped(prometheus, pod, n), f"{pod} scraped", timeout=30)
    time.sleep(2)  # a scrape or two after the last request, so the window holds them all
    window = int(time.time() - started) + 5

    verdict = judged(prometheus, "digits", window)
    assert verdict.result is analysis.Result.PASS, verdict.summary
    values = {c.name: c for c in verdict.checks}
    assert values[analysis.CheckName.REQUESTS].canary == pytest.approx(CANARY_REQUESTS, rel=0.1)
    assert values[analysis.CheckName.ERROR_RATE].canary == 0

    bad_verdict = judged(prometheus, "guess", window)
    assert bad_verdict.result is analysis.Result.FAIL, bad_verdict.summary
    failed = {c.name for c in bad_verdict.failed}
    assert analysis.CheckName.CONFIDENCE_DIVERGENCE in failed, bad_verdict.summary
    assert not failed & {analysis.CheckName.ERROR_RATE, analysis.CheckName.P99_LATENCY}
    print(
        "\ncanary analysis: good",
        {c.name.value: c.canary for c in verdict.checks},
        "bad",
        {c.name.value: c.canary for c in bad_verdict.checks},
    )


def test_a_window_with_too_few_requests_has_no_verdict(prometheus: Prometheus) -> None:
    verdict = judged(prometheus, "nobody", 60)  # no such pods: nothing was answered
    assert verdict.result is analysis.Result.INCONCLUSIVE
    assert "0 canary and 0 stable requests" in verdict.summary


def test_prometheus_unreachable_is_an_error_not_a_verdict() -> None:
    async def run() -> None:
        client = PrometheusClient(f"http://127.0.0.1:{free_port()}", timeout=2)
        try:
            await measure(client, NAMESPACE, "digits", window=60, at=time.time())
        finally:
            await client.close()

    with pytest.raises(PrometheusError, match="could not be reached"):
        asyncio.run(run())


def test_a_version_that_fails_its_requests_fails_the_error_rate_check(
    prometheus: Prometheus, servers: dict[str, str], models: CanaryModels
) -> None:
    started = time.time()
    send(servers["stable"], models, 900)
    codes = []
    for image in models.test.images[:300]:
        codes.append(
            requests.post(
                f"{servers['broken']}/predict", json={"inputs": image.tolist()}, timeout=10
            ).status_code
        )
    assert set(codes) == {503}
    wait_for(
        lambda: scraped_5xx(prometheus, "broken-canary-5f6b7c8d9-n5p6q", 300), "the 503s scraped", timeout=30
    )
    time.sleep(2)
    verdict = judged(prometheus, "broken", int(time.time() - started) + 5)
    assert verdict.result is analysis.Result.FAIL, verdict.summary
    assert {c.name for c in verdict.failed} == {analysis.CheckName.ERROR_RATE}, verdict.summary
    rate = next(c for c in verdict.checks if c.name is analysis.CheckName.ERROR_RATE)
    assert rate.canary == pytest.approx(1.0)
    # It answered nothing: no distribution of predictions to compare (no verdict on those alone).
    behaviour = {c.name: c.result for c in verdict.checks}
    assert behaviour[analysis.CheckName.DIGIT_DIVERGENCE] is analysis.Result.INCONCLUSIVE


def scraped_5xx(prometheus: Prometheus, pod: str, at_least: int) -> bool:
    rows = prometheus.query(f'sum(mnist_server_requests_total{{pod="{pod}",status_class="5xx"}})')
    return bool(rows) and float(rows[0]["value"][1]) >= at_least
