"""The reconcile against a fake API client: what it writes, and above all what it does not."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from mnist_operator import api
from mnist_operator.cache import Cache
from mnist_operator.controller import Reconciler
from mnist_operator.kube import ApiError, Discovery
from mnist_operator.metrics import Metrics
from mnist_operator.policy import HostClaim
from mnist_operator.settings import OperatorSettings
from mnist_operator.workqueue import Requeue, StopRetrying

pytestmark = pytest.mark.asyncio
NOW = "2026-01-01T00:00:00Z"


class FakeClient:
    """Just enough of KubeClient: records writes, answers like an API server would."""

    def __init__(self, *, routes: bool = False, monitors: bool = False, http_routes: bool = False) -> None:
        self.served = {
            "route.openshift.io": routes,
            "monitoring.coreos.com": monitors,
            "gateway.networking.k8s.io": http_routes,
        }
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.writes: list[tuple[str, str, str]] = []
        self.events: list[tuple[str, str]] = []
        self.fail_apply: dict[str, ApiError] = {}
        self._rv = itertools.count(100)

    async def served_resources(self, group: str, version: str) -> set[str] | None:
        plural = {
            "route.openshift.io": "routes",
            "monitoring.coreos.com": "servicemonitors",
            "gateway.networking.k8s.io": "httproutes",
        }[group]
        return {plural} if self.served[group] else None

    async def get(self, kind: api.ResourceKind, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.objects.get((kind.kind, namespace, name)))

    async def apply(self, obj: Mapping[str, Any], *, manager: str = api.FIELD_MANAGER) -> dict[str, Any]:
        if obj["kind"] in self.fail_apply:
            raise self.fail_apply[obj["kind"]]
        self.writes.append(("apply", obj["kind"], manager))
        stored = copy.deepcopy(dict(obj))
        stored["metadata"].update(resourceVersion=str(next(self._rv)), uid=f"uid-{obj['kind']}")
        key = (obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
        self.objects[key] = stored
        return copy.deepcopy(stored)

    async def delete(self, kind: api.ResourceKind, namespace: str, name: str, uid: str | None) -> None:
        self.writes.append(("delete", kind.kind, ""))
        self.objects.pop((kind.kind, namespace, name), None)

    async def patch_status(
        self, namespace: str, name: str, status: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        self.writes.append(("patch-status", api.KIND, ""))
        body = self.objects.get((api.KIND, namespace, name))
        if body is None:
            return None  # 404, as KubeClient.patch_status answers it
        body["status"] = {k: v for k, v in status.items() if v is not None}
        body["metadata"]["resourceVersion"] = str(next(self._rv))
        return copy.deepcopy(body)

    async def post_event(self, owner: Mapping[str, Any], *, type: str, reason: str, message: str) -> None:
        self.events.append((type, reason))


class FakeIndexes:
    """kopf indexes over the fake client's objects (what the watch streams would show)."""

    def __init__(self, client: FakeClient, cache: Cache) -> None:
        self.client = client
        self.indexes: dict[str, dict[tuple[str, str], list[dict[str, Any]]]] = {}
        for kind in (api.KIND, *(k.kind for k in api.CHILD_KINDS), api.POD.kind):
            self.indexes[kind] = {}
            cache.attach(kind, self.indexes[kind])

    def sync(self) -> None:
        """The watch streams catch up with every write."""
        for index in self.indexes.values():
            index.clear()
        for (kind, namespace, name), obj in self.client.objects.items():
            self.indexes[kind][(namespace, name)] = [copy.deepcopy(obj)]


def model(spec: dict[str, Any], *, generation: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {
            "name": "digits",
            "namespace": "ml",
            "uid": "uid-model",
            "generation": generation,
            "resourceVersion": "1",
        },
        "spec": spec,
    }


@pytest.fixture
def world() -> tuple[FakeClient, Cache, FakeIndexes, Reconciler]:
    client = FakeClient()
    cache = Cache()
    indexes = FakeIndexes(client, cache)
    discovery = Discovery(client, ttl=0)  # type: ignore[arg-type]
    reconciler = Reconciler(
        OperatorSettings(),
        client,
        discovery,
        cache,  # type: ignore[arg-type]
        Metrics.create(CollectorRegistry()),
        now=lambda: NOW,
    )
    return client, cache, indexes, reconciler


