"""Errors that carry their HTTP status and a machine-readable reason.

Routes and decoders raise these; the app maps them to a JSON body in one place
(``{"error": <message>, "reason": <reason>}``) and counts them by reason. Reasons are a closed
set so the errors metric keeps bounded labels.
"""

from __future__ import annotations

from enum import StrEnum

from mnist_server.batching import BatcherClosedError, BatchingError, BatchOutputError


class Reason(StrEnum):
    INVALID_JSON = "invalid_json"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    MISSING_FIELD = "missing_field"
    WRONG_SHAPE = "wrong_shape"
    WRONG_DTYPE = "wrong_dtype"
    NON_FINITE = "non_finite"
    OUT_OF_RANGE = "out_of_range"
    EMPTY_BATCH = "empty_batch"
    BATCH_TOO_LARGE = "batch_too_large"
    BODY_TOO_LARGE = "body_too_large"
    BODY_TIMEOUT = "body_timeout"
    BAD_IMAGE = "bad_image"
    BAD_REQUEST = "bad_request"
    MODEL_NOT_FOUND = "model_not_found"
    VERSION_NOT_FOUND = "version_not_found"
    ROUTE_NOT_FOUND = "route_not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    NOT_READY = "not_ready"
    LOAD_FAILED = "load_failed"
    LOOP_STALLED = "loop_stalled"
    OVERLOADED = "overloaded"
    INTERNAL = "internal"


def error_body(message: str, reason: Reason) -> dict[str, str]:
    """The JSON of every error answer: the app's (``App.error_response``) and the probe port's."""
    return {"error": message, "reason": reason.value}


class ApiError(Exception):
    """An error a client sees: ``status`` is the HTTP status, ``reason`` the metric label."""

    status = 500
    default_reason = Reason.INTERNAL
    # Seconds after which a client may retry (the Retry-After header), for errors that pass.
    retry_after: int | None = None

    def __init__(self, message: str, reason: Reason | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason


class InvalidInputError(ApiError):
    """The request body is well-formed HTTP but not a valid input; ``reason`` says how."""

    status = 400
    default_reason = Reason.BAD_REQUEST


class UnsupportedMediaTypeError(ApiError):
    status = 415
    default_reason = Reason.UNSUPPORTED_MEDIA_TYPE


class TooLargeError(ApiError):
    status = 413
    default_reason = Reason.BODY_TOO_LARGE


class NotFoundError(ApiError):
    status = 404
    default_reason = Reason.ROUTE_NOT_FOUND


class MethodNotAllowedError(ApiError):
    status = 405
    default_reason = Reason.METHOD_NOT_ALLOWED

    def __init__(self, message: str, reason: Reason | None = None, allowed: list[str] | None = None) -> None:
        super().__init__(message, reason)
        self.allowed = allowed or []


class BodyTimeoutError(ApiError):
    """The request body did not arrive within the read deadline (a stalled or very slow client)."""

    status = 408
    default_reason = Reason.BODY_TIMEOUT


class NotReadyError(ApiError):
    status = 503
    default_reason = Reason.NOT_READY


class OverloadedError(ApiError):
    """The model's queue is full or an answer took too long: shed load, let the client retry."""

    status = 503
    default_reason = Reason.OVERLOADED
    retry_after = 1


class ModelFaultError(ApiError):
    """The model answered wrongly (e.g. not one row per image): a server-side defect, so a 500
    that a client should not retry, unlike overload."""

    status = 500
    default_reason = Reason.INTERNAL


def from_batching(error: BatchingError) -> ApiError:
    """What a client sees when the batcher gave no answer: shutting down and overload (a full
    queue, no answer in time) are retryable 503s; a model that answered wrongly is a 500."""
    if isinstance(error, BatcherClosedError):
        return NotReadyError(str(error))
    if isinstance(error, BatchOutputError):
        return ModelFaultError(
            f"the model answered wrongly ({error}); this is a server fault, not a bad request"
        )
    return OverloadedError(str(error))


class ModelLoadError(Exception):
    """The model could not be loaded or failed its warm-up prediction (not a client error)."""
