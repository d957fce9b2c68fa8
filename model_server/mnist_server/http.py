"""The HTTP vocabulary of the server, independent of the interface that carries it: a request, a
response, the router built from the app's route table, and reading a body within its limits.

The app (``mnist_server.app``) runs on Granian's RSGI interface in production (an event loop reads
bodies without holding a thread; see ``App.__rsgi__``) and on WSGI for tests and any WSGI server
(``App.__call__``); both build a :class:`Request` and send back a :class:`Response`, so routes,
errors and metrics exist once.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterable, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote

import orjson

from mnist_server.errors import MethodNotAllowedError, NotFoundError

JSON = "application/json"
# A route's path parameter: one segment without ':' (TF Serving puts ':predict' after the name).
_PARAMETER = re.compile(r"<([a-z_]+)>")
_SEGMENT = r"[^/:]+"


class Headers(Protocol):
    """Request headers by lower-case name (RSGI's headers object, or a dict under WSGI)."""

    def get(self, key: str, default: Any = None) -> Any: ...


class Request:
    """What a handler sees of a request: ``body`` is complete (read within the limits) by then."""

    __slots__ = ("body", "headers", "method", "path", "started")

    def __init__(self, method: str, path: str, headers: Headers, started: float, body: bytes = b"") -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self.started = started
        self.body = body

    def header(self, name: str) -> str | None:
        """A header's value; ``name`` in lower case."""
        value: str | None = self.headers.get(name)
        return value

    @property
    def content_type(self) -> str:
        return self.header("content-type") or ""

    @property
    def mimetype(self) -> str:
        return self.content_type.partition(";")[0].strip().lower()

    @property
    def content_length(self) -> int | None:
        """The declared length, or None (chunked, or no body); a malformed one is refused by the
        HTTP layer before a request gets here."""
        value = self.header("content-length")
        return int(value) if value is not None and value.isdigit() else None


class Response:
    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(
        self,
        body: bytes,
        status: int = 200,
        content_type: str = JSON,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        self.body = body
        self.status = status
        self.content_type = content_type
        self.headers = headers if headers is not None else []

    def header_list(self) -> list[tuple[str, str]]:
        return [("content-type", self.content_type), *self.headers]


def json_response(value: Any, status: int = 200) -> Response:
    # orjson: several times faster than the standard library's encoder, which matters when a
    # response is a few hundred bytes and the model call takes 50 us.
    return Response(orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY, default=str), status)


Handler = Callable[..., Any]


@dataclass(frozen=True)
class Route:
    method: str
    rule: str  # the template, e.g. /v2/models/<name>/infer: the metrics' endpoint label
    handler: Handler
    is_async: bool


class Router:
    """Method and path to a route: exact paths by dictionary, templated ones by one regex each.

    As Flask did for this app: a GET route also answers HEAD, every path answers OPTIONS with its
    methods, an unknown path is a 404 and a known path with another method a 405 naming the methods
    allowed (the ``Allow`` header).
    """

    def __init__(self, routes: list[Route]) -> None:
        self._exact: dict[str, dict[str, Route]] = {}
        self._templates: list[tuple[re.Pattern[str], dict[str, Route]]] = []
        by_rule: dict[str, dict[str, Route]] = {}
        for route in routes:
            by_rule.setdefault(route.rule, {})[route.method] = route
        for rule, methods in by_rule.items():
            if "GET" in methods:
                methods.setdefault("HEAD", methods["GET"])
            if _PARAMETER.search(rule):
                self._templates.append((_compile(rule), methods))
            else:
                self._exact[rule] = methods

    def resolve(self, path: str) -> tuple[dict[str, Route], dict[str, str]] | None:
        """The routes at ``path`` by method, with the path's parameters; None if no rule matches."""
        methods = self._exact.get(path)
        if methods is not None:
            return methods, {}
        for pattern, methods in self._templates:
            found = pattern.match(path)
            if found is not None:
                return methods, found.groupdict()
        return None

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        """The route for ``method`` at ``path``, or a 404 / 405 ``ApiError``."""
        resolved = self.resolve(path)
        if resolved is None:
            raise NotFoundError(f"no route for {method} {path[:200]}; see docs/server.md for the endpoints")
        methods, params = resolved
        route = methods.get(method)
        if route is None:
            raise MethodNotAllowedError(
                f"{method} is not allowed on {path[:200]}; allowed: {', '.join(allowed_methods(methods))}",
                allowed=allowed_methods(methods),
            )
        return route, params


def _compile(rule: str) -> re.Pattern[str]:
    parts = _PARAMETER.split(rule)  # literal, name, literal, name, ..., literal
    regex = "".join(
        re.escape(part) if i % 2 == 0 else f"(?P<{part}>{_SEGMENT})" for i, part in enumerate(parts)
    )
    return re.compile(regex + r"\Z")


def allowed_methods(methods: Mapping[str, Route]) -> list[str]:
    return sorted({*methods, "OPTIONS"})


def decode_path(raw: str) -> str:
    return unquote(raw, errors="replace") if "%" in raw else raw


# --- reading a body within its limits --------------------------------------------------------


class BodyBudget:
    """Bytes of request bodies this worker holds at once (received, or waiting to be decoded).

    Bodies are counted as they arrive, so a client trickling a body holds what it has sent, not
    what it announced; the event loop is the only user, so no lock.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, size: int) -> bool:
        if self.used + size > self.limit:
            return False
        self.used += size
        return True

    def give_back(self, size: int) -> None:
        self.used -= size


class BodyTooLargeError(Exception):
    """The body exceeded the size limit."""


class BodyBudgetError(Exception):
    """Taking this body would exceed the worker's body budget."""


async def read_body(
    whole: Callable[[], Awaitable[bytes]],
    *,
    chunks: AsyncIterable[bytes],
    declared: int | None,
    limit: int,
    budget: BodyBudget,
    held: list[int],
    small: int = 64 * 1024,
) -> bytes:
    """A request's body, at most ``limit`` bytes, charged to ``budget`` (the bytes charged are
    added to ``held[0]``, for the caller to give back). A small declared body is read in one call;
    a larger or chunked one chunk by chunk, so that the limit and the budget hold while it streams.
    Raises BodyTooLargeError or BodyBudgetError; the caller bounds the time."""
    if declared is not None and declared <= small:
        data = await whole()
        if len(data) > limit:
            raise BodyTooLargeError
        if not budget.take(len(data)):
            raise BodyBudgetError
        held[0] += len(data)
        return data
    # One growing buffer: chunks are copied in and freed at once. (Not sized from the declared
    # length up front: a client announcing 4 MiB and sending a byte would cost 4 MiB.)
    buffer = bytearray()
    async for chunk in chunks:
        if len(buffer) + len(chunk) > limit:
            raise BodyTooLargeError
        if not budget.take(len(chunk)):
            raise BodyBudgetError
        held[0] += len(chunk)
        buffer += chunk
    return bytes(buffer)


class ReadDeadlines:
    """A deadline for each body being read, enforced by one check every ``period`` seconds per
    event loop rather than a timer per request: ``asyncio.timeout`` cost a timer, a heap entry and
    a cancellation scope per request, a tenth of a single-image request's time on the loop.

    A read past its deadline is cancelled (at most ``period`` late) and :meth:`read` raises
    TimeoutError in its place.
    """

    def __init__(self, timeout: float, period: float = 0.25) -> None:
        self.timeout = timeout
        self.period = period
        self._deadlines: dict[asyncio.Task[Any], float] = {}
        self._expired: set[asyncio.Task[Any]] = set()
        self._checking: asyncio.AbstractEventLoop | None = None  # the loop a check is due on

    async def read(self, reading: Awaitable[bytes]) -> bytes:
        """``await reading``, within the deadline (the caller is the task doing the reading)."""
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        self._deadlines[task] = loop.time() + self.timeout
        if self._checking is not loop:
            self._checking = loop
            loop.call_later(self.period, self._check, loop)
        try:
            return await reading
        except asyncio.CancelledError:
            if task not in self._expired:
                raise  # somebody else's cancellation
            self._expired.discard(task)
            task.uncancel()
            raise TimeoutError from None
        finally:
            self._deadlines.pop(task, None)

    def _check(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        for task, deadline in list(self._deadlines.items()):
            if deadline <= now and task not in self._expired and task.get_loop() is loop:
                self._expired.add(task)
                task.cancel()
        if self._deadlines:
            loop.call_later(self.period, self._check, loop)
        else:
            self._checking = None
