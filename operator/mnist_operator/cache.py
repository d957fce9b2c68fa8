"""Read side of the operator: kopf's in-memory indexes of the watched objects, plus our own writes.

kopf keeps the indexes current from its watch streams, and holds every handler back until the
initial listing of every indexed resource is done, so a reconcile never mistakes "not listed yet"
for "missing" (which would make a restart write). The overlay keeps the API server's answer to
each of our own writes until the watch stream catches up, so a reconcile that runs in between
does not see its own change as still to be made.

What kopf never does is forget an object whose deletion it did not see (deleted while a watch
was down, then a 410 Gone and a fresh listing): `purge` removes such ghosts, given an
authoritative listing (relist.py).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from typing import Any

from mnist_operator import api
from mnist_operator.storage import SHA256_ANNOTATION

Key = tuple[str, str]
IndexView = Mapping[Key, Iterable[Mapping[str, Any]]]
Body = Mapping[str, Any]
# (namespace, name, uid): one object, whichever index holds it (and kopf's own key for it).
ObjectId = tuple[str, str, str]


def resource_version(obj: Body | None) -> int | None:
    # Resource versions are opaque by contract, but every API server backed by etcd hands out the
    # etcd revision, an integer that only grows; that is all we need to tell older from newer.
    try:
        return int((obj or {}).get("metadata", {}).get("resourceVersion"))
    except (TypeError, ValueError):
        return None


# Strings up to this long are interned when cached: field names and the values objects share
# ("True", "Available", label values) then exist once instead of once per object.
_INTERNED_UP_TO = 64


def snapshot(body: Body, *, keep_replicas_owners: bool = False) -> dict[str, Any]:
    """A watched object as it is cached: without what no reconcile reads, in little memory.

    managedFields, often half an object, are dropped; `keep_replicas_owners` keeps what the HPA
    hand-over asks of them (compare.manager_owns: who applied spec.replicas). The rest is copied
    with its shorter strings interned, so a thousand Deployments hold their field names once (a
    third of the memory; a plain copy, not copy.deepcopy, which was most of the CPU time).
    """
    copied = dict(body)  # kopf passes its own read-only Body
    meta = copied.get("metadata")
    if isinstance(meta, Mapping) and "managedFields" in meta:
        owners = _replicas_owners(meta["managedFields"]) if keep_replicas_owners else []
        copied["metadata"] = {k: v for k, v in meta.items() if k != "managedFields"}
        if owners:
            copied["metadata"]["managedFields"] = owners
    compact: dict[str, Any] = _compact(copied)
    return compact


def _compact(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {sys.intern(str(k)): _compact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_compact(v) for v in value]
    if isinstance(value, str) and len(value) <= _INTERNED_UP_TO:
        return sys.intern(value)
    return value


def _replicas_owners(managed_fields: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "manager": e.get("manager"),
            "operation": e.get("operation"),
            "fieldsV1": {"f:spec": {"f:replicas": {}}},
        }
        for e in managed_fields or []
        if "f:replicas" in ((e.get("fieldsV1") or {}).get("f:spec") or {})
    ]


def pod_projection(body: Body) -> dict[str, Any]:
    """The few pod fields the status logic reads; pods are many and churn, so keep them small."""
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    projection: dict[str, Any] = _compact(
        {
            "name": meta.get("name"),
            "uid": meta.get("uid"),  # uid and resourceVersion: for `Cache.purge`
            "resourceVersion": meta.get("resourceVersion"),
            "deleting": bool(meta.get("deletionTimestamp")),
            "version": (meta.get("labels") or {}).get(api.LABEL_VERSION),
            # A canary's pod (canary.py): judged on its own, never counted as the stable version's.
            "canary": (meta.get("labels") or {}).get(api.TRACK_LABEL) == api.CANARY_TRACK,
            "sha256": (meta.get("annotations") or {}).get(SHA256_ANNOTATION),  # a version from storage
            "phase": status.get("phase"),
            "conditions": [
                {k: c.get(k) for k in ("type", "status", "reason", "message")}
                for c in status.get("conditions") or []
            ],
            "containerStatuses": _container_statuses(status.get("containerStatuses")),
            # The model fetch (storage.py): why it failed is here, not in the server's status.
            "initContainerStatuses": _container_statuses(status.get("initContainerStatuses")),
        }
    )
    return projection


def _container_statuses(statuses: Any) -> list[dict[str, Any]]:
    return [
        {
            **{k: cs.get(k) for k in ("name", "ready", "restartCount", "state")},
            "lastTerminated": _last_terminated(cs),
        }
        for cs in statuses or []
    ]


def _last_terminated(container_status: Mapping[str, Any]) -> dict[str, Any] | None:
    """Why the container's previous run ended: a crash loop's cause is here, not in its state."""
    last = (container_status.get("lastState") or {}).get("terminated")
    if not last:
        return None
    # The end of the message: a termination message or log tail says the most at its end.
    return {
        "reason": last.get("reason"),
        "exitCode": last.get("exitCode"),
        "message": (last.get("message") or "")[-400:],
    }


def owner_key(body: Body) -> Key | None:
    """(namespace, name) of the MnistModel controlling this object, if one does."""
    meta = body.get("metadata") or {}
    for ref in meta.get("ownerReferences") or []:
        if (
            ref.get("controller")
            and ref.get("kind") == api.KIND
            and str(ref.get("apiVersion", "")).startswith(f"{api.GROUP}/")
        ):
            return (meta.get("namespace") or "", ref.get("name") or "")
    return None


def _meta(value: Mapping[str, Any]) -> Mapping[str, Any]:
    """An indexed value's metadata: a snapshot's, or the fields a pod projection keeps of it."""
    meta = value.get("metadata")
    return meta if isinstance(meta, Mapping) else value


def object_id(key: Key, value: Mapping[str, Any]) -> ObjectId:
    """Which object an indexed value is (the namespace of a pod projection is its key's)."""
    meta = _meta(value)
    return (str(meta.get("namespace") or key[0]), str(meta.get("name")), str(meta.get("uid")))


def discard_from_kopf_index(index: IndexView, obj: ObjectId) -> None:
    """Remove every value of one object from a kopf index, as a DELETED watch event would.

    kopf's indexes are read-only to handlers; `_discard` with kopf's key for the object
    (namespace, name, uid: OperatorIndexers.make_key) is its indexers' own protocol.
    tests/unit/test_operator_relist.py holds this to kopf's Index, so an upgrade that changes it
    fails there rather than leaving ghosts.
    """
    index._discard(obj)  # type: ignore[attr-defined]


class Cache:
    def __init__(self) -> None:
        self._indexes: dict[str, IndexView] = {}
        # More indexes of the same objects (the hosts of Routes and Ingresses): purged alike.
        self._also: dict[str, list[IndexView]] = {}
        self._fresh: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._deleted: dict[tuple[str, str, str], int | None] = {}

    def attach(self, kind: str, index: IndexView, *also: IndexView) -> None:
        self._indexes[kind] = index
        self._also[kind] = list(also)

    def kinds(self) -> list[str]:
        return list(self._indexes)

    def purge(self, kind: str, listed: frozenset[ObjectId], as_of: int) -> list[Key]:
        """Forget every object of `kind` that an authoritative listing taken at resource version
        `as_of` does not hold; return, for each, the key it was indexed under (its owner's, for
        children and pods).

        An object newer than the listing is kept: it was created after the list was taken.
        """

        def gone(key: Key, value: Mapping[str, Any]) -> bool:
            version = resource_version({"metadata": _meta(value)})
            return version is not None and version <= as_of and object_id(key, value) not in listed

        purged: list[Key] = []
        index = self._indexes.get(kind)
        if index is not None:
            ghosts = [(key, value) for key in list(index) for value in index.get(key, ()) if gone(key, value)]
            for key, value in ghosts:
                for each in (index, *self._also.get(kind, ())):
                    discard_from_kopf_index(each, object_id(key, value))
                purged.append(key)
        for ref, fresh in list(self._fresh.items()):
            if ref[0] == kind and gone(ref[1:], fresh):
                del self._fresh[ref]  # our own write, of an object deleted since
                if ref[1:] not in purged:
                    purged.append(ref[1:])
        return purged

    def _indexed(self, kind: str, key: Key, name: str | None = None) -> Mapping[str, Any] | None:
        """The object of `kind` indexed under `key` (an owner's), and named `name` if given (a
        model's children are named after it, except its canary's Deployment)."""
        index = self._indexes.get(kind)
        if index is None:
            return None
        for body in index.get(key, ()):
            if name is None or _meta(body).get("name") == name:
                return body
        return None

    def get(self, kind: str, namespace: str, name: str, owner: str | None = None) -> Mapping[str, Any] | None:
        """The newest known state of one object (children are indexed by their owner's key:
        `owner` names the model when the child is not named after it)."""
        ref = (kind, namespace, name)
        indexed = self._indexed(kind, (namespace, owner or name), name)
        if ref in self._deleted:
            if indexed is None or resource_version(indexed) != self._deleted[ref]:
                self._deleted.pop(ref)
            else:
                return None  # we deleted it; the watch has not told us yet
        fresh = self._fresh.get(ref)
        if fresh is None:
            return indexed
        indexed_rv, fresh_rv = resource_version(indexed), resource_version(fresh)
        if indexed is not None and (indexed_rv is None or fresh_rv is None or indexed_rv >= fresh_rv):
            del self._fresh[ref]  # the watch has caught up with our write
            return indexed
        return fresh

    def model(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        return self.get(api.KIND, namespace, name)

    def model_keys(self) -> list[Key]:
        index = self._indexes.get(api.KIND)
        return list(index.keys()) if index is not None else []

    def pods(self, namespace: str, name: str) -> list[Mapping[str, Any]]:
        index = self._indexes.get(api.POD.kind)
        return list(index.get((namespace, name), ())) if index is not None else []

    def remember(self, obj: Mapping[str, Any]) -> None:
        """Our write's result: newer than the index until the watch delivers it."""
        meta = obj.get("metadata") or {}
        ref = (str(obj.get("kind")), str(meta.get("namespace")), str(meta.get("name")))
        self._fresh[ref] = snapshot(obj, keep_replicas_owners=obj.get("kind") == api.DEPLOYMENT.kind)
        self._deleted.pop(ref, None)

    def forget(self, kind: str, namespace: str, name: str, owner: str | None = None) -> None:
        """We deleted this object: hide it until the watch reports the deletion."""
        ref = (kind, namespace, name)
        self._fresh.pop(ref, None)
        self._deleted[ref] = resource_version(self._indexed(kind, (namespace, owner or name), name))

    def observe_deletion(self, body: Mapping[str, Any]) -> None:
        """The watch reports an object deleted: a write of ours older than that is stale."""
        meta = body.get("metadata") or {}
        ref = (str(body.get("kind")), str(meta.get("namespace")), str(meta.get("name")))
        fresh = self._fresh.get(ref)
        deleted_rv, fresh_rv = resource_version(body), resource_version(fresh)
        if fresh is not None and (deleted_rv is None or fresh_rv is None or fresh_rv <= deleted_rv):
            del self._fresh[ref]

    def drop(self, namespace: str, name: str) -> None:
        """A MnistModel is gone: its overlay entries are no longer needed."""
        names = (name, name + api.CANARY_SUFFIX)
        for ref in [r for r in self._fresh if r[1] == namespace and r[2] in names]:
            del self._fresh[ref]
        for ref in [r for r in self._deleted if r[1] == namespace and r[2] in names]:
            del self._deleted[ref]
