"""The slow-client and overload scenarios of ``make bench`` (called by bench/run.py).

- **Slow clients:** 256 connections trickle a byte a second, half of them their headers, half a
  body; each one cut by the server reconnects, so 256 are trickling throughout. Meanwhile wrk
  measures ``/healthz``, ``/readyz`` (GET, 4 connections) and ``/predict`` (8 connections), and
  the same three are measured without the tricklers first: the usual latency.
- **Overload:** wrk paces 960 connections so that they offer four times the server's capacity (the
  single-image rate it answered at 32 connections); meanwhile one observer sends predictions one
  at a time, back to back, and another the probes, and they record what they got and how fast.
  Reported: the rate offered and answered, the share refused, and the observers' latencies of
  answered and refused predictions and of probes. Then the same flood against the floor
  (bench/refuse_all.py: a Granian app that only answers 503), for what refusing costs here with no
  server behind it.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import resource
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import servers
from devkit import free_port, wait_for

BENCH = Path(__file__).resolve().parent
TRICKLERS = 256
JSON_HEADERS = {"Content-Type": "application/json"}


def run_wrk(url: str, script: Path, connections: int, seconds: float, *args: str) -> dict[str, Any]:
    command = ["wrk", "-t", "1", "-c", str(connections), "-d", f"{seconds:g}s", "--timeout", "10s"]
    command += ["-s", str(script), url, "--", *args]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    for line in result.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            stats: dict[str, Any] = json.loads(line.removeprefix("BENCH_RESULT "))
            stats["wrk_cores"] = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) / (
                time.monotonic() - started
            )
            return stats
    raise RuntimeError(f"wrk printed no result: {result.stdout[-500:]} {result.stderr[-500:]}")


def summary(stats: dict[str, Any]) -> dict[str, Any]:
    seconds = stats["duration_us"] / 1e6
    failed = sum(stats["errors"].values())
    return {
        "requests_per_s": (stats["requests"] - stats["errors"]["status"]) / seconds,
        "p50_ms": stats["latency_us"]["p50"] / 1000,
        "p99_ms": stats["latency_us"]["p99"] / 1000,
        "errors": failed,
    }


# --- slow clients ------------------------------------------------------------------------------


@dataclass
class Tricklers:
    """``count`` connections trickling a byte a second; each one the server cuts is replaced."""

    port: int
    count: int = TRICKLERS
    outcomes: dict[str, list[float]] = field(default_factory=lambda: {"body": [], "headers": []})
    answers: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Tricklers:
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    async def _main(self) -> None:
        await asyncio.gather(*(self._keep_trickling(index % 2 == 1) for index in range(self.count)))

    async def _keep_trickling(self, body: bool) -> None:
        while not self._stop.is_set():
            try:
                await self._trickle(body)
            except OSError:
                await asyncio.sleep(0.5)

    async def _trickle(self, body: bool) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        started = time.monotonic()
        if body:
            writer.write(
                b"POST /predict HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                b"Content-Length: 6000\r\n\r\n"
            )
        else:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: bench\r\n")
        try:
            while not self._stop.is_set():
                writer.write(b" " if body else b"X")
                await writer.drain()
                try:
                    answer = await asyncio.wait_for(reader.read(256), 1.0)
                except TimeoutError:
                    continue
                kind = "body" if body else "headers"
                self.outcomes[kind].append(time.monotonic() - started)
                status = answer[9:12].decode(errors="replace") if answer.startswith(b"HTTP/") else "closed"
                key = f"{kind}: {status}"
                self.answers[key] = self.answers.get(key, 0) + 1
                return
        finally:
            writer.close()


def slow_clients(base: str, port: int, payload_dir: Path, seconds: float) -> dict[str, Any]:
    """Probes and predictions without, then with, 256 trickling connections."""
    get = BENCH / "wrk" / "get.lua"
    post = BENCH / "wrk" / "requests.lua"

    def measure() -> dict[str, Any]:
        return {
            "/healthz": summary(run_wrk(base + "/healthz", get, 4, seconds)),
            "/readyz": summary(run_wrk(base + "/readyz", get, 4, seconds)),
            "/predict": summary(run_wrk(base + "/predict", post, 8, seconds, str(payload_dir))),
        }

    usual = measure()
    tricklers = Tricklers(port).start()
    time.sleep(2.0)  # all connected and trickling
    started = time.monotonic()
    under_attack = measure()
    # Long enough for stalled bodies to reach the server's BODY_TIMEOUT (15 s by default).
    time.sleep(max(0.0, 17.0 - (time.monotonic() - started)))
    tricklers.stop()
    cut = tricklers.outcomes

    def median(values: list[float]) -> float | None:
        return sorted(values)[len(values) // 2] if values else None

    return {
        "connections": tricklers.count,
        "usual": usual,
        "trickling": under_attack,
        "cut": {
            "bodies": len(cut["body"]),
            "body_seconds_median": median(cut["body"]),
            "headers": len(cut["headers"]),
            "header_seconds_median": median(cut["headers"]),
            "answers": dict(sorted(tricklers.answers.items())),
        },
    }


# --- overload ----------------------------------------------------------------------------------


PROBE_PORT_PREFIX = "probe port "


class Observer(threading.Thread):
    """Requests one at a time, each on a new connection, as a client would see them under load:
    ``requests`` in turn, then ``pause`` seconds, until ``done``; latencies keyed by what came back
    (``/predict 503``; ``probe port /healthz 200`` for a probe on the server's probe port)."""

    def __init__(
        self, requests: list[tuple[int, str, str, str]], body: bytes, headers: dict[str, str], pause: float
    ) -> None:
        super().__init__(daemon=True)
        self.requests, self.body, self.headers, self.pause = requests, body, headers, pause
        self.latencies: dict[str, list[float]] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            for port, method, path, prefix in self.requests:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                started = time.perf_counter()
                try:
                    connection.request(
                        method, path, body=self.body if method == "POST" else None, headers=self.headers
                    )
                    response = connection.getresponse()
                    response.read()
                    key = f"{prefix}{path} {response.status}"
                except OSError:
                    key = f"{prefix}{path} error"
                finally:
                    connection.close()
                self.latencies.setdefault(key, []).append((time.perf_counter() - started) * 1000)
            time.sleep(self.pause)


def observers(port: int, body: bytes, probe_port: int | None) -> list[Observer]:
    """One for predictions, back to back, so that a refusal's p99 rests on as many samples as the
    run allows (one outlier decided it when predictions took turns with four probes: some seventy
    samples in 5 s). One for the probes, each in turn with 10 ms between turns, on the probe port
    too if the server has one."""
    probes = [(port, "GET", "/healthz", ""), (port, "GET", "/readyz", "")]
    if probe_port is not None:
        probes += [(probe_port, "GET", path, PROBE_PORT_PREFIX) for path in ("/healthz", "/readyz")]
    return [
        Observer([(port, "POST", "/predict", "")], body, JSON_HEADERS, pause=0.0),
        Observer(probes, body, JSON_HEADERS, pause=0.01),
    ]


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "count": len(ordered),
        "p50_ms": ordered[len(ordered) // 2],
        "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
    }


def overload(
    base: str, port: int, payload_dir: Path, capacity: float, seconds: float, *, probe_port: int | None = None
) -> dict[str, Any]:
    """Four times ``capacity`` (single images/s) offered by 960 paced connections (as far as they
    can: a connection waits for its answer, so slow answers lower what it offers)."""
    connections = 960  # below MAX_CONNECTIONS (1024), with room for the observer
    offered = 4 * capacity
    delay_ms = 1000 * connections / offered
    body = next(iter(sorted(payload_dir.glob("*.body")))).read_bytes()
    watching = observers(port, body, probe_port)
    for observer in watching:
        observer.start()
    stats = run_wrk(
        base + "/predict",
        BENCH / "wrk" / "paced.lua",
        connections,
        seconds,
        str(payload_dir),
        f"{delay_ms:.3f}",
    )
    latencies: dict[str, list[float]] = {}
    for observer in watching:
        observer.done.set()
        observer.join(60)
        latencies.update(observer.latencies)  # their keys differ: /predict, and the probes
    duration = stats["duration_us"] / 1e6
    refused = stats["errors"]["status"]
    return {
        "capacity_per_s": capacity,
        "connections": connections,
        "delay_ms": delay_ms,
        "offered_per_s": stats["requests"] / duration,
        "answered_per_s": (stats["requests"] - refused) / duration,
        "refused_share": refused / max(1, stats["requests"]),
        "socket_errors": stats["errors"]["connect"] + stats["errors"]["read"] + stats["errors"]["timeout"],
        "wrk_p50_ms": stats["latency_us"]["p50"] / 1000,
        "wrk_p99_ms": stats["latency_us"]["p99"] / 1000,
        "observer": {key: _percentiles(values) for key, values in sorted(latencies.items())},
    }


def refusal_floor(payload_dir: Path, overload_figures: dict[str, Any], seconds: float) -> dict[str, Any]:
    """The flood of :func:`overload` (same connections, same pace) against bench/refuse_all.py,
    served like our server (one worker, uvloop, HTTP/1): wrk's latency of its refusals."""
    port = free_port()
    command = [sys.executable, "-m", "granian", "--interface", "rsgi", "--loop", "uvloop"]
    command += ["--workers", "1", "--http", "1", "--no-ws", "--log-level", "warning"]
    command += ["--host", "127.0.0.1", "--port", str(port), "refuse_all:app"]
    server = subprocess.Popen(
        command, cwd=BENCH, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        url = f"http://127.0.0.1:{port}/predict"
        wait_for(lambda: servers.post(url, b"{}", {}, timeout=2)[0] == 503, "the refusal floor server", 30)
        stats = run_wrk(
            url,
            BENCH / "wrk" / "paced.lua",
            overload_figures["connections"],
            seconds,
            str(payload_dir),
            f"{overload_figures['delay_ms']:.3f}",
        )
    finally:
        servers.stop(server)
    duration = stats["duration_us"] / 1e6
    return {
        "offered_per_s": stats["requests"] / duration,
        "refused_share": stats["errors"]["status"] / max(1, stats["requests"]),
        "wrk_p50_ms": stats["latency_us"]["p50"] / 1000,
        "wrk_p99_ms": stats["latency_us"]["p99"] / 1000,
    }
