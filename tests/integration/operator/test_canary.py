"""The canary strategy (spec.rollout.strategy: Canary) against a real API server and kwok nodes.

The CRD's schema and CEL rules for spec.rollout.canary, by server-side dry run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from operator_support import Kube, mnist_model

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def canary(name: str, **rollout: Any) -> dict[str, Any]:
    return mnist_model(name, rollout={"strategy": "Canary", **rollout})


BAD_CANARIES = [
    (
        mnist_model("nostrategy", rollout={"canary": {"steps": [{"weight": 10}]}}),
        "spec.rollout.canary is set, but spec.rollout.strategy is not Canary",
    ),
    (mnist_model("strategy", rollout={"strategy": "BlueGreen"}), "spec.rollout.strategy: Unsupported value"),
    (
        canary("decreasing", canary={"steps": [{"weight": 50}, {"weight": 20}]}),
        "spec.rollout.canary.steps must have increasing weights",
    ),
    (
        canary("repeated", canary={"steps": [{"weight": 20}, {"weight": 20}]}),
        "spec.rollout.canary.steps must have increasing weights",
    ),
    (canary("hundred", canary={"steps": [{"weight": 100}]}), "spec.rollout.canary.steps[0].weight"),
    (canary("noweight", canary={"steps": [{"pauseSeconds": 30}]}), "spec.rollout.canary.steps[0].weight"),
    (canary("nosteps", canary={"steps": []}), "spec.rollout.canary.steps"),
    (
        canary("shortpause", canary={"steps": [{"weight": 10, "pauseSeconds": 1}]}),
        "spec.rollout.canary.steps[0].pauseSeconds",
    ),
    (
        canary("errorrate", canary={"analysis": {"maxErrorRate": 5}}),
        "spec.rollout.canary.analysis.maxErrorRate",
    ),
    (
        canary("latency", canary={"analysis": {"maxP99LatencySeconds": 0}}),
        "spec.rollout.canary.analysis.maxP99LatencySeconds",
    ),
    (
        canary("divergence", canary={"analysis": {"maxDigitDivergence": 2}}),
        "spec.rollout.canary.analysis.maxDigitDivergence",
    ),
    (canary("unknown", canary={"stepz": []}), 'unknown field "spec.rollout.canary.stepz"'),
]


@pytest.mark.parametrize(
    ("body", "message"), BAD_CANARIES, ids=[b["metadata"]["name"] for b, _ in BAD_CANARIES]
)
def test_the_api_server_rejects_a_bad_canary_naming_the_field(
    op_kube: Kube, body: dict[str, Any], message: str
) -> None:
    done = op_kube.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(body), check=False)
    assert done.returncode != 0, f"accepted: {body}"
    assert message in done.stderr


def test_a_canary_gets_its_defaults_and_a_model_without_one_gets_none(op_kube: Kube) -> None:
    def created(body: dict[str, Any]) -> dict[str, Any]:
        done = op_kube.kubectl("create", "--dry-run=server", "-o", "json", "-f", "-", input=json.dumps(body))
        spec: dict[str, Any] = json.loads(done.stdout)["spec"]
        return spec

    # Without spec.rollout.canary the operator uses the same defaults (a schema cannot default an
    # object only when a sibling has a given value).
    assert "canary" not in created(canary("bare"))["rollout"]
    rollout = created(canary("defaults", canary={}))["rollout"]
    assert rollout["canary"] == {
        "steps": [{"weight": 10, "pauseSeconds": 60}, {"weight": 50, "pauseSeconds": 60}],
        "analysis": {
            "minRequests": 200,
            "maxErrorRate": 0.01,
            "maxP99LatencySeconds": 0.5,
            "maxDigitDivergence": 0.2,
            "maxConfidenceDivergence": 0.2,
        },
    }
    steps = created(canary("steps", canary={"steps": [{"weight": 5}, {"weight": 30, "pauseSeconds": 20}]}))
    assert steps["rollout"]["canary"]["steps"] == [
        {"weight": 5, "pauseSeconds": 60},
        {"weight": 30, "pauseSeconds": 20},
    ]
    plain = created(mnist_model("plain"))
    assert plain["rollout"] == {"maxSurge": 1, "maxUnavailable": 0, "progressDeadlineSeconds": 600}
