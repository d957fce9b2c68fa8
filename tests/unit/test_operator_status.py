"""Status logic: honest conditions from the Deployment, its pods, the exposure and the monitor."""

from __future__ import annotations

from typing import Any

import pytest

from mnist_operator import api
from mnist_operator.builders import Owner
from mnist_operator.cache import pod_projection
from mnist_operator.spec import parse_spec
from mnist_operator.status import (
    Event,
    Observed,
    Problem,
    compute_status,
    conditions_for,
    merge_conditions,
    pod_problems,
    transition_events,
)

OWNER = Owner("digits", "ml", "uid-1", generation=5)
SPEC = parse_spec({"modelVersion": "4", "replicas": 3})
PLAIN = api.Capabilities()
T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"


def deployment(
    *,
    generation: int = 2,
    observed: int = 2,
    replicas: int = 3,
    total: int | None = None,
    updated: int | None = None,
    ready: int | None = None,
    available: int | None = None,
    unavailable: int = 0,
    version: str = "4",
    available_status: str = "True",
    progressing: tuple[str, str] = ("True", "NewReplicaSetAvailable"),
) -> dict[str, Any]:
    return {
        "metadata": {"name": "digits", "generation": generation},
        "spec": {"replicas": replicas, "template": {"metadata": {"labels": {api.LABEL_VERSION: version}}}},
        "status": {
            "observedGeneration": observed,
            "replicas": replicas if total is None else total,
            "updatedReplicas": replicas if updated is None else updated,
            "readyReplicas": replicas if ready is None else ready,
            "availableReplicas": replicas if available is None else available,
            "unavailableReplicas": unavailable,
            "conditions": [
                {"type": "Available", "status": available_status},
                {"type": "Progressing", "status": progressing[0], "reason": progressing[1]},
            ],
        },
    }


def pod(
    name: str,
    *,
    ready: bool = True,
    waiting: str | None = None,
    message: str = "",
    phase: str = "Running",
    unschedulable: str | None = None,
    deleting: bool = False,
) -> dict[str, Any]:
    state: dict[str, Any] = (
        {"waiting": {"reason": waiting, "message": message}} if waiting else {"running": {}}
    )
    conditions = [{"type": "Ready", "status": "True" if ready else "False"}]
    if unschedulable:
        conditions.append(
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": unschedulable}
        )
    return {
        "name": name,
        "deleting": deleting,
        "phase": phase,
        "conditions": conditions,
        "containerStatuses": [
            {"name": "server", "ready": ready, "restartCount": 2 if waiting else 0, "state": state}
        ],
    }


def conds(
    observed: Observed, spec: Any = SPEC, caps: api.Capabilities = PLAIN
) -> dict[str, tuple[str, str, str]]:
    return {c.type: (c.status, c.reason, c.message) for c in conditions_for(spec, OWNER, observed, caps)}


