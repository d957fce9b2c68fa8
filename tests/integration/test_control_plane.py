"""The local control plane behaves like a real cluster in the ways this project relies on."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kopf.testing import KopfRunner
from testkit import wait_for

from localcluster import (
    COMPONENTS,
    OPERATOR_USER,
    REPO_ROOT,
    ClusterError,
    LocalCluster,
    component_alive,
    components,
)

pytestmark = pytest.mark.cluster

FIXTURES = Path(__file__).parent / "fixtures"
WIDGET_CRD = "widgets.test.aidevsecops.dev"

T = TypeVar("T")


def get_json(cluster: LocalCluster, *args: str) -> Any:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


@pytest.fixture(scope="module")
def widget_crd(cluster: LocalCluster) -> Iterator[str]:
    cluster.kubectl("apply", "-f", str(FIXTURES / "widget-crd.yaml"))
    cluster.kubectl("wait", "--for=condition=Established", f"crd/{WIDGET_CRD}", "--timeout=30s")
    yield WIDGET_CRD
    cluster.kubectl("delete", "crd", WIDGET_CRD, "--wait=false", check=False)


def widget(name: str, **spec: int) -> str:
    return json.dumps(
        {"apiVersion": "test.aidevsecops.dev/v1", "kind": "Widget", "metadata": {"name": name}, "spec": spec}
    )


def test_kubectl_matches_the_server_version(cluster: LocalCluster) -> None:
    pinned = re.search(r"^\s*k8s\.io/kubernetes (v1\.\S+)", (REPO_ROOT / "hack/k8s/go.mod").read_text(), re.M)
    assert pinned, "hack/k8s/go.mod pins no k8s.io/kubernetes version"
    versions = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert versions["clientVersion"]["gitVersion"] == pinned.group(1)
    assert versions["serverVersion"]["gitVersion"] == pinned.group(1)


def test_deployment_becomes_available_on_the_fake_node(cluster: LocalCluster, namespace: str) -> None:
    cluster.kubectl(
        "-n", namespace, "create", "deployment", "web", "--image=example.invalid/web:1", "--replicas=3"
    )
    cluster.kubectl("-n", namespace, "rollout", "status", "deployment/web", "--timeout=60s")

    status = get_json(cluster, "-n", namespace, "deployment/web")["status"]
    assert status["availableReplicas"] == status["replicas"] == 3
    pods = get_json(cluster, "-n", namespace, "pods", "-l", "app=web")["items"]
    assert len(pods) == 3
    for pod in pods:
        assert pod["spec"]["nodeName"] == "kwok-node-0"
        assert pod["status"]["phase"] == "Running"
        ready = {c["type"]: c["status"] for c in pod["status"]["conditions"]}["Ready"]
        assert ready == "True"


def test_garbage_collector_deletes_owned_objects(cluster: LocalCluster, namespace: str) -> None:
    cluster.kubectl("-n", namespace, "create", "configmap", "owner")
    owner_uid = get_json(cluster, "-n", namespace, "configmap/owner")["metadata"]["uid"]
    owned = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "owned",
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner_uid}],
        },
    }
    cluster.kubectl("-n", namespace, "create", "-f", "-", input=json.dumps(owned))

    cluster.kubectl("-n", namespace, "delete", "configmap", "owner", "--wait=false")

    def owned_is_gone() -> bool:
        found = cluster.kubectl("-n", namespace, "get", "configmap/owned", "--ignore-not-found", "-o", "name")
        return found.stdout.strip() == ""

    wait_for(owned_is_gone, "the garbage collector to delete configmap/owned")


def test_cel_rule_rejects_a_violating_object_with_its_message(
    cluster: LocalCluster, namespace: str, widget_crd: str
) -> None:
    rejected = cluster.kubectl(
        "-n", namespace, "create", "-f", "-", input=widget("bad", replicas=1, minReplicas=3), check=False
    )
    assert rejected.returncode != 0
    assert "minReplicas must not exceed replicas" in rejected.stderr

    cluster.kubectl("-n", namespace, "create", "-f", "-", input=widget("good", replicas=2, minReplicas=1))


def test_status_and_scale_subresources(cluster: LocalCluster, namespace: str, widget_crd: str) -> None:
    cluster.kubectl("-n", namespace, "create", "-f", "-", input=widget("w", replicas=1))

    cluster.kubectl("-n", namespace, "scale", "widget/w", "--replicas=4")
    assert get_json(cluster, "-n", namespace, "widget/w")["spec"]["replicas"] == 4

    status = {"status": {"replicas": 4, "selector": "app=w", "phase": "Ready"}}
    cluster.kubectl(
        "-n", namespace, "patch", "widget/w", "--subresource=status", "--type=merge", "-p", json.dumps(status)
    )
    # With the status subresource, a write to the main resource cannot change status.
    cluster.kubectl(
        "-n",
        namespace,
        "patch",
        "widget/w",
        "--type=merge",
        "-p",
        json.dumps({"status": {"phase": "Hijacked"}}),
    )
    assert get_json(cluster, "-n", namespace, "widget/w")["status"] == status["status"]

    scale = get_json(cluster, "-n", namespace, "widget/w", "--subresource=scale")
    assert scale["kind"] == "Scale"
    assert scale["spec"]["replicas"] == 4
    assert scale["status"] == {"replicas": 4, "selector": "app=w"}


def test_pod_security_admission_rejects_a_privileged_pod(cluster: LocalCluster, namespace: str) -> None:
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "privileged"},
        "spec": {
            "containers": [
                {"name": "c", "image": "example.invalid/c:1", "securityContext": {"privileged": True}}
            ]
        },
    }
    rejected = cluster.kubectl("-n", namespace, "create", "-f", "-", input=json.dumps(pod), check=False)
    assert rejected.returncode != 0
    assert 'violates PodSecurity "restricted:latest"' in rejected.stderr
    assert "privileged" in rejected.stderr


OPERATOR_MODULE = textwrap.dedent("""\
    import kopf

    @kopf.on.login()
    def login(**kwargs):
        # Read KUBECONFIG now: the kubernetes client's default login captured it at import time.
        return kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.create("test.aidevsecops.dev", "v1", "widgets")
    def seen(spec, patch, **_):
        patch.status["phase"] = "Seen"
        patch.status["replicas"] = spec["replicas"]
