"""A real, local Kubernetes cluster for tests and the demo (see docs/local-cluster.md).

The package, by concern: `components` (command lines of the control plane), `node` (the real
node: containerd, kubelet, kube-proxy and the host changes they need), `images` (the project's
images built with buildah), `pki` (credentials), `process` (supervision), `api` (talking to it),
`cluster` (LocalCluster, which starts and stops all of it), `reaper` (clean-up after a crash).
"""

from localcluster.cluster import (
    ADMIN_USER,
    COMPONENTS,
    NODE_ANNOTATION,
    NODE_NAME,
    OPERATOR_USER,
    REPO_ROOT,
    ClusterState,
    Health,
    LocalCluster,
    find_bin_dir,
)
from localcluster.errors import ClusterError
from localcluster.process import component_alive

__all__ = [
    "ADMIN_USER",
    "COMPONENTS",
    "NODE_ANNOTATION",
    "NODE_NAME",
    "OPERATOR_USER",
    "REPO_ROOT",
    "ClusterError",
    "ClusterState",
    "Health",
    "LocalCluster",
    "component_alive",
    "find_bin_dir",
]
