"""Running the app under Granian: WORKERS processes, each answering requests on an event loop.

Granian parses HTTP and keeps connections alive in Rust, and hands the app each request through
its RSGI interface, on the worker's event loop (uvloop). The loop reads bodies as they arrive, so
slow or stalled clients hold no thread (a body has BODY_TIMEOUT seconds, headers and idle
keep-alive connections KEEP_ALIVE_TIMEOUT); small requests are decoded on the loop and the
requests of one turn of the loop share a model call in the loop's thread (see
``mnist_server.batching``); images are decoded on THREADS decoding threads, large JSON on one.
(Before, the app ran under Granian's WSGI interface on THREADS request threads: four clients
sending a body slowly pinned all four.)

The master process never imports TensorFlow (it is not fork-safe and costs ~500 MB): each worker
builds its own app after the fork and loads the model in a background thread, so ``/healthz``
answers at once and ``/readyz`` turns 200 when the model has loaded and answered a warm-up.
A worker that dies is started again (twice within a few seconds: the server exits, and the
kubelet restarts the container). SIGTERM drains before it stops (``mnist_server.shutdown``).

With more than one worker, metrics use prometheus_client's multiprocess mode: each worker
writes its values to files in a fresh directory and ``/metrics`` (served by any worker)
aggregates them. Granian has no hook for a worker's death, so each worker, as it starts, tidies
up after workers that are gone (their live gauges, their readiness markers).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import shutil
import signal
import sys
import tempfile
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mnist_server.repository import ModelVersion
from mnist_server.settings import Settings

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable

    from mnist_server.app import App
    from mnist_server.shutdown import DrainingServer, Lifecycle

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
METRICS_DIR_PREFIX = "mnist-server-metrics-"
LOG_FORMAT = "%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s"
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def build_server(
    settings: Settings, multiprocess_dir: Path | None, lifecycle: Lifecycle | None = None
) -> DrainingServer:
    """The Granian server for these settings (not started). Each worker process builds its app
    with :func:`build_worker_app` once it has been forked; ``lifecycle`` is shared with them."""
    from granian.constants import HTTPModes, Interfaces, Loops, TaskImpl
    from granian.http import HTTP1Settings
    from granian.log import LogLevels

    from mnist_server.shutdown import DrainingServer, Lifecycle

    server = DrainingServer(
        "mnist-server",  # only a label: serve() hands Granian the loader that builds the app
        address=settings.host,
        port=settings.port,
        interface=Interfaces.RSGI,
        # HTTP/1.1 with keep-alive is what probes, Prometheus and model clients speak. Hyper's
        # header timeout also runs while a keep-alive connection waits for its next request: it
        # closes idle connections and cuts clients that trickle their headers.
        http=HTTPModes.http1,
        http1_settings=HTTP1Settings(keep_alive=True, header_read_timeout=settings.keep_alive_timeout * 1000),
        workers=settings.workers,
        blocking_threads=1,  # the one thread running the event loop (RSGI allows no other value)
        # uvloop (libuv) rather than asyncio's own loop: Granian hands each request over with a
        # call into the loop from its Rust threads, and uvloop's is cheaper. Same machine, one
        # worker, alternating runs: single images at c=32 4,100 vs 3,650 req/s (+12 %), batches
        # of 64 +2-4 %, c=1 unchanged; at four times capacity 15 % more answered.
        loop=Loops.uvloop,
        # asyncio's Task for the requests' coroutines. Granian's own ("rust", Python < 3.12) was
        # 20-30 % faster here but leaked about 2 KB per request (granian 2.8.9: +40 MB of RSS
        # after 18,000 requests, and every refused 4 MiB body kept).
        task_impl=TaskImpl.asyncio,
        # Open connections per worker: past it, new ones wait in the listen backlog.
        backpressure=settings.max_connections,
        respawn_failed_workers=True,
        log_level=LogLevels(settings.log_level),
        log_dictconfig=_granian_logging(),
        log_access=False,
        websockets=False,
        lifecycle=lifecycle or Lifecycle(),
        drain_delay_s=settings.drain_delay,
        graceful_timeout_s=settings.graceful_timeout,
    )
    server.on_shutdown(partial(_remove_metrics_dir, multiprocess_dir))
    return server


def serve(settings: Settings, model_version: ModelVersion) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    from mnist_server.shutdown import Lifecycle

    multiprocess_dir = prepare_metrics_mode(settings.workers)
    lifecycle = Lifecycle()
    server = build_server(settings, multiprocess_dir, lifecycle)
    # A plain function, frozen dataclasses and shared memory: picklable as a new process's
    # arguments, should workers ever be spawned, not forked.
    loader = partial(build_worker_app, settings, model_version, multiprocess_dir, lifecycle)
    server.serve(target_loader=loader, wrap_loader=False)


def build_worker_app(
    settings: Settings, model_version: ModelVersion, multiprocess_dir: Path | None, lifecycle: Lifecycle
) -> App:
    """In a worker process, after the fork: the app, with the model loading in the background."""
    # Until the worker's loop runs (see _once_the_loop_runs), SIGTERM would reach the handler
    # inherited from the master, which does nothing in a worker: the worker would ignore it and be
    # killed only after GRACEFUL_TIMEOUT. Nothing has been served yet, so leaving at once is right.
    for signum in _STOP_SIGNALS:
        signal.signal(signum, _exit_before_serving)
    from prometheus_client import CollectorRegistry, disable_created_metrics

    from mnist_server.app import create_app
    from mnist_server.backends import default_threads
    from mnist_server.batching import BatchingConfig
    from mnist_server.model import RepositoryModel, load_in_background

    log.info(
        "worker %d is loading model %s version %s", os.getpid(), model_version.name, model_version.version
    )
    prepare_worker_process()
    # `_created` series would double the exposition, and nothing here reads them.
    disable_created_metrics()  # type: ignore[no-untyped-call]
    model = RepositoryModel(
        model_version,
        backend=settings.backend,
        threads=settings.inference_threads or default_threads(settings.workers),
        batching=BatchingConfig(
            max_batch_size=settings.batch_max_size,
            max_wait_s=settings.batch_max_wait_ms / 1000,
            timeout_s=float(settings.timeout),
        ),
    )
    on_ready: Callable[[], None]
    if multiprocess_dir is None:
        app = create_app(settings, model, CollectorRegistry(), draining=lifecycle.draining)
        on_ready = lifecycle.mark_ready
    else:
        group = WorkerGroup(multiprocess_dir, settings.workers)
        forget_dead_workers(multiprocess_dir, group)
        app = create_app(
            settings,
            model,
            CollectorRegistry(),
            multiprocess_dir=multiprocess_dir,
            readiness_gate=group.not_ready,
            draining=lifecycle.draining,
        )
        pid = os.getpid()

        def on_ready() -> None:
            group.mark_ready(pid)
            lifecycle.mark_ready()

    def when_loaded() -> None:
        frozen = freeze_startup_heap()
        log.info(
            "worker %d is ready; the collector now skips the %d objects alive since start-up",
            os.getpid(),
            frozen,
        )
        on_ready()

    _start_probe_listener(settings, app)
    app.before_serving = _once_the_loop_runs(partial(load_in_background, model, on_ready=when_loaded))
    return app


def _start_probe_listener(settings: Settings, app: App) -> None:
    if not settings.probe_port:
        return
    from mnist_server.probes import ProbeListener

    try:
        listener = ProbeListener(settings.host, settings.probe_port, app.probe_response)
    except OSError as error:
        # Fatal: the kubelet would find nothing on the probe port and never see the pod ready.
        log.critical("cannot listen for probes on %s:%d: %s", settings.host, settings.probe_port, error)
        raise SystemExit(3) from error
    listener.start()
    log.info("worker %d answers probes on port %d", os.getpid(), listener.port)


class WorkerGroup:
    """Readiness of the whole group of workers, kept as one marker file per ready worker.

    The kubelet's probe reaches whichever worker accepts the connection. Were each worker to
    answer only for itself, the pod would turn ready when the first worker has loaded, and the
    requests that reach the others would fail until they have too; so every worker answers for
    all. Only markers of living processes count: a worker that died (and was replaced) does not.
    """

    def __init__(self, state_dir: Path, size: int) -> None:
        self.directory = state_dir / "ready"
        self.size = size

    def mark_ready(self, pid: int) -> None:
        self.directory.mkdir(exist_ok=True)
        (self.directory / str(pid)).touch()

    def forget(self, pid: int) -> None:
        (self.directory / str(pid)).unlink(missing_ok=True)

    def ready_pids(self) -> list[int]:
        if not self.directory.is_dir():
            return []
        return [int(p.name) for p in self.directory.iterdir() if p.name.isdigit() and _alive(int(p.name))]

    def not_ready(self) -> str | None:
        ready = len(self.ready_pids())
        if ready >= self.size:
            return None
        return f"{ready} of {self.size} workers have loaded the model"


def forget_dead_workers(multiprocess_dir: Path, group: WorkerGroup) -> list[int]:
    """Drop what workers that are gone left behind: their live gauges (which must vanish with
    their process) and their readiness markers. Their counters and histograms stay, so that
    totals never go backwards. Returns the pids tidied up."""
    from prometheus_client import multiprocess

    pids = {_pid_of(path) for path in multiprocess_dir.glob("gauge_live*.db")}
    if group.directory.is_dir():
        pids |= {int(p.name) for p in group.directory.iterdir() if p.name.isdigit()}
    dead = sorted(pid for pid in pids if pid is not None and not _alive(pid))
    for pid in dead:
        # Another worker starting at the same moment may have removed them first.
        with contextlib.suppress(FileNotFoundError):
            multiprocess.mark_process_dead(pid, str(multiprocess_dir))  # type: ignore[no-untyped-call]
        group.forget(pid)
    return dead


def _pid_of(path: Path) -> int | None:
    # prometheus_client names its files <type>_<mode>_<pid>.db
    tail = path.stem.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def prepare_metrics_mode(workers: int) -> Path | None:
    """Choose prometheus_client's mode (it reads the environment once, on import)."""
    if "prometheus_client" in sys.modules:
        raise RuntimeError("prometheus_client was imported before its multiprocess mode was chosen")
    if workers == 1:
        # A stray value from the environment would switch a single process into file mode.
        os.environ.pop(MULTIPROC_ENV, None)
        return None
    directory = Path(tempfile.mkdtemp(prefix=METRICS_DIR_PREFIX))
    os.environ[MULTIPROC_ENV] = str(directory)
    return directory


