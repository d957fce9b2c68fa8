"""The least-privilege install options, on the real control plane.

- The namespaced install (kustomize/overlays/namespaced): its ServiceAccount, Roles and
  RoleBindings are applied to a team namespace, a token is minted for the account, and
  `mnist-operator` runs with nothing but that token, watching that namespace only. A MnistModel
  with every kind of child becomes Ready, switching the optional children off deletes them, the
  operator is never refused anything, and it neither can nor does touch another namespace.
- The aggregated ClusterRoles (kustomize/cluster-scoped): a RoleBinding to the built-in edit role
  lets a user manage MnistModels in that namespace, one to view lets a user read them.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
from demo import service_account_kubeconfig, start_operator
from testkit import wait_for

from localcluster import REPO_ROOT, LocalCluster

sys.path.insert(0, str(Path(__file__).parent))
from packaging_support import MakeNamespace, Render

pytestmark = pytest.mark.slow

RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted"}
RBAC_KINDS = ("ServiceAccount", "Role", "RoleBinding")
MODEL = {
    "apiVersion": "aidevsecops.dev/v1alpha1",
    "kind": "MnistModel",
    "metadata": {"name": "digits"},
    "spec": {
        "modelVersion": "1",
        "autoscaling": {"minReplicas": 2, "maxReplicas": 3},
        "exposure": {"enabled": True, "host": "digits.team.example.test"},
        "monitoring": {"serviceMonitor": {"enabled": True, "interval": "15s"}},
    },
}
CHILDREN = ("deployment", "service", "ingress", "servicemonitor", "hpa", "pdb")
OPTIONAL = ("ingress", "servicemonitor", "hpa", "pdb")


def get(cluster: LocalCluster, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
    done = cluster.kubectl("get", resource, name, "-n", namespace, "-o", "json", "--ignore-not-found")
    return json.loads(done.stdout) if done.stdout.strip() else None


def install_namespaced_rbac(cluster: LocalCluster, render: Render, namespace: str) -> str:
    """The overlay's ServiceAccount, Roles and RoleBindings, as kustomize would render them with
    `namespace: <namespace>`; returns the account's user name."""
    docs = [d for d in render(REPO_ROOT / "kustomize" / "overlays" / "namespaced") if d["kind"] in RBAC_KINDS]
    for doc in docs:
        doc["metadata"]["namespace"] = namespace
        for subject in doc.get("subjects", []):
            subject["namespace"] = namespace
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}))
    return f"system:serviceaccount:{namespace}:mnist-operator"


def can_i(cluster: LocalCluster, user: str, *request: str) -> bool:
    return cluster.kubectl("auth", "can-i", *request, f"--as={user}", check=False).stdout.strip() == "yes"


@pytest.fixture
def plain_kubernetes(
    pkg_crds: None, pkg_route_api: Callable[[bool], AbstractContextManager[None]]
) -> Iterator[None]:
    with pkg_route_api(False):
        yield


def test_a_namespaced_operator_runs_on_its_roles_alone(
    cluster: LocalCluster,
    plain_kubernetes: None,
    pkg_render: Render,
    pkg_namespaces: MakeNamespace,
    tmp_path: Path,
) -> None:
    team = pkg_namespaces("team", RESTRICTED)
    elsewhere = pkg_namespaces("elsewhere")
    user = install_namespaced_rbac(cluster, pkg_render, team)
    kubeconfig = service_account_kubeconfig(cluster, team, "mnist-operator", tmp_path / "operator.kubeconfig")

    # What the account may do: its own namespace's objects, nothing cluster-scoped, nothing elsewhere.
    assert can_i(cluster, user, "patch", "mnistmodels.aidevsecops.dev", "--subresource=status", "-n", team)
    assert can_i(cluster, user, "create", "poddisruptionbudgets.policy", "-n", team)
    for request in (
        ("list", "mnistmodels.aidevsecops.dev", "-A"),
        ("list", "mnistmodels.aidevsecops.dev", "-n", elsewhere),
        ("create", "deployments.apps", "-n", elsewhere),
        ("list", "customresourcedefinitions.apiextensions.k8s.io"),
        ("list", "namespaces"),
        ("get", "secrets", "-n", team),
        ("create", "pods", "-n", team),
    ):
        assert not can_i(cluster, user, *request), request

    # A model in another namespace is none of its business: it must stay untouched.
    cluster.kubectl("apply", "-n", elsewhere, "-f", "-", input=json.dumps(MODEL))
    operator = start_operator(
        kubeconfig, tmp_path / "operator.log", extra_env={"MNIST_OPERATOR_NAMESPACES": team}
    )
    try:
        cluster.kubectl("apply", "-n", team, "-f", "-", input=json.dumps(MODEL))

        def ready() -> dict[str, Any] | None:
            body = get(cluster, "mnistmodel", team, "digits") or {}
            status = body.get("status") or {}
            conditions = {c["type"]: c for c in status.get("conditions") or []}
            current = status.get("observedGeneration") == body.get("metadata", {}).get("generation")
            ok = (
                current
                and conditions.get("Ready", {}).get("status") == "True"
                and status.get("readyReplicas") == 2
            )
            return body if ok else None

        body = wait_for(ready, "MnistModel Ready with 2 replicas", timeout=90)
        for resource in CHILDREN:
            child = get(cluster, resource, team, "digits")
            assert child is not None, f"no {resource}"
            assert child["metadata"]["ownerReferences"][0]["uid"] == body["metadata"]["uid"]

        cluster.kubectl(
            "patch",
            "mnistmodel",
            "digits",
            "-n",
            team,
            "--type=merge",
            "-p",
            json.dumps(
                {
                    "spec": {
                        "autoscaling": None,
                        "replicas": 1,
                        "exposure": {"enabled": False},
                        "monitoring": {"serviceMonitor": {"enabled": False}},
                    }
                }
            ),
        )
        wait_for(
            lambda: all(get(cluster, r, team, "digits") is None for r in OPTIONAL),
            "the optional children deleted",
            timeout=60,
        )
        time.sleep(2)  # a reconcile of the other namespace would have happened by now
    finally:
        operator.stop()
    log = operator.log()
    assert (get(cluster, "mnistmodel", elsewhere, "digits") or {}).get("status") is None
    assert get(cluster, "deployment", elsewhere, "digits") is None
    # Never refused anything, and kopf found nothing it lacked permission for.
    assert f'User "{user}" cannot' not in log, log
    assert "Not enough permissions" not in log, log
    assert "Forbidden" not in log, log

    # Every write to the children came from the namespaced account.
    writers = {
        e["user"]["username"]
        for e in cluster.audit_events(
            lambda e: (
                (e.get("objectRef") or {}).get("namespace") == team
                and e.get("verb") in ("create", "patch", "delete")
                and (e.get("objectRef") or {}).get("resource")
                in (
                    "deployments",
                    "services",
                    "ingresses",
                    "servicemonitors",
                    "horizontalpodautoscalers",
                    "poddisruptionbudgets",
                )
                and e.get("user", {}).get("username", "").startswith("system:serviceaccount:")
                and not e.get("user", {}).get("username", "").startswith("system:serviceaccount:kube-system:")
            )
        )
    }
    assert writers == {user}


