"""Settings from MNIST_SERVER_* variables, the mnist-server CLI's validation, and the Granian server."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mnist_server import cli
from mnist_server.serving import WorkerGroup, build_server, forget_dead_workers
from mnist_server.settings import VARIABLES, Settings, SettingsError, unknown_variables
from mnist_server.shutdown import DrainingServer, Lifecycle


def test_defaults_suit_a_container() -> None:
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.model_root == Path("/models")
    assert settings.model_name == "mnist"
    assert settings.model_version is None
    assert settings.host == "0.0.0.0"
    assert settings.port == 8080
    assert settings.workers == 1
    assert settings.threads == 4
    assert settings.max_body_bytes == 4 * 1024 * 1024


def test_every_variable_is_read() -> None:
    env = {
        "MNIST_SERVER_MODEL_ROOT": "/srv/models",
        "MNIST_SERVER_MODEL_NAME": "digits",
        "MNIST_SERVER_MODEL_VERSION": "7",
        "MNIST_SERVER_HOST": "127.0.0.1",
        "MNIST_SERVER_PORT": "9000",
        "MNIST_SERVER_PROBE_PORT": "9001",
        "MNIST_SERVER_WORKERS": "2",
        "MNIST_SERVER_THREADS": "4",
        "MNIST_SERVER_MAX_BODY_BYTES": "65536",
        "MNIST_SERVER_MAX_BATCH": "16",
        "MNIST_SERVER_LOG_LEVEL": "DEBUG",
        "MNIST_SERVER_TIMEOUT": "30",
        "MNIST_SERVER_GRACEFUL_TIMEOUT": "10",
        "MNIST_SERVER_DRAIN_DELAY": "3",
        "MNIST_SERVER_BACKEND": "ONNX",
        "MNIST_SERVER_BATCH_MAX_SIZE": "32",
        "MNIST_SERVER_BATCH_MAX_WAIT_MS": "2.5",
        "MNIST_SERVER_INFERENCE_THREADS": "1",
        "MNIST_SERVER_MAX_INFLIGHT": "48",
        "MNIST_SERVER_BODY_TIMEOUT": "20",
        "MNIST_SERVER_KEEP_ALIVE_TIMEOUT": "9",
        "MNIST_SERVER_MAX_CONNECTIONS": "300",
    }
    assert {var.env_name for var in VARIABLES} == set(env)
    assert Settings.from_env(env) == Settings(
        model_root=Path("/srv/models"),
        model_name="digits",
        model_version="7",
        host="127.0.0.1",
        port=9000,
        probe_port=9001,
        workers=2,
        threads=4,
        max_body_bytes=65536,
        max_batch=16,
        log_level="debug",
        timeout=30,
        graceful_timeout=10,
        drain_delay=3,
        backend="onnx",
        batch_max_size=32,
        batch_max_wait_ms=2.5,
        inference_threads=1,
        max_inflight=48,
        body_timeout=20,
        keep_alive_timeout=9,
        max_connections=300,
    )


def test_latest_and_empty_mean_the_newest_version() -> None:
    assert Settings.from_env({"MNIST_SERVER_MODEL_VERSION": "latest"}).model_version is None
    assert Settings.from_env({"MNIST_SERVER_MODEL_VERSION": " "}).model_version is None


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("MNIST_SERVER_PORT", "eighty", "not an integer"),
        ("MNIST_SERVER_PORT", "70000", "between 1 and 65535"),
        ("MNIST_SERVER_WORKERS", "0", "between 1"),
        ("MNIST_SERVER_THREADS", "-2", "between 1"),
        ("MNIST_SERVER_MAX_BATCH", "1.5", "not an integer"),
        ("MNIST_SERVER_MAX_BODY_BYTES", "4Mi", "not an integer"),
        ("MNIST_SERVER_LOG_LEVEL", "loud", "one of debug"),
        ("MNIST_SERVER_MODEL_NAME", "My_Model", "lowercase"),
        ("MNIST_SERVER_MODEL_VERSION", "../etc", "lowercase"),
        ("MNIST_SERVER_HOST", "a b", "IP address"),
        ("MNIST_SERVER_BACKEND", "torch", "one of auto, tensorflow, onnx"),
        ("MNIST_SERVER_BATCH_MAX_SIZE", "0", "between 1"),
        ("MNIST_SERVER_BATCH_MAX_WAIT_MS", "soon", "not a number"),
        ("MNIST_SERVER_BATCH_MAX_WAIT_MS", "-1", "between 0 and 1000"),
    ],
)
def test_invalid_values_name_the_variable_and_the_value(name: str, value: str, fragment: str) -> None:
    with pytest.raises(SettingsError) as error:
        Settings.from_env({name: value})
    message = str(error.value)
    assert name in message
    assert repr(value) in message
    assert fragment in message


def test_unknown_prefixed_variables_are_reported() -> None:
    env = {"MNIST_SERVER_WORKER": "2", "MNIST_SERVER_PORT": "1", "HOME": "/root"}
    assert unknown_variables(env) == ["MNIST_SERVER_WORKER"]


def test_cli_exits_2_with_the_message_and_no_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MNIST_SERVER_PORT", "eighty")
    assert cli.main([]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "mnist-server: MNIST_SERVER_PORT='eighty': not an integer"


def test_cli_exits_2_when_the_model_is_missing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("MNIST_SERVER_MODEL_ROOT", str(tmp_path))
    assert cli.main(["--model-version", "4"]) == 2
    assert "not a complete model version" in capsys.readouterr().err


def test_cli_flag_errors_name_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--workers", "none"])
    assert exit_info.value.code == 2
    assert "--workers 'none': not an integer" in capsys.readouterr().err


def test_cli_help_documents_every_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for var in VARIABLES:
        assert var.env_name in out
        assert var.flag in out


def test_granian_serves_the_rsgi_app_with_the_settings() -> None:
    from granian.constants import HTTPModes, Interfaces, Loops

    settings = Settings(
        host="127.0.0.1",
        port=8123,
        workers=3,
        threads=5,
        graceful_timeout=7,
        keep_alive_timeout=4,
        max_connections=200,
    )
    server = build_server(settings, None)
    assert (server.bind_addr, server.bind_port) == ("127.0.0.1", 8123)
    # The event loop reads bodies: slow clients hold no thread (threads only decode).
    assert server.interface == Interfaces.RSGI
    assert server.loop == Loops.uvloop  # Granian's hand-over of a request costs less on it
    assert server.http == HTTPModes.http1
    assert (server.workers, server.blocking_threads) == (3, 1)
    # Idle keep-alive connections and header trickling are cut by hyper's header timeout, and
    # open connections are bounded per worker.
    assert server.http1_settings is not None
    assert server.http1_settings.header_read_timeout == 4000
    assert server.backpressure == 200
    assert server.workers_kill_timeout == 7
    assert server.respawn_failed_workers is True  # a worker that dies is replaced
    assert server.log_access is False


def test_the_drain_must_leave_time_for_in_flight_requests() -> None:
    with pytest.raises(SettingsError) as error:
        Settings.from_env({"MNIST_SERVER_DRAIN_DELAY": "25"})
    assert str(error.value) == (
        "MNIST_SERVER_DRAIN_DELAY=25 must be less than MNIST_SERVER_GRACEFUL_TIMEOUT=25, which bounds "
        "the whole shutdown (in-flight requests need time after the drain)"
    )
    assert Settings.from_env({"MNIST_SERVER_DRAIN_DELAY": "0"}).drain_delay == 0
    # GRACEFUL_TIMEOUT 0 waits for in-flight requests however long they take: any drain fits.
    assert Settings.from_env({"MNIST_SERVER_GRACEFUL_TIMEOUT": "0", "MNIST_SERVER_DRAIN_DELAY": "40"})


def test_cli_exits_2_when_the_drain_is_longer_than_the_graceful_timeout(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MNIST_SERVER_GRACEFUL_TIMEOUT", "5")
    assert cli.main(["--drain-delay", "5"]) == 2
    message = "MNIST_SERVER_DRAIN_DELAY=5 must be less than MNIST_SERVER_GRACEFUL_TIMEOUT=5"
    assert message in capsys.readouterr().err


def draining_server(drain_delay: int, lifecycle: Lifecycle) -> DrainingServer:
    return build_server(Settings(graceful_timeout=7, drain_delay=drain_delay), None, lifecycle)


def test_sigterm_fails_readiness_at_once_and_stops_the_workers_after_the_drain() -> None:
    lifecycle = Lifecycle()
    lifecycle.mark_ready()
    server = draining_server(1, lifecycle)
    started = time.monotonic()

    server.signal_handler_interrupt(signal.SIGTERM, None)

    assert lifecycle.draining()
    assert not server.interrupt_signal  # still serving
    assert server.main_loop_interrupt.wait(5)  # Granian's main loop now stops the workers
    assert time.monotonic() - started >= 1.0
    assert server.interrupt_signal
    # The in-flight requests get what the drain left of the graceful timeout (7 s).
    assert server.workers_kill_timeout == 5


def test_a_second_signal_or_sigint_skips_the_drain() -> None:
    lifecycle = Lifecycle()
    lifecycle.mark_ready()
    server = draining_server(5, lifecycle)
    server.signal_handler_interrupt(signal.SIGTERM, None)
    assert not server.interrupt_signal
    server.signal_handler_interrupt(signal.SIGTERM, None)
    assert server.interrupt_signal
    assert server.workers_kill_timeout == 6  # 7 s, less the moment the drain lasted

    interactive = draining_server(5, Lifecycle())
    interactive.lifecycle.mark_ready()
    interactive.signal_handler_interrupt(signal.SIGINT, None)  # Ctrl-C
    assert interactive.interrupt_signal
    assert interactive.lifecycle.draining()


def test_a_server_that_was_never_ready_stops_at_once() -> None:
    server = draining_server(5, Lifecycle())
    server.signal_handler_interrupt(signal.SIGTERM, None)
    assert server.interrupt_signal


def test_the_lifecycle_flags_are_shared_with_forked_workers() -> None:
    lifecycle = Lifecycle()
    worker = multiprocessing.get_context("fork").Process(target=lifecycle.mark_ready)
    worker.start()
    worker.join(60)
    assert lifecycle.ever_ready
    assert not lifecycle.draining()


def test_ipv6_hosts_are_accepted() -> None:
    assert build_server(Settings(host="::"), None).bind_addr == "::"


def test_the_metrics_mode_is_chosen_before_prometheus_client_is_imported(tmp_path: Path) -> None:
    # A fresh interpreter: in this one prometheus_client is imported already.
    script = (
        "import os\n"
        "from mnist_server.serving import prepare_metrics_mode\n"
        "one = prepare_metrics_mode(1)\n"
        "assert one is None and 'PROMETHEUS_MULTIPROC_DIR' not in os.environ\n"
        "many = prepare_metrics_mode(2)\n"
        "from prometheus_client import values\n"
        "same = os.environ['PROMETHEUS_MULTIPROC_DIR'] == str(many)\n"
        "print(many.is_dir(), same, values.ValueClass.__name__)\n"
        "many.rmdir()\n"
    )
    env = {"PYTHONPATH": str(Path(cli.__file__).parents[1]), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True", "MmapedValue"]


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait(timeout=60)
    return process.pid


def test_the_worker_group_is_ready_only_when_every_living_worker_is(tmp_path: Path) -> None:
    sibling = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        group = WorkerGroup(tmp_path, 2)
        assert group.not_ready() == "0 of 2 workers have loaded the model"
        group.mark_ready(os.getpid())
        group.mark_ready(os.getpid())
        assert group.not_ready() == "1 of 2 workers have loaded the model"
        WorkerGroup(tmp_path, 2).mark_ready(sibling.pid)  # another worker process
        assert group.not_ready() is None
    finally:
        sibling.kill()
        sibling.wait(timeout=60)
    # A worker that died no longer counts, even before anyone tidies up after it.
    assert group.not_ready() == "1 of 2 workers have loaded the model"
    group.forget(sibling.pid)
    group.forget(999_999_999)  # unknown: nothing to do


def test_a_new_worker_tidies_up_after_dead_ones(tmp_path: Path) -> None:
    gone = dead_pid()
    group = WorkerGroup(tmp_path, 2)
    group.mark_ready(gone)
    group.mark_ready(os.getpid())
    for pid in (gone, os.getpid()):  # the file names prometheus_client gives each worker's values
        (tmp_path / f"gauge_livemax_{pid}.db").write_bytes(b"")
        (tmp_path / f"counter_{pid}.db").write_bytes(b"")
    assert forget_dead_workers(tmp_path, group) == [gone]
    assert sorted(p.name for p in tmp_path.glob("gauge_live*.db")) == [f"gauge_livemax_{os.getpid()}.db"]
    assert (tmp_path / f"counter_{gone}.db").exists()  # totals never go backwards
    assert group.ready_pids() == [os.getpid()]


# A Granian worker's start, step by step: the loop gets the stop signals (as in Granian's
# set_loop_signals), the app's __rsgi_init__ runs (and with it App.before_serving), then the loop
# runs until the loop's handler is called. argv[1] says when the SIGTERM comes.
_WORKER_START = """
import asyncio, os, signal, sys, time
import uvloop
from mnist_server import serving

