"""The alert lifecycle (the README's Alert lifecycle): each (rule, entity) goes normal -> pending -> firing ->
recovering -> normal, kept in alert_states with every change in alert_state_history, on real PostgreSQL and
ClickHouse; on the SQL path, the interpreter and in batches; through take-overs, repeated requests and runs
finishing out of order; and as dry runs and backfills report it, writing nothing.

Each fire time is 02:00 UTC of a day; a rule over `yesterday` then reads the day before it, whose spend per
campaign each test sets.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from storage.errors import DatabaseUnavailable
from tests.integration.celery_support import iso, own_redis, services_on
from tests.integration.test_batch_runs import written_rows
from tests.integration.test_cli_commands import rulesctl
from tests.integration.test_notifications import deliveries
from worker.batch_runner import BatchRequest, BatchRunner
from worker.runner import RuleRunner, RunRequest

START = datetime.now(UTC).replace(hour=2, minute=0, second=0, microsecond=0) - timedelta(days=12)
SPEND_OVER_100 = {"window": "yesterday", "logic": {">": [{"var": "spend"}, 100]}}
# Not compilable to SQL (an iterating operator over row data): the rule runs on the interpreter.
INTERPRETED_OVER_100 = {"window": "yesterday", "logic": {"some": [{"merge": [{"var": "spend"}]},
                                                                  {">": [{"var": ""}, 100]}]}}


def fire_time(day: int) -> datetime:
    return START + timedelta(days=day)


def spend(env, org: int, day: int, **by_campaign: float) -> None:
    """The spend of each campaign on the day before fire time `day`."""
    date = (fire_time(day) - timedelta(days=1)).date()
    env.metrics(*({"org_id": org, "date": date, "campaign_id": campaign, "spend": amount, "impressions": 1000}
                  for campaign, amount in by_campaign.items()))


def states(env, rule: str) -> dict[str, tuple[str, int]]:
    return {row["entity_id"]: (row["state"], row["streak"])
            for row in env.pg("SELECT entity_id, state, streak FROM alert_states WHERE rule_id = %s", (rule,))}


def history(env, rule: str) -> list[tuple[str, str, str, int]]:
    """(entity, from, to, fire time's day) of every change of the rule's states, in order."""
    rows = env.pg("SELECT entity_id, from_state, to_state, at FROM alert_state_history WHERE rule_id = %s "
                  "ORDER BY at, entity_id", (rule,))
    return [(row["entity_id"], row["from_state"], row["to_state"],
             (row["at"].replace(tzinfo=UTC) - START).days) for row in rows]


def alerted(env, rule: str, day: int) -> list[str]:
    return [alert["entity_id"] for alert in env.alerts(rule, fire_time(day))]


def resolved_notices(env, rule: str) -> list[tuple[int, list[str]]]:
    rows = env.pg("SELECT n.entities, r.scheduled_for FROM notifications n JOIN rule_runs r ON r.id = n.run_id "
                  "WHERE n.rule_id = %s AND n.kind = 'resolved' ORDER BY r.scheduled_for", (rule,))
    return [((row["scheduled_for"].replace(tzinfo=UTC) - START).days, [e["entity_id"] for e in row["entities"]])
            for row in rows]


def run_days(env, rule: str, days: range, runner: RuleRunner | None = None) -> list[dict[str, Any]]:
    runner = runner or env.runner
    return [runner.run(RunRequest(rule, fire_time(day), trigger="schedule")) for day in days]


def owner_org(env) -> int:
    org = env.org(timezone="UTC")
    env.member(env.user(), org, "owner")
    return org


def test_with_the_defaults_a_match_fires_at_once_and_a_miss_resolves_at_once(env):
    org = owner_org(env)
    spend(env, org, 0, c1=150, c2=150)
    spend(env, org, 1, c1=150, c2=20)
    rule = env.rule(org, SPEND_OVER_100, {"cooldown_minutes": 0, "notify_on_resolve": True})

    summaries = run_days(env, rule, range(2))

    assert [alerted(env, rule, day) for day in range(2)] == [["c1", "c2"], ["c1"]]
    assert history(env, rule) == [("c1", "normal", "firing", 0), ("c2", "normal", "firing", 0),
                                  ("c2", "firing", "normal", 1)]
    assert states(env, rule) == {"c1": ("firing", 0), "c2": ("normal", 0)}
    assert resolved_notices(env, rule) == [(1, ["c2"])]
    assert [s["lifecycle"] for s in summaries] == [{"pending": 0, "firing": 2, "recovering": 0, "resolved": 0},
                                                   {"pending": 0, "firing": 1, "recovering": 0, "resolved": 1}]


def test_pending_runs_hold_the_alert_until_that_many_matching_runs_in_a_row(env):
    org = owner_org(env)
    spend(env, org, 0, c1=150, c2=150)
    spend(env, org, 1, c1=150, c2=20)
    spend(env, org, 2, c1=150, c2=150)
    rule = env.rule(org, SPEND_OVER_100, {"cooldown_minutes": 0, "pending_runs": 2})

    summaries = run_days(env, rule, range(3))

    # c1 matches twice in a row and fires at the second; c2 misses in between and never gets there.
    assert [alerted(env, rule, day) for day in range(3)] == [[], ["c1"], ["c1"]]
    assert history(env, rule) == [("c1", "normal", "pending", 0), ("c2", "normal", "pending", 0),
                                  ("c1", "pending", "firing", 1), ("c2", "pending", "normal", 1),
                                  ("c2", "normal", "pending", 2)]
    assert states(env, rule) == {"c1": ("firing", 0), "c2": ("pending", 1)}
    assert [s["alerts"] for s in summaries] == [0, 1, 1]
    assert [(s["lifecycle"]["pending"], s["lifecycle"]["firing"]) for s in summaries] == [(2, 0), (0, 1), (1, 1)]
    assert env.count("alert_events", rule) == 2 and deliveries(env, summaries[0]["run_id"]) == []


def test_recovery_runs_hold_the_resolution_and_a_match_while_recovering_fires_again(env):
    org = owner_org(env)
    for day, amount in enumerate((150, 20, 150, 20, 20)):
        spend(env, org, day, c1=amount)
    rule = env.rule(org, SPEND_OVER_100, {"cooldown_minutes": 0, "recovery_runs": 2, "notify_on_resolve": True})

    run_days(env, rule, range(5))

    assert history(env, rule) == [("c1", "normal", "firing", 0), ("c1", "firing", "recovering", 1),
                                  ("c1", "recovering", "firing", 2), ("c1", "firing", "recovering", 3),
                                  ("c1", "recovering", "normal", 4)]
    assert [alerted(env, rule, day) for day in range(5)] == [["c1"], [], ["c1"], [], []]
    assert resolved_notices(env, rule) == [(4, ["c1"])]


@pytest.mark.parametrize("path", ["sql", "interpreter"])
def test_recover_when_must_also_hold_before_an_entity_resolves(env, path):
    org = owner_org(env)
    for day, amount in enumerate((150, 80, 40)):
        spend(env, org, day, c1=amount, c2=150 if day == 0 else 10)
    conditions = SPEND_OVER_100 if path == "sql" else INTERPRETED_OVER_100
    rule = env.rule(org, conditions, {"cooldown_minutes": 0, "notify_on_resolve": True,
                                      "recover_when": {"<": [{"var": "spend"}, 50]}})

    summaries = run_days(env, rule, range(3))

    assert {s["path"] for s in summaries} == {path}
    # c1 stops matching at 80 but only recovers below 50; c2 falls to 10 at once.
    assert history(env, rule) == [("c1", "normal", "firing", 0), ("c2", "normal", "firing", 0),
                                  ("c1", "firing", "recovering", 1), ("c2", "firing", "normal", 1),
                                  ("c1", "recovering", "normal", 2)]
    assert resolved_notices(env, rule) == [(1, ["c2"]), (2, ["c1"])]
    documents = {(row["entity_id"], row["eval_time"][:10]): row["condition_results"]
                 for row in env.evaluations(rule)}
    day_1 = fire_time(1).date().isoformat()
    assert documents[("c1", day_1)].endswith('"recover_when":false,"conditions":[false]}')
    assert documents[("c2", day_1)].endswith('"recover_when":true,"conditions":[false]}')


def test_recover_when_gives_the_same_documents_on_both_paths_and_in_a_batch(env):
    org = owner_org(env)
    for day, amount in enumerate((150, 80, 40)):
        spend(env, org, day, c1=amount, c2=150 - 40 * day)
    actions = {"cooldown_minutes": 0, "pending_runs": 1, "recovery_runs": 1,
               "recover_when": {"and": [{"<": [{"var": "spend"}, 50]}, {">": [{"var": "impressions"}, 10]}]}}
    plain = {"window": "yesterday", "logic": {">": [{"var": "spend"}, 100]}}
    alone_sql, alone_interpreted, batched, batched_peer = (env.rule(org, plain, actions, name="same")
                                                           for _ in range(4))
    interpreter = RuleRunner(env.postgres, env.clickhouse, interpreter_only=True)
    batches = BatchRunner(env.postgres, env.clickhouse)
    for day in range(3):
        env.runner.run(RunRequest(alone_sql, fire_time(day), trigger="schedule"))
        interpreter.run(RunRequest(alone_interpreted, fire_time(day), trigger="schedule"))
        batches.run_batch(BatchRequest(org, fire_time(day), (batched, batched_peer)))

    assert "in a batch of 2 rules" in str(env.runs(batched)[0]["transitions"])
    expected = written_rows(env, alone_sql)
    assert len(expected["alert_states"]) == 2
    assert history(env, alone_sql)[-2:] == [("c1", "recovering", "normal", 2), ("c2", "firing", "recovering", 2)]
    for rule in (batched, batched_peer):
        assert written_rows(env, rule) == expected
        assert history(env, rule) == history(env, alone_sql)
    # The interpreter's runs say so; every row they write is otherwise the same.
    interpreted = written_rows(env, alone_interpreted)
    assert {key: rows for key, rows in interpreted.items() if key != "rule_runs"} == {
        key: rows for key, rows in expected.items() if key != "rule_runs"}
    assert history(env, alone_interpreted) == history(env, alone_sql)


def test_editing_a_rules_conditions_resets_its_entities_to_normal(env):
    org = owner_org(env)
    for day in range(3):
        spend(env, org, day, c1=150)
    rule = env.rule(org, SPEND_OVER_100, {"cooldown_minutes": 0, "pending_runs": 2})

    run_days(env, rule, range(1))
    env.pg("UPDATE rules SET conditions = %s WHERE id = %s",
           ('{"window": "yesterday", "logic": {">": [{"var": "spend"}, 99]}}', rule))
    run_days(env, rule, range(1, 3))

    # The pending streak of day 0 was reached under the old conditions: day 1 starts a new one.
    assert [alerted(env, rule, day) for day in range(3)] == [[], [], ["c1"]]
    assert history(env, rule) == [("c1", "normal", "pending", 0), ("c1", "pending", "firing", 2)]
    assert states(env, rule) == {"c1": ("firing", 0)}


def test_a_request_again_and_a_late_earlier_run_count_no_transition_twice(env):
    org = owner_org(env)
    for day in range(3):
        spend(env, org, day, c1=150 if day < 2 else 20)
    rule = env.rule(org, SPEND_OVER_100, {"cooldown_minutes": 0, "pending_runs": 2, "recovery_runs": 2})

    run_days(env, rule, range(2))
    again = run_days(env, rule, range(2))
    assert {s["status"] for s in again} == {"succeeded"}
    assert history(env, rule) == [("c1", "normal", "pending", 0), ("c1", "pending", "firing", 1)]
    # Day 2 runs before a late run of an earlier day (day -1, with c1 matching): that run leaves c1's state alone.
    run_days(env, rule, range(2, 3))
    spend(env, org, -1, c1=150)
    late = run_days(env, rule, range(-1, 0))[0]
    assert late["status"] == "succeeded"
    assert history(env, rule) == [("c1", "normal", "pending", 0), ("c1", "pending", "firing", 1),
                                  ("c1", "firing", "recovering", 2)]
    assert states(env, rule) == {"c1": ("recovering", 1)}


class DiesBeforeAlerted(RuleRunner):
    """A runner whose database connection is lost as it records `alerted`: the alert stage's transaction (states,
    history, deliveries) is rolled back, the run stays running with its alert_events written."""

    def _transitions(self, tx, moves):
        if any(target.value == "alerted" for _, target, _, _ in moves):
            raise DatabaseUnavailable("the connection to PostgreSQL was lost")
        super()._transitions(tx, moves)


def test_a_run_taken_over_after_its_alert_stage_died_changes_each_state_once(env):
    org = owner_org(env)
    spend(env, org, 0, c1=150, c2=150)
    spend(env, org, 1, c1=150, c2=20)
    rule = env.rule(org, SPEND_OVER_100, {"cooldown_minutes": 0, "recovery_runs": 1, "notify_on_resolve": True})
    run_days(env, rule, range(1))

    with pytest.raises(DatabaseUnavailable):
        run_days(env, rule, range(1, 2), DiesBeforeAlerted(env.postgres, env.clickhouse))
    assert history(env, rule) == [("c1", "normal", "firing", 0), ("c2", "normal", "firing", 0)]
    env.pg("UPDATE rule_runs SET lease_expires_at = now() AT TIME ZONE 'UTC' - interval '1 minute' "
           "WHERE rule_id = %s AND status = 'running'", (rule,))
    [taken_over] = run_days(env, rule, range(1, 2))

    assert taken_over["status"] == "succeeded" and env.run_row(taken_over["run_id"])["attempts"] == 2
    assert history(env, rule) == [("c1", "normal", "firing", 0), ("c2", "normal", "firing", 0),
                                  ("c2", "firing", "normal", 1)]
    assert alerted(env, rule, 1) == ["c1"]
    assert resolved_notices(env, rule) == [(1, ["c2"])]


def test_a_dry_run_reports_what_the_lifecycle_would_do_and_writes_nothing(env):
    org = owner_org(env)
    spend(env, org, 0, c1=150, c2=150)
    spend(env, org, 1, c1=150, c2=20)
    rule = env.rule(org, SPEND_OVER_100, {"cooldown_minutes": 0, "pending_runs": 2})
    run_days(env, rule, range(1))
    before = (states(env, rule), history(env, rule))

    dry = env.run(rule, fire_time(1), dry_run=True)

    assert dry["lifecycle"] == {"pending": 0, "firing": 1, "recovering": 0, "resolved": 0, "would_alert": 1}
    assert (dry["alerts"], env.count("alert_events", rule)) == (0, 0)
    assert (states(env, rule), history(env, rule)) == before
    printed = rulesctl("run", rule, "--at", fire_time(1).isoformat(), "--dry-run", pg=env.pg_url, ch=env.ch_url)
    assert printed.stdout.splitlines()[2] == "  lifecycle: 0 pending, 1 firing, 0 recovering, 0 resolved, 1 would alert"
    assert (states(env, rule), history(env, rule)) == before


def test_a_backfill_replays_the_lifecycle_in_memory_and_leaves_the_live_states_alone(env):
    org = owner_org(env)
    for day, amount in enumerate((150, 150, 20, 20)):
        spend(env, org, day, c1=amount)
    rule = env.rule(org, {**SPEND_OVER_100, "schedule": "0 2 * * *"},
                    {"cooldown_minutes": 0, "pending_runs": 2, "recovery_runs": 2})
    days = ("--from", fire_time(0).date().isoformat(), "--to", fire_time(3).date().isoformat())

    dry = _summaries(rulesctl("backfill", rule, *days, "--json", pg=env.pg_url, ch=env.ch_url))
    table = rulesctl("backfill", rule, *days, pg=env.pg_url, ch=env.ch_url).stdout

    lifecycle = [(s["lifecycle"]["pending"], s["lifecycle"]["firing"], s["lifecycle"]["recovering"],
                  s["lifecycle"]["resolved"], s["lifecycle"]["would_alert"]) for s in dry]
    assert lifecycle == [(1, 0, 0, 0, 0), (0, 1, 0, 0, 1), (0, 0, 1, 0, 0), (0, 0, 0, 1, 0)]
    assert table.splitlines()[-2] == ("lifecycle: 1 resolved; after the last fire time 0 pending, 0 firing, "
                                      "0 recovering; 1 would alert")
    assert states(env, rule) == {} and history(env, rule) == []


def _summaries(completed) -> list[dict]:
    assert completed.returncode == 0, completed.stderr
    return [json.loads(line) for line in completed.stdout.splitlines() if line.startswith("{")]


@pytest.mark.slow
def test_through_a_real_worker_each_state_changes_once_though_every_task_is_sent_twice(pg_url, migrated_ch_url,
                                                                                     tmp_path):
    """A worker of two processes gets each fire time's rules.evaluate of one rule twice at once, and a
    rules.evaluate_batch of two others twice: every state change of each rule is recorded once, and its one
    resolution sends one notice."""
    with own_redis(tmp_path) as redis_server, services_on(pg_url, migrated_ch_url, 0, tmp_path / "logs",
                                                          redis_server=redis_server.url) as services:
        data = services.data()
        org = owner_org(data)
        for day, amount in enumerate((150, 150, 20, 20)):
            spend(data, org, day, c1=amount)
        actions = {"cooldown_minutes": 0, "pending_runs": 2, "recovery_runs": 2, "notify_on_resolve": True}
        rule, *batched = (data.rule(org, SPEND_OVER_100, actions) for _ in range(3))
        services.start_worker(queues="rules")

        for day in range(4):
            at = iso(fire_time(day))
            tasks = [services.send("rules.evaluate", rule, scheduled_for=at) for _ in range(2)]
            tasks += [services.send("rules.evaluate_batch", org, at, batched) for _ in range(2)]
            for task in tasks:
                task.get(timeout=60)

        expected = [("c1", "normal", "pending", 0), ("c1", "pending", "firing", 1),
                    ("c1", "firing", "recovering", 2), ("c1", "recovering", "normal", 3)]
        for rule_id in (rule, *batched):
            assert history(data, rule_id) == expected
            assert resolved_notices(data, rule_id) == [(3, ["c1"])]
            assert len(data.runs(rule_id)) == 4
