"""Fixtures for the install tests against the real local control plane (all named `pkg_*`).

- `pkg_render(path)`: `kubectl kustomize` with the cluster's own kubectl, as parsed documents.
- `pkg_crds` (module): the MnistModel CRD and the test CRDs of the APIs the manifests use
  (Route, ServiceMonitor, PrometheusRule, Argo CD Application: tests/fixtures/crds); the
  fixture CRDs that were not installed before are removed again at the end of the module.
- `pkg_route_api(present)`: a context manager that makes the Route API served or not for one
  test, and puts back what was there (the ServiceMonitor API stays served).
- `pkg_namespaces(name, labels)`: more namespaces for one test, deleted at its end.
Helpers shared with `make demo` (install_rbac, start_operator, ...) come from hack/demo.py.
"""

from __future__ import annotations

import contextlib
import json
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from localcluster import REPO_ROOT, LocalCluster

sys.path.insert(0, str(Path(__file__).parent))
from packaging_support import CRD_FILES, ROUTE_CRD, MakeNamespace, Render, crd_present, set_crd


@pytest.fixture
def pkg_render(cluster: LocalCluster) -> Render:
    def render(path: Path) -> list[dict[str, Any]]:
        out = cluster.kubectl("kustomize", str(path)).stdout
        return [doc for doc in yaml.safe_load_all(out) if doc]

    return render


@pytest.fixture(scope="module")
def pkg_crds(cluster: LocalCluster) -> Iterator[None]:
    before = {name: crd_present(cluster, name) for name in CRD_FILES}
    cluster.kubectl("apply", "-k", str(REPO_ROOT / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "crd/mnistmodels.aidevsecops.dev", "--timeout=60s")
    for name in CRD_FILES:
        set_crd(cluster, name, True)
    try:
        yield
    finally:
        for name, was_there in before.items():
            if not was_there:
                set_crd(cluster, name, False)


@pytest.fixture
def pkg_route_api(
    cluster: LocalCluster, pkg_crds: None
) -> Callable[[bool], contextlib.AbstractContextManager[None]]:
    @contextlib.contextmanager
    def route_api(present: bool) -> Iterator[None]:
        before = crd_present(cluster, ROUTE_CRD)
        set_crd(cluster, ROUTE_CRD, present)
        try:
            yield
        finally:
            set_crd(cluster, ROUTE_CRD, before)

    return route_api


@pytest.fixture
def pkg_namespaces(cluster: LocalCluster) -> Iterator[MakeNamespace]:
    created: list[str] = []

    def create(stem: str, labels: dict[str, str] | None = None) -> str:
        name = f"{stem}-{uuid.uuid4().hex[:6]}"
        doc = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels or {}}}
        cluster.kubectl("create", "-f", "-", input=json.dumps(doc))
        created.append(name)
        return name

    yield create
    for name in created:
        cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)
