"""Models from storage, on the operator's side: spec.source parsed, the pods that fetch and
verify before they serve, and the status that says which bytes serve or why none do."""

from __future__ import annotations

from typing import Any

import pytest

from mnist_operator import api, storage
from mnist_operator.builders import Owner, deployment
from mnist_operator.cache import pod_projection
from mnist_operator.conditions import Reason
from mnist_operator.settings import OperatorSettings
from mnist_operator.spec import SpecError, parse_spec
from mnist_operator.status import Observed, compute_status, pod_problems

OWNER = Owner("digits", "ml", "uid-1", generation=3)
SETTINGS = OperatorSettings()
D1, D2 = "ab" * 32, "cd" * 32
S3 = {"endpoint": "http://store.example:9000", "bucket": "models", "key": "mnist/mnist-2.tar.gz"}
NOW = "2026-01-01T00:00:00Z"


def spec(source: dict[str, Any] | None, **more: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"modelVersion": "2", **more}
    if source is not None:
        out["source"] = source
    return out


# ----- the spec -----------------------------------------------------------------------------


def test_each_kind_of_source_is_parsed() -> None:
    s3 = parse_spec(spec({"sha256": D1, "s3": {**S3, "secretName": "creds"}})).source
    assert s3 is not None and s3.kind == "s3" and s3.uri == "s3://models/mnist/mnist-2.tar.gz"
    assert s3.location == storage.S3Location(S3["endpoint"], "models", S3["key"], "us-east-1", "creds")
    http = parse_spec(spec({"sha256": D1, "http": {"url": "https://h.example/m.tar.gz"}})).source
    assert http is not None and http.kind == "http" and http.uri == "https://h.example/m.tar.gz"
    pvc = parse_spec(spec({"sha256": D1, "pvc": {"claimName": "models", "path": "v/m.tar.gz"}})).source
    assert pvc is not None and pvc.uri == f"file://{storage.SOURCE_MOUNT}/v/m.tar.gz"
    assert parse_spec(spec(None)).source is None


@pytest.mark.parametrize(
    ("source", "more", "field"),
    [
        ({"sha256": D1.upper(), "http": {"url": "http://h/m"}}, {}, "source.sha256"),
        ({"sha256": D1[:-1], "http": {"url": "http://h/m"}}, {}, "source.sha256"),
        ({"http": {"url": "http://h/m"}}, {}, "source.sha256"),
        ({"sha256": D1}, {}, "source"),
        ({"sha256": D1, "http": {"url": "http://h/m"}, "s3": S3}, {}, "source"),
        ({"sha256": D1, "http": {"url": "ftp://h/m"}}, {}, "source.http.url"),
        ({"sha256": D1, "http": {"url": "http://user:pw@h/m"}}, {}, "source.http.url"),
        ({"sha256": D1, "s3": {**S3, "endpoint": "http://h/path"}}, {}, "source.s3.endpoint"),
        ({"sha256": D1, "s3": {**S3, "key": "/abs"}}, {}, "source.s3.key"),
        ({"sha256": D1, "s3": {**S3, "secretName": "other/ns"}}, {}, "source.s3.secretName"),
        ({"sha256": D1, "pvc": {"claimName": "c", "path": "../etc/passwd"}}, {}, "source.pvc.path"),
        ({"sha256": D1, "pvc": {"claimName": "c", "path": "/m.tar.gz"}}, {}, "source.pvc.path"),
        (
            {"sha256": D1, "http": {"url": "http://h/m"}},
            {"env": [{"name": "MNIST_SERVER_MODEL_ROOT", "value": "/models"}]},
            "env[0].name",
        ),
    ],
)
def test_bad_sources_are_refused_naming_the_field(
    source: dict[str, Any], more: dict[str, Any], field: str
) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(spec(source, **more))
    assert caught.value.field == field


# ----- the pods -----------------------------------------------------------------------------


def pod_spec(raw: dict[str, Any]) -> dict[str, Any]:
    return dict(deployment(parse_spec(raw), OWNER, SETTINGS)["spec"]["template"]["spec"])


