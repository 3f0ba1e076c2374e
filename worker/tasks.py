"""The Celery tasks: rules.evaluate, rules.evaluate_batch, rules.evaluate_org, notifications.deliver,
silences.add, alerts.acknowledge (README "The service", "Silences and acknowledgements")."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded

from storage.errors import DatabaseUnavailable
from worker.app import app
from worker.batch_runner import BatchRequest
from storage.results import ResultStore
from worker.context import shared_batch_runner, shared_clickhouse, shared_postgres, shared_runner
from worker.deliveries import deliver as send_delivery
from worker.retry import RetryPolicy, retry_later, retrying
from worker.runner import BadRunRequest, RuleNotFound, RunRequest, RunWaiting, bad_request_answer
from worker.schedule import MANUAL, FireTimeSender, load_rules
from worker.settings import settings
from worker.silencing import acknowledge, add_silence, silence_request

log = logging.getLogger(__name__)

# A server that is down, or hung past the time limit before the claim, is waited for; anything else is final.
RUN_RETRY = RetryPolicy(max_attempts=8, backoff_min=5, backoff_max=120,
                        retry_on=(DatabaseUnavailable, SoftTimeLimitExceeded))
# A run held by another worker is waited for until its lease expires and it can be taken over.
HELD_RUN_RETRY = RetryPolicy(max_attempts=12, backoff_min=15, backoff_max=60)


def _parse_time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


@app.task(name="rules.evaluate", bind=True, max_retries=None)  # the retry policies above set the bounds
def evaluate(self: Task, rule_id: str, scheduled_for: str | None = None, dry_run: bool = False,
             triggered_by: int | None = None, trigger: str | None = None) -> dict[str, Any] | None:
    """Runs one rule as of `scheduled_for` (UTC ISO 8601; None: now) and returns the run summary.

    `trigger` defaults to "schedule" for a fire time sent without a user (beat, dispatch), else "manual".
    A second task for the same (rule, T) returns the first run's summary. A deleted rule, or a scheduled run of a
    rule disabled since it was sent, does nothing (None). A server down or hung before the claim is retried
    (RUN_RETRY); a run held by another worker is waited for (HELD_RUN_RETRY). A run waiting for its data is
    retried at its next check, until it goes on or is skipped (README "Data freshness").
    """
    trigger = trigger or ("schedule" if scheduled_for and triggered_by is None and not dry_run else "manual")
    request = RunRequest(rule_id, _parse_time(scheduled_for), dry_run=dry_run, trigger=trigger,
                         triggered_by=triggered_by)
    try:
        with retrying(self, RUN_RETRY):
            result = shared_runner().run(request)
    except RuleNotFound as error:
        log.info("%s; nothing to do", error)
        return None
    except BadRunRequest as error:
        return bad_request_answer(rule_id, error)
    except RunWaiting as waiting:
        log.info("%s; checked again in %d s", waiting, waiting.check_in)
        raise self.retry(countdown=waiting.check_in, max_retries=None) from None
    if result["status"] == "running" and (retry := retry_later(self, HELD_RUN_RETRY)) is not None:
        raise retry
    return result


@app.task(name="rules.evaluate_batch", bind=True, max_retries=None)  # the retry policies above set the bounds
def evaluate_batch(self: Task, org_id: int, scheduled_for: str, rule_ids: list[str],
                   trigger: str = "schedule") -> list[dict[str, Any] | None]:
    """Runs the rules `rule_ids` of organization `org_id` due at `scheduled_for` (UTC ISO 8601) and returns one
    summary per rule, in their order: what rules.evaluate returns for that rule and T (None for a deleted rule, or
    a scheduled run of a rule disabled since it was sent).

    Each rule keeps its own claim: a redelivered task, or a rule another run owns, writes nothing twice. A server
    down or hung before the claims is retried (RUN_RETRY); a rule held by another worker is waited for
    (HELD_RUN_RETRY). A rule that must wait for its data leaves the batch: its summary says `waiting`, and its
    next check is sent as rules.evaluate.
    """
    request = BatchRequest(org_id, _parse_time(scheduled_for), tuple(rule_ids), trigger)
    with retrying(self, RUN_RETRY):
        summaries = shared_batch_runner().run_batch(request)
    held = any(summary is not None and summary["status"] == "running" for summary in summaries)
    if held and (retry := retry_later(self, HELD_RUN_RETRY)) is not None:
        raise retry
    return summaries


@app.task(name="rules.evaluate_org", bind=True, max_retries=None)
def evaluate_org(self: Task, org_id: int) -> list[str]:
    """Enqueues every enabled rule of the organization, valid or not, as of now (a manual run), recorded as sent
    fire times: its valid rules in batches (rules.evaluate_batch with trigger="manual"), each rule that is not valid
    alone (rules.evaluate). Returns their rule ids."""
    now = datetime.now(UTC).replace(microsecond=0)
    postgres = shared_postgres()
    with retrying(self, RUN_RETRY):
        rules = load_rules(postgres, settings().notify_allowed_hosts, org_id=org_id)
    # A task the broker refuses is logged; its recorded fire times are sent again by beat's sweeper.
    FireTimeSender(postgres, lambda name, args, kwargs: app.send_task(name, args=args, kwargs=kwargs).id).send(
        [rule.fire_time(now, MANUAL) for rule in rules])
    return [rule.rule_id for rule in rules]


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


@app.task(name="silences.add", bind=True, max_retries=None)  # RUN_RETRY sets the bounds
def add_silence_task(self: Task, org_id: int, created_by: int, rule_id: str | None = None,
                     entity_type: str | None = None, entity_id: str | None = None, dsp_type: str | None = None,
                     advertiser_id: str | None = None, starts_at: str | None = None, ends_at: str | None = None,
                     duration: str | None = None, comment: str | None = None) -> dict[str, Any]:
    """Creates a silence (README "Silences and acknowledgements") and returns it as a JSON-able dict.

    Times are ISO 8601 (without an offset: UTC), `starts_at` now by default; give `ends_at` or `duration`
    (`30m`, `2h`, `1d`, `1w`). Bad fields raise BadSilenceRequest, a user who may not, SilenceRefused, both
    writing nothing. A redelivered task returns the silence it created. PostgreSQL down is retried (RUN_RETRY).
    """
    request = silence_request(org_id, created_by, rule_id=rule_id, entity_type=entity_type, entity_id=entity_id,
                              dsp_type=dsp_type, advertiser_id=advertiser_id, starts_at=starts_at, ends_at=ends_at,
                              duration=duration, comment=comment, request_id=self.request.id)
    with retrying(self, RUN_RETRY):
        silence = add_silence(shared_postgres(), request)
    return silence.to_dict(datetime.now(UTC))


@app.task(name="alerts.acknowledge", bind=True, max_retries=None)  # RUN_RETRY sets the bounds
def acknowledge_task(self: Task, rule_id: str, entity_type: str, entity_id: str, created_by: int,
                     comment: str | None = None) -> dict[str, Any]:
    """Acknowledges the firing (rule, entity) for user `created_by` (README "Silences and acknowledgements") and
    returns the acknowledgement as a JSON-able dict.

    Bad fields, an entity that is not firing or is acknowledged already raise BadSilenceRequest, a user who may
    not, SilenceRefused, both writing nothing. A redelivered task returns the acknowledgement it created. A server
    down is retried (RUN_RETRY).
    """
    with retrying(self, RUN_RETRY):
        acknowledgement = acknowledge(shared_postgres(), ResultStore(shared_clickhouse()), rule_id, entity_type,
                                      entity_id, created_by, comment, request_id=self.request.id)
    return acknowledgement.to_dict()
