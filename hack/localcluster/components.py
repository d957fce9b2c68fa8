"""Command lines of the control plane's components (pure: paths and ports in, argv out)."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

from devkit import free_ports

SERVICE_CIDR = "10.0.0.0/16"  # room for benchmarks with hundreds of Services
KWOK_POD_CIDR = "10.244.0.0/16"  # fake pod addresses, across several kwok nodes
KWOK_NODE_NAME = "kwok-node-0"
KWOK_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")

# Start order; teardown runs in reverse. The real node's components follow when it runs.
CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
NODE_COMPONENTS = ("containerd", "kubelet", "kube-proxy")


@dataclass(frozen=True)
class Ports:
    etcd: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int
    kwok: int
    kubelet: int = 0
    kubelet_healthz: int = 0
    proxy_healthz: int = 0
    proxy_metrics: int = 0

    @classmethod
    def allocate(cls) -> Ports:
        return cls(*free_ports(10))


@dataclass(frozen=True)
class Layout:
    """Where one cluster keeps its files."""

    state_dir: Path

    @property
    def pki(self) -> Path:
        return self.state_dir / "pki"

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"

    @property
    def etcd_data(self) -> Path:
        return self.state_dir / "etcd-data"

    @property
    def audit_log(self) -> Path:
        return self.logs / "audit.log"

    @property
    def audit_policy(self) -> Path:
        return self.state_dir / "audit-policy.yaml"

    @property
    def kwok_config(self) -> Path:
        return self.state_dir / "kwok.yaml"

    def kubeconfig_of(self, component: str) -> Path:
        return self.pki / f"{component}.kubeconfig"


def write_configs(layout: Layout) -> None:
    # Metadata for every write so tests can count writes; reads and the chatty
    # lease/event traffic are left out to keep the log small.
    layout.audit_policy.write_text(
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
    layout.kwok_config.write_text(
        "apiVersion: config.kwok.x-k8s.io/v1alpha1\nkind: KwokConfiguration\noptions: {}\n"
    )


def etcd_args(layout: Layout, p: Ports) -> list[str]:
    return [
        "--name=local",
        f"--data-dir={layout.etcd_data}",
        f"--listen-client-urls=http://127.0.0.1:{p.etcd}",
        f"--advertise-client-urls=http://127.0.0.1:{p.etcd}",
        f"--listen-peer-urls=http://127.0.0.1:{p.etcd_peer}",
        f"--initial-advertise-peer-urls=http://127.0.0.1:{p.etcd_peer}",
        f"--initial-cluster=local=http://127.0.0.1:{p.etcd_peer}",
        "--unsafe-no-fsync",
        "--quota-backend-bytes=2147483648",
        "--log-level=warn",
    ]


def apiserver_args(layout: Layout, p: Ports, address: str, *, pods_reach_it: bool) -> list[str]:
    """`address` is 127.0.0.1, or the real node's bridge address so that pods reach the API.

    With pods, the `kubernetes` Service's endpoints must be that address (the lease
    reconciler writes them); on loopback the reconciler refuses the address, so it is off.
    """
    pki = layout.pki
    reconciler = (
        ["--endpoint-reconciler-type=lease"] if pods_reach_it else ["--endpoint-reconciler-type=none"]
    )
    return [
        f"--etcd-servers=http://127.0.0.1:{p.etcd}",
        f"--bind-address={address}",
        f"--advertise-address={address}",
        *reconciler,
        f"--secure-port={p.apiserver}",
        f"--cert-dir={pki}",
        f"--tls-cert-file={pki / 'serving.crt'}",
        f"--tls-private-key-file={pki / 'serving.key'}",
        f"--client-ca-file={pki / 'ca.crt'}",
        f"--token-auth-file={pki / 'tokens.csv'}",
        f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
        f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
        # Node names resolve nowhere here (no cluster DNS): reach kubelets by address.
        "--kubelet-preferred-address-types=InternalIP",
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
        f"--audit-policy-file={layout.audit_policy}",
        f"--audit-log-path={layout.audit_log}",
        "--audit-log-maxbackup=1",
        "--audit-log-maxsize=200",
        "--profiling=false",
    ]


def _delegating_component_args(layout: Layout, component: str, port: int) -> list[str]:
    kubeconfig = layout.kubeconfig_of(component)
    return [
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        # Our CA-signed cert (not a self-signed one in memory), so `status` can verify it.
        f"--tls-cert-file={layout.pki / 'serving.crt'}",
        f"--tls-private-key-file={layout.pki / 'serving.key'}",
        "--leader-elect=false",
        "--profiling=false",
    ]


def controller_manager_args(layout: Layout, p: Ports) -> list[str]:
    pki = layout.pki
    return [
        *_delegating_component_args(layout, "kube-controller-manager", p.controller_manager),
        f"--root-ca-file={pki / 'ca.crt'}",
        f"--service-account-private-key-file={pki / 'sa.key'}",
        f"--cluster-signing-cert-file={pki / 'ca.crt'}",
        f"--cluster-signing-key-file={pki / 'ca.key'}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--use-service-account-credentials=false",
        # Faster garbage collection and endpoint updates make tests snappier.
        "--concurrent-gc-syncs=20",
    ]


def scheduler_args(layout: Layout, p: Ports) -> list[str]:
    return _delegating_component_args(layout, "kube-scheduler", p.scheduler)


def kwok_args(layout: Layout, p: Ports) -> list[str]:
    return [
        f"--config={layout.kwok_config}",
        f"--kubeconfig={layout.kubeconfig_of('kwok')}",
        "--manage-all-nodes=false",
        f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION[0]}={KWOK_NODE_ANNOTATION[1]}",
        # Keep the node's Lease renewed: without it kwok posts node status only every ~50 s,
        # the node-lifecycle controller marks the node NotReady after its 50 s grace, and every
        # pod on it turns Ready=False for good (kwok does not set it back).
        "--node-lease-duration-seconds=40",
        f"--cidr={KWOK_POD_CIDR}",
        "--node-ip=127.0.0.1",
        f"--server-address=127.0.0.1:{p.kwok}",
    ]


def kwok_node() -> dict[str, object]:
    capacity = {"cpu": "32", "memory": "256Gi", "pods": "110", "ephemeral-storage": "1Ti"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": KWOK_NODE_NAME,
            "annotations": {
                KWOK_NODE_ANNOTATION[0]: KWOK_NODE_ANNOTATION[1],
                "node.alpha.kubernetes.io/ttl": "0",
            },
            "labels": {
                "kubernetes.io/hostname": KWOK_NODE_NAME,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
            },
        },
        "spec": {},
        "status": {"capacity": capacity, "allocatable": capacity},
    }


def kubelet_args(config: Path, kubeconfig: Path, root_dir: Path, *, node_name: str, node_ip: str,
                 labels: dict[str, str]) -> list[str]:  # fmt: skip
    return [
        f"--config={config}",
        f"--kubeconfig={kubeconfig}",
        f"--root-dir={root_dir}",
        f"--cert-dir={root_dir / 'pki'}",
        f"--hostname-override={node_name}",
        f"--node-ip={node_ip}",
        f"--node-labels={','.join(f'{k}={v}' for k, v in labels.items())}",
        "--v=1",
    ]
