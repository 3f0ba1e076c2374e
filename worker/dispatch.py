"""`rulesctl dispatch`: enqueue every enabled rule due at an instant, exactly as beat does."""

from __future__ import annotations

from datetime import datetime

from engine.timestamps import utc_iso
from worker.context import open_postgres
from worker.schedule import ScheduledRule, latest_fire_time


def dispatch_due(at: datetime) -> list[dict]:
    """Sends rules.evaluate(rule_id, scheduled_for=T) for each enabled rule whose cron fires at the minute of `at`.

    Returns one {"rule_id", "scheduled_for", "task_id"} per task sent.
    """
    from worker.tasks import evaluate

    with open_postgres() as postgres:
        rules = [ScheduledRule.from_row(row) for row in postgres.all("schedulable_rules")]
    minute = at.replace(second=0, microsecond=0)
    sent = []
    for rule in rules:
        due = latest_fire_time(rule, at)
        if due is not None and due == minute:
            scheduled_for = utc_iso(due)
            task = evaluate.apply_async(args=(rule.rule_id,), kwargs={"scheduled_for": scheduled_for})
            sent.append({"rule_id": rule.rule_id, "scheduled_for": scheduled_for, "task_id": task.id})
    return sent