loop = uvloop.new_event_loop()
stopped = asyncio.Event()
loop.add_signal_handler(signal.SIGTERM, stopped.set)
started = []
serving._once_the_loop_runs(lambda: started.append(signal.getsignal(signal.SIGTERM)))(loop)
if sys.argv[1] == "before the loop runs":
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.2)
else:
    loop.call_later(0.2, os.kill, os.getpid(), signal.SIGTERM)
try:
    loop.run_until_complete(asyncio.wait_for(stopped.wait(), 5))
except TimeoutError:
    sys.exit("the SIGTERM was lost")
print("stopped by the loop; the load started", len(started), "time(s), under", started[0].__qualname__)
"""


@pytest.mark.parametrize("when", ["before the loop runs", "once it runs"])
def test_a_sigterm_stops_a_starting_worker_whenever_it_comes(when: str) -> None:
    run = subprocess.run(
        [sys.executable, "-c", _WORKER_START, when], capture_output=True, text=True, timeout=60, check=False
    )
    assert run.returncode == 0, run.stderr
    if when == "before the loop runs":
        # uvloop would have dropped it (it hears signals only while it runs): the worker leaves
        # at once, nothing loaded, nothing served.
        assert run.stdout == ""
    else:
        # The load starts in the loop's first turn, with the loop's handler back in place.
        assert run.stdout == "stopped by the loop; the load started 1 time(s), under Loop.__sighandler\n"


_PARSE_FAULTS = """
import resource
import numpy as np, orjson
from mnist_server.serving import bound_malloc

