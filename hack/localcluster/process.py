"""Supervising the cluster's processes: start, readiness polling, liveness, stop.

Each component runs in its own session (signals reach only it) and, for the pytest fixture,
gets SIGKILL when the process that started it dies (PR_SET_PDEATHSIG), so a killed pytest
leaves no control plane behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from localcluster.errors import ClusterError

_PR_SET_PDEATHSIG = 1
_LOG_TAIL_LINES = 40


def log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return "(no log written)"
    return "\n".join(text.splitlines()[-lines:])


def die_with_parent(parent_pid: int) -> Callable[[], None]:
    """A preexec_fn: the child gets SIGKILL when the process that started it dies.

    The kernel sends the signal when the starting *thread* exits, so start clusters from the
    main thread.
    """

    def preexec() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            os._exit(127)
        # The parent may have died between fork and prctl; then nobody would ever kill us.
        if os.getppid() != parent_pid:
            os._exit(127)

    return preexec


def component_alive(pid: int, component: str) -> bool:
    """Whether pid is a live (not zombie) process of that component: guards against pid reuse."""
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z" and Path(argv0).name == component


class Supervisor:
    """The processes of one cluster, by component name, with their logs in logs_dir."""

    def __init__(self, logs_dir: Path, cwd: Path, *, bound_to_parent: bool) -> None:
        self.logs_dir = logs_dir
        self.cwd = cwd
        self.bound_to_parent = bound_to_parent
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def log_file(self, component: str) -> Path:
        return self.logs_dir / f"{component}.log"

    def spawn(self, component: str, argv: list[str], env: dict[str, str] | None = None) -> int:
        with self.log_file(component).open("ab") as log:
            log.write(f"# {' '.join(argv)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env=None if env is None else {**os.environ, **env},
                start_new_session=True,  # own process group: signals reach only this component
                # Safe here: clusters are started before any threads (see die_with_parent).
                preexec_fn=die_with_parent(os.getpid()) if self.bound_to_parent else None,  # noqa: PLW1509
            )
        self.procs[component] = proc
        return proc.pid

    def check_alive(self) -> None:
        for component, proc in self.procs.items():
            code = proc.poll()
            if code is not None:
                raise ClusterError(component, f"exited with code {code}", log_tail(self.log_file(component)))

    def wait(
        self, component: str, what: str, ready: Callable[[], bool], deadline: float, budget: float
    ) -> None:
        """Poll one readiness step until the shared start-up deadline."""
        step_started = time.monotonic()
        while True:
            self.check_alive()
            if ready():
                return
            if time.monotonic() > deadline:
                waited = time.monotonic() - step_started
                problem = f"{what} not ready after {waited:.0f} s (start-up deadline {budget:.0f} s)"
                raise ClusterError(component, problem, log_tail(self.log_file(component)))
            time.sleep(0.25)

    def terminate(self, component: str, pid: int, grace: float) -> None:
        """SIGTERM the component's process group, SIGKILL it if it outlives the grace period."""
        proc = self.procs.pop(component, None)
        if proc is None and not component_alive(pid, component):
            return  # gone already, or the pid now belongs to someone else
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, sig)  # pgid == pid: each component leads its own session
            if _wait_exit(component, pid, proc, wait):
                return
        raise ClusterError(component, f"pid {pid} survived SIGKILL", log_tail(self.log_file(component)))


def _wait_exit(component: str, pid: int, proc: subprocess.Popen[bytes] | None, timeout: float) -> bool:
    if proc is not None:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True
    deadline = time.monotonic() + timeout
    while component_alive(pid, component):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True
