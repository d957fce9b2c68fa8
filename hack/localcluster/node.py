"""A real node beside the kwok ones: containerd, a kubelet and kube-proxy on this host.

Pods scheduled here really run (runc under containerd, CNI bridge networking, kube-proxy in
iptables mode), so probes, traffic through Services and rollouts can be proved. The node is
tainted: only pods that tolerate `TAINT` (and usually select `LABEL`) land on it, so the
high-count tests keep using kwok.

Host-wide things a node touches, and how each is put back:
- a bridge (`BRIDGE`) holding the node's address, routes for the Service range (so traffic to a
  ClusterIP never leaves by the host's uplink, even before kube-proxy has synced) and a
  blackhole for kwok's fake pod addresses;
- iptables: kube-proxy's and the kubelet's chains, and one chain of ours that drops pod
  traffic bound anywhere but the bridge (this machine has no network for pods to reach);
- sysctls (ip_forward, bridge-nf-call-iptables), restored to what they were;
- mounts (the kubelet's volumes, sandbox /dev/shm, container root filesystems, network
  namespaces) and the pod cgroups under `CGROUP_ROOT`.
`cleanup_host` undoes all of it, and runs before every start too, so a second `up` after a
crash finds a clean host. One real node per host: the iptables chains are host-wide, so
`HOST_LOCK` records which state directory owns the host.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from localcluster.errors import ClusterError
from localcluster.process import component_alive

NODE_NAME = "real-node-0"
LABEL = ("type", "real")
TAINT = {"key": "mnist.aidevsecops.dev/real-node", "value": "true", "effect": "NoSchedule"}
# Pods that should run on the real node carry these two.
TOLERATION = {"key": TAINT["key"], "operator": "Equal", "value": TAINT["value"], "effect": TAINT["effect"]}
NODE_SELECTOR = {LABEL[0]: LABEL[1]}

BRIDGE = "mnist0"
POD_SUBNET = "10.245.0.0/24"
NODE_IP = "10.245.0.1"
EGRESS_CHAIN = "MNIST-NODE-EGRESS"
CGROUP_ROOT = "/mnist-localcluster"

# Fixed paths: one node per host, and a unix socket path must stay under 108 bytes.
NODE_DIR = Path("/var/lib/mnist-localcluster-node")
RUN_DIR = Path("/run/mnist-localcluster-node")
HOST_LOCK = RUN_DIR / "owner.json"
CONTAINERD_SOCKET = RUN_DIR / "containerd.sock"
# Images outlive a cluster (importing the server image takes a while); everything else does not.
CONTAINERD_ROOT = (
    Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mnist-operator" / "containerd"
)
CNI_BIN_DIR = Path("/usr/lib/cni")
SYSCTLS = ("net/ipv4/ip_forward", "net/bridge/bridge-nf-call-iptables")
# A claim whose containerd has not started yet still holds the host this long.
CLAIM_GRACE_SECONDS = 300

HOST_TOOLS = (
    "containerd",
    "containerd-shim-runc-v2",
    "ctr",
    "runc",
    "iptables",
    "ip6tables",
    "ip",
    "gcc",
    "buildah",
)
CNI_PLUGINS = ("bridge", "host-local", "portmap", "loopback")


@dataclass(frozen=True)
class NodePorts:
    kubelet: int
    kubelet_healthz: int
    proxy_healthz: int
    proxy_metrics: int


def unsupported_reason() -> str | None:
    """Why this host cannot run a real node, in words a user can act on; None if it can."""
    if os.geteuid() != 0:
        return "not root: containerd, a kubelet and kube-proxy need root (the kwok-only cluster does not)"
    missing = [t for t in HOST_TOOLS if shutil.which(t) is None]
    missing += [f"{CNI_BIN_DIR}/{p}" for p in CNI_PLUGINS if not (CNI_BIN_DIR / p).exists()]
    if missing:
        return (
            f"missing {', '.join(missing)} (Debian packages containerd, runc, containernetworking-plugins, "
            "iptables, iproute2, gcc, buildah: .ci/run installs them)"
        )
    checks = {
        "/proc/sys/net/bridge/bridge-nf-call-iptables": "the kernel has no bridge netfilter (br_netfilter)",
        "/dev/kmsg": "/dev/kmsg is missing (the kubelet's OOM watcher reads it)",
        "/sys/fs/cgroup/memory": "no cgroup v1 memory hierarchy at /sys/fs/cgroup/memory",
    }
    for path, reason in checks.items():
        if not Path(path).exists():
            return reason
    if "overlay" not in Path("/proc/filesystems").read_text():
        return "the kernel has no overlay filesystem (containerd's snapshotter needs it)"
    owner = host_owner()
    if owner is not None and _owner_alive(owner):
        return f"this host already runs the real node of the cluster in {owner['state_dir']} (one per host)"
    return None


def host_owner() -> dict[str, object] | None:
    try:
        return dict(json.loads(HOST_LOCK.read_text()))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _owner_alive(owner: dict[str, object]) -> bool:
    """The owning cluster's containerd still runs; or it is still starting (no pid yet): a claim
    younger than the start-up deadline counts."""
    pid = owner.get("pid")
    if isinstance(pid, int):
        # By argv[0]'s name, as the supervisor checks: containerd runs as /usr/bin/containerd.
        return component_alive(pid, "containerd")
    try:
        return time.time() - HOST_LOCK.stat().st_mtime < CLAIM_GRACE_SECONDS
    except FileNotFoundError:
        return False


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise ClusterError("node", f"`{' '.join(argv)}` failed: {done.stderr.strip() or done.stdout.strip()}")
    return done


# ----- configuration files -------------------------------------------------------------------


def containerd_config(pause_image: str) -> str:
    # restrict_oom_score_adj: root here lacks CAP_SYS_RESOURCE, so a negative oom_score_adj
    # (which the CRI asks for sandboxes) fails sandbox creation unless it is clamped.
    return f"""\
