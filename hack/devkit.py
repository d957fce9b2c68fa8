"""Helpers the tests, the demo and the benchmarks share (hack/ is on pytest's path): a free TCP
port on loopback, waiting until something is so, and waiting until a URL answers 200."""

from __future__ import annotations

import collections
import contextlib
import random
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class WaitTimeoutError(AssertionError):
    """What was waited for did not happen in time (an AssertionError: a test that waits fails)."""


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct ports nothing listens on right now, for servers the caller starts soon after.

    Chosen below the kernel's ephemeral range on purpose: bind(0) picks from that range, and so
    does every outgoing connection for its source port, so a port picked there can be taken by a
    client (a load test opens hundreds a second) before its server binds it: a cluster start once
    failed on kube-apiserver's port that way. Below the range only listeners compete.
    """
    below_ephemeral = range(_LOWEST_PORT, _ephemeral_low())
    chosen: list[int] = []
    with _LOCK, contextlib.ExitStack() as held:  # held until all are chosen: none handed out twice
        for candidate in _RANDOM.sample(below_ephemeral, k=min(count * 50, len(below_ephemeral))):
            if len(chosen) == count:
                break
            if candidate in _RECENT:
                continue
            sock = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            try:
                sock.bind((host, candidate))
            except OSError:
                continue
            chosen.append(candidate)
        while len(chosen) < count:  # a crowded range: the kernel's choice after all
            sock = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            chosen.append(int(sock.getsockname()[1]))
        _RECENT.extend(chosen)
    return chosen


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (see `free_ports`)."""
    return free_ports(1, host)[0]


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


# Registered ports (IANA: 1024-49151) well above the well-known services a test host may run.
_LOWEST_PORT = 20000
_RANDOM = random.SystemRandom()
# The ports handed out lately. A caller often asks for two ports one at a time and binds neither
# before the second call (an operator's health and metrics ports): free again, the first port
# could be drawn again (once in ~12,000 draws; an operator in CI got both on one port).
_RECENT: collections.deque[int] = collections.deque(maxlen=1024)
_LOCK = threading.Lock()


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
