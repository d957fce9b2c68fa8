"""Real storage for the model-fetch tests: an S3-compatible object store and an HTTP server.

- `ObjectStore`: versitygw (the Versity S3 gateway, built from its Go module by
  hack/build-versitygw.sh and cached outside the repository) serving a temporary directory, with
  one root account whose signatures it checks, so bad credentials are refused for real.
- `ArchiveServer`: Python's HTTP server in a thread, serving a directory (GET, and PUT for
  `mnist-train publish`), plus `/broken/<name>`: the file's full Content-Length announced and
  only half of it sent before the connection closes (a transfer cut off mid-way).

Both listen on one address only: 127.0.0.1 for tests on this machine, the real node's bridge
address for tests whose pods fetch from them.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from testkit import free_port

from localcluster import REPO_ROOT

BUILD_SCRIPT = REPO_ROOT / "hack" / "build-versitygw.sh"
ACCESS_KEY = "mnist-test-access"
SECRET_KEY = "mnist-test-secret-0123456789"


def versitygw_binary() -> Path:
    """The cached versitygw, built on first use (about 1.5 min cold on 2 cores)."""
    done = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, check=False, timeout=1200
    )
    if done.returncode != 0:
        pytest.fail(f"hack/build-versitygw.sh failed:\n{done.stderr[-3000:]}")
    return Path(done.stdout.strip())


class ObjectStore:
    """versitygw's posix backend over `root`: each directory there is a bucket."""

    def __init__(self, workdir: Path, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = free_port(host)
        self.root = workdir / "buckets"
        self.sidecar = workdir / "metadata"  # object metadata beside, not in xattrs (tmpfs may lack them)
        self.log = workdir / "versitygw.log"
        self._process: subprocess.Popen[bytes] | None = None
        self.startup_seconds = 0.0

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, binary: Path) -> ObjectStore:
        self.root.mkdir(parents=True)
        self.sidecar.mkdir(parents=True)
        started = time.monotonic()
        with self.log.open("wb") as log:
            self._process = subprocess.Popen(
                [
                    str(binary),
                    "--access",
                    ACCESS_KEY,
                    "--secret",
                    SECRET_KEY,
                    "--port",
                    f"{self.host}:{self.port}",
                    "--quiet",
                    "posix",
                    "--sidecar",
                    str(self.sidecar),
                    str(self.root),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = started + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout=1):
                break
            if self._process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"versitygw did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)
        self.startup_seconds = time.monotonic() - started
        return self

    def create_bucket(self, name: str) -> None:
        # The posix backend's buckets are its directories; world-readable for nobody but us.
        (self.root / name).mkdir(mode=0o755)

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGTERM)
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait(10)


class _Handler(http.server.SimpleHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the test's output is no place for an access log

    def do_GET(self) -> None:
        self.server.requests.append(f"GET {self.path}")
        if self.path.startswith("/broken/"):
            self._send_half(self.path.removeprefix("/broken/"))
            return
        super().do_GET()

    def do_PUT(self) -> None:
        self.server.requests.append(f"PUT {self.path}")
        target = Path(self.directory) / self.path.lstrip("/")
        length = int(self.headers.get("Content-Length", "0"))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(self.rfile.read(length))
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _send_half(self, name: str) -> None:
        data = (Path(self.directory) / name).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        self.close_connection = True


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    requests: list[str]


class ArchiveServer:
    def __init__(self, directory: Path, host: str = "127.0.0.1") -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        handler = lambda *a, **kw: _Handler(*a, directory=str(directory), **kw)  # noqa: E731
        self._server = _Server((host, 0), handler)
        self._server.requests = []
        self.host, self.port = host, int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def requests(self) -> list[str]:
        return self._server.requests

    def start(self) -> ArchiveServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def copy_tree_readable(src: Path, dst: Path) -> None:
    """A copy anyone may read (pods run as another user than the tests)."""
    shutil.copytree(src, dst)
    for path in [dst, *dst.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
