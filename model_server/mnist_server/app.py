"""The app factory: thin routes over a ``Model``, the protocol modules and the metrics.

``create_app`` returns an :class:`App`, served by Granian's RSGI interface in production: the
worker's event loop reads request bodies (within a size limit, a byte budget and a deadline), so
a slow or stalled client holds no thread; JSON of a small request is decoded on the loop, image
uploads on ``THREADS`` decoding threads, large JSON on one; the model is called through the
micro-batcher (``mnist_server.batching``), mostly from the loop's own thread. The same app is a
WSGI application (tests use Werkzeug's test client on it).

Every error a route, a decoder or the HTTP layer raises is turned into JSON in one place
(``App.error_response``): ``{"error": <what was wrong>, "reason": <machine-readable>}`` with the
error's HTTP status, and counted by reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol, TypeVar

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from werkzeug.exceptions import HTTPException
from werkzeug.formparser import MultiPartParser
from werkzeug.http import parse_options_header
from werkzeug.test import Client

from mnist_server.decoding import Batch, JsonBody, images_from_upload, parse_json
from mnist_server.errors import (
    ApiError,
    BodyTimeoutError,
    InvalidInputError,
    MethodNotAllowedError,
    NotFoundError,
    NotReadyError,
    OverloadedError,
    Reason,
    TooLargeError,
    UnsupportedMediaTypeError,
    error_body,
)
from mnist_server.fast_refusals import FastRefusals
from mnist_server.http import (
    BodyBudget,
    BodyBudgetError,
    BodyTooLargeError,
    Handler,
    ReadDeadlines,
    Request,
    Response,
    Route,
    Router,
    allowed_methods,
    decode_path,
    json_response,
    read_body,
)
from mnist_server.metrics import UNMATCHED, ServerMetrics, exposition_registry
from mnist_server.model import Images, LoadState, Model, Probabilities
from mnist_server.probes import LoopHeartbeat
from mnist_server.protocols import tfserving, tutorial, v2
from mnist_server.settings import PREFIX, Settings

log = logging.getLogger(__name__)

JSON = "application/json"
IMAGE_TYPES = ("image/png", "image/jpeg")
MULTIPART = "multipart/form-data"
UPLOAD_FIELD = "file"
SHUTTING_DOWN = "the server is shutting down; it answers requests until it stops"
# Bodies up to this size are decoded on the event loop (a single image's JSON takes ~0.1 ms);
# larger ones, and every image upload, on the decoding threads.
INLINE_DECODE_BYTES = 64 * 1024
# Liveness fails once the serving loop has not turned for this long: no handler blocks it for
# more than a model call of one batch (milliseconds), so this is a wedged worker.
LOOP_STALL_SECONDS = 10.0
# Bytes of request bodies a worker holds at once, in units of MAX_BODY_BYTES (docs/server.md).
BODY_BUDGET_BODIES = 8
# How often the refusals Granian made (before they reached Python) are added to the metrics.
REFUSALS_COUNTED_EVERY_S = 1.0

_MODEL = "<name>"
_VERSION = "<name>/versions/<version>"
T = TypeVar("T")
Receive = Callable[[], Awaitable[bytes]]


def create_app(
    settings: Settings,
    model: Model,
    registry: CollectorRegistry,
    *,
    multiprocess_dir: Path | None = None,
    readiness_gate: Callable[[], str | None] | None = None,
    draining: Callable[[], bool] | None = None,
) -> App:
    """The server for one model. ``registry`` holds this process's metrics; with
    ``multiprocess_dir`` (several worker processes) ``/metrics`` serves all workers' aggregate.
    ``readiness_gate``, once the model is ready, says why the server is not (e.g. other workers
    still loading), or None. ``draining`` is true once the server is shutting down: it is then
    not ready, and closes each connection after its response (see ``mnist_server.shutdown``)."""
    metrics = ServerMetrics(registry, model.name, model.version, getattr(model, "source", None))
    app = App(settings, metrics, draining or _never)
    endpoints = Endpoints(
        settings,
        model,
        metrics,
        exposition_registry(registry, multiprocess_dir),
        readiness_gate=readiness_gate,
        draining=app.draining,
        decode=app.decode,
        loop_stalled_for=app.heartbeat.stalled_for,
    )
    # A model that batches requests reports its own model calls; otherwise each request is one.
    observe_batches = getattr(model, "observe_batches", None)
    if callable(observe_batches):
        observe_batches(metrics.observe_batch)
        endpoints.model_reports_batches = True
    app.route(endpoints.routes())
    return app


class Decode(Protocol):
    """:meth:`App.decode`, as the endpoints call it."""

    async def __call__(
        self, request: Request, parse: Callable[[Request], T], json_bytes: int | None = None
    ) -> T: ...


class App:
    """One model's HTTP server: routing, body limits, admission, errors and request metrics, over
    the :class:`Endpoints`. An RSGI application (``__rsgi__``) and a WSGI one (``__call__``)."""

    testing = False

    def __init__(self, settings: Settings, metrics: ServerMetrics, draining: Callable[[], bool]) -> None:
        self.settings = settings
        self.metrics = metrics
        self.draining = draining
        self.router = Router([])
        self.budget = BodyBudget(BODY_BUDGET_BODIES * settings.max_body_bytes)
        self.read_deadlines = ReadDeadlines(settings.body_timeout)
        self.heartbeat = LoopHeartbeat()
        # Called with the worker's loop before it first runs (see serving._once_the_loop_runs).
        self.before_serving: Callable[[asyncio.AbstractEventLoop], None] | None = None
        self._inflight = 0
        self.fast_refusals = FastRefusals.of_granian()
        self._refused_seen = 0
        self._upload_decoder: ThreadPoolExecutor | None = None
        self._json_decoder: ThreadPoolExecutor | None = None
        self._wsgi_loops = threading.local()

    def route(self, table: Iterable[tuple[str, str, Handler]]) -> None:
        self.router = Router(
            [
                Route(method, rule, handler, asyncio.iscoroutinefunction(handler))
                for method, rule, handler in table
            ]
        )

    def inflight(self) -> int:
        """Requests of this worker past their body: being decoded, waiting for the model or in it."""
        return self._inflight

    async def decode(
        self, request: Request, parse: Callable[[Request], T], json_bytes: int | None = None
    ) -> T:
        """``parse(request)``: on the event loop for a small body (a single image's JSON takes
        ~0.1 ms; handing it to a thread and back cost more, in waits for the GIL), on a decoding
        thread for image uploads and large JSON, whose decoding would stall the loop.
        ``json_bytes``: how much of the body is JSON, when the rest is raw tensor bytes (a copy
        whatever their size: a v2 binary batch of 64 images decodes in ~0.03 ms)."""
        size = len(request.body) if json_bytes is None else json_bytes
        upload = request.mimetype in _UPLOAD_TYPES
        if size <= INLINE_DECODE_BYTES and not upload:
            return parse(request)
        return await asyncio.get_running_loop().run_in_executor(self._decoder(upload), parse, request)

    def _decoder(self, upload: bool) -> ThreadPoolExecutor:
        """THREADS threads for image uploads (the image decoders release the GIL for much of their
        work); one for large JSON, whose parsing holds the GIL throughout: more threads would only
        take turns with each other and with the loop (64-image JSON batches at 4 connections:
        135 requests/s on one thread, 123 on four)."""
        if upload:
            if self._upload_decoder is None:
                self._upload_decoder = ThreadPoolExecutor(self.settings.threads, thread_name_prefix="decode")
            return self._upload_decoder
        if self._json_decoder is None:
            self._json_decoder = ThreadPoolExecutor(1, thread_name_prefix="decode-json")
        return self._json_decoder

    # --- one request, whatever the interface ----------------------------------------------

    async def respond(self, request: Request, receive: Receive) -> Response:
        """The response to ``request``; ``receive`` reads its body (raising an ApiError for a body
        too large, too slow, or beyond the worker's budget)."""
        endpoint = UNMATCHED
        admitted = False
        body_read = True
        try:
            if request.method == "OPTIONS":
                response = self._options(request)
            else:
                route, params = self.router.match(request.method, request.path)
                endpoint = route.rule
                if route.method == "POST":
                    # Bounded admission: past the limit, a fast 503 instead of a queue that grows
                    # until every answer is late (probes are never refused). Checked before the
                    # body is read, so that refusing costs next to nothing, and again after it.
                    self._admit()
                    body_read = False
                    request.body = await receive()
                    body_read = True
                    self._admit()
                    self._inflight += 1
                    admitted = True
                result = route.handler(request, **params)
                if route.is_async:
                    result = await result
                response = result if isinstance(result, Response) else json_response(result)
        except ApiError as error:
            response = self.error_response(request, error)
            _forget_frames(error)
        except Exception as error:
            # Should never happen: every known failure is an ApiError. Counted as "internal".
            log.exception("unexpected error on %s %s", request.method, request.path[:200])
            response = self.error_response(
                request, ApiError(f"internal server error ({type(error).__name__}); see the server log")
            )
            _forget_frames(error)
        finally:
            if admitted:
                self._inflight -= 1
        self.metrics.observe_request(endpoint, response.status, time.perf_counter() - request.started)
        if not body_read or self.draining():
            # An unread body leaves the connection unusable. While draining, keep-alive connections
            # would stay pinned to this pod until it stops, and break then; closed after each
            # answer, clients reconnect through the Service to pods that stay.
            response.headers.append(("connection", "close"))
        return response

    def _admit(self) -> None:
        if self._inflight >= self.settings.max_inflight:
            raise OverloadedError(
                f"this worker is already handling {self._inflight} requests, its limit "
                f"({PREFIX}MAX_INFLIGHT); retry later"
            )

    def _start_fast_refusals(self, loop: asyncio.AbstractEventLoop) -> None:
        """Have Granian refuse the POSTs beyond ``MAX_INFLIGHT`` before they reach Python (see
        ``mnist_server.fast_refusals``), with the answer this app would give."""
        limit = self.settings.max_inflight
        error = OverloadedError(
            f"this worker is already handling its limit of {limit} requests ({PREFIX}MAX_INFLIGHT); "
            "retry later"
        )
        if not self.fast_refusals.start(limit, json_response(error_body(error.message, error.reason)).body):
            log.info("Granian without fast refusals (third_party/granian): refusals are made in Python")
            return
        loop.call_later(REFUSALS_COUNTED_EVERY_S, self._count_fast_refusals, loop)

    def _count_fast_refusals(self, loop: asyncio.AbstractEventLoop) -> None:
        refused = self.fast_refusals.refused()
        self.metrics.observe_refused_on_arrival(refused - self._refused_seen)
        self._refused_seen = refused
        loop.call_later(REFUSALS_COUNTED_EVERY_S, self._count_fast_refusals, loop)

    def error_response(self, request: Request, error: ApiError) -> Response:
        """The one place an error becomes a response: JSON, its status, counted by reason."""
        self.metrics.observe_error(error.reason)
        # Client errors and "not ready yet" are routine (and counted); only a bug is an error.
        level = logging.ERROR if error.reason is Reason.INTERNAL else logging.DEBUG
        log.log(
            level, "%s %s -> %d %s: %s", request.method, request.path[:200], error.status, error.reason, error
        )
        response = json_response(error_body(error.message, error.reason), error.status)
        if error.retry_after is not None:
            response.headers.append(("retry-after", str(error.retry_after)))
        if isinstance(error, MethodNotAllowedError) and error.allowed:
            response.headers.append(("allow", ", ".join(error.allowed)))
        return response

    def _options(self, request: Request) -> Response:
        resolved = self.router.resolve(request.path)
        if resolved is None:
            self.router.match(request.method, request.path)  # the 404
            raise AssertionError("unreachable")
        return Response(b"", 200, "text/plain", [("allow", ", ".join(allowed_methods(resolved[0])))])

    def _too_large(self) -> TooLargeError:
        return TooLargeError(
            f"request body is larger than {self.settings.max_body_bytes} bytes ({PREFIX}MAX_BODY_BYTES)",
            Reason.BODY_TOO_LARGE,
        )

    async def probe_response(self, request: Request) -> Response:
        """A GET without a body (a probe), answered on another thread's loop: the GET handlers
        only read state, and the metrics are thread-safe."""
        return await self.respond(request, _no_body)

    # --- RSGI (Granian): bodies read on the event loop --------------------------------------

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        """Granian calls this in each worker, before serving, with the loop the app runs on."""
        self.heartbeat.start(loop)
        self._start_fast_refusals(loop)
        if self.before_serving is not None:
            self.before_serving(loop)

    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        if scope.proto != "http":
            return
        request = Request(scope.method, decode_path(scope.path), scope.headers, time.perf_counter())
        held = [0]

        async def receive() -> bytes:
            declared = request.content_length
            if declared is not None and declared > self.settings.max_body_bytes:
                raise self._too_large()
            reading = read_body(
                protocol,
                chunks=protocol,
                declared=declared,
                limit=self.settings.max_body_bytes,
                budget=self.budget,
                held=held,
            )
            # While it reads, this request does not count against Granian's limit (a slow body
            # must not hold a place); from its last byte to its answer, it does.
            self.fast_refusals.reading(1)
            try:
                return await self.read_deadlines.read(reading)
            except TimeoutError:
                raise BodyTimeoutError(
                    f"the request body did not arrive within {self.settings.body_timeout} s "
                    f"({PREFIX}BODY_TIMEOUT)"
                ) from None
            except BodyTooLargeError:
                raise self._too_large() from None
            except BodyBudgetError:
                raise OverloadedError(
                    f"this worker already holds {self.budget.used} bytes of request bodies "
                    f"(limit {self.budget.limit}); retry later"
                ) from None
            except _PROTOCOL_CLOSED:
                raise InvalidInputError(
                    "the client closed the connection before sending the whole body"
                ) from None
            finally:
                self.fast_refusals.reading(-1)

        try:
            response = await self.respond(request, receive)
        finally:
            self.budget.give_back(held[0])
            request.body = b""  # whatever may still reference the request, not its body
        with contextlib.suppress(*_PROTOCOL_CLOSED):  # the client has gone: nobody to answer
            protocol.response_bytes(response.status, response.header_list(), response.body)

    # --- WSGI: tests (Werkzeug's test client) and any WSGI server ----------------------------

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        headers = {
            key[5:].replace("_", "-").lower(): value
            for key, value in environ.items()
            if key.startswith("HTTP_")
        }
        for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            if environ.get(key):
                headers[key.replace("_", "-").lower()] = environ[key]
        path = environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8", "replace")
        request = Request(environ["REQUEST_METHOD"], path, headers, time.perf_counter())

        async def receive() -> bytes:
            return self._read_wsgi_body(environ, request.content_length)

        loop = getattr(self._wsgi_loops, "loop", None)
        if loop is None:
            loop = self._wsgi_loops.loop = asyncio.new_event_loop()
        response = loop.run_until_complete(self.respond(request, receive))
        status = f"{response.status} {HTTPStatus(response.status).phrase}"
        start_response(status, [*response.header_list(), ("content-length", str(len(response.body)))])
        return [response.body]

    def _read_wsgi_body(self, environ: dict[str, Any], declared: int | None) -> bytes:
        limit = self.settings.max_body_bytes
        if declared is not None and declared > limit:
            raise self._too_large()
        stream = environ["wsgi.input"]
        if declared is not None:
            data: bytes = stream.read(declared)
            return data
        if not environ.get("wsgi.input_terminated"):
            return b""  # WSGI: no length and no terminated stream means no body
        data = stream.read(limit + 1)
        if len(data) > limit:
            raise self._too_large()
        return data

    def test_client(self) -> TestClient:
        return TestClient(self)


class TestClient(Client):
    """Werkzeug's test client, usable as a context manager like Flask's."""

    def __enter__(self) -> TestClient:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class Endpoints:
    """The route handlers of one app; each is a few lines over the model and the protocols."""

    def __init__(
        self,
        settings: Settings,
        model: Model,
        metrics: ServerMetrics,
        exposed: CollectorRegistry,
        *,
        readiness_gate: Callable[[], str | None] | None,
        draining: Callable[[], bool],
        decode: Decode,
        loop_stalled_for: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self.settings = settings
        self.model = model
        self.loop_stalled_for = loop_stalled_for
        self.metrics = metrics
        self.exposed = exposed
        self.readiness_gate = readiness_gate
        self.draining = draining
        self.decode = decode
        self.version = _package_version()
        self.model_reports_batches = False
        self._predict_async: Callable[[Images], Awaitable[Probabilities]] | None = getattr(
            model, "predict_async", None
        )

    def routes(self) -> tuple[tuple[str, str, Handler], ...]:
        """(method, rule, handler): the whole HTTP surface in one table."""
        return (
            ("GET", "/healthz", self.healthz),
            ("GET", "/readyz", self.readyz),
            ("GET", "/metrics", self.prometheus_metrics),
            ("POST", "/predict", self.predict),
            ("GET", "/v2", self.v2_server_metadata),
            ("GET", "/v2/health/live", self.healthz_v2),
            ("GET", "/v2/health/ready", self.readyz_v2),
            ("GET", f"/v2/models/{_MODEL}", self.v2_model_metadata),
            ("GET", f"/v2/models/{_VERSION}", self.v2_model_metadata),
            ("GET", f"/v2/models/{_MODEL}/ready", self.v2_model_ready),
            ("GET", f"/v2/models/{_VERSION}/ready", self.v2_model_ready),
            ("POST", f"/v2/models/{_MODEL}/infer", self.v2_infer),
            ("POST", f"/v2/models/{_VERSION}/infer", self.v2_infer),
            ("GET", f"/v1/models/{_MODEL}", self.tfserving_status),
            ("GET", f"/v1/models/{_VERSION}", self.tfserving_status),
            ("POST", f"/v1/models/{_MODEL}:predict", self.tfserving_predict),
            ("POST", f"/v1/models/{_VERSION}:predict", self.tfserving_predict),
        )

    # --- health, readiness, metrics -------------------------------------------------------

    def healthz(self, request: Request) -> Any:
        self._require_alive()
        return {"status": "alive"}

    def readyz(self, request: Request) -> Any:
        self._require_ready()
        model = self.model
        return {
            "status": "ready",
            "model": {"name": model.name, "version": model.version, "metadata": dict(model.metadata)},
        }

    def prometheus_metrics(self, request: Request) -> Response:
        return Response(generate_latest(self.exposed), content_type=CONTENT_TYPE_LATEST)

    # --- the tutorial's /predict ----------------------------------------------------------

    async def predict(self, request: Request) -> Any:
        batch = await self.decode(request, self._tutorial_batch)
        probabilities = await self._infer(batch.images)
        return tutorial.response(probabilities, batch.single, time.perf_counter() - request.started)

    def _tutorial_batch(self, request: Request) -> Batch:
        mimetype = request.mimetype
        if mimetype in _UPLOAD_TYPES:
            return Batch(images_from_upload(self._read_upload(request)), single=True)
        if _is_json(mimetype):
            return tutorial.parse_request(self._read_json(request), self.settings.max_batch)
        raise UnsupportedMediaTypeError(
            f"Content-Type {mimetype!r} is not supported; send {JSON}, {MULTIPART} with a "
            f"{UPLOAD_FIELD!r} field, or {' or '.join(IMAGE_TYPES)}"
        )

    # --- Open Inference Protocol v2 -------------------------------------------------------

    def v2_server_metadata(self, request: Request) -> Any:
        return v2.server_metadata(self.version)

    def healthz_v2(self, request: Request) -> Any:
        self._require_alive()
        return {"live": True}

    def readyz_v2(self, request: Request) -> Any:
        self._require_ready()
        return {"ready": True}

    def v2_model_metadata(self, request: Request, name: str, version: str | None = None) -> Any:
        self._check_model(name, version)
        return v2.model_metadata(self.model)

    def v2_model_ready(self, request: Request, name: str, version: str | None = None) -> Any:
        self._check_model(name, version)
        self._require_ready()
        return {"name": self.model.name, "ready": True}

    async def v2_infer(self, request: Request, name: str, version: str | None = None) -> Any:
        self._check_model(name, version)
        parsed = await self.decode(request, self._v2_request, _v2_json_bytes(request))
        return v2.infer_response(self.model, parsed.id, await self._infer(parsed.images))

    def _v2_request(self, request: Request) -> v2.InferRequest:
        header_length = request.header(v2.BINARY_HEADER.lower())
        if header_length is None:
            return v2.parse_infer_request(self._read_json(request), self.settings.max_batch)
        # the binary tensor extension: any Content-Type
        return v2.parse_binary_infer_request(request.body, header_length, self.settings.max_batch)

    # --- TensorFlow Serving REST ----------------------------------------------------------

    def tfserving_status(self, request: Request, name: str, version: str | None = None) -> Any:
        self._check_model(name, version)
        return tfserving.model_status(self.model)

    async def tfserving_predict(self, request: Request, name: str, version: str | None = None) -> Any:
        self._check_model(name, version)
        parsed = await self.decode(request, self._tfserving_request)
        return tfserving.predict_response(await self._infer(parsed.images), parsed.row_format)

    def _tfserving_request(self, request: Request) -> tfserving.PredictRequest:
        return tfserving.parse_predict_request(self._read_json(request), self.settings.max_batch)

    # --- helpers --------------------------------------------------------------------------

    def _check_model(self, name: str, version: str | None) -> None:
        model = self.model
        if name != model.name:
            raise NotFoundError(
                f"unknown model {name!r}; this server serves {model.name!r}", Reason.MODEL_NOT_FOUND
            )
        if version is not None and version != model.version:
            raise NotFoundError(
                f"model {model.name!r} has no version {version!r} here; this server serves version "
                f"{model.version!r}",
                Reason.VERSION_NOT_FOUND,
            )

    def _require_ready(self) -> None:
        if self.draining():
            raise NotReadyError(SHUTTING_DOWN)
        if not self.model.ready:
            failed = self.model.state is LoadState.FAILED
            raise NotReadyError(self.model.state_message, Reason.LOAD_FAILED if failed else Reason.NOT_READY)
        waiting_for = self.readiness_gate() if self.readiness_gate else None
        if waiting_for:
            raise NotReadyError(waiting_for)

    def _require_alive(self) -> None:
        # A model that failed to load will not recover in this process: fail liveness so the
        # kubelet restarts the container and the failure shows as a crash loop, not a silent hang.
        if self.model.state is LoadState.FAILED:
            raise NotReadyError(self.model.state_message, Reason.LOAD_FAILED)
        # Seen only from the probe listener (mnist_server.probes): the serving loop answers
        # nothing while it is stalled.
        stalled = self.loop_stalled_for()
        if stalled > LOOP_STALL_SECONDS:
            raise NotReadyError(
                f"the worker's event loop has not run for {stalled:.0f} s (a request handler is stuck)",
                Reason.LOOP_STALLED,
            )

    async def _infer(self, images: Images) -> Probabilities:
        started = time.perf_counter()
        if self._predict_async is not None:
            probabilities = await self._predict_async(images)
        else:
            probabilities = self.model.predict(images)
        if self.model_reports_batches:
            self.metrics.observe_predictions(probabilities)
        else:
            self.metrics.observe_inference(probabilities, time.perf_counter() - started)
        return probabilities

    def _read_json(self, request: Request) -> JsonBody:
        mimetype = request.mimetype
        if not _is_json(mimetype):
            raise UnsupportedMediaTypeError(
                f"Content-Type {mimetype!r} is not supported here; send {JSON} "
                f"(curl: -H 'Content-Type: {JSON}')"
            )
        return parse_json(request.body, self.settings.max_batch)

    def _read_upload(self, request: Request) -> bytes:
        if request.mimetype != MULTIPART:
            return request.body
        boundary = parse_options_header(request.content_type)[1].get("boundary")
        if not boundary:
            raise InvalidInputError("the multipart body has no boundary in its Content-Type")
        parser = MultiPartParser(
            stream_factory=_memory_stream, max_form_memory_size=len(request.body), max_form_parts=64
        )
        try:
            _, files = parser.parse(
                io.BytesIO(request.body), boundary.encode("latin-1", "replace"), len(request.body)
            )
        except (ValueError, HTTPException) as exc:
            raise InvalidInputError(f"the multipart body is malformed: {exc}") from None
        upload = files.get(UPLOAD_FIELD)
        if upload is None:
            raise InvalidInputError(
                f"the multipart upload has no {UPLOAD_FIELD!r} field (curl: -F {UPLOAD_FIELD}=@digit.png)",
                Reason.MISSING_FIELD,
            )
        data: bytes = upload.read()
        return data


_UPLOAD_TYPES = (MULTIPART, *IMAGE_TYPES)


def _v2_json_bytes(request: Request) -> int | None:
    """With the v2 binary extension, the length of the body's JSON header (the part decoding
    parses); otherwise None (all of it). A malformed value is the parser's to refuse."""
    header = request.header(v2.BINARY_HEADER.lower())
    return int(header) if header is not None and v2.is_length(header) else None


def _protocol_closed() -> tuple[type[BaseException], ...]:
    try:
        from granian._granian import RSGIProtocolClosed, RSGIProtocolError
    except ImportError:  # Granian is only needed to serve, not to test
        return ()
    return (RSGIProtocolClosed, RSGIProtocolError)


_PROTOCOL_CLOSED = _protocol_closed()


def _forget_frames(error: BaseException) -> None:
    """Drop the frames an answered error's traceback keeps, along its chain of causes.

    An error raised in a decoding thread or under ``asyncio.wait_for`` is held by a future that
    the traceback's frames hold in turn: a reference cycle, freed only when the cyclic garbage
    collector runs, and with it the request, its body and what was parsed from it (several MiB
    each, measured: a flood of refused 4 MiB bodies took a worker's RSS to 1 GiB).
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        current.__traceback__ = None
        current = current.__cause__ or current.__context__


def _memory_stream(*args: Any, **kwargs: Any) -> io.BytesIO:
    # The body is already in memory (and bounded): no spooling to temporary files.
    return io.BytesIO()


async def _no_body() -> bytes:
    raise AssertionError("a GET handler read a body")


def _never() -> bool:
    return False


def _is_json(mimetype: str) -> bool:
    # No Content-Type at all is read as JSON: the tutorial's clients do not always send one.
    return not mimetype or mimetype == JSON or mimetype.endswith("+json")


def _package_version() -> str:
    try:
        return metadata.version("mnist-operator")
    except metadata.PackageNotFoundError:
        return "0+unknown"
