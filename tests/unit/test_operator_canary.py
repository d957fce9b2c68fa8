"""The canary strategy: its state machine (canary.py), and the reconcile carrying it out against
the fake API client of test_operator_controller.py with a fake Prometheus."""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).parent))
from test_operator_controller import NOW, FakeClient, FakeIndexes, model

from mnist_operator import analysis, api, canary, controller
from mnist_operator.analysis import Result, Side
from mnist_operator.cache import Cache, owner_key
from mnist_operator.controller import Reconciler
from mnist_operator.kube import Discovery
from mnist_operator.metrics import Metrics
from mnist_operator.prometheus import PrometheusError
from mnist_operator.settings import OperatorSettings
from mnist_operator.spec import Analysis, Canary, CanaryStep

STEPS = Canary(steps=(CanaryStep(10, 60), CanaryStep(50, 30)))
DIGITS = {str(d): 100.0 for d in range(10)}
SURE = {"0.999": 10.0, "+Inf": 1000.0}
UNSURE = {"0.2": 600.0, "0.3": 1000.0, "0.999": 1000.0, "+Inf": 1000.0}


# --- the state machine ----------------------------------------------------------------------


def test_replica_ratio_approximates_the_weight_with_at_least_one_canary_pod() -> None:
    assert canary.canary_replicas(10, 9) == 1 and canary.traffic_weight(1, 9) == 10
    assert canary.canary_replicas(50, 4) == 4 and canary.traffic_weight(4, 4) == 50
    assert canary.canary_replicas(10, 2) == 1 and canary.traffic_weight(1, 2) == 33  # approximate
    assert canary.canary_replicas(75, 2) == 6


def test_a_step_starts_its_window_only_once_the_canary_is_ready() -> None:
    state = canary.start(STEPS, "2", "1")
    waiting = canary.tick(state, STEPS, ready=False, now=1000)
    assert waiting.due_in is None and waiting.state.step_started_at is None
    started = canary.tick(state, STEPS, ready=True, now=1000)
    assert started.state.step_started_at == 1000 and started.due_in == 60
    later = canary.tick(started.state, STEPS, ready=True, now=1061.4)
    assert later.due_in == 0 and later.window == 61


def verdict(result: Result) -> analysis.Verdict:
    check = analysis.Check(analysis.CheckName.CONFIDENCE_DIVERGENCE, result, 0.2, 0.9)
    return analysis.Verdict(result, (check,))


def test_verdicts_move_the_canary_on_back_or_hold_it() -> None:
    state = canary.tick(canary.start(STEPS, "2", "1"), STEPS, ready=True, now=0).state
    passed = canary.after_verdict(state, STEPS, verdict(Result.PASS), now=61)
    assert (passed.state.phase, passed.state.step, passed.state.weight) == (canary.Phase.PROGRESSING, 2, 50)
    assert passed.state.step_started_at is None  # the next window starts when the bigger canary is ready
    assert passed.events[0][1] == "CanaryStepPassed"
    last = canary.after_verdict(passed.state, STEPS, verdict(Result.PASS), now=100)
    assert last.state.phase is canary.Phase.PROMOTED and last.events[0][1] == "CanaryPromoted"
    failed = canary.after_verdict(state, STEPS, verdict(Result.FAIL), now=61)
    assert failed.state.phase is canary.Phase.ROLLED_BACK
    assert "confidenceDivergence 0.9 (at most 0.2)" in failed.state.message
    assert failed.events[0][:2] == ("Warning", "CanaryRolledBack")
    held = canary.after_verdict(state, STEPS, verdict(Result.INCONCLUSIVE), now=61)
    assert held.state.phase is canary.Phase.PAUSED and held.state.step == 1
    assert held.state.step_started_at == state.step_started_at  # the window keeps growing


