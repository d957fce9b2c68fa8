"""The app's RSGI side (what Granian runs): bodies read within a size limit, a byte budget and a
deadline, bounded admission with a fast 503, and the router's HTTP details. Driven on an event
loop with a stand-in for Granian's protocol object, over the fake model."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from server_support import FakeModel, image_with_digit

from mnist_server.app import App, create_app
from mnist_server.http import ReadDeadlines, Request, Route, Router
from mnist_server.settings import Settings

IMAGE = json.dumps({"inputs": image_with_digit(4).tolist()}).encode()


class Scope:
    proto = "http"

    def __init__(self, method: str, path: str, headers: dict[str, str]) -> None:
        self.method, self.path, self.headers = method, path, headers


class Protocol:
    """Granian's RSGI protocol object, as far as the app uses it: the body in ``chunks`` (then a
    stall that never ends, with ``stall``), and the response it was given."""

    def __init__(self, chunks: list[bytes] | None = None, stall: bool = False) -> None:
        self.chunks = chunks or []
        self.stall = stall
        self.read = False
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = b""

    async def __call__(self) -> bytes:
        self.read = True
        if self.stall:
            await asyncio.sleep(3600)
        return b"".join(self.chunks)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        self.read = True
        for chunk in self.chunks:
            yield chunk
        if self.stall:
            await asyncio.sleep(3600)

    def response_bytes(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status, self.headers, self.body = status, dict(headers), body

    def json(self) -> Any:
        assert self.headers["content-type"] == "application/json"
        return json.loads(self.body)


def send(
    app: App, method: str, path: str, body: bytes | None = None, *, chunked: bool = False, **options: Any
) -> Protocol:
    return asyncio.run(send_async(app, method, path, body, chunked=chunked, **options))


async def send_async(
    app: App,
    method: str,
    path: str,
    body: bytes | None = None,
    *,
    chunked: bool = False,
    declared: int | None = None,
    stall: bool = False,
    chunk_size: int = 1000,
) -> Protocol:
    headers = {"content-type": "application/json"}
    data = body or b""
    if not chunked:
        headers["content-length"] = str(len(data) if declared is None else declared)
    chunks = [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)]
    protocol = Protocol(chunks, stall)
    await app.__rsgi__(Scope(method, path, headers), protocol)
    return protocol


def reason(protocol: Protocol, status: int) -> str:
    assert protocol.status == status, protocol.body
    body = protocol.json()
    assert set(body) == {"error", "reason"}
    return str(body["reason"])


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def make(
    server_settings: Settings, server_registry: CollectorRegistry, server_fake_model: FakeModel
) -> Callable[..., App]:
    def build(model: Any = None, **settings: Any) -> App:
        return create_app(replace(server_settings, **settings), model or server_fake_model, server_registry)

    return build


def test_a_request_is_answered_over_rsgi(make: Callable[..., App]) -> None:
    app = make()
    answer = send(app, "POST", "/predict", IMAGE)
    assert answer.status == 200
    assert answer.json()["prediction"] == 4
    assert "connection" not in answer.headers
    chunked = send(app, "POST", "/predict", IMAGE, chunked=True)  # read chunk by chunk
    assert chunked.json()["prediction"] == 4


def test_a_stalled_body_is_cut_with_a_408_after_the_body_timeout(
    make: Callable[..., App], server_registry: CollectorRegistry
) -> None:
    app = make(body_timeout=1)
    for chunked in (False, True):
        stalled = send(app, "POST", "/predict", IMAGE[:100], declared=len(IMAGE), chunked=chunked, stall=True)
        assert reason(stalled, 408) == "body_timeout"
        assert "MNIST_SERVER_BODY_TIMEOUT" in stalled.json()["error"]
        assert stalled.headers["connection"] == "close"  # the rest of the body is never read
    assert sample(server_registry, "mnist_server_errors_total", reason="body_timeout") == 2
    assert app.budget.used == 0  # what the stalled bodies held is given back


def test_an_oversize_body_is_refused_before_it_is_read_or_while_it_streams(make: Callable[..., App]) -> None:
    app = make(max_body_bytes=4096)
    declared = send(app, "POST", "/predict", b"x" * 10, declared=1 << 30)
    assert reason(declared, 413) == "body_too_large"
    assert not declared.read
    assert declared.headers["connection"] == "close"
    streamed = send(app, "POST", "/predict", b"x" * 5000, chunked=True)
    assert reason(streamed, 413) == "body_too_large"
    assert app.budget.used == 0


def test_bodies_beyond_the_worker_budget_are_a_503(make: Callable[..., App]) -> None:
    app = make()
    app.budget.limit = 1000
    answer = send(app, "POST", "/predict", IMAGE, chunked=True)
    assert reason(answer, 503) == "overloaded"
    assert answer.headers["retry-after"] == "1"
    app.budget.limit = 10 * len(IMAGE)
    assert send(app, "POST", "/predict", IMAGE, chunked=True).status == 200


class GatedModel(FakeModel):
    """Answers only once ``gate`` is set: requests pile up in the app."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def predict_async(self, images: np.ndarray) -> np.ndarray:
        await self.gate.wait()
        return self.predict(images)


