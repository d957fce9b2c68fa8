"""A real, local Kubernetes control plane for tests and the demo.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok (fake nodes, so pods
reach Running and Ready without a container runtime) run as plain processes on random
127.0.0.1 ports, built from the Kubernetes Go modules by hack/build-k8s.sh. Everything a
cluster needs lives in one state directory: credentials, kubeconfigs, logs, the audit log and
etcd's data. See docs/local-cluster.md.

    python hack/localcluster.py up|down|status|env|kubeconfig [--state-dir DIR]
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

REPO_ROOT = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = REPO_ROOT / "hack" / "build-k8s.sh"
DEFAULT_STATE_DIR = REPO_ROOT / ".cluster"

# Start order; teardown runs in reverse.
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")

NODE_NAME = "kwok-node-0"
NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
SERVICE_CIDR = "10.0.0.0/16"  # room for benchmarks with hundreds of Services
POD_CIDR = "10.244.0.1/16"  # and of pods, across several kwok nodes
ADMIN_USER = "admin"
# A second system:masters identity, so tests can tell the operator's writes from their own
# in the audit log (filter on user.username).
OPERATOR_USER = "mnist-operator"

_PR_SET_PDEATHSIG = 1
_LOG_TAIL_LINES = 40


class ClusterError(RuntimeError):
    """The cluster could not be started, reached or stopped; says which component and why."""

    def __init__(self, component: str, problem: str, log_tail: str = "") -> None:
        self.component = component
        self.problem = problem
        self.log_tail = log_tail
        message = f"{component}: {problem}"
        if log_tail:
            message += f"\n--- last lines of the {component} log ---\n{log_tail}"
        super().__init__(message)


@dataclass(frozen=True)
class Ports:
    etcd: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int
    kwok: int

    @classmethod
    def allocate(cls) -> Ports:
        # Hold every socket open until all are chosen so that no port is handed out twice.
        with contextlib.ExitStack() as stack:
            ports = []
            for _ in range(6):
                sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                sock.bind(("127.0.0.1", 0))
                ports.append(sock.getsockname()[1])
        return cls(*ports)


@dataclass(frozen=True)
class ClusterState:
    """What another process needs to reach or stop a running cluster (state.json)."""

    bin_dir: str
    ports: Ports
    pids: dict[str, int]
    admin_token: str
    operator_token: str

    def dump(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> ClusterState:
        raw = json.loads(path.read_text())
        return cls(
            bin_dir=raw["bin_dir"],
            ports=Ports(**raw["ports"]),
            pids={str(k): int(v) for k, v in raw["pids"].items()},
            admin_token=raw["admin_token"],
            operator_token=raw["operator_token"],
        )


@dataclass(frozen=True)
class Health:
    component: str
    ok: bool
    detail: str


def find_bin_dir() -> Path:
    """The directory holding etcd, kube-apiserver, ..., kubectl and kwok; builds them if needed.

    MNIST_K8S_BIN_DIR overrides the build (for a prebuilt set of binaries).
    """
    override = os.environ.get("MNIST_K8S_BIN_DIR")
    if override:
        bin_dir = Path(override)
    else:
        # stderr passes through: a cold build takes ~15 min and says so.
        done = subprocess.run(["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, text=True, check=False)
        if done.returncode != 0:
            raise ClusterError("build", f"{BUILD_SCRIPT} exited with {done.returncode}")
        bin_dir = Path(done.stdout.strip().splitlines()[-1])
    missing = [c for c in (*COMPONENTS, "kubectl") if not (bin_dir / c).exists()]
    if missing:
        raise ClusterError("build", f"{bin_dir} lacks {', '.join(missing)}")
    return bin_dir


def log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return "(no log written)"
    return "\n".join(text.splitlines()[-lines:])


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    """A preexec_fn: the child gets SIGKILL when the process that started it dies.

    This is what makes a killed pytest leave no control plane behind. The kernel sends the
    signal when the starting *thread* exits, so start clusters from the main thread.
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


def _openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ClusterError("openssl", f"`openssl {' '.join(args)}` failed: {done.stderr.strip()}")


