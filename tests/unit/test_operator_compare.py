"""Deciding without a write whether a live child already matches what would be applied."""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

import pytest

from mnist_operator import api
from mnist_operator.builders import Owner, desired
from mnist_operator.compare import controller_uid, is_subset, manager_owns, needs_apply, parse_quantity, stamp
from mnist_operator.settings import OperatorSettings
from mnist_operator.spec import parse_spec

OWNER = Owner("digits", "ml", "uid-1")


def deployment(spec: dict[str, Any] | None = None) -> dict[str, Any]:
    return stamp(
        desired(parse_spec(spec or {"modelVersion": "1"}), OWNER, OperatorSettings(), api.Capabilities())[0]
    )


def as_stored(obj: dict[str, Any]) -> dict[str, Any]:
    """What the API server hands back: our fields plus defaults, status and server metadata."""
    live = copy.deepcopy(obj)
    live["metadata"].update(
        {"uid": "d-1", "resourceVersion": "42", "generation": 1, "creationTimestamp": "2026-01-01T00:00:00Z"}
    )
    live["spec"]["revisionHistoryLimit"] = 10
    pod = live["spec"]["template"]["spec"]
    pod.update({"restartPolicy": "Always", "dnsPolicy": "ClusterFirst", "schedulerName": "default-scheduler"})
    container = pod["containers"][0]
    container.update({"terminationMessagePath": "/dev/termination-log", "imagePullPolicy": "IfNotPresent"})
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        container[probe]["httpGet"]["scheme"] = "HTTP"
        container[probe]["successThreshold"] = 1
    live["status"] = {"replicas": 1}
    return live


def test_a_missing_child_needs_apply() -> None:
    assert needs_apply(deployment(), None)


def test_the_stored_object_with_server_defaults_needs_nothing() -> None:
    want = deployment()
    assert not needs_apply(want, as_stored(want))


def test_a_changed_spec_needs_apply_even_when_it_only_removes_a_field() -> None:
    with_selector = deployment({"modelVersion": "1", "nodeSelector": {"pool": "a"}})
    without = deployment({"modelVersion": "1"})
    live = as_stored(with_selector)
    # The live object still has our old nodeSelector: a subset check alone would miss the removal.
    unstamped = copy.deepcopy(without)
    del unstamped["metadata"]["labels"][api.HASH_LABEL]
    assert is_subset(unstamped, live)
    assert needs_apply(without, live)


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d["spec"].update(replicas=5),
        lambda d: d["spec"]["template"]["spec"]["containers"][0].update(image="evil:1"),
        lambda d: d["metadata"]["labels"].pop("app.kubernetes.io/managed-by"),
        lambda d: d["spec"]["template"]["spec"]["containers"][0]["env"].pop(0),
        lambda d: d["spec"]["template"]["spec"]["containers"][0]["securityContext"].update(
            allowPrivilegeEscalation=True
        ),
        lambda d: d["metadata"]["labels"].pop(api.HASH_LABEL),
    ],
)
def test_hand_edits_to_our_fields_are_drift(edit: Any) -> None:
    want = deployment()
    live = as_stored(want)
    edit(live)
    assert needs_apply(want, live)


def test_fields_added_by_others_are_not_drift() -> None:
    want = deployment()
    live = as_stored(want)
    live["metadata"]["labels"]["added-by"] = "someone"
    live["metadata"]["annotations"] = {"deployment.kubernetes.io/revision": "3"}
    live["spec"]["template"]["spec"]["containers"][0]["env"].append({"name": "DEBUG", "value": "1"})
    live["spec"]["template"]["spec"]["containers"].append({"name": "sidecar", "image": "proxy:1"})
    assert not needs_apply(want, live)


def test_canonicalised_quantities_are_equal() -> None:
    want = deployment(
        {
            "modelVersion": "1",
            "resources": {"requests": {"cpu": "1000m", "memory": 1073741824}, "limits": {"memory": "1024Mi"}},
        }
    )
    live = as_stored(want)
    container = live["spec"]["template"]["spec"]["containers"][0]
    container["resources"] = {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "1Gi"}}
    assert not needs_apply(want, live)
    container["resources"]["requests"]["cpu"] = "2"
    assert needs_apply(want, live)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1", Decimal(1)),
        ("500m", Decimal("0.5")),
        ("1Gi", Decimal(2**30)),
        ("1.5k", Decimal(1500)),
        ("2e3", Decimal(2000)),
        (3, Decimal(3)),
        ("100n", Decimal("1e-7")),
        ("abc", None),
        ("1Q", None),
        (True, None),
        (None, None),
    ],
)
def test_parse_quantity(text: Any, value: Decimal | None) -> None:
    assert parse_quantity(text) == value


def test_quantities_compare_numerically_only_where_the_server_canonicalises() -> None:
    assert is_subset({"limits": {"cpu": "1000m"}}, {"limits": {"cpu": "1"}})
    assert not is_subset({"value": "1000m"}, {"value": "1"})


def test_lists_without_names_compare_by_position_and_length() -> None:
    assert is_subset({"drop": ["ALL"]}, {"drop": ["ALL"]})
    assert not is_subset({"drop": ["ALL"]}, {"drop": ["ALL", "NET_RAW"]})
    assert not is_subset({"drop": ["ALL"]}, {"drop": "ALL"})


def test_types_must_match() -> None:
    assert not is_subset({"enabled": True}, {"enabled": 1})
    assert not is_subset({"port": 80}, {"port": "80"})


def test_controller_uid() -> None:
    assert (
        controller_uid({"metadata": {"ownerReferences": [{"uid": "a"}, {"uid": "b", "controller": True}]}})
        == "b"
    )
    assert controller_uid({"metadata": {}}) is None


def test_manager_owns_reads_managed_fields() -> None:
    live = {
        "metadata": {
            "managedFields": [
                {
                    "manager": "kube-controller-manager",
                    "operation": "Update",
                    "fieldsV1": {"f:spec": {"f:replicas": {}}},
                },
                {
                    "manager": "mnist-operator",
                    "operation": "Apply",
                    "fieldsV1": {"f:spec": {"f:template": {}}},
                },
            ]
        }
    }
    assert not manager_owns(live, "mnist-operator", ("spec", "replicas"))
    live["metadata"]["managedFields"][1]["fieldsV1"]["f:spec"]["f:replicas"] = {}
    assert manager_owns(live, "mnist-operator", ("spec", "replicas"))
    assert not manager_owns(live, "someone", ("spec", "replicas"))
