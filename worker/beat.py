"""The beat scheduler: the enabled rules of PostgreSQL, each sent once per fire time.

`celery -A worker.app beat` uses it without flags (`beat_scheduler`). Every tick re-reads the rules when the last
read is older than RELOAD_SECONDS, so a rule added, edited, disabled or deleted by any means (plain SQL included)
is followed within that time. For each rule, the latest fire time at or before now is sent once as
`rules.evaluate(rule_id, scheduled_for=T)`; after downtime that is the latest missed one only. Beat remembers what
it sent only in memory: a restarted or second beat may send the same (rule, T) again, and the claim in
`rule_runs` makes that a no-op, so exactly-once is PostgreSQL's guarantee, not beat's. Every SWEEP_SECONDS the
sweeper sends again the runs and deliveries whose task was lost (worker/sweeper.py).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

from celery.beat import Scheduler
from engine.timestamps import utc_iso

from storage.errors import StorageError
from storage.postgres import Postgres
from worker.schedule import ScheduledRule, latest_fire_time, next_fire_time
from worker.settings import settings
from worker.sweeper import SWEEP_SECONDS, Sweeper

log = logging.getLogger(__name__)

RELOAD_SECONDS = 30
MAX_SLEEP_SECONDS = 5


class RuleScheduler(Scheduler):
    """A Celery beat scheduler whose entries are the rules in PostgreSQL."""

    def __init__(self, *args, **kwargs) -> None:
        self._rules: list[ScheduledRule] = []
        self._sent: dict[str, datetime] = {}
        self._loaded_at = float("-inf")
        self._swept_at = float("-inf")
        self._postgres: Postgres | None = None
        self._sweeper: Sweeper | None = None
        super().__init__(*args, **kwargs)

    def setup_schedule(self) -> None:
        """No static entries: the schedule is the rules table."""

    def tick(self, *args, **kwargs) -> float:
        """Sends every rule whose latest fire time has not been sent yet, and lost work again; returns the seconds
        to sleep."""
        now = datetime.now(UTC)
        self._reload_if_stale()
        for rule in self._rules:
            due = latest_fire_time(rule, now)
            if due is not None and self._sent.get(rule.rule_id) != due:
                self._send(rule, due)
        self._sweep_if_stale()
        return self._sleep_seconds(now)

    def _database(self) -> Postgres:
        if self._postgres is None:
            self._postgres = Postgres(settings().database_url, max_size=1)
        return self._postgres

    def _reload_if_stale(self) -> None:
        if time.monotonic() - self._loaded_at < RELOAD_SECONDS:
            return
        try:
            rows = self._database().all("schedulable_rules")
        except StorageError as error:
            log.warning("keeping the last known rules: %s", error)
            return
        self._rules = [ScheduledRule.from_row(row) for row in rows]
        known = {rule.rule_id for rule in self._rules}
        self._sent = {rule_id: sent for rule_id, sent in self._sent.items() if rule_id in known}
        self._loaded_at = time.monotonic()

    def _sweep_if_stale(self) -> None:
        if time.monotonic() - self._swept_at < SWEEP_SECONDS:
            return
        try:
            if self._sweeper is None:
                self._sweeper = Sweeper(self._database(), self._send_task)
            self._sweeper.sweep()
        except Exception as error:  # PostgreSQL or the broker is down: the next sweep tries again
            log.warning("could not sweep for lost runs and deliveries: %s", error)
            return
        self._swept_at = time.monotonic()

    def _send_task(self, name: str, args: tuple, kwargs: dict) -> None:
        # Nobody waits for the result of a task beat sends: not subscribing to it keeps a send from blocking in
        # the result backend's reconnect loop while Redis is down.
        self.app.send_task(name, args=args, kwargs=kwargs, ignore_result=True)

    def _send(self, rule: ScheduledRule, due: datetime) -> None:
        scheduled_for = utc_iso(due)
        try:
            self._send_task("rules.evaluate", (rule.rule_id,), {"scheduled_for": scheduled_for})
        except Exception as error:  # the broker is down: try again next tick, nothing is marked as sent
            log.warning("could not send rule %s at %s: %s", rule.rule_id, scheduled_for, error)
            return
        self._sent[rule.rule_id] = due
        log.info("sent rule %s for %s", rule.rule_id, scheduled_for)

    def _sleep_seconds(self, now: datetime) -> float:
        upcoming = [next_fire_time(rule, now) for rule in self._rules]
        until_next = min(((t - now).total_seconds() for t in upcoming), default=MAX_SLEEP_SECONDS)
        return max(0.5, min(MAX_SLEEP_SECONDS, until_next))

    def close(self) -> None:
        """Closes the PostgreSQL pool when beat stops."""
        if self._postgres is not None:
            self._postgres.close()
        super().close()

    @property
    def info(self) -> str:
        return f"    . rules: {len(self._rules)} enabled, re-read every {RELOAD_SECONDS} s"
