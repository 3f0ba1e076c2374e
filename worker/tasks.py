"""The Celery tasks of the contract (§3): rules.evaluate, rules.evaluate_org, notifications.deliver."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from celery import Task

from storage.errors import DatabaseUnavailable
from worker.app import app
from worker.context import open_postgres, shared_postgres, shared_runner
from worker.deliveries import deliver as send_delivery
from worker.retry import RetryPolicy
from worker.runner import BadRunRequest, RuleNotFound, RunRequest
from worker.settings import settings

log = logging.getLogger(__name__)

# A server that is down is waited for; a request that is wrong never gets better.
RUN_RETRY = RetryPolicy(max_attempts=8, backoff_min=5, backoff_max=120, never_retry=(RuleNotFound, BadRunRequest))
# A run held by another worker is waited for until its lease expires and it can be taken over.
HELD_RUN_RETRY = RetryPolicy(max_attempts=12, backoff_min=15, backoff_max=60)


def _parse_time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


@app.task(name="rules.evaluate", bind=True, max_retries=None)  # the retry policies below set the bounds
def evaluate(self: Task, rule_id: str, scheduled_for: str | None = None, dry_run: bool = False,
             triggered_by: int | None = None, trigger: str | None = None) -> dict[str, Any] | None:
    """Runs one rule as of `scheduled_for` (UTC ISO 8601; None: now) and returns the run summary.

    `trigger` defaults to "schedule" for a fire time sent without a user (beat, dispatch), else "manual".
    A second task for the same (rule, T) returns the first run's summary. A deleted rule, or a scheduled run of a
    rule disabled since it was sent, does nothing (None).
    """
    trigger = trigger or ("schedule" if scheduled_for and triggered_by is None and not dry_run else "manual")
    request = RunRequest(rule_id, _parse_time(scheduled_for), dry_run=dry_run, trigger=trigger,
                         triggered_by=triggered_by)
    attempts = self.request.retries + 1
    try:
        result = shared_runner().run(request)
    except RuleNotFound as error:
        log.info("%s; nothing to do", error)
        return None
    except BadRunRequest as error:
        return {"rule_id": rule_id, "status": "failed", "error": str(error)}
    except DatabaseUnavailable as error:
        if not RUN_RETRY.should_retry(error, attempts):
            raise
        raise self.retry(exc=error, countdown=RUN_RETRY.delay(attempts), max_retries=None) from None
    if result["status"] == "running" and HELD_RUN_RETRY.allows(attempts):
        raise self.retry(countdown=HELD_RUN_RETRY.delay(attempts), max_retries=None)
    return result


@app.task(name="rules.evaluate_org")
def evaluate_org(org_id: int) -> list[str]:
    """Enqueues rules.evaluate (as of now) for each enabled rule of the organization; returns their rule ids."""
    with open_postgres() as postgres:
        rule_ids = [row["rule_id"] for row in postgres.all("enabled_rules_of_organization", org_id=org_id)]
    for rule_id in rule_ids:
        evaluate.delay(rule_id)
    return rule_ids


@app.task(name="notifications.deliver", bind=True, max_retries=None)  # delivery_retry(settings) sets the bounds
def deliver(self: Task, delivery_id: int) -> dict[str, Any] | None:
    """Sends one delivery if it is due and not sent yet; a failed send is retried with backoff, then `failed`.

    Returns {"delivery_id", "status", "error"} of the attempt made, or None when there was nothing to do.
    """
    outcome = send_delivery(shared_postgres(), delivery_id, settings())
    if outcome is None:
        return None
    if outcome.retry_in is not None:
        raise self.retry(countdown=outcome.retry_in, max_retries=None)
    return {"delivery_id": delivery_id, "status": outcome.status, "error": outcome.error}