def _remove_metrics_dir(directory: Path | None) -> None:
    if directory is not None and directory.name.startswith(METRICS_DIR_PREFIX):
        shutil.rmtree(directory, ignore_errors=True)


def _exit_before_serving(signum: int, frame: object) -> None:
    logging.shutdown()
    os._exit(0)


def _once_the_loop_runs(start: Callable[[], object]) -> Callable[[asyncio.AbstractEventLoop], None]:
    """For :attr:`App.before_serving`: ``start`` (the model load) in the loop's first turn, and
    until then a SIGTERM or SIGINT still ends the worker at once.

    Granian hands the two signals to the loop just before it calls this, but uvloop hears signals
    only while it runs and drops one that arrives before: the worker ignored that SIGTERM, loaded
    the model and was killed after GRACEFUL_TIMEOUT. So the early handler stays until the loop
    turns. The load waits for that turn too: importing TensorFlow holds the GIL for long
    stretches, and started earlier it slowed the main thread on its way to the loop.
    """

    def before_serving(loop: asyncio.AbstractEventLoop) -> None:
        the_loops = {signum: signal.getsignal(signum) for signum in _STOP_SIGNALS}
        for signum in _STOP_SIGNALS:
            signal.signal(signum, _exit_before_serving)

        def serving() -> None:
            for signum, handler in the_loops.items():
                signal.signal(signum, handler)
                signal.siginterrupt(signum, False)  # as the loop had it: restart interrupted calls
            start()

        loop.call_soon(serving)

    return before_serving