@pytest.mark.parametrize(
    ("observed", "ready", "reason", "in_message"),
    [
        (Observed(), "False", "DeploymentPending", "does not exist yet"),
        (
            Observed(deployment=deployment()),
            "True",
            "Serving",
            "version 4 is served by 3 ready replicas at http://digits.ml.svc",
        ),
        (
            Observed(deployment=deployment(generation=3, observed=2)),
            "False",
            "RolloutPending",
            "waiting for the Deployment controller",
        ),
        (Observed(deployment=deployment(version="3")), "False", "RolloutPending", "version 4"),
        (
            Observed(deployment=deployment(updated=2, available=2, ready=2, unavailable=1)),
            "False",
            "RolloutInProgress",
            "2 of 3 updated replicas, 2 available",
        ),
        (
            Observed(deployment=deployment(total=4, updated=3)),
            "False",
            "RolloutInProgress",
            "1 old replica still running",
        ),
        (
            Observed(deployment=deployment(updated=1, progressing=("False", "ProgressDeadlineExceeded"))),
            "False",
            "ProgressDeadlineExceeded",
            "made no progress within 600s",
        ),
        (
            Observed(
                deployment=deployment(updated=1, available=2, ready=2, total=4),
                pods=[
                    pod("digits-new", ready=False, waiting="CrashLoopBackOff", message="back-off 10s"),
                    pod("digits-old-1"),
                    pod("digits-old-2"),
                ],
            ),
            "False",
            "CrashLoopBackOff",
            "pod digits-new: CrashLoopBackOff (back-off 10s)",
        ),
        (
            Observed(
                deployment=deployment(updated=1, available=0, ready=0),
                pods=[pod("digits-a", ready=False, waiting="ImagePullBackOff", message="pull access denied")],
            ),
            "False",
            "ImagePullBackOff",
            "pull access denied",
        ),
        (
            Observed(
                deployment=deployment(ready=2, available=2, unavailable=1, available_status="True"),
                pods=[pod("a"), pod("b"), pod("c", ready=False)],
            ),
            "False",
            "NotReady",
            "2 of 3 replicas ready: pod c: NotReady (running but not ready",
        ),
        (
            Observed(
                deployment=deployment(
                    updated=3, ready=0, available=0, unavailable=3, progressing=("True", "ReplicaSetUpdated")
                )
            ),
            "False",
            "RolloutInProgress",
            "3 of 3 updated replicas, 0 available",
        ),
        (Observed(deployment=deployment(replicas=0)), "False", "ScaledToZero", "replicas is 0"),
        (
            Observed(
                deployment=deployment(), problem=Problem("ChildConflict", "a Service named digits exists")
            ),
            "False",
            "ChildConflict",
            "a Service named digits exists",
        ),
    ],
)
def test_ready_summary(observed: Observed, ready: str, reason: str, in_message: str) -> None:
    status, got_reason, message = conds(observed)["Ready"]
    assert (status, got_reason) == (ready, reason)
    assert in_message in message


def test_ready_is_false_when_a_finished_rollout_loses_a_pod() -> None:
    observed = Observed(
        deployment=deployment(ready=2, available=3),
        pods=[pod("a"), pod("b"), pod("c", ready=False, waiting="CrashLoopBackOff")],
    )
    status, reason, message = conds(observed)["Ready"]
    assert (status, reason) == ("False", "CrashLoopBackOff")
    assert message.startswith("2 of 3 replicas ready: pod c: CrashLoopBackOff")


def test_never_ready_during_any_kind_of_rollout() -> None:
    rolling = [
        deployment(generation=3, observed=2),
        deployment(updated=2),
        deployment(total=4),
        deployment(available=2, progressing=("True", "ReplicaSetUpdated")),
        deployment(available=2),
        deployment(unavailable=1),
        deployment(version="old"),
    ]
    for dep in rolling:
        assert conds(Observed(deployment=dep))["Ready"][0] == "False", dep


@pytest.mark.parametrize(
    ("dep", "pods", "expected"),
    [
        (deployment(), [], ("True", "MinimumReplicasAvailable", "3 of 3 replicas available")),
        (
            deployment(available=2, ready=2),
            [],
            ("True", "MinimumReplicasAvailable", "2 of 3 replicas available"),
        ),
        (
            deployment(available=0, ready=0, available_status="False"),
            [pod("a", ready=False, unschedulable="0/1 nodes are available: insufficient cpu")],
            (
                "False",
                "Unschedulable",
                "0 of 3 replicas available: pod a: Unschedulable (0/1 nodes are available: insufficient cpu)",
            ),
        ),
        (
            deployment(available=0, ready=0, available_status="False"),
            [],
            ("False", "MinimumReplicasUnavailable", "0 of 3 replicas available"),
        ),
    ],
)
def test_available(dep: dict[str, Any], pods: list[dict[str, Any]], expected: tuple[str, str, str]) -> None:
    assert conds(Observed(deployment=dep, pods=pods))["Available"] == expected


def test_progressing_reports_complete_rollouts_as_false() -> None:
    assert conds(Observed(deployment=deployment()))["Progressing"] == (
        "False",
        "RolloutComplete",
        "version 4 is rolled out to 3 replicas",
    )
    assert conds(Observed(deployment=deployment(updated=2)))["Progressing"][:2] == ("True", "RollingOut")


