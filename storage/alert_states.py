"""`alert_states`: whether each (rule, entity) is firing, so that a rule with notify_on_resolve can say when an
entity stops matching. A row only moves forward in time: a fire time earlier than the one it records leaves it
alone, so runs finishing out of order never undo a later state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from storage.postgres import Postgres, Transaction


class StatedEntity(Protocol):
    """What alert_states keeps of an entity (worker.audience.Entity is one)."""

    entity_type: str
    entity_id: str
    entity_name: str
    condition_details: str
    dsp_type: str
    advertiser_id: str


@dataclass(frozen=True)
class FiringEntity:
    """An entity firing for a rule: as it was when last alerted, and the fire time (naive, UTC) that said so."""

    entity_type: str
    entity_id: str
    entity_name: str
    condition_details: str
    dsp_type: str
    advertiser_id: str
    evaluated_at: datetime


class AlertStateStore:
    """Reads and moves the firing state of a rule's entities."""

    def __init__(self, postgres: Postgres) -> None:
        self._postgres = postgres

    def firing(self, rule_id: str) -> list[FiringEntity]:
        """Every entity firing for the rule, whatever fire time set it."""
        return [FiringEntity(row["entity_type"], row["entity_id"], row["entity_name"], row["condition_details"] or "",
                             row["dsp_type"], row["advertiser_id"], row["evaluated_at"])
                for row in self._postgres.all("firing_entities", rule_id=rule_id)]

    def mark_firing(self, tx: Transaction, rule_id: str, org_id: int, at: datetime,
                    entities: Sequence[StatedEntity]) -> None:
        """Records in `tx` that `entities` fire as of `at` (aware, UTC), with their names and details."""
        if not entities:
            return
        tx.execute("mark_firing", rule_id=rule_id, org_id=org_id, at=at.replace(tzinfo=None),
                   entity_types=[e.entity_type for e in entities], entity_ids=[e.entity_id for e in entities],
                   names=[e.entity_name for e in entities], dsp_types=[e.dsp_type for e in entities],
                   advertiser_ids=[e.advertiser_id for e in entities],
                   details=[e.condition_details for e in entities])

    def mark_resolved(self, tx: Transaction, rule_id: str, at: datetime, entities: Sequence[StatedEntity]) -> None:
        """Records in `tx` that `entities`, firing before `at` (aware, UTC), no longer do."""
        if not entities:
            return
        tx.execute("mark_resolved", rule_id=rule_id, at=at.replace(tzinfo=None),
                   entity_types=[e.entity_type for e in entities], entity_ids=[e.entity_id for e in entities])