def create(client: FakeClient, indexes: FakeIndexes, spec: dict[str, Any], generation: int = 1) -> None:
    body = model(spec, generation=generation)
    body["metadata"]["resourceVersion"] = str(next(client._rv))  # an update bumps it, as on a server
    client.objects[(api.KIND, "ml", "digits")] = body
    indexes.sync()


def complete_rollout(client: FakeClient, indexes: FakeIndexes) -> None:
    """What the Deployment controller and kwok would do: every replica updated and available."""
    dep = client.objects[("Deployment", "ml", "digits")]
    replicas = dep["spec"].get("replicas", 1)
    dep["metadata"]["generation"] = 1
    dep["metadata"]["resourceVersion"] = str(next(client._rv))
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
    indexes.sync()


async def test_first_reconcile_creates_children_and_status(world: Any) -> None:
    client, _, indexes, reconcile = world
    create(client, indexes, {"modelVersion": "1"})
    await reconcile(("ml", "digits"))
    assert client.writes == [
        ("apply", "Deployment", "mnist-operator"),
        ("apply", "Service", "mnist-operator"),
        ("patch-status", "MnistModel", ""),
    ]
    status = client.objects[(api.KIND, "ml", "digits")]["status"]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "RolloutPending")
    assert client.events == [("Normal", "RolloutStarted")]


async def test_an_unchanged_model_makes_no_write(world: Any) -> None:
    client, _, indexes, reconcile = world
    create(client, indexes, {"modelVersion": "1", "autoscaling": {"maxReplicas": 3}})
    await reconcile(("ml", "digits"))
    complete_rollout(client, indexes)
    await reconcile(("ml", "digits"))
    writes = len(client.writes)
    for _ in range(3):  # resyncs, with and without the watch having caught up
        await reconcile(("ml", "digits"))
        indexes.sync()
    assert len(client.writes) == writes
    ready = next(
        c for c in client.objects[(api.KIND, "ml", "digits")]["status"]["conditions"] if c["type"] == "Ready"
    )
    assert ready["status"] == "True"
    assert client.events[-1] == ("Normal", "Ready")


async def test_without_the_watch_catching_up_our_own_writes_are_not_repeated(world: Any) -> None:
    client, _, indexes, reconcile = world
    create(client, indexes, {"modelVersion": "1"})
    await reconcile(("ml", "digits"))
    writes = len(client.writes)
    await reconcile(("ml", "digits"))  # the indexes still show nothing: the overlay remembers
    assert len(client.writes) == writes


async def test_turning_exposure_off_deletes_the_ingress(world: Any) -> None:
    client, _, indexes, reconcile = world
    create(client, indexes, {"modelVersion": "1", "exposure": {"enabled": True, "host": "a.example.com"}})
    await reconcile(("ml", "digits"))
    assert ("Ingress", "ml", "digits") in client.objects
    indexes.sync()
    off = {"enabled": False, "host": "a.example.com"}
    create(client, indexes, {"modelVersion": "1", "exposure": off}, generation=2)
    await reconcile(("ml", "digits"))
    assert ("delete", "Ingress", "") in client.writes
    assert ("Ingress", "ml", "digits") not in client.objects


async def test_a_hand_edited_child_is_put_back(world: Any) -> None:
    client, _, indexes, reconcile = world
    create(client, indexes, {"modelVersion": "1"})
    await reconcile(("ml", "digits"))
    indexes.sync()
    client.objects[("Deployment", "ml", "digits")]["spec"]["template"]["spec"]["containers"][0]["image"] = (
        "evil"
    )
    client.objects[("Deployment", "ml", "digits")]["metadata"]["resourceVersion"] = "999"
    indexes.sync()
    client.writes.clear()
    await reconcile(("ml", "digits"))
    assert client.writes[0] == ("apply", "Deployment", "mnist-operator")
    container = client.objects[("Deployment", "ml", "digits")]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == OperatorSettings().default_image