version = 2
root = "{CONTAINERD_ROOT}"
state = "{RUN_DIR / "containerd"}"

[grpc]
  address = "{CONTAINERD_SOCKET}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause_image}"
  restrict_oom_score_adj = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{NODE_DIR / "cni"}"
"""


def cni_config() -> dict[str, object]:
    return {
        "cniVersion": "0.4.0",
        "name": "mnist-pods",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                # Pods reach their own Service (kube-proxy DNATs back to the same pod).
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_SUBNET, "gateway": NODE_IP}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(RUN_DIR / "cni-ipam"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def kubelet_config(ports: NodePorts, ca_file: Path) -> dict[str, object]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": NODE_IP,
        "port": ports.kubelet,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": ports.kubelet_healthz,
        # The API server's client certificate (logs, exec) is signed by the cluster CA.
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(ca_file)},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "containerRuntimeEndpoint": f"unix://{CONTAINERD_SOCKET}",
        # PID 1 is not systemd here, and the hierarchies are cgroup v1.
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": CGROUP_ROOT,
        "failCgroupV1": False,
        "failSwapOn": False,
        "protectKernelDefaults": False,
        "registerWithTaints": [TAINT],
        "maxPods": 40,
        "volumePluginDir": str(NODE_DIR / "volume-plugins"),
        "resolvConf": "/etc/resolv.conf",
        # Never garbage-collect the locally built images: nothing can pull them back.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        # A test machine's disk may be fuller than a real node's: evict only when nearly out.
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "serializeImagePulls": False,
        # Status within a couple of seconds of a change (the operator reads it).
        "nodeStatusUpdateFrequency": "10s",
        "syncFrequency": "10s",
        "fileCheckFrequency": "10s",
        "shutdownGracePeriod": "0s",
    }


def proxy_config(ports: NodePorts, kubeconfig: Path) -> dict[str, object]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": NODE_NAME,
        "bindAddress": "127.0.0.1",
        "healthzBindAddress": f"127.0.0.1:{ports.proxy_healthz}",
        "metricsBindAddress": f"127.0.0.1:{ports.proxy_metrics}",
        "clusterCIDR": POD_SUBNET,
        # NodePorts only on the node's bridge address, never on the host's uplink.
        "nodePortAddresses": [f"{NODE_IP}/32"],
        # Leave the host's conntrack table size alone.
        "conntrack": {"maxPerCore": 0, "min": 0},
        # minSyncPeriod bounds how soon a removed endpoint stops getting traffic: the
        # operator's preStop pause is sized to cover it (see docs/local-cluster.md).
        "iptables": {"minSyncPeriod": "1s", "syncPeriod": "30s", "masqueradeAll": False},
    }


def write_configs(
    config_dir: Path, ports: NodePorts, ca_file: Path, proxy_kubeconfig: Path, pause_image: str
) -> None:
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "containerd.toml").write_text(containerd_config(pause_image))
    (config_dir / "kubelet.yaml").write_text(json.dumps(kubelet_config(ports, ca_file), indent=2) + "\n")
    (config_dir / "kube-proxy.yaml").write_text(
        json.dumps(proxy_config(ports, proxy_kubeconfig), indent=2) + "\n"
    )
    cni_dir = NODE_DIR / "cni"
    cni_dir.mkdir(parents=True, exist_ok=True)
    # Named to sort first: containerd takes the first file in the directory.
    (cni_dir / "10-mnist.conflist").write_text(json.dumps(cni_config(), indent=2) + "\n")


# ----- host set-up and clean-up ------------------------------------------------------------


def claim_host(state_dir: Path, service_cidr: str, kwok_pod_cidr: str) -> None:
    """Take the host for this cluster's node: lock, sysctls, bridge, routes, egress chain."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    NODE_DIR.mkdir(parents=True, exist_ok=True)
    previous = host_owner() or {}
    saved = previous.get("sysctls") or {name: _read_sysctl(name) for name in SYSCTLS}
    _write_owner({"state_dir": str(state_dir), "pid": None, "sysctls": saved})
    for name in SYSCTLS:
        _write_sysctl(name, "1")
    _run("ip", "link", "add", BRIDGE, "type", "bridge")
    _run("ip", "addr", "add", f"{NODE_IP}/24", "dev", BRIDGE)
    _run("ip", "link", "set", BRIDGE, "up")
    # ClusterIPs go to the bridge, so a packet kube-proxy has not (yet) rewritten fails here
    # instead of leaving by the default route; kwok's pod addresses are not real at all.
    _run("ip", "route", "add", service_cidr, "dev", BRIDGE, "src", NODE_IP)
    _run("ip", "route", "add", "blackhole", kwok_pod_cidr)
    _run("iptables", "-w", "-N", EGRESS_CHAIN)
    _run("iptables", "-w", "-A", EGRESS_CHAIN, "-s", POD_SUBNET, "-o", BRIDGE, "-j", "RETURN")
    _run("iptables", "-w", "-A", EGRESS_CHAIN, "-s", POD_SUBNET, "-j", "DROP")
    _run("iptables", "-w", "-I", "FORWARD", "1", "-j", EGRESS_CHAIN)


