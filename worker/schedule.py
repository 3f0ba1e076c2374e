"""When rules fire: cron schedules in each organization's timezone, as UTC instants."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from croniter import croniter

from engine.model import DEFAULT_SCHEDULE


@dataclass(frozen=True)
class ScheduledRule:
    """An enabled rule as beat sees it: its schedule, its organization's timezone, and when it was created."""

    rule_id: str
    schedule: str
    timezone: str
    not_before: datetime

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ScheduledRule:
        """Reads a `schedulable_rules` row; a rule without a schedule fires on the default one."""
        conditions = row["conditions"] if isinstance(row["conditions"], dict) else {}
        schedule = conditions.get("schedule") if "logic" in conditions else None
        created = row["created_at"] or datetime(1970, 1, 1)
        return cls(row["rule_id"], schedule if isinstance(schedule, str) else DEFAULT_SCHEDULE,
                   row["timezone"] or "UTC", created.replace(tzinfo=UTC))


def latest_fire_time(rule: ScheduledRule, now: datetime) -> datetime | None:
    """The last instant at or before `now` (aware) when the rule's cron fires in its timezone, in UTC, or None.

    Times before the rule existed do not count. At a DST change croniter works in local wall time: a time that
    the clocks skip fires at the first instant after the gap, and a repeated hour fires once.
    """
    zone = ZoneInfo(rule.timezone)
    local_now = now.astimezone(zone).replace(microsecond=0)
    times = croniter(rule.schedule, local_now + timedelta(seconds=1))
    fired = times.get_prev(datetime).astimezone(UTC)
    not_before = rule.not_before.replace(second=0, microsecond=0)
    return fired if fired >= not_before else None


def next_fire_time(rule: ScheduledRule, now: datetime) -> datetime:
    """The first instant after `now` (aware) when the rule's cron fires in its timezone, in UTC."""
    zone = ZoneInfo(rule.timezone)
    return croniter(rule.schedule, now.astimezone(zone)).get_next(datetime).astimezone(UTC)
