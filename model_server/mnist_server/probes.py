"""The probe listener: ``/healthz`` and ``/readyz`` on a port of their own, answered on a thread.

On the serving port a probe waits in the same queue as every request: Granian hands requests
to the worker's one event loop in order, so under a flood a probe is answered after the
requests and refusals ahead of it (tens of milliseconds at four times capacity on two cores,
docs/server.md "Admission"). Here it is answered by a thread with its own small event loop,
which only needs its turn at the GIL. This is what a Kubebuilder manager's
``--health-probe-bind-address`` does, and the operator points the kubelet's probes here.

The answers are the serving port's (the same handlers, JSON and metrics), with one more check
for liveness: that the serving loop still turns (:class:`LoopHeartbeat`). On the serving port
that check would be moot: a stalled loop answers nothing there.

The listener speaks just enough HTTP/1.1 for probes: ``GET`` or ``HEAD`` of a path, headers up
to 8 KiB, keep-alive, no bodies. Clients that send more, or trickle, are cut: a connection must
send its request's headers within ``HEAD_TIMEOUT``, and of ``MAX_CONNECTIONS`` waiting for
theirs, a new one pushes out the one that has waited longest. A flood of stalled connections
therefore cannot hold the kubelet out: its probe sends its headers as soon as it connects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus

from mnist_server.errors import Reason, error_body
from mnist_server.http import Request, Response, decode_path, json_response

log = logging.getLogger(__name__)

PATHS = ("/healthz", "/readyz")
MAX_HEAD_BYTES = 8192
MAX_CONNECTIONS = 64
# Seconds a client has to send a request's headers (kubelet probes send theirs at once).
HEAD_TIMEOUT = 5.0

Respond = Callable[[Request], Awaitable[Response]]


class LoopHeartbeat:
    """When an event loop last ran a callback of ours: ``beat`` every ``period`` seconds, so a loop
    that stopped turning (a handler stuck in a call that never returns) shows as a growing
    :meth:`stalled_for`."""

    def __init__(self, period: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.period = period
        self.clock = clock
        self._last: float | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._last = self.clock()
        loop.call_soon(self._beat, loop)

    def _beat(self, loop: asyncio.AbstractEventLoop) -> None:
        self._last = self.clock()
        loop.call_later(self.period, self._beat, loop)

    def stalled_for(self) -> float:
        """Seconds since the loop last beat, less one period (0 when it never started)."""
        if self._last is None:
            return 0.0
        return max(0.0, self.clock() - self._last - self.period)


class ProbeListener:
    """Serves ``respond`` for ``PATHS`` on ``(host, port)`` from a daemon thread."""

    def __init__(self, host: str, port: int, respond: Respond) -> None:
        self.respond = respond
        # Bound here, in the caller's thread, so a port in use fails start-up with its reason.
        # SO_REUSEPORT: every worker process binds the port, and the kernel spreads probes over
        # them (each worker's readiness includes the others', see serving.WorkerGroup).
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            self.socket.bind((host, port))
        except OSError:
            self.socket.close()
            raise
        self.socket.listen(MAX_CONNECTIONS)
        self.socket.setblocking(False)
        self.port: int = self.socket.getsockname()[1]
        # Connections waiting for a request's headers, oldest first (dicts keep insertion order).
        self._waiting: dict[asyncio.StreamWriter, None] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="probes", daemon=True)

    def start(self) -> ProbeListener:
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving, end open connections and release the port (tests; a server's workers
        just exit)."""
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._cancel_all)
            self._thread.join(5)
        self.socket.close()

    def _cancel_all(self) -> None:
        for task in asyncio.all_tasks(self._loop):
            task.cancel()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except asyncio.CancelledError:
            pass  # close()
        except Exception:
            log.exception("the probe listener on port %d stopped", self.port)
        finally:
            pending = asyncio.all_tasks(self._loop)
            if pending:
                self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.close()

    async def _serve(self) -> None:
        server = await asyncio.start_server(self._connection, sock=self.socket, limit=MAX_HEAD_BYTES)
        async with server:
            await server.serve_forever()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._one_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass  # the client went, took too long, or was pushed out: nobody to answer
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _wait_for_head(self, writer: asyncio.StreamWriter) -> None:
        if len(self._waiting) >= MAX_CONNECTIONS:
            oldest = next(iter(self._waiting))
            del self._waiting[oldest]
            oldest.transport.abort()  # its read fails with a ConnectionError, and it closes
        self._waiting[writer] = None

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; True to read another on this connection."""
        self._wait_for_head(writer)
        try:
            async with asyncio.timeout(HEAD_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            too_large = HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
            await _send(writer, _error(too_large, Reason.BAD_REQUEST, "request headers over 8 KiB"))
            return False
        except asyncio.IncompleteReadError as partial:
            if partial.partial.strip():
                raise
            return False  # a keep-alive connection closed between requests
        finally:
            self._waiting.pop(writer, None)
        parsed = parse_head(head)
        if isinstance(parsed, Response):
            await _send(writer, parsed)
            return False
        method, path, keep_alive = parsed
        response = await self.respond(Request("GET", path, {}, time.perf_counter()))
        # The app closes connections itself while the server drains.
        keep_alive = keep_alive and not any(name == "connection" for name, _ in response.headers)
        await _send(writer, response, head_only=method == "HEAD", keep_alive=keep_alive)
        return keep_alive


def parse_head(head: bytes) -> tuple[str, str, bool] | Response:
    """``(method, path, keep_alive)`` of a probe's request head, or the error response to send."""
    try:
        text = head.decode("latin-1")
        request_line, *header_lines = text.split("\r\n")
        method, target, version = request_line.split(" ")
    except ValueError:
        return _bad_request("malformed request line; send e.g. GET /healthz HTTP/1.1")
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        return _bad_request(f"unsupported protocol {version[:20]!r}")
    headers = {}
    for line in header_lines:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip().lower()
    if headers.get("content-length", "0") != "0" or "transfer-encoding" in headers:
        return _bad_request("probe requests have no body")
    path = decode_path(target.partition("?")[0])
    if path not in PATHS:
        only = f"this port answers only {' and '.join(PATHS)}"
        return _error(HTTPStatus.NOT_FOUND, Reason.ROUTE_NOT_FOUND, only)
    if method not in ("GET", "HEAD"):
        not_allowed = f"{method[:20]} is not allowed here; use GET"
        response = _error(HTTPStatus.METHOD_NOT_ALLOWED, Reason.METHOD_NOT_ALLOWED, not_allowed)
        response.headers.append(("allow", "GET, HEAD"))
        return response
    connection = headers.get("connection", "")
    keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
    return method, path, keep_alive


def _bad_request(message: str) -> Response:
    return _error(HTTPStatus.BAD_REQUEST, Reason.BAD_REQUEST, message)


def _error(status: HTTPStatus, reason: Reason, message: str) -> Response:
    """An error of the listener's own (the app's errors come with the app's response)."""
    return json_response(error_body(message, reason), status)


async def _send(
    writer: asyncio.StreamWriter, response: Response, *, head_only: bool = False, keep_alive: bool = False
) -> None:
    status = HTTPStatus(response.status)
    lines = [f"HTTP/1.1 {status.value} {status.phrase}", f"content-length: {len(response.body)}"]
    lines += [f"{name}: {value}" for name, value in response.header_list()]
    if not any(name == "connection" for name, _ in response.headers):
        lines.append("connection: keep-alive" if keep_alive else "connection: close")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    if not head_only:
        writer.write(response.body)
    await writer.drain()
