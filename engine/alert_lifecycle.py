"""The alert lifecycle of one (rule, entity): normal -> pending -> firing -> recovering -> normal (README, Alert
lifecycle). Pure: the next state from the current one and what one run found.

A matching run moves a normal entity to pending, or straight to firing when the rule's `pending_runs` is 1; a
pending entity fires at its `pending_runs`-th matching run in a row. A firing entity that stops matching is
recovering; it resolves (normal again) after `recovery_runs` recovered runs in a row, a recovered run being one
that does not match and in which `recover_when`, if the rule has one, holds. A recovering entity that matches is
firing again; a pending entity that stops matching is normal again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

NORMAL = "normal"
PENDING = "pending"
FIRING = "firing"
RECOVERING = "recovering"
# The states in which an entity has alerted and not yet resolved.
ALERTED_STATES = (FIRING, RECOVERING)


@dataclass(frozen=True)
class EntityState:
    """A state and its streak: the matching runs in a row (pending) or the recovered runs in a row (recovering)."""

    state: str
    streak: int = 0


UNSEEN = EntityState(NORMAL)
# The states without a streak, made once: they are given to every matched entity of every run.
FIRING_STATE = EntityState(FIRING)
_RECOVERING = EntityState(RECOVERING)


def next_state(current: EntityState, matched: bool, recovered: bool, pending_runs: int,
               recovery_runs: int) -> EntityState:
    """The state after one run that `matched` the entity or not; `recovered` says whether the rule's recover_when
    holds for it (True when the rule has none, or the entity was not evaluated)."""
    if matched:
        if current.state in ALERTED_STATES:
            return FIRING_STATE
        streak = (current.streak if current.state == PENDING else 0) + 1
        return FIRING_STATE if streak >= pending_runs else EntityState(PENDING, streak)
    if current.state not in ALERTED_STATES:
        return UNSEEN
    if not recovered:
        return _RECOVERING
    streak = (current.streak if current.state == RECOVERING else 0) + 1
    return UNSEEN if streak >= recovery_runs else EntityState(RECOVERING, streak)


def resolves(before: EntityState, after: EntityState) -> bool:
    """Whether the move from `before` to `after` resolves an entity that had alerted."""
    return before.state in ALERTED_STATES and after.state == NORMAL


def conditions_hash(conditions: Any, recover_when: Any) -> str:
    """A hash of what decides a rule's matches, its conditions document and its recover_when: a state reached
    under another hash is void (the entity is normal)."""
    canonical = json.dumps([conditions, recover_when], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]

