"""The install: every kustomization renders with the cluster's own kubectl, every overlay holds the
whole install, passes a server-side dry run against the real API server (with the Route,
ServiceMonitor, PrometheusRule and Argo CD Application CRDs installed), and its RBAC is exactly
what the operator's code calls. The namespaced overlay holds Roles only, and the same rules minus
what is cluster-scoped. The Argo CD pieces are checked against the real API server too.
"""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml

from localcluster import REPO_ROOT, LocalCluster
from mnist_operator import api
from mnist_operator.handlers import WATCHED_CHILDREN
from mnist_operator.settings import OperatorSettings

sys.path.insert(0, str(Path(__file__).parent))
from packaging_support import Render, namespace_if_missing

OVERLAYS = ("kubernetes", "openshift", "dev")
SYSTEM_NAMESPACE = "mnist-operator-system"
NAMESPACED = "namespaced"
TEAM_NAMESPACE = "mnist-models"  # the namespaced overlay's own; overlays of it set theirs
USER_ROLES = {("ClusterRole", "mnistmodels-edit"), ("ClusterRole", "mnistmodels-view")}
CLUSTER_SCOPED_KINDS = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}
DASHBOARD = REPO_ROOT / "manifests" / "monitoring" / "mnist-dashboard.json"
HEALTH_KEY = "resource.customizations.health.aidevsecops.dev_MnistModel"
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted"}
# The leader election's Role, in the operator's own namespace, in every install.
LEADER_ELECTION = {
    ("Role", "mnist-operator-leader-election"),
    ("RoleBinding", "mnist-operator-leader-election"),
}
LEASE_RULES = {
    (api.LEASE.group, api.LEASE.plural): {"create"},  # a create names no object: RBAC cannot narrow it
    (api.LEASE.group, f"{api.LEASE.plural}[{api.LEASE_NAME}]"): {"get", "update"},
}


def overlay(name: str) -> Path:
    return REPO_ROOT / "kustomize" / "overlays" / name


def kustomization_dirs() -> list[Path]:
    roots = [REPO_ROOT / "crds", REPO_ROOT / "manifests", REPO_ROOT / "kustomize"]
    return sorted(p.parent for root in roots for p in root.rglob("kustomization.yaml"))


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [found] = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def granted(
    docs: list[dict[str, Any]], namespace: str = SYSTEM_NAMESPACE, *, role_kind: str = "ClusterRole"
) -> dict[tuple[str, str], set[str]]:
    """(apiGroup, resource) -> verbs, over the (Cluster)Roles bound to the operator's account; a
    rule for some objects only names them: "resource[name]"."""
    bound = {
        b["roleRef"]["name"]
        for b in by_kind(docs, f"{role_kind}Binding")
        if {"kind": "ServiceAccount", "name": "mnist-operator", "namespace": namespace} in b["subjects"]
        and b["roleRef"]["kind"] == role_kind
    }
    rules: dict[tuple[str, str], set[str]] = defaultdict(set)
    for role in by_kind(docs, role_kind):
        if role["metadata"]["name"] not in bound:
            continue
        for rule in role["rules"]:
            names = ",".join(rule.get("resourceNames", []))
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    rules[group, f"{resource}[{names}]" if names else resource] |= set(rule["verbs"])
    return dict(rules)


