"""The canary strategy (spec.rollout.strategy: Canary) against a real API server and kwok nodes.

The CRD's schema and CEL rules for spec.rollout.canary, by server-side dry run; the operator
carrying a canary through its steps to promotion, a rollback, a pause and a restart.
"""

from __future__ import annotations

import http.server
import json
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from operator_support import Kube, StartOperator, mnist_model

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


# --- the canary on kwok nodes, judged by a stand-in Prometheus -----------------------------------
# kwok's pods serve nothing, so a small HTTP server answers the operator's PromQL as Prometheus
# would for a good canary, a guessing one, or not at all (the real Prometheus, real servers and
# real traffic: tests/integration/monitoring/test_canary_analysis.py and tests/realnode).


class StandInPrometheus:
    def __init__(self) -> None:
        self.mode = "good"  # good | guessing | down
        self.queries: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urllib.parse.urlparse(self.path)
                query = urllib.parse.parse_qs(url.query).get("query", [""])[0]
                outer.queries.append(query)
                if outer.mode == "down" or url.path != "/api/v1/query":
                    self.send_response(503)
                    self.end_headers()
                    return
                body = json.dumps({"status": "success", "data": outer.answer(query)}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def answer(self, query: str) -> dict[str, Any]:
        canary = 'canary-[a-z0-9]+-[a-z0-9]+"' in query  # (the namespace's name holds "canary" too)
        requests = 300.0 if canary else 2700.0

        def vector(*series: tuple[dict[str, str], float]) -> dict[str, Any]:
            return {
                "resultType": "vector",
                "result": [{"metric": m, "value": [time.time(), str(v)]} for m, v in series],
            }

        if query.startswith("histogram_quantile"):
            return vector(({}, 0.02))
        if 'status_class="5xx"' in query:
            return vector(({}, 0.0))
        if "by (digit)" in query:
            return vector(*(({"digit": str(d)}, requests / 10) for d in range(10)))
        if "prediction_confidence_bucket" in query:
            guessing = canary and self.mode == "guessing"
            buckets = (
                {"0.3": 0.9, "0.999": 0.95, "+Inf": 1.0} if guessing else {"0.3": 0, "0.999": 0.05, "+Inf": 1}
            )
            return vector(*(({"le": le}, share * requests) for le, share in buckets.items()))
        return vector(({}, requests))

    def __enter__(self) -> StandInPrometheus:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.thread.join(5)


STEPS = [{"weight": 10, "pauseSeconds": 10}, {"weight": 50, "pauseSeconds": 10}]


def canary_state(op_kube: Kube, name: str) -> dict[str, Any]:
    state: dict[str, Any] = (op_kube.model(name).get("status") or {}).get("canary") or {}
    return state


def wait_phase(op_kube: Kube, name: str, version: str, phase: str, timeout: float = 90) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        state = canary_state(op_kube, name)
        return state if state.get("version") == version and state.get("phase") == phase else None

    return op_kube.wait_for(reached, f"{name}: canary of {version} {phase}", timeout)


def template_version(op_kube: Kube, deployment: str) -> tuple[str, int]:
    body = op_kube.get("deployment", deployment)
    assert body is not None
    return body["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/version"], body["spec"][
        "replicas"
    ]


def test_a_canary_is_promoted_rolled_back_paused_and_resumed_after_a_restart(
    op_kube: Kube, op_start: StartOperator
) -> None:
    with StandInPrometheus() as prometheus:
        operator = op_start(op_kube.namespace, prometheus_url=prometheus.url)
        model = canary("digits", canary={"steps": STEPS})
        model["spec"]["replicas"] = 4
        op_kube.apply(model)
        op_kube.wait_ready("digits", version="1")
        assert "canary" not in (op_kube.model("digits").get("status") or {})

        # A good version: through both steps, then promoted.
        op_kube.merge_patch("mnistmodel", "digits", {"spec": {"modelVersion": "2"}})
        op_kube.wait_exists("deployment", "digits-canary")
        state = wait_phase(op_kube, "digits", "2", "Progressing")
        assert (state["step"], state["weight"], state["trafficWeight"]) == (1, 10, 20)
        assert template_version(op_kube, "digits") == ("1", 4)  # the stable one is untouched
        assert template_version(op_kube, "digits-canary") == ("2", 1)
        assert op_kube.conditions("digits")["Ready"]["reason"] == "CanaryProgressing"
        op_kube.wait_for(lambda: canary_state(op_kube, "digits").get("step") == 2, "step 2", timeout=60)
        op_kube.wait_for(lambda: template_version(op_kube, "digits-canary") == ("2", 4), "the canary at 50 %")
        wait_phase(op_kube, "digits", "2", "Promoted", timeout=60)
        op_kube.wait_ready("digits", version="2", timeout=90)
        op_kube.wait_for(lambda: template_version(op_kube, "digits-canary")[1] == 0, "the canary scaled to 0")
        reasons = [reason for _, reason, _ in op_kube.events("digits")]
        assert {"CanaryStarted", "CanaryStepPassed", "CanaryPromoted"} <= set(reasons)
        assert any('pod=~"digits-canary-[a-z0-9]+-[a-z0-9]+"' in q for q in prometheus.queries)

        # A version that guesses: rolled back at the first step, the stable one never changed.
        prometheus.mode = "guessing"
        op_kube.merge_patch("mnistmodel", "digits", {"spec": {"modelVersion": "3"}})
        state = wait_phase(op_kube, "digits", "3", "RolledBack", timeout=60)
        assert state["step"] == 1 and "confidenceDivergence" in state["message"]
        checks = {c["name"]: c for c in state["checks"]}
        assert checks["confidenceDivergence"]["result"] == "Fail"
        assert checks["errorRate"]["result"] == "Pass" and checks["digitDivergence"]["result"] == "Pass"
        ready = op_kube.wait_condition("digits", "Ready", "False", "CanaryRolledBack")
        assert "version 2 serves" in ready["message"]
        assert template_version(op_kube, "digits") == ("2", 4)
        op_kube.wait_for(lambda: template_version(op_kube, "digits-canary")[1] == 0, "the canary scaled to 0")
        assert op_kube.model("digits")["status"]["modelVersion"] == "2"

        # Prometheus down: paused with the reason; an operator restart resumes the same step.
        prometheus.mode = "down"
        op_kube.merge_patch("mnistmodel", "digits", {"spec": {"modelVersion": "4"}})
        paused = wait_phase(op_kube, "digits", "4", "Paused", timeout=60)
        assert "answered HTTP 503" in paused["message"]
        op_kube.wait_condition("digits", "Ready", "False", "CanaryPaused")
        operator.stop()
        op_start(op_kube.namespace, prometheus_url=prometheus.url)
        time.sleep(3)
        resumed = canary_state(op_kube, "digits")
        assert (resumed["step"], resumed["stepStartedAt"]) == (paused["step"], paused["stepStartedAt"])
        prometheus.mode = "good"
        wait_phase(op_kube, "digits", "4", "Promoted", timeout=90)
        op_kube.wait_ready("digits", version="4", timeout=90)


@pytest.mark.usefixtures("openshift_apis")
def test_with_a_route_the_canary_gets_the_routes_weight_and_its_own_service(
    op_kube: Kube, op_start: StartOperator
) -> None:
    with StandInPrometheus() as prometheus:
        op_start(op_kube.namespace, prometheus_url=prometheus.url)
        model = canary("routed", canary={"steps": STEPS})
        model["spec"]["replicas"] = 2
        model["spec"]["exposure"] = {"enabled": True, "host": "routed.apps.example.com"}
        op_kube.apply(model)
        op_kube.wait_ready("routed", version="1")
        op_kube.merge_patch("mnistmodel", "routed", {"spec": {"modelVersion": "2"}})

        def weighted() -> dict[str, Any] | None:
            route = op_kube.get("route", "routed") or {}
            backends = (route.get("spec") or {}).get("alternateBackends") or []
            return route if backends and backends[0]["weight"] == 10 else None

        route = op_kube.wait_for(weighted, "the Route sending 10 % to the canary", timeout=60)
        assert route["spec"]["to"] == {"kind": "Service", "name": "routed", "weight": 90}
        assert route["spec"]["alternateBackends"] == [
            {"kind": "Service", "name": "routed-canary", "weight": 10}
        ]
        state = canary_state(op_kube, "routed")
        assert (state["trafficSplit"], state["trafficWeight"]) == ("Route", 10)

        def endpoints(service: str) -> set[str]:
            done = op_kube.kubectl(
                "get", "endpointslices", "-l", f"kubernetes.io/service-name={service}", "-o", "json"
            )
            return {
                e["targetRef"]["name"]
                for s in json.loads(done.stdout)["items"]
                for e in s.get("endpoints") or []
                if e.get("targetRef")
            }

        canary_pods = op_kube.wait_for(lambda: endpoints("routed-canary"), "the canary Service's endpoints")
        assert all(p.startswith("routed-canary-") for p in canary_pods)
        assert not any(
            p.startswith("routed-canary-") for p in endpoints("routed")
        )  # the stable Service: stable only

        wait_phase(op_kube, "routed", "2", "Promoted", timeout=90)
        op_kube.wait_ready("routed", version="2", timeout=90)

        def plain() -> bool:
            spec = (op_kube.get("route", "routed") or {}).get("spec") or {}
            return "alternateBackends" not in spec and spec.get("to", {}).get("weight") == 100

        op_kube.wait_for(plain, "the Route all to the stable Service again", timeout=30)
        op_kube.wait_for(
            lambda: (op_kube.get("deployment", "routed-canary") or {}).get("spec", {}).get("replicas") == 0,
            "the canary scaled to 0",
        )