def make_cgroup_root() -> None:
    """The kubelet's cgroupRoot must exist in every v1 hierarchy before it starts."""
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        if hierarchy.name == "unified" or not hierarchy.is_dir():
            continue
        root = hierarchy / CGROUP_ROOT.lstrip("/")
        root.mkdir(exist_ok=True)
        if hierarchy.name.startswith("cpuset"):
            # A new cpuset is empty: nothing can join it until it has CPUs and memory nodes.
            for knob in ("cpuset.cpus", "cpuset.mems"):
                (root / knob).write_text((hierarchy / knob).read_text())


def record_containerd_pid(pid: int) -> None:
    owner = host_owner() or {}
    owner["pid"] = pid
    _write_owner(owner)


def _write_owner(owner: dict[str, object]) -> None:
    tmp = HOST_LOCK.with_suffix(".tmp")
    tmp.write_text(json.dumps(owner) + "\n")
    tmp.replace(HOST_LOCK)


def _read_sysctl(name: str) -> str:
    return Path("/proc/sys", name).read_text().strip()


def _write_sysctl(name: str, value: str) -> None:
    Path("/proc/sys", name).write_text(value + "\n")


def cleanup_host(bin_dir: Path | None, service_cidr: str, kwok_pod_cidr: str) -> list[str]:
    """Undo everything a node did to this host; safe to run any number of times.

    Returns what it had to remove (empty on a clean host), for logs and tests.
    """
    removed: list[str] = []
    removed += cleanup_pods(bin_dir)
    removed += _kill_matching("containerd-shim", str(CONTAINERD_SOCKET))
    removed += _kill_cgroup_tree()
    removed += _unmount_under(
        (NODE_DIR, RUN_DIR, Path("/run/netns"), Path("/var/run/netns")), netns_prefix="cni-"
    )
    if bin_dir is not None and (bin_dir / "kube-proxy").exists():
        done = _run(str(bin_dir / "kube-proxy"), "--cleanup", check=False)
        if done.returncode == 0:
            removed.append("kube-proxy rules")
    removed += _remove_chains()
    if _run("ip", "link", "show", BRIDGE, check=False).returncode == 0:
        _run("ip", "link", "delete", BRIDGE, check=False)
        removed.append(f"bridge {BRIDGE}")
    for route in (("blackhole", kwok_pod_cidr), (service_cidr,)):
        if _run("ip", "route", "del", *route, check=False).returncode == 0:
            removed.append(f"route {' '.join(route)}")
    owner = host_owner()
    if owner is not None:
        sysctls = owner.get("sysctls")
        for name, value in (sysctls if isinstance(sysctls, dict) else {}).items():
            with contextlib.suppress(OSError):
                _write_sysctl(str(name), str(value))
        HOST_LOCK.unlink(missing_ok=True)
    shutil.rmtree(NODE_DIR, ignore_errors=True)
    shutil.rmtree(RUN_DIR / "containerd", ignore_errors=True)
    shutil.rmtree(RUN_DIR / "cni-ipam", ignore_errors=True)
    return removed


