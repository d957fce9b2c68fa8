"""The canary strategy's state machine (spec.rollout.strategy: Canary). Pure: no client, no clock.

A new `modelVersion` runs in a second Deployment, `<name>-canary`, beside the stable one, which is
not touched until promotion. Its pods carry the model's selector labels, so the one Service sends
them a share of the requests in proportion to the ready pods (an approximate split by replica
ratio; status.canary.trafficWeight says what the ratio gives). Each step: the canary is scaled
for the step's weight, its pods become ready (the step's window starts then), the pause passes,
and its metrics over the window are judged against the stable version's (analysis.py). Pass:
the next step, or, after the last, promotion (the stable Deployment rolls to the new version,
then the canary goes). Fail: rollback at once (the canary goes; the stable one never changed).
No verdict (too few requests, Prometheus unreachable): the canary pauses with the reason and the
window keeps growing until there is one.

The whole state is status.canary (phase, step, when the step's window started), so an operator
that restarts mid-canary resumes the same step and judges the same window: nothing is counted
twice. Nothing is ever written to the spec, so Argo CD's self-heal has nothing to undo.

By hand, and GitOps-friendly (an annotation can be committed with the version it names, and a
stale one does nothing): `aidevsecops.dev/canary-promote: "<version>"` promotes and
`aidevsecops.dev/canary-abort: "<version>"` aborts the canary of that version. Reverting
modelVersion to the stable version in git also ends the canary (Aborted).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from mnist_operator import api
from mnist_operator.analysis import Result, Verdict
from mnist_operator.conditions import EventReason, Reason
from mnist_operator.spec import Canary

SUFFIX = api.CANARY_SUFFIX
PROMOTE_ANNOTATION = f"{api.GROUP}/canary-promote"
ABORT_ANNOTATION = f"{api.GROUP}/canary-abort"
_SPLIT_BY = {"Route": "the Route", "Replicas": "ready pods"}
# How often a paused canary (no verdict yet) asks again.
RETRY_SECONDS = 10.0


class Phase(StrEnum):
    PROGRESSING = "Progressing"
    PAUSED = "Paused"
    PROMOTED = "Promoted"
    ROLLED_BACK = "RolledBack"
    ABORTED = "Aborted"


ACTIVE = (Phase.PROGRESSING, Phase.PAUSED)
ENDED = (Phase.ROLLED_BACK, Phase.ABORTED)


def canary_name(model: str) -> str:
    return model + SUFFIX


def parse_time(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


def format_time(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def canary_replicas(weight: int, stable: int) -> int:
    """Canary pods for `weight` percent beside `stable` stable pods: the nearest ratio, at least one."""
    if stable <= 0:
        return 1
    return max(1, round(weight * stable / (100 - weight)))


def traffic_weight(canary: int, stable: int) -> int:
    """The percent of the requests the canary's pods get from the Service (ready pods alike)."""
    total = canary + stable
    return round(100 * canary / total) if total else 0


@dataclass(frozen=True)
class State:
    """status.canary, read and written as a plain mapping."""

    phase: Phase
    version: str
    stable_version: str
    step: int  # 1-based
    steps: int
    weight: int
    traffic_weight: int = 0
    traffic_split: str = "Replicas"  # or Route
    step_started_at: float | None = None
    analyzed_at: float | None = None
    reason: str = ""
    message: str = ""
    checks: tuple[Mapping[str, Any], ...] = ()

    @classmethod
    def from_status(cls, raw: Any) -> State | None:
        if not isinstance(raw, Mapping):
            return None
        try:
            return cls(
                phase=Phase(str(raw.get("phase"))),
                version=str(raw["version"]),
                stable_version=str(raw.get("stableVersion") or ""),
                step=int(raw.get("step") or 1),
                steps=int(raw.get("steps") or 1),
                weight=int(raw.get("weight") or 0),
                traffic_weight=int(raw.get("trafficWeight") or 0),
                traffic_split=str(raw.get("trafficSplit") or "Replicas"),
                step_started_at=parse_time(raw.get("stepStartedAt")),
                analyzed_at=parse_time(raw.get("analyzedAt")),
                reason=str(raw.get("reason") or ""),
                message=str(raw.get("message") or ""),
                checks=tuple(raw.get("checks") or ()),
            )
        except (KeyError, ValueError, TypeError):
            return None

    def as_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "phase": str(self.phase),
            "version": self.version,
            "stableVersion": self.stable_version,
            "step": self.step,
            "steps": self.steps,
            "weight": self.weight,
            "trafficWeight": self.traffic_weight,
            "trafficSplit": self.traffic_split,
            "reason": str(self.reason),
            "message": self.message,
        }
        if self.step_started_at is not None:
            out["stepStartedAt"] = format_time(self.step_started_at)
        if self.analyzed_at is not None:
            out["analyzedAt"] = format_time(self.analyzed_at)
        if self.checks:
            out["checks"] = [dict(c) for c in self.checks]
        return out

    def replace(self, **changes: Any) -> State:
        values = {f: getattr(self, f) for f in self.__dataclass_fields__}
        values.update(changes)
        return State(**values)