async def test_someone_elses_object_is_not_taken_over(world: Any) -> None:
    client, _, indexes, reconcile = world
    client.objects[("Service", "ml", "digits")] = {"kind": "Service", "metadata": {"name": "digits"}}
    create(client, indexes, {"modelVersion": "1"})
    indexes.indexes["Service"].clear()  # not labelled as ours: invisible to the filtered watch
    with pytest.raises(Requeue):
        await reconcile(("ml", "digits"))
    assert ("apply", "Service", "mnist-operator") not in client.writes
    ready = client.objects[(api.KIND, "ml", "digits")]["status"]["conditions"][0]
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "False", "ChildConflict")
    assert "a Service named digits already exists" in ready["message"]


async def test_a_rejected_child_is_reported_and_retried(world: Any) -> None:
    client, _, indexes, reconcile = world
    client.fail_apply["Deployment"] = ApiError(422, "Invalid", "spec.template: bad", "PATCH", "/x")
    create(client, indexes, {"modelVersion": "1"})
    with pytest.raises(Requeue) as caught:
        await reconcile(("ml", "digits"))
    assert caught.value.delay == 60
    ready = client.objects[(api.KIND, "ml", "digits")]["status"]["conditions"][0]
    assert (ready["reason"], ready["message"]) == (
        "ChildInvalid",
        "the API server rejected the Deployment: spec.template: bad",
    )
    assert ("Warning", "ChildInvalid") in client.events


async def test_an_invalid_spec_is_reported_and_not_retried(world: Any) -> None:
    client, _, indexes, reconcile = world
    create(client, indexes, {"modelVersion": "Not Valid"})
    with pytest.raises(StopRetrying):
        await reconcile(("ml", "digits"))
    assert [w[1] for w in client.writes] == ["MnistModel"]
    ready = client.objects[(api.KIND, "ml", "digits")]["status"]["conditions"][0]
    assert ready["reason"] == "InvalidSpec" and "spec.modelVersion" in ready["message"]


