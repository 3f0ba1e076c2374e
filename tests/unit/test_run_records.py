"""A `rule_runs` row read as a RunRecord, and the run summary made of it, without servers."""

from __future__ import annotations

import uuid
from datetime import datetime

from engine.run_states import RunState
from storage.runs import RunRecord

RUN_ID, RULE_ID = uuid.uuid4(), uuid.uuid4()


def row(**changes) -> dict:
    """A rule_runs row as psycopg returns it (UUIDs, a naive UTC timestamp, an int[] array)."""
    return {"id": RUN_ID, "rule_id": RULE_ID, "org_id": 7, "trigger": "schedule",
            "scheduled_for": datetime(2026, 11, 25, 9, 0), "triggered_by": None, "dry_run": False,
            "status": "succeeded", "state": "succeeded", "entities": 12, "matched": 3, "alerts": 2,
            "silenced": 1, "acknowledged": 0, "notified_users": [9, 4], "storm": False, "path": "sql", "error": None,
            "attempts": 1,
            "lease_expires_at": None, "transitions": [], "started_at": datetime(2026, 11, 25, 9, 0, 1),
            "finished_at": datetime(2026, 11, 25, 9, 0, 2), "duration_ms": 840, "evaluated_at": None, "restated": 0,
            "recheck_due_at": None, "recheck_sent_at": None, "recheck_sends": 0, "stale": False, "waiting_for": None,
            "waiting_since": None, "lifecycle": None, **changes}


def test_a_row_becomes_a_typed_record():
    record = RunRecord.from_row(row(state="evaluated", status="running", notified_users=None))
    assert (record.id, record.rule_id, record.state, record.notified_users) == \
        (str(RUN_ID), str(RULE_ID), RunState.EVALUATED, ())


def test_the_summary_says_the_fire_time_in_iso_utc_and_the_users_sorted():
    assert RunRecord.from_row(row()).summary() == {
        "run_id": str(RUN_ID), "rule_id": str(RULE_ID), "org_id": 7, "status": "succeeded", "trigger": "schedule",
        "dry_run": False, "scheduled_for": "2026-11-25T09:00:00Z", "evaluated_at": "2026-11-25T09:00:00Z",
        "entities": 12, "matched": 3, "alerts": 2, "silenced": 1, "acknowledged": 0, "restated": 0,
        "notified_users": [4, 9], "storm": False, "duration_ms": 840, "error": None, "path": "sql", "stale": False,
        "waiting_for": None,
        "lifecycle": None,
    }


def test_a_recheck_evaluates_at_its_own_time_over_the_window_of_its_fire_time():
    record = RunRecord.from_row(row(trigger="recheck", evaluated_at=datetime(2026, 11, 26, 9, 0, 7), restated=2))
    summary = record.summary()
    assert (summary["trigger"], summary["scheduled_for"], summary["evaluated_at"], summary["restated"]) == (
        "recheck", "2026-11-25T09:00:00Z", "2026-11-26T09:00:07Z", 2)
    assert (record.fire_time.isoformat(), record.eval_time.isoformat()) == (
        "2026-11-25T09:00:00+00:00", "2026-11-26T09:00:07+00:00")


def test_a_waiting_run_is_waiting_and_says_for_what():
    summary = RunRecord.from_row(row(status="waiting", state="waiting", waiting_for="data incomplete: …")).summary()
    assert (summary["status"], summary["waiting_for"], summary["stale"]) == ("waiting", "data incomplete: …", False)


def test_a_failed_run_summarises_its_error():
    summary = RunRecord.from_row(row(status="failed", state="failed", error="boom", path=None)).summary()
    assert (summary["status"], summary["error"], summary["path"]) == ("failed", "boom", None)


def test_the_summary_says_whether_the_run_was_a_storm():
    assert RunRecord.from_row(row(storm=True)).summary()["storm"] is True
