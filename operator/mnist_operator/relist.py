"""Truth after watch gaps: list what the watches cover, and forget what is no longer there.

A watch can miss a deletion: the API server restarts, or etcd compacts past the watch's resource
version (410 Gone), while an object is deleted. kopf then lists again and re-indexes what it
finds, but never forgets what it does not find, so a deleted child would stay in the cache for
good: never recreated, and status built from a Deployment that is gone. client-go's reflector
replaces its whole store on a relist; this is the equivalent for kopf's indexes, run on every
resync and soon after kopf lists again (handlers.Operator.event_seen): one LIST per watched
resource (metadata only, in pages, with the watch's label selector), and `Cache.purge` of
whatever the listing proves gone.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from mnist_operator import api
from mnist_operator.cache import ObjectId, resource_version
from mnist_operator.kube import ApiError, KubeClient

# Metadata only (PartialObjectMetadataList): a fraction of the bytes, and what client-go's
# metadata informers ask for.
METADATA_ONLY = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"
PAGE_SIZE = 500


@dataclass(frozen=True)
class Listing:
    """Every object of one resource, as of one resource version (the oldest, over namespaces)."""

    objects: frozenset[ObjectId]
    resource_version: int


def selector_of(kind: api.ResourceKind) -> str | None:
    """The label selector kopf's watch of this kind uses (configure_kopf): children and pods are
    ours only; MnistModels are all watched."""
    return None if kind == api.MNISTMODEL else api.MANAGED_SELECTOR


async def list_objects(
    client: KubeClient, kind: api.ResourceKind, namespaces: Iterable[str]
) -> Listing | None:
    """One authoritative listing of `kind` in `namespaces` (none: the whole cluster), or None
    when the API server does not serve the kind (an optional API that is not installed)."""
    objects: set[ObjectId] = set()
    versions: list[int] = []
    for namespace in tuple(namespaces) or (None,):
        params = {"limit": str(PAGE_SIZE)}
        selector = selector_of(kind)
        if selector:
            params["labelSelector"] = selector
        first_page = True
        while True:
            try:
                page = await client.request("GET", kind.path(namespace), params=params, accept=METADATA_ONLY)
            except ApiError as exc:
                if exc.status == 404:
                    return None
                raise
            if first_page:
                # Every page of a paged list is the same snapshot: the first page's version. None
                # (no API server backed by etcd omits it): 0, which proves nothing gone.
                versions.append(resource_version(page) or 0)
                first_page = False
            for item in page.get("items") or []:
                meta = item.get("metadata") or {}
                objects.add((str(meta.get("namespace") or ""), str(meta.get("name")), str(meta.get("uid"))))
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                break
            params = {**params, "continue": token}
    return Listing(frozenset(objects), min(versions))
