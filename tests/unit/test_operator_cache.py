"""What the cache keeps of a watched object: what reconciles read, in little memory."""

from __future__ import annotations

import json
import sys
from typing import Any

from mnist_operator import api, compare
from mnist_operator.cache import pod_projection, snapshot


def deployment(name: str, *managers: str) -> dict[str, Any]:
    fields = {"f:spec": {"f:replicas": {}, "f:template": {"f:spec": {"f:containers": {}}}}}
    return json.loads(
        json.dumps(
            {
                "kind": "Deployment",
                "metadata": {
                    "name": name,
                    "labels": {api.LABEL_MANAGED_BY: api.MANAGED_BY},
                    "managedFields": [
                        *({"manager": m, "operation": "Apply", "fieldsV1": fields} for m in managers),
                        {
                            "manager": "kube-controller-manager",
                            "operation": "Update",
                            "fieldsV1": {"f:status": {}},
                        },
                    ],
                },
                "spec": {"replicas": 2},
                "status": {"conditions": [{"type": "Available", "status": "True"}]},
            }
        )
    )


def test_managed_fields_are_dropped_but_who_applied_the_replicas() -> None:
    cached = snapshot(deployment("a", api.FIELD_MANAGER), keep_replicas_owners=True)
    assert compare.manager_owns(cached, api.FIELD_MANAGER, ("spec", "replicas"))
    assert not compare.manager_owns(cached, api.HANDOVER_FIELD_MANAGER, ("spec", "replicas"))
    assert [e["manager"] for e in cached["metadata"]["managedFields"]] == [api.FIELD_MANAGER]
    assert "managedFields" not in snapshot(deployment("b", api.FIELD_MANAGER))["metadata"]
    assert "managedFields" not in snapshot(deployment("c"), keep_replicas_owners=True)["metadata"]
    assert cached["spec"] == {"replicas": 2} and cached["status"]["conditions"][0]["type"] == "Available"


def test_objects_decoded_apart_share_their_names_and_short_values() -> None:
    """A thousand cached Deployments hold "conditions" or "Available" once, not a thousand times."""
    a, b = snapshot(deployment("a")), snapshot(deployment("b"))
    key_a = next(k for k in a["status"] if k == "conditions")
    key_b = next(k for k in b["status"] if k == "conditions")
    assert key_a is key_b
    assert a["status"]["conditions"][0]["type"] is b["status"]["conditions"][0]["type"]
    assert a["metadata"]["name"] is sys.intern("a")
    pod = {"metadata": {"name": "p", "uid": "u", "resourceVersion": "7"}, "status": {"phase": "Running"}}
    assert pod_projection(pod)["phase"] is pod_projection(json.loads(json.dumps(pod)))["phase"]
