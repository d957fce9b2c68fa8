"""The central promise, on the real node: an MnistModel becomes pods of the shared server image,
built from Dockerfile.server and run by containerd, that start under Pod Security `restricted`,
load the model, pass their probes and serve correct predictions through the Service, with the
operator itself running in-cluster from the image built from Dockerfile.operator."""

from __future__ import annotations

import json
import logging
import os
import signal
import time
import urllib.request
from dataclasses import dataclass

import numpy as np
import pytest
from realnode.realnode_support import (
    OPERATOR_NAMESPACE,
    Digits,
    OperatorInstall,
    SteadyLoad,
    apply,
    condition,
    get,
    mnist_model,
    pods_of,
    predict,
    routed_cluster_ip,
    wait_condition,
)
from testkit import wait_for

from localcluster import LocalCluster, node
from localcluster.images import Images

pytestmark = pytest.mark.slow
log = logging.getLogger(__name__)


def test_the_operator_runs_in_cluster_from_its_image(
    rn_cluster: LocalCluster, rn_operator: OperatorInstall, rn_images: Images
) -> None:
    assert rn_operator.pods
    for name in rn_operator.pods:
        pod = get(rn_cluster, OPERATOR_NAMESPACE, "pod", name)
        assert pod["spec"]["nodeName"] == node.NODE_NAME
        assert pod["spec"]["serviceAccountName"] == "mnist-operator"
        (container,) = pod["spec"]["containers"]
        assert container["image"] == rn_images.operator
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        (status,) = pod["status"]["containerStatuses"]
        assert status["ready"] is True and status["restartCount"] == 0
    log.info("operator installed and Ready in %.1f s", rn_operator.seconds_to_ready)


