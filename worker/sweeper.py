"""Work that lost its process is sent again: runs past their lease (waiting runs whose check is overdue), fire
times never claimed, deliveries whose task never ran.

Beat calls `Sweeper.sweep()` every SWEEP_SECONDS. Sending twice is harmless, since a run is claimed once per
(rule, T) and a delivery is claimed before it is sent; the sweeper only makes sure that nothing waits forever for a
task that was lost with a killed worker, a hard time limit or a broker outage. Whatever task first carried them
(rules.evaluate_batch included), runs and fire times are sent again one rule at a time, as rules.evaluate: a rule
taken over from a dead batch runs alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from engine.timestamps import utc_iso
from storage.postgres import Postgres
from worker.schedule import FireTime

log = logging.getLogger(__name__)

SWEEP_SECONDS = 30
# How long past its lease a run is left to the task that may still be on its way.
RUN_GRACE_SECONDS = 5
# How long past its due check a waiting run is left to its retried task (which waits in the queue behind others).
WAITING_GRACE_SECONDS = 60
# How long past its due time a delivery is left to its (countdown) task.
DELIVERY_GRACE_SECONDS = 60
# How long a sent fire time may wait for its claim: longer than the retries of a run that cannot reach its
# servers (worker/tasks.py RUN_RETRY), so that only a task that is gone is sent again; and how often it is.
FIRE_TIME_GRACE_SECONDS = 600
MAX_FIRE_TIME_RESENDS = 3

Send = Callable[[str, tuple, dict[str, Any]], Any]


class Sweeper:
    """Finds abandoned runs, unclaimed fire times and stalled deliveries in PostgreSQL and sends their tasks again,
    once per attempt."""

    def __init__(self, postgres: Postgres, send: Send, *,
                 fire_time_grace_seconds: float = FIRE_TIME_GRACE_SECONDS) -> None:
        self._postgres = postgres
        self._send = send
        self._fire_time_grace_seconds = fire_time_grace_seconds
        self._sent: set[tuple[str, str, int]] = set()

    def sweep(self) -> None:
        """One pass: ends abandoned dry runs, re-sends abandoned runs, unclaimed fire times and stalled deliveries
        not re-sent yet."""
        for row in self._postgres.all("fail_abandoned_dry_runs", grace_seconds=RUN_GRACE_SECONDS):
            log.warning("dry run %s lost its process; marked failed", row["id"])
        wanted: set[tuple[str, str, int]] = set()
        for run in self._postgres.all("abandoned_runs", grace_seconds=RUN_GRACE_SECONDS,
                                      waiting_grace_seconds=WAITING_GRACE_SECONDS):
            key = ("run", run["run_id"], run["attempts"])
            wanted.add(key)
            if key not in self._sent:
                self._send("rules.evaluate", (run["rule_id"],), {
                    "scheduled_for": utc_iso(run["scheduled_for"]),
                    "triggered_by": run["triggered_by"], "trigger": run["trigger"]})
                log.warning("run %s of rule %s lost its process; sent again", run["run_id"], run["rule_id"])
        self._resend_unclaimed_fire_times()
        for delivery in self._postgres.all("stalled_deliveries", grace_seconds=DELIVERY_GRACE_SECONDS):
            key = ("delivery", str(delivery["id"]), delivery["attempts"])
            wanted.add(key)
            if key not in self._sent:
                self._send("notifications.deliver", (delivery["id"],), {})
                log.warning("delivery %s has waited past its time; sent again", delivery["id"])
        self._sent = wanted

    def _resend_unclaimed_fire_times(self) -> None:
        """Sends again each fire time whose task was lost before its run was claimed, at most
        MAX_FIRE_TIME_RESENDS times; forgets the fire times that need no more watching."""
        self._postgres.execute("forget_sent_fire_times", max_resends=MAX_FIRE_TIME_RESENDS)
        for row in self._postgres.all("unclaimed_fire_times", grace_seconds=self._fire_time_grace_seconds):
            fire = FireTime(row["rule_id"], row["scheduled_for"], row["trigger"])
            self._send("rules.evaluate", (fire.rule_id,), fire.task_kwargs())
            log.warning("rule %s at %s was sent but never claimed; sent again (%d of %d)", fire.rule_id,
                        utc_iso(fire.scheduled_for), row["resends"], MAX_FIRE_TIME_RESENDS)
