"""One rule run, end to end, on the real PostgreSQL and the real embedded ClickHouse (the README's How a run works).

Every expected value below is worked out by hand from the rows the test inserts. The organization is in
America/New_York and T is 02:00:00 UTC on a day about ten days ago (within the 90-day TTL of `rule_evaluations`:
older rows are dropped by ClickHouse's TTL merges at once). At 02:00 UTC it is 21:00 or 22:00 of the previous day
in New York, so the local date ("today", TODAY below) differs from the UTC date: "yesterday" is TODAY - 1, not the
UTC date - 1 as a UTC reading would have it. T is chosen with no DST change in the two weeks before it, so every
local midnight of the test is at the same UTC hour.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from engine.compiler import compile_logic
from engine.errors import NotCompilable
from engine.fields import field_types
from tests.integration.runs_support import ch_text
from worker.runner import BadRunRequest, RuleNotFound

NEW_YORK = ZoneInfo("America/New_York")


def _choose_t() -> datetime:
    candidate = datetime.now(UTC).replace(hour=2, minute=0, second=0, microsecond=0) - timedelta(days=10)
    while len({(candidate + timedelta(hours=h)).astimezone(NEW_YORK).utcoffset() for h in range(-15 * 24, 4)}) > 1:
        candidate -= timedelta(days=7)
    return candidate


T = _choose_t()
TODAY: date = T.date() - timedelta(days=1)
assert T.astimezone(NEW_YORK).date() == TODAY
# The instant local TODAY began, in UTC (04:00 in summer, 05:00 in winter).
MIDNIGHT = datetime.combine(TODAY, time(0), tzinfo=NEW_YORK).astimezone(UTC)


def d(days: int) -> str:
    """The local date `days` after TODAY, as text."""
    return (TODAY + timedelta(days=days)).isoformat()


YESTERDAY = d(-1)
SUMMARY_KEYS = {"run_id", "rule_id", "org_id", "status", "dry_run", "scheduled_for", "entities", "matched", "alerts",
                "notified_users", "duration_ms", "error", "path"}
SPEND_AND_CTR = {"window": "yesterday",
                 "logic": {"and": [{">": [{"var": "spend"}, 0.25]}, {"<": [{"var": "ctr"}, 0.01]}]}}


def states(row) -> list[str]:
    return [entry["state"] for entry in row["transitions"]]


def yesterday_data(env, org):
    """c1 matches SPEND_AND_CTR yesterday; c2 fails on ctr, c3 on spend; c4 and c5 have no data yesterday."""
    env.metrics(
        # c1: yesterday's two rows sum to 0.1 + 0.2 = 0.3 exactly (a float sum would give 0.30000000000000004).
        {"org_id": org, "date": d(-2), "campaign_id": "c1", "campaign_name": "Old One", "spend": "500",
         "impressions": 10, "clicks": 0},
        {"org_id": org, "date": YESTERDAY, "campaign_id": "c1", "campaign_name": "Camp One", "spend": "0.1",
         "impressions": 40000, "clicks": 20},
        {"org_id": org, "date": YESTERDAY, "campaign_id": "c1", "campaign_name": "Camp One", "spend": "0.2",
         "impressions": 60000, "clicks": 30},
        {"org_id": org, "date": TODAY, "campaign_id": "c1", "campaign_name": "New One", "spend": "9999",
         "impressions": 1, "clicks": 1},
        {"org_id": org, "date": d(6), "campaign_id": "c1", "campaign_name": "Future One", "spend": "8888",
         "impressions": 1, "clicks": 1},
        # c2: spend 200 > 0.25 but ctr 100/1000 = 0.1.
        {"org_id": org, "date": YESTERDAY, "campaign_id": "c2", "campaign_name": "Camp Two", "spend": "200",
         "impressions": 1000, "clicks": 100},
        # c3: ctr 1/10000 = 0.0001 but spend 0.25 is not > 0.25.
        {"org_id": org, "date": YESTERDAY, "campaign_id": "c3", "campaign_name": "Camp Three", "spend": "0.25",
         "impressions": 10000, "clicks": 1},
        # c4: only today (local; the UTC "yesterday") and later; c5: only two days ago.
        {"org_id": org, "date": TODAY, "campaign_id": "c4", "spend": "1000", "impressions": 100000, "clicks": 1},
        {"org_id": org, "date": d(1), "campaign_id": "c4", "spend": "1000", "impressions": 100000, "clicks": 1},
        {"org_id": org, "date": d(-2), "campaign_id": "c5", "spend": "1000", "impressions": 100000, "clicks": 1},
    )


# --- 1. a campaign rule run ----------------------------------------------------------------------------------------


def test_campaign_rule_run_writes_evaluations_alerts_and_run_row(env):
    org = env.org()
    rule = env.rule(org, SPEND_AND_CTR, {"severity": "critical"}, name="Low CTR spenders")
    yesterday_data(env, org)

    result = env.run(rule, T)

    assert SUMMARY_KEYS <= set(result)
    assert result["rule_id"] == rule and result["org_id"] == org
    assert (result["status"], result["path"], result["error"], result["dry_run"]) == ("succeeded", "sql", None, False)
    assert (result["entities"], result["matched"], result["alerts"]) == (3, 1, 1)
    assert result["scheduled_for"] == T.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert result["notified_users"] == []
    assert isinstance(result["duration_ms"], int) and result["duration_ms"] >= 0

    evaluations = env.evaluations(rule)
    assert [row["entity_id"] for row in evaluations] == ["c1", "c2", "c3"]
    assert {row["eval_time"] for row in evaluations} == {ch_text(T)}
    assert {row["org_id"] for row in evaluations} == {org}
    assert [row["matched"] for row in evaluations] == [1, 0, 0]
    by_id = {row["entity_id"]: row["results"] for row in evaluations}
    assert by_id["c1"] == {"spend": 0.3, "ctr": 50 / 100000, "conditions": [True, True]}
    assert by_id["c2"] == {"spend": 200.0, "ctr": 0.1, "conditions": [True, False]}
    assert by_id["c3"] == {"spend": 0.25, "ctr": 0.0001, "conditions": [False, True]}

    alerts = env.alerts(rule)
    assert len(alerts) == 1
    alert = alerts[0]
    assert alert["org_id"] == org
    assert alert["alert_time"] == ch_text(T)
    assert (alert["rule_id"], alert["rule_name"], alert["severity"]) == (rule, "Low CTR spenders", "critical")
    assert (alert["entity_type"], alert["entity_id"], alert["entity_name"]) == ("campaign", "c1", "Camp One")
    assert alert["details"] == by_id["c1"]
    assert alert["notified_users"] == []

    [run] = env.runs(rule)
    assert str(run["id"]) == result["run_id"]
    assert (run["status"], run["state"], run["path"], run["trigger"]) == ("succeeded", "succeeded", "sql", "manual")
    assert (run["entities"], run["matched"], run["alerts"], run["attempts"]) == (3, 1, 1, 1)
    assert run["scheduled_for"] == T.replace(tzinfo=None)
    assert run["org_id"] == org and run["triggered_by"] is None and run["dry_run"] is False
    assert run["error"] is None and run["finished_at"] is not None
    assert states(run) == ["claimed", "compiled", "evaluated", "alerted", "succeeded"]


# --- 2. windows --------------------------------------------------------------------------------------------------

ALL_CAMPAIGN_NUMBERS = {"and": [
    {">": [{"var": "spend"}, 2]},
    {">=": [{"var": "impressions"}, 0]}, {">=": [{"var": "clicks"}, 0]}, {">=": [{"var": "conversions"}, 0]},
    {">=": [{"var": "cpm"}, 0]}, {">=": [{"var": "ctr"}, 0]}, {">=": [{"var": "cvr"}, 0]}, {">=": [{"var": "days"}, 0]},
]}


def week_data(env, org):
    env.metrics(
        {"org_id": org, "date": d(-8), "campaign_id": "c1", "spend": "1000", "impressions": 1, "clicks": 1},
        {"org_id": org, "date": d(-7), "campaign_id": "c1", "spend": "0.1", "impressions": 1000, "clicks": 10,
         "conversions": 1},
        {"org_id": org, "date": d(-4), "campaign_id": "c1", "spend": "0.2", "impressions": 3000},
        {"org_id": org, "date": TODAY, "campaign_id": "c1", "spend": "777", "impressions": 5, "clicks": 5,
         "conversions": 5},
        {"org_id": org, "date": d(6), "campaign_id": "c1", "spend": "555", "impressions": 5},
        {"org_id": org, "date": d(-6), "campaign_id": "c2", "spend": "5"},
        {"org_id": org, "date": d(-5), "campaign_id": "c3", "spend": "1", "impressions": 100},
        {"org_id": org, "date": TODAY, "campaign_id": "c4", "spend": "50", "impressions": 100},
        {"org_id": org, "date": d(1), "campaign_id": "c4", "spend": "50", "impressions": 100},
        {"org_id": org, "date": d(-8), "campaign_id": "c5", "spend": "2", "impressions": 100, "clicks": 3},
    )


def test_last_7_days_excludes_today_and_recomputes_ratios_from_sums(env):
    org = env.org()
    rule = env.rule(org, {"window": "last_7_days", "logic": ALL_CAMPAIGN_NUMBERS})
    week_data(env, org)

    result = env.run(rule, T)

    # last_7_days: d(-7) .. d(-1).
    assert (result["status"], result["entities"], result["matched"], result["alerts"]) == ("succeeded", 3, 1, 1)
    by_id = {row["entity_id"]: row for row in env.evaluations(rule)}
    assert set(by_id) == {"c1", "c2", "c3"}
    assert by_id["c1"]["results"] == {
        "spend": 0.3, "impressions": 4000.0, "clicks": 10.0, "conversions": 1.0,
        "cpm": 0.3 * 1000 / 4000, "ctr": 10 / 4000, "cvr": 1 / 10, "days": 2.0,
        "conditions": [False] + [True] * 7,
    }
    assert by_id["c2"]["results"] == {
        "spend": 5.0, "impressions": 0.0, "clicks": 0.0, "conversions": 0.0, "cpm": 0.0, "ctr": 0.0, "cvr": 0.0,
        "days": 1.0, "conditions": [True] * 8,
    }
    assert by_id["c3"]["results"] == {
        "spend": 1.0, "impressions": 100.0, "clicks": 0.0, "conversions": 0.0, "cpm": 10.0, "ctr": 0.0, "cvr": 0.0,
        "days": 1.0, "conditions": [False] + [True] * 7,
    }
    assert [row["matched"] for _, row in sorted(by_id.items())] == [0, 1, 0]
    assert [alert["entity_id"] for alert in env.alerts(rule)] == ["c2"]


def test_yesterday_reads_only_the_local_yesterday(env):
    org = env.org()
    rule = env.rule(org, {"window": "yesterday", "logic": ALL_CAMPAIGN_NUMBERS})
    yesterday_data(env, org)

    result = env.run(rule, T)

    assert (result["entities"], result["matched"]) == (3, 1)  # only c2's spend 200 is > 2
    by_id = {row["entity_id"]: row["results"] for row in env.evaluations(rule)}
    assert set(by_id) == {"c1", "c2", "c3"}  # c4 (only d(0), d(1)) and c5 (only d(-2)) are not read
    assert by_id["c1"]["spend"] == 0.3 and by_id["c1"]["impressions"] == 100000.0 and by_id["c1"]["days"] == 1.0
    assert by_id["c1"]["cpm"] == 0.3 * 1000 / 100000


def test_run_as_of_a_past_time_ignores_later_rows(env):
    org = env.org()
    rule = env.rule(org, {"window": "lifetime", "logic": ALL_CAMPAIGN_NUMBERS})
    week_data(env, org)
    past = T - timedelta(days=5) + timedelta(hours=1)  # 22:00 or 23:00 of d(-5) in New York; d(-4) is its UTC date

    result = env.run(rule, past)

    # spend > 2: c1 (1000.1) and c2 (5); not c3 (1) nor c5 (2).
    assert (result["status"], result["entities"], result["matched"]) == ("succeeded", 4, 2)
    by_id = {row["entity_id"]: row["results"] for row in env.evaluations(rule, past)}
    assert set(by_id) == {"c1", "c2", "c3", "c5"}
    assert (by_id["c1"]["spend"], by_id["c1"]["days"], by_id["c1"]["impressions"]) == (1000.1, 2.0, 1001.0)
    assert (by_id["c1"]["clicks"], by_id["c1"]["conversions"]) == (11.0, 1.0)
    assert by_id["c1"]["ctr"] == 11 / 1001 and by_id["c1"]["cvr"] == 1 / 11
    assert by_id["c1"]["cpm"] == 1000.1 * 1000 / 1001
    assert (by_id["c5"]["spend"], by_id["c5"]["cpm"], by_id["c5"]["ctr"]) == (2.0, 20.0, 0.03)


# --- 3. compare_to -------------------------------------------------------------------------------------------------


def test_previous_period_fields_and_previous_only_entities(env):
    org = env.org()
    logic = {"and": [
        {"<": [{"var": "spend"}, {"*": [2, {"var": "prev.spend"}]}]},
        {">=": [{"var": "prev.days"}, 1]},
        {">=": [{"var": "days"}, 0]},
        {"!=": [{"var": "campaign_name"}, "zzz"]},
        {"!=": [{"var": "prev.campaign_name"}, "zzz"]},
    ]}
    rule = env.rule(org, {"window": "last_3_days", "compare_to": "previous_period", "logic": logic},
                    {"severity": "info"})
    # Window d(-3) .. d(-1); previous period d(-6) .. d(-4).
    env.metrics(
        {"org_id": org, "date": d(-7), "campaign_id": "c1", "campaign_name": "C1 older", "spend": "100"},
        {"org_id": org, "date": d(-6), "campaign_id": "c1", "campaign_name": "C1 before", "spend": "5"},
        {"org_id": org, "date": d(-5), "campaign_id": "c1", "campaign_name": "C1 before", "spend": "10"},
        {"org_id": org, "date": d(-2), "campaign_id": "c1", "campaign_name": "C1 now", "spend": "30"},
        {"org_id": org, "date": TODAY, "campaign_id": "c1", "campaign_name": "C1 today", "spend": "50"},
        {"org_id": org, "date": d(-4), "campaign_id": "c2", "campaign_name": "Prev Only", "spend": "40"},
        {"org_id": org, "date": d(-7), "campaign_id": "c3", "campaign_name": "Too Old", "spend": "40"},
    )

    result = env.run(rule, T)

    assert (result["status"], result["entities"], result["matched"], result["alerts"]) == ("succeeded", 2, 1, 1)
    by_id = {row["entity_id"]: row for row in env.evaluations(rule)}
    assert set(by_id) == {"c1", "c2"}
    assert by_id["c1"]["results"] == {
        "spend": 30.0, "prev.spend": 15.0, "prev.days": 2.0, "days": 1.0,
        "campaign_name": "C1 now", "prev.campaign_name": "C1 before", "conditions": [False, True, True, True, True],
    }
    assert by_id["c2"]["results"] == {
        "spend": 0.0, "prev.spend": 40.0, "prev.days": 1.0, "days": 0.0,
        "campaign_name": "Prev Only", "prev.campaign_name": "Prev Only", "conditions": [True] * 5,
    }
    assert (by_id["c1"]["matched"], by_id["c2"]["matched"]) == (0, 1)
    [alert] = env.alerts(rule)
    assert (alert["entity_id"], alert["entity_name"], alert["severity"]) == ("c2", "Prev Only", "info")


# --- 4. pacing -----------------------------------------------------------------------------------------------------


def test_pacing_rule_uses_latest_snapshot_up_to_t(env):
    org, other = env.org(), env.org()
    logic = {"and": [
        {"<": [{"var": "pacing_rate"}, 0.9]},
        {"!=": [{"var": "entity_type"}, "nothing"]},
        {"!=": [{"var": "snapshot_time"}, ""]},
    ]}
    rule = env.rule(org, {"source": "pacing_snapshots", "logic": logic}, {"severity": "warning"}, name="Underpacing")
    # Window "today": from MIDNIGHT (local TODAY 00:00) through T.
    env.snapshots(
        {"org_id": org, "snapshot_time": ch_text(MIDNIGHT - timedelta(hours=1)), "entity_type": "campaign", "entity_id": "p1",
         "pacing_rate": "0.01"},  # 23:00 yesterday, local
        {"org_id": org, "snapshot_time": ch_text(MIDNIGHT + timedelta(hours=1)), "entity_type": "campaign", "entity_id": "p1",
         "pacing_rate": "0.5"},
        {"org_id": org, "snapshot_time": ch_text(T - timedelta(hours=1)), "entity_type": "campaign", "entity_id": "p1",
         "pacing_rate": "0.8"},  # the latest up to T
        {"org_id": org, "snapshot_time": ch_text(T + timedelta(hours=1)), "entity_type": "campaign", "entity_id": "p1",
         "pacing_rate": "0.1"},  # same local date, after T
        {"org_id": org, "snapshot_time": ch_text(MIDNIGHT + timedelta(hours=6)), "entity_type": "line_item", "entity_id": "p1",
         "pacing_rate": "1.5"},
        {"org_id": org, "snapshot_time": ch_text(MIDNIGHT - timedelta(seconds=1)), "entity_type": "io", "entity_id": "x2",
         "pacing_rate": "0.1"},  # 23:59:59 yesterday, local
        {"org_id": org, "snapshot_time": ch_text(T), "entity_type": "io", "entity_id": "x3",
         "pacing_rate": "0.2"},  # exactly T
        {"org_id": org, "snapshot_time": ch_text(T + timedelta(seconds=1)), "entity_type": "io", "entity_id": "x4",
         "pacing_rate": "0.2"},  # one second after T
        {"org_id": other, "snapshot_time": ch_text(T - timedelta(minutes=30)), "entity_type": "campaign", "entity_id": "p1",
         "pacing_rate": "0.3"},  # another organization
    )

    result = env.run(rule, T)

    assert (result["status"], result["entities"], result["matched"], result["alerts"]) == ("succeeded", 3, 2, 2)
    evaluations = env.evaluations(rule)
    by_key = {(row["results"]["entity_type"], row["entity_id"]): row for row in evaluations}
    assert sorted(by_key) == [("campaign", "p1"), ("io", "x3"), ("line_item", "p1")]
    assert by_key[("campaign", "p1")]["results"] == {
        "pacing_rate": 0.8, "entity_type": "campaign", "snapshot_time": ch_text(T - timedelta(hours=1)),
        "conditions": [True, True, True]}
    assert by_key[("line_item", "p1")]["results"] == {
        "pacing_rate": 1.5, "entity_type": "line_item", "snapshot_time": ch_text(MIDNIGHT + timedelta(hours=6)),
        "conditions": [False, True, True]}
    assert by_key[("io", "x3")]["results"] == {
        "pacing_rate": 0.2, "entity_type": "io", "snapshot_time": ch_text(T),
        "conditions": [True, True, True]}
    assert [by_key[key]["matched"] for key in sorted(by_key)] == [1, 1, 0]
    alerts = env.alerts(rule)
    assert [(a["entity_type"], a["entity_id"], a["entity_name"]) for a in alerts] == [
        ("campaign", "p1", "p1"), ("io", "x3", "x3")]
    assert {a["rule_name"] for a in alerts} == {"Underpacing"}


# --- 5. repeated (rule, T) -------------------------------------------------------------------------------------------


def test_repeated_rule_and_time_returns_the_first_run(env):
    org = env.org()
    rule = env.rule(org, SPEND_AND_CTR)
    yesterday_data(env, org)

    first = env.run(rule, T)
    second = env.run(rule, T)
    third = env.run(rule, T.replace(microsecond=999))  # the same second

    assert first["status"] == "succeeded" and (first["entities"], first["alerts"]) == (3, 1)
    assert second == first and third == first
    assert len(env.runs(rule)) == 1
    assert env.count("rule_evaluations", rule) == 3
    assert env.count("alert_events", rule) == 1


# --- 6. interrupted runs -------------------------------------------------------------------------------------------


def crash(env, run_id: str, state: str, kept_transitions: int, *, lease: str = "- interval '1 hour'") -> None:
    """Puts a run back to what a worker dying in `state` leaves behind."""
    env.pg(
        f"""UPDATE rule_runs SET status = 'running', state = %s, finished_at = NULL, duration_ms = NULL,
                   alerts = 0, entities = CASE WHEN %s = 'compiled' THEN 0 ELSE entities END,
                   matched = CASE WHEN %s = 'compiled' THEN 0 ELSE matched END,
                   lease_expires_at = (now() AT TIME ZONE 'UTC') {lease},
                   transitions = (SELECT jsonb_agg(t ORDER BY i) FROM jsonb_array_elements(transitions)
                                  WITH ORDINALITY AS e(t, i) WHERE i <= %s)
            WHERE id = %s""",
        (state, state, state, kept_transitions, run_id),
    )


def test_run_dead_after_evaluations_is_finished_without_doubling_alerts(env):
    org = env.org()
    rule = env.rule(org, SPEND_AND_CTR)
    yesterday_data(env, org)
    first = env.run(rule, T)
    # Died after both inserts had been sent but before `alerted` was recorded: the alert rows are there.
    crash(env, first["run_id"], "evaluated", 3)

    result = env.run(rule, T)

    assert result["run_id"] == first["run_id"]
    assert (result["status"], result["entities"], result["matched"], result["alerts"]) == ("succeeded", 3, 1, 1)
    run = env.run_row(first["run_id"])
    assert run["attempts"] == 2 and run["status"] == "succeeded"
    assert states(run) == ["claimed", "compiled", "evaluated", "evaluated", "alerted", "succeeded"]
    assert [a["entity_id"] for a in env.alerts(rule, T)] == ["c1"]
    assert [e["entity_id"] for e in env.evaluations(rule, T)] == ["c1", "c2", "c3"]


def test_run_dead_during_evaluation_insert_is_redone_once(env):
    org = env.org()
    rule = env.rule(org, SPEND_AND_CTR)
    yesterday_data(env, org)
    first = env.run(rule, T)
    # Died with the evaluation insert (and, worst case, the alert insert) already applied but unrecorded.
    crash(env, first["run_id"], "compiled", 2)

    result = env.run(rule, T)

    assert result["run_id"] == first["run_id"]
    assert (result["status"], result["entities"], result["matched"], result["alerts"]) == ("succeeded", 3, 1, 1)
    run = env.run_row(first["run_id"])
    assert run["attempts"] == 2
    assert states(run) == ["claimed", "compiled", "compiled", "evaluated", "alerted", "succeeded"]
    evaluations = env.evaluations(rule, T)
    assert [e["entity_id"] for e in evaluations] == ["c1", "c2", "c3"]
    assert [e["matched"] for e in evaluations] == [1, 0, 0]
    assert [a["entity_id"] for a in env.alerts(rule, T)] == ["c1"]


def test_run_dead_during_evaluation_insert_with_partial_rows(env):
    org = env.org()
    rule = env.rule(org, SPEND_AND_CTR)
    yesterday_data(env, org)
    run_id = str(uuid.uuid4())
    env.pg("""INSERT INTO rule_runs (id, rule_id, org_id, trigger, scheduled_for, status, state, path,
                                     lease_expires_at, transitions)
              VALUES (%s, %s, %s, 'schedule', %s, 'running', 'compiled', 'sql',
                      (now() AT TIME ZONE 'UTC') - interval '5 minutes',
                      '[{"state": "claimed"}, {"state": "compiled"}]')""",
           (run_id, rule, org, T.replace(tzinfo=None)))
    # Half of an insert that never finished: one row for c2, another organization's row left untouched.
    env.ch_raw.insert("rule_evaluations", [[org, T.replace(tzinfo=None), uuid.UUID(rule), "c2", 0, "{}", 1],
                                           [org + 1, T.replace(tzinfo=None), uuid.UUID(rule), "zz", 0, "{}", 1]],
                      column_names=["org_id", "eval_time", "rule_id", "entity_id", "matched", "condition_results",
                                    "execution_time_ms"])

    result = env.run(rule, T)

    assert result["run_id"] == run_id
    assert (result["status"], result["entities"], result["matched"], result["alerts"]) == ("succeeded", 3, 1, 1)
    ours = [e for e in env.evaluations(rule, T) if e["org_id"] == org]
    assert [e["entity_id"] for e in ours] == ["c1", "c2", "c3"]
    assert ours[1]["results"] == {"spend": 200.0, "ctr": 0.1, "conditions": [True, False]}
    assert [e["entity_id"] for e in env.evaluations(rule, T) if e["org_id"] != org] == ["zz"]  # not ours to delete
    assert env.run_row(run_id)["attempts"] == 2


def test_run_with_a_live_lease_is_not_taken_over(env):
    org = env.org()
    rule = env.rule(org, SPEND_AND_CTR)
    yesterday_data(env, org)
    run_id = str(uuid.uuid4())
    env.pg("""INSERT INTO rule_runs (id, rule_id, org_id, trigger, scheduled_for, status, state,
                                     lease_expires_at, transitions)
              VALUES (%s, %s, %s, 'schedule', %s, 'running', 'claimed',
                      (now() AT TIME ZONE 'UTC') + interval '1 hour', '[{"state": "claimed"}]')""",
           (run_id, rule, org, T.replace(tzinfo=None)))

    result = env.run(rule, T)

    assert result["run_id"] == run_id
    assert (result["status"], result["entities"], result["matched"], result["alerts"]) == ("running", 0, 0, 0)
    run = env.run_row(run_id)
    assert (run["attempts"], run["state"], states(run)) == (1, "claimed", ["claimed"])
    assert env.count("rule_evaluations") == 0 and env.count("alert_events") == 0
    assert len(env.runs()) == 1


# --- 7. cooldown ---------------------------------------------------------------------------------------------------


def test_cooldown_holds_back_alerts_per_entity(env):
    org = env.org()
    rule = env.rule(org, SPEND_AND_CTR, {"cooldown_minutes": 60})
    yesterday_data(env, org)
    later, last = T + timedelta(minutes=30), T + timedelta(minutes=61)

    first = env.run(rule, T)
    # c6 matches from T+30 on (its row arrives late): its first alert is not held back by c1's.
    env.metrics({"org_id": org, "date": YESTERDAY, "campaign_id": "c6", "campaign_name": "Late", "spend": "10",
                 "impressions": 100000, "clicks": 1})
    second = env.run(rule, later)
    third = env.run(rule, last)

    assert [(r["entities"], r["matched"], r["alerts"]) for r in (first, second, third)] == [
        (3, 1, 1), (4, 2, 1), (4, 2, 1)]
    assert [e["entity_id"] for e in env.evaluations(rule, later)] == ["c1", "c2", "c3", "c6"]
    assert [(a["alert_time"], a["entity_id"]) for a in env.alerts(rule)] == [
        (ch_text(T), "c1"), (ch_text(later), "c6"), (ch_text(last), "c1")]


def test_cooldown_zero_alerts_on_every_run(env):
    org = env.org()
    rule = env.rule(org, SPEND_AND_CTR, {"cooldown_minutes": 0})
    yesterday_data(env, org)
    times = [T, T + timedelta(minutes=1), T + timedelta(minutes=2)]

    results = [env.run(rule, at) for at in times]

    assert [r["alerts"] for r in results] == [1, 1, 1]
    assert [a["alert_time"] for a in env.alerts(rule)] == [ch_text(at) for at in times]


# --- 8. dry run ----------------------------------------------------------------------------------------------------


def test_dry_run_writes_nothing_and_does_not_block_the_real_run(env):
    org = env.org()
    rule = env.rule(org, SPEND_AND_CTR)
    yesterday_data(env, org)

    dry = env.run(rule, T, dry_run=True)

    assert (dry["status"], dry["dry_run"], dry["entities"], dry["matched"], dry["alerts"]) == (
        "succeeded", True, 3, 1, 0)
    assert dry["path"] == "sql"
    assert env.count("rule_evaluations") == 0 and env.count("alert_events") == 0
    [dry_row] = env.runs(rule)
    assert dry_row["dry_run"] is True

    real = env.run(rule, T)

    assert real["run_id"] != dry["run_id"]
    assert (real["status"], real["dry_run"], real["entities"], real["matched"], real["alerts"]) == (
        "succeeded", False, 3, 1, 1)
    assert env.count("rule_evaluations", rule) == 3 and env.count("alert_events", rule) == 1
    assert len(env.runs(rule)) == 2


# --- 9. manual runs and bad requests -------------------------------------------------------------------------------


def test_manual_run_by_a_user_is_audited(env):
    org = env.org()
    user = env.user()
    env.member(user, org, "admin")
    rule = env.rule(org, SPEND_AND_CTR)
    yesterday_data(env, org)

    result = env.run(rule, T, triggered_by=user)
    dry = env.run(rule, T + timedelta(hours=1), triggered_by=user, dry_run=True)

    logs = env.audit_logs()
    assert [(log["org_id"], log["user_id"], log["action"], log["resource_type"], log["resource_id"]) for log in logs] \
        == [(org, user, "rule.run", "rule", rule)] * 2
    assert logs[0]["details"] == {"run_id": result["run_id"], "dry_run": False}
    assert logs[1]["details"] == {"run_id": dry["run_id"], "dry_run": True}
    assert [run["triggered_by"] for run in env.runs(rule)] == [user, user]


def test_unknown_user_is_a_bad_request_and_writes_nothing(env):
    org = env.org()
    rule = env.rule(org, SPEND_AND_CTR)
    yesterday_data(env, org)

    with pytest.raises(BadRunRequest, match="2000000000"):
        env.run(rule, T, triggered_by=2_000_000_000)

    assert env.runs() == [] and env.audit_logs() == []
    assert env.count("rule_evaluations") == 0 and env.count("alert_events") == 0



@pytest.mark.parametrize("rule_id", ["nope", "", "8f14e45f-ceea-467f"])
def test_a_rule_id_that_is_not_a_uuid_is_a_bad_request_naming_it_and_writes_nothing(env, rule_id):
    org = env.org()
    env.rule(org, SPEND_AND_CTR)
    yesterday_data(env, org)

    with pytest.raises(BadRunRequest) as refused:
        env.run(rule_id, T)

    assert str(refused.value) == f"not a rule id (a UUID): {rule_id!r}"
    assert env.runs() == [] and env.count("rule_evaluations") == 0

def test_unknown_rule_is_not_found_and_writes_nothing(env):
    org = env.org()
    env.rule(org, SPEND_AND_CTR)
    yesterday_data(env, org)
    missing = str(uuid.uuid4())

    with pytest.raises(RuleNotFound, match=missing):
        env.run(missing, T)

    assert env.runs() == [] and env.audit_logs() == []
    assert env.count("rule_evaluations") == 0 and env.count("alert_events") == 0


def test_a_scheduled_run_of_a_disabled_rule_does_nothing_but_a_manual_one_runs(env):
    org = env.org()
    rule_id = env.rule(org, SPEND_AND_CTR)
    yesterday_data(env, org)
    env.pg("UPDATE rules SET enabled = FALSE WHERE id = %s", (rule_id,))

    with pytest.raises(RuleNotFound, match="disabled"):
        env.run(rule_id, T, trigger="schedule")
    assert env.runs() == [] and env.count("rule_evaluations") == 0

    manual = env.run(rule_id, T)
    assert manual["status"] == "succeeded" and manual["trigger"] == "manual"
    assert env.count("rule_evaluations") == manual["entities"] > 0


# --- 10. modules ---------------------------------------------------------------------------------------------------


def test_rule_of_a_module_not_enabled_is_skipped(env):
    org = env.org(modules=["qa"])
    rule = env.rule(org, SPEND_AND_CTR, module="alerts")
    qa_rule = env.rule(org, SPEND_AND_CTR, module="qa")
    yesterday_data(env, org)

    result = env.run(rule, T)

    assert (result["status"], result["entities"], result["matched"], result["alerts"]) == ("skipped", 0, 0, 0)
    assert "alerts" in result["error"]
    assert states(env.runs(rule)[0]) == ["claimed", "skipped"]
    assert env.count("rule_evaluations") == 0 and env.count("alert_events") == 0
    assert env.run(qa_rule, T)["status"] == "succeeded"


# --- 11. invalid rule ----------------------------------------------------------------------------------------------


def test_invalid_rule_fails_alone_with_the_validation_message(env):
    org = env.org()
    bad = env.rule(org, {"window": "yesterday", "logic": {">": [{"var": "spendd"}, 1]}})
    bad_window = env.rule(org, {"window": "last_400_days", "logic": {">": [{"var": "spend"}, 1]}})
    good = env.rule(org, SPEND_AND_CTR)
    yesterday_data(env, org)

    result = env.run(bad, T)
    window_result = env.run(bad_window, T)
    after = env.run(good, T)

    assert result["status"] == "failed"
    assert 'conditions.logic.>[0]: unknown variable "spendd"' in result["error"]
    assert window_result["status"] == "failed" and "conditions.window" in window_result["error"]
    assert "400" in window_result["error"]
    [run] = env.runs(bad)
    assert states(run) == ["claimed", "failed"] and run["error"] == result["error"]
    assert env.count("rule_evaluations", bad) == 0 and env.count("alert_events", bad) == 0
    assert (after["status"], after["entities"], after["alerts"]) == ("succeeded", 3, 1)


# --- 12. ClickHouse failure ----------------------------------------------------------------------------------------


def test_clickhouse_error_gives_a_failed_run(env):
    org = env.org()
    rule = env.rule(org, SPEND_AND_CTR)
    env.ch_raw.command("DROP TABLE mv_daily_campaign_summary")
    env.ch_raw.command("DROP TABLE campaign_metrics_daily")

    result = env.run(rule, T)

    assert result["status"] == "failed"
    assert "campaign_metrics_daily" in result["error"]
    assert "Code: 60" in result["error"] or "UNKNOWN_TABLE" in result["error"]
    run = env.runs(rule)[0]
    assert run["status"] == "failed" and run["error"] == result["error"]
    assert states(run) == ["claimed", "compiled", "failed"]
    assert env.count("rule_evaluations") == 0 and env.count("alert_events") == 0


def test_a_run_failing_after_its_evaluations_leaves_none_behind(env):
    org = env.org()
    yesterday_data(env, org)
    rule = env.rule(org, SPEND_AND_CTR)
    # The evaluations are written, then the alert stage fails on a broken alert_events: a query error, not an outage.
    env.ch_raw.command("CREATE TABLE alert_events_broken (x UInt8) ENGINE = Memory")
    env.ch_raw.command("EXCHANGE TABLES alert_events AND alert_events_broken")

    result = env.run(rule, T)

    run = env.runs(rule)[0]
    assert states(run) == ["claimed", "compiled", "evaluated", "failed"]
    assert (result["status"], run["status"], run["entities"], run["matched"]) == ("failed", "failed", 3, 1)
    assert "alert_events" in result["error"], result["error"]
    assert env.count("rule_evaluations") == 0


# --- 13. organization isolation ------------------------------------------------------------------------------------


def test_a_rule_never_reads_another_organizations_rows(env):
    org_a, org_b = env.org("A"), env.org("B")
    logic = {">": [{"var": "spend"}, 15]}
    rule_a = env.rule(org_a, {"window": "yesterday", "logic": logic})
    rule_b = env.rule(org_b, {"window": "yesterday", "logic": logic})
    env.metrics(
        {"org_id": org_a, "date": YESTERDAY, "campaign_id": "c1", "campaign_name": "A one", "spend": "10"},
        {"org_id": org_a, "date": YESTERDAY, "campaign_id": "c2", "campaign_name": "A two", "spend": "20"},
        {"org_id": org_b, "date": YESTERDAY, "campaign_id": "c1", "campaign_name": "B one", "spend": "1000"},
        {"org_id": org_b, "date": YESTERDAY, "campaign_id": "c2", "campaign_name": "B two", "spend": "2000"},
        {"org_id": org_b, "date": YESTERDAY, "campaign_id": "c3", "campaign_name": "B three", "spend": "3000"},
    )

    result_a = env.run(rule_a, T)
    result_b = env.run(rule_b, T)

    assert (result_a["entities"], result_a["matched"], result_a["alerts"]) == (2, 1, 1)
    assert [(e["org_id"], e["entity_id"], e["results"]["spend"], e["matched"]) for e in env.evaluations(rule_a)] == [
        (org_a, "c1", 10.0, 0), (org_a, "c2", 20.0, 1)]
    assert [(a["org_id"], a["entity_id"], a["entity_name"]) for a in env.alerts(rule_a)] == [(org_a, "c2", "A two")]
    assert (result_b["entities"], result_b["matched"]) == (3, 3)
    assert [(e["org_id"], e["entity_id"], e["results"]["spend"]) for e in env.evaluations(rule_b)] == [
        (org_b, "c1", 1000.0), (org_b, "c2", 2000.0), (org_b, "c3", 3000.0)]
    assert [a["entity_name"] for a in env.alerts(rule_b)] == ["B one", "B two", "B three"]


# --- 14. hostile strings -------------------------------------------------------------------------------------------

TARGET = "O'Brien {x} -- \\"  # O'Brien {x} -- \  (one backslash)


def test_hostile_strings_are_compared_as_data(env):
    org = env.org()
    ids = {
        "a": "a'1 {x} -- /*",
        "b": "b\\2 */ --",
        "c": "c{r_org:UInt32}",
        "d": "d\u00fc\u2603\U0001F600",
        "e": "e-out",
        "f": "f-nul",
    }
    names = {
        "a": TARGET,
        "b": "O'Brien {x} -- ",
        "c": "O\\'Brien {x} -- \\",
        "d": "O'Brien {x} -- \\\\",
        "e": TARGET,
        "f": "nul\x00name O'Brien",
    }
    env.metrics(*({"org_id": org, "date": YESTERDAY, "campaign_id": ids[k], "campaign_name": names[k],
                   "dsp_type": "T'TD\\" if k == "d" else "DV360", "spend": "1"} for k in ids))
    scope = {"campaign_id": [ids[k] for k in "abcdf"] + ["zz' OR 1=1 --", "{r_org:UInt32}"],
             "dsp_type": ["DV360", "T'TD\\", "/* */"]}
    logic = {"or": [{"==": [{"var": "campaign_name"}, TARGET]},
                    {"==": [{"var": "campaign_name"}, "/* {r_org:UInt32} */ \u2603 '--"]}]}
    rule = env.rule(org, {"window": "yesterday", "scope": scope, "logic": logic})

    result = env.run(rule, T)

    assert (result["status"], result["entities"], result["matched"], result["alerts"]) == ("succeeded", 5, 1, 1)
    by_id = {row["entity_id"]: row for row in env.evaluations(rule)}
    assert set(by_id) == {ids[k] for k in "abcdf"}
    for key in "abcdf":
        row = by_id[ids[key]]
        assert row["results"] == {"campaign_name": names[key], "conditions": [key == "a", False]}
        assert row["matched"] == (1 if key == "a" else 0)
    [alert] = env.alerts(rule)
    assert (alert["entity_id"], alert["entity_name"]) == (ids["a"], TARGET)


# --- 15. the interpreter path --------------------------------------------------------------------------------------

FIELDS = field_types("campaign_metrics_daily", False)
# (logic the compiler may refuse, a compilable equivalent, the fields it reads, the campaigns that match both)
CANDIDATES = [
    ({"some": [{"merge": [{"var": "spend"}, {"var": "clicks"}]}, {">": [{"var": ""}, 100]}]},
     {"or": [{">": [{"var": "spend"}, 100]}, {">": [{"var": "clicks"}, 100]}]},
     {"spend", "clicks"}, {"c1", "c2"}),
    ({"==": [{"substr": [{"var": "campaign_name"}, 0, 4]}, "Camp"]},
     {"matches": [{"var": "campaign_name"}, "^Camp"]},
     {"campaign_name"}, {"c1", "c3"}),
    ({">": [{"reduce": [{"merge": [{"var": "spend"}, {"var": "clicks"}]},
                        {"+": [{"var": "current"}, {"var": "accumulator"}]}, 0]}, 100]},
     {">": [{"+": [{"var": "spend"}, {"var": "clicks"}]}, 100]},
     {"spend", "clicks"}, {"c1", "c2"}),
]
INTERPRETER_DATA = {  # campaign id: (name, spend, clicks), all yesterday
    "c1": ("Camp A", 150.0, 5.0), "c2": ("Xamp B", 20.0, 200.0), "c3": ("Camp C", 10.0, 10.0),
    "c4": ("Other", 5.0, 1.0),
}


def refused_candidate():
    """The first candidate the compiler refuses, with its compilable equivalent (asserted to compile)."""
    for refused, equivalent, reads, expected in CANDIDATES:
        try:
            compile_logic(refused, FIELDS)
        except NotCompilable:
            compile_logic(equivalent, FIELDS)  # must not raise
            return refused, equivalent, reads, expected
    pytest.fail("the compiler now compiles every candidate: add one it refuses")


def test_interpreter_path_matches_the_sql_path(env):
    org = env.org()
    env.metrics(*({"org_id": org, "date": YESTERDAY, "campaign_id": key, "campaign_name": name, "spend": str(spend),
                   "clicks": int(clicks)} for key, (name, spend, clicks) in INTERPRETER_DATA.items()))
    env.metrics({"org_id": org, "date": TODAY, "campaign_id": "c5", "campaign_name": "Camp Today", "spend": "500",
                 "clicks": 500})
    refused, equivalent, reads, expected = refused_candidate()
    interpreted = env.rule(org, {"window": "yesterday", "logic": refused})
    compiled = env.rule(org, {"window": "yesterday", "logic": equivalent})

    slow = env.run(interpreted, T)
    fast = env.run(compiled, T)

    assert (slow["status"], slow["path"], slow["error"]) == ("succeeded", "interpreter", None)
    assert (fast["status"], fast["path"]) == ("succeeded", "sql")
    assert (slow["entities"], slow["matched"], slow["alerts"]) == (4, len(expected), len(expected))
    slow_rows, fast_rows = env.evaluations(interpreted), env.evaluations(compiled)
    assert [r["entity_id"] for r in slow_rows] == ["c1", "c2", "c3", "c4"]
    assert {r["entity_id"] for r in slow_rows if r["matched"]} == expected
    assert {r["entity_id"] for r in fast_rows if r["matched"]} == expected
    assert {r["eval_time"] for r in slow_rows} == {ch_text(T)}
    for row in slow_rows:  # the variables the logic reads, with their values, and the one top-level condition
        name, spend, clicks = INTERPRETER_DATA[row["entity_id"]]
        values = {"campaign_name": name, "spend": spend, "clicks": clicks}
        assert row["results"] == {**{v: values[v] for v in reads}, "conditions": [row["entity_id"] in expected]}
    assert {a["entity_id"] for a in env.alerts(interpreted)} == expected
    assert {a["entity_name"] for a in env.alerts(interpreted)} == {INTERPRETER_DATA[c][0] for c in expected}
    assert states(env.runs(interpreted)[0]) == ["claimed", "compiled", "evaluated", "alerted", "succeeded"]