@pytest.mark.parametrize(
    ("spec", "caps", "exposure", "expected"),
    [
        ({}, PLAIN, None, ("True", "Disabled")),
        ({"enabled": True}, PLAIN, None, ("False", "IngressPending")),
        ({"enabled": True}, PLAIN, {"kind": "Ingress", "status": {}}, ("Unknown", "AwaitingAddress")),
        (
            {"enabled": True, "host": "m.example.com"},
            PLAIN,
            {"kind": "Ingress", "status": {"loadBalancer": {"ingress": [{"ip": "10.1.2.3"}]}}},
            ("True", "IngressReady"),
        ),
        (
            {"enabled": True, "host": "m.example.com", "tls": "reencrypt"},
            PLAIN,
            None,
            ("False", "ReencryptUnsupported"),
        ),
        ({"enabled": True}, api.Capabilities(routes=True), None, ("False", "RoutePending")),
        (
            {"enabled": True},
            api.Capabilities(routes=True),
            {"kind": "Route", "metadata": {"name": "digits"}},
            ("Unknown", "AwaitingAdmission"),
        ),
        (
            {"enabled": True},
            api.Capabilities(routes=True),
            {
                "kind": "Route",
                "metadata": {"name": "digits"},
                "status": {
                    "ingress": [
                        {
                            "routerName": "default",
                            "host": "digits-ml.apps.example.com",
                            "conditions": [{"type": "Admitted", "status": "True"}],
                        }
                    ]
                },
            },
            ("True", "Admitted"),
        ),
        (
            {"enabled": True},
            api.Capabilities(routes=True),
            {
                "kind": "Route",
                "metadata": {"name": "digits"},
                "status": {
                    "ingress": [
                        {
                            "routerName": "default",
                            "conditions": [
                                {
                                    "type": "Admitted",
                                    "status": "False",
                                    "reason": "HostAlreadyClaimed",
                                    "message": "taken",
                                }
                            ],
                        }
                    ]
                },
            },
            ("False", "RouteNotAdmitted"),
        ),
    ],
)
def test_exposure_ready(
    spec: dict[str, Any], caps: api.Capabilities, exposure: dict[str, Any] | None, expected: tuple[str, str]
) -> None:
    parsed = parse_spec({"modelVersion": "4", "exposure": spec})
    assert (
        conds(Observed(deployment=deployment(), exposure=exposure), parsed, caps)["ExposureReady"][:2]
        == expected
    )


def test_a_rejected_route_makes_ready_false_but_a_pending_one_does_not() -> None:
    spec = parse_spec({"modelVersion": "4", "exposure": {"enabled": True}})
    routes = api.Capabilities(routes=True)
    rejected = {
        "kind": "Route",
        "metadata": {"name": "digits"},
        "status": {
            "ingress": [
                {"conditions": [{"type": "Admitted", "status": "False", "reason": "HostAlreadyClaimed"}]}
            ]
        },
    }
    assert conds(Observed(deployment=deployment(), exposure=rejected), spec, routes)["Ready"][:2] == (
        "False",
        "ExposureNotReady",
    )
    pending = {
        "kind": "Route",
        "metadata": {"name": "digits"},
        "spec": {"host": "digits-ml.apps.example.com"},
    }
    ready = conds(Observed(deployment=deployment(), exposure=pending), spec, routes)["Ready"]
    assert ready[:2] == ("True", "Serving")
    assert "http://digits-ml.apps.example.com" in ready[2]  # the host OpenShift generated


@pytest.mark.parametrize(
    ("enabled", "caps", "monitor", "expected"),
    [
        (False, PLAIN, None, ("True", "Disabled")),
        (True, PLAIN, None, ("False", "ServiceMonitorAPIMissing")),
        (True, api.Capabilities(service_monitors=True), None, ("False", "ServiceMonitorPending")),
        (
            True,
            api.Capabilities(service_monitors=True),
            {"kind": "ServiceMonitor"},
            ("True", "ServiceMonitorReady"),
        ),
    ],
)
def test_monitoring_ready(
    enabled: bool, caps: api.Capabilities, monitor: dict[str, Any] | None, expected: tuple[str, str]
) -> None:
    spec = parse_spec({"modelVersion": "4", "monitoring": {"serviceMonitor": {"enabled": enabled}}})
    got = conds(Observed(deployment=deployment(), service_monitor=monitor), spec, caps)
    assert got["MonitoringReady"][:2] == expected
    assert got["Ready"][0] == "True"  # monitoring is reported, it does not stop the model serving


