"""The kopf wiring: only read-only handler kinds, ours filtered by label, kopf's own writes off."""

from __future__ import annotations

import kopf
from prometheus_client import CollectorRegistry

from mnist_operator import api
from mnist_operator.handlers import WATCHED_CHILDREN, Operator, configure_kopf, register
from mnist_operator.metrics import Metrics
from mnist_operator.settings import OperatorSettings


def registry() -> kopf.OperatorRegistry:
    reg = kopf.OperatorRegistry()
    register(reg, Operator(OperatorSettings(), Metrics.create(CollectorRegistry())))
    return reg


def test_no_handler_makes_kopf_write_to_the_objects() -> None:
    reg = registry()
    # create/update/resume/delete handlers store progress and a diff base in annotations (and
    # delete handlers a finalizer); daemons and timers need a finalizer. None of them here.
    assert list(reg._changing.get_all_handlers()) == []
    assert list(reg._spawning.get_all_handlers()) == []


def test_every_watched_kind_is_indexed_and_triggers_reconciles() -> None:
    reg = registry()
    indexed = {h.id for h in reg._indexing.get_all_handlers()}
    watched = {h.id for h in reg._watching.get_all_handlers()}
    assert indexed == {"index_mnistmodel", *(f"index_{k.kind.lower()}" for k in WATCHED_CHILDREN)}
    assert watched == {
        "event_mnistmodel",
        "event_optional_crd",
        *(f"event_{k.kind.lower()}" for k in WATCHED_CHILDREN),
    }
    for handler in [*reg._indexing.get_all_handlers(), *reg._watching.get_all_handlers()]:
        if handler.id not in ("index_mnistmodel", "event_mnistmodel", "event_optional_crd"):
            assert handler.labels == {api.LABEL_MANAGED_BY: api.MANAGED_BY}, handler.id


def test_kopf_settings_post_no_events_and_list_only_our_children() -> None:
    settings = kopf.OperatorSettings()
    configure_kopf(settings)
    assert settings.posting.enabled is False
    selectors = dict(settings.watching.label_selectors.items())
    assert len(selectors) == len(WATCHED_CHILDREN)
    assert set(selectors.values()) == {"app.kubernetes.io/managed-by=mnist-operator"}
