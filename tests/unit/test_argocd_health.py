"""The Argo CD health check for MnistModel, run by a real Lua 5.1 interpreter.

Argo CD runs health checks in gopher-lua (Lua 5.1) with the resource as the global `obj`; the
harness here does the same with /usr/bin/lua5.1, passing `obj` as a Lua table literal made from
the Python fixture. Two kinds of fixtures: hand-written statuses for each verdict, and statuses
computed by the operator's own status logic (mnist_operator.status), so that the Lua keeps up
with what the operator really writes. Also checks that the argocd-cm patch carries exactly the
.lua file (it is generated from it).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from mnist_operator import api
from mnist_operator.builders import Owner
from mnist_operator.cache import pod_projection
from mnist_operator.conditions import TRANSIENT_REASONS, ConditionType, Reason
from mnist_operator.spec import parse_spec
from mnist_operator.status import Observed, Problem, compute_status

ROOT = Path(__file__).resolve().parents[2]
ARGOCD = ROOT / "manifests" / "argocd"
LUA_FILE = ARGOCD / "mnistmodel-health.lua"
PATCH_FILE = ARGOCD / "argocd-cm-patch.yaml"
HEALTH_KEY = "resource.customizations.health.aidevsecops.dev_MnistModel"
LUA = shutil.which("lua5.1")
NOW = "2026-01-01T00:00:00Z"
HEALTH_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "True", "False"}

needs_lua = pytest.mark.skipif(LUA is None, reason="lua5.1 is not installed (bash .ci/run installs it)")


def lua_literal(value: Any) -> str:
    """A Python value (decoded JSON) as a Lua table constructor; None becomes nil (absent)."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    if isinstance(value, list):
        return "{" + ", ".join(lua_literal(v) for v in value) + "}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{lua_literal(str(k))}] = {lua_literal(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no Lua literal for {type(value).__name__}")


def argo_health(resource: dict[str, Any]) -> tuple[str, str]:
    """(status, message) as Argo CD would compute them with the shipped Lua."""
    assert LUA is not None
    harness = (
        f"obj = {lua_literal(resource)}\n"
        f"local check = assert(loadfile({lua_literal(str(LUA_FILE))}))\n"
        "local hs = check()\n"
        'io.write(tostring(hs.status), "\\n", tostring(hs.message), "\\n")\n'
    )
    done = subprocess.run([LUA, "-"], input=harness, capture_output=True, text=True, timeout=10, check=False)
    assert done.returncode == 0, done.stderr
    status, message = done.stdout.split("\n", 1)
    return status, message.rstrip("\n")


def model(generation: int = 2, status: dict[str, Any] | None = None, replicas: int = 1) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": "digits", "namespace": "ml", "generation": generation, "uid": "u-1"},
        "spec": {"modelVersion": "2", "replicas": replicas},
    }
    if status is not None:
        resource["status"] = status
    return resource


def ready(status: str, reason: str, message: str = "", generation: int = 2) -> dict[str, Any]:
    return {
        "observedGeneration": generation,
        "conditions": [
            {
                "type": "Available",
                "status": "True",
                "reason": "MinimumReplicasAvailable",
                "message": "",
                "observedGeneration": generation,
            },
            {
                "type": "Ready",
                "status": status,
                "reason": reason,
                "message": message,
                "observedGeneration": generation,
                "lastTransitionTime": NOW,
            },
        ],
    }