# Every field of status.canary (as_status leaves out those without a value).
STATUS_FIELDS = (
    "phase",
    "version",
    "stableVersion",
    "step",
    "steps",
    "weight",
    "trafficWeight",
    "trafficSplit",
    "stepStartedAt",
    "analyzedAt",
    "reason",
    "message",
    "checks",
)


def start(canary: Canary, version: str, stable_version: str) -> State:
    first = canary.steps[0]
    return State(
        Phase.PROGRESSING,
        version,
        stable_version,
        1,
        len(canary.steps),
        first.weight,
        reason=Reason.CANARY_PROGRESSING,
        message=f"step 1 of {len(canary.steps)}: waiting for the canary's pods of version {version}",
    )


def manual_action(annotations: Mapping[str, str], version: str) -> Phase | None:
    """A promote or abort asked by hand for this version (abort wins if both are)."""
    if annotations.get(ABORT_ANNOTATION) == version:
        return Phase.ABORTED
    if annotations.get(PROMOTE_ANNOTATION) == version:
        return Phase.PROMOTED
    return None


@dataclass(frozen=True)
class Step:
    """What to do now for an active canary, before any analysis."""

    state: State
    # Seconds until the step's pause is over and its window is judged (0: judge now; None: not
    # yet started, waiting for the canary's pods).
    due_in: float | None
    window: int = 0


def tick(state: State, canary: Canary, *, ready: bool, now: float) -> Step:
    """Start the step's window once the canary's pods are ready; say when it is due."""
    step = canary.steps[min(state.step, len(canary.steps)) - 1]
    if state.step_started_at is None:
        if not ready:
            return Step(state, None)
        state = state.replace(
            step_started_at=now,
            message=(
                f"step {state.step} of {state.steps}: {state.weight} % of the traffic asked, "
                f"{state.traffic_weight} % by {_SPLIT_BY.get(state.traffic_split, 'ready pods')}, "
                f"for {step.pause_seconds} s"
            ),
        )
    assert state.step_started_at is not None
    elapsed = now - state.step_started_at
    return Step(state, max(step.pause_seconds - elapsed, 0.0), max(math.floor(elapsed), 1))


@dataclass(frozen=True)
class Outcome:
    state: State
    # Events worth posting for this transition: (type, reason, message).
    events: tuple[tuple[str, str, str], ...] = field(default_factory=tuple)


def after_verdict(state: State, canary: Canary, verdict: Verdict, now: float) -> Outcome:
    checks = tuple(c.as_status() for c in verdict.checks)
    judged = state.replace(analyzed_at=now, checks=checks)
    if verdict.result is Result.FAIL:
        message = (
            f"version {state.version} rolled back at step {state.step} ({state.weight} %): {verdict.summary}"
        )
        return Outcome(
            judged.replace(phase=Phase.ROLLED_BACK, reason=Reason.CANARY_ROLLED_BACK, message=message),
            (("Warning", Reason.CANARY_ROLLED_BACK, message),),
        )
    if verdict.result is Result.INCONCLUSIVE:
        message = (
            f"step {state.step} of {state.steps} ({state.weight} %) has no verdict yet: {verdict.summary}"
        )
        return Outcome(judged.replace(phase=Phase.PAUSED, reason=Reason.CANARY_PAUSED, message=message))
    passed = f"step {state.step} of {state.steps} ({state.weight} %) passed: {verdict.summary}"
    if state.step >= len(canary.steps):
        message = f"version {state.version} promoted after {state.steps} steps; {passed}"
        return Outcome(
            judged.replace(phase=Phase.PROMOTED, reason=Reason.CANARY_PROMOTED, message=message),
            (("Normal", Reason.CANARY_PROMOTED, message),),
        )
    following = canary.steps[state.step]
    return Outcome(
        judged.replace(
            phase=Phase.PROGRESSING,
            step=state.step + 1,
            weight=following.weight,
            step_started_at=None,
            reason=Reason.CANARY_PROGRESSING,
            message=f"{passed}; step {state.step + 1}: {following.weight} %",
        ),
        (("Normal", EventReason.CANARY_STEP_PASSED, passed),),
    )


def unreachable(state: State, message: str, now: float) -> State:
    return state.replace(
        phase=Phase.PAUSED,
        reason=Reason.CANARY_PAUSED,
        analyzed_at=now,
        message=f"step {state.step} of {state.steps} ({state.weight} %) has no verdict: {message}",
    )