async def test_outcomes_are_counted_by_result_and_an_unexpected_failure_by_reason(
    world: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, _, indexes, reconcile = world
    metrics: Metrics = reconcile.metrics

    def count(counter: Any, **labels: str) -> float:
        values = [s.value for m in counter.collect() for s in m.samples if s.labels == labels]
        return float(values[0]) if values else 0.0

    create(client, indexes, {"modelVersion": "Not Valid"})
    with pytest.raises(StopRetrying):
        await reconcile(("ml", "digits"))
    create(client, indexes, {"modelVersion": "1"})

    async def broken_apply(obj: Any, **_: Any) -> None:
        raise KeyError("a bug, not an API answer")

    monkeypatch.setattr(client, "apply", broken_apply)
    with pytest.raises(KeyError):
        await reconcile(("ml", "digits"))
    assert count(metrics.reconciles, result="error") == 2
    assert count(metrics.reconciles, result="retry") == 0
    assert count(metrics.errors, reason="InvalidSpec") == 1
    assert count(metrics.errors, reason="Unexpected") == 1


async def test_a_gateway_without_the_http_route_api_is_a_condition_not_a_crash(world: Any) -> None:
    client, _, indexes, reconcile = world
    exposure = {"enabled": True, "host": "digits.example.com", "gateway": {"name": "public"}}
    create(client, indexes, {"modelVersion": "1", "exposure": exposure})
    await reconcile(("ml", "digits"))
    conditions = {c["type"]: c for c in client.objects[(api.KIND, "ml", "digits")]["status"]["conditions"]}
    assert conditions["ExposureReady"]["reason"] == "GatewayAPIMissing"
    assert not any(w[1] in {"HTTPRoute", "Ingress", "Route"} for w in client.writes)
    # The Gateway API gets installed: the next reconcile (after discovery) creates the HTTPRoute.
    client.served["gateway.networking.k8s.io"] = True
    await reconcile(("ml", "digits"))
    assert ("apply", "HTTPRoute", "mnist-operator") in client.writes
    route = client.objects[("HTTPRoute", "ml", "digits")]
    assert route["spec"]["parentRefs"][0]["name"] == "public"


async def test_missing_service_monitor_api_is_a_condition_not_a_crash(world: Any) -> None:
    client, _, indexes, reconcile = world
    create(client, indexes, {"modelVersion": "1", "monitoring": {"serviceMonitor": {"enabled": True}}})
    await reconcile(("ml", "digits"))
    conditions = {c["type"]: c for c in client.objects[(api.KIND, "ml", "digits")]["status"]["conditions"]}
    assert conditions["MonitoringReady"]["reason"] == "ServiceMonitorAPIMissing"
    assert not any(w[1] == "ServiceMonitor" for w in client.writes)
    # The Prometheus operator gets installed: the next reconcile (after discovery) creates the monitor.
    client.served["monitoring.coreos.com"] = True
    await reconcile(("ml", "digits"))
    assert ("apply", "ServiceMonitor", "mnist-operator") in client.writes


async def test_switching_to_autoscaling_hands_replicas_over_first(world: Any) -> None:
    client, _, indexes, reconcile = world
    create(client, indexes, {"modelVersion": "1", "replicas": 4})
    await reconcile(("ml", "digits"))
    dep = client.objects[("Deployment", "ml", "digits")]
    dep["metadata"]["managedFields"] = [
        {"manager": "mnist-operator", "operation": "Apply", "fieldsV1": {"f:spec": {"f:replicas": {}}}}
    ]
    dep["metadata"]["resourceVersion"] = "500"
    indexes.sync()
    client.writes.clear()
    create(client, indexes, {"modelVersion": "1", "autoscaling": {"minReplicas": 2, "maxReplicas": 5}}, 2)
    await reconcile(("ml", "digits"))
    assert client.writes[:2] == [
        ("apply", "Deployment", "mnist-operator-handover"),
        ("apply", "Deployment", "mnist-operator"),
    ]
    assert ("apply", "HorizontalPodAutoscaler", "mnist-operator") in client.writes


async def test_a_model_being_deleted_is_left_to_the_garbage_collector(world: Any) -> None:
    client, _, indexes, reconcile = world
    create(client, indexes, {"modelVersion": "1"})
    client.objects[(api.KIND, "ml", "digits")]["metadata"]["deletionTimestamp"] = NOW
    indexes.sync()
    await reconcile(("ml", "digits"))
    await reconcile(("ml", "gone"))
    assert client.writes == []


def conditions_of(client: FakeClient) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in client.objects[(api.KIND, "ml", "digits")]["status"]["conditions"]}