def test_the_state_survives_a_round_trip_through_status() -> None:
    state = canary.after_verdict(
        canary.tick(canary.start(STEPS, "2", "1"), STEPS, ready=True, now=1_700_000_000).state,
        STEPS,
        verdict(Result.INCONCLUSIVE),
        now=1_700_000_061,
    ).state
    assert canary.State.from_status(state.as_status()) == state
    assert canary.State.from_status({"phase": "Nonsense", "version": "2"}) is None


def test_a_hand_made_promote_or_abort_counts_only_for_the_version_it_names() -> None:
    assert canary.manual_action({canary.PROMOTE_ANNOTATION: "2"}, "2") is canary.Phase.PROMOTED
    assert canary.manual_action({canary.PROMOTE_ANNOTATION: "2"}, "3") is None  # stale: nothing
    both = {canary.PROMOTE_ANNOTATION: "3", canary.ABORT_ANNOTATION: "3"}
    assert canary.manual_action(both, "3") is canary.Phase.ABORTED


# --- the reconcile ----------------------------------------------------------------------------


class OwnerIndexes(FakeIndexes):
    """kopf indexes as the operator's handlers key them: children under their owner's key."""

    def __init__(self, client: FakeClient, cache: Cache) -> None:
        super().__init__(client, cache)
        self.pods: list[dict[str, Any]] = []

    def sync(self) -> None:
        for index in self.indexes.values():
            index.clear()
        for (kind, namespace, name), obj in self.client.objects.items():
            key = (namespace, name) if kind == api.KIND else owner_key(obj)
            if key is not None:
                self.indexes[kind].setdefault(key, []).append(copy.deepcopy(obj))
        for pod in self.pods:
            self.indexes[api.POD.kind].setdefault(("ml", "digits"), []).append(pod)


