"""The beat scheduler: the enabled rules of PostgreSQL, each sent once per fire time.

`celery -A worker.app beat` uses it without flags (`beat_scheduler`). Every tick re-reads the rules when the last
read is older than RELOAD_SECONDS, so a rule added, edited, disabled or deleted by any means (plain SQL included)
is followed within that time; only the rows whose version changed are read whole. The rules wait in a Timetable
keyed by their next fire time (worker/schedule.py), so a tick costs only the rules due. For each rule, the latest
fire time at or before now is sent once; after downtime that is the latest missed one only. The rules of one
organization and one source due at the same T go as one `rules.evaluate_batch(org_id, scheduled_for, rule_ids)`
(several, for more than MAX_BATCH_RULES rules), a rule that is not valid alone as `rules.evaluate(rule_id,
scheduled_for=T)`. Beat remembers what it sent only in memory: a restarted or second beat may send the same
(rule, T) again, and the claim in `rule_runs` makes that a no-op, so exactly-once is PostgreSQL's guarantee, not
beat's. A rule whose row cannot be read or is not valid never stops the others (see worker/schedule.py). Every
SWEEP_SECONDS the sweeper sends again the runs, fire times and deliveries whose task was lost (worker/sweeper.py),
and the rechecks that are due are sent (worker/rechecks.py).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

from celery.beat import Scheduler

from storage.errors import StorageError
from storage.postgres import Postgres
from worker.rechecks import send_due_rechecks
from worker.schedule import FireTime, FireTimeSender, Timetable, load_rules
from worker.settings import settings
from worker.sweeper import SWEEP_SECONDS, Sweeper

log = logging.getLogger(__name__)

RELOAD_SECONDS = 30
MAX_SLEEP_SECONDS = 5


class RuleScheduler(Scheduler):
    """A Celery beat scheduler whose entries are the rules in PostgreSQL."""

    def __init__(self, *args, **kwargs) -> None:
        self._timetable = Timetable()
        self._loaded_at = float("-inf")
        self._swept_at = float("-inf")
        self._rechecked_at = float("-inf")
        self._postgres: Postgres | None = None
        self._sender: FireTimeSender | None = None
        self._sweeper: Sweeper | None = None
        super().__init__(*args, **kwargs)

    def setup_schedule(self) -> None:
        """No static entries: the schedule is the rules table."""

    def tick(self, *args, **kwargs) -> float:
        """Sends the fire times due now and, every SWEEP_SECONDS, lost work again and the rechecks due; returns the
        seconds to sleep."""
        now = datetime.now(UTC)
        self._reload_if_stale(now)
        self._send(self._timetable.due(now), now)
        self._sweep_if_stale()
        self._send_rechecks_if_stale()
        return self._sleep_seconds(now)

    def _database(self) -> Postgres:
        if self._postgres is None:
            self._postgres = Postgres(settings().database_url, max_size=1)
        return self._postgres

    def _reload_if_stale(self, now: datetime) -> None:
        """Follows the rules table: drops the rules no longer enabled, reads whole only the new or changed ones."""
        if time.monotonic() - self._loaded_at < RELOAD_SECONDS:
            return
        try:
            versions = {row["rule_id"]: row["version"] for row in self._database().all("schedulable_rule_versions")}
            changed = self._timetable.changed(versions)
            rules = load_rules(self._database(), settings().notify_allowed_hosts, changed) if changed else []
        except StorageError as error:
            log.warning("keeping the last known rules: %s", error)
            return
        self._timetable.update(set(versions), rules, now)
        self._loaded_at = time.monotonic()

    def _send(self, fires: list[FireTime], now: datetime) -> None:
        if self._sender is None:
            self._sender = FireTimeSender(self._database(), self._send_task)
        sent, unsent = self._sender.send(fires)
        self._timetable.sent(fire for fire, _ in sent)
        self._timetable.unsent(unsent, now)

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

    def _send_rechecks_if_stale(self) -> None:
        if time.monotonic() - self._rechecked_at < SWEEP_SECONDS:
            return
        try:
            send_due_rechecks(self._database(), self._send_task)
        except Exception as error:  # PostgreSQL or the broker is down: the next pass tries again
            log.warning("could not send the rechecks due: %s", error)
            return
        self._rechecked_at = time.monotonic()

    def _send_task(self, name: str, args: tuple, kwargs: dict) -> str:
        # Nobody waits for the result of a task beat sends: not subscribing to it keeps a send from blocking in
        # the result backend's reconnect loop while Redis is down.
        return self.app.send_task(name, args=args, kwargs=kwargs, ignore_result=True).id

    def _sleep_seconds(self, now: datetime) -> float:
        upcoming = self._timetable.next_due()
        until_next = (upcoming - now).total_seconds() if upcoming is not None else MAX_SLEEP_SECONDS
        return max(0.5, min(MAX_SLEEP_SECONDS, until_next))

    def close(self) -> None:
        """Closes the PostgreSQL pool when beat stops."""
        if self._postgres is not None:
            self._postgres.close()
        super().close()

    @property
    def info(self) -> str:
        return f"    . rules: {len(self._timetable)} enabled, re-read every {RELOAD_SECONDS} s"