async def test_a_refused_image_deploys_nothing_new_and_says_why(world: Any) -> None:
    client, _, indexes, reconcile = world
    create(client, indexes, {"modelVersion": "1", "replicas": 2})
    await reconcile(("ml", "digits"))
    complete_rollout(client, indexes)
    await reconcile(("ml", "digits"))
    assert conditions_of(client)["Ready"]["status"] == "True"
    before = copy.deepcopy(client.objects[("Deployment", "ml", "digits")])
    client.writes.clear()

    create(client, indexes, {"modelVersion": "2", "replicas": 2, "image": "evil.example.com/miner:1"}, 2)
    await reconcile(("ml", "digits"))  # no retry: waiting cannot help, the next edit will
    # The running Deployment is left alone (neither the new image nor the new version); the
    # Service and the budget still follow the spec, and status says what was refused and why.
    assert client.objects[("Deployment", "ml", "digits")] == before
    assert [w for w in client.writes if w[1] == "Deployment"] == []
    ready = conditions_of(client)["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "PolicyViolation")
    assert "spec.image: image 'evil.example.com/miner:1' is not allowed here" in ready["message"]
    assert "(MNIST_OPERATOR_ALLOWED_IMAGES)" in ready["message"]
    assert ("Warning", "PolicyViolation") in client.events
    # Version 1 still serves, and no rollout of version 2 is announced: none is coming.
    assert client.objects[(api.KIND, "ml", "digits")]["status"]["modelVersion"] == "1"
    progressing = conditions_of(client)["Progressing"]
    assert (progressing["status"], progressing["reason"]) == ("False", "RolloutComplete")
    assert client.events[-1] == ("Warning", "PolicyViolation")

    create(client, indexes, {"modelVersion": "2", "replicas": 2}, 3)  # the edit that fixes it
    await reconcile(("ml", "digits"))
    assert ("apply", "Deployment", "mnist-operator") in client.writes


async def test_a_refused_exposure_still_deploys_the_model_and_removes_the_ingress(world: Any) -> None:
    client, _, indexes, reconcile = world
    exposure = {"enabled": True, "host": "a.example.com"}
    create(client, indexes, {"modelVersion": "1", "exposure": exposure})
    await reconcile(("ml", "digits"))
    indexes.sync()
    assert ("Ingress", "ml", "digits") in client.objects

    snippet = {"nginx.ingress.kubernetes.io/configuration-snippet": "return 200;"}
    create(client, indexes, {"modelVersion": "1", "exposure": {**exposure, "annotations": snippet}}, 2)
    await reconcile(("ml", "digits"))
    assert ("Ingress", "ml", "digits") not in client.objects  # never applied with the snippet
    assert ("Deployment", "ml", "digits") in client.objects
    conditions = conditions_of(client)
    exposure_ready = conditions["ExposureReady"]
    assert (exposure_ready["status"], exposure_ready["reason"]) == ("False", "PolicyViolation")
    assert "nginx.ingress.kubernetes.io/configuration-snippet may not be set" in exposure_ready["message"]
    assert ("Warning", "PolicyViolation") in client.events
    # Only in-cluster now, and status says so.
    assert client.objects[(api.KIND, "ml", "digits")]["status"]["url"] == "http://digits.ml.svc"


async def test_a_refused_service_monitor_interval_leaves_the_model_ready(world: Any) -> None:
    client, _, indexes, reconcile = world
    client.served["monitoring.coreos.com"] = True
    create(
        client,
        indexes,
        {"modelVersion": "1", "monitoring": {"serviceMonitor": {"enabled": True, "interval": "1s"}}},
    )
    await reconcile(("ml", "digits"))
    complete_rollout(client, indexes)
    await reconcile(("ml", "digits"))
    assert not any(w[1] == "ServiceMonitor" for w in client.writes)
    conditions = conditions_of(client)
    assert (conditions["MonitoringReady"]["status"], conditions["MonitoringReady"]["reason"]) == (
        "False",
        "PolicyViolation",
    )
    assert conditions["Ready"]["status"] == "True"  # monitoring never held Ready back


async def test_a_host_another_namespace_holds_is_refused_until_it_is_free(world: Any) -> None:
    client, _, indexes, reconcile = world
    claims: dict[str, list[HostClaim]] = {"a.example.com": [HostClaim("2026-01-01T00:00:00Z", "other", "x")]}
    reconcile.host_claims = claims
    create(client, indexes, {"modelVersion": "1", "exposure": {"enabled": True, "host": "a.example.com"}})
    await reconcile(("ml", "digits"))
    assert ("Ingress", "ml", "digits") not in client.objects
    message = conditions_of(client)["ExposureReady"]["message"]
    assert "a.example.com is already used by a MnistModel in another namespace" in message
    assert "other" not in message.replace("another", "")
    assert reconcile.waiting_for_host == {("ml", "digits"): "a.example.com"}

    claims.clear()  # the other namespace's Ingress is gone
    await reconcile(("ml", "digits"))
    assert ("Ingress", "ml", "digits") in client.objects
    assert reconcile.waiting_for_host == {}


async def test_a_model_found_gone_when_its_status_is_written_is_left_alone(world: Any) -> None:
    """Deleted while a watch was down, a model stays in the watch cache (until the relist): the
    404 of its status patch hides it, so its children's and pods' events do not reconcile it again."""
    client, cache, indexes, reconciler = world
    key = ("ml", "digits")
    create(client, indexes, {"modelVersion": "1"})
    await reconciler(key)
    complete_rollout(client, indexes)  # the status would change now: Ready
    del client.objects[(api.KIND, *key)]  # behind the watch's back: the index still holds it
    writes = len(client.writes)
    await reconciler(key)
    assert client.writes[writes:] == [("patch-status", api.KIND, "")]  # answered 404
    assert cache.model(*key) is None
    await reconciler(key)
    assert len(client.writes) == writes + 1
