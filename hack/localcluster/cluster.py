"""One local cluster: the control plane, kwok's fake node and, where the host allows, a real node.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok (fake nodes, so pods
reach Running and Ready without a container runtime) run as plain processes on random ports,
built from the Kubernetes Go modules by hack/build-k8s.sh. Where the host can (root, the
Debian packages, the kernel features: node.unsupported_reason), containerd, a kubelet and
kube-proxy add a real node (node.py) and the API server listens on that node's bridge address
so that pods reach it; otherwise everything stays on 127.0.0.1. See docs/local-cluster.md.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from localcluster import components, images, node, pki
from localcluster.api import ApiClient, https_healthz
from localcluster.components import (
    CONTROL_PLANE,
    KWOK_NODE_ANNOTATION,
    KWOK_NODE_NAME,
    NODE_COMPONENTS,
    Layout,
    Ports,
)
from localcluster.errors import ClusterError
from localcluster.process import Supervisor, component_alive

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "hack" / "build-k8s.sh"
DEFAULT_STATE_DIR = REPO_ROOT / ".cluster"

# Kept under their old names for the tests and tools that import them.
COMPONENTS = CONTROL_PLANE
NODE_NAME = KWOK_NODE_NAME
NODE_ANNOTATION = KWOK_NODE_ANNOTATION

ADMIN_USER = "admin"
# A second system:masters identity, so tests can tell the operator's writes from their own
# in the audit log (filter on user.username).
OPERATOR_USER = "mnist-operator"

REAL_NODE_MODES = ("auto", "on", "off")


@dataclass(frozen=True)
class ClusterState:
    """What another process needs to reach or stop a running cluster (state.json)."""

    bin_dir: str
    ports: Ports
    pids: dict[str, int]
    admin_token: str
    operator_token: str
    address: str = "127.0.0.1"
    real_node: bool = False
    # Why there is no real node (None when there is one, or while it starts).
    real_node_reason: str | None = None
    tokens: dict[str, str] = field(default_factory=dict)

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
            address=raw.get("address", "127.0.0.1"),
            real_node=bool(raw.get("real_node", False)),
            real_node_reason=raw.get("real_node_reason"),
            tokens=dict(raw.get("tokens", {})),
        )


@dataclass(frozen=True)
class Health:
    component: str
    ok: bool
    detail: str


def find_bin_dir() -> Path:
    """The directory holding the cluster's binaries; builds them if needed.

    MNIST_K8S_BIN_DIR overrides the build (for a prebuilt set of binaries).
    """
    override = os.environ.get("MNIST_K8S_BIN_DIR")
    if override:
        bin_dir = Path(override)
    else:
        # stderr passes through: a cold build takes ~30 min and says so.
        done = subprocess.run(["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, text=True, check=False)
        if done.returncode != 0:
            raise ClusterError("build", f"{BUILD_SCRIPT} exited with {done.returncode}")
        bin_dir = Path(done.stdout.strip().splitlines()[-1])
    missing = [
        c
        for c in (*CONTROL_PLANE, "kubectl", "kubelet", "kube-proxy", "crictl")
        if not (bin_dir / c).exists()
    ]
    if missing:
        raise ClusterError("build", f"{bin_dir} lacks {', '.join(missing)}")
    return bin_dir


def real_node_mode() -> str:
    mode = os.environ.get("MNIST_REAL_NODE", "auto")
    if mode not in REAL_NODE_MODES:
        raise ClusterError("cluster", f"MNIST_REAL_NODE={mode!r}: use one of {', '.join(REAL_NODE_MODES)}")
    return mode


class LocalCluster:
    """One cluster in one state directory.

    Attributes tests rely on: kubeconfig, operator_kubeconfig, admin_token, api_url,
    audit_log, bin_dir, state_dir, startup_seconds, real_node, real_node_reason.
    """

    def __init__(
        self,
        state_dir: Path,
        bin_dir: Path | None = None,
        *,
        bound_to_parent: bool = False,
        ready_timeout: float = 180.0,
        real_node: str | None = None,
    ) -> None:
        self.state_dir = state_dir.resolve()
        self.layout = Layout(self.state_dir)
        self._bin_dir = bin_dir
        # True for the pytest fixture (children die with pytest); False for `up` (they outlive it).
        self.bound_to_parent = bound_to_parent
        self.ready_timeout = ready_timeout
        self.real_node_mode = real_node or real_node_mode()
        self.owned = True
        self.startup_seconds: float | None = None
        self.node_startup_seconds: float | None = None
        self._supervisor = Supervisor(self.layout.logs, self.state_dir, bound_to_parent=bound_to_parent)
        self._state: ClusterState | None = None
        self._deadline = 0.0
        self._atexit_registered = False
        self._reaper: subprocess.Popen[bytes] | None = None
        self._killed_argv: dict[str, list[str]] = {}  # command lines of killed components

    # ----- paths and attributes -----------------------------------------------------------

    @property
    def pki_dir(self) -> Path:
        return self.layout.pki

    @property
    def logs_dir(self) -> Path:
        return self.layout.logs

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def operator_kubeconfig(self) -> Path:
        return self.state_dir / "operator.kubeconfig"

    @property
    def audit_log(self) -> Path:
        return self.layout.audit_log

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
        return f"https://{self.state.address}:{self.state.ports.apiserver}"

    @property
    def real_node(self) -> bool:
        return self.state.real_node

    @property
    def real_node_reason(self) -> str | None:
        return self.state.real_node_reason

    @property
    def api(self) -> ApiClient:
        return ApiClient(
            api_url=self.api_url,
            ca_file=self.ca_file,
            token=self.admin_token,
            kubectl_bin=self.bin_dir / "kubectl",
            kubeconfig=self.kubeconfig,
            audit_log=self.audit_log,
        )

    def log_file(self, component: str) -> Path:
        return self._supervisor.log_file(component)

    def env(self) -> dict[str, str]:
        """Environment additions for tools that should talk to this cluster."""
        return {
            "KUBECONFIG": str(self.kubeconfig),
            "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    def components(self) -> tuple[str, ...]:
        return CONTROL_PLANE + (NODE_COMPONENTS if self.state.real_node else ())

    # ----- attaching to a cluster started elsewhere ----------------------------------------

    @classmethod
    def attach(cls, kubeconfig_or_state_dir: Path) -> LocalCluster:
        """A handle on a running cluster that another process started (e.g. `up`).

        Stopping is still possible (the CLI's `down`), but the pytest fixture never stops a
        cluster it attached to.
        """
        path = kubeconfig_or_state_dir.resolve()
        state_dir = path if path.is_dir() else path.parent
        cluster = cls(state_dir, real_node="off")
        if not cluster.state_file.exists():
            raise ClusterError(
                "cluster", f"no {cluster.state_file}: {path} was not written by `python -m localcluster`"
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
        reason = self._real_node_unavailable()
        pause_image = None
        if reason is None:
            # Built before the clock starts, like the binaries (seconds, and cached).
            pause_image = images.build_pause(self.state_dir / "image-build.log")
        started = time.monotonic()
        self._deadline = started + self.ready_timeout
        self._prepare_state_dir()
        with_node = reason is None
        self._state = ClusterState(
            bin_dir=str(bin_dir),
            ports=Ports.allocate(),
            pids={},
            admin_token=pki.new_token(),
            operator_token=pki.new_token(),
            address=node.NODE_IP if with_node else "127.0.0.1",
            real_node=with_node,
            real_node_reason=reason,
            tokens={
                "system:kube-controller-manager": pki.new_token(),
                "system:kube-scheduler": pki.new_token(),
                "kwok": pki.new_token(),
                f"system:node:{node.NODE_NAME}": pki.new_token(),
                "system:kube-proxy": pki.new_token(),
            },
        )
        self._save()
        if self.bound_to_parent and not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True
        try:
            if with_node:
                node.cleanup_host(bin_dir, components.SERVICE_CIDR, components.KWOK_POD_CIDR)
                node.claim_host(self.state_dir, components.SERVICE_CIDR, components.KWOK_POD_CIDR)
                if self.bound_to_parent:
                    self._start_reaper()
            self._write_credentials()
            components.write_configs(self.layout)
            self._start_control_plane()
            if with_node:
                assert pause_image is not None
                node_started = time.monotonic()
                self._start_node(pause_image)
                self.node_startup_seconds = time.monotonic() - node_started
            self._check_kubectl_version()
        except BaseException:
            self.stop(remove_data=False)
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def _real_node_unavailable(self) -> str | None:
        if self.real_node_mode == "off":
            return "turned off (MNIST_REAL_NODE=off)"
        reason = node.unsupported_reason()
        if reason is None:
            try:
                images.check_tools()
            except ClusterError as e:
                reason = e.problem
        if reason is not None and self.real_node_mode == "on":
            raise ClusterError("node", f"MNIST_REAL_NODE=on, but this host cannot run a real node: {reason}")
        return reason

    def _prepare_state_dir(self) -> None:
        # A stale state dir (crashed run) is reset: old certs, pids and etcd data must not leak in.
        for sub in ("pki", "etcd-data", "logs", "node"):
            shutil.rmtree(self.state_dir / sub, ignore_errors=True)
        for sub in ("pki", "logs"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        self.state_file.unlink(missing_ok=True)

    def _save(self) -> None:
        self.state.dump(self.state_file)

    def _write_credentials(self) -> None:
        state = self.state
        server_ips = ["127.0.0.1", "10.0.0.1", *([node.NODE_IP] if state.real_node else [])]
        pki.write_certificates(self.pki_dir, server_ips)
        tokens = {ADMIN_USER: state.admin_token, OPERATOR_USER: state.operator_token, **state.tokens}
        pki.write_token_file(self.pki_dir, tokens)
        pki.write_kubeconfig(self.kubeconfig, self.api_url, self.ca_file, ADMIN_USER, state.admin_token)
        pki.write_kubeconfig(
            self.operator_kubeconfig, self.api_url, self.ca_file, OPERATOR_USER, state.operator_token
        )
        for component, user in (
            ("kube-controller-manager", "system:kube-controller-manager"),
            ("kube-scheduler", "system:kube-scheduler"),
            ("kwok", "kwok"),
            ("kubelet", f"system:node:{node.NODE_NAME}"),
            ("kube-proxy", "system:kube-proxy"),
        ):
            pki.write_kubeconfig(
                self.layout.kubeconfig_of(component), self.api_url, self.ca_file, user, tokens[user]
            )

    def _spawn(self, component: str, args: list[str], binary: str | None = None) -> None:
        argv = [binary or str(self.bin_dir / component), *args]
        self.state.pids[component] = self._supervisor.spawn(component, argv)
        self._save()

    def _wait(self, component: str, what: str, ready: Callable[[], bool]) -> None:
        self._supervisor.wait(component, what, ready, self._deadline, self.ready_timeout)

    def _start_control_plane(self) -> None:
        layout, ports, api = self.layout, self.state.ports, self.api
        self._spawn("etcd", components.etcd_args(layout, ports))
        self._wait("etcd", "etcd /health", self._etcd_healthy)
        self._spawn(
            "kube-apiserver",
            components.apiserver_args(layout, ports, self.state.address, pods_reach_it=self.state.real_node),
        )
        self._wait("kube-apiserver", "apiserver /readyz", self._apiserver_ready)
        self._wait("kube-apiserver", "namespace default", lambda: api.exists("/api/v1/namespaces/default"))
        self._spawn("kube-controller-manager", components.controller_manager_args(layout, ports))
        self._spawn("kube-scheduler", components.scheduler_args(layout, ports))
        self._spawn("kwok", components.kwok_args(layout, ports))
        self._create_kwok_node()
        self._wait(
            "kube-controller-manager",
            "ServiceAccount default/default",
            lambda: api.exists("/api/v1/namespaces/default/serviceaccounts/default"),
        )
        context = api.ssl_context()
        self._wait(
            "kube-scheduler",
            "scheduler /healthz",
            lambda: https_healthz(f"https://127.0.0.1:{ports.scheduler}/healthz", context),
        )
        self._wait(
            "kube-controller-manager",
            "controller-manager /healthz",
            lambda: https_healthz(f"https://127.0.0.1:{ports.controller_manager}/healthz", context),
        )
        self._wait("kwok", f"node {KWOK_NODE_NAME} Ready", lambda: api.node_ready(KWOK_NODE_NAME))

    def _start_node(self, pause_image: str) -> None:
        ports = self.state.ports
        config_dir = self.state_dir / "node"
        node_ports = node.NodePorts(
            ports.kubelet, ports.kubelet_healthz, ports.proxy_healthz, ports.proxy_metrics
        )
        node.write_configs(
            config_dir, node_ports, self.ca_file, self.layout.kubeconfig_of("kube-proxy"), pause_image
        )
        self._spawn(
            "containerd", [f"--config={config_dir / 'containerd.toml'}"], binary=shutil.which("containerd")
        )
        node.record_containerd_pid(self.state.pids["containerd"])
        self._wait("containerd", "containerd socket", lambda: self._crictl_ok("version"))
        images.import_into(pause_image, node.CONTAINERD_SOCKET)
        node.make_cgroup_root()
        root_dir = node.NODE_DIR / "kubelet"
        root_dir.mkdir(parents=True, exist_ok=True)
        # Volumes the kubelet mounts under its root must propagate into containers.
        subprocess.run(["mount", "--bind", str(root_dir), str(root_dir)], check=True)
        subprocess.run(["mount", "--make-rshared", str(root_dir)], check=True)
        self._spawn(
            "kubelet",
            components.kubelet_args(
                config_dir / "kubelet.yaml",
                self.layout.kubeconfig_of("kubelet"),
                root_dir,
                node_name=node.NODE_NAME,
                node_ip=node.NODE_IP,
                labels=dict([node.LABEL]),
            ),
        )
        self._spawn("kube-proxy", [f"--config={config_dir / 'kube-proxy.yaml'}", "--v=1"])
        self._wait("kubelet", f"node {node.NODE_NAME} Ready", lambda: self.api.node_ready(node.NODE_NAME))
        self._wait(
            "kube-proxy",
            "kube-proxy /healthz",
            lambda: https_healthz(f"http://127.0.0.1:{ports.proxy_healthz}/healthz"),
        )

    def _start_reaper(self) -> None:
        """A watchdog that cleans the host if this process dies without stopping the cluster.

        PDEATHSIG kills containerd, the kubelet and kube-proxy with pytest, but not the pods'
        processes, their mounts or iptables rules: the reaper sees its stdin close and does that.
        """
        read_end, write_end = os.pipe()
        self._reaper = subprocess.Popen(
            [sys.executable, "-m", "localcluster.reaper", str(self.state_dir), str(self.bin_dir)],
            stdin=read_end,
            stdout=self.log_file("reaper").open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C to pytest's process group must not reach it
            cwd=REPO_ROOT / "hack",
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "hack")},
        )
        os.close(read_end)
        self._reaper_pipe = write_end

    def _crictl_ok(self, *args: str) -> bool:
        return self.crictl(*args, check=False).returncode == 0

    def crictl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(self.bin_dir / "crictl"), f"--runtime-endpoint=unix://{node.CONTAINERD_SOCKET}", *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        if check and done.returncode != 0:
            raise subprocess.CalledProcessError(done.returncode, done.args, done.stdout, done.stderr)
        return done

    def import_image(self, ref: str) -> None:
        """Make a locally built image available to the real node's pods (imagePullPolicy Never)."""
        if not self.state.real_node:
            raise ClusterError("node", f"no real node: {self.state.real_node_reason}")
        images.import_into(ref, node.CONTAINERD_SOCKET)

    # ----- stop -----------------------------------------------------------------------------

    def stop(self, grace: float = 10.0, *, remove_data: bool = True) -> None:
        """SIGTERM every component in reverse start order, SIGKILL what outlives the grace period;
        then remove what the real node left on the host."""
        if self._state is None:
            return
        state = self._state
        for component in reversed(CONTROL_PLANE + NODE_COMPONENTS):
            pid = state.pids.get(component)
            if component == "containerd" and state.real_node:
                # Pods stop through containerd, before it does (its shims outlive it).
                node.cleanup_pods(self.bin_dir)
            if pid is not None:
                self._supervisor.terminate(component, pid, grace)
        if state.real_node:
            node.cleanup_host(self.bin_dir, components.SERVICE_CIDR, components.KWOK_POD_CIDR)
        if self._reaper is not None:
            os.write(self._reaper_pipe, b"done\n")
            os.close(self._reaper_pipe)
            self._reaper.wait(10)
            self._reaper = None
        if remove_data:
            # etcd preallocates 64 MB WAL segments; logs, audit log and credentials stay.
            shutil.rmtree(self.layout.etcd_data, ignore_errors=True)
        self.state_file.unlink(missing_ok=True)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----- talking to the cluster ------------------------------------------------------

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        return self.api.kubectl(*args, input=input, check=check, timeout=timeout)

    def request(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> tuple[int, Any]:
        return self.api.request(method, path, body, timeout)

    def audit_events(self, predicate: Callable[[dict[str, Any]], bool] | None = None) -> list[dict[str, Any]]:
        return self.api.audit_events(predicate)

    # ----- fault injection (tests) ---------------------------------------------------------

    def kill(self, component: str) -> None:
        """SIGKILL one component, as a crash would, and wait until it is gone.

        `restart(component)` starts it again with the same command line (read from /proc now).
        """
        pid = self.state.pids[component]
        self._killed_argv[component] = _cmdline(pid)
        proc = self._supervisor.procs.pop(component, None)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)  # pgid == pid: the component leads its own session
        if proc is not None:
            proc.wait(10)
        deadline = time.monotonic() + 10
        while component_alive(pid, component):
            if time.monotonic() > deadline:
                raise ClusterError(component, f"pid {pid} survived SIGKILL")
            time.sleep(0.05)

    def restart(self, component: str, timeout: float = 60.0) -> None:
        """Start a component again with the command line it had (killing it first if it runs),
        and wait until its health check passes (etcd: /health, the API server: /readyz)."""
        if component not in self._killed_argv:
            self.kill(component)
        argv = self._killed_argv.pop(component)
        self.state.pids[component] = self._supervisor.spawn(component, argv)
        self._save()
        deadline = time.monotonic() + timeout
        self._supervisor.wait(
            component, f"{component} healthy again", lambda: self._healthy(component), deadline, timeout
        )

    def _healthy(self, component: str) -> bool:
        return any(h.ok for h in self.health() if h.component == component)

    def etcd(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        """One call of etcd's v3 JSON API (`kv/range`, `kv/deleterange`, `kv/compaction`, ...):
        what the API server stores, changed behind its back. Keys and values are base64 in the
        JSON; see `etcd_key`."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.state.ports.etcd}/v3/{method}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            answer: dict[str, Any] = json.load(resp)
        return answer

    @staticmethod
    def etcd_key(key: str) -> str:
        """A key as etcd's JSON API takes it, e.g. etcd_key("/registry/services/specs/ns/name")."""
        return base64.b64encode(key.encode()).decode()

    # ----- readiness probes ----------------------------------------------------------------

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

    def _create_kwok_node(self) -> None:
        status, body = self.request("POST", "/api/v1/nodes", components.kwok_node())
        if status not in (201, 409):
            raise ClusterError("kube-apiserver", f"creating node {KWOK_NODE_NAME}: HTTP {status}: {body}")

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
        ports, context = self.state.ports, self.api.ssl_context()
        probes: dict[str, Callable[[], bool]] = {
            "etcd": self._etcd_healthy,
            "kube-apiserver": self._apiserver_ready,
            "kube-controller-manager": lambda: https_healthz(
                f"https://127.0.0.1:{ports.controller_manager}/healthz", context
            ),
            "kube-scheduler": lambda: https_healthz(f"https://127.0.0.1:{ports.scheduler}/healthz", context),
            "kwok": lambda: https_healthz(f"http://127.0.0.1:{ports.kwok}/healthz"),
            "containerd": lambda: self._crictl_ok("version"),
            "kubelet": lambda: https_healthz(f"http://127.0.0.1:{ports.kubelet_healthz}/healthz"),
            "kube-proxy": lambda: https_healthz(f"http://127.0.0.1:{ports.proxy_healthz}/healthz"),
        }
        report = []
        for component in self.components():
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
        nodes = [KWOK_NODE_NAME, *([node.NODE_NAME] if self.state.real_node else [])]
        for name in nodes:
            ok = api_ok and self.api.node_ready(name)
            report.append(Health(f"node/{name}", ok, "Ready" if ok else "not Ready"))
        return report


def _cmdline(pid: int) -> list[str]:
    return [arg.decode() for arg in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if arg]
