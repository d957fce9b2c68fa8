"""Pod templates against real PodSecurity admission, in a namespace enforcing `restricted`.

The operator's pod (from every overlay) and the model server's pod (from the operator's own pure
builder, for every sample MnistModel) are created with a server-side dry run, which runs the
whole admission chain; a pod that breaks the policy is refused in the same namespace, so the
namespace really enforces it. (test_rbac.py adds the real thing: the server pods the
ReplicaSet controller creates there.)
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from localcluster import REPO_ROOT, LocalCluster
from mnist_operator import api
from mnist_operator.builders import Owner, deployment
from mnist_operator.settings import OperatorSettings
from mnist_operator.spec import parse_spec

sys.path.insert(0, str(Path(__file__).parent))
from packaging_support import MakeNamespace, Render

RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}
SAMPLES = sorted(
    path
    for path in (REPO_ROOT / "manifests" / "samples").glob("*.yaml")
    if yaml.safe_load(path.read_text()).get("kind") == api.KIND
)


@pytest.fixture
def restricted(cluster: LocalCluster, pkg_namespaces: MakeNamespace) -> str:
    name: str = pkg_namespaces("restricted", RESTRICTED)
    # The pods name their ServiceAccounts, which must exist for admission to go on.
    cluster.kubectl("create", "serviceaccount", "mnist-operator", "-n", name)
    cluster.kubectl("wait", "--for=create", "serviceaccount/default", "-n", name, "--timeout=60s")
    return name


def pod_from(template: dict[str, Any], name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": template["metadata"].get("labels", {})},
        "spec": template["spec"],
    }


def dry_run_create(cluster: LocalCluster, pod: dict[str, Any]) -> tuple[int, str]:
    done = cluster.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(pod), check=False)
    return done.returncode, done.stderr


def operator_template(render: Render, overlay: str) -> dict[str, Any]:
    docs = render(REPO_ROOT / "kustomize" / "overlays" / overlay)
    [found] = [d for d in docs if d["kind"] == "Deployment"]
    template: dict[str, Any] = found["spec"]["template"]
    return template


@pytest.mark.parametrize("overlay", ["kubernetes", "openshift", "dev"])
def test_operator_pod_is_admitted_as_restricted(
    overlay: str, cluster: LocalCluster, restricted: str, pkg_render: Render
) -> None:
    code, stderr = dry_run_create(
        cluster, pod_from(operator_template(pkg_render, overlay), "operator", restricted)
    )
    assert code == 0, stderr
    assert "PodSecurity" not in stderr


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.stem)
def test_model_server_pod_is_admitted_as_restricted(
    sample: Path, cluster: LocalCluster, restricted: str
) -> None:
    body = yaml.safe_load(sample.read_text())
    owner = Owner(body["metadata"]["name"], restricted, "0b7f6b8e-0000-4000-8000-000000000001")
    child = deployment(parse_spec(body["spec"]), owner, OperatorSettings())
    assert child["kind"] == api.DEPLOYMENT.kind
    code, stderr = dry_run_create(cluster, pod_from(child["spec"]["template"], "server", restricted))
    assert code == 0, stderr
    assert "PodSecurity" not in stderr


@pytest.mark.parametrize(
    ("breach", "change"),
    [
        (
            "privilege escalation allowed",
            ("containers", 0, "securityContext", "allowPrivilegeEscalation", True),
        ),
        ("root user", ("securityContext", "runAsUser", 0)),
        ("capabilities kept", ("containers", 0, "securityContext", "capabilities", {"drop": []})),
    ],
)
def test_the_namespace_really_enforces_restricted(
    breach: str, change: tuple[Any, ...], cluster: LocalCluster, restricted: str, pkg_render: Render
) -> None:
    template = copy.deepcopy(operator_template(pkg_render, "kubernetes"))
    node: Any = template["spec"]
    *path, key, value = change
    for step in path:
        node = node[step]
    node[key] = value
    code, stderr = dry_run_create(cluster, pod_from(template, "breach", restricted))
    assert code != 0, f"a pod with {breach} was admitted"
    assert 'violates PodSecurity "restricted:latest"' in stderr
