"""The worker's side of the refusals Granian's build makes before a request reaches Python
(mnist_server.fast_refusals, third_party/granian): the limit and answer it is given, the bodies
being read that do not count, and its refusals in the metrics. Over a stand-in for Granian's
functions; tests/e2e/test_server_hostile.py has the real ones."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from server_support import FakeModel, image_with_digit

from mnist_server.app import App, create_app
from mnist_server.fast_refusals import FastRefusals
from mnist_server.metrics import REFUSED_ON_ARRIVAL
from mnist_server.settings import Settings

IMAGE = json.dumps({"inputs": image_with_digit(3).tolist()}).encode()


class NativeAdmission:
    """``granian._granian``'s three admission functions, recording what they were told."""

    def __init__(self) -> None:
        self.limit: tuple[int, bytes] | None = None
        self.reading_now = 0
        self.reading_calls: list[int] = []
        self.refused = 0

    def rsgi_admission_limit(self, limit: int, body: bytes) -> None:
        self.limit = (limit, body)

    def rsgi_admission_reading(self, delta: int) -> None:
        self.reading_now += delta
        self.reading_calls.append(delta)

    def rsgi_admission_stats(self) -> tuple[int, int, int]:
        return (self.refused, 0, self.reading_now)


class Scope:
    proto = "http"

    def __init__(self, method: str, path: str, headers: dict[str, str]) -> None:
        self.method, self.path, self.headers = method, path, headers


class Protocol:
    """Granian's RSGI protocol object, as far as the app uses it: ``body`` at once, or never."""

    def __init__(self, body: bytes, stall: bool = False) -> None:
        self.body_in, self.stall = body, stall
        self.status = 0
        self.body = b""

    async def __call__(self) -> bytes:
        if self.stall:
            await asyncio.sleep(3600)
        return self.body_in

    def __aiter__(self) -> Any:
        return self._chunks()

    async def _chunks(self) -> Any:
        if self.stall:
            await asyncio.sleep(3600)
        yield self.body_in

    def response_bytes(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status, self.body = status, body


@pytest.fixture
def native() -> NativeAdmission:
    return NativeAdmission()


@pytest.fixture
def make(
    server_settings: Settings,
    server_registry: CollectorRegistry,
    server_fake_model: FakeModel,
    native: NativeAdmission,
) -> Callable[..., App]:
    def build(**settings: Any) -> App:
        app = create_app(replace(server_settings, **settings), server_fake_model, server_registry)
        app.fast_refusals = FastRefusals(native)
        return app

    return build


def post(app: App, body: bytes, *, stall: bool = False) -> Protocol:
    protocol = Protocol(body, stall)
    headers = {"content-type": "application/json", "content-length": str(len(body))}
    asyncio.run(app.__rsgi__(Scope("POST", "/predict", headers), protocol))
    return protocol


def started(app: App) -> asyncio.AbstractEventLoop:
    loop = asyncio.new_event_loop()
    app.__rsgi_init__(loop)
    return loop


def test_without_granians_build_nothing_is_asked_and_nothing_breaks(make: Callable[..., App]) -> None:
    app = make()
    app.fast_refusals = FastRefusals(None)
    loop = started(app)
    try:
        assert not app.fast_refusals.available
        assert not app.fast_refusals.started
        assert app.fast_refusals.refused() == 0
        assert post(app, IMAGE).status == 200
    finally:
        loop.close()


def test_granian_is_given_the_limit_and_the_apps_own_503(
    make: Callable[..., App], native: NativeAdmission
) -> None:
    loop = started(make(max_inflight=7))
    loop.close()
    assert native.limit is not None
    limit, body = native.limit
    assert limit == 7
    answer = json.loads(body)
    assert answer["reason"] == "overloaded"
    assert "MNIST_SERVER_MAX_INFLIGHT" in answer["error"]


def test_a_body_being_read_is_reported_until_it_ends_however_it_ends(
    make: Callable[..., App], native: NativeAdmission
) -> None:
    app = make(body_timeout=0.05)
    loop = started(app)
    loop.close()
    assert post(app, IMAGE).status == 200
    assert native.reading_calls == [1, -1]
    assert post(app, IMAGE, stall=True).status == 408  # cut at the read deadline
    assert post(app, b"x" * (app.settings.max_body_bytes + 1)).status == 413  # refused before reading
    assert native.reading_calls == [1, -1, 1, -1]
    assert native.reading_now == 0


def test_granians_refusals_are_counted_in_the_metrics(
    make: Callable[..., App], native: NativeAdmission, server_registry: CollectorRegistry
) -> None:
    app = make()
    loop = started(app)
    try:
        native.refused = 5
        app._count_fast_refusals(loop)
        native.refused = 12
        app._count_fast_refusals(loop)
        app._count_fast_refusals(loop)  # nothing new: nothing added
    finally:
        loop.close()
    labels = {"endpoint": REFUSED_ON_ARRIVAL, "status_class": "5xx"}
    assert server_registry.get_sample_value("mnist_server_requests_total", labels) == 12
    assert server_registry.get_sample_value("mnist_server_errors_total", {"reason": "overloaded"}) == 12
