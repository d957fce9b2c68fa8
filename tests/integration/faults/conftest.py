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
from operator_support import Kube, StartOperator, started_operators


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
    cluster.kubectl("apply", "-k", str(REPO_ROOT / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "crd/mnistmodels.aidevsecops.dev", "--timeout=60s")
    return "mnistmodels.aidevsecops.dev"


@pytest.fixture
def op_start(
    cluster: LocalCluster, mnist_crd: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[StartOperator]:
    with started_operators(cluster, tmp_path, request) as start:
        yield start


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture
def op_kube(cluster: LocalCluster, namespace: str, mnist_crd: str) -> Kube:
    return Kube(cluster, namespace)
