"""`rulesctl dispatch`: enqueue every enabled rule due at an instant, exactly as beat does."""

from __future__ import annotations

from datetime import datetime

from engine.timestamps import utc_iso
from worker.context import open_postgres
from worker.errors import CommandFailed
from worker.schedule import FireTimeSender, fire_time_at, load_rules, report_problem
from worker.settings import settings


def dispatch_due(at: datetime) -> list[dict]:
    """Sends, as beat does, each enabled rule whose cron fires at the minute of `at`: the valid ones as
    rules.evaluate_batch, one task per organization and source (and at most MAX_BATCH_RULES rules), each rule that
    is not valid alone as rules.evaluate, with the one failed run of each rule that has no fire times; logs one line
    for each rule that is not valid.

    Returns one {"rule_id", "scheduled_for", "task", "task_id"} per rule sent, in rule id order: `task` is the name
    of the task that carries it, and the rules of one batch share its `task_id`.
    """
    from worker.app import app

    def send_task(name: str, args: tuple, kwargs: dict) -> str:
        return app.send_task(name, args=args, kwargs=kwargs).id

    with open_postgres() as postgres:
        rules = load_rules(postgres, settings().notify_allowed_hosts)
        for rule in rules:
            report_problem(rule, at)
        fires = [fire for fire in (fire_time_at(rule, at) for rule in rules) if fire is not None]
        sent, unsent = FireTimeSender(postgres, send_task).send(fires)
    if unsent:
        raise CommandFailed(f"the broker refused {len(unsent)} of the {len(fires)} rules due; beat's sweeper sends "
                            "them again later")
    return [{"rule_id": fire.rule_id, "scheduled_for": utc_iso(fire.scheduled_for), "task": fire.task_name,
             "task_id": task_id} for fire, task_id in sorted(sent, key=lambda pair: pair[0].rule_id)]