@pytest.fixture
def user_roles(cluster: LocalCluster) -> None:
    cluster.kubectl("apply", "-k", str(REPO_ROOT / "kustomize" / "cluster-scoped"))


def test_the_built_in_roles_manage_or_read_mnistmodels(
    cluster: LocalCluster, user_roles: None, pkg_namespaces: MakeNamespace
) -> None:
    team = pkg_namespaces("team")
    for role, user in (("admin", "ada"), ("edit", "eve"), ("view", "vic")):
        cluster.kubectl(
            "create", "rolebinding", f"{user}-{role}", f"--clusterrole={role}", f"--user={user}", "-n", team
        )
    # The clusterrole-aggregation controller copies our rules into the built-in roles.
    wait_for(
        lambda: (
            can_i(cluster, "ada", "create", "mnistmodels.aidevsecops.dev", "-n", team)
            and can_i(cluster, "eve", "create", "mnistmodels.aidevsecops.dev", "-n", team)
            and can_i(cluster, "vic", "list", "mnistmodels.aidevsecops.dev", "-n", team)
        ),
        "admin, edit and view to aggregate the MnistModel rules",
        timeout=30,
    )
    for user in ("ada", "eve"):
        for verb in ("get", "list", "watch", "create", "update", "patch", "delete"):
            assert can_i(cluster, user, verb, "mnistmodels.aidevsecops.dev", "-n", team), (user, verb)
        assert can_i(cluster, user, "patch", "mnistmodels.aidevsecops.dev", "--subresource=scale", "-n", team)
        # The status is the operator's; holding a deletion up with a finalizer is nobody's.
        assert not can_i(
            cluster, user, "patch", "mnistmodels.aidevsecops.dev", "--subresource=status", "-n", team
        )
        assert not can_i(
            cluster, user, "update", "mnistmodels.aidevsecops.dev", "--subresource=finalizers", "-n", team
        )
    assert can_i(cluster, "vic", "get", "mnistmodels.aidevsecops.dev", "--subresource=status", "-n", team)
    for verb in ("create", "patch", "delete"):
        assert not can_i(cluster, "vic", verb, "mnistmodels.aidevsecops.dev", "-n", team), verb
    # Only where bound.
    assert not can_i(cluster, "eve", "list", "mnistmodels.aidevsecops.dev", "-A")

    # And for real, with the API server's admission: edit creates and scales one.
    body = {**MODEL, "spec": {"modelVersion": "1"}}
    done = cluster.kubectl("apply", "-n", team, "--as=eve", "-f", "-", input=json.dumps(body), check=False)
    assert done.returncode == 0, done.stderr
    done = cluster.kubectl(
        "scale", "mnistmodel", "digits", "-n", team, "--replicas=2", "--as=eve", check=False
    )
    assert done.returncode == 0, done.stderr
    done = cluster.kubectl("delete", "mnistmodel", "digits", "-n", team, "--as=vic", check=False)
    assert done.returncode != 0 and "forbidden" in done.stderr.lower()
