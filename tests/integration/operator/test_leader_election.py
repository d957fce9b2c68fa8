"""No single point of failure: two `mnist-operator` processes against the real control plane, one
Lease (coordination.k8s.io, the default timing: 15 s duration, 10 s renew deadline, 2 s retry).

- SIGKILLed, the leader is replaced within lease duration + retry period, and a change made at
  that moment is carried out by the new leader;
- frozen (SIGSTOP: a leader cut off from the API server), the leader stops writing at its renew
  deadline, the standby takes over, and the old leader, thawed, writes nothing more: in the
  audit log (which names each process in its user agent) the writes of the two never overlap;
- stopped gracefully, the leader releases the Lease and the standby takes over within ~2 s.
"""

from __future__ import annotations

import signal
import time
from datetime import UTC, datetime
from typing import Any

from operator_support import Kube, OperatorProcess, StartOperator, mnist_model, wait_for

LEASE_DURATION, RETRY_PERIOD = 15.0, 2.0
# The standby sees the last renewal up to one (jittered) retry period late, and tries again up to
# one after the Lease expired in its eyes; plus a round trip.
FAILOVER_BOUND = LEASE_DURATION + 2 * 1.2 * RETRY_PERIOD + 1.0


def holder(kube: Kube) -> str | None:
    lease = kube.get("lease", "mnist-operator")
    return ((lease or {}).get("spec") or {}).get("holderIdentity")


def two_replicas(kube: Kube, op_start: StartOperator) -> tuple[OperatorProcess, OperatorProcess]:
    """(leader, standby), both running, once one leads."""
    first = op_start(kube.namespace)
    second = op_start(kube.namespace)
    leader = wait_for(lambda: next((p for p in (first, second) if p.leading()), None), "a leader", 30)
    standby = second if leader is first else first
    assert holder(kube) == leader.identity and not standby.leading()
    return leader, standby


def writes_by(kube: Kube, since: datetime) -> list[tuple[datetime, str, str]]:
    """(when, which process, what) of the operators' writes in the namespace, in order."""

    def when(event: dict[str, Any]) -> datetime:
        return datetime.fromisoformat(event["requestReceivedTimestamp"].replace("Z", "+00:00"))

    return sorted(
        (
            when(e),
            e.get("userAgent", ""),
            f"{e['verb']} {e['objectRef'].get('resource')}/{e['objectRef'].get('name')}",
        )
        for e in kube.operator_writes(since)
    )


def test_a_killed_leader_is_replaced_within_the_lease_duration(
    op_kube: Kube, op_start: StartOperator
) -> None:
    leader, standby = two_replicas(op_kube, op_start)
    op_kube.apply(mnist_model("digits"))
    op_kube.wait_ready("digits")
    since = datetime.now(UTC)

    leader.signal(signal.SIGKILL)
    killed = time.monotonic()
    op_kube.kubectl("scale", "mnistmodel", "digits", "--replicas=2")
    wait_for(lambda: holder(op_kube) == standby.identity, "the standby to take the Lease", 30, 0.1)
    took_over = time.monotonic() - killed
    wait_for(
        lambda: (op_kube.get("deployment", "digits") or {}).get("spec", {}).get("replicas") == 2,
        "the new leader to scale the Deployment",
        30,
        0.1,
    )
    carried_out = time.monotonic() - killed
    print(f"failover after SIGKILL: Lease taken in {took_over:.1f} s, change made in {carried_out:.1f} s")
    assert took_over <= FAILOVER_BOUND
    assert carried_out <= FAILOVER_BOUND + 3
    assert standby.leading()
    op_kube.wait_ready("digits")
    assert {agent for _, agent, _ in writes_by(op_kube, since)} == {f"mnist-operator ({standby.identity})"}