@needs_lua
@pytest.mark.parametrize(
    ("resource", "expected", "in_message"),
    [
        pytest.param(
            model(status=ready("True", "Serving", "version 2 is served by 1 ready replicas")),
            "Healthy",
            "Serving: version 2 is served by 1 ready replicas",
            id="healthy",
        ),
        pytest.param(model(status=None), "Progressing", "Waiting for the operator", id="no-status-yet"),
        pytest.param(
            model(generation=3, status=ready("True", "Serving", "version 1 is served")),
            "Progressing",
            "reconcile generation 3 (status is for 2)",
            id="stale-observed-generation",
        ),
        pytest.param(
            model(generation=3, status={**ready("True", "Serving", generation=2), "observedGeneration": 3}),
            "Progressing",
            "Ready condition of generation 3 (it is for 2)",
            id="stale-ready-condition",
        ),
        pytest.param(
            model(status={"observedGeneration": 2, "conditions": []}),
            "Progressing",
            "Waiting for the Ready condition",
            id="no-ready-condition",
        ),
        pytest.param(
            model(status=ready("False", "RolloutInProgress", "rolling out version 2: 1 of 3 updated")),
            "Progressing",
            "RolloutInProgress: rolling out version 2",
            id="rollout",
        ),
        pytest.param(
            model(status=ready("False", "NotReady", "pod digits-1: NotReady (the model is loading)")),
            "Progressing",
            "NotReady: pod digits-1",
            id="pod-loading-the-model",
        ),
        pytest.param(
            model(status=ready("False", "OOMKilled", "container server exited with code 137")),
            "Degraded",
            "OOMKilled",
            id="container-died",
        ),
        pytest.param(
            model(status=ready("Unknown", "AwaitingAdmission", "no router has admitted it yet")),
            "Progressing",
            "AwaitingAdmission",
            id="ready-unknown",
        ),
        pytest.param(
            model(status=ready("False", "ProgressDeadlineExceeded", "made no progress within 600s")),
            "Degraded",
            "ProgressDeadlineExceeded: made no progress within 600s",
            id="deadline-exceeded",
        ),
        pytest.param(
            model(status=ready("False", "CrashLoopBackOff", "pod digits-1: CrashLoopBackOff")),
            "Degraded",
            "CrashLoopBackOff",
            id="crash-loop",
        ),
        pytest.param(
            model(status=ready("False", "Forbidden", "the operator may not apply Deployment")),
            "Degraded",
            "Forbidden: the operator may not apply Deployment",
            id="rbac",
        ),
        pytest.param(
            model(replicas=0, status=ready("False", "ScaledToZero", "replicas is 0: no pod serves")),
            "Suspended",
            "ScaledToZero",
            id="scaled-to-zero",
        ),
    ],
)
def test_health_of_status_fixtures(resource: dict[str, Any], expected: str, in_message: str) -> None:
    status, message = argo_health(resource)
    assert status == expected
    assert in_message in message


def _deployment(*, replicas: int, ready: int, generation: int = 1, deadline: bool = False) -> dict[str, Any]:
    progressing = (
        {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}
        if deadline
        else {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}
    )
    return {
        "metadata": {"name": "digits", "namespace": "ml", "generation": generation},
        "spec": {
            "replicas": replicas,
            "template": {"metadata": {"labels": {api.LABEL_VERSION: "2"}}},
        },
        "status": {
            "observedGeneration": generation,
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": ready,
            "availableReplicas": ready,
            "unavailableReplicas": replicas - ready,
            "conditions": [
                {"type": "Available", "status": "True" if ready else "False"},
                progressing,
            ],
        },
    }


def _pod(state: dict[str, Any]) -> dict[str, Any]:
    """A running, unready server pod, as the operator's cache keeps it."""
    return pod_projection(
        {
            "metadata": {"name": "digits-7d9f-x2x4k", "labels": {api.LABEL_VERSION: "2"}},
            "status": {
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": "False"}],
                "containerStatuses": [{"name": "server", "ready": False, "restartCount": 3, "state": state}],
            },
        }
    )


def _operator_status(spec: dict[str, Any] | None, observed: Observed, generation: int = 4) -> dict[str, Any]:
    """The status the operator's own (pure) status logic writes for these observations."""
    owner = Owner("digits", "ml", "u-1", generation=generation)
    status = compute_status(
        spec=parse_spec(spec) if spec is not None else None,
        owner=owner,
        observed=observed,
        capabilities=api.Capabilities(),
        previous=None,
        now=NOW,
    )
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": "digits", "namespace": "ml", "generation": generation},
        "spec": spec or {},
        "status": status,
    }


