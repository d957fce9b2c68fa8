"""Decide, without writing, whether a live child already matches what we would apply.

Two checks, both needed:
- the applied-hash label says whether *our desired object* changed since the last apply
  (a subset check alone cannot see a field we stopped setting, which the apply must remove);
- a subset check says whether *someone else* changed a field we own (drift, e.g. a hand edit).
Fields others add (defaults, other field managers) are not our business, exactly as with
server-side apply itself.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from kubernetes.utils import quantity

from mnist_operator import api

# The kubernetes client's quantity parser, with the types it has (its package declares none).
_kubernetes_quantity: Callable[[str | int], Decimal] = quantity.parse_quantity

# Keys whose values the API server stores as canonical quantities ("1000m" comes back as "1").
_QUANTITY_PARENTS = frozenset({"limits", "requests"})
_QUANTITY_KEYS = frozenset({"sizeLimit"})


def digest(obj: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def stamp(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The desired object carrying the hash of itself in a label (the rest is shared, not copied)."""
    meta = obj.get("metadata") or {}
    return {**obj, "metadata": {**meta, "labels": {**meta.get("labels", {}), api.HASH_LABEL: digest(obj)}}}


def needs_apply(stamped: Mapping[str, Any], live: Mapping[str, Any] | None) -> bool:
    if live is None:
        return True
    want_hash = stamped["metadata"]["labels"][api.HASH_LABEL]
    have_hash = ((live.get("metadata") or {}).get("labels") or {}).get(api.HASH_LABEL)
    return want_hash != have_hash or not is_subset(stamped, live)


def is_subset(want: Any, have: Any, key: str = "", parent: str = "") -> bool:
    """True when every field of `want` is present in `have` with an equal value.

    Lists of objects that all have a `name` are matched by name (the API's merge key for
    containers, env, ports, volumes), other lists position by position and with equal length.
    """
    if isinstance(want, Mapping):
        return isinstance(have, Mapping) and all(
            k in have and is_subset(v, have[k], k, key) for k, v in want.items()
        )
    if isinstance(want, Sequence) and not isinstance(want, str):
        if not isinstance(have, Sequence) or isinstance(have, str):
            return False
        if want and all(isinstance(w, Mapping) and "name" in w for w in want):
            by_name = {h.get("name"): h for h in have if isinstance(h, Mapping)}
            return all(w["name"] in by_name and is_subset(w, by_name[w["name"]], key, parent) for w in want)
        return len(want) == len(have) and all(
            is_subset(w, h, key, parent) for w, h in zip(want, have, strict=True)
        )
    if want == have and type(want) is type(have):
        return True
    if parent in _QUANTITY_PARENTS or key in _QUANTITY_KEYS:
        a, b = parse_quantity(want), parse_quantity(have)
        return a is not None and a == b
    return False


def parse_quantity(value: Any) -> Decimal | None:
    """A Kubernetes quantity ("500m", "1Gi", "2e3", 1) as a number, or None if it is not one.

    The kubernetes client parses (a dependency kopf imports anyway, for its login); this only
    turns "not a quantity", for values of any type, into None instead of an exception.
    """
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    try:
        # A float through its shortest repr: 0.1 is the quantity 0.1, not its binary expansion.
        number = _kubernetes_quantity(str(value) if isinstance(value, float) else value)
    except ValueError:
        return None
    return number if number.is_finite() else None


def controller_uid(live: Mapping[str, Any]) -> str | None:
    """The uid of the object's controlling owner, if any."""
    for ref in (live.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None


def manager_owns(live: Mapping[str, Any], manager: str, path: Sequence[str]) -> bool:
    """Whether `manager` holds the field at `path` (e.g. spec.replicas) through a server-side apply."""
    for entry in (live.get("metadata") or {}).get("managedFields") or []:
        if entry.get("manager") != manager or entry.get("operation") != "Apply":
            continue
        node: Any = entry.get("fieldsV1") or {}
        for part in path:
            node = node.get(f"f:{part}") if isinstance(node, Mapping) else None
            if node is None:
                break
        else:
            return True
    return False
