"""Work that lost its process is sent again: runs past their lease, deliveries whose task never ran.

Beat calls `Sweeper.sweep()` every SWEEP_SECONDS. Sending twice is harmless, since a run is claimed once per
(rule, T) and a delivery is claimed before it is sent; the sweeper only makes sure that nothing waits forever for a
task that was lost with a killed worker, a hard time limit or a broker outage.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from engine.timestamps import utc_iso
from storage.postgres import Postgres

log = logging.getLogger(__name__)

SWEEP_SECONDS = 30
# How long past its lease a run is left to the task that may still be on its way.
RUN_GRACE_SECONDS = 5
# How long past its due time a delivery is left to its (countdown) task.
DELIVERY_GRACE_SECONDS = 60

Send = Callable[[str, tuple, dict[str, Any]], None]


class Sweeper:
    """Finds abandoned runs and stalled deliveries in PostgreSQL and sends their tasks again, once per attempt."""

    def __init__(self, postgres: Postgres, send: Send) -> None:
        self._postgres = postgres
        self._send = send
        self._sent: set[tuple[str, str, int]] = set()

    def sweep(self) -> None:
        """One pass: ends abandoned dry runs, re-sends abandoned runs and stalled deliveries not re-sent yet."""
        for row in self._postgres.all("fail_abandoned_dry_runs", grace_seconds=RUN_GRACE_SECONDS):
            log.warning("dry run %s lost its process; marked failed", row["id"])
        wanted: set[tuple[str, str, int]] = set()
        for run in self._postgres.all("abandoned_runs", grace_seconds=RUN_GRACE_SECONDS):
            key = ("run", run["run_id"], run["attempts"])
            wanted.add(key)
            if key not in self._sent:
                self._send("rules.evaluate", (run["rule_id"],), {
                    "scheduled_for": utc_iso(run["scheduled_for"]),
                    "triggered_by": run["triggered_by"], "trigger": run["trigger"]})
                log.warning("run %s of rule %s lost its process; sent again", run["run_id"], run["rule_id"])
        for delivery in self._postgres.all("stalled_deliveries", grace_seconds=DELIVERY_GRACE_SECONDS):
            key = ("delivery", str(delivery["id"]), delivery["attempts"])
            wanted.add(key)
            if key not in self._sent:
                self._send("notifications.deliver", (delivery["id"],), {})
                log.warning("delivery %s has waited past its time; sent again", delivery["id"])
        self._sent = wanted
