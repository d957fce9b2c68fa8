"""Fault injection on the real control plane: a cluster of these tests' own.

The tests here kill the API server and etcd, compact etcd and throttle the API server, so they do
not share the session's cluster: `cluster` is overridden for this directory with one started
for it (kwok only), and every component that a test leaves dead is started again after it.
The operator fixtures are those of tests/integration/operator (operator_support.py).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from localcluster import REPO_ROOT, LocalCluster

sys.path.insert(0, str(REPO_ROOT / "tests" / "integration" / "operator"))
sys.path.insert(0, str(Path(__file__).parent))  # fault_support
from operator_support import install_mnist_crd, op_kube, op_start, pytest_runtest_makereport

__all__ = ["op_kube", "op_start", "pytest_runtest_makereport"]  # fixtures and a hook, for pytest


@pytest.fixture(scope="package")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    local = LocalCluster(tmp_path_factory.mktemp("fault-cluster"), bound_to_parent=True, real_node="off")
    local.start()
    try:
        yield local
    finally:
        local.stop()


@pytest.fixture(autouse=True)
def healed(cluster: LocalCluster) -> Iterator[None]:
    """Whatever a test killed runs again afterwards, so the next test starts from a whole cluster."""
    yield
    for health in cluster.health():
        if health.component in cluster.components() and not health.ok:
            cluster.restart(health.component)


@pytest.fixture(scope="package")
def mnist_crd(cluster: LocalCluster) -> str:
    return install_mnist_crd(cluster)