def test_admission_is_bounded_excess_gets_a_fast_503_and_probes_still_answer(
    make: Callable[..., App], server_registry: CollectorRegistry
) -> None:
    model = GatedModel()
    model.load()
    app = make(model, max_inflight=3)

    async def scenario() -> tuple[list[Protocol], Protocol, list[Protocol]]:
        admitted = [asyncio.create_task(send_async(app, "POST", "/predict", IMAGE)) for _ in range(3)]
        while app.inflight() < 3:
            await asyncio.sleep(0.001)
        refused = await asyncio.wait_for(send_async(app, "POST", "/predict", IMAGE), 1.0)
        probes = [await send_async(app, "GET", path) for path in ("/healthz", "/readyz", "/metrics")]
        model.gate.set()
        return list(await asyncio.gather(*admitted)), refused, probes

    admitted, refused, probes = asyncio.run(scenario())
    assert [answer.status for answer in admitted] == [200, 200, 200]
    assert reason(refused, 503) == "overloaded"
    assert "MNIST_SERVER_MAX_INFLIGHT" in refused.json()["error"]
    assert refused.headers["retry-after"] == "1"
    assert not refused.read  # refused before its body was read: cheap under overload
    assert [probe.status for probe in probes] == [200, 200, 200]
    assert app.inflight() == 0
    assert sample(server_registry, "mnist_server_errors_total", reason="overloaded") == 1
    assert (
        sample(server_registry, "mnist_server_requests_total", endpoint="/predict", status_class="5xx") == 1
    )


def test_a_client_that_disconnects_mid_body_is_a_4xx_not_a_crash(make: Callable[..., App]) -> None:
    from granian._granian import RSGIProtocolClosed

    class Gone(Protocol):
        async def __call__(self) -> bytes:
            raise RSGIProtocolClosed("closed")

        def response_bytes(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
            super().response_bytes(status, headers, body)
            raise RSGIProtocolClosed("closed")

    protocol = Gone([IMAGE])
    headers = {"content-type": "application/json", "content-length": str(len(IMAGE))}
    asyncio.run(make().__rsgi__(Scope("POST", "/predict", headers), protocol))
    assert protocol.status == 400


def test_head_options_and_percent_encoded_paths(make: Callable[..., App]) -> None:
    app = make()
    assert send(app, "HEAD", "/healthz").status == 200
    options = send(app, "OPTIONS", "/predict")
    assert (options.status, options.headers["allow"]) == (200, "OPTIONS, POST")
    assert send(app, "OPTIONS", "/nowhere").status == 404
    assert send(app, "GET", "/v2/models/mn%69st").json()["name"] == "mnist"
    not_allowed = send(app, "DELETE", "/v2/models/mnist")
    assert reason(not_allowed, 405) == "method_not_allowed"
    assert not_allowed.headers["allow"] == "GET, HEAD, OPTIONS"


def test_the_router_matches_templates_by_segment() -> None:
    def handler(request: Request, **params: str) -> dict[str, str]:
        return params

    router = Router(
        [
            Route("GET", "/v1/models/<name>", handler, False),
            Route("POST", "/v1/models/<name>:predict", handler, False),
            Route("POST", "/v1/models/<name>/versions/<version>:predict", handler, False),
        ]
    )
    assert router.match("GET", "/v1/models/mnist")[1] == {"name": "mnist"}
    assert router.match("POST", "/v1/models/mnist:predict")[0].rule == "/v1/models/<name>:predict"
    assert router.match("POST", "/v1/models/m/versions/2:predict")[1] == {"name": "m", "version": "2"}
    assert router.resolve("/v1/models/a/b") is None
    assert router.resolve("/v1/models/mnist:predictx") is None


def test_read_deadlines_cut_only_reads_past_their_deadline_and_leave_other_cancellations() -> None:
    deadlines = ReadDeadlines(timeout=0.05, period=0.01)

    async def scenario() -> tuple[bytes, type[BaseException], type[BaseException]]:
        quick = await deadlines.read(asyncio.sleep(0, b"body"))
        try:
            await deadlines.read(asyncio.sleep(3600))
        except TimeoutError as exc:
            stalled: type[BaseException] = type(exc)
        task = asyncio.ensure_future(deadlines.read(asyncio.sleep(3600)))
        await asyncio.sleep(0)
        task.cancel()  # a cancellation of its own, before the deadline
        try:
            await task
        except asyncio.CancelledError as exc:
            cancelled: type[BaseException] = type(exc)
        return quick, stalled, cancelled

    quick, stalled, cancelled = asyncio.run(scenario())
    assert quick == b"body"
    assert stalled is TimeoutError
    assert cancelled is asyncio.CancelledError
