"""Storm protection (the README's "Storm protection"): whether a run matched so much that it is an incident, not a
list of problems, and how its incident notice orders the entities it shows. Pure functions of their arguments.

A run is a storm when it matched more than the rule's `max_alerts` entities, or more than `max_alert_share` of the
entities it evaluated. The share counts only once more than SHARE_FLOOR entities matched: a notice of that many
entities lists them all, so a rule matching 2 of its 3 campaigns is not a storm.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# A storm's incident notice lists this many entities; below it, the share of entities matched never makes a storm.
STORM_LISTED_ENTITIES = 20
SHARE_FLOOR = STORM_LISTED_ENTITIES


@dataclass(frozen=True)
class Storm:
    """Why a run is a storm: its counts against the rule's limits."""

    entities: int
    matched: int
    max_alerts: int
    max_alert_share: float

    @property
    def reason(self) -> str:
        """The storm in words: `140 of 150 entities matched, more than max_alerts (100)`."""
        limits = []
        if self.matched > self.max_alerts:
            limits.append(f"max_alerts ({self.max_alerts:,})")
        if _over_share(self.entities, self.matched, self.max_alert_share):
            limits.append(f"max_alert_share ({self.max_alert_share:g} of the entities evaluated)")
        return f"{self.matched:,} of {self.entities:,} entities matched, more than " + " and ".join(limits)


def storm_of(entities: int, matched: int, max_alerts: int, max_alert_share: float) -> Storm | None:
    """The storm a run that evaluated `entities` and matched `matched` of them is, under the rule's `max_alerts`
    and `max_alert_share`; None when it is not one."""
    if matched > max_alerts or _over_share(entities, matched, max_alert_share):
        return Storm(entities, matched, max_alerts, max_alert_share)
    return None


def _over_share(entities: int, matched: int, max_alert_share: float) -> bool:
    return matched > SHARE_FLOOR and matched > max_alert_share * entities


def storm_order(records: Sequence[Mapping[str, Any]], variable: str | None) -> list[Mapping[str, Any]]:
    """Entity records (messages' form, with `values`) in the order an incident notice lists them: by `variable`,
    numbers highest first, then text in ascending order, then the entities without a value for it; ties by
    entity id. Without a variable, by entity id."""

    def key(record: Mapping[str, Any]) -> tuple:
        value = record["values"].get(variable) if variable is not None else None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
            return 0, -value, "", record["entity_id"]
        if isinstance(value, str):
            return 1, 0, value, record["entity_id"]
        return 2, 0, "", record["entity_id"]

    return sorted(records, key=key)
