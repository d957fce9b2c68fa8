"""Helpers for the packaging tests and their conftest (imported by path, like tests/unit's)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from localcluster import REPO_ROOT, LocalCluster

FIXTURE_CRDS = REPO_ROOT / "tests" / "fixtures" / "crds"
CRD_FILES = {
    "routes.route.openshift.io": FIXTURE_CRDS / "route.openshift.io_routes.yaml",
    "servicemonitors.monitoring.coreos.com": FIXTURE_CRDS / "monitoring.coreos.com_servicemonitors.yaml",
    "prometheusrules.monitoring.coreos.com": FIXTURE_CRDS / "monitoring.coreos.com_prometheusrules.yaml",
    "applications.argoproj.io": FIXTURE_CRDS / "argoproj.io_applications.yaml",
}
ROUTE_CRD = "routes.route.openshift.io"

Render = Callable[[Path], list[dict[str, Any]]]


class MakeNamespace(Protocol):
    """The `pkg_namespaces` fixture: a namespace named `<stem>-<random>`, deleted after the test."""

    def __call__(self, stem: str, labels: dict[str, str] | None = None) -> str: ...


def crd_present(cluster: LocalCluster, name: str) -> bool:
    return cluster.kubectl("get", "crd", name, "--ignore-not-found", "-o", "name").stdout.strip() != ""


def set_crd(cluster: LocalCluster, name: str, present: bool) -> None:
    if present and not crd_present(cluster, name):
        cluster.kubectl("apply", "-f", str(CRD_FILES[name]))
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
    elif not present and crd_present(cluster, name):
        cluster.kubectl("delete", "crd", name, "--wait=true", "--timeout=60s")


@contextlib.contextmanager
def namespace_if_missing(cluster: LocalCluster, doc: dict[str, Any]) -> Iterator[None]:
    """Create a namespace from its manifest unless it exists; delete it afterwards if we did."""
    name = doc["metadata"]["name"]
    exists = cluster.kubectl("get", "namespace", name, "--ignore-not-found", "-o", "name").stdout.strip()
    if not exists:
        cluster.kubectl("create", "-f", "-", input=json.dumps(doc))
    try:
        yield
    finally:
        if not exists:
            cluster.kubectl("delete", "namespace", name, "--wait=true", "--timeout=90s", check=False)
