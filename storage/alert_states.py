"""`alert_states` and `alert_state_history`: the lifecycle state of each (rule, entity) and every change of it.

A state row only moves forward in time: a run as of a fire time at or before the one that last wrote the row
leaves it alone, so runs finishing out of order never undo a later state. A history row is written exactly when
a state row is written with another state, in the same statement, one per (rule, entity, T).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple, Protocol

from engine.alert_lifecycle import EntityState
from storage.postgres import Postgres, Transaction


class StatedEntity(Protocol):
    """What alert_states keeps of an entity (worker.audience.Entity is one)."""

    entity_type: str
    entity_id: str
    entity_name: str
    condition_details: str
    dsp_type: str
    advertiser_id: str


class StoredState(NamedTuple):
    """An entity's state row: the entity as last written (its name, details, …), its state and streak, the hash of
    the conditions they were reached under, and the fire time (naive, UTC) that last wrote it. A tuple: a run of a
    rule firing on thousands of entities reads one per entity."""

    entity_type: str
    entity_id: str
    entity_name: str
    condition_details: str
    dsp_type: str
    advertiser_id: str
    state: EntityState
    conditions_hash: str
    evaluated_at: datetime


class StateWrite(NamedTuple):
    """What one run writes of one entity of its rule: the entity (as PostgreSQL stores it), the state it was in
    (as the run read it) and the state it is in now. A tuple: a rule's first run writes one per matched entity."""

    rule_id: str
    run_id: str
    conditions_hash: str
    entity: StatedEntity
    before: str
    after: EntityState


class AlertStateStore:
    """Reads and writes the lifecycle states of rules' entities."""

    def __init__(self, postgres: Postgres) -> None:
        self._postgres = postgres

    def not_normal(self, rule_ids: Sequence[str]) -> dict[str, list[StoredState]]:
        """For each of the rules, every entity whose row is not normal, in one query."""
        found: dict[str, list[StoredState]] = {rule_id: [] for rule_id in rule_ids}
        if not rule_ids:
            return found
        # The few (state, streak) pairs there are, each made once.
        states: dict[tuple[str, int], EntityState] = {}
        for (rule_id, entity_type, entity_id, entity_name, dsp_type, advertiser_id, condition_details, state, streak,
             conditions_hash, evaluated_at) in self._postgres.row_tuples("alert_states_not_normal",
                                                                        rule_ids=list(rule_ids)):
            entity_state = states.get((state, streak))
            if entity_state is None:
                entity_state = states[(state, streak)] = EntityState(state, streak)
            found[rule_id].append(StoredState(entity_type, entity_id, entity_name, condition_details or "", dsp_type,
                                              advertiser_id, entity_state, conditions_hash, evaluated_at))
        return found

    def write(self, tx: Transaction, org_id: int, at: datetime, writes: Sequence[StateWrite]) -> None:
        """Writes in `tx` the rows of `writes` as of `at` (aware, UTC), each with a history row when its state
        changed; a row last written as of `at` or later is left alone, and gets no history row."""
        if not writes:
            return
        tx.execute("write_alert_states", org_id=org_id, at=at.replace(tzinfo=None),
                   rule_ids=[w.rule_id for w in writes], run_ids=[w.run_id for w in writes],
                   hashes=[w.conditions_hash for w in writes],
                   entity_types=[w.entity.entity_type for w in writes],
                   entity_ids=[w.entity.entity_id for w in writes],
                   names=[w.entity.entity_name for w in writes], dsp_types=[w.entity.dsp_type for w in writes],
                   advertiser_ids=[w.entity.advertiser_id for w in writes],
                   details=[w.entity.condition_details or None for w in writes],
                   befores=[w.before for w in writes], afters=[w.after.state for w in writes],
                   streaks=[w.after.streak for w in writes])
