"""Broken rows and lost fire times, with real processes: beat beside every kind of broken rule, a worker whose first
task meets a SIGSTOPped ClickHouse, `rulesctl dispatch` and rules.evaluate_org with broken rules, and the sweeper
sending again a fire time that was sent and never claimed.

Every worker and beat is a real `python -m celery -A worker.app ...` process (celery_support). Broken rules are
written with plain SQL, as an operator could. What is asserted is read back from rule_runs, sent_fire_times, the
processes' logs and the result backend.

Redis database number: 3, for every test of this module (they run one after the other).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from datetime import UTC, datetime, timedelta

import pytest
from psycopg.types.json import Jsonb

from storage.postgres import Postgres
from tests.integration.celery_support import (NO_COOLDOWN, Services, iso, minute_floor, naive, own_clickhouse,
                                              received_tasks, services_on, spend_rule, three_campaigns, utc_now,
                                              wait_for_runs, wait_until)
from tests.integration.test_service_faults import log_lines
from tests.integration.test_worker_beat import json_lines
from worker.runner import BadRunRequest
from worker.schedule import FireTime, FireTimeSender, load_rules
from worker.sweeper import MAX_FIRE_TIME_RESENDS, Sweeper

REDIS_DB = 1
EVERY_MINUTE = spend_rule(15)
# A document 400 levels deep, written by SQL as an operator would: {"logic": {"!": [{"!": [... {"var": "spend"}]}]}}.
DEEP_CONDITIONS_SQL = ("""('{"source": "campaign_metrics_daily", "window": "lifetime", "schedule": "* * * * *", "logic": '"""
                       """ || repeat('{"!": [', 400) || '{"var": "spend"}' || repeat(']}', 400) || '}')::jsonb""")


def broken_rules(services: Services, org: int, mars: int) -> dict[str, tuple[str, str]]:
    """One rule per kind of broken row: {kind: (rule id, the validation message its runs fail with)}."""
    data = services.data()
    rules = {
        "bad cron": (data.rule(org, {**EVERY_MINUTE, "schedule": "61 * * * *"}, NO_COOLDOWN),
                     'conditions.schedule: "61 * * * *" is not a valid cron expression'),
        "unknown timezone": (data.rule(mars, EVERY_MINUTE, NO_COOLDOWN), 'timezone: unknown timezone "Mars/Olympus"'),
        "conditions not an object": (data.rule(org, ["spend", ">", 15], NO_COOLDOWN), "conditions: must be an object"),
        "schedule not text": (data.rule(org, {**EVERY_MINUTE, "schedule": 5}, NO_COOLDOWN),
                              "conditions.schedule: must be a string"),
        "window of a wrong type": (data.rule(org, {**EVERY_MINUTE, "window": 7}, NO_COOLDOWN),
                                   "conditions.window: must be a string"),
        "unknown window": (data.rule(org, {**EVERY_MINUTE, "window": "last_fortnight"}, NO_COOLDOWN),
                           'conditions.window: unknown window "last_fortnight"'),
        "actions not an object": (data.rule(org, EVERY_MINUTE, "notify everyone"), "actions: must be an object"),
    }
    [deep] = services.pg("INSERT INTO rules (org_id, name, module, conditions, actions) VALUES "
                         f"(%s, 'deep', 'alerts', {DEEP_CONDITIONS_SQL}, '{{}}') RETURNING id::text AS id", (org,))
    rules["logic 400 levels deep"] = (deep["id"], "conditions.logic: is nested deeper than 32 levels")
    return rules


# Broken rules whose schedule still fires every minute: each fire time gives a failed run.
FIRING = ("window of a wrong type", "unknown window", "actions not an object", "logic 400 levels deep")
# Broken rules with no fire times at all: one failed run as of the row's last change.
UNSCHEDULABLE = ("bad cron", "unknown timezone", "schedule not text")


def problem_lines(log: str, rule: str) -> list[str]:
    """The lines of a log that report what is wrong with `rule` (not the lines sending it)."""
    return [line for line in log_lines(log, f"rule {rule} ")
            if "is not valid" in line or "has no fire times" in line or "never fires" in line]


def edited_at(services: Services, rule: str) -> datetime:
    """The rule's last change (its row or its organization's), to the second, in UTC, naive."""
    [row] = services.pg(
        "SELECT (date_trunc('second', greatest(r.created_at, r.updated_at, o.updated_at)) "
        "AT TIME ZONE current_setting('TimeZone')) AT TIME ZONE 'UTC' AS at "
        "FROM rules r JOIN organizations o ON o.id = r.org_id WHERE r.id = %s", (rule,))
    return row["at"]


def assert_one_failed_run(services: Services, rule: str, at: datetime, message: str) -> None:
    [run] = services.data().runs(rule)
    assert (run["scheduled_for"], run["status"], run["trigger"], run["entities"]) == (at, "failed", "schedule", 0)
    assert message in run["error"], run["error"]
    assert services.data().count("rule_evaluations", rule) == 0


# --- 1. beat beside every kind of broken row --------------------------------------------------------------------------


@pytest.mark.slow
def test_beat_schedules_the_good_rules_beside_every_kind_of_broken_row(pg_url, migrated_ch_url, tmp_path):
    with services_on(pg_url, migrated_ch_url, REDIS_DB, tmp_path, time_limit=10) as services:
        data = services.data()
        org = data.org(timezone="UTC", modules=["alerts"])
        mars = data.org(timezone="Mars/Olympus", modules=["alerts"])
        three_campaigns(data, org)
        good = data.rule(org, EVERY_MINUTE, NO_COOLDOWN)
        broken = broken_rules(services, org, mars)
        # The rule of the unknown timezone was last changed 100 days ago, longer than rule_evaluations keeps: its
        # one failed run is still recorded, as of then.
        services.pg("UPDATE rules SET created_at = now() - interval '100 days', updated_at = now() - interval "
                    "'100 days' WHERE id = %s", (broken["unknown timezone"][0],))
        services.pg("UPDATE organizations SET updated_at = now() - interval '100 days' WHERE id = %s", (mars,))
        services.start_worker()
        beat = services.start_beat()
        first = minute_floor(utc_now())

        good_runs = wait_for_runs(services, lambda rows: len(rows) >= 2 and all(r["status"] != "running" for r in rows),
                                  200, "two runs of the good rule", "SELECT * FROM rule_runs WHERE rule_id = %s "
                                  "ORDER BY scheduled_for", (good,))
        assert [(r["status"], r["matched"]) for r in good_runs[:2]] == [("succeeded", 2), ("succeeded", 2)]
        assert good_runs[1]["scheduled_for"] == good_runs[0]["scheduled_for"] + timedelta(minutes=1)
        second = good_runs[1]["scheduled_for"]
        for kind in FIRING:
            rule, message = broken[kind]
            runs = wait_for_runs(services, lambda rows: any(r["scheduled_for"] == second and r["status"] != "running"
                                                            for r in rows), 60, f"the runs of {kind}",
                                 "SELECT * FROM rule_runs WHERE rule_id = %s ORDER BY scheduled_for", (rule,))
            assert all(r["status"] == "failed" and message in r["error"] for r in runs), (kind, runs)
            assert {naive(first), second} <= {r["scheduled_for"] for r in runs}, kind
            assert data.count("rule_evaluations", rule) == 0
        for kind in UNSCHEDULABLE:
            rule, message = broken[kind]
            assert_one_failed_run(services, rule, edited_at(services, rule), message)
        assert data.runs(broken["unknown timezone"][0])[0]["scheduled_for"] < naive(utc_now() - timedelta(
            days=99))
        # Without a schedule of its own, the rule whose conditions are not an object fires hourly, failing.
        assert all(r["status"] == "failed" and "conditions: must be an object" in r["error"]
                   for r in data.runs(broken["conditions not an object"][0]))

        # The good rule went in batches, each of it alone; every broken rule alone, as rules.evaluate.
        log = beat.log()
        batch_lines = log_lines(log, "rules.evaluate_batch", "sent: organization")
        assert batch_lines and all(line.endswith(f", rules {good}") for line in batch_lines), batch_lines
        # One line per broken row, not one per tick; beat is still there.
        for kind, (rule, message) in broken.items():
            assert len(problem_lines(log, rule)) == 1, (kind, problem_lines(log, rule))
            assert message in problem_lines(log, rule)[0], kind
        assert problem_lines(log, good) == []
        assert beat.alive()

        # An edit of the broken cron is logged once more and gives one more failed run, as of the edit.
        bad_cron = broken["bad cron"][0]
        services.pg("UPDATE rules SET conditions = %s, updated_at = now() WHERE id = %s",
                    (Jsonb({**EVERY_MINUTE, "schedule": "62 * * * *"}), bad_cron))
        edit = edited_at(services, bad_cron)
        runs = wait_for_runs(services, lambda rows: len(rows) == 2 and all(r["status"] != "running" for r in rows), 90,
                             "the failed run of the edited rule", "SELECT * FROM rule_runs WHERE rule_id = %s "
                             "ORDER BY scheduled_for", (bad_cron,))
        assert runs[1]["scheduled_for"] == edit and '"62 * * * *" is not a valid cron' in runs[1]["error"]
        third = second + timedelta(minutes=1)
        wait_for_runs(services, lambda rows: len(rows) == 1 and rows[0]["status"] == "succeeded", 90,
                      "the good rule's third run", "SELECT * FROM rule_runs WHERE rule_id = %s AND scheduled_for = %s",
                      (good, third))
        log = beat.log()
        assert len(problem_lines(log, bad_cron)) == 2 and "62 * * * *" in problem_lines(log, bad_cron)[1]
        for kind, (rule, _) in broken.items():
            if kind != "bad cron":
                assert len(problem_lines(log, rule)) == 1, kind
        for kind in UNSCHEDULABLE:
            assert len(data.runs(broken[kind][0])) == (2 if kind == "bad cron" else 1), kind
        assert beat.alive()


# --- 2. a worker's first task meets a hung ClickHouse -----------------------------------------------------------------


@pytest.mark.slow
def test_a_first_task_meeting_a_stopped_clickhouse_is_retried_and_runs_once_after_it_resumes(pg_url, tmp_path):
    """The worker has never reached ClickHouse when its server is SIGSTOPped (accepting connections, answering
    nothing). The task's client gives up within its connect timeout, well before the task's time limit, and the task
    is retried; nothing is claimed meanwhile. Once the server resumes, the fire time runs, once."""
    with own_clickhouse(tmp_path, "rules_hung") as (server, port, ch_url):
        with services_on(pg_url, ch_url, REDIS_DB, tmp_path / "logs", time_limit=10) as services:
            data = services.data()
            org = data.org(timezone="UTC", modules=["alerts"])
            three_campaigns(data, org)
            rule = data.rule(org, EVERY_MINUTE, NO_COOLDOWN)
            at = minute_floor(utc_now()) - timedelta(minutes=1)
            os.kill(server["process"].pid, signal.SIGSTOP)
            worker = services.start_worker()
            task = services.send("rules.evaluate", rule, scheduled_for=iso(at))

            # Past the time limit (10 s) and two retries later, the task is still waiting to be retried.
            wait_until(lambda: len(log_lines(worker.log(), "Retry in", "ClickHouse")) >= 2, 60,
                       "two retries of the task")
            assert services.task_meta(task.id)["status"] == "RETRY"
            assert data.runs(rule) == []
            assert "SoftTimeLimitExceeded" not in worker.log() and "TimeLimitExceeded" not in worker.log()

            os.kill(server["process"].pid, signal.SIGCONT)
            summary = task.get(timeout=180)
            [run] = data.runs(rule)
            assert (summary["status"], summary["run_id"]) == ("succeeded", str(run["id"]))
            assert (run["scheduled_for"], run["status"], run["attempts"], run["matched"]) == (
                naive(at), "succeeded", 1, 2)
            assert len(data.evaluations(rule, at)) == 3 and len(data.alerts(rule, at)) == 2


# --- 3. dispatch and evaluate_org with broken rules -------------------------------------------------------------------


@pytest.mark.slow
def test_dispatch_and_evaluate_org_send_broken_rules_to_their_failed_runs(pg_url, migrated_ch_url, tmp_path):
    with services_on(pg_url, migrated_ch_url, REDIS_DB, tmp_path, time_limit=10) as services:
        data = services.data()
        org = data.org(timezone="UTC", modules=["alerts"])
        mars = data.org(timezone="Mars/Olympus", modules=["alerts"])
        three_campaigns(data, org)
        good = data.rule(org, EVERY_MINUTE, NO_COOLDOWN)
        broken = broken_rules(services, org, mars)
        worker = services.start_worker()
        at = minute_floor(utc_now()) + timedelta(minutes=5)

        dispatched = services.rulesctl("dispatch", "--at", iso(at), "--json")
        assert dispatched.returncode == 0, dispatched.stderr
        sent = {item["rule_id"]: item["scheduled_for"] for item in json_lines(dispatched.stdout)}
        expected = {good: iso(at), **{broken[kind][0]: iso(at) for kind in FIRING},
                    **{broken[kind][0]: iso(edited_at(services, broken[kind][0]).replace(tzinfo=UTC))
                       for kind in UNSCHEDULABLE}}
        assert sent == expected
        # The good rule in its organization's batch, each broken rule alone in a task of its own.
        tasks = {item["rule_id"]: (item["task"], item["task_id"]) for item in json_lines(dispatched.stdout)}
        assert tasks[good][0] == "rules.evaluate_batch"
        assert {tasks[rule][0] for rule in sent if rule != good} == {"rules.evaluate"}
        assert len({task_id for _, task_id in tasks.values()}) == len(tasks)
        for kind, (rule, message) in broken.items():
            lines = [line for line in dispatched.stderr.splitlines() if f"rule {rule} " in line]
            assert len(lines) == 1 and message in lines[0], (kind, dispatched.stderr)
        runs = wait_for_runs(services, lambda rows: len(rows) >= len(expected) and all(
            r["status"] != "running" for r in rows), 120, "the dispatched runs")
        by_rule = {str(r["rule_id"]): r for r in runs}
        assert (by_rule[good]["status"], by_rule[good]["matched"]) == ("succeeded", 2)
        for kind in FIRING + UNSCHEDULABLE:
            rule, message = broken[kind]
            assert by_rule[rule]["status"] == "failed" and message in by_rule[rule]["error"], kind
        assert broken["conditions not an object"][0] not in by_rule  # hourly: not due at that minute

        # Dispatched again: the unschedulable rules' one failed run is the same run.
        again = services.rulesctl("dispatch", "--at", iso(at), "--json")
        assert again.returncode == 0, again.stderr
        for item in json_lines(again.stdout):
            services.client.AsyncResult(item["task_id"]).get(timeout=60)
        assert len(services.pg("SELECT id FROM rule_runs")) == len(expected)

        # rules.evaluate_org: a run as of now for every enabled rule of the organization, broken or not.
        before = {r["id"] for r in services.pg("SELECT id FROM rule_runs")}
        batches_before = received_tasks(worker.log(), "rules.evaluate_batch")
        singles_before = received_tasks(worker.log(), "rules.evaluate")
        listed = services.send("rules.evaluate_org", org).get(timeout=60)
        assert sorted(listed) == sorted([good] + [rule for kind, (rule, _) in broken.items()
                                                  if kind != "unknown timezone"])
        new_runs = wait_for_runs(services, lambda rows: len(rows) >= len(listed) and all(
            r["status"] != "running" for r in rows), 120, "the organization's runs",
            "SELECT * FROM rule_runs WHERE NOT (id = ANY(%s))", (list(before),))
        by_rule = {str(r["rule_id"]): r for r in new_runs}
        assert sorted(by_rule) == sorted(listed)
        assert {(r["trigger"], r["scheduled_for"]) for r in new_runs} == {("manual", new_runs[0]["scheduled_for"])}
        assert by_rule[good]["status"] == "succeeded"
        for kind, (rule, message) in broken.items():
            if rule in by_rule:
                assert by_rule[rule]["status"] == "failed" and message in by_rule[rule]["error"], kind
        recorded = services.pg("SELECT rule_id::text AS rule_id, trigger FROM sent_fire_times WHERE scheduled_for = %s",
                               (new_runs[0]["scheduled_for"],))
        assert sorted((r["rule_id"], r["trigger"]) for r in recorded) == sorted((rule, "manual") for rule in listed)
        # The good rule in a batch of its own (the organization's only valid rule), each broken one alone.
        [batch] = [task for task in received_tasks(worker.log(), "rules.evaluate_batch") if task not in batches_before]
        assert [s["rule_id"] for s in services.client.AsyncResult(batch).get(timeout=60)] == [good]
        singles = [task for task in received_tasks(worker.log(), "rules.evaluate") if task not in singles_before]
        assert sorted(services.client.AsyncResult(task).get(timeout=60)["rule_id"] for task in singles) == sorted(
            rule for rule in listed if rule != good)


# --- 4. a fire time sent and never claimed ----------------------------------------------------------------------------


@pytest.mark.slow
def test_a_fire_time_sent_and_never_claimed_is_sent_again_by_the_sweeper(pg_url, migrated_ch_url, tmp_path, caplog):
    """A fire time recorded as sent whose task was lost (here: never sent at all, as when the broker took it and a
    worker failed it for good) is sent again after the grace period, runs once, and is then forgotten; one that
    never gets a run is sent again MAX_FIRE_TIME_RESENDS times, then forgotten."""
    with services_on(pg_url, migrated_ch_url, REDIS_DB, tmp_path, time_limit=10) as services:
        data = services.data()
        org = data.org(timezone="UTC", modules=["alerts"])
        three_campaigns(data, org)
        lost, unrunnable = data.rule(org, EVERY_MINUTE, NO_COOLDOWN), data.rule(org, EVERY_MINUTE, NO_COOLDOWN)
        at = minute_floor(utc_now()) - timedelta(minutes=2)
        postgres = Postgres(pg_url)
        sent_tasks = []

        def send(name: str, args: tuple, kwargs: dict) -> str:
            sent_tasks.append((name, args, kwargs))
            if args[0] == unrunnable:
                return "dropped"  # a task that never arrives anywhere
            return services.client.send_task(name, args=args, kwargs=kwargs, queue="rules").id

        try:
            FireTimeSender(postgres, send).record([FireTime(lost, at), FireTime(unrunnable, at)])
            Sweeper(postgres, send, fire_time_grace_seconds=3600).sweep()
            assert sent_tasks == []  # within the grace period
            services.start_worker()
            sweeper = Sweeper(postgres, send, fire_time_grace_seconds=1)
            wait_until(lambda: services.pg("SELECT 1 FROM sent_fire_times WHERE sent_at < (now() AT TIME ZONE 'UTC')"
                                           " - interval '1 second'"), 10, "the grace period")
            with caplog.at_level(logging.WARNING, logger="worker.sweeper"):
                sweeper.sweep()
            assert sorted(sent_tasks) == sorted(("rules.evaluate", (rule,), {"scheduled_for": iso(at)})
                                                for rule in (lost, unrunnable))
            assert len(log_lines(caplog.text, f"rule {lost} at {iso(at)} was sent but never claimed")) == 1
            wait_for_runs(services, lambda rows: rows and rows[0]["status"] == "succeeded", 60, "the re-sent run",
                          "SELECT * FROM rule_runs WHERE rule_id = %s", (lost,))

            for _ in range(MAX_FIRE_TIME_RESENDS + 1):
                time.sleep(1.5)  # past the grace period
                sweeper.sweep()
            assert [kwargs for name, (rule,), kwargs in sent_tasks if rule == lost] == [{"scheduled_for": iso(at)}]
            assert len([rule for name, (rule,), kwargs in sent_tasks if rule == unrunnable]) == MAX_FIRE_TIME_RESENDS
            assert services.pg("SELECT * FROM sent_fire_times") == []
            [run] = data.runs(lost)
            assert (run["scheduled_for"], run["status"], run["trigger"]) == (naive(at), "succeeded", "schedule")
            assert data.runs(unrunnable) == []
        finally:
            postgres.close()


# --- 5. the runner and an old fire time of an invalid rule ------------------------------------------------------------


def test_an_invalid_rule_records_its_failure_even_as_of_a_time_older_than_evaluations_are_kept(env):
    """A valid rule as of a T past rule_evaluations' 90 days is refused, writing nothing; an invalid one writes no
    evaluations at any T, so its failed run is recorded, as beat's one run of a rule with no fire times needs."""
    org = env.org(timezone="UTC", modules=["alerts"])
    good = env.rule(org, EVERY_MINUTE, NO_COOLDOWN)
    bad = env.rule(org, {**EVERY_MINUTE, "schedule": "61 * * * *"}, NO_COOLDOWN)
    old = minute_floor(utc_now()) - timedelta(days=100)

    with pytest.raises(BadRunRequest, match="older than the 90 days"):
        env.run(good, old, trigger="schedule")
    failed = env.run(bad, old, trigger="schedule")

    assert env.runs(good) == []
    assert (failed["status"], failed["scheduled_for"], failed["entities"]) == ("failed", iso(old), 0)
    assert '"61 * * * *" is not a valid cron expression' in failed["error"]
    assert env.count("rule_evaluations", bad) == 0