assert bound_malloc()
rng = np.random.default_rng(0)
# Like MNIST digits: four pixels in five blank. About 380 KB, as in `make bench`.
images = np.where(rng.random((64, 28, 28)) < 0.8, 0.0, rng.random((64, 28, 28)))
body = orjson.dumps({"inputs": images.tolist()})
orjson.loads(body)  # the first parse grows the heap
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    orjson.loads(body)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""


def test_parsing_a_json_batch_again_reuses_the_workers_heap() -> None:
    # orjson's buffer for a 64-image body is 4.4 MiB. Mapped afresh at each parse (a 1 MiB mmap
    # threshold) it cost ~1,000 page faults a request and made JSON batches 15 % slower.
    faults = _python_output(_PARSE_FAULTS)
    assert float(faults) < 50, faults


_FREEZE = """
import gc, weakref
from mnist_server.serving import freeze_startup_heap

class Node:
    pass

def cycle():
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)

model = [[float(i)] for i in range(50_000)]  # alive for good, like a loaded model
start_up_garbage = cycle()
frozen = freeze_startup_heap()
request_garbage = cycle()
left = len(gc.get_objects())  # what a full collection still walks (frozen objects are not listed)
gc.collect()
print(frozen, left, start_up_garbage() is None, request_garbage() is None)
"""