def test_missing_service_monitor_api_tells_the_user_what_to_do() -> None:
    spec = parse_spec({"modelVersion": "4", "monitoring": {"serviceMonitor": {"enabled": True}}})
    message = conds(Observed(deployment=deployment()), spec)["MonitoringReady"][2]
    assert "install the Prometheus operator or set monitoring.serviceMonitor.enabled=false" in message


def test_invalid_spec() -> None:
    got = conds(
        Observed(deployment=deployment(), problem=Problem("InvalidSpec", "spec.modelVersion: bad")), None
    )
    assert got["Ready"] == ("False", "InvalidSpec", "spec.modelVersion: bad")
    assert got["ExposureReady"][:2] == ("Unknown", "InvalidSpec")


def test_pod_problems_are_sorted_by_severity_and_skip_terminating_pods() -> None:
    problems = pod_problems(
        [
            pod("a", ready=False),
            pod("b", ready=False, waiting="CrashLoopBackOff"),
            pod("c", ready=False, waiting="ImagePullBackOff"),
            pod("d", ready=False, waiting="CrashLoopBackOff", deleting=True),
            pod("e"),
            pod("f", ready=False, phase="Pending"),
        ]
    )
    assert [(p.pod, p.reason) for p in problems] == [
        ("c", "ImagePullBackOff"),
        ("b", "CrashLoopBackOff"),
        ("a", "NotReady"),
        ("f", "Pending"),
    ]


def _crashed(last: dict[str, Any], *, looping: bool = True) -> dict[str, Any]:
    """A pod (through the cache's projection, as the operator sees it) whose container ended."""
    container: dict[str, Any] = {"name": "server", "ready": False, "restartCount": 3, "lastState": {}}
    if looping:
        container["state"] = {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting"}}
        container["lastState"] = {"terminated": last}
    else:
        container["state"] = {"terminated": last}
    body = {
        "metadata": {"name": "digits-x"},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}],
                   "containerStatuses": [container]},
    }  # fmt: skip
    return pod_projection(body)


def test_a_crash_loop_shows_the_servers_own_last_words() -> None:
    # What FallbackToLogsOnError leaves when the server refuses an unknown modelVersion.
    log_tail = "INFO starting\nmnist-server: model version '9' is not in /models/mnist (versions: 1, 2)\n"
    (problem,) = pod_problems([_crashed({"reason": "Error", "exitCode": 2, "message": log_tail})])
    assert problem.reason == "CrashLoopBackOff"
    assert problem.message == (
        "container server exited with code 2, restarting with back-off: INFO starting "
        "mnist-server: model version '9' is not in /models/mnist (versions: 1, 2)"
    )
    # A long traceback: its end is what tells.
    (problem,) = pod_problems(
        [_crashed({"reason": "Error", "exitCode": 1, "message": "x" * 5000 + "\nValueError: bad"})]
    )
    assert problem.message.endswith("ValueError: bad") and len(problem.message) < 300


def test_an_oom_kill_is_its_own_reason() -> None:
    last = {"reason": "OOMKilled", "exitCode": 137, "message": ""}
    (looping,) = pod_problems([_crashed(last)])
    assert (looping.reason, looping.message) == (
        "OOMKilled",
        "container server was killed for using more than its memory limit, restarting with back-off",
    )
    (once,) = pod_problems([_crashed(last, looping=False)])
    assert once.reason == "OOMKilled"
    # As severe as a crash loop: it outranks pods that are merely not ready yet.
    problems = pod_problems([pod("a", ready=False), _crashed(last)])
    assert [p.reason for p in problems] == ["OOMKilled", "NotReady"]


def test_status_fields() -> None:
    status = compute_status(
        spec=SPEC,
        owner=OWNER,
        observed=Observed(deployment=deployment()),
        capabilities=PLAIN,
        previous=None,
        now=T0,
    )
    assert {k: v for k, v in status.items() if k != "conditions"} == {
        "observedGeneration": 5,
        "url": "http://digits.ml.svc",
        "modelVersion": "4",
        "replicas": 3,
        "readyReplicas": 3,
        "selector": "app.kubernetes.io/instance=digits,app.kubernetes.io/name=mnist-server",
    }
    assert [c["type"] for c in status["conditions"]] == [
        "Ready",
        "Available",
        "Progressing",
        "ExposureReady",
        "MonitoringReady",
    ]
    for cond in status["conditions"]:
        assert cond["observedGeneration"] == 5 and cond["lastTransitionTime"] == T0


