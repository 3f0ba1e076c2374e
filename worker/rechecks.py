"""The rechecks beat sends: for each succeeded scheduled run of a rule with `conditions.recheck_after`, once its
fire time T plus that delay has passed, `rules.evaluate(rule_id, scheduled_for=T, trigger="recheck")`.

A run records when its recheck is due as it succeeds (`rule_runs.recheck_due_at`); one query per pass finds the
due ones and marks them sent. The recheck's claim ends the wait, and is once per (rule, T, trigger), so a task sent
twice (two beats, a resend) still gives one recheck. A recheck not claimed within RESEND_SECONDS of being sent
(its task was lost) is sent again, at most MAX_SENDS times in all; a disabled or deleted rule's rechecks are dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from engine.timestamps import utc_iso
from storage.postgres import Postgres
from storage.runs import RECHECK

log = logging.getLogger(__name__)

# How long a sent recheck may wait for its claim before it is sent again (as worker/sweeper.py waits for a fire
# time), and how often it is sent at most.
RESEND_SECONDS = 600
MAX_SENDS = 3

Send = Callable[[str, tuple, dict[str, Any]], Any]


def send_due_rechecks(postgres: Postgres, send: Send) -> int:
    """Sends the rechecks that are due (and not sent within RESEND_SECONDS) as rules.evaluate; returns how many."""
    postgres.execute("forget_rechecks", max_sends=MAX_SENDS)
    due = postgres.all("due_rechecks", grace_seconds=RESEND_SECONDS)
    for row in due:
        fire_time = utc_iso(row["scheduled_for"])
        send("rules.evaluate", (row["rule_id"],), {"scheduled_for": fire_time, "trigger": RECHECK})
        log.info("sent the recheck of rule %s for %s (%d of %d)", row["rule_id"], fire_time, row["recheck_sends"],
                 MAX_SENDS)
    return len(due)