def _granian_logging() -> dict[str, Any]:
    """Granian's own messages in the same format and on the same stream (stderr) as ours."""
    return {
        "formatters": {"generic": {"()": "logging.Formatter", "fmt": LOG_FORMAT}},
        "handlers": {
            "console": {
                "formatter": "generic",
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
            },
            "access": {
                "formatter": "generic",
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
            },
        },
    }


# How long the loop's thread may keep the GIL while another thread waits for it (CPython's default
# is 5 ms). Granian's I/O thread takes the GIL to hand the loop each request, and the loop's thread
# is busy most of the time under load: at 5 ms the I/O thread, and every connection it serves,
# waited. Shorter, a flood at four times capacity is refused faster and more of it answered (at
# 0.5 ms against 5: wrk's p50 / p99 14-15 / 31-35 against 16-17 / 34-39 ms, 3-7 % more answered;
# the 503's p99 21-23 ms at 0.2 against 24-28 at 0.5 and 29-34 at 1 ms; docs/server.md). Without
# a flood, throughput is unchanged within the noise (single images at 1 and 32 connections, JSON
# batches of 64, the tensorflow backend). Shorter still (0.1, 0.05, 0.02 ms) changed nothing: two
# floods each, one sitting, 503 p50 29-42 ms against 37-40 at 0.2 ms, within the noise.
GIL_SWITCH_INTERVAL_S = 0.0002


