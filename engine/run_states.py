"""The states of one rule run and the transitions allowed between them.

    claimed ──► compiled ──► evaluated ──► alerted ──► succeeded
       │  ▲         │            │            │
       │  │         └────────────┴────────────┴──► failed
       ▼  │
    waiting ◄──┐ (checked again)
       └───────┘
    claimed, waiting ──► skipped | failed

A run that dies keeps its last state; whoever takes it over resumes from there. `waiting` means its window's data
is incomplete (engine.freshness): it keeps its claim and is checked again later, until it goes on (`compiled`)
or is skipped. `evaluated` means the `rule_evaluations` rows are all written, `alerted` that the `alert_events`
rows are.
"""

from __future__ import annotations

from enum import Enum


class RunState(str, Enum):
    """Where a run is; stored in `rule_runs.state`, each change appended to `rule_runs.transitions`."""

    CLAIMED = "claimed"
    WAITING = "waiting"
    COMPILED = "compiled"
    EVALUATED = "evaluated"
    ALERTED = "alerted"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"

    @property
    def status(self) -> str:
        """The run's `status`: `waiting` while waiting, running until a final state, then the final state's name."""
        return self.value if self in FINAL_STATES or self is RunState.WAITING else "running"


FINAL_STATES = frozenset({RunState.SUCCEEDED, RunState.FAILED, RunState.SKIPPED})

ALLOWED = {
    RunState.CLAIMED: frozenset({RunState.WAITING, RunState.COMPILED, RunState.SKIPPED, RunState.FAILED}),
    RunState.WAITING: frozenset({RunState.WAITING, RunState.COMPILED, RunState.SKIPPED, RunState.FAILED}),
    RunState.COMPILED: frozenset({RunState.EVALUATED, RunState.FAILED}),
    RunState.EVALUATED: frozenset({RunState.ALERTED, RunState.SUCCEEDED, RunState.FAILED}),
    RunState.ALERTED: frozenset({RunState.SUCCEEDED, RunState.FAILED}),
    RunState.SUCCEEDED: frozenset(),
    RunState.FAILED: frozenset(),
    RunState.SKIPPED: frozenset(),
}


class IllegalTransition(Exception):
    """A run was asked to move between two states that the machine does not connect."""


def check_transition(current: RunState, target: RunState) -> None:
    """Returns when `current -> target` is allowed; raises IllegalTransition otherwise."""
    if target not in ALLOWED[current]:
        raise IllegalTransition(f"a run cannot go from {current.value} to {target.value}")


def reached(current: RunState, milestone: RunState) -> bool:
    """True when a run in `current` has already passed `milestone` on the way to success."""
    order = [RunState.CLAIMED, RunState.COMPILED, RunState.EVALUATED, RunState.ALERTED, RunState.SUCCEEDED]
    return current in order and order.index(current) >= order.index(milestone)