def cleanup_pods(bin_dir: Path | None) -> list[str]:
    """Stop and remove every pod through containerd, while it still runs (a graceful end)."""
    if bin_dir is None or not CONTAINERD_SOCKET.exists() or not (bin_dir / "crictl").exists():
        return []
    crictl = [str(bin_dir / "crictl"), f"--runtime-endpoint=unix://{CONTAINERD_SOCKET}", "--timeout=20s"]
    listed = _run(*crictl, "pods", "-q", check=False)
    if listed.returncode != 0 or not listed.stdout.split():
        return []
    _run(*crictl, "rmp", "--force", "--all", check=False)
    return [f"{len(listed.stdout.split())} pod sandbox(es)"]


def _kill_matching(name: str, needle: str) -> list[str]:
    killed = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        cmdline = _cmdline(int(proc.name))
        is_named = cmdline.startswith(name) or f"/{name}" in cmdline.split(" ")[0]
        if is_named and needle in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(proc.name), signal.SIGKILL)
            killed.append(f"{name} pid {proc.name}")
    return killed


def _cgroup_dirs(base: Path = Path("/sys/fs/cgroup")) -> list[Path]:
    """Every pod cgroup under CGROUP_ROOT, deepest first, across the v1 hierarchies."""
    found: list[Path] = []
    for hierarchy in base.iterdir():
        # cgroupfs shows knobs as files: only directories are cgroups. os.walk skips a directory
        # that vanishes while it walks (the kubelet or a reaper removing a pod's cgroup); rglob
        # would raise.
        found += [Path(d) for d, _, _ in os.walk(hierarchy / CGROUP_ROOT.lstrip("/"))]
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def _kill_cgroup_tree() -> list[str]:
    dirs = _cgroup_dirs()
    if not dirs:
        return []
    for _ in range(50):
        pids = set()
        for d in dirs:
            with contextlib.suppress(OSError):
                pids |= {int(x) for x in (d / "cgroup.procs").read_text().split()}
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    for d in dirs:
        with contextlib.suppress(OSError):
            d.rmdir()
    left = [str(d) for d in _cgroup_dirs()]
    if left:
        raise ClusterError("node", f"cgroups left behind (processes still in them?): {', '.join(left[:5])}")
    return [f"pod cgroups under {CGROUP_ROOT}"]