def prepare_worker_process() -> None:
    """Process-wide settings of a worker, set before it loads anything: glibc's allocator
    (:func:`bound_malloc`) and the GIL's switch interval (``GIL_SWITCH_INTERVAL_S``)."""
    bound_malloc()
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)


def freeze_startup_heap() -> int:
    """Put every object alive once the model has loaded (modules, the runtime's objects, the
    model) out of the cyclic garbage collector's reach, for good (``gc.freeze``); returns how many.

    They live as long as the worker, yet each full collection walked them all. A flood keeps
    enough request objects alive across collections to set off two full ones a second, and each
    stalled the event loop for as long as the walk took: with TensorFlow's ~285,000 objects
    120-160 ms (at four times capacity a 503's p99 was 144 ms, frozen 27 ms), with ONNX
    Runtime's ~40,000 13-24 ms. Frozen, a full collection takes under 1 ms. Start-up's garbage
    is collected first, so that none of it is kept."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def bound_malloc(threshold: int = 8 * 1024 * 1024, arenas: int = 2) -> bool:
    """Make glibc give large buffers back to the system as soon as they are freed.

    By default glibc raises its mmap threshold to the size of the largest buffer freed so far
    (up to 32 MiB), after which request bodies, decoded images and arrays of a few MiB come from
    heaps that keep their pages, one heap per thread that allocates: a worker's RSS then climbs
    to several times the memory its requests hold at once (measured: ~1.1 GiB for a worst-case
    corpus that holds less than 300 MiB). A fixed threshold and two heaps keep RSS near what is
    in use.

    The threshold is also how much free memory a heap keeps at its top (glibc's trim threshold)
    and it is not lower, because orjson allocates about 12 bytes per byte of JSON it parses:
    4.4 MiB for a 64-image batch. Had that buffer come from mmap, or been trimmed off the heap,
    at each request, every request would fault it in afresh (at 1 MiB: ~1,000 page faults and
    ~1.5 ms of CPU a request; 64-image JSON batches 15 % slower, 136 against 158 requests/s).
    The cost: the worst-case corpus peaked ~30 MB higher (303-307 against 272-280 MB at 16 clients).
    Returns False where there is no glibc (nothing to do).
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8  # <malloc.h>
    settings = ((m_mmap_threshold, threshold), (m_trim_threshold, threshold), (m_arena_max, arenas))
    return all(mallopt(option, value) for option, value in settings)
