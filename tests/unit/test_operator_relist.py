"""Truth after watch gaps: what an authoritative listing proves gone leaves kopf's own indexes,
and the models concerned are reconciled (the listing against kmock's HTTP server)."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
import pytest
from kmock import RawHandler, Request
from kopf._core.engines.indexing import OperatorIndexer
from prometheus_client import CollectorRegistry

from mnist_operator import api
from mnist_operator.cache import Cache, pod_projection, snapshot
from mnist_operator.handlers import Operator
from mnist_operator.kube import KubeClient
from mnist_operator.metrics import Metrics
from mnist_operator.relist import METADATA_ONLY, list_objects
from mnist_operator.settings import OperatorSettings

NS = "ml"


def obj(kind: str, name: str, uid: str, rv: int, owner: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"namespace": NS, "name": name, "uid": uid, "resourceVersion": str(rv)}
    if owner:
        meta["ownerReferences"] = [
            {"apiVersion": api.API_VERSION, "kind": api.KIND, "name": owner, "controller": True}
        ]
    return {"kind": kind, "metadata": meta}


def index(*bodies: tuple[tuple[str, str], dict[str, Any]]) -> OperatorIndexer:
    """kopf's own indexer, filled as kopf fills it from watch events: one value per object."""
    indexer = OperatorIndexer()
    for key, value in bodies:
        meta = value.get("metadata") or value
        indexer.replace((NS, meta["name"], meta["uid"]), {key: value})
    return indexer


def test_purge_forgets_what_the_listing_proves_gone_and_nothing_else() -> None:
    gone = obj("Service", "a", "uid-a", 10, owner="a")
    kept = obj("Service", "b", "uid-b", 11, owner="b")
    newer = obj("Service", "c", "uid-c", 50, owner="c")  # created after the listing was taken
    services = index(((NS, "a"), gone), ((NS, "b"), kept), ((NS, "c"), newer))
    cache = Cache()
    cache.attach("Service", services.index)

    purged = cache.purge("Service", frozenset({(NS, "b", "uid-b")}), as_of=40)

    assert purged == [(NS, "a")]
    assert cache.get("Service", NS, "a") is None
    assert cache.get("Service", NS, "b") == kept
    assert cache.get("Service", NS, "c") == newer
    assert list(services.index) == [(NS, "b"), (NS, "c")]  # gone from kopf's index itself


def test_a_child_recreated_during_the_gap_replaces_its_ghost() -> None:
    """Same name, new uid: kopf's relisting indexed the new one beside the ghost, which the
    cache would otherwise keep answering with (it came first)."""
    ghost = obj("Deployment", "m", "uid-old", 10, owner="m")
    new = obj("Deployment", "m", "uid-new", 30, owner="m")
    deployments = index(((NS, "m"), ghost), ((NS, "m"), new))
    cache = Cache()
    cache.attach("Deployment", deployments.index)
    assert cache.get("Deployment", NS, "m") == ghost

    assert cache.purge("Deployment", frozenset({(NS, "m", "uid-new")}), as_of=40) == [(NS, "m")]
    assert cache.get("Deployment", NS, "m") == new


def test_pods_and_the_indexes_beside_the_main_one_are_purged_alike() -> None:
    pod_body = {**obj("Pod", "m-1", "uid-p1", 12), "status": {"phase": "Running"}}
    pods = index(((NS, "m"), pod_projection(pod_body)))
    route = obj("Route", "m", "uid-r", 13, owner="m")
    routes, hosts = index(((NS, "m"), route)), index()
    hosts.replace((NS, "m", "uid-r"), {"m.example.com": "claim"})
    cache = Cache()
    cache.attach("Pod", pods.index)
    cache.attach("Route", routes.index, hosts.index)

    assert cache.purge("Pod", frozenset(), as_of=20) == [(NS, "m")]
    assert cache.pods(NS, "m") == []
    assert cache.purge("Route", frozenset(), as_of=20) == [(NS, "m")]
    assert "m.example.com" not in hosts.index


def test_our_own_write_of_an_object_deleted_since_is_forgotten_too() -> None:
    cache = Cache()
    cache.attach("Service", index().index)
    cache.remember(obj("Service", "m", "uid-s", 15, owner="m"))
    assert cache.get("Service", NS, "m") is not None

    assert cache.purge("Service", frozenset(), as_of=20) == [(NS, "m")]
    assert cache.get("Service", NS, "m") is None