def test_a_model_from_s3_is_fetched_by_an_init_container_that_alone_gets_the_credentials() -> None:
    template = deployment(
        parse_spec(spec({"sha256": D1, "s3": {**S3, "secretName": "creds"}})), OWNER, SETTINGS
    )
    assert template["spec"]["template"]["metadata"]["annotations"] == {storage.SHA256_ANNOTATION: D1}
    pod = template["spec"]["template"]["spec"]
    (fetch,) = pod["initContainers"]
    (server,) = pod["containers"]
    assert fetch["image"] == server["image"] == SETTINGS.default_image  # the same, unchanged image
    assert fetch["command"] == ["mnist-server", "fetch"]
    args = dict(zip(fetch["args"][::2], fetch["args"][1::2], strict=True))
    assert args["--source"] == "s3://models/mnist/mnist-2.tar.gz" and args["--sha256"] == D1
    assert args["--s3-endpoint"] == S3["endpoint"] and args["--model-version"] == "2"
    assert args["--model-root"] == storage.MODEL_ROOT
    secrets = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in fetch["env"]}
    assert secrets == {
        "AWS_ACCESS_KEY_ID": {"name": "creds", "key": "AWS_ACCESS_KEY_ID"},
        "AWS_SECRET_ACCESS_KEY": {"name": "creds", "key": "AWS_SECRET_ACCESS_KEY"},
        "AWS_SESSION_TOKEN": {"name": "creds", "key": "AWS_SESSION_TOKEN", "optional": True},
    }
    # A secretKeyRef has no namespace: only a Secret of the model's own namespace can be named.
    assert all("namespace" not in ref for ref in secrets.values())
    assert not any("valueFrom" in e for e in server["env"])  # the server never sees them
    assert {"name": "MNIST_SERVER_MODEL_ROOT", "value": storage.MODEL_ROOT} in server["env"]
    assert {"name": storage.MODEL_VOLUME, "mountPath": storage.MODEL_ROOT, "readOnly": True} in server[
        "volumeMounts"
    ]
    assert fetch["securityContext"] == server["securityContext"]  # restricted, read-only root
    assert fetch["terminationMessagePolicy"] == "FallbackToLogsOnError"
    model_volume = next(v for v in pod["volumes"] if v["name"] == storage.MODEL_VOLUME)
    assert model_volume == {"name": "model", "emptyDir": {"sizeLimit": storage.MODEL_VOLUME_SIZE}}


def test_a_pvc_is_mounted_read_only_into_the_fetch_only() -> None:
    pod = pod_spec(spec({"sha256": D1, "pvc": {"claimName": "models", "path": "m.tar.gz"}}))
    source_volume = {
        "name": "model-source",
        "persistentVolumeClaim": {"claimName": "models", "readOnly": True},
    }
    assert source_volume in pod["volumes"]
    (fetch,) = pod["initContainers"]
    assert {"name": "model-source", "mountPath": storage.SOURCE_MOUNT, "readOnly": True} in fetch[
        "volumeMounts"
    ]
    assert all(m["name"] != "model-source" for m in pod["containers"][0]["volumeMounts"])
    assert "env" not in fetch


def test_a_model_baked_into_the_image_is_unchanged() -> None:
    pod = pod_spec(spec(None))
    assert "initContainers" not in pod
    assert [v["name"] for v in pod["volumes"]] == ["tmp"]


def test_a_new_digest_rolls_the_pods() -> None:
    first = deployment(parse_spec(spec({"sha256": D1, "s3": S3})), OWNER, SETTINGS)["spec"]["template"]
    second = deployment(parse_spec(spec({"sha256": D2, "s3": S3})), OWNER, SETTINGS)["spec"]["template"]
    assert first != second


# ----- the status ---------------------------------------------------------------------------


def raw_pod(name: str, *, sha256: str | None, init: dict[str, Any] | None = None, ready: bool = True,
            version: str = "2") -> dict[str, Any]:  # fmt: skip
    annotations = {storage.SHA256_ANNOTATION: sha256} if sha256 else {}
    status: dict[str, Any] = {
        "phase": "Running" if ready else "Pending",
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        "containerStatuses": [
            {
                "name": "server",
                "ready": ready,
                "restartCount": 0,
                "state": {"running": {}} if ready else {"waiting": {"reason": "PodInitializing"}},
            }
        ],
    }
    if init is not None:
        status["initContainerStatuses"] = [{"name": storage.FETCH_CONTAINER, "restartCount": 2, **init}]
    return {
        "metadata": {
            "name": name,
            "uid": f"u-{name}",
            "labels": {api.LABEL_VERSION: version},
            "annotations": annotations,
        },
        "status": status,
    }


