"""mnist_server.probes: /healthz and /readyz on a listener of their own, and the loop heartbeat."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry
from server_support import FakeModel

from mnist_server import probes
from mnist_server.app import LOOP_STALL_SECONDS, App, create_app
from mnist_server.http import Response
from mnist_server.probes import LoopHeartbeat, ProbeListener, parse_head
from mnist_server.settings import Settings, SettingsError


def _exchange(sock: socket.socket, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``raw``, read one response: (status, headers, body)."""
    sock.sendall(raw)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    length = int(headers["content-length"])
    while len(body) < length and not raw.startswith(b"HEAD"):
        chunk = sock.recv(65536)
        assert chunk
        body += chunk
    return int(status_line.split(" ")[1]), headers, body


def _connect(listener: ProbeListener) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", listener.port), timeout=5)
    return sock


@pytest.fixture
def model() -> FakeModel:
    return FakeModel()


@pytest.fixture
def app(tmp_path: object, model: FakeModel) -> App:
    return create_app(Settings(host="127.0.0.1"), model, CollectorRegistry())


@pytest.fixture
def listener(app: App) -> Iterator[ProbeListener]:
    listener = ProbeListener("127.0.0.1", 0, app.probe_response).start()
    yield listener
    listener.close()


def test_probes_get_the_serving_ports_answers_on_a_kept_alive_connection(
    listener: ProbeListener, model: FakeModel
) -> None:
    with _connect(listener) as sock:
        status, headers, body = _exchange(sock, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 503
        assert json.loads(body)["reason"] == "not_ready"
        model.load()
        status, headers, body = _exchange(sock, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (status, json.loads(body)["status"]) == (200, "ready")
        assert headers["content-type"] == "application/json"
        assert headers["connection"] == "keep-alive"
        status, _, body = _exchange(sock, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (status, json.loads(body)) == (200, {"status": "alive"})


def test_a_head_request_gets_headers_only_and_close_is_honoured(listener: ProbeListener) -> None:
    with _connect(listener) as sock:
        status, headers, body = _exchange(sock, b"HEAD /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert (status, body) == (200, b"")
        assert int(headers["content-length"]) == len(b'{"status":"alive"}')
        assert headers["connection"] == "close"
        assert sock.recv(1) == b""  # closed after the answer


@pytest.mark.parametrize(
    ("head", "status", "reason"),
    [
        (b"GET /predict HTTP/1.1\r\n\r\n", 404, "route_not_found"),
        (b"GET /metrics HTTP/1.1\r\n\r\n", 404, "route_not_found"),
        (b"POST /healthz HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405, "method_not_allowed"),
        (b"GET /healthz HTTP/1.1\r\nContent-Length: 5\r\n\r\n", 400, "bad_request"),
        (b"GET /healthz HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "bad_request"),
        (b"GET /healthz\r\n\r\n", 400, "bad_request"),
        (b"GET /healthz HTTP/2.0\r\n\r\n", 400, "bad_request"),
        (b"\x00\xff\xfe garbage\r\n\r\n", 400, "bad_request"),
    ],
)
def test_anything_but_a_probe_gets_a_json_error_and_the_connection_closed(
    listener: ProbeListener, head: bytes, status: int, reason: str
) -> None:
    with _connect(listener) as sock:
        got, headers, body = _exchange(sock, head)
        assert (got, json.loads(body)["reason"]) == (status, reason)
        assert headers["connection"] == "close"
        if status == 405:
            assert headers["allow"] == "GET, HEAD"


def test_headers_over_the_limit_get_431(listener: ProbeListener) -> None:
    with _connect(listener) as sock:
        huge = b"GET /healthz HTTP/1.1\r\nX-Filler: " + b"a" * (probes.MAX_HEAD_BYTES + 10) + b"\r\n\r\n"
        status, _, body = _exchange(sock, huge)
        assert (status, json.loads(body)["reason"]) == (431, "bad_request")


def test_stalled_clients_are_cut_and_cannot_hold_the_probes_out(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(probes, "HEAD_TIMEOUT", 1.0)
    monkeypatch.setattr(probes, "MAX_CONNECTIONS", 4)
    listener = ProbeListener("127.0.0.1", 0, app.probe_response).start()
    stalled = [_connect(listener) for _ in range(4)]
    try:
        for sock in stalled:
            sock.sendall(b"GET /hea")  # and nothing more
            time.sleep(0.05)  # connected in this order
        # A probe past MAX_CONNECTIONS is answered: the longest-waiting stalled one makes room.
        with _connect(listener) as sock:
            assert _exchange(sock, b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")[0] == 200
        assert stalled[0].recv(1) == b""
        started = time.monotonic()
        for sock in stalled[1:]:
            assert sock.recv(1) == b""  # cut at the head deadline, without an answer
        assert time.monotonic() - started < 3
    finally:
        for sock in stalled:
            sock.close()
        listener.close()


def test_probes_are_answered_while_the_serving_loop_is_blocked(app: App, model: FakeModel) -> None:
    """The point of the listener: its own thread and loop. The serving loop here is blocked for
    the whole exchange, as a flood of requests would keep it busy."""
    model.load()
    serving = asyncio.new_event_loop()
    app.__rsgi_init__(serving)
    release = threading.Event()
    serving.call_soon(release.wait, 5)
    blocked = threading.Thread(target=serving.run_until_complete, args=(asyncio.sleep(0.05),))
    blocked.start()
    try:
        listener = ProbeListener("127.0.0.1", 0, app.probe_response).start()
        with _connect(listener) as sock:
            started = time.monotonic()
            assert _exchange(sock, b"GET /readyz HTTP/1.1\r\n\r\n")[0] == 200
            assert time.monotonic() - started < 1
        listener.close()
    finally:
        release.set()
        blocked.join()
        serving.close()


def test_a_port_in_use_fails_at_construction() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))  # no SO_REUSEPORT: a probe listener cannot share it
        taken.listen()
        with pytest.raises(OSError):
            ProbeListener("127.0.0.1", taken.getsockname()[1], _never_called)


async def _never_called(request: object) -> Response:
    raise AssertionError


def test_the_heartbeat_shows_a_stalled_loop_and_liveness_fails_with_it(model: FakeModel) -> None:
    heartbeat = LoopHeartbeat(period=0.05)
    assert heartbeat.stalled_for() == 0.0  # never started (WSGI): never stalled
    loop = asyncio.new_event_loop()
    try:
        heartbeat.start(loop)
        loop.run_until_complete(asyncio.sleep(0.2))
        assert heartbeat.stalled_for() < 0.05
        time.sleep(0.3)  # the loop does not run: no beats
        assert heartbeat.stalled_for() >= 0.2
    finally:
        loop.close()

    model.load()
    app = create_app(Settings(host="127.0.0.1"), model, CollectorRegistry())
    serving = asyncio.new_event_loop()
    try:
        app.__rsgi_init__(serving)
        serving.run_until_complete(asyncio.sleep(0))
    finally:
        serving.close()
    client = app.test_client()
    assert client.get("/healthz").status_code == 200
    now = time.monotonic()
    app.heartbeat.clock = lambda: now + app.heartbeat.period + LOOP_STALL_SECONDS + 2
    answer = client.get("/healthz")
    assert answer.status_code == 503
    assert answer.get_json()["reason"] == "loop_stalled"
    assert "has not run for 12 s" in answer.get_json()["error"]
    assert client.get("/readyz").status_code == 200  # readiness is about the model, not the loop


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n", ("GET", "/healthz", True)),
        (b"GET /readyz?verbose=1 HTTP/1.1\r\nConnection: Close\r\n\r\n", ("GET", "/readyz", False)),
        (b"HEAD /healthz HTTP/1.0\r\n\r\n", ("HEAD", "/healthz", False)),
        (b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", ("GET", "/healthz", True)),
        (b"GET /%68ealthz HTTP/1.1\r\n\r\n", ("GET", "/healthz", True)),
    ],
)
def test_parse_head(head: bytes, expected: tuple[str, str, bool]) -> None:
    assert parse_head(head) == expected


def test_the_probe_port_must_differ_from_the_serving_port() -> None:
    assert Settings().probe_port == 0
    with pytest.raises(SettingsError, match="PROBE_PORT must differ from MNIST_SERVER_PORT"):
        Settings.from_env({"MNIST_SERVER_PORT": "8080", "MNIST_SERVER_PROBE_PORT": "8080"})
    assert Settings.from_env({"MNIST_SERVER_PROBE_PORT": "8081"}).probe_port == 8081