def pages(request: Request) -> object:
    """Two pages of Services (one list, one snapshot version), metadata only."""
    if request.params.get("continue") == "next":
        return {
            "metadata": {"resourceVersion": "99"},
            "items": [{"metadata": obj("Service", "b", "u2", 5)["metadata"]}],
        }
    return {
        "kind": "PartialObjectMetadataList",
        "metadata": {"resourceVersion": "40", "continue": "next"},
        "items": [{"metadata": obj("Service", "a", "u1", 4)["metadata"]}],
    }


def client_for(server: RawHandler) -> KubeClient:
    async def login() -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=str(server.url), token="t")

    return KubeClient(login)


@pytest.mark.asyncio
@pytest.mark.kmock(cls=RawHandler)
async def test_the_listing_is_paged_metadata_only_and_selects_what_the_watch_selects(
    kmock: RawHandler,
) -> None:
    kmock[f"get /api/v1/namespaces/{NS}/services"] << pages
    kmock["get /apis/route.openshift.io/v1/namespaces/ml/routes"] << 404 << {"kind": "Status"}
    client = client_for(kmock)

    listing = await list_objects(client, api.SERVICE, [NS])
    assert await list_objects(client, api.ROUTE, [NS]) is None  # not served: nothing proven
    await client.close()

    assert listing is not None
    assert listing.objects == {(NS, "a", "u1"), (NS, "b", "u2")}
    assert listing.resource_version == 40  # the snapshot's, as the first page says
    first, second = kmock[0], kmock[1]
    assert first.headers["Accept"] == METADATA_ONLY
    assert first.params == {"limit": "500", "labelSelector": api.MANAGED_SELECTOR}
    assert second.params["continue"] == "next"


@pytest.mark.asyncio
@pytest.mark.kmock(cls=RawHandler)
async def test_a_relist_reconciles_the_owner_of_a_ghost_and_forgets_a_ghost_model(kmock: RawHandler) -> None:
    model_a, model_b = obj(api.KIND, "a", "uid-ma", 3), obj(api.KIND, "b", "uid-mb", 4)
    service_a = obj("Service", "a", "uid-sa", 5, owner="a")
    listed = {
        "mnistmodels": [model_a],  # b was deleted during the gap
        "services": [],  # and a's Service
    }
    for kind in (*api.CHILD_KINDS, api.POD, api.MNISTMODEL):
        items = [{"metadata": o["metadata"]} for o in listed.get(kind.plural, [])]
        kmock[f"get {kind.path(NS)}"] << {"metadata": {"resourceVersion": "20"}, "items": items}
    settings = OperatorSettings(namespaces=(NS,), leader_election=False)
    op = Operator(settings, Metrics.create(CollectorRegistry()), client_for(kmock))
    op.synced = True  # kopf has loaded every index
    op.cache.attach(api.KIND, index(((NS, "a"), snapshot(model_a)), ((NS, "b"), snapshot(model_b))).index)
    op.cache.attach("Service", index(((NS, "a"), service_a)).index)
    await op.relist()
    await op.client.close()

    assert op.cache.get("Service", NS, "a") is None
    assert op.cache.model_keys() == [(NS, "a")]
    assert len(op.queue) == 1  # a, whose Service comes back
    assert op.metrics.cache_purged.labels(kind="Service")._value.get() == 1
    assert op.metrics.cache_purged.labels(kind=api.KIND)._value.get() == 1


@pytest.mark.asyncio
async def test_a_listing_by_kopf_after_start_up_means_a_watch_gap_and_a_relist_soon(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """kopf lists again after 410 Gone (events without a type): what it did not list is a ghost,
    so the operator relists within seconds, once however many listed objects there are."""
    from mnist_operator import handlers

    monkeypatch.setattr(handlers, "RELIST_AFTER_GAP_DELAY", 0.01)
    op = Operator(OperatorSettings(leader_election=False), Metrics.create(CollectorRegistry()))
    relists = 0

    async def relist() -> None:
        nonlocal relists
        relists += 1

    op.relist = relist  # type: ignore[method-assign]
    op.event_seen("ADDED")  # the first event: the caches are complete
    for _ in range(3):
        op.event_seen(None)
    await asyncio.sleep(0.1)
    op.event_seen("MODIFIED")  # a watch event proves nothing
    await asyncio.sleep(0.1)
    assert relists == 1
    await op.client.close()