def failed_fetch(message: str, *, looping: bool = True) -> dict[str, Any]:
    terminated = {"exitCode": 1, "reason": "Error", "message": message + "\n"}
    if looping:
        return {"state": {"waiting": {"reason": "CrashLoopBackOff"}}, "lastState": {"terminated": terminated}}
    return {"state": {"terminated": terminated}}


@pytest.mark.parametrize(
    "reason",
    [
        Reason.DIGEST_MISMATCH,
        Reason.MODEL_ACCESS_DENIED,
        Reason.INVALID_MODEL_ARCHIVE,
        Reason.MODEL_FETCH_FAILED,
    ],
)
@pytest.mark.parametrize("looping", [True, False])
def test_a_failed_fetch_is_the_pods_reason_with_the_fetchers_message(reason: Reason, looping: bool) -> None:
    init = failed_fetch(f"{reason}: what went wrong", looping=looping)
    (problem,) = pod_problems([pod_projection(raw_pod("p", sha256=D1, init=init, ready=False))])
    assert problem.reason == reason
    assert problem.message.startswith("what went wrong")
    assert ("back-off" in problem.message) is looping


def test_a_fetch_in_progress_and_a_finished_one() -> None:
    running = {"state": {"running": {"startedAt": NOW}}}
    (problem,) = pod_problems([pod_projection(raw_pod("p", sha256=D1, init=running, ready=False))])
    assert problem.reason == Reason.PENDING and "fetching and verifying the model" in problem.message
    retrying = {**running, "lastState": failed_fetch("DigestMismatch: no")["lastState"]}
    (problem,) = pod_problems([pod_projection(raw_pod("p", sha256=D1, init=retrying, ready=False))])
    assert problem.reason == Reason.DIGEST_MISMATCH  # steady while the kubelet retries
    done = {"state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}
    assert pod_problems([pod_projection(raw_pod("p", sha256=D1, init=done))]) == []


def test_a_missing_secret_is_reported_as_the_kubelet_says() -> None:
    waiting = {
        "state": {"waiting": {"reason": "CreateContainerConfigError", "message": 'secret "creds" not found'}}
    }
    (problem,) = pod_problems([pod_projection(raw_pod("p", sha256=D1, init=waiting, ready=False))])
    assert (problem.reason, problem.message) == ("CreateContainerConfigError", 'secret "creds" not found')


def rolled_out(sha256: str, version: str = "2") -> dict[str, Any]:
    template = {"labels": {api.LABEL_VERSION: version}, "annotations": {storage.SHA256_ANNOTATION: sha256}}
    return {
        "metadata": {"name": "digits", "generation": 2},
        "spec": {"replicas": 1, "template": {"metadata": template}},
        "status": {
            "observedGeneration": 2, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1,
            "availableReplicas": 1,
            "conditions": [{"type": "Available", "status": "True"},
                           {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}],
        },
    }  # fmt: skip


def test_the_served_digest_moves_only_once_no_pod_serves_the_old_one() -> None:
    parsed = parse_spec(spec({"sha256": D2, "s3": S3}))
    previous = {"modelVersion": "2", "modelSHA256": D1}

    def status(*pods: dict[str, Any]) -> dict[str, Any]:
        observed = Observed(deployment=rolled_out(D2), pods=[pod_projection(p) for p in pods])
        return dict(compute_status(spec=parsed, owner=OWNER, observed=observed,
                                   capabilities=api.Capabilities(), previous=previous, now=NOW))  # fmt: skip

    # Same modelVersion, new bytes: an old pod still draining keeps the old digest in status.
    draining = status(raw_pod("new", sha256=D2), raw_pod("old", sha256=D1))
    assert (draining["modelVersion"], draining["modelSHA256"]) == ("2", D1)
    done = status(raw_pod("new", sha256=D2))
    assert (done["modelVersion"], done["modelSHA256"]) == ("2", D2)
    ready = next(c for c in done["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and f"sha256 {D2[:12]}" in ready["message"]


def test_a_bad_new_digest_holds_ready_back_and_keeps_the_old_truth() -> None:
    parsed = parse_spec(spec({"sha256": D2, "s3": S3}))
    mid_rollout = rolled_out(D2)
    counts = {"replicas": 2, "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1}
    mid_rollout["status"].update({**counts, "unavailableReplicas": 1})
    said = f"DigestMismatch: the archive at s3://models/mnist-2.tar.gz has sha256 {D1}, not the pinned {D2}"
    said += " (2070654 bytes): refusing to serve it"  # as long as the fetcher's get: nothing cut
    new = raw_pod("new", sha256=D2, init=failed_fetch(said), ready=False)
    observed = Observed(
        deployment=mid_rollout, pods=[pod_projection(new), pod_projection(raw_pod("old", sha256=D1))]
    )
    status = compute_status(spec=parsed, owner=OWNER, observed=observed, capabilities=api.Capabilities(),
                            previous={"modelVersion": "2", "modelSHA256": D1}, now=NOW)  # fmt: skip
    ready = {c["type"]: c for c in status["conditions"]}["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "DigestMismatch")
    assert f"pod new: {said.replace(': ', ' (', 1)}; restarting with back-off)" in ready["message"]
    assert status.get("modelSHA256") == D1


def test_a_model_baked_into_the_image_has_no_digest_in_status() -> None:
    parsed = parse_spec(spec(None))
    deploy = rolled_out(D1)
    del deploy["spec"]["template"]["metadata"]["annotations"]
    observed = Observed(deployment=deploy, pods=[pod_projection(raw_pod("p", sha256=None))])
    status = compute_status(spec=parsed, owner=OWNER, observed=observed, capabilities=api.Capabilities(),
                            previous={"modelSHA256": D1}, now=NOW)  # fmt: skip
    assert status["modelVersion"] == "2" and "modelSHA256" not in status


# ----- the admin's policy -------------------------------------------------------------------


def refusals(source: dict[str, Any], allowed: str) -> list[str]:
    from mnist_operator import policy
    from mnist_operator.settings import OperatorSettings

    settings = OperatorSettings.from_env({"MNIST_OPERATOR_ALLOWED_MODEL_SOURCES": allowed})
    verdict = policy.evaluate(parse_spec(spec(source)), "ml", settings, api.Capabilities(), {})
    return [str(r) for r in verdict.refusals]


def test_the_policy_bounds_where_models_come_from() -> None:
    http = {"sha256": D1, "http": {"url": "https://models.example.com/team/m.tar.gz?X-Amz-Signature=s"}}
    s3 = {"sha256": D1, "s3": S3}
    pvc = {"sha256": D1, "pvc": {"claimName": "models", "path": "m.tar.gz"}}
    assert refusals(http, "*") == refusals(s3, "*") == refusals(pvc, "*") == []  # the default
    allowed = "https://models.example.com/team/,http://store.example:9000/models,pvc"
    assert refusals(http, allowed) == refusals(s3, allowed) == refusals(pvc, allowed) == []
    (refused,) = refusals(s3, "http://store.example:900,https://models.example.com/")
    assert refused.startswith("spec.source.s3: fetching a model from http://store.example:9000/models/mnist/")
    assert refused.endswith("(MNIST_OPERATOR_ALLOWED_MODEL_SOURCES)")
    (refused,) = refusals(http, "https://models.example.com/team-b")
    assert "X-Amz-Signature" not in refused and refused.startswith("spec.source.http.url: ")
    (refused,) = refusals(pvc, "none")
    assert refused.startswith("spec.source.pvc: fetching a model from a PersistentVolumeClaim is not allowed")
    lookalike = {"sha256": D1, "http": {"url": "http://store.example:9000.evil/m"}}
    assert refusals(lookalike, "http://store.example:9000") != []


@pytest.mark.parametrize("entry", ["ftp://x/", "https://user@x/", "https://x/?q", "store.example", "*,pvc"])
def test_bad_model_source_entries_stop_the_operator(entry: str) -> None:
    from mnist_operator.settings import OperatorSettings, SettingsError

    with pytest.raises(SettingsError, match="MNIST_OPERATOR_ALLOWED_MODEL_SOURCES"):
        OperatorSettings.from_env({"MNIST_OPERATOR_ALLOWED_MODEL_SOURCES": entry})