""")


def test_kopf_operator_handles_a_create_event(
    cluster: LocalCluster,
    namespace: str,
    widget_crd: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    operator = tmp_path / "widget_operator.py"
    operator.write_text(OPERATOR_MODULE)
    # The operator's own identity, so its writes can be told apart in the audit log.
    monkeypatch.setenv("KUBECONFIG", str(cluster.operator_kubeconfig))

    args = ["run", "--standalone", "--namespace", namespace, "--verbose", str(operator)]
    with KopfRunner(args, timeout=60) as runner:
        cluster.kubectl("-n", namespace, "create", "-f", "-", input=widget("w", replicas=2))
        wait_for(
            lambda: get_json(cluster, "-n", namespace, "widget/w").get("status", {}).get("phase") == "Seen",
            "the operator to set status.phase",
        )

    # runner.exception is typed as never None; the click result underneath says the truth.
    assert runner.future.result().exception is None
    assert runner.exit_code == 0, runner.output
    assert "Handler 'seen' succeeded" in runner.output
    assert get_json(cluster, "-n", namespace, "widget/w")["status"]["replicas"] == 2

    def operator_status_writes() -> list[dict[str, Any]]:
        return cluster.audit_events(
            lambda e: (
                e["user"]["username"] == OPERATOR_USER
                and e["objectRef"].get("namespace") == namespace
                and e["objectRef"].get("resource") == "widgets"
                and e["objectRef"].get("subresource") == "status"
            )
        )

    assert wait_for(operator_status_writes, "the audit log to record the operator's status patch")


def test_audit_log_records_writes_but_not_reads(cluster: LocalCluster, namespace: str) -> None:
    cluster.kubectl("-n", namespace, "create", "configmap", "audited", "--from-literal=k=v")
    cluster.kubectl("-n", namespace, "get", "configmap", "audited")

    def events_for_audited() -> list[dict[str, Any]]:
        return cluster.audit_events(
            lambda e: (
                e["objectRef"].get("namespace") == namespace
                and e["objectRef"].get("resource") == "configmaps"
                and e["objectRef"].get("name") == "audited"
            )
        )

    events = wait_for(events_for_audited, "the audit event of the configmap create")
    assert [(e["verb"], e["user"]["username"], e["responseStatus"]["code"]) for e in events] == [
        ("create", "admin", 201)
    ]
    assert events[0]["level"] == "Metadata"
    assert events[0]["stage"] == "ResponseComplete"


def test_a_failing_component_is_reported_with_its_log_tail(
    cluster: LocalCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(components, "etcd_args", lambda layout, ports: ["--no-such-flag"])
    broken = LocalCluster(tmp_path / "state", bin_dir=cluster.bin_dir, bound_to_parent=True, real_node="off")
    with pytest.raises(ClusterError) as failure:
        broken.start()
    assert failure.value.component == "etcd"
    assert "exited with code" in failure.value.problem
    assert "no-such-flag" in str(failure.value)  # etcd's own complaint, from its log


CHILD = textwrap.dedent("""\
    import json, sys, time
    from pathlib import Path
    from localcluster import LocalCluster
    cluster = LocalCluster(Path(sys.argv[1]), bin_dir=Path(sys.argv[2]), bound_to_parent=True,
                           real_node="off").start()
    print(json.dumps(cluster.state.pids), flush=True)
    time.sleep(600)
""")


@pytest.mark.slow
def test_components_die_with_a_killed_parent(cluster: LocalCluster, tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path / "state"), str(cluster.bin_dir)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "hack")},
    )
    try:
        assert child.stdout is not None
        pids: dict[str, int] = json.loads(child.stdout.readline())
        assert set(pids) == set(COMPONENTS)
        child.kill()  # SIGKILL: no atexit, no finalizer runs in the child
        child.wait()
    finally:
        child.kill()
    wait_for(lambda: not any(component_alive(pid, name) for name, pid in pids.items()),
             "every component to die with its parent", timeout=15)  # fmt: skip
