"""The operator runs with the shipped RBAC and nothing else.

The ServiceAccount, ClusterRoles and bindings of manifests/rbac (plus the overlay's exposure
folder: ingress/ for plain Kubernetes, route/ for OpenShift) are applied to a test namespace,
a token is minted for the account with `kubectl create token`, and `mnist-operator` runs
cluster-wide with a kubeconfig holding only that token. A MnistModel that uses every child kind
(Deployment, Service, Ingress or Route, ServiceMonitor, HPA) must become Ready in a namespace
enforcing the `restricted` Pod Security Standard, every child write must come from that account
(the audit log says who wrote what), switching the optional children off must delete them, and
the operator must never have been refused anything; requests outside the RBAC are refused.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
from demo import install_rbac, service_account_kubeconfig, start_operator
from testkit import WaitTimeoutError, wait_for

from localcluster import LocalCluster

sys.path.insert(0, str(Path(__file__).parent))
from packaging_support import MakeNamespace

pytestmark = pytest.mark.slow

RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted"}
MODEL = {
    "apiVersion": "aidevsecops.dev/v1alpha1",
    "kind": "MnistModel",
    "metadata": {"name": "digits"},
    "spec": {
        "modelVersion": "1",
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
        "autoscaling": {"minReplicas": 1, "maxReplicas": 2, "targetCPUUtilizationPercentage": 70},
        "exposure": {"enabled": True, "host": "digits.example.test"},
        "monitoring": {"serviceMonitor": {"enabled": True, "interval": "15s"}},
    },
}
EXPOSURE = {"ingress": "ingresses", "route": "routes"}
CHILD_RESOURCES = (
    "deployments",
    "services",
    "ingresses",
    "routes",
    "servicemonitors",
    "horizontalpodautoscalers",
    "poddisruptionbudgets",
)


class Account:
    """The operator's ServiceAccount from manifests/rbac, in its own namespace, with unique role names."""

    def __init__(self, cluster: LocalCluster, namespace: str, exposure: str, work: Path) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.suffix = f"-{uuid.uuid4().hex[:6]}"
        self.name = install_rbac(cluster, namespace, exposure=exposure, suffix=self.suffix, work=work)
        self.user = f"system:serviceaccount:{namespace}:{self.name}"
        self.kubeconfig = service_account_kubeconfig(
            cluster, namespace, self.name, work / "operator.kubeconfig"
        )

    def can_i(self, *request: str) -> bool:
        done = self.cluster.kubectl("auth", "can-i", *request, f"--as={self.user}", check=False)
        return done.stdout.strip() == "yes"

    def remove(self) -> None:
        roles = [f"mnist-operator{self.suffix}", f"mnist-operator-exposure{self.suffix}"]
        self.cluster.kubectl(
            "delete", "clusterrolebinding,clusterrole", *roles, "--ignore-not-found", check=False
        )


@pytest.fixture
def account_for(
    cluster: LocalCluster, pkg_namespaces: MakeNamespace, tmp_path: Path
) -> Iterator[Callable[[str], Account]]:
    made: list[Account] = []

    def make(exposure: str) -> Account:
        account = Account(cluster, pkg_namespaces("operator"), exposure, tmp_path)
        made.append(account)
        return account

    yield make
    for account in made:
        account.remove()


