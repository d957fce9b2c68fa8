"""Running the app under gunicorn: WORKERS processes x THREADS threads (the ``gthread`` worker).

The master process never imports TensorFlow (it is not fork-safe and costs ~500 MB): each worker
builds its own app after the fork and loads the model in a background thread, so ``/healthz``
answers at once and ``/readyz`` turns 200 when the model has loaded and answered a warm-up.

With more than one worker, metrics use prometheus_client's multiprocess mode: each worker
writes its values to files in a fresh directory, ``/metrics`` (served by any worker) aggregates
them, and the master marks a worker's live gauges dead when the worker exits.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gunicorn.app.base import BaseApplication

from mnist_server.repository import ModelVersion
from mnist_server.settings import Settings

if TYPE_CHECKING:
    from flask import Flask

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# gunicorn's worker heartbeat is a file it fchmods every second; on a disk-backed overlay that
# can block, so use memory where it exists (as gunicorn's docs advise for containers).
SHM = Path("/dev/shm")


class ServerApplication(BaseApplication):  # type: ignore[misc]  # gunicorn is untyped
    def __init__(
        self, settings: Settings, model_version: ModelVersion, multiprocess_dir: Path | None
    ) -> None:
        self.settings = settings
        self.model_version = model_version
        self.multiprocess_dir = multiprocess_dir
        super().__init__(prog="mnist-server")

    def load_config(self) -> None:
        s = self.settings
        host = f"[{s.host}]" if ":" in s.host else s.host
        options: dict[str, Any] = {
            "bind": [f"{host}:{s.port}"],
            "worker_class": "gthread",
            "workers": s.workers,
            "threads": s.threads,
            "timeout": s.timeout,
            "graceful_timeout": s.graceful_timeout,
            "loglevel": s.log_level,
            "errorlog": "-",
            "accesslog": None,
            "preload_app": False,  # load in each worker, after the fork
            "proc_name": "mnist-server",
            "control_socket_disable": True,  # would otherwise create a socket under $HOME
            "worker_tmp_dir": str(SHM) if SHM.is_dir() else None,
            "worker_exit": _worker_exit,
            "child_exit": _child_exit,
            "on_exit": _on_exit,
        }
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        return build_worker_app(self.settings, self.model_version, self.multiprocess_dir)


def build_worker_app(settings: Settings, model_version: ModelVersion, multiprocess_dir: Path | None) -> Flask:
    from prometheus_client import CollectorRegistry, disable_created_metrics

    from mnist_server.app import create_app
    from mnist_server.backends import default_threads
    from mnist_server.batching import BatchingConfig
    from mnist_server.model import SavedModel, load_in_background

    # `_created` series would double the exposition, and nothing here reads them.
    disable_created_metrics()  # type: ignore[no-untyped-call]
    model = SavedModel(
        model_version,
        backend=settings.backend,
        threads=settings.inference_threads or default_threads(settings.workers),
        batching=BatchingConfig(
            max_batch_size=settings.batch_max_size,
            max_wait_s=settings.batch_max_wait_ms / 1000,
            timeout_s=float(settings.timeout),
        ),
    )
    if multiprocess_dir is None:
        app = create_app(settings, model, CollectorRegistry())
        load_in_background(model)
        return app
    group = WorkerGroup(multiprocess_dir, settings.workers)
    app = create_app(
        settings,
        model,
        CollectorRegistry(),
        multiprocess_dir=multiprocess_dir,
        readiness_gate=group.not_ready,
    )
    pid = os.getpid()
    load_in_background(model, on_ready=lambda: group.mark_ready(pid))
    return app


class WorkerGroup:
    """Readiness of the whole group of workers, kept as one marker file per ready worker.

    The kubelet's probe reaches whichever worker accepts the connection. Were each worker to
    answer only for itself, the pod would turn ready when the first worker has loaded, and the
    requests that reach the others would fail until they have too; so every worker answers for
    all. The master removes a worker's marker when the worker exits (``_child_exit``).
    """

    def __init__(self, state_dir: Path, size: int) -> None:
        self.directory = state_dir / "ready"
        self.size = size

    def mark_ready(self, pid: int) -> None:
        self.directory.mkdir(exist_ok=True)
        (self.directory / str(pid)).touch()

    def forget(self, pid: int) -> None:
        (self.directory / str(pid)).unlink(missing_ok=True)

    def not_ready(self) -> str | None:
        ready = len(list(self.directory.glob("*"))) if self.directory.is_dir() else 0
        if ready >= self.size:
            return None
        return f"{ready} of {self.size} workers have loaded the model"


def prepare_metrics_mode(workers: int) -> Path | None:
    """Choose prometheus_client's mode (it reads the environment once, on import)."""
    if "prometheus_client" in sys.modules:
        raise RuntimeError("prometheus_client was imported before its multiprocess mode was chosen")
    if workers == 1:
        # A stray value from the environment would switch a single process into file mode.
        os.environ.pop(MULTIPROC_ENV, None)
        return None
    directory = Path(tempfile.mkdtemp(prefix="mnist-server-metrics-"))
    os.environ[MULTIPROC_ENV] = str(directory)
    return directory


def serve(settings: Settings, model_version: ModelVersion) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    multiprocess_dir = prepare_metrics_mode(settings.workers)
    ServerApplication(settings, model_version, multiprocess_dir).run()


def _worker_exit(server: Any, worker: Any) -> None:
    """In the worker, once it has finished its in-flight requests and is about to exit.

    With TensorFlow loaded, the interpreter's own teardown burns seconds of CPU per worker
    (about 3 s alone, 10 s for two workers on two busy cores) and frees nothing the kernel will
    not: after a normal shutdown, flush the logs and leave at once. Other exits keep their code.
    """
    error = sys.exc_info()[1]
    if isinstance(error, SystemExit) and error.code in (0, None):
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _child_exit(server: Any, worker: Any) -> None:
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
        WorkerGroup(Path(directory), 0).forget(worker.pid)


def _on_exit(server: Any) -> None:
    directory = os.environ.get(MULTIPROC_ENV)
    if directory and Path(directory).name.startswith("mnist-server-metrics-"):
        shutil.rmtree(directory, ignore_errors=True)