def test_what_lives_since_start_up_is_out_of_the_collectors_reach() -> None:
    # A full collection walked every object of the worker: with TensorFlow's, a 120-160 ms stall
    # of the loop, twice a second under a flood.
    frozen, left, start_up_collected, later_collected = _python_output(_FREEZE).split()
    assert int(frozen) > 50_000
    assert int(left) < 1_000
    # Start-up's garbage was collected before the freeze, and what comes later still is.
    assert (start_up_collected, later_collected) == ("True", "True")


def test_a_worker_lets_the_io_thread_take_the_gil_within_a_fraction_of_a_millisecond() -> None:
    # Granian's I/O thread takes the GIL for every request it hands over; at CPython's default
    # 5 ms a busy loop kept it (and every connection it serves) waiting.
    code = (
        "import sys\n"
        "from mnist_server.serving import GIL_SWITCH_INTERVAL_S, prepare_worker_process\n"
        "assert sys.getswitchinterval() == 0.005\n"
        "prepare_worker_process()\n"
        "print(round(sys.getswitchinterval(), 6), GIL_SWITCH_INTERVAL_S)\n"
    )
    assert _python_output(code).split() == ["0.0002", "0.0002"]


def _python_output(script: str) -> str:
    """What ``script`` prints, run in a fresh interpreter (process-wide settings stay there)."""
    command = [sys.executable, "-c", script]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=True).stdout
