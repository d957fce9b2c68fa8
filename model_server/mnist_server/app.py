"""The Flask app factory: thin routes over a ``Model``, the protocol modules and the metrics.

Every error a route, a decoder or Werkzeug raises is turned into JSON in one place
(``Endpoints.error_response``): ``{"error": <what was wrong>, "reason": <machine-readable>}`` with
the error's HTTP status, and counted by reason.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson
from flask import Flask, Response, g, request
from flask.json.provider import DefaultJSONProvider
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.routing import BaseConverter
from werkzeug.sansio.response import Response as SansioResponse

from mnist_server.decoding import Batch, JsonBody, images_from_upload, parse_json
from mnist_server.errors import (
    ApiError,
    InvalidInputError,
    MethodNotAllowedError,
    NotFoundError,
    NotReadyError,
    Reason,
    TooLargeError,
    UnsupportedMediaTypeError,
)
from mnist_server.metrics import UNMATCHED, ServerMetrics, exposition_registry
from mnist_server.model import Images, LoadState, Model, Probabilities
from mnist_server.protocols import tfserving, tutorial, v2
from mnist_server.settings import PREFIX, Settings

log = logging.getLogger(__name__)

JSON = "application/json"
IMAGE_TYPES = ("image/png", "image/jpeg")
MULTIPART = "multipart/form-data"
UPLOAD_FIELD = "file"
SHUTTING_DOWN = "the server is shutting down; it answers requests until it stops"

_MODEL = "<name>"
_VERSION = "<name>/versions/<version>"
Handler = Callable[..., Any]


class _PathSegment(BaseConverter):
    """A model name or version: one path segment without ':' (TF Serving puts ':predict' after it)."""

    regex = r"[^/:]+"


def create_app(
    settings: Settings,
    model: Model,
    registry: CollectorRegistry,
    *,
    multiprocess_dir: Path | None = None,
    readiness_gate: Callable[[], str | None] | None = None,
    draining: Callable[[], bool] | None = None,
) -> Flask:
    """The server for one model. ``registry`` holds this process's metrics; with
    ``multiprocess_dir`` (several worker processes) ``/metrics`` serves all workers' aggregate.
    ``readiness_gate``, once the model is ready, says why the server is not (e.g. other workers
    still loading), or None. ``draining`` is true once the server is shutting down: it is then
    not ready, and closes each connection after its response (see ``mnist_server.shutdown``)."""
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json = _FastJSONProvider(app)
    app.json.sort_keys = False  # keep the documented field order
    # Also keeps the route templates (the metrics' endpoint label) free of converter names.
    app.url_map.converters["default"] = _PathSegment
    metrics = ServerMetrics(registry, model.name, model.version)
    endpoints = Endpoints(
        settings,
        model,
        metrics,
        exposition_registry(registry, multiprocess_dir),
        readiness_gate=readiness_gate,
        draining=draining or _never,
    )
    # A model that batches requests reports its own model calls; otherwise each request is one.
    observe_batches = getattr(model, "observe_batches", None)
    if callable(observe_batches):
        observe_batches(metrics.observe_batch)
        endpoints.model_reports_batches = True
    for method, rule, handler in endpoints.routes():
        app.add_url_rule(rule, endpoint=handler.__name__, view_func=handler, methods=[method])
    app.before_request(endpoints.start_timer)
    app.after_request(endpoints.record_request)
    app.register_error_handler(ApiError, endpoints.error_response)
    app.register_error_handler(HTTPException, endpoints.http_error)
    app.register_error_handler(Exception, endpoints.unexpected_error)
    return app


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
    ) -> None:
        self.settings = settings
        self.model = model
        self.metrics = metrics
        self.exposed = exposed
        self.readiness_gate = readiness_gate
        self.draining = draining
        self.version = _package_version()
        self.model_reports_batches = False

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

    def healthz(self) -> Any:
        self._require_alive()
        return {"status": "alive"}

    def readyz(self) -> Any:
        self._require_ready()
        model = self.model
        return {
            "status": "ready",
            "model": {"name": model.name, "version": model.version, "metadata": dict(model.metadata)},
        }

    def prometheus_metrics(self) -> Response:
        return Response(generate_latest(self.exposed), content_type=CONTENT_TYPE_LATEST)

    # --- the tutorial's /predict ----------------------------------------------------------

    def predict(self) -> Any:
        mimetype = request.mimetype
        if mimetype in (MULTIPART, *IMAGE_TYPES):
            batch = Batch(images_from_upload(self._read_upload()), single=True)
        elif _is_json(mimetype):
            batch = tutorial.parse_request(self._read_json(), self.settings.max_batch)
        else:
            raise UnsupportedMediaTypeError(
                f"Content-Type {mimetype!r} is not supported; send {JSON}, {MULTIPART} with a "
                f"{UPLOAD_FIELD!r} field, or {' or '.join(IMAGE_TYPES)}"
            )
        probabilities = self._infer(batch.images)
        return tutorial.response(probabilities, batch.single, _elapsed())

    # --- Open Inference Protocol v2 -------------------------------------------------------

    def v2_server_metadata(self) -> Any:
        return v2.server_metadata(self.version)

    def healthz_v2(self) -> Any:
        self._require_alive()
        return {"live": True}

    def readyz_v2(self) -> Any:
        self._require_ready()
        return {"ready": True}

    def v2_model_metadata(self, name: str, version: str | None = None) -> Any:
        self._check_model(name, version)
        return v2.model_metadata(self.model)

    def v2_model_ready(self, name: str, version: str | None = None) -> Any:
        self._check_model(name, version)
        self._require_ready()
        return {"name": self.model.name, "ready": True}

    def v2_infer(self, name: str, version: str | None = None) -> Any:
        self._check_model(name, version)
        header_length = request.headers.get(v2.BINARY_HEADER)
        if header_length is None:
            parsed = v2.parse_infer_request(self._read_json(), self.settings.max_batch)
        else:  # the binary tensor extension: any Content-Type
            parsed = v2.parse_binary_infer_request(self._read_body(), header_length, self.settings.max_batch)
        return v2.infer_response(self.model, parsed.id, self._infer(parsed.images))

    # --- TensorFlow Serving REST ----------------------------------------------------------

    def tfserving_status(self, name: str, version: str | None = None) -> Any:
        self._check_model(name, version)
        return tfserving.model_status(self.model)

    def tfserving_predict(self, name: str, version: str | None = None) -> Any:
        self._check_model(name, version)
        parsed = tfserving.parse_predict_request(self._read_json(), self.settings.max_batch)
        return tfserving.predict_response(self._infer(parsed.images), parsed.row_format)

    # --- request hooks and errors: the one place errors become responses ------------------

    def start_timer(self) -> None:
        g.started = time.perf_counter()

    def record_request(self, response: Response) -> Response:
        endpoint = request.url_rule.rule if request.url_rule is not None else UNMATCHED
        self.metrics.observe_request(endpoint, response.status_code, _elapsed())
        if self.draining():
            # Keep-alive connections would stay pinned to this pod until it stops, and break then;
            # closed after each answer, clients reconnect through the Service to pods that stay.
            response.headers["Connection"] = "close"
        return response

    def error_response(self, error: ApiError, headers: dict[str, str] | None = None) -> Response:
        self.metrics.observe_error(error.reason)
        # Client errors and "not ready yet" are routine (and counted); only a bug is an error.
        level = logging.ERROR if error.reason is Reason.INTERNAL else logging.DEBUG
        log.log(level, "%s %s -> %d %s: %s", request.method, request.path, error.status, error.reason, error)
        body = _json_dumps({"error": error.message, "reason": error.reason.value})
        response = Response(body, status=error.status, mimetype=JSON, headers=headers)
        if error.retry_after is not None:
            response.headers["Retry-After"] = str(error.retry_after)
        return response

    def http_error(self, error: HTTPException) -> Response:
        allowed = getattr(error, "valid_methods", None)
        headers = {"Allow": ", ".join(sorted(allowed))} if allowed else None
        return self.error_response(_from_http(error, self.settings), headers)

    def unexpected_error(self, error: Exception) -> Response:
        # Should never fire: every known failure is an ApiError. Counted under reason "internal".
        log.exception("unexpected error on %s %s", request.method, request.path)
        return self.error_response(
            ApiError(f"internal server error ({type(error).__name__}); see the server log")
        )

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

    def _infer(self, images: Images) -> Probabilities:
        started = time.perf_counter()
        probabilities = self.model.predict(images)
        if self.model_reports_batches:
            self.metrics.observe_predictions(probabilities.argmax(axis=1))
        else:
            self.metrics.observe_inference(probabilities.argmax(axis=1), time.perf_counter() - started)
        return probabilities

    def _read_json(self) -> JsonBody:
        mimetype = request.mimetype
        if not _is_json(mimetype):
            raise UnsupportedMediaTypeError(
                f"Content-Type {mimetype!r} is not supported here; send {JSON} "
                f"(curl: -H 'Content-Type: {JSON}')"
            )
        return parse_json(self._read_body())

    def _read_upload(self) -> bytes:
        if request.mimetype == MULTIPART:
            self._read_body(cache=True)  # the form parser then reads the checked, cached body
            upload = request.files.get(UPLOAD_FIELD)
            if upload is None:
                raise InvalidInputError(
                    f"the multipart upload has no {UPLOAD_FIELD!r} field "
                    f"(curl: -F {UPLOAD_FIELD}=@digit.png)",
                    Reason.MISSING_FIELD,
                )
            data: bytes = upload.read()
            return data
        return self._read_body()

    def _read_body(self, cache: bool = False) -> bytes:
        data = request.get_data(cache=cache)
        # Werkzeug refuses a Content-Length above the limit (413) but silently cuts a streamed
        # (chunked) body at the limit: a body that reached it is taken as too large.
        if request.content_length is None and len(data) >= self.settings.max_body_bytes:
            raise _from_http(RequestEntityTooLarge(), self.settings)
        return data


class _FastJSONProvider(DefaultJSONProvider):
    """Responses serialised by orjson: several times faster than the standard library's encoder,
    which matters when a response is a few hundred bytes and the model call takes 50 us."""

    def response(self, *args: Any, **kwargs: Any) -> SansioResponse:
        value = args[0] if len(args) == 1 and not kwargs else (args or kwargs)
        try:
            body = orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)
        except TypeError:  # a type orjson does not know: Flask's encoder knows more
            return super().response(*args, **kwargs)
        return Response(body, mimetype=self.mimetype)


def _never() -> bool:
    return False


def _is_json(mimetype: str) -> bool:
    # No Content-Type at all is read as JSON: the tutorial's clients do not always send one.
    return not mimetype or mimetype == JSON or mimetype.endswith("+json")


def _elapsed() -> float:
    started: float = g.get("started", time.perf_counter())
    return time.perf_counter() - started


def _json_dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _from_http(error: HTTPException, settings: Settings) -> ApiError:
    path = request.path[:200]
    if error.code == 404:
        return NotFoundError(f"no route for {request.method} {path}; see docs/server.md for the endpoints")
    if error.code == 405:
        allowed = ", ".join(sorted(getattr(error, "valid_methods", None) or []))
        return MethodNotAllowedError(f"{request.method} is not allowed on {path}; allowed: {allowed}")
    if error.code == 413:
        return TooLargeError(
            f"request body is larger than {settings.max_body_bytes} bytes ({PREFIX}MAX_BODY_BYTES)",
            Reason.BODY_TOO_LARGE,
        )
    if error.code == 415:
        return UnsupportedMediaTypeError(error.description or "unsupported media type")
    if error.code is not None and 400 <= error.code < 500:
        converted = InvalidInputError(error.description or error.name)
        converted.status = error.code
        return converted
    return ApiError(f"{error.name}: {error.description}")


def _package_version() -> str:
    try:
        return metadata.version("mnist-operator")
    except metadata.PackageNotFoundError:
        return "0+unknown"