def test_a_model_serves_correct_predictions_from_real_pods(
    rn_cluster: LocalCluster, rn_operator: OperatorInstall, rn_namespace: str, rn_digits: Digits,
    record_property: pytest.RecordProperty,
) -> None:  # fmt: skip
    started = time.monotonic()
    apply(rn_cluster, rn_namespace, mnist_model("digits", "1"))
    model = wait_condition(rn_cluster, rn_namespace, "digits", "True", timeout=120)
    to_ready = time.monotonic() - started
    ip = routed_cluster_ip(rn_cluster, rn_namespace, "digits")
    assert predict(ip, rn_digits.images[:1]).shape == (1,)
    to_first_prediction = time.monotonic() - started

    (pod,) = pods_of(rn_cluster, rn_namespace, "digits")
    assert pod["spec"]["nodeName"] == node.NODE_NAME
    (container,) = pod["spec"]["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    probe = container["readinessProbe"]["httpGet"]
    assert (probe["path"], probe["port"]) == ("/readyz", "probes")
    # The kubelet's probes passed on the probe listener (a thread of its own in the server).
    with urllib.request.urlopen(f"http://{pod['status']['podIP']}:8081/readyz", timeout=5) as answer:
        assert json.load(answer)["status"] == "ready"
    # The namespace enforces `restricted`: the pod was admitted under it, and runs as non-root.
    labels = get(rn_cluster, "", "namespace", rn_namespace)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    uid = rn_cluster.crictl("inspect", _container_id(pod)).stdout
    assert json.loads(uid)["info"]["runtimeSpec"]["process"]["user"]["uid"] == 65532
    # Ready only after the pod passed /readyz: the pod turned Ready no later than the model did.
    pod_ready = next(c for c in pod["status"]["conditions"] if c["type"] == "Ready")
    assert pod_ready["status"] == "True"
    assert pod_ready["lastTransitionTime"] <= condition(model)["lastTransitionTime"]
    assert model["status"]["modelVersion"] == "1"

    predictions = predict(ip, rn_digits.images)
    accuracy = float(np.mean(predictions == rn_digits.labels))
    log.info("created -> Ready %.1f s, -> first prediction %.1f s, accuracy %.3f on %d real test images",
             to_ready, to_first_prediction, accuracy, len(predictions))  # fmt: skip
    record_property("created_to_ready_seconds", round(to_ready, 1))
    record_property("created_to_first_prediction_seconds", round(to_first_prediction, 1))
    record_property("accuracy", accuracy)
    assert accuracy >= 0.97


def test_the_tensorflow_backend_serves_too(
    rn_cluster: LocalCluster, rn_operator: OperatorInstall, rn_namespace: str, rn_digits: Digits,
    record_property: pytest.RecordProperty,
) -> None:  # fmt: skip
    """The same image and version on TensorFlow (SavedModel) instead of ONNX Runtime: slower to
    start (TensorFlow's import), the same answers."""
    backend = [{"name": "MNIST_SERVER_BACKEND", "value": "tensorflow"}]
    started = time.monotonic()
    apply(rn_cluster, rn_namespace, mnist_model("digits", "1", env=backend))
    wait_condition(rn_cluster, rn_namespace, "digits", "True", timeout=180)
    to_ready = time.monotonic() - started
    ip = routed_cluster_ip(rn_cluster, rn_namespace, "digits")
    predictions = predict(ip, rn_digits.images)
    to_answers = time.monotonic() - started
    accuracy = float(np.mean(predictions == rn_digits.labels))
    log.info("TensorFlow backend: created -> Ready %.1f s, -> %d predictions %.1f s, accuracy %.3f",
             to_ready, len(predictions), to_answers, accuracy)  # fmt: skip
    record_property("tensorflow_created_to_ready_seconds", round(to_ready, 1))
    assert accuracy >= 0.97


def test_a_killed_server_turns_ready_false_with_the_reason_then_true(
    rn_cluster: LocalCluster, rn_operator: OperatorInstall, rn_namespace: str
) -> None:
    apply(rn_cluster, rn_namespace, mnist_model("digits", "1"))
    wait_condition(rn_cluster, rn_namespace, "digits", "True", timeout=120)
    (pod,) = pods_of(rn_cluster, rn_namespace, "digits")
    pid = json.loads(rn_cluster.crictl("inspect", _container_id(pod)).stdout)["info"]["pid"]
    os.kill(pid, signal.SIGKILL)  # the server process, killed by hand

    down = wait_condition(rn_cluster, rn_namespace, "digits", "False", timeout=60)
    ready = condition(down)
    # Honest: the pod by name, and why it is not serving (its exit, or the restart in progress).
    assert pod["metadata"]["name"] in ready["message"], ready
    assert ready["reason"] in {"Error", "NotReady", "CrashLoopBackOff", "RolloutInProgress"}, ready
    back = wait_condition(rn_cluster, rn_namespace, "digits", "True", timeout=120)
    (again,) = pods_of(rn_cluster, rn_namespace, "digits")
    assert again["status"]["containerStatuses"][0]["restartCount"] == 1
    assert condition(back)["reason"] == "Serving"


def test_a_rollout_under_steady_load_fails_no_request(
    rn_cluster: LocalCluster, rn_operator: OperatorInstall, rn_namespace: str, rn_digits: Digits,
    record_property: pytest.RecordProperty,
) -> None:  # fmt: skip
    apply(rn_cluster, rn_namespace, mnist_model("digits", "1", replicas=2))
    wait_condition(rn_cluster, rn_namespace, "digits", "True", timeout=180)
    ip = routed_cluster_ip(rn_cluster, rn_namespace, "digits")
    moved_at = None
    with SteadyLoad(ip, rn_digits.images[0]) as load:
        time.sleep(3)
        rolled = time.monotonic()
        rn_cluster.kubectl("patch", "mnistmodel", "digits", "-n", rn_namespace, "--type=merge",
                           "-p", '{"spec":{"modelVersion":"2"}}')  # fmt: skip

        def moved() -> float | None:
            status = get(rn_cluster, rn_namespace, "mnistmodel", "digits").get("status", {})
            return time.monotonic() if status.get("modelVersion") == "2" else None

        moved_at = wait_for(moved, "status.modelVersion to move to 2", timeout=240, interval=0.2)
        rollout_seconds = moved_at - rolled
        time.sleep(3)
    result = load.result
    log.info("rollout under load: %d requests in %.0f s (%.0f/s), %d failed %s, versions %s, "
             "rolled in %.1f s", result.ok, load.seconds, load.rate, result.failed, dict(result.failures),
             dict(result.versions), rollout_seconds)  # fmt: skip
    record_property("rollout_requests", result.ok)
    record_property("rollout_failed", result.failed)
    record_property("rollout_requests_per_second", round(load.rate))
    record_property("rollout_seconds", round(rollout_seconds, 1))
    # Seconds from the patch: before 0, the Service was not routing yet; after, the rollout.
    failed_at = sorted({round(t - rolled, 1) for t, _ in result.failure_times})
    assert result.failed == 0, f"{dict(result.failures)} at {failed_at} s from the patch"
    assert load.rate >= 150, f"the load was too light to prove anything: {load.rate:.0f} requests/s"
    assert set(result.versions) == {"1", "2"}
    # The status said 2 only once every pod served it: nothing answered as 1 afterwards (a
    # request in flight at that instant may still finish, hence the margin).
    late_ones = [t for t, version in result.timeline if version == "1" and t > moved_at + 0.5]
    assert late_ones == [], f"{len(late_ones)} answers from version 1 after status.modelVersion said 2"
    (ready,) = [condition(get(rn_cluster, rn_namespace, "mnistmodel", "digits"))]
    assert ready["status"] == "True"


@dataclass(frozen=True)
class Failure:
    case: str
    change: dict[str, object]
    reason: str
    in_message: str


@pytest.mark.parametrize(
    "failure",
    [
        Failure(
            "missing-image",
            {"image": "localhost/mnist-server:no-such-tag", "imagePullPolicy": "Never"},
            "ErrImageNeverPull",
            "localhost/mnist-server:no-such-tag",
        ),
        Failure("unknown-version", {"modelVersion": "99"}, "CrashLoopBackOff", "/models/mnist/99"),
        Failure(
            "memory-too-small",
            {"resources": {"requests": {"memory": "48Mi"}, "limits": {"memory": "48Mi"}}},
            "OOMKilled",
            "memory limit",
        ),
    ],
    ids=lambda f: f.case,
)
def test_failures_show_on_the_model_with_the_reason_and_the_real_message(
    rn_cluster: LocalCluster, rn_operator: OperatorInstall, rn_namespace: str, failure: Failure
) -> None:
    doc = mnist_model("digits", "1")
    doc["spec"].update(failure.change)
    apply(rn_cluster, rn_namespace, doc)
    reason = failure.reason
    model = wait_condition(rn_cluster, rn_namespace, "digits", "False", reason=reason, timeout=150)
    ready = condition(model)
    log.info("%s: Ready=False %s: %s", failure.case, ready["reason"], ready["message"])
    assert failure.in_message in ready["message"], ready
    events = rn_cluster.kubectl("get", "events", "-n", rn_namespace, "-o", "json").stdout
    assert any(e.get("reason") in {reason, "Degraded"} for e in json.loads(events)["items"]
               if e["involvedObject"]["kind"] == "MnistModel")  # fmt: skip


def _container_id(pod: dict[str, object]) -> str:
    status = pod["status"]["containerStatuses"][0]  # type: ignore[index]
    return str(status["containerID"]).split("://", 1)[1]