def test_a_frozen_leader_stops_writing_before_the_standby_starts(
    op_kube: Kube, op_start: StartOperator
) -> None:
    leader, standby = two_replicas(op_kube, op_start)
    for name in ("a", "b"):
        op_kube.apply(mnist_model(name))
    for name in ("a", "b"):
        op_kube.wait_ready(name)
    since = datetime.now(UTC)

    leader.signal(signal.SIGSTOP)  # cut off: it cannot renew, nor know it
    frozen = time.monotonic()
    wait_for(lambda: holder(op_kube) == standby.identity, "the standby to take the Lease", 30, 0.1)
    took_over = time.monotonic() - frozen
    # While the old leader is frozen, both models change: it will see both events when thawed.
    op_kube.kubectl("scale", "mnistmodel", "a", "--replicas=2")
    op_kube.merge_patch("mnistmodel", "b", {"metadata": {"labels": {"team": "digits"}}})
    leader.signal(signal.SIGCONT)
    wait_for(lambda: not leader.leading(), "the thawed leader to stand by", 15)
    op_kube.kubectl("scale", "mnistmodel", "b", "--replicas=2")
    for name in ("a", "b"):
        op_kube.wait_ready(name)
    time.sleep(3)

    writes = writes_by(op_kube, since)
    old = f"mnist-operator ({leader.identity})"
    new = f"mnist-operator ({standby.identity})"
    assert {agent for _, agent, _ in writes} <= {old, new}
    assert [w for w in writes if w[1] == old] == []  # not one write after it was cut off
    assert any(agent == new for _, agent, _ in writes)
    assert "lost the Lease" in leader.log_tail(400) or "does not hold the Lease" in leader.log_tail(400)
    assert leader.alive() and not leader.leading() and standby.leading()
    print(f"failover after SIGSTOP: Lease taken over in {took_over:.1f} s")
    assert took_over <= FAILOVER_BOUND


def test_a_leader_stopped_gracefully_hands_over_at_once(op_kube: Kube, op_start: StartOperator) -> None:
    leader, standby = two_replicas(op_kube, op_start)
    op_kube.apply(mnist_model("digits"))
    op_kube.wait_ready("digits")

    stopped = time.monotonic()
    leader.stop()  # SIGTERM: it releases the Lease on the way out
    wait_for(standby.leading, "the standby to lead", 15, 0.1)
    handed_over = time.monotonic() - stopped
    print(f"failover after SIGTERM: {handed_over:.1f} s")
    assert handed_over <= 1.2 * RETRY_PERIOD + 2
    op_kube.kubectl("scale", "mnistmodel", "digits", "--replicas=2")
    op_kube.wait_ready("digits")


def refuse_lease_writes(kube: Kube, name: str) -> None:
    """A ValidatingAdmissionPolicy (CEL, in the API server itself) that refuses every write of this
    namespace's Lease: the leader can still reach the API server, and write, but not renew."""
    expression = (
        f"!(object.metadata.namespace == '{kube.namespace}' && object.metadata.name == 'mnist-operator')"
    )
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": ["coordination.k8s.io"],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": ["leases"],
                    }
                ]
            },
            "validations": [{"expression": expression, "message": "the test cut this Lease off"}],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {"policyName": name, "validationActions": ["Deny"]},
    }
    kube.apply(policy)
    kube.apply(binding)


def test_a_leader_that_cannot_renew_stops_writing_at_its_renew_deadline(
    op_kube: Kube, op_start: StartOperator
) -> None:
    leader, standby = two_replicas(op_kube, op_start)
    for name in ("a", "b", "c"):
        op_kube.apply(mnist_model(name))
    for name in ("a", "b", "c"):
        op_kube.wait_ready(name)
    policy = f"cut-{op_kube.namespace}"[:63]

    def replicas(name: str) -> int | None:
        return (op_kube.get("deployment", name) or {}).get("spec", {}).get("replicas")

    try:
        refuse_lease_writes(op_kube, policy)
        cut = datetime.now(UTC)
        # Admission policies take effect within a second or so: until its deadline (10 s after its
        # last renewal) the leader still reconciles...
        time.sleep(2)
        op_kube.kubectl("scale", "mnistmodel", "a", "--replicas=2")
        wait_for(lambda: replicas("a") == 2, "the leader to scale a before its deadline", 8, 0.1)
        # ...and then nobody does: the leader has stopped, and the standby cannot take the Lease.
        wait_for(lambda: not leader.leading(), "the leader to stop leading", 15, 0.1)
        stood_by = datetime.now(UTC)
        op_kube.kubectl("scale", "mnistmodel", "b", "--replicas=2")
        time.sleep(8)
        assert replicas("b") == 1
        assert not standby.leading()
        restored = datetime.now(UTC)
    finally:
        op_kube.cluster.kubectl(
            "delete", "validatingadmissionpolicybinding,validatingadmissionpolicy", policy
        )
    wait_for(lambda: replicas("b") == 2, "a leader again, once the Lease may be written", 30, 0.1)

    writes = writes_by(op_kube, cut)
    assert [w for w in writes if stood_by <= w[0] < restored] == []  # nobody led, nobody wrote
    last = max(when for when, _, _ in writes if when < stood_by)
    # The deadline: 10 s after its last renewal, which was at most ~2 s before the cut.
    assert (last - cut).total_seconds() <= 12.5
    assert leader.alive() and standby.alive()