def test_served_version_changes_only_once_the_rollout_completed() -> None:
    previous = {"modelVersion": "3"}
    mid = compute_status(
        spec=SPEC,
        owner=OWNER,
        observed=Observed(deployment=deployment(updated=1)),
        capabilities=PLAIN,
        previous=previous,
        now=T0,
    )
    assert mid["modelVersion"] == "3"
    # Rolled out, but a pod of the old version is still draining (terminating, still answering).
    old = {**pod("old"), "version": "3", "deleting": True}
    draining = compute_status(
        spec=SPEC,
        owner=OWNER,
        observed=Observed(deployment=deployment(), pods=[{**pod("new"), "version": "4"}, old]),
        capabilities=PLAIN,
        previous=mid,
        now=T0,
    )
    assert draining["modelVersion"] == "3"
    done = compute_status(
        spec=SPEC,
        owner=OWNER,
        observed=Observed(deployment=deployment()),
        capabilities=PLAIN,
        previous=mid,
        now=T0,
    )
    assert done["modelVersion"] == "4"
    zero = compute_status(
        spec=SPEC,
        owner=OWNER,
        observed=Observed(deployment=deployment(replicas=0)),
        capabilities=PLAIN,
        previous=done,
        now=T0,
    )
    assert "modelVersion" not in zero


def test_external_url_when_exposed() -> None:
    spec = parse_spec(
        {"modelVersion": "4", "exposure": {"enabled": True, "host": "m.example.com", "tls": "edge"}}
    )
    status = compute_status(
        spec=spec,
        owner=OWNER,
        observed=Observed(deployment=deployment()),
        capabilities=PLAIN,
        previous=None,
        now=T0,
    )
    assert status["url"] == "https://m.example.com"


def test_same_input_gives_an_identical_status() -> None:
    observed = Observed(deployment=deployment())
    first = compute_status(
        spec=SPEC, owner=OWNER, observed=observed, capabilities=PLAIN, previous=None, now=T0
    )
    again = compute_status(
        spec=SPEC, owner=OWNER, observed=observed, capabilities=PLAIN, previous=first, now=T1
    )
    assert again == first  # no write on a resync: the transition times stay


def test_last_transition_time_moves_only_when_status_flips() -> None:
    from mnist_operator.status import Condition

    previous = [
        {
            "type": "Ready",
            "status": "False",
            "reason": "RolloutInProgress",
            "message": "1 of 3",
            "observedGeneration": 4,
            "lastTransitionTime": T0,
        },
        {
            "type": "Progressing",
            "status": "True",
            "reason": "RollingOut",
            "message": "x",
            "observedGeneration": 4,
            "lastTransitionTime": T0,
        },
        {"type": "SomeoneElses", "status": "True", "reason": "X", "message": "", "lastTransitionTime": T0},
    ]
    merged = merge_conditions(
        previous,
        [
            Condition("Ready", "False", "CrashLoopBackOff", "2 of 3"),
            Condition("Progressing", "False", "RolloutComplete", "done"),
        ],
        5,
        T1,
    )
    by_type = {c["type"]: c for c in merged}
    assert by_type["Ready"]["lastTransitionTime"] == T0  # reason changed, status did not
    assert by_type["Ready"]["reason"] == "CrashLoopBackOff" and by_type["Ready"]["observedGeneration"] == 5
    assert by_type["Progressing"]["lastTransitionTime"] == T1
    assert by_type["SomeoneElses"] == previous[2]


def cond(type_: str, status: str, reason: str, message: str = "m") -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": message}