# --- 6. a batch the broker refuses ------------------------------------------------------------------------------------


def test_a_batch_the_broker_refuses_leaves_each_of_its_rules_unsent_and_recorded(env, caplog):
    """Every fire time is recorded before anything is sent; a refused batch gives back all of its rules, so that
    beat tries each again, and the other tasks are still sent."""
    first, second = env.org(timezone="UTC", modules=["alerts"]), env.org(timezone="UTC", modules=["alerts"])
    refused = sorted(env.rule(first, EVERY_MINUTE, NO_COOLDOWN) for _ in range(3))
    kept = env.rule(second, EVERY_MINUTE, NO_COOLDOWN)
    broken = env.rule(second, {**EVERY_MINUTE, "window": "last_fortnight"}, NO_COOLDOWN)
    at = minute_floor(utc_now())
    sent_tasks = []

    def send(name: str, args: tuple, kwargs: dict) -> str:
        if name == "rules.evaluate_batch" and args[0] == first:
            raise ConnectionError("the broker is down")
        sent_tasks.append((name, args, kwargs))
        return f"task {len(sent_tasks)}"

    postgres = Postgres(env.pg_url)
    try:
        rules = {rule.rule_id: rule for rule in load_rules(postgres, frozenset())}
        with caplog.at_level(logging.WARNING, logger="worker.schedule"):
            sent, unsent = FireTimeSender(postgres, send).send([rules[rule].fire_time(at)
                                                                 for rule in (*refused, kept, broken)])
    finally:
        postgres.close()
    assert sorted(fire.rule_id for fire in unsent) == refused
    assert sorted((fire.rule_id, task_id) for fire, task_id in sent) == sorted([(kept, "task 1"), (broken, "task 2")])
    assert sent_tasks == [("rules.evaluate_batch", (second, iso(at), [kept]), {}),
                          ("rules.evaluate", (broken,), {"scheduled_for": iso(at)})]
    assert sorted(line.split("could not send rule ")[1].split()[0]
                  for line in log_lines(caplog.text, "could not send rule", "the broker is down")) == refused
    recorded = env.pg("SELECT rule_id::text AS rule_id, scheduled_for, trigger FROM sent_fire_times")
    assert sorted((r["rule_id"], r["scheduled_for"], r["trigger"]) for r in recorded) == sorted(
        (rule, naive(at), "schedule") for rule in (*refused, kept, broken))
