"""A backfill whose fire times share evaluations gives exactly what running each fire time on its own gives.

Two identical rules of one organization: one is backfilled (`rulesctl backfill`, dry and `--write`), the other is
run at each of the same fire times by `rulesctl run --at` (dry and not). Every run summary, `rule_runs` row,
`rule_evaluations` row and `alert_events` row of the one must equal the other's, less what names the run itself
(its id, rule id, trigger, timings). The organization has no members, so the separate manual runs notify no one,
as a backfill never does. Rows are read back with plain SQL.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from tests.integration.test_cli_commands import rulesctl

BERLIN = ZoneInfo("Europe/Berlin")
# Fire times 8 h apart against a 10 h cooldown: whether a match alerts differs from one fire time to the next.
ACTIONS = {"severity": "warning", "cooldown_minutes": 600, "notify": {"channels": ["in_app"]}}
SCHEDULE = "0 */8 * * *"
_SUMMARY_OF_THE_RUN_ITSELF = ("run_id", "rule_id", "trigger", "duration_ms")
_RUN_COLUMNS = ("scheduled_for", "dry_run", "status", "state", "entities", "matched", "alerts", "notified_users",
                "path", "error", "attempts")

RULES = {
    "daily, last 3 days against the previous period": {
        "window": "last_3_days", "compare_to": "previous_period", "schedule": SCHEDULE,
        "logic": {"and": [{">": [{"var": "spend"}, 100]}, {">": [{"var": "spend"}, {"var": "prev.spend"}]}]},
    },
    "daily, today": {"window": "today", "schedule": SCHEDULE, "logic": {">": [{"var": "spend"}, 20]}},
    "pacing, yesterday": {"source": "pacing_snapshots", "window": "yesterday", "schedule": SCHEDULE,
                          "logic": {"<": [{"var": "pacing_rate"}, 0.9]}},
    "pacing, today (windowed up to T: no sharing)": {
        "source": "pacing_snapshots", "window": "today", "schedule": SCHEDULE,
        "logic": {"<": [{"var": "pacing_rate"}, 0.9]},
    },
}


def _fill(env, org: int, first) -> None:
    """Daily metrics from six days before `first` to the day after it; pacing snapshots every 4 hours from midnight."""
    rows = []
    for offset in range(-6, 3):
        day = first + timedelta(days=offset)
        for number, campaign in enumerate(("c1", "c2", "c3", "c4")):
            rows.append({"org_id": org, "date": day, "campaign_id": campaign, "impressions": 1000 * (number + 1),
                         "clicks": 7 * (offset + 7) * (number + 1), "spend": (offset + 7) * 13 * (number + 1) % 170})
    env.metrics(*rows)
    start = datetime.combine(first - timedelta(days=1), datetime.min.time(), tzinfo=BERLIN)
    snapshots = []
    for step in range(3 * 6):
        moment = (start + timedelta(hours=4 * step)).astimezone(UTC)
        for number, entity in enumerate(("io-1", "io-2", "io-3")):
            snapshots.append({"org_id": org, "snapshot_time": moment.strftime("%Y-%m-%d %H:%M:%S"),
                              "entity_type": "insertion_order", "entity_id": entity,
                              "pacing_rate": f"{((step * 7 + number * 5) % 12) / 10:.1f}"})
    env.snapshots(*snapshots)


def _summaries(process) -> list[dict]:
    assert process.returncode == 0, process.stderr
    return [json.loads(line) for line in process.stdout.splitlines()]


def _without_run_itself(summary: dict, *also: str) -> dict:
    return {key: value for key, value in summary.items() if key not in (*_SUMMARY_OF_THE_RUN_ITSELF, *also)}


def _runs(env, rule: str, dry_run: bool) -> list[tuple]:
    rows = env.pg(f"SELECT {', '.join(_RUN_COLUMNS)} FROM rule_runs WHERE rule_id = %s AND dry_run = %s "
                  "ORDER BY scheduled_for", (rule, dry_run))
    return [tuple(row[column] for column in _RUN_COLUMNS) for row in rows]


def _evaluations(env, rule: str) -> list[tuple]:
    return sorted((row["org_id"], row["eval_time"], row["entity_id"], row["matched"], row["condition_results"])
                  for row in env.evaluations(rule))


def _alerts(env, rule: str) -> list[tuple]:
    return sorted((row["org_id"], row["alert_time"], row["rule_name"], row["severity"], row["entity_type"],
                   row["entity_id"], row["entity_name"], row["condition_details"], list(row["notified_users"]))
                  for row in env.alerts(rule))


@pytest.mark.parametrize("conditions", RULES.values(), ids=RULES.keys())
def test_shared_backfill_equals_separate_runs(env, conditions):
    org = env.org(timezone="Europe/Berlin")
    first = datetime.now(BERLIN).date() - timedelta(days=10)
    _fill(env, org, first)
    backfilled = env.rule(org, conditions, ACTIONS, name="same rule")
    separate = env.rule(org, conditions, ACTIONS, name="same rule")
    days = ("--from", first.isoformat(), "--to", (first + timedelta(days=1)).isoformat())
    databases = {"pg": env.pg_url, "ch": env.ch_url}

    dry = _summaries(rulesctl("backfill", backfilled, *days, "--json", **databases))
    written = _summaries(rulesctl("backfill", backfilled, *days, "--write", "--json", **databases))
    fire_times = [summary["scheduled_for"] for summary in written]
    separate_dry = [_summaries(rulesctl("run", separate, "--at", at, "--dry-run", "--json", **databases))[0]
                    for at in fire_times]
    separate_written = [_summaries(rulesctl("run", separate, "--at", at, "--json", **databases))[0]
                        for at in fire_times]

    assert len(fire_times) == 6 and [summary["scheduled_for"] for summary in dry] == fire_times
    # A dry backfill carries its simulated alert lifecycle from one fire time to the next; separate dry runs
    # change no state, so only the written ones are compared on it.
    assert ([_without_run_itself(s, "lifecycle") for s in dry]
            == [_without_run_itself(s, "lifecycle") for s in separate_dry])
    assert [_without_run_itself(s) for s in written] == [_without_run_itself(s) for s in separate_written]
    assert {s["status"] for s in written} == {"succeeded"}
    for dry_run in (True, False):
        assert _runs(env, backfilled, dry_run) == _runs(env, separate, dry_run)
    assert _evaluations(env, backfilled) == _evaluations(env, separate)
    assert _alerts(env, backfilled) == _alerts(env, separate)
    # the comparison has something to compare: rows at every fire time, matches, and alerts held back by cooldown
    assert len({row[1] for row in _evaluations(env, separate)}) == 6
    assert sum(s["matched"] for s in written) > sum(s["alerts"] for s in written) > 0
