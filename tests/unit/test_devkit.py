"""hack/devkit.py, which every suite, the demo and the benchmarks wait with."""

from __future__ import annotations

import http.server
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from devkit import free_ports
from testkit import WaitTimeoutError, answers_ok, free_port, wait_for, wait_until_ok


class _Flaky(http.server.BaseHTTPRequestHandler):
    """503 for the first two GETs, then 200."""

    calls = 0

    def do_GET(self) -> None:
        type(self).calls += 1
        self.send_response(200 if type(self).calls > 2 else 503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def flaky_url() -> Iterator[str]:
    _Flaky.calls = 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/readyz"
    finally:
        server.shutdown()
        server.server_close()


def test_wait_for_returns_the_first_truthy_result_and_names_what_timed_out() -> None:
    results = iter([None, 0, "", "here"])
    assert wait_for(lambda: next(results), "a value", timeout=5, interval=0) == "here"
    with pytest.raises(WaitTimeoutError, match="timed out after 0 s waiting for nothing at all"):
        wait_for(lambda: None, "nothing at all", timeout=0.05, interval=0.01)


def test_wait_until_ok_waits_through_refusals_and_other_statuses(flaky_url: str) -> None:
    assert not answers_ok(f"http://127.0.0.1:{free_port()}/")  # refused
    seconds = wait_until_ok(flaky_url, "the flaky server", timeout=10)
    assert _Flaky.calls == 3 and seconds >= 0


def test_wait_until_ok_fails_at_once_when_the_process_exits_and_shows_its_log() -> None:
    process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    process.wait()
    with pytest.raises(WaitTimeoutError, match=r"(?s)the process exited \(3\).*it said goodbye"):
        wait_until_ok(f"http://127.0.0.1:{free_port()}/", "a server", timeout=30, process=process,
                      log=lambda: "it said goodbye")  # fmt: skip


def test_wait_until_ok_times_out_with_the_log() -> None:
    with pytest.raises(WaitTimeoutError, match=r"(?s)timed out after 0 s waiting for a server .*the log"):
        wait_until_ok(f"http://127.0.0.1:{free_port()}/", "a server", timeout=0.1, log=lambda: "the log")


def test_free_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = free_ports(10)
    assert len(set(ports)) == 10
    for port in ports:
        assert port < low  # where no client's source port can take it first
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_a_port_in_use_is_never_handed_out() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", free_port()))
        taken.listen()
        port = taken.getsockname()[1]
        assert all(port not in free_ports(20) for _ in range(50))


def test_ports_asked_for_one_at_a_time_are_not_handed_out_twice() -> None:
    # None is bound in between, as when a caller picks a server's two ports before starting it.
    ports = [free_port() for _ in range(1000)]
    assert len(set(ports)) == 1000