@pytest.mark.parametrize("path", kustomization_dirs(), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_kustomization_renders_and_references_only_folders_outside(
    path: Path, pkg_render: Render
) -> None:
    assert pkg_render(path), f"{path} renders nothing"
    kustomization = yaml.safe_load((path / "kustomization.yaml").read_text())
    for entry in kustomization.get("resources", []):
        target = (path / entry).resolve()
        if not target.is_relative_to(path):
            assert (target / "kustomization.yaml").is_file(), f"{path}: {entry} is not a kustomization folder"
    files = [p["path"] for p in kustomization.get("patches", []) if "path" in p]
    files += [
        f.split("=")[-1] for g in kustomization.get("configMapGenerator", []) for f in g.get("files", [])
    ]
    for entry in files:
        assert (path / entry).resolve().is_relative_to(path), f"{path}: {entry} is outside the kustomization"


@pytest.mark.parametrize("name", OVERLAYS)
def test_overlay_holds_the_whole_install(name: str, pkg_render: Render) -> None:
    docs = pkg_render(overlay(name))
    assert {(d["kind"], d["metadata"]["name"]) for d in docs} == {
        ("Namespace", SYSTEM_NAMESPACE),
        ("CustomResourceDefinition", "mnistmodels.aidevsecops.dev"),
        ("ServiceAccount", "mnist-operator"),
        ("ClusterRole", "mnist-operator"),
        ("ClusterRole", "mnist-operator-exposure"),
        ("ClusterRoleBinding", "mnist-operator"),
        ("ClusterRoleBinding", "mnist-operator-exposure"),
        ("Deployment", "mnist-operator"),
        ("PodDisruptionBudget", "mnist-operator"),
        ("Service", "mnist-operator-metrics"),
        ("ServiceMonitor", "mnist-operator"),
        ("PrometheusRule", "mnist-operator"),
        ("ConfigMap", "mnist-dashboard"),
        *USER_ROLES,
        *LEADER_ELECTION,
    }
    for doc in docs:
        assert doc["metadata"].get("namespace") == (
            None if doc["kind"] in CLUSTER_SCOPED_KINDS else SYSTEM_NAMESPACE
        )

    crd = one(docs, "CustomResourceDefinition", "mnistmodels.aidevsecops.dev")
    assert crd["metadata"]["annotations"]["argocd.argoproj.io/sync-options"] == "Prune=false,Delete=false"
    namespace = one(docs, "Namespace", SYSTEM_NAMESPACE)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"

    dashboard = one(docs, "ConfigMap", "mnist-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["mnist-dashboard.json"]) == json.loads(DASHBOARD.read_text())

    service = one(docs, "Service", "mnist-operator-metrics")
    monitor = one(docs, "ServiceMonitor", "mnist-operator")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "mnist-operator"  # job label
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == [p["name"] for p in service["spec"]["ports"]]


@pytest.mark.parametrize("name", OVERLAYS)
def test_operator_deployment(name: str, pkg_render: Render) -> None:
    docs = pkg_render(overlay(name))
    deployment = one(docs, "Deployment", "mnist-operator")
    spec = deployment["spec"]
    # Two replicas, one leader (the Lease): a rolling update keeps one running throughout.
    assert spec["replicas"] == 2
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    pod = spec["template"]["spec"]
    [spread] = pod["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["labelSelector"]["matchLabels"] == spec["selector"]["matchLabels"]
    budget = one(docs, "PodDisruptionBudget", "mnist-operator")["spec"]
    assert budget == {"maxUnavailable": 1, "selector": spec["selector"]}
    assert pod["serviceAccountName"] == "mnist-operator"
    [container] = pod["containers"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert set(container["resources"]) == {"requests", "limits"}
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    # The operator's own settings parser accepts the environment the manifest sets.
    env = {e["name"]: e["value"] for e in container["env"]}
    assert all(key.startswith("MNIST_OPERATOR_") for key in env)
    settings = OperatorSettings.from_env(env)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": settings.metrics_port, "health": settings.health_port}
    assert settings.namespaces == ()  # cluster-wide, as the ClusterRoles grant
    # Leader election, its Lease in the pod's own namespace (where the Role is).
    assert settings.leader_election and settings.leader_election_namespace == ""
    assert granted(docs, role_kind="Role") == LEASE_RULES

    rendered = json.dumps(docs)
    dockerfile_user = re.search(r"^USER (\d+):", (REPO_ROOT / "Dockerfile.operator").read_text(), re.M)
    assert dockerfile_user is not None
    if name == "openshift":
        # The restricted-v2 SCC assigns the UID; a pinned one would be refused.
        assert "runAsUser" not in rendered and "runAsGroup" not in rendered
    else:
        assert pod["securityContext"]["runAsUser"] == int(dockerfile_user.group(1))
    if name == "dev":
        assert container["image"] == "mnist-operator:dev"
        assert settings.default_image == "mnist-server:dev" and settings.log_level == "debug"


def expected_rules(exposure: api.ResourceKind, *, namespaced: bool) -> dict[tuple[str, str], set[str]]:
    """What the operator's code calls (kube.py, handlers.py, kopf): the RBAC must be exactly this."""
    other_exposure = api.INGRESS if exposure is api.ROUTE else api.ROUTE
    expected: dict[tuple[str, str], set[str]] = {
        (api.GROUP, api.PLURAL): {"list", "watch"},  # kopf's cache; the spec is never written
        (api.GROUP, f"{api.PLURAL}/status"): {"patch"},
        (api.GROUP, f"{api.PLURAL}/finalizers"): {"update"},  # blockOwnerDeletion on OpenShift
        (api.EVENT.group, api.EVENT.plural): {"create"},
    }
    if not namespaced:  # a namespaced operator watches no CRDs (handlers.configure_kopf)
        expected[api.CRD.group, api.CRD.plural] = {"list", "watch"}
    for kind in WATCHED_CHILDREN:  # kopf lists and watches every child kind (and the pods)
        expected[kind.group, kind.plural] = {"list", "watch"}
    applied = (api.DEPLOYMENT, api.SERVICE, api.SERVICE_MONITOR, api.HPA, api.PDB, api.HTTPROUTE, exposure)
    for kind in applied:
        expected[kind.group, kind.plural] |= {"get", "create", "patch"}  # server-side apply
    # Dropped from the spec -> deleted (an HTTPRoute on any platform: spec.exposure.gateway).
    for kind in (api.SERVICE_MONITOR, api.HPA, api.PDB, api.HTTPROUTE, exposure):
        expected[kind.group, kind.plural].add("delete")
    if exposure is api.ROUTE:
        expected[api.ROUTE.group, "routes/custom-host"] = {"create"}
        expected[other_exposure.group, other_exposure.plural].add("delete")  # an Ingress from before
    assert set(api.CHILD_KINDS) | {api.POD} == set(WATCHED_CHILDREN)
    return expected


@pytest.mark.parametrize("name", OVERLAYS)
def test_rbac_grants_what_the_operator_calls_and_nothing_else(name: str, pkg_render: Render) -> None:
    rules = granted(pkg_render(overlay(name)))
    exposure = api.ROUTE if name == "openshift" else api.INGRESS
    assert rules == expected_rules(exposure, namespaced=False)


@pytest.mark.parametrize("exposure", [api.INGRESS, api.ROUTE], ids=["ingress", "route"])
def test_namespaced_rbac_grants_the_same_minus_what_is_cluster_scoped(
    exposure: api.ResourceKind, pkg_render: Render
) -> None:
    docs = pkg_render(REPO_ROOT / "manifests" / "rbac" / "namespaced")
    docs += pkg_render(REPO_ROOT / "manifests" / "rbac" / "namespaced" / exposure.kind.lower())
    assert not {d["kind"] for d in docs} & CLUSTER_SCOPED_KINDS
    assert granted(docs, role_kind="Role") == expected_rules(exposure, namespaced=True) | LEASE_RULES


def test_namespaced_overlay_holds_roles_only_and_watches_its_own_namespace(pkg_render: Render) -> None:
    docs = pkg_render(overlay(NAMESPACED))
    assert {(d["kind"], d["metadata"]["name"]) for d in docs} == {
        ("ServiceAccount", "mnist-operator"),
        ("Role", "mnist-operator"),
        ("Role", "mnist-operator-exposure"),
        ("RoleBinding", "mnist-operator"),
        ("RoleBinding", "mnist-operator-exposure"),
        ("Deployment", "mnist-operator"),
        ("PodDisruptionBudget", "mnist-operator"),
        ("Service", "mnist-operator-metrics"),
        ("ServiceMonitor", "mnist-operator"),
        ("PrometheusRule", "mnist-operator"),
        ("ConfigMap", "mnist-dashboard"),
        *LEADER_ELECTION,
    }
    assert all(d["metadata"]["namespace"] == TEAM_NAMESPACE for d in docs)
    expected = expected_rules(api.INGRESS, namespaced=True) | LEASE_RULES
    assert granted(docs, TEAM_NAMESPACE, role_kind="Role") == expected

    [container] = one(docs, "Deployment", "mnist-operator")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    # The namespace it runs in, whatever an overlay of this one names it: where its Role applies.
    assert env["MNIST_OPERATOR_NAMESPACES"] == {
        "name": "MNIST_OPERATOR_NAMESPACES",
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
    }
    settings = OperatorSettings.from_env(
        {
            **{k: e["value"] for k, e in env.items() if "value" in e},
            "MNIST_OPERATOR_NAMESPACES": TEAM_NAMESPACE,
        }
    )
    assert settings.namespaces == (TEAM_NAMESPACE,)


def test_the_cluster_scoped_part_is_the_crd_and_the_user_roles(pkg_render: Render) -> None:
    docs = pkg_render(REPO_ROOT / "kustomize" / "cluster-scoped")
    assert {(d["kind"], d["metadata"]["name"]) for d in docs} == {
        ("CustomResourceDefinition", "mnistmodels.aidevsecops.dev"),
        *USER_ROLES,
    }
    edit, view = one(docs, "ClusterRole", "mnistmodels-edit"), one(docs, "ClusterRole", "mnistmodels-view")
    assert {k for k, v in edit["metadata"]["labels"].items() if k.startswith("rbac.") and v == "true"} == {
        "rbac.authorization.k8s.io/aggregate-to-admin",
        "rbac.authorization.k8s.io/aggregate-to-edit",
    }
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    # Users never write the status (the operator's) or the finalizers (holding a deletion up).
    edit_resources = {r for rule in edit["rules"] for r in rule["resources"] if "update" in rule["verbs"]}
    assert edit_resources == {api.PLURAL, f"{api.PLURAL}/scale"}
    assert {v for rule in view["rules"] for v in rule["verbs"]} == {"get", "list", "watch"}


def test_namespaced_overlay_passes_a_server_side_dry_run(
    cluster: LocalCluster, pkg_crds: None, pkg_render: Render
) -> None:
    team = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": TEAM_NAMESPACE, "labels": RESTRICTED},
    }
    with namespace_if_missing(cluster, team):
        for mode in ([], ["--server-side", "--field-manager=mnist-install-test"]):
            done = cluster.kubectl(
                "apply", "-k", str(overlay(NAMESPACED)), "--dry-run=server", *mode, check=False
            )
            assert done.returncode == 0, done.stderr
            assert "would violate PodSecurity" not in done.stderr
            lines = done.stdout.strip().splitlines()
            assert len(lines) == 13 and all(line.endswith("(server dry run)") for line in lines), lines


@pytest.mark.parametrize("name", OVERLAYS)
def test_overlay_passes_a_server_side_dry_run(
    name: str, cluster: LocalCluster, pkg_crds: None, pkg_render: Render
) -> None:
    namespace = one(pkg_render(overlay(name)), "Namespace", SYSTEM_NAMESPACE)
    # A dry run cannot create the namespace its other objects go to; the real one is made here
    # (with the overlay's own labels, so Pod Security admission sees the real policy).
    with namespace_if_missing(cluster, namespace):
        for mode in ([], ["--server-side", "--field-manager=mnist-install-test"]):
            done = cluster.kubectl("apply", "-k", str(overlay(name)), "--dry-run=server", *mode, check=False)
            assert done.returncode == 0, done.stderr
            assert "would violate PodSecurity" not in done.stderr
            lines = done.stdout.strip().splitlines()
            assert len(lines) == 17 and all(line.endswith("(server dry run)") for line in lines), lines


def test_argocd_application_passes_a_server_side_dry_run(
    cluster: LocalCluster, pkg_crds: None, pkg_render: Render, namespace: str
) -> None:
    [application] = pkg_render(REPO_ROOT / "manifests" / "argocd")
    assert application["kind"] == "Application"
    assert application["spec"]["source"]["path"] == "kustomize/overlays/kubernetes"
    assert (REPO_ROOT / application["spec"]["source"]["path"] / "kustomization.yaml").is_file()
    assert application["spec"]["destination"]["namespace"] == SYSTEM_NAMESPACE
    application["metadata"]["namespace"] = namespace  # Argo CD's namespace is not there
    done = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(application), check=False)
    assert done.returncode == 0, done.stderr


def test_argocd_health_check_patch_merges_into_argocd_cm(cluster: LocalCluster) -> None:
    patch_file = REPO_ROOT / "manifests" / "argocd" / "argocd-cm-patch.yaml"
    lua = (REPO_ROOT / "manifests" / "argocd" / "mnistmodel-health.lua").read_text()
    argocd = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "argocd"}}
    before = {"url": "https://argocd.example.test", "resource.customizations.health.apps_Foo": "return {}"}
    existing = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "argocd-cm", "namespace": "argocd"},
        "data": {
            "url": "https://argocd.example.test",
            "resource.customizations.health.apps_Foo": "return {}",
        },
    }
    with namespace_if_missing(cluster, argocd):
        cluster.kubectl("delete", "configmap", "argocd-cm", "-n", "argocd", "--ignore-not-found")
        cluster.kubectl("create", "-f", "-", input=json.dumps(existing))
        try:
            cluster.kubectl(
                "patch", "configmap", "argocd-cm", "-n", "argocd", "--patch-file", str(patch_file)
            )
            data = json.loads(
                cluster.kubectl("get", "configmap", "argocd-cm", "-n", "argocd", "-o", "json").stdout
            )["data"]
        finally:
            cluster.kubectl("delete", "configmap", "argocd-cm", "-n", "argocd", "--ignore-not-found")
    assert data == {**before, HEALTH_KEY: lua}
