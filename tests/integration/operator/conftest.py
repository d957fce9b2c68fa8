"""Fixtures for the operator against the real local control plane (all named `op_*` or `mnist_*`).

- `mnist_crd` (session): the MnistModel CRD from crds/, installed once.
- `openshift_apis` / `plain_apis`: the Route and ServiceMonitor CRDs (tests/fixtures/crds)
  installed, or removed, for one test; whatever was there before is put back afterwards.
- `op_start`: starts `mnist-operator` as a subprocess with the cluster's operator kubeconfig
  (its own identity in the audit log), watching the given namespaces; stopped at teardown.
- `op_kube`: kubectl and API helpers scoped to the test's namespace.
The classes behind the last two, and their types for the tests, are in operator_support.py.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from localcluster import REPO_ROOT, LocalCluster

sys.path.insert(0, str(Path(__file__).parent))
from operator_support import install_mnist_crd, op_kube, op_start, pytest_runtest_makereport

__all__ = ["op_kube", "op_start", "pytest_runtest_makereport"]  # fixtures and a hook, for pytest

FIXTURE_CRDS = REPO_ROOT / "tests" / "fixtures" / "crds"
OPTIONAL_CRDS = {
    "routes.route.openshift.io": FIXTURE_CRDS / "route.openshift.io_routes.yaml",
    "servicemonitors.monitoring.coreos.com": FIXTURE_CRDS / "monitoring.coreos.com_servicemonitors.yaml",
}


@pytest.fixture(scope="session")
def mnist_crd(cluster: LocalCluster) -> str:
    return install_mnist_crd(cluster)


def _crd_present(cluster: LocalCluster, name: str) -> bool:
    return cluster.kubectl("get", "crd", name, "--ignore-not-found", "-o", "name").stdout.strip() != ""


def _set_crds(cluster: LocalCluster, wanted: dict[str, bool]) -> None:
    for name, present in wanted.items():
        if present and not _crd_present(cluster, name):
            cluster.kubectl("apply", "-f", str(OPTIONAL_CRDS[name]))
            cluster.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
        elif not present and _crd_present(cluster, name):
            cluster.kubectl("delete", "crd", name, "--wait=true", "--timeout=60s")


@contextlib.contextmanager
def optional_crds(cluster: LocalCluster, present: bool) -> Iterator[None]:
    before = {name: _crd_present(cluster, name) for name in OPTIONAL_CRDS}
    _set_crds(cluster, dict.fromkeys(OPTIONAL_CRDS, present))
    try:
        yield
    finally:
        _set_crds(cluster, before)


@pytest.fixture
def openshift_apis(cluster: LocalCluster) -> Iterator[None]:
    """The Route and ServiceMonitor APIs are served (as on OpenShift with the Prometheus operator)."""
    with optional_crds(cluster, present=True):
        yield


@pytest.fixture
def plain_apis(cluster: LocalCluster) -> Iterator[None]:
    """Neither the Route nor the ServiceMonitor API is served (plain Kubernetes)."""
    with optional_crds(cluster, present=False):
        yield