@needs_lua
@pytest.mark.parametrize(
    ("spec", "observed", "expected"),
    [
        pytest.param(
            {"modelVersion": "2", "replicas": 2},
            Observed(deployment=_deployment(replicas=2, ready=2)),
            "Healthy",
            id="rolled-out",
        ),
        pytest.param(
            {"modelVersion": "2", "replicas": 2},
            Observed(deployment=None),
            "Progressing",
            id="deployment-pending",
        ),
        pytest.param(
            {"modelVersion": "3", "replicas": 2},
            Observed(deployment=_deployment(replicas=2, ready=2)),
            "Progressing",
            id="new-version-not-rolled-yet",
        ),
        pytest.param(
            {"modelVersion": "2", "replicas": 2},
            Observed(deployment=_deployment(replicas=2, ready=0, deadline=True)),
            "Degraded",
            id="progress-deadline",
        ),
        pytest.param(
            {"modelVersion": "2", "replicas": 0},
            Observed(deployment=_deployment(replicas=0, ready=0)),
            "Suspended",
            id="scaled-to-zero",
        ),
        pytest.param(
            {"modelVersion": "2"},
            Observed(
                deployment=_deployment(replicas=1, ready=1),
                problem=Problem("ChildConflict", "a Service named digits already exists"),
            ),
            "Degraded",
            id="child-conflict",
        ),
        pytest.param(
            {"modelVersion": "2"},
            Observed(deployment=_deployment(replicas=1, ready=0), pods=[_pod(state={"running": {}})]),
            "Progressing",
            id="pod-loading-the-model",
        ),
        pytest.param(
            {"modelVersion": "2"},
            Observed(
                deployment=_deployment(replicas=1, ready=0),
                pods=[_pod(state={"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 5m0s"}})],
            ),
            "Degraded",
            id="crash-loop",
        ),
    ],
)
def test_health_of_statuses_the_operator_writes(
    spec: dict[str, Any] | None, observed: Observed, expected: str
) -> None:
    resource = _operator_status(spec, observed)
    ready_condition = next(c for c in resource["status"]["conditions"] if c["type"] == "Ready")
    status, message = argo_health(resource)
    assert status == expected, (resource["status"], message)
    assert ready_condition["reason"] in message


def test_argocd_cm_patch_carries_the_lua_file_verbatim() -> None:
    patch = yaml.safe_load(PATCH_FILE.read_text())
    assert patch["kind"] == "ConfigMap"
    assert patch["metadata"] == {
        "name": "argocd-cm",
        "namespace": "argocd",
        "labels": {"app.kubernetes.io/name": "argocd-cm", "app.kubernetes.io/part-of": "argocd"},
    }
    assert list(patch["data"]) == [HEALTH_KEY]
    assert patch["data"][HEALTH_KEY] == LUA_FILE.read_text()
    generator = ARGOCD / "render_health_snippet.py"
    done = subprocess.run(
        [sys.executable, str(generator), "--check"], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr


def test_the_lua_names_the_operators_transient_reasons_and_no_other() -> None:
    lua = LUA_FILE.read_text()
    table = re.search(r"local progressing_reasons = \{(.*?)\n\}", lua, re.DOTALL)
    assert table is not None
    progressing = set(re.findall(r"^\s*(\w+) = true,$", table.group(1), re.MULTILINE))
    assert progressing == {str(r) for r in TRANSIENT_REASONS}
    # The only other reason and condition type the check spells.
    assert f'ready.reason == "{Reason.SCALED_TO_ZERO}"' in lua
    assert f'find_condition(status.conditions, "{ConditionType.READY}")' in lua
    quoted = set(re.findall(r'"([A-Z][A-Za-z]+)"', lua))
    assert quoted <= {str(r) for r in Reason} | {str(t) for t in ConditionType} | HEALTH_STATUSES
