"""Helpers the tests, the demo and the benchmarks share (hack/ is on pytest's path): a free TCP
port on loopback, waiting until something is so, and waiting until a URL answers 200."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeoutError(AssertionError):
    """What was waited for did not happen in time (an AssertionError: a test that waits fails)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the caller binds it soon after; races are rare)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for(probe: Callable[[], T | None], what: str, timeout: float = 60.0, interval: float = 0.2) -> T:
    """Call `probe` until it returns something truthy, and return that; WaitTimeoutError naming `what`
    after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise WaitTimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def answers_ok(url: str, timeout: float = 5.0) -> bool:
    """A GET of `url` is answered 200; refused, reset, timed out or any other status is False."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return bool(response.status == 200)
    except (OSError, ValueError):  # URLError and HTTPError are OSErrors; ValueError: a bad reply
        return False


def wait_until_ok(
    url: str,
    what: str,
    timeout: float = 60.0,
    *,
    process: subprocess.Popen[bytes] | None = None,
    log: Callable[[], str] | None = None,
) -> float:
    """Poll GET `url` until it answers 200 and return the seconds that took. If `process` (what
    serves `url`) exits first, fail at once rather than at the timeout; `log` (its output) ends
    the message of either failure."""
    started = time.monotonic()

    def probe() -> bool:
        if process is not None and process.poll() is not None:
            raise WaitTimeoutError(f"{what}: the process exited ({process.returncode}) before {url} answered")
        return answers_ok(url)

    try:
        wait_for(probe, f"{what} ({url} answering 200)", timeout=timeout)
    except WaitTimeoutError as e:
        raise WaitTimeoutError(f"{e}\n{log()}" if log is not None else str(e)) from None
    return time.monotonic() - started