class World:
    def __init__(
        self, monkeypatch: pytest.MonkeyPatch, *, routes: bool = False, gateway: bool = False
    ) -> None:
        self.client = FakeClient(routes=routes, http_routes=gateway)
        self.exposed = routes or gateway
        self.gateway = gateway
        self.cache = Cache()
        self.indexes = OwnerIndexes(self.client, self.cache)
        self.clock = 1_700_000_000.0
        self.scheduled: list[float] = []
        self.answers: list[tuple[Side, Side] | PrometheusError] = []
        self.registry = CollectorRegistry()
        self.reconciler = self.new_reconciler()

        async def measure(*_: Any, window: int, at: float) -> tuple[Side, Side]:
            answer = self.answers.pop(0)
            if isinstance(answer, PrometheusError):
                raise answer
            return answer

        monkeypatch.setattr(controller, "measure", measure)

    def new_reconciler(self) -> Reconciler:
        self.registry = CollectorRegistry()  # a new process's
        reconciler = Reconciler(
            OperatorSettings(prometheus_url="http://prometheus.test:9090"),
            self.client,  # type: ignore[arg-type]
            Discovery(self.client, ttl=0),  # type: ignore[arg-type]
            self.cache,
            Metrics.create(self.registry),
            now=lambda: NOW,
            clock=lambda: self.clock,
            schedule=lambda key, delay: self.scheduled.append(delay),
        )
        return reconciler

    def apply_model(self, version: str, **annotations: str) -> None:
        body = self.client.objects.get((api.KIND, "ml", "digits")) or model({})
        body = copy.deepcopy(body)
        body["spec"] = {
            "modelVersion": version,
            "replicas": 4,
            "rollout": {
                "strategy": "Canary",
                "canary": {"steps": [{"weight": 10, "pauseSeconds": 60}, {"weight": 50, "pauseSeconds": 30}]},
            },
        }
        if self.exposed:
            body["spec"]["exposure"] = {"enabled": True, "host": "digits.apps.example.com"}
        if self.gateway:
            body["spec"]["exposure"]["gateway"] = {"name": "public"}
        body["metadata"]["annotations"] = annotations
        body["metadata"]["resourceVersion"] = str(next(self.client._rv))
        self.client.objects[(api.KIND, "ml", "digits")] = body
        self.indexes.sync()

    async def end_step(self, answer: tuple[Side, Side] | PrometheusError | None = None) -> None:
        """The step's pause (60 s) passes and the canary is judged on Prometheus's `answer` (None:
        no answer queued, for a reconciler that has no Prometheus to ask)."""
        self.clock += 61
        if answer is not None:
            self.answers.append(answer)
        await self.reconcile()

    async def reconcile(self) -> None:
        self.indexes.sync()
        await self.reconciler.reconcile(self.client.objects[(api.KIND, "ml", "digits")])
        self.indexes.sync()

    def deployment(self, name: str = "digits") -> dict[str, Any] | None:
        return self.client.objects.get(("Deployment", "ml", name))

    def canary_pods_wanted(self) -> int:
        dep = self.deployment("digits-canary")
        return -1 if dep is None else int(dep["spec"]["replicas"])

    def roll_out(self, name: str) -> None:
        """The Deployment controller and the kubelet: every replica of the template ready."""
        dep = self.client.objects[("Deployment", "ml", name)]
        replicas = dep["spec"].get("replicas", 1)
        dep["metadata"]["generation"] = 1
        dep["status"] = {
            "observedGeneration": 1,
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": replicas,
            "availableReplicas": replicas,
            "conditions": [
                {"type": "Available", "status": "True"},
                {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"},
            ],
        }
        labels = dep["spec"]["template"]["metadata"]["labels"]
        track = labels.get(api.TRACK_LABEL) == api.CANARY_TRACK
        self.indexes.pods = [p for p in self.indexes.pods if p["canary"] != track]
        self.indexes.pods += [
            {
                "name": f"{name}-abc-{i}",
                "uid": f"{name}-{i}",
                "resourceVersion": "1",
                "deleting": False,
                "version": labels[api.LABEL_VERSION],
                "canary": track,
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [],
                "initContainerStatuses": [],
            }
            for i in range(replicas)
        ]
        self.indexes.sync()

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = self.client.objects[(api.KIND, "ml", "digits")]["status"]
        return status

    def ready(self) -> dict[str, Any]:
        return next(c for c in self.status()["conditions"] if c["type"] == "Ready")


def sides(confidence: dict[str, float] = SURE, errors: float = 0) -> tuple[Side, Side]:
    return (
        Side(300, errors, 0.02, DIGITS, {k: v * 0.3 for k, v in confidence.items()}),
        Side(2700, 0, 0.02, DIGITS, {k: v * 2.7 for k, v in SURE.items()}),
    )


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> World:
    return World(monkeypatch)


async def started_canary(world: World) -> None:
    world.apply_model("1")
    await world.reconcile()
    world.roll_out("digits")
    await world.reconcile()
    assert world.ready()["status"] == "True"
    assert "canary" not in world.status()  # a first version is no canary
    world.apply_model("2")
    await world.reconcile()


@pytest.mark.asyncio
async def test_a_new_version_starts_a_canary_beside_the_untouched_stable_deployment(world: World) -> None:
    await started_canary(world)
    stable, canary_dep = world.deployment(), world.deployment("digits-canary")
    assert stable is not None and canary_dep is not None
    assert stable["spec"]["template"]["metadata"]["labels"][api.LABEL_VERSION] == "1"
    assert canary_dep["spec"]["replicas"] == 1  # 10 % of 4 stable pods: one (20 % by pods)
    assert canary_dep["spec"]["selector"]["matchLabels"][api.TRACK_LABEL] == "canary"
    labels = canary_dep["spec"]["template"]["metadata"]["labels"]
    assert labels[api.LABEL_VERSION] == "2" and labels[api.LABEL_INSTANCE] == "digits"  # behind the Service
    status = world.status()
    assert status["canary"]["phase"] == "Progressing" and status["canary"]["step"] == 1
    assert (status["canary"]["weight"], status["canary"]["trafficWeight"]) == (10, 20)
    assert status["modelVersion"] == "1"
    assert world.ready()["reason"] == "CanaryProgressing"
    assert ("Normal", "CanaryStarted") in world.client.events
    assert world.metric("mnist_operator_canaries", phase="Progressing") == 1


@pytest.mark.asyncio
async def test_a_good_canary_is_promoted_through_every_step(world: World) -> None:
    await started_canary(world)
    world.roll_out("digits-canary")
    await world.reconcile()
    assert world.status()["canary"]["stepStartedAt"] and world.scheduled[-1] == pytest.approx(60.5)
    await world.end_step(sides())
    step2 = world.status()["canary"]
    assert (step2["step"], step2["weight"], step2["phase"]) == (2, 50, "Progressing")
    assert {c["name"]: c["result"] for c in step2["checks"]}["confidenceDivergence"] == "Pass"
    canary_dep = world.deployment("digits-canary")
    assert canary_dep is not None and canary_dep["spec"]["replicas"] == 4
    world.roll_out("digits-canary")
    await world.reconcile()
    world.clock += 31
    world.answers.append(sides())
    await world.reconcile()
    assert world.status()["canary"]["phase"] == "Promoted"
    stable = world.deployment()
    assert stable is not None and stable["spec"]["template"]["metadata"]["labels"][api.LABEL_VERSION] == "2"
    assert world.canary_pods_wanted() == 4  # it serves until the stable one rolled out
    world.roll_out("digits")
    await world.reconcile()
    assert world.canary_pods_wanted() == 0
    world.indexes.pods = [p for p in world.indexes.pods if not p["canary"]]
    await world.reconcile()
    assert world.status()["modelVersion"] == "2" and world.ready()["status"] == "True"
    assert ("Normal", "CanaryPromoted") in world.client.events


@pytest.mark.asyncio
async def test_a_guessing_canary_is_rolled_back_and_the_stable_version_never_changed(world: World) -> None:
    await started_canary(world)
    world.roll_out("digits-canary")
    await world.reconcile()
    stable_before = copy.deepcopy(world.deployment())
    await world.end_step(sides(UNSURE))
    status = world.status()
    assert status["canary"]["phase"] == "RolledBack"
    assert "confidenceDivergence" in status["canary"]["message"]
    assert world.canary_pods_wanted() == 0
    assert world.deployment() == stable_before
    assert world.ready()["reason"] == "CanaryRolledBack" and "version 1 serves" in world.ready()["message"]
    assert ("Warning", "CanaryRolledBack") in world.client.events
    writes = len(world.client.writes)
    await world.reconcile()  # it stays rolled back: nothing more is written
    assert len(world.client.writes) == writes
    assert world.metric("mnist_operator_canary_outcomes_total", result="RolledBack") == 1  # once
    assert world.metric("mnist_operator_canaries", phase="Progressing") == 0


@pytest.mark.asyncio
async def test_errors_roll_back_on_the_health_check(world: World) -> None:
    await started_canary(world)
    world.roll_out("digits-canary")
    await world.reconcile()
    await world.end_step(sides(errors=30))
    assert world.status()["canary"]["phase"] == "RolledBack"
    assert "errorRate 0.1 (at most 0.01)" in world.status()["canary"]["message"]


@pytest.mark.asyncio
async def test_no_verdict_pauses_with_the_reason_and_retries(world: World) -> None:
    await started_canary(world)
    world.roll_out("digits-canary")
    await world.reconcile()
    await world.end_step(PrometheusError("Prometheus at http://prometheus.test:9090 could not be reached"))
    status = world.status()["canary"]
    assert status["phase"] == "Paused" and "could not be reached" in status["message"]
    assert world.ready()["reason"] == "CanaryPaused" and world.scheduled[-1] == canary.RETRY_SECONDS
    assert ("Warning", "CanaryPaused") in world.client.events
    world.clock += 10
    world.answers.append((Side(50, 0, 0.02, DIGITS, SURE), Side(450, 0, 0.02, DIGITS, SURE)))
    await world.reconcile()
    assert "50 canary and 450 stable requests, 200 needed" in world.status()["canary"]["message"]
    world.clock += 10
    world.answers.append(sides())
    await world.reconcile()
    assert world.status()["canary"]["step"] == 2


@pytest.mark.asyncio
async def test_a_restarted_operator_resumes_the_same_step_and_window(world: World) -> None:
    await started_canary(world)
    world.roll_out("digits-canary")
    await world.reconcile()
    started_at = world.status()["canary"]["stepStartedAt"]
    world.reconciler = world.new_reconciler()  # a new process: only the status remembers
    world.cache.drop("ml", "digits")
    world.clock += 30
    await world.reconcile()
    assert world.status()["canary"]["stepStartedAt"] == started_at
    assert world.scheduled[-1] == pytest.approx(30.5)
    world.clock += 31
    windows: list[int] = []

    async def measure(*_: Any, window: int, at: float) -> tuple[Side, Side]:
        windows.append(window)
        return sides()

    controller.measure = measure  # type: ignore[assignment]  (restored by monkeypatch)
    await world.reconcile()
    assert windows == [61]  # the step's whole window, counted once
    assert world.status()["canary"]["step"] == 2


@pytest.mark.asyncio
async def test_abort_by_hand_or_by_reverting_the_version(world: World) -> None:
    await started_canary(world)
    world.apply_model("2", **{canary.ABORT_ANNOTATION: "2"})
    await world.reconcile()
    assert world.status()["canary"]["phase"] == "Aborted" and world.canary_pods_wanted() == 0
    assert world.ready()["reason"] == "CanaryAborted"
    world.apply_model("3")  # a new version: a new canary, the old abort does not apply
    await world.reconcile()
    assert world.status()["canary"]["phase"] == "Progressing" and world.status()["canary"]["version"] == "3"
    world.apply_model("1")  # reverted in git
    await world.reconcile()
    assert world.status()["canary"]["phase"] == "Aborted" and world.canary_pods_wanted() == 0
    assert world.ready()["status"] == "True"


@pytest.mark.asyncio
async def test_promote_by_hand_skips_the_remaining_steps(world: World) -> None:
    await started_canary(world)
    world.apply_model("2", **{canary.PROMOTE_ANNOTATION: "2"})
    await world.reconcile()
    assert world.status()["canary"]["phase"] == "Promoted"
    stable = world.deployment()
    assert stable is not None and stable["spec"]["template"]["metadata"]["labels"][api.LABEL_VERSION] == "2"


@pytest.mark.asyncio
async def test_without_prometheus_a_canary_pauses_and_never_promotes(world: World) -> None:
    world.reconciler.prometheus = None
    await started_canary(world)
    world.roll_out("digits-canary")
    await world.reconcile()
    await world.end_step()
    assert world.status()["canary"]["phase"] == "Paused"
    assert "MNIST_OPERATOR_PROMETHEUS_URL" in world.status()["canary"]["message"]


@pytest.mark.asyncio
async def test_switching_back_to_rolling_update_removes_the_canary(world: World) -> None:
    await started_canary(world)
    body = world.client.objects[(api.KIND, "ml", "digits")]
    body["spec"]["rollout"] = {}
    await world.reconcile()
    assert world.canary_pods_wanted() == 0
    assert "canary" not in world.status()
    stable = world.deployment()
    assert stable is not None and stable["spec"]["template"]["metadata"]["labels"][api.LABEL_VERSION] == "2"


def test_every_field_of_the_status_is_listed_for_the_merge_patch() -> None:
    state = canary.after_verdict(
        canary.tick(canary.start(STEPS, "2", "1"), STEPS, ready=True, now=1_700_000_000).state,
        STEPS,
        verdict(Result.INCONCLUSIVE),
        now=1_700_000_061,
    ).state
    assert set(state.as_status()) == set(canary.STATUS_FIELDS)


@pytest.mark.asyncio
async def test_a_new_canary_keeps_nothing_of_the_last_one_in_a_merge_patched_status(world: World) -> None:
    await started_canary(world)
    # The canary of version 2 had started its window when version 3 replaces it.
    world.client.objects[(api.KIND, "ml", "digits")]["status"]["canary"]["stepStartedAt"] = (
        "2023-01-01T00:00:00Z"
    )
    world.apply_model("3")
    patches: list[dict[str, Any]] = []
    patch_status = world.client.patch_status

    async def recording(namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any] | None:
        patches.append(copy.deepcopy(dict(status)))
        return await patch_status(namespace, name, status)

    world.client.patch_status = recording  # type: ignore[method-assign]
    await world.reconcile()
    assert patches and patches[-1]["canary"]["stepStartedAt"] is None  # sent as null: removed


@pytest.mark.asyncio
async def test_with_a_route_the_split_is_the_routes_exact_weight(monkeypatch: pytest.MonkeyPatch) -> None:
    world = World(monkeypatch, routes=True)
    await started_canary(world)
    canary_dep = world.deployment("digits-canary")
    assert canary_dep is not None
    # Not behind the model's Service: the canary's own instance label, and its own Service.
    assert canary_dep["spec"]["template"]["metadata"]["labels"][api.LABEL_INSTANCE] == "digits-canary"
    service = world.client.objects[("Service", "ml", "digits-canary")]
    assert service["spec"]["selector"][api.LABEL_INSTANCE] == "digits-canary"
    route = world.client.objects[("Route", "ml", "digits")]
    assert route["spec"]["alternateBackends"][0]["weight"] == 0  # nothing until its pods are ready
    world.roll_out("digits-canary")
    await world.reconcile()
    route = world.client.objects[("Route", "ml", "digits")]
    assert route["spec"]["to"] == {"kind": "Service", "name": "digits", "weight": 90}
    assert route["spec"]["alternateBackends"] == [{"kind": "Service", "name": "digits-canary", "weight": 10}]
    status = world.status()["canary"]
    assert (status["trafficSplit"], status["trafficWeight"]) == ("Route", 10)
    await world.end_step(sides(UNSURE))
    assert world.status()["canary"]["phase"] == "RolledBack"
    route = world.client.objects[("Route", "ml", "digits")]
    assert "alternateBackends" not in route["spec"] and route["spec"]["to"]["weight"] == 100


def _backends(world: World) -> list[dict[str, Any]]:
    [rule] = world.client.objects[("HTTPRoute", "ml", "digits")]["spec"]["rules"]
    refs: list[dict[str, Any]] = rule["backendRefs"]
    return [{k: ref[k] for k in ("name", "weight") if k in ref} for ref in refs]


@pytest.mark.asyncio
async def test_with_an_http_route_the_split_is_its_backends_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    world = World(monkeypatch, routes=True, gateway=True)  # the Gateway wins over the Route
    await started_canary(world)
    assert ("Route", "ml", "digits") not in world.client.objects
    canary_dep = world.deployment("digits-canary")
    assert canary_dep is not None
    assert canary_dep["spec"]["template"]["metadata"]["labels"][api.LABEL_INSTANCE] == "digits-canary"
    service = world.client.objects[("Service", "ml", "digits-canary")]
    assert service["spec"]["selector"][api.LABEL_INSTANCE] == "digits-canary"
    assert _backends(world) == [{"name": "digits", "weight": 100}, {"name": "digits-canary", "weight": 0}]
    world.roll_out("digits-canary")
    await world.reconcile()
    assert _backends(world) == [{"name": "digits", "weight": 90}, {"name": "digits-canary", "weight": 10}]
    status = world.status()["canary"]
    assert (status["trafficSplit"], status["trafficWeight"]) == ("HTTPRoute", 10)
    await world.end_step(sides(UNSURE))
    assert world.status()["canary"]["phase"] == "RolledBack"
    assert _backends(world) == [{"name": "digits"}]


def test_default_analysis_is_used_when_the_spec_gives_none() -> None:
    assert Canary().analysis == Analysis()