class LocalCluster:
    """One control plane in one state directory.

    Attributes tests rely on: kubeconfig, operator_kubeconfig, admin_token, api_url,
    audit_log, bin_dir, state_dir, startup_seconds.
    """

    def __init__(
        self,
        state_dir: Path,
        bin_dir: Path | None = None,
        *,
        bound_to_parent: bool = False,
        ready_timeout: float = 180.0,
    ) -> None:
        self.state_dir = state_dir.resolve()
        self._bin_dir = bin_dir
        # True for the pytest fixture (children die with pytest); False for `up` (they outlive it).
        self.bound_to_parent = bound_to_parent
        self.ready_timeout = ready_timeout
        self.owned = True
        self.startup_seconds: float | None = None
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._state: ClusterState | None = None
        self._tokens: dict[str, str] = {}
        self._deadline = 0.0
        self._atexit_registered = False

    # ----- paths and attributes -----------------------------------------------------------

    @property
    def pki_dir(self) -> Path:
        return self.state_dir / "pki"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def operator_kubeconfig(self) -> Path:
        return self.state_dir / "operator.kubeconfig"

    @property
    def audit_log(self) -> Path:
        return self.logs_dir / "audit.log"

    @property
    def ca_file(self) -> Path:
        return self.pki_dir / "ca.crt"

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def state(self) -> ClusterState:
        if self._state is None:
            raise ClusterError("cluster", f"not started and no state in {self.state_dir}")
        return self._state

    @property
    def bin_dir(self) -> Path:
        if self._bin_dir is None:
            self._bin_dir = Path(self._state.bin_dir) if self._state else find_bin_dir()
        return self._bin_dir

    @property
    def admin_token(self) -> str:
        return self.state.admin_token

    @property
    def api_url(self) -> str:
        return f"https://127.0.0.1:{self.state.ports.apiserver}"

    def log_file(self, component: str) -> Path:
        return self.logs_dir / f"{component}.log"

    def env(self) -> dict[str, str]:
        """Environment additions for tools that should talk to this cluster."""
        return {
            "KUBECONFIG": str(self.kubeconfig),
            "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    # ----- attaching to a cluster started elsewhere ----------------------------------------

    @classmethod
    def attach(cls, kubeconfig_or_state_dir: Path) -> LocalCluster:
        """A handle on a running cluster that another process started (e.g. `up`).

        Stopping is still possible (the CLI's `down`), but the pytest fixture never stops a
        cluster it attached to.
        """
        path = kubeconfig_or_state_dir.resolve()
        state_dir = path if path.is_dir() else path.parent
        cluster = cls(state_dir)
        if not cluster.state_file.exists():
            raise ClusterError(
                "cluster",
                f"no {cluster.state_file}: {path} was not written by hack/localcluster.py",
            )
        cluster._state = ClusterState.load(cluster.state_file)
        cluster.owned = False
        return cluster

    def is_running(self) -> bool:
        if self._state is None and self.state_file.exists():
            self._state = ClusterState.load(self.state_file)
        if self._state is None:
            return False
        return any(component_alive(pid, name) for name, pid in self._state.pids.items())

    # ----- start --------------------------------------------------------------------------

    def start(self) -> LocalCluster:
        if self.is_running():
            raise ClusterError("cluster", f"already running from {self.state_dir}; stop it first")
        bin_dir = self.bin_dir  # may build: not part of the start-up time
        started = time.monotonic()
        self._deadline = started + self.ready_timeout
        self._prepare_state_dir()
        ports = Ports.allocate()
        self._state = ClusterState(
            bin_dir=str(bin_dir),
            ports=ports,
            pids={},
            admin_token=secrets.token_hex(24),
            operator_token=secrets.token_hex(24),
        )
        self._write_credentials()
        self._write_configs()
        if self.bound_to_parent and not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True
        try:
            self._spawn("etcd", self._etcd_args())
            self._wait("etcd", "etcd /health", self._etcd_healthy)
            self._spawn("kube-apiserver", self._apiserver_args())
            self._wait("kube-apiserver", "apiserver /readyz", self._apiserver_ready)
            self._wait(
                "kube-apiserver", "namespace default", lambda: self._exists("/api/v1/namespaces/default")
            )
            self._spawn("kube-controller-manager", self._controller_manager_args())
            self._spawn("kube-scheduler", self._scheduler_args())
            self._spawn("kwok", self._kwok_args())
            self._create_node()
            self._wait(
                "kube-controller-manager",
                "ServiceAccount default/default",
                lambda: self._exists("/api/v1/namespaces/default/serviceaccounts/default"),
            )
            self._wait("kube-scheduler", "scheduler /healthz", lambda: self._https_healthz(ports.scheduler))
            self._wait(
                "kube-controller-manager",
                "controller-manager /healthz",
                lambda: self._https_healthz(ports.controller_manager),
            )
            self._wait("kwok", f"node {NODE_NAME} Ready", self._node_ready)
            self._check_kubectl_version()
        except BaseException:
            self.stop(remove_data=False)
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def _prepare_state_dir(self) -> None:
        # A stale state dir (crashed run) is reset: old certs, pids and etcd data must not leak in.
        for sub in ("pki", "etcd-data", "logs"):
            shutil.rmtree(self.state_dir / sub, ignore_errors=True)
        for sub in ("pki", "logs"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        self.state_file.unlink(missing_ok=True)

    def _write_credentials(self) -> None:
        pki = self.pki_dir
        _openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
            "-days", "3650", "-subj", "/CN=mnist-local-ca",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            cwd=pki,
        )  # fmt: skip
        sans = ",".join(
            [
                "DNS:localhost",
                "DNS:kubernetes",
                "DNS:kubernetes.default",
                "DNS:kubernetes.default.svc",
                "DNS:kubernetes.default.svc.cluster.local",
                "IP:127.0.0.1",
                "IP:10.0.0.1",
            ]
        )
        (pki / "serving.ext").write_text(
            textwrap.dedent(f"""\
                basicConstraints=critical,CA:FALSE
                keyUsage=critical,digitalSignature,keyEncipherment
                extendedKeyUsage=serverAuth
                subjectKeyIdentifier=hash
                authorityKeyIdentifier=keyid,issuer
                subjectAltName={sans}
            """)
        )
        _openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "serving.key", "-out", "serving.csr",
            "-subj", "/CN=kube-apiserver", cwd=pki,
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", "serving.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "825", "-extfile", "serving.ext", "-out", "serving.crt", cwd=pki,
        )  # fmt: skip
        _openssl(
            "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "sa.key", cwd=pki
        )
        _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)
        for key in pki.glob("*.key"):
            key.chmod(0o600)

        # One identity per component, so the audit log says who wrote what; all are
        # system:masters because this cluster is a local test bed, not a security boundary.
        self._tokens = {
            ADMIN_USER: self.state.admin_token,
            OPERATOR_USER: self.state.operator_token,
            "system:kube-controller-manager": secrets.token_hex(24),
            "system:kube-scheduler": secrets.token_hex(24),
            "kwok": secrets.token_hex(24),
        }
        lines = [f'{token},{user},{user},"system:masters"' for user, token in self._tokens.items()]
        token_file = pki / "tokens.csv"
        token_file.write_text("\n".join(lines) + "\n")
        token_file.chmod(0o600)
        self._write_kubeconfig(self.kubeconfig, ADMIN_USER)
        self._write_kubeconfig(self.operator_kubeconfig, OPERATOR_USER)
        for component, user in (
            ("kube-controller-manager", "system:kube-controller-manager"),
            ("kube-scheduler", "system:kube-scheduler"),
            ("kwok", "kwok"),
        ):
            self._write_kubeconfig(pki / f"{component}.kubeconfig", user)

    def _write_kubeconfig(self, path: Path, user: str) -> None:
        # JSON is YAML: no dependency needed to write it, and kubectl and kopf read it as is.
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "local",
                    "cluster": {"server": self.api_url, "certificate-authority": str(self.ca_file)},
                }
            ],
            "users": [{"name": user, "user": {"token": self._tokens[user]}}],
            "contexts": [
                {"name": "local", "context": {"cluster": "local", "user": user, "namespace": "default"}}
            ],
            "current-context": "local",
        }
        path.write_text(json.dumps(config, indent=2) + "\n")
        path.chmod(0o600)

    def _write_configs(self) -> None:
        # Metadata for every write so tests can count writes; reads and the chatty
        # lease/event traffic are left out to keep the log small.
        (self.state_dir / "audit-policy.yaml").write_text(
            textwrap.dedent("""\
                apiVersion: audit.k8s.io/v1
                kind: Policy
                omitStages: ["RequestReceived"]
                rules:
                  - level: None
                    resources:
                      - group: coordination.k8s.io
                        resources: ["leases"]
                      - group: ""
                        resources: ["events"]
                      - group: events.k8s.io
                        resources: ["events"]
                  - level: Metadata
                    verbs: ["create", "update", "patch", "delete", "deletecollection"]
                  - level: None
            """)
        )
        # An explicit (empty) kwok config, so a developer's ~/.kwok/kwok.yaml cannot change
        # the node and pod stages; kwok then uses its default fast stages.
        (self.state_dir / "kwok.yaml").write_text(
            "apiVersion: config.kwok.x-k8s.io/v1alpha1\nkind: KwokConfiguration\noptions: {}\n"
        )

    # ----- component command lines ---------------------------------------------------------

    def _etcd_args(self) -> list[str]:
        p = self.state.ports
        return [
            "--name=local",
            f"--data-dir={self.state_dir / 'etcd-data'}",
            f"--listen-client-urls=http://127.0.0.1:{p.etcd}",
            f"--advertise-client-urls=http://127.0.0.1:{p.etcd}",
            f"--listen-peer-urls=http://127.0.0.1:{p.etcd_peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{p.etcd_peer}",
            f"--initial-cluster=local=http://127.0.0.1:{p.etcd_peer}",
            "--unsafe-no-fsync",
            "--quota-backend-bytes=2147483648",
            "--log-level=warn",
        ]

    def _apiserver_args(self) -> list[str]:
        p, pki = self.state.ports, self.pki_dir
        return [
            f"--etcd-servers=http://127.0.0.1:{p.etcd}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            "--endpoint-reconciler-type=none",
            f"--secure-port={p.apiserver}",
            f"--cert-dir={pki}",
            f"--tls-cert-file={pki / 'serving.crt'}",
            f"--tls-private-key-file={pki / 'serving.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--token-auth-file={pki / 'tokens.csv'}",
            # Published to kube-system/extension-apiserver-authentication; without it the
            # controller-manager and scheduler log an error every few seconds.
            f"--requestheader-client-ca-file={pki / 'ca.crt'}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            f"--audit-policy-file={self.state_dir / 'audit-policy.yaml'}",
            f"--audit-log-path={self.audit_log}",
            "--audit-log-maxbackup=1",
            "--audit-log-maxsize=200",
            "--profiling=false",
        ]

    def _delegating_component_args(self, component: str, port: int) -> list[str]:
        kubeconfig = self.pki_dir / f"{component}.kubeconfig"
        return [
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            # Our CA-signed cert (not a self-signed one in memory), so `status` can verify it.
            f"--tls-cert-file={self.pki_dir / 'serving.crt'}",
            f"--tls-private-key-file={self.pki_dir / 'serving.key'}",
            "--leader-elect=false",
            "--profiling=false",
        ]

    def _controller_manager_args(self) -> list[str]:
        pki = self.pki_dir
        return [
            *self._delegating_component_args("kube-controller-manager", self.state.ports.controller_manager),
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--use-service-account-credentials=false",
            # Faster garbage collection and endpoint updates make tests snappier.
            "--concurrent-gc-syncs=20",
        ]

    def _scheduler_args(self) -> list[str]:
        return self._delegating_component_args("kube-scheduler", self.state.ports.scheduler)

    def _kwok_args(self) -> list[str]:
        return [
            f"--config={self.state_dir / 'kwok.yaml'}",
            f"--kubeconfig={self.pki_dir / 'kwok.kubeconfig'}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={NODE_ANNOTATION[0]}={NODE_ANNOTATION[1]}",
            # Keep the node's Lease renewed: without it kwok posts node status only every ~50 s,
            # the node-lifecycle controller marks the node NotReady after its 50 s grace, and every
            # pod on it turns Ready=False for good (kwok does not set it back).
            "--node-lease-duration-seconds=40",
            f"--cidr={POD_CIDR}",
            "--node-ip=127.0.0.1",
            f"--server-address=127.0.0.1:{self.state.ports.kwok}",
        ]

    # ----- processes --------------------------------------------------------------------

    def _spawn(self, component: str, args: list[str]) -> None:
        argv = [str(self.bin_dir / component), *args]
        with self.log_file(component).open("ab") as log:
            log.write(f"# {' '.join(argv)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.state_dir,
                start_new_session=True,  # own process group: signals reach only this component
                # Safe here: clusters are started before any threads (see _die_with_parent).
                preexec_fn=_die_with_parent(os.getpid()) if self.bound_to_parent else None,  # noqa: PLW1509
            )
        self._procs[component] = proc
        self.state.pids[component] = proc.pid
        self.state.dump(self.state_file)

    def _wait(self, component: str, what: str, ready: Callable[[], bool]) -> None:
        """Poll one readiness step; every step shares the start-up deadline (ready_timeout)."""
        step_started = time.monotonic()
        while True:
            self._check_alive()
            if ready():
                return
            if time.monotonic() > self._deadline:
                waited = time.monotonic() - step_started
                problem = (
                    f"{what} not ready after {waited:.0f} s (start-up deadline {self.ready_timeout:.0f} s)"
                )
                raise ClusterError(component, problem, log_tail(self.log_file(component)))
            time.sleep(0.25)

    def _check_alive(self) -> None:
        for component, proc in self._procs.items():
            code = proc.poll()
            if code is not None:
                raise ClusterError(component, f"exited with code {code}", log_tail(self.log_file(component)))

    # ----- stop -----------------------------------------------------------------------------

    def stop(self, grace: float = 10.0, *, remove_data: bool = True) -> None:
        """SIGTERM every component in reverse start order, SIGKILL what outlives the grace period."""
        if self._state is None:
            return
        for component in reversed(COMPONENTS):
            pid = self._state.pids.get(component)
            if pid is None:
                continue
            self._terminate(component, pid, grace)
        if remove_data:
            # etcd preallocates 64 MB WAL segments; logs, audit log and credentials stay.
            shutil.rmtree(self.state_dir / "etcd-data", ignore_errors=True)
        self.state_file.unlink(missing_ok=True)
        self._procs.clear()

    def _terminate(self, component: str, pid: int, grace: float) -> None:
        proc = self._procs.get(component)
        if proc is None and not component_alive(pid, component):
            return  # gone already, or the pid now belongs to someone else
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, sig)  # pgid == pid: each component leads its own session
            if self._wait_exit(component, pid, proc, wait):
                return
        raise ClusterError(component, f"pid {pid} survived SIGKILL", log_tail(self.log_file(component)))

    @staticmethod
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

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----- talking to the cluster ------------------------------------------------------

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run this cluster's own kubectl (same build as the server) with the admin kubeconfig."""
        done = subprocess.run(
            [str(self.bin_dir / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise subprocess.CalledProcessError(done.returncode, done.args, done.stdout, done.stderr)
        return done

    def _ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def request(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> tuple[int, Any]:
        """One API call with the admin token: (HTTP status, decoded JSON body or text)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.api_url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.admin_token}")
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self._ssl_context()) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        text = raw.decode("utf-8", "replace")
        try:
            return status, json.loads(text)
        except json.JSONDecodeError:
            return status, text

    def audit_events(self, predicate: Callable[[dict[str, Any]], bool] | None = None) -> list[dict[str, Any]]:
        """Audit events recorded so far (writes only, at level Metadata), optionally filtered.

        The apiserver writes an event just after answering, so poll rather than read once.
        """
        events = []
        with contextlib.suppress(FileNotFoundError), self.audit_log.open() as f:
            for line in f:
                with contextlib.suppress(json.JSONDecodeError):
                    event = json.loads(line)
                    if predicate is None or predicate(event):
                        events.append(event)
        return events

    # ----- readiness probes ----------------------------------------------------------------

    def _exists(self, path: str) -> bool:
        try:
            return self.request("GET", path)[0] == 200
        except OSError:
            return False

    def _etcd_healthy(self) -> bool:
        try:
            url = f"http://127.0.0.1:{self.state.ports.etcd}/health"
            with urllib.request.urlopen(url, timeout=2) as resp:
                return bool(json.load(resp).get("health") == "true")
        except (OSError, ValueError):
            return False

    def _apiserver_ready(self) -> bool:
        # With the token: anonymous requests get 403 until RBAC's bootstrap roles exist.
        try:
            status, body = self.request("GET", "/readyz", timeout=5)
        except OSError:
            return False
        return status == 200 and body == "ok"

    def _https_healthz(self, port: int) -> bool:
        try:
            url = f"https://127.0.0.1:{port}/healthz"
            with urllib.request.urlopen(url, timeout=2, context=self._ssl_context()) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def _http_healthz(self, port: int) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def _create_node(self) -> None:
        capacity = {"cpu": "32", "memory": "256Gi", "pods": "110", "ephemeral-storage": "1Ti"}
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": NODE_NAME,
                "annotations": {NODE_ANNOTATION[0]: NODE_ANNOTATION[1], "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {
                    "kubernetes.io/hostname": NODE_NAME,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "type": "kwok",
                },
            },
            "spec": {},
            "status": {"capacity": capacity, "allocatable": capacity},
        }
        status, body = self.request("POST", "/api/v1/nodes", node)
        if status not in (201, 409):
            raise ClusterError("kube-apiserver", f"creating node {NODE_NAME}: HTTP {status}: {body}")

    def _node_ready(self) -> bool:
        try:
            status, node = self.request("GET", f"/api/v1/nodes/{NODE_NAME}")
        except OSError:
            return False
        if status != 200:
            return False
        conditions = node.get("status", {}).get("conditions", [])
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
        # The node lifecycle controller removes its not-ready taint a moment after Ready.
        return ready and not node.get("spec", {}).get("taints")

    def _check_kubectl_version(self) -> None:
        done = self.kubectl("version", "-o", "json", check=False)
        if done.returncode != 0:
            raise ClusterError("kubectl", f"`kubectl version` failed: {done.stderr.strip()}")
        versions = json.loads(done.stdout)
        client = versions.get("clientVersion", {}).get("gitVersion")
        server = versions.get("serverVersion", {}).get("gitVersion")
        if not client or client != server:
            raise ClusterError(
                "kubectl",
                f"kubectl {client} does not match the API server {server}: rebuild with hack/build-k8s.sh",
            )

    # ----- status ------------------------------------------------------------------------

    def health(self) -> list[Health]:
        probes: dict[str, Callable[[], bool]] = {
            "etcd": self._etcd_healthy,
            "kube-apiserver": self._apiserver_ready,
            "kube-controller-manager": lambda: self._https_healthz(self.state.ports.controller_manager),
            "kube-scheduler": lambda: self._https_healthz(self.state.ports.scheduler),
            "kwok": lambda: self._http_healthz(self.state.ports.kwok),
        }
        report = []
        for component in COMPONENTS:
            pid = self.state.pids.get(component)
            if pid is None or not component_alive(pid, component):
                report.append(Health(component, False, "not running"))
            elif probes[component]():
                report.append(Health(component, True, f"pid {pid}, healthy"))
            else:
                report.append(
                    Health(component, False, f"pid {pid}, unhealthy (see {self.log_file(component)})")
                )
        api_ok = any(h.ok for h in report if h.component == "kube-apiserver")
        node_ok = api_ok and self._node_ready()
        report.append(Health(f"node/{NODE_NAME}", node_ok, "Ready" if node_ok else "not Ready"))
        return report


# ----- CLI ---------------------------------------------------------------------------------


def _print_env(cluster: LocalCluster, out: IO[str]) -> None:
    out.write(f"export KUBECONFIG={cluster.kubeconfig}\n")
    out.write(f'export PATH="{cluster.bin_dir}:$PATH"\n')


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="localcluster", description="A local Kubernetes control plane.")
    parser.add_argument("command", choices=["up", "down", "status", "env", "kubeconfig"])
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, help="default: %(default)s")
    parser.add_argument("--timeout", type=float, default=180.0, help="start-up deadline in seconds")
    args = parser.parse_args(argv)
    cluster = LocalCluster(args.state_dir, ready_timeout=args.timeout)

    if args.command == "up":
        if cluster.is_running():
            broken = [h for h in LocalCluster.attach(cluster.state_dir).health() if not h.ok]
            if broken:
                problems = ", ".join(f"{h.component}: {h.detail}" for h in broken)
                print(f"a cluster in {cluster.state_dir} is unhealthy ({problems}); run `down`, then `up`",
                      file=sys.stderr)  # fmt: skip
                return 1
            print(f"already running (state in {cluster.state_dir})", file=sys.stderr)
        else:
            try:
                cluster.start()
            except ClusterError as e:
                print(f"cluster start failed: {e}\nlogs: {cluster.logs_dir}", file=sys.stderr)
                return 1
            print(f"cluster up in {cluster.startup_seconds:.1f} s at {cluster.api_url}", file=sys.stderr)
        _print_env(cluster, sys.stdout)
        return 0

    if not cluster.is_running():
        if args.command == "down":
            print(f"not running (state dir {cluster.state_dir})", file=sys.stderr)
            return 0
        print(f"no cluster running from {cluster.state_dir}; run `up` first", file=sys.stderr)
        return 1
    cluster = LocalCluster.attach(cluster.state_dir)

    if args.command == "down":
        cluster.stop()
        shutil.rmtree(cluster.state_dir, ignore_errors=True)
        print(f"stopped; removed {cluster.state_dir}", file=sys.stderr)
    elif args.command == "status":
        report = cluster.health()
        for h in report:
            print(f"{h.component:<26} {'ok  ' if h.ok else 'FAIL'} {h.detail}")
        print(f"{'api':<26} {cluster.api_url}\n{'kubeconfig':<26} {cluster.kubeconfig}")
        return 0 if all(h.ok for h in report) else 1
    elif args.command == "env":
        _print_env(cluster, sys.stdout)
    else:
        print(cluster.kubeconfig)
    return 0


if __name__ == "__main__":
    sys.exit(main())