def _mount_points() -> list[Path]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        # Field 5 is the mount point, with spaces and the like octal-escaped.
        points.append(Path(line.split()[4].encode().decode("unicode_escape")))
    return points


def _unmount_under(roots: tuple[Path, ...], netns_prefix: str) -> list[str]:
    removed = []
    for _ in range(5):
        targets = [
            p
            for p in _mount_points()
            if any(p == r or r in p.parents for r in roots[:2])
            or (p.parent in roots[2:] and p.name.startswith(netns_prefix))
        ]
        if not targets:
            break
        for point in sorted(set(targets), key=lambda p: len(p.parts), reverse=True):
            if _run("umount", "-l", str(point), check=False).returncode == 0:
                removed.append(f"mount {point}")
    for netns_dir in roots[2:]:
        if netns_dir.is_dir():
            for ns in netns_dir.glob(f"{netns_prefix}*"):
                ns.unlink(missing_ok=True)
    return removed


def _chains(tool: str, table: str) -> list[str]:
    done = _run(tool, "-w", "-t", table, "-S", check=False)
    return done.stdout.splitlines() if done.returncode == 0 else []


def _ours(chain: str) -> bool:
    return chain.startswith(("KUBE-", EGRESS_CHAIN))


def _remove_chains() -> list[str]:
    """The kubelet's chains (KUBE-FIREWALL, KUBE-KUBELET-CANARY, ...) and ours.

    kube-proxy --cleanup leaves the kubelet's; nothing else on a host that runs no other
    Kubernetes node creates KUBE-* chains (the host lock makes sure this is the only one).
    """
    removed = []
    for tool in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle"):
            rules = _chains(tool, table)
            for rule in rules:
                words = rule.split()
                jumps_to_ours = "-j" in words and _ours(words[words.index("-j") + 1])
                if words[0] == "-A" and jumps_to_ours and not _ours(words[1]):
                    _run(tool, "-w", "-t", table, "-D", *words[1:], check=False)
            chains = [r.split()[1] for r in rules if r.startswith("-N ") and _ours(r.split()[1])]
            for chain in chains:
                _run(tool, "-w", "-t", table, "-F", chain, check=False)
            for chain in chains:
                if _run(tool, "-w", "-t", table, "-X", chain, check=False).returncode == 0:
                    removed.append(f"{tool} {table} {chain}")
    return removed


def leftovers(service_cidr: str, kwok_pod_cidr: str) -> list[str]:
    """What of a node is still on this host (for `status` and the tests of `down`)."""
    found = []
    if _run("ip", "link", "show", BRIDGE, check=False).returncode == 0:
        found.append(f"bridge {BRIDGE}")
    routes = _run("ip", "route", "show", check=False).stdout
    for cidr in (service_cidr, kwok_pod_cidr):
        if cidr in routes:
            found.append(f"route {cidr}")
    for tool in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle"):
            found += [f"{tool} {table} {r.split()[1]}" for r in _chains(tool, table)
                      if r.startswith("-N ") and _ours(r.split()[1])]  # fmt: skip
    found += [f"mount {p}" for p in _mount_points() if NODE_DIR in p.parents or RUN_DIR in p.parents]
    found += [f"cgroup {d}" for d in _cgroup_dirs()]
    found += _procs_left()
    return found


def _procs_left() -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and str(CONTAINERD_SOCKET) in _cmdline(int(proc.name)):
            found.append(f"process {proc.name}: {_cmdline(int(proc.name))[:80]}")
    return found