@pytest.mark.parametrize(
    ("before", "after", "events"),
    [
        (
            [],
            [cond("Ready", "False", "DeploymentPending"), cond("Progressing", "True", "RollingOut", "go")],
            [Event("Normal", "RolloutStarted", "go")],
        ),
        (
            [cond("Ready", "False", "RolloutInProgress")],
            [cond("Ready", "True", "Serving", "ok")],
            [Event("Normal", "Ready", "ok")],
        ),
        ([cond("Ready", "True", "Serving")], [cond("Ready", "True", "Serving", "new message")], []),
        ([cond("Ready", "True", "Serving")], [cond("Ready", "False", "RolloutInProgress")], []),
        (
            [cond("Ready", "True", "Serving")],
            [cond("Ready", "False", "CrashLoopBackOff", "pod a")],
            [Event("Warning", "Degraded", "CrashLoopBackOff: pod a")],
        ),
        (
            [cond("Ready", "False", "RolloutInProgress")],
            [cond("Ready", "False", "ImagePullBackOff", "pod a")],
            [Event("Warning", "ImagePullBackOff", "ImagePullBackOff: pod a")],
        ),
        (
            [cond("Ready", "False", "ImagePullBackOff")],
            [cond("Ready", "False", "ImagePullBackOff", "other")],
            [],
        ),
        # A scale-up: the new pod is still loading the model. Ready says so; no Warning.
        (
            [cond("Ready", "True", "Serving")],
            [cond("Ready", "False", "NotReady", "2 of 3 replicas ready")],
            [],
        ),
        (
            [cond("Progressing", "True", "RollingOut")],
            [cond("Progressing", "False", "ProgressDeadlineExceeded", "x")],
            [Event("Warning", "ProgressDeadlineExceeded", "x")],
        ),
        (
            [cond("MonitoringReady", "True", "Disabled")],
            [cond("MonitoringReady", "False", "ServiceMonitorAPIMissing", "install")],
            [Event("Warning", "ServiceMonitorAPIMissing", "install")],
        ),
        (
            [cond("MonitoringReady", "False", "ServiceMonitorAPIMissing")],
            [cond("MonitoringReady", "False", "ServiceMonitorAPIMissing")],
            [],
        ),
    ],
)
def test_events_on_transitions_only(
    before: list[dict[str, Any]], after: list[dict[str, Any]], events: list[Event]
) -> None:
    assert transition_events(before, after) == events


GATEWAY_SPEC = {"enabled": True, "host": "digits.example.com", "gateway": {"name": "public"}}
GATEWAY_API = api.Capabilities(http_routes=True)


def _http_route(*accepted: str) -> dict[str, Any]:
    parents = [
        {
            "parentRef": {"name": "public"},
            "controllerName": "example.com/gw",
            "conditions": [{"type": "Accepted", "status": status, "reason": "R", "message": "m"}],
        }
        for status in accepted
    ]
    return {"kind": "HTTPRoute", "metadata": {"name": "digits"}, "status": {"parents": parents}}


@pytest.mark.parametrize(
    ("caps", "exposure", "expected"),
    [
        (PLAIN, None, ("False", "GatewayAPIMissing")),
        (api.Capabilities(routes=True), None, ("False", "GatewayAPIMissing")),  # no Route instead
        (GATEWAY_API, None, ("False", "HTTPRoutePending")),
        (GATEWAY_API, _http_route(), ("Unknown", "AwaitingAcceptance")),
        (GATEWAY_API, _http_route("False"), ("False", "HTTPRouteNotAccepted")),
        (GATEWAY_API, _http_route("False", "True"), ("True", "HTTPRouteAccepted")),
    ],
)
def test_exposure_ready_through_a_gateway(
    caps: api.Capabilities, exposure: dict[str, Any] | None, expected: tuple[str, str]
) -> None:
    parsed = parse_spec({"modelVersion": "4", "exposure": GATEWAY_SPEC})
    got = conds(Observed(deployment=deployment(), exposure=exposure), parsed, caps)["ExposureReady"]
    assert got[:2] == expected


def test_a_missing_gateway_api_tells_the_user_what_to_do() -> None:
    parsed = parse_spec({"modelVersion": "4", "exposure": GATEWAY_SPEC})
    got = conds(Observed(deployment=deployment()), parsed, PLAIN)["ExposureReady"]
    assert "gateway.networking.k8s.io/v1 HTTPRoute API is not served" in got[2]
    assert "remove spec.exposure.gateway" in got[2]