def get(cluster: LocalCluster, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
    done = cluster.kubectl("get", resource, name, "-n", namespace, "-o", "json", "--ignore-not-found")
    return json.loads(done.stdout) if done.stdout.strip() else None


def ready_for_generation(cluster: LocalCluster, namespace: str) -> Callable[[], dict[str, Any] | None]:
    def probe() -> dict[str, Any] | None:
        body = get(cluster, "mnistmodel", namespace, "digits")
        if body is None:
            return None
        status = body.get("status") or {}
        ready = [c for c in status.get("conditions") or [] if c["type"] == "Ready"]
        current = status.get("observedGeneration") == body["metadata"]["generation"]
        return body if current and ready and ready[0]["status"] == "True" else None

    return probe


@pytest.mark.parametrize("exposure", ["ingress", "route"])
def test_operator_runs_with_only_the_shipped_rbac(  # noqa: PLR0917 (pytest fixtures)
    exposure: str,
    cluster: LocalCluster,
    pkg_crds: None,
    pkg_route_api: Callable[[bool], AbstractContextManager[None]],
    pkg_namespaces: MakeNamespace,
    account_for: Callable[[str], Account],
    tmp_path: Path,
) -> None:
    with pkg_route_api(exposure == "route"):
        account = account_for(exposure)
        apps = pkg_namespaces("models", RESTRICTED)
        operator = start_operator(account.kubeconfig, tmp_path / "operator.log")
        try:
            cluster.kubectl("apply", "-n", apps, "-f", "-", input=json.dumps(MODEL))
            body = wait_for(ready_for_generation(cluster, apps), "MnistModel Ready", timeout=90)
            assert body["status"]["readyReplicas"] == 1
            for resource in ("deployment", "service", EXPOSURE[exposure], "servicemonitor", "hpa"):
                child = get(cluster, resource, apps, "digits")
                assert child is not None, f"no {resource}"
                assert child["metadata"]["ownerReferences"][0]["uid"] == body["metadata"]["uid"]
            # The server pods passed `restricted` admission and run (kwok plays the kubelet).
            pods = json.loads(cluster.kubectl("get", "pods", "-n", apps, "-o", "json").stdout)["items"]
            assert [p["status"]["phase"] for p in pods] == ["Running"]

            # Switching the optional children off makes the operator delete them.
            patch = {
                "spec": {
                    "autoscaling": None,
                    "replicas": 2,
                    "exposure": {"enabled": False},
                    "monitoring": {"serviceMonitor": {"enabled": False}},
                }
            }
            cluster.kubectl(
                "patch", "mnistmodel", "digits", "-n", apps, "--type=merge", "-p", json.dumps(patch)
            )

            def optional_children_gone() -> dict[str, Any] | None:
                gone = all(
                    get(cluster, r, apps, "digits") is None
                    for r in (EXPOSURE[exposure], "servicemonitor", "hpa")
                )
                return ready_for_generation(cluster, apps)() if gone else None

            try:
                body = wait_for(optional_children_gone, "optional children deleted, Ready again", timeout=90)
            except WaitTimeoutError as exc:
                left = {
                    r: get(cluster, r, apps, "digits") is not None
                    for r in (EXPOSURE[exposure], "servicemonitor", "hpa")
                }
                status = (get(cluster, "mnistmodel", apps, "digits") or {}).get("status")
                detail = f"still there: {left}\nstatus: {json.dumps(status, indent=1)}"
                pytest.fail(f"{exc}\n{detail}\n{operator.log()[-4000:]}")
            assert body["status"]["readyReplicas"] == 2
            assert get(cluster, "pdb", apps, "digits") is not None  # 2 replicas: a budget
            # Gone before the next operator starts: a cluster-wide operator would pick it up.
            cluster.kubectl("delete", "mnistmodel", "digits", "-n", apps, "--wait=true", "--timeout=60s")
        finally:
            operator.stop()
        log = operator.log()

    # Every write to the children came from the operator's ServiceAccount: nothing here was
    # done with more rights than the shipped RBAC gives.
    def child_writes() -> list[dict[str, Any]] | None:
        events = cluster.audit_events(
            lambda e: (
                (e.get("objectRef") or {}).get("namespace") == apps
                and (e.get("objectRef") or {}).get("resource") in CHILD_RESOURCES
                and e.get("verb") in ("create", "update", "patch", "delete")
                and e.get("user", {}).get("username", "").startswith("system:serviceaccount:")
            )
        )
        deleted = {(e["objectRef"]["resource"]) for e in events if e["verb"] == "delete"}
        return (
            events if {EXPOSURE[exposure], "servicemonitors", "horizontalpodautoscalers"} <= deleted else None
        )

    writes = wait_for(child_writes, "the audit log of the operator's writes", timeout=30)
    assert {e["user"]["username"] for e in writes} == {account.user}
    assert {e["objectRef"]["resource"] for e in writes} == {
        "deployments",
        "services",
        EXPOSURE[exposure],
        "servicemonitors",
        "horizontalpodautoscalers",
        "poddisruptionbudgets",
    }
    others = cluster.audit_events(
        lambda e: (
            (e.get("objectRef") or {}).get("namespace") == apps
            and (e.get("objectRef") or {}).get("resource") in CHILD_RESOURCES
            and e.get("verb") in ("create", "update", "patch", "delete")
            and e.get("user", {}).get("username") not in (account.user,)
            and not e.get("user", {}).get("username", "").startswith("system:kube-controller-manager")
            and not e.get("user", {}).get("username", "").startswith("system:serviceaccount:kube-system:")
        )
    )
    assert others == [], "someone other than the operator's account wrote the children"
    # RBAC refusals name the account ("User ... cannot ..."); kopf says "Not enough permissions".
    assert f'User "{account.user}" cannot' not in log, log
    assert "Not enough permissions" not in log, log


def test_requests_outside_the_rbac_are_refused(
    cluster: LocalCluster,
    pkg_crds: None,
    account_for: Callable[[str], Account],
    pkg_namespaces: MakeNamespace,
) -> None:
    account = account_for("ingress")
    apps = pkg_namespaces("models")
    # What it needs, it has...
    allowed: tuple[tuple[str, ...], ...] = (
        ("list", "mnistmodels.aidevsecops.dev", "-A"),
        ("patch", "mnistmodels.aidevsecops.dev", "--subresource=status", "-n", apps),
        ("patch", "deployments.apps", "-n", apps),
        ("create", "ingresses.networking.k8s.io", "-n", apps),
        ("delete", "servicemonitors.monitoring.coreos.com", "-n", apps),
        ("create", "events", "-n", apps),
    )
    for request in allowed:
        assert account.can_i(*request), request
    # ...and nothing more: no spec writes, no deleting what the garbage collector deletes, no
    # pods, no secrets, no other Route verbs than reading on a plain cluster.
    refused: tuple[tuple[str, ...], ...] = (
        ("patch", "mnistmodels.aidevsecops.dev", "-n", apps),
        ("delete", "mnistmodels.aidevsecops.dev", "-n", apps),
        ("delete", "deployments.apps", "-n", apps),
        ("delete", "services", "-n", apps),
        ("create", "pods", "-n", apps),
        ("get", "secrets", "-n", apps),
        ("list", "configmaps", "-A"),
        ("create", "routes.route.openshift.io", "-n", apps),
        ("create", "customresourcedefinitions.apiextensions.k8s.io"),
        ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
    )
    for request in refused:
        assert not account.can_i(*request), request
    # A real request with the account's token, not only the authorizer's opinion.
    done = cluster.kubectl(f"--kubeconfig={account.kubeconfig}", "get", "secrets", "-n", apps, check=False)
    assert done.returncode != 0
    assert "Forbidden" in done.stderr and account.user in done.stderr
    listed = cluster.kubectl(f"--kubeconfig={account.kubeconfig}", "get", "mnistmodels", "-A", check=False)
    assert listed.returncode == 0, listed.stderr
