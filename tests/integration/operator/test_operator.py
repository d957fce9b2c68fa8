"""The MnistModel operator against a real API server, controller-manager and kwok nodes.

Each test runs `mnist-operator` as a subprocess watching only the test's namespace.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from localcluster import REPO_ROOT, LocalCluster

sys.path.insert(0, str(Path(__file__).parent))
from operator_support import Kube, StartOperator

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

SAMPLES = REPO_ROOT / "manifests" / "samples"
FIXTURE_CRDS = REPO_ROOT / "tests" / "fixtures" / "crds"
STANDARD_LABELS = {
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/version",
}


def mnist(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "aidevsecops.dev/v1alpha1",
        "kind": "MnistModel",
        "metadata": {"name": name},
        "spec": {"modelVersion": "1", **spec},
    }


def owned_by_model(obj: dict[str, Any], model: dict[str, Any]) -> bool:
    refs = obj["metadata"].get("ownerReferences") or []
    return [(r["kind"], r["uid"], r.get("controller")) for r in refs] == [
        ("MnistModel", model["metadata"]["uid"], True)
    ]


def test_samples_reach_ready_with_route_and_service_monitor_apis(
    op_kube: Kube, op_start: StartOperator, openshift_apis: None
) -> None:
    op_start(op_kube.namespace)
    op_kube.kubectl("apply", "-k", str(SAMPLES))
    names = ["mnist-minimal", "mnist-autoscaled", "mnist-exposed", "mnist-monitored"]
    models = {name: op_kube.wait_ready(name, version="1") for name in names}

    for name, model in models.items():
        for kind in ("deployment", "service"):
            child = op_kube.get(kind, name)
            assert child is not None and owned_by_model(child, model), f"{kind}/{name}"
            assert set(child["metadata"]["labels"]) >= STANDARD_LABELS
        template_labels = op_kube.get("deployment", name)["spec"]["template"]["metadata"]["labels"]
        assert set(template_labels) == STANDARD_LABELS  # not the model's own labels
        assert model["status"]["selector"] == (
            f"app.kubernetes.io/instance={name},app.kubernetes.io/name=mnist-server"
        )

    route = op_kube.get("route", "mnist-exposed")
    assert route["spec"]["host"] == "mnist.apps.example.com"
    assert route["spec"]["tls"] == {"termination": "edge", "insecureEdgeTerminationPolicy": "Redirect"}
    assert op_kube.get("ingress", "mnist-exposed") is None
    assert models["mnist-exposed"]["status"]["url"] == "https://mnist.apps.example.com"
    # No router admits Routes here: honest "Unknown", which does not hold the model's Ready back.
    assert op_kube.conditions("mnist-exposed")["ExposureReady"]["reason"] == "AwaitingAdmission"

    monitor = op_kube.get("servicemonitor", "mnist-monitored")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["endpoints"] == [
        {"port": "http", "path": "/metrics", "scheme": "http", "interval": "15s"}
    ]
    assert op_kube.conditions("mnist-monitored")["MonitoringReady"]["status"] == "True"

    hpa = op_kube.get("hpa", "mnist-autoscaled")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 5)
    deployment = json.loads(
        op_kube.kubectl("get", "deployment", "mnist-autoscaled", "-o", "json", "--show-managed-fields").stdout
    )
    ours = [m for m in deployment["metadata"]["managedFields"] if m["manager"] == "mnist-operator"]
    assert ours and all("f:replicas" not in m["fieldsV1"].get("f:spec", {}) for m in ours)
    # The HPA enforces minReplicas; the model is Ready again once both replicas are.
    op_kube.wait_for(
        lambda: (op_kube.model("mnist-autoscaled").get("status") or {}).get("readyReplicas") == 2,
        "the HPA to scale mnist-autoscaled to minReplicas 2",
    )
    op_kube.wait_ready("mnist-autoscaled")

    for _, reason, _ in op_kube.events("mnist-minimal"):
        assert reason in {"RolloutStarted", "Ready"}
    assert {r for _, r, _ in op_kube.events("mnist-minimal")} == {"RolloutStarted", "Ready"}


def test_plain_kubernetes_gets_an_ingress_and_a_missing_api_condition_then_the_crd_arrives(
    op_kube: Kube, op_start: StartOperator, plain_apis: None, cluster: LocalCluster
) -> None:
    operator = op_start(op_kube.namespace)
    op_kube.kubectl("apply", "-f", str(SAMPLES / "exposed-tls.yaml"), "-f", str(SAMPLES / "monitored.yaml"))
    op_kube.wait_ready("mnist-exposed")
    ingress = op_kube.get("ingress", "mnist-exposed")
    assert ingress["spec"]["tls"] == [
        {"hosts": ["mnist.apps.example.com"], "secretName": "mnist-exposed-tls"}
    ]
    assert ingress["metadata"]["annotations"]["cert-manager.io/cluster-issuer"] == "letsencrypt"
    assert op_kube.conditions("mnist-exposed")["ExposureReady"]["reason"] == "AwaitingAddress"

    op_kube.wait_ready("mnist-monitored")  # serving does not depend on the Prometheus operator
    monitoring = op_kube.wait_condition(
        "mnist-monitored", "MonitoringReady", "False", "ServiceMonitorAPIMissing"
    )
    assert (
        "install the Prometheus operator or set monitoring.serviceMonitor.enabled=false"
        in monitoring["message"]
    )
    assert ("Warning", "ServiceMonitorAPIMissing") in [
        (t, r) for t, r, _ in op_kube.events("mnist-monitored")
    ]
    assert operator.alive() and operator.healthy()

    # The Prometheus operator gets installed later: the ServiceMonitor appears without a restart.
    started = time.monotonic()
    cluster.kubectl("apply", "-f", str(FIXTURE_CRDS / "monitoring.coreos.com_servicemonitors.yaml"))
    op_kube.wait_exists("servicemonitor", "mnist-monitored", timeout=30)
    op_kube.wait_condition("mnist-monitored", "MonitoringReady", "True", "ServiceMonitorReady")
    assert time.monotonic() - started < 30

    # So does the Route API (say the cluster turned out to be OpenShift): the Route replaces the Ingress.
    cluster.kubectl("apply", "-f", str(FIXTURE_CRDS / "route.openshift.io_routes.yaml"))
    route = op_kube.wait_exists("route", "mnist-exposed", timeout=30)
    assert route["spec"]["tls"]["termination"] == "edge"
    op_kube.wait_gone("ingress", "mnist-exposed", timeout=30)
    op_kube.wait_condition("mnist-exposed", "ExposureReady", "Unknown", "AwaitingAdmission")


def watch_model(
    op_kube: Kube, name: str
) -> tuple[subprocess.Popen[str], list[dict[str, Any]], threading.Thread]:
    """Every version of the MnistModel the API server hands out, as it happens."""
    proc = subprocess.Popen(
        [
            str(op_kube.cluster.bin_dir / "kubectl"),
            f"--kubeconfig={op_kube.cluster.kubeconfig}",
            "-n",
            op_kube.namespace,
            "get",
            "mnistmodel",
            name,
            "--watch",
            "-o",
            "json",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    seen: list[dict[str, Any]] = []

    def read() -> None:
        decoder, buffer = json.JSONDecoder(), ""
        assert proc.stdout is not None
        for line in proc.stdout:
            buffer += line
            try:
                obj, end = decoder.raw_decode(buffer.strip())
            except json.JSONDecodeError:
                continue
            seen.append(obj)
            buffer = buffer.strip()[end:]

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return proc, seen, thread


def test_changing_model_version_rolls_out_and_ready_is_never_true_in_between(
    op_kube: Kube, op_start: StartOperator
) -> None:
    op_start(op_kube.namespace)
    op_kube.apply(mnist("rolling", replicas=3))
    op_kube.wait_ready("rolling", version="1")
    old_rs = {
        rs["metadata"]["name"]
        for rs in json.loads(op_kube.kubectl("get", "rs", "-o", "json").stdout)["items"]
    }

    watcher, seen, reader = watch_model(op_kube, "rolling")
    try:
        time.sleep(0.5)
        op_kube.merge_patch("mnistmodel", "rolling", {"spec": {"modelVersion": "2"}})
        op_kube.wait_ready("rolling", version="2")
        time.sleep(1)
    finally:
        watcher.terminate()
        reader.join(timeout=5)

    statuses = [(o["metadata"]["generation"], o.get("status") or {}) for o in seen]
    rolled = [s for g, s in statuses if g == 2 and s.get("observedGeneration") == 2]
    assert rolled, "no status for generation 2 was observed"
    for _, status in statuses:
        ready = {c["type"]: c for c in status.get("conditions") or []}["Ready"]
        if ready["status"] == "True":
            # Ready only for the generation it describes, and only once the new version serves.
            expected = "2" if status.get("observedGeneration") == 2 else "1"
            assert status["modelVersion"] == expected
    in_between = [s for s in rolled if {c["type"]: c for c in s["conditions"]}["Ready"]["status"] == "False"]
    assert in_between, "the rollout of version 2 was never reported (Ready=False while rolling out)"
    assert all(s.get("modelVersion") == "1" for s in in_between)  # the pods still served version 1
    reasons = {{c["type"]: c for c in s["conditions"]}["Ready"]["reason"] for s in in_between}
    assert reasons <= {"RolloutPending", "RolloutInProgress"}

    deployment = op_kube.get("deployment", "rolling")
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MNIST_SERVER_MODEL_VERSION"] == "2"
    new_rs = {
        rs["metadata"]["name"]
        for rs in json.loads(op_kube.kubectl("get", "rs", "-o", "json").stdout)["items"]
    }
    assert len(new_rs - old_rs) == 1  # exactly one new ReplicaSet: one rollout
    assert any(r == "RolloutStarted" and "version 2" in m for _, r, m in op_kube.events("rolling"))


def test_a_label_edit_on_the_model_does_not_roll_pods(op_kube: Kube, op_start: StartOperator) -> None:
    op_start(op_kube.namespace)
    op_kube.apply(mnist("labels"))
    op_kube.wait_ready("labels")
    before = op_kube.get("deployment", "labels")
    op_kube.kubectl("label", "mnistmodel", "labels", "team=vision", "argocd.argoproj.io/instance=shop")
    op_kube.wait_for(
        lambda: op_kube.get("service", "labels")["metadata"]["labels"].get("team") == "vision",
        "the model's label on its Service",
    )
    after = op_kube.get("deployment", "labels")
    assert after["metadata"]["labels"]["team"] == "vision"
    assert "argocd.argoproj.io/instance" not in after["metadata"]["labels"]
    assert after["spec"]["template"] == before["spec"]["template"]
    assert after["metadata"]["generation"] == before["metadata"]["generation"]


def test_kubectl_scale_and_switching_to_autoscaling_and_back(op_kube: Kube, op_start: StartOperator) -> None:
    op_start(op_kube.namespace)
    op_kube.apply(mnist("scaled"))
    op_kube.wait_ready("scaled")

    op_kube.kubectl("scale", "mnistmodel", "scaled", "--replicas=3")
    op_kube.wait_for(lambda: op_kube.get("deployment", "scaled")["spec"]["replicas"] == 3, "3 replicas")
    model = op_kube.wait_ready("scaled")
    op_kube.wait_for(lambda: op_kube.model("scaled")["status"].get("readyReplicas") == 3, "3 ready replicas")
    assert model["spec"]["replicas"] == 3

    op_kube.merge_patch(
        "mnistmodel",
        "scaled",
        {"spec": {"replicas": None, "autoscaling": {"minReplicas": 2, "maxReplicas": 4}}},
    )
    op_kube.wait_exists("hpa", "scaled")
    # Handing replicas over to the HPA does not reset them to 1 on the way.
    for _ in range(10):
        assert op_kube.get("deployment", "scaled")["spec"]["replicas"] >= 2
        time.sleep(0.3)
    refused = op_kube.kubectl("scale", "mnistmodel", "scaled", "--replicas=5", check=False)
    assert refused.returncode != 0
    assert "set either spec.replicas or spec.autoscaling, not both" in refused.stderr

    op_kube.merge_patch("mnistmodel", "scaled", {"spec": {"autoscaling": None, "replicas": 1}})
    op_kube.wait_gone("hpa", "scaled")
    op_kube.wait_for(
        lambda: op_kube.get("deployment", "scaled")["spec"]["replicas"] == 1, "back to 1 replica"
    )
    op_kube.wait_ready("scaled")


def test_turning_exposure_and_monitoring_off_deletes_those_children(
    op_kube: Kube, op_start: StartOperator, openshift_apis: None
) -> None:
    op_start(op_kube.namespace)
    op_kube.apply(
        mnist("toggled", exposure={"enabled": True}, monitoring={"serviceMonitor": {"enabled": True}})
    )
    op_kube.wait_ready("toggled")
    op_kube.wait_exists("route", "toggled")
    op_kube.wait_exists("servicemonitor", "toggled")

    op_kube.merge_patch(
        "mnistmodel",
        "toggled",
        {"spec": {"exposure": {"enabled": False}, "monitoring": {"serviceMonitor": {"enabled": False}}}},
    )
    op_kube.wait_gone("route", "toggled", timeout=20)
    op_kube.wait_gone("servicemonitor", "toggled", timeout=20)
    op_kube.wait_condition("toggled", "ExposureReady", "True", "Disabled")
    op_kube.wait_condition("toggled", "MonitoringReady", "True", "Disabled")
    assert op_kube.get("deployment", "toggled") is not None


def test_hand_made_drift_is_corrected_within_seconds(op_kube: Kube, op_start: StartOperator) -> None:
    op_start(op_kube.namespace)
    op_kube.apply(mnist("drifting"))
    op_kube.wait_ready("drifting")
    service_uid = op_kube.get("service", "drifting")["metadata"]["uid"]

    started = time.monotonic()
    op_kube.kubectl("delete", "service", "drifting", "--wait=true")
    restored = op_kube.wait_for(
        lambda: (s := op_kube.get("service", "drifting")) and s["metadata"]["uid"] != service_uid and s,
        "the Service to come back",
        timeout=15,
    )
    assert time.monotonic() - started < 10
    assert restored["spec"]["selector"]["app.kubernetes.io/instance"] == "drifting"

    started = time.monotonic()
    op_kube.kubectl("set", "image", "deployment/drifting", "server=evil:latest")
    op_kube.wait_for(
        lambda: (
            op_kube.get("deployment", "drifting")["spec"]["template"]["spec"]["containers"][0]["image"]
            == "mnist-server:test"
        ),
        "the image to be put back",
        timeout=15,
    )
    assert time.monotonic() - started < 10

    op_kube.kubectl("label", "service", "drifting", "app.kubernetes.io/managed-by-")
    op_kube.wait_for(
        lambda: (
            op_kube.get("service", "drifting")["metadata"]["labels"].get("app.kubernetes.io/managed-by")
            == "mnist-operator"
        ),
        "the managed-by label to be put back",
        timeout=15,
    )
    op_kube.wait_ready("drifting")


def test_deleting_the_model_deletes_every_child(
    op_kube: Kube, op_start: StartOperator, openshift_apis: None
) -> None:
    op_start(op_kube.namespace)
    op_kube.apply(
        mnist(
            "doomed",
            autoscaling={"maxReplicas": 2},
            exposure={"enabled": True},
            monitoring={"serviceMonitor": {"enabled": True}},
        )
    )
    op_kube.wait_ready("doomed")
    kinds = ("deployment", "service", "route", "servicemonitor", "hpa")
    for kind in kinds:
        op_kube.wait_exists(kind, "doomed")
    assert op_kube.model("doomed")["metadata"].get("finalizers") is None  # nothing blocks the deletion
    op_kube.kubectl("delete", "mnistmodel", "doomed", "--wait=true")
    for kind in kinds:
        op_kube.wait_gone(kind, "doomed", timeout=60)
    op_kube.wait_for(
        lambda: not json.loads(op_kube.kubectl("get", "pods", "-o", "json").stdout)["items"], "the pods to go"
    )


def test_restart_and_resync_write_nothing_and_duplicate_nothing(
    op_kube: Kube, op_start: StartOperator, openshift_apis: None
) -> None:
    first = op_start(op_kube.namespace)
    op_kube.kubectl("apply", "-k", str(SAMPLES))
    names = ["mnist-minimal", "mnist-autoscaled", "mnist-exposed", "mnist-monitored"]
    for name in names:
        op_kube.wait_ready(name)
    op_kube.wait_for(
        lambda: op_kube.get("deployment", "mnist-autoscaled")["status"].get("readyReplicas") == 2,
        "the HPA's minReplicas",
    )
    for name in names:
        op_kube.wait_ready(name)

    def inventory() -> dict[str, str]:
        items = json.loads(
            op_kube.kubectl(
                "get", "deployments,replicasets,services,routes,servicemonitors,hpa,pdb,pods", "-o", "json"
            ).stdout
        )["items"]
        # Object identities for all; resource versions only where no controller writes status
        # in steady state (the HPA controller keeps updating its own status without metrics).
        return {
            f"{i['kind']}/{i['metadata']['name']}": i["metadata"]["uid"]
            + ("" if i["kind"] == "HorizontalPodAutoscaler" else "@" + i["metadata"]["resourceVersion"])
            for i in items
        }

    time.sleep(2)  # let the last status writes land before taking stock
    before = inventory()
    first.stop()
    since = datetime.now(UTC)
    second = op_start(op_kube.namespace, resync_seconds="2")
    op_kube.wait_for(
        lambda: second.metric("mnist_operator_reconciles_total") >= 3 * len(names),
        "a start-up pass and two resyncs",
        timeout=30,
    )
    time.sleep(1)
    writes = op_kube.operator_writes(since)
    assert writes == [], [f"{w['verb']} {w['objectRef']}" for w in writes]
    assert second.metric("mnist_operator_api_writes_total") == 0
    assert inventory() == before  # the same objects, untouched: nothing duplicated or rewritten


BAD_MODELS = [
    (
        mnist("both", replicas=2, autoscaling={"maxReplicas": 3}),
        "set either spec.replicas or spec.autoscaling, not both",
    ),
    (
        mnist("minmax", autoscaling={"minReplicas": 5, "maxReplicas": 3}),
        "spec.autoscaling.minReplicas must be less than or equal to spec.autoscaling.maxReplicas",
    ),
    (
        mnist("nocpu", autoscaling={"maxReplicas": 3}, resources={"requests": {"memory": "1Gi"}}),
        "needs spec.resources.requests.cpu",
    ),
    (mnist("version", modelVersion="Version_1"), "spec.modelVersion must be"),
    (
        mnist("host", exposure={"enabled": True, "host": "https://mnist.example.com/"}),
        "spec.exposure.host must be a lowercase DNS name",
    ),
    (
        mnist("tlsnohost", exposure={"enabled": True, "tls": "edge"}),
        "spec.exposure.host is required when spec.exposure.tls is edge or reencrypt",
    ),
    (
        mnist("tlsmode", exposure={"enabled": True, "host": "a.example.com", "tls": "passthrough"}),
        "spec.exposure.tls",
    ),
    (mnist("secretnotls", exposure={"tlsSecretName": "cert"}), "spec.exposure.tlsSecretName needs"),
    (
        mnist("env", env=[{"name": "MNIST_SERVER_MODEL_VERSION", "value": "2"}]),
        "spec.env must not set MNIST_SERVER_MODEL_VERSION",
    ),
    (
        mnist(
            "envboth",
            env=[{"name": "A", "value": "1", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        ),
        "spec.env[].value and spec.env[].valueFrom are mutually exclusive",
    ),
    (
        mnist("rollout", rollout={"maxSurge": 0, "maxUnavailable": "0%"}),
        "spec.rollout.maxSurge and spec.rollout.maxUnavailable cannot both be 0",
    ),
    (mnist("surge", rollout={"maxSurge": "150%"}), "spec.rollout.maxSurge must be a non-negative integer"),
    (mnist("negative", replicas=-1), "spec.replicas"),
    (mnist("unknown", replica=2), 'unknown field "spec.replica"'),
    (
        mnist("interval", monitoring={"serviceMonitor": {"interval": "30"}}),
        "spec.monitoring.serviceMonitor.interval",
    ),
    (mnist("9lives"), "metadata.name must be a DNS-1035 label"),
    (
        {
            "apiVersion": "aidevsecops.dev/v1alpha1",
            "kind": "MnistModel",
            "metadata": {"name": "noversion"},
            "spec": {},
        },
        "spec.modelVersion: Required value",
    ),
]


@pytest.mark.parametrize(("body", "message"), BAD_MODELS, ids=[b["metadata"]["name"] for b, _ in BAD_MODELS])
def test_the_api_server_rejects_bad_input_naming_the_field(
    op_kube: Kube, body: dict[str, Any], message: str
) -> None:
    done = op_kube.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(body), check=False)
    assert done.returncode != 0, f"accepted: {body}"
    assert message in done.stderr


def test_good_input_is_accepted_with_defaults(op_kube: Kube) -> None:
    done = op_kube.kubectl(
        "create",
        "--dry-run=server",
        "-o",
        "json",
        "-f",
        "-",
        input=json.dumps(mnist("fine", autoscaling={"maxReplicas": 3})),
    )
    spec = json.loads(done.stdout)["spec"]
    assert spec["autoscaling"] == {"minReplicas": 1, "maxReplicas": 3, "targetCPUUtilizationPercentage": 80}
    assert spec["rollout"] == {"maxSurge": 1, "maxUnavailable": 0, "progressDeadlineSeconds": 600}
    assert spec["exposure"] == {"enabled": False, "tls": "none"}
    assert spec["monitoring"] == {"serviceMonitor": {"enabled": False, "interval": "30s"}}
    assert "replicas" not in spec


def test_kubectl_explain_teaches_the_api(op_kube: Kube) -> None:
    explained = op_kube.kubectl("explain", "mnistmodel.spec.exposure.tls").stdout
    assert "edge: TLS ends at the router or ingress controller" in explained
    printed = op_kube.kubectl("get", "mnistmodels").stderr + op_kube.kubectl("get", "mm", "-o", "wide").stdout
    assert "No resources found" in printed or "VERSION" in printed


def test_operator_reports_metrics_and_liveness(op_kube: Kube, op_start: StartOperator) -> None:
    operator = op_start(op_kube.namespace)
    op_kube.apply(mnist("measured"))
    op_kube.wait_ready("measured")
    assert operator.healthy()
    text = operator.metrics()
    assert operator.metric("mnist_operator_reconciles_total", 'result="success"') >= 1
    assert "mnist_operator_reconcile_duration_seconds_bucket" in text
    assert operator.metric("mnist_operator_api_writes_total", 'kind="Deployment"') >= 1
    assert "mnist_operator_reconcile_errors_total" in text


def test_a_crash_looping_pod_is_reported_with_its_reason(op_kube: Kube, op_start: StartOperator) -> None:
    op_start(op_kube.namespace)
    op_kube.apply(mnist("crashy"))
    op_kube.wait_ready("crashy")
    pods = json.loads(
        op_kube.kubectl("get", "pods", "-l", "app.kubernetes.io/instance=crashy", "-o", "json").stdout
    )
    pod = pods["items"][0]["metadata"]["name"]
    # kwok runs no containers: report what a kubelet would for a server that keeps crashing.
    crash = {
        "status": {
            "conditions": [
                {"type": "Ready", "status": "False"},
                {"type": "ContainersReady", "status": "False"},
            ],
            "containerStatuses": [
                {
                    "name": "server",
                    "ready": False,
                    "restartCount": 4,
                    "image": "mnist-server:test",
                    "imageID": "",
                    "started": False,
                    "state": {
                        "waiting": {
                            "reason": "CrashLoopBackOff",
                            "message": "back-off 1m20s restarting failed container=server",
                        }
                    },
                }
            ],
        }
    }
    op_kube.kubectl("patch", "pod", pod, "--subresource=status", "--type=merge", "-p", json.dumps(crash))

    ready = op_kube.wait_condition("crashy", "Ready", "False", "CrashLoopBackOff", timeout=15)
    assert (
        f"pod {pod}: CrashLoopBackOff (back-off 1m20s restarting failed container=server)" in ready["message"]
    )
    assert op_kube.conditions("crashy")["Available"]["reason"] == "CrashLoopBackOff"
    op_kube.wait_for(
        lambda: ("Warning", "Degraded") in [(t, r) for t, r, _ in op_kube.events("crashy")],
        "a Degraded warning event",
        timeout=15,
    )

    op_kube.kubectl("delete", "pod", pod, "--wait=false")  # a fresh pod that starts fine
    op_kube.wait_ready("crashy")
