"""The service's Celery side (the README's service and Guarantees sections) with real processes:
`celery -A worker.app worker|beat`.

Every worker and beat here is a real `python -m celery -A worker.app ...` process on the test's own PostgreSQL
database, ClickHouse database and Redis database number (celery_support), killed with its process group at the end.
What is asserted is read back from rule_runs (PostgreSQL), rule_evaluations and alert_events (ClickHouse), the
result backend and the processes' logs.

Beat fires at minute boundaries, so the beat tests take real minutes. They share them with the rest: the beat
scenario (two beats and a worker along five minutes of the clock, see Scenario) is started in a thread of its own
before the module's first test, the other tests run meanwhile on their own databases, and the two beat tests at the
end of the module wait for it and assert what it left. The whole module takes about five minutes.

Redis database numbers: 10 the beat scenario, 11-15 the other tests, one each.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg.types.json import Jsonb

from storage.migrations import migrate_clickhouse
from tests.conftest import admin_sql, postgres_url
from tests.integration.celery_support import (NO_COOLDOWN, Services, children_of, is_alive, iso, minute_floor, naive,
                                              own_clickhouse, received_tasks, services_on, spend_rule, summary_in,
                                              three_campaigns, utc_now, wait_for_pending_requests, wait_for_runs,
                                              wait_until)
from tests.integration.runs_support import ch_text
from tests.integration.test_runs import SUMMARY_KEYS


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# --- 3. a deleted rule ------------------------------------------------------------------------------------------------


def test_a_task_queued_for_a_rule_deleted_since_does_nothing(pg_url, migrated_ch_url, tmp_path):
    with services_on(pg_url, migrated_ch_url, 11, tmp_path) as services:
        data = services.data()
        org = data.org(timezone="UTC", modules=["alerts"])
        three_campaigns(data, org)
        kept = data.rule(org, spend_rule(15), NO_COOLDOWN)
        deleted = data.rule(org, spend_rule(15), NO_COOLDOWN)
        at = minute_floor(utc_now())
        # Queued while the rule still exists and no worker is up; the rule is deleted before any worker sees it.
        for_deleted = services.send("rules.evaluate", deleted, scheduled_for=iso(at))
        for_kept = services.send("rules.evaluate", kept, scheduled_for=iso(at))
        services.pg("DELETE FROM rules WHERE id = %s", (deleted,))
        services.start_worker()

        assert for_deleted.get(timeout=60) is None
        assert services.task_meta(for_deleted.id)["status"] == "SUCCESS"
        kept_summary = for_kept.get(timeout=60)
        assert (kept_summary["status"], kept_summary["entities"], kept_summary["matched"]) == ("succeeded", 3, 2)
        assert data.runs(deleted) == []
        assert data.count("rule_evaluations", deleted) == data.count("alert_events", deleted) == 0

        # A dispatch after the delete does not send it; `run --enqueue` of it is a usage error naming the rule.
        later = at + timedelta(minutes=1)
        dispatched = services.rulesctl("dispatch", "--at", iso(later), "--json")
        assert dispatched.returncode == 0, dispatched.stderr
        assert [item["rule_id"] for item in json_lines(dispatched.stdout)] == [kept]
        enqueued = services.rulesctl("run", deleted, "--enqueue", "--json")
        assert enqueued.returncode == 2, (enqueued.stdout, enqueued.stderr)
        assert enqueued.stdout == ""
        assert len(enqueued.stderr.strip().splitlines()) == 1 and deleted in enqueued.stderr
        wait_for_runs(services, lambda rows: rows and rows[0]["status"] == "succeeded", 60, "the dispatched run",
                      "SELECT * FROM rule_runs WHERE rule_id = %s AND scheduled_for = %s", (kept, naive(later)))
        assert data.runs(deleted) == []


# --- 5. rulesctl run --enqueue, rulesctl dispatch, rules.evaluate_org -------------------------------------------------


def test_enqueue_dispatch_and_evaluate_org_go_through_the_worker(pg_url, migrated_ch_url, tmp_path):
    with services_on(pg_url, migrated_ch_url, 13, tmp_path) as services:
        data = services.data()
        # Asia/Kolkata is UTC+05:30: its local hour starts at :30 UTC.
        org = data.org(timezone="Asia/Kolkata", modules=["alerts"])
        other = data.org(timezone="UTC", modules=["alerts"])
        three_campaigns(data, org)
        three_campaigns(data, other)
        every = data.rule(org, spend_rule(15), NO_COOLDOWN)
        on_the_hour = data.rule(org, spend_rule(25, "0 * * * *"), NO_COOLDOWN)
        on_the_half_hour = data.rule(org, spend_rule(15, "30 * * * *"), NO_COOLDOWN)
        of_a_module_off = data.rule(org, spend_rule(15), NO_COOLDOWN, module="qa")
        disabled = data.rule(org, spend_rule(15), NO_COOLDOWN)
        services.pg("UPDATE rules SET enabled = FALSE WHERE id = %s", (disabled,))
        elsewhere = data.rule(other, spend_rule(15), NO_COOLDOWN)
        broken = data.rule(other, {**spend_rule(15, "15 3 * * *"), "logic": {">": [{"var": "nope"}, 1]}})
        worker = services.start_worker()

        # rulesctl run --enqueue: the worker's run, with the summary of an in-process run.
        t1, t2 = minute_floor(utc_now()) - timedelta(minutes=10), minute_floor(utc_now()) - timedelta(minutes=20)
        in_process = services.rulesctl("run", every, "--at", iso(t2), "--json")
        assert in_process.returncode == 0, in_process.stderr
        [local] = json_lines(in_process.stdout)
        enqueued = services.rulesctl("run", every, "--at", iso(t1), "--enqueue", "--json")
        assert enqueued.returncode == 0, (enqueued.stderr, services.logs_text())
        [remote] = json_lines(enqueued.stdout)
        assert set(remote) == set(local) and SUMMARY_KEYS <= set(remote)
        assert {key: remote[key] for key in ("rule_id", "org_id", "status", "dry_run", "scheduled_for", "entities",
                                             "matched", "alerts", "notified_users", "error", "path")} == {
            "rule_id": every, "org_id": org, "status": "succeeded", "dry_run": False, "scheduled_for": iso(t1),
            "entities": 3, "matched": 2, "alerts": 2, "notified_users": [], "error": None, "path": "sql"}
        assert remote["run_id"] in worker.log(), "the enqueued run was not the worker's"
        [row] = services.pg("SELECT * FROM rule_runs WHERE id = %s", (remote["run_id"],))
        # Its trigger is checked by test_an_enqueued_run_as_of_a_given_time_is_a_manual_run (a known bug).
        assert (row["scheduled_for"], row["status"], local["trigger"]) == (naive(t1), "succeeded", "manual")
        assert len(data.evaluations(every, t1)) == 3 and len(data.alerts(every, t1)) == 2

        failed = services.rulesctl("run", broken, "--at", iso(t1), "--enqueue", "--json")
        assert failed.returncode == 1, (failed.stdout, failed.stderr)
        [failure] = json_lines(failed.stdout)
        assert failure["status"] == "failed" and "nope" in failure["error"]

        # rulesctl dispatch --at an exact minute: the enabled rules due then, whatever their organization.
        half_past = minute_floor(utc_now()).replace(minute=30)
        if half_past <= utc_now():
            half_past += timedelta(hours=1)
        due = sorted([every, on_the_hour, of_a_module_off, elsewhere])
        first = services.rulesctl("dispatch", "--at", iso(half_past), "--json")
        assert first.returncode == 0, first.stderr
        sent = json_lines(first.stdout)
        assert sorted(item["rule_id"] for item in sent) == due
        assert {item["scheduled_for"] for item in sent} == {iso(half_past)}
        # One batch per organization: the rules of a task are those it carries.
        assert {item["task"] for item in sent} == {"rules.evaluate_batch"}
        carried = {}
        for item in sent:
            carried.setdefault(item["task_id"], set()).add(item["rule_id"])
        assert sorted(map(sorted, carried.values())) == sorted(
            [sorted([every, on_the_hour, of_a_module_off]), [elsewhere]])
        summaries = {item["rule_id"]: summary_in(services.client.AsyncResult(item["task_id"]).get(timeout=60),
                                                 item["rule_id"]) for item in sent}
        runs = wait_for_runs(services, lambda rows: len(rows) >= 4 and all(r["status"] != "running" for r in rows), 60,
                             "the dispatched runs", "SELECT * FROM rule_runs WHERE scheduled_for = %s ORDER BY rule_id",
                             (naive(half_past),))
        by_rule = {str(r["rule_id"]): r for r in runs}
        assert sorted(by_rule) == due
        assert {r["trigger"] for r in runs} == {"schedule"}
        assert [(by_rule[r]["status"], by_rule[r]["matched"]) for r in (every, on_the_hour, elsewhere)] == [
            ("succeeded", 2), ("succeeded", 1), ("succeeded", 2)]
        assert by_rule[of_a_module_off]["status"] == "skipped"
        assert "module 'qa' is not enabled" in by_rule[of_a_module_off]["error"]
        assert {rule: summary["run_id"] for rule, summary in summaries.items()} == {
            rule: str(row["id"]) for rule, row in by_rule.items()}
        assert [len(data.evaluations(every, half_past)), len(data.alerts(every, half_past))] == [3, 2]

        # The same dispatch again: the same runs' summaries, no new row, nothing written twice.
        again = services.rulesctl("dispatch", "--at", iso(half_past), "--json")
        assert again.returncode == 0, again.stderr
        repeated = {item["rule_id"]: summary_in(services.client.AsyncResult(item["task_id"]).get(timeout=90),
                                                item["rule_id"]) for item in json_lines(again.stdout)}
        assert {rule: s["run_id"] for rule, s in repeated.items()} == {
            rule: s["run_id"] for rule, s in summaries.items()}
        assert len(services.pg("SELECT id FROM rule_runs WHERE scheduled_for = %s", (naive(half_past),))) == 4
        assert [len(data.evaluations(every, half_past)), len(data.alerts(every, half_past))] == [3, 2]

        # rules.evaluate_org: its enabled rules (all of one source) as of now, in one batch, of that organization only.
        before = {r["id"] for r in services.pg("SELECT id FROM rule_runs")}
        batches_before = received_tasks(worker.log(), "rules.evaluate_batch")
        singles_before = received_tasks(worker.log(), "rules.evaluate")
        listed = services.send("rules.evaluate_org", org).get(timeout=60)
        enabled = sorted([every, on_the_hour, on_the_half_hour, of_a_module_off])
        assert sorted(listed) == enabled
        new_runs = wait_for_runs(
            services, lambda rows: len(rows) >= 4 and all(r["status"] != "running" for r in rows), 60,
            "the organization's runs", "SELECT * FROM rule_runs WHERE NOT (id = ANY(%s)) ORDER BY rule_id",
            (list(before),))
        assert sorted(str(r["rule_id"]) for r in new_runs) == enabled
        assert {(r["trigger"], r["dry_run"]) for r in new_runs} == {("manual", False)}
        assert all(abs((r["scheduled_for"] - naive(utc_now())).total_seconds()) < 120 for r in new_runs)
        assert not data.runs(disabled)
        [batch] = [task_id for task_id in received_tasks(worker.log(), "rules.evaluate_batch")
                   if task_id not in batches_before]
        assert received_tasks(worker.log(), "rules.evaluate") == singles_before
        batch_summaries = services.client.AsyncResult(batch).get(timeout=60)
        assert [(s["rule_id"], s["trigger"], s["run_id"]) for s in batch_summaries] == [
            (str(r["rule_id"]), "manual", str(r["id"])) for r in new_runs]
        assert {s["scheduled_for"] for s in batch_summaries} == {iso(new_runs[0]["scheduled_for"])}


def test_an_enqueued_run_as_of_a_given_time_is_a_manual_run(pg_url, migrated_ch_url, tmp_path):
    with services_on(pg_url, migrated_ch_url, 15, tmp_path) as services:
        data = services.data()
        org = data.org(timezone="UTC", modules=["alerts"])
        three_campaigns(data, org)
        rule = data.rule(org, spend_rule(15), NO_COOLDOWN)
        services.start_worker()
        at = minute_floor(utc_now()) - timedelta(minutes=10)

        enqueued = services.rulesctl("run", rule, "--at", iso(at), "--enqueue", "--json")

        assert enqueued.returncode == 0, enqueued.stderr
        [summary] = json_lines(enqueued.stdout)
        [row] = services.pg("SELECT * FROM rule_runs WHERE rule_id = %s", (rule,))
        assert (summary["status"], str(row["id"])) == ("succeeded", summary["run_id"])
        assert (summary["trigger"], row["trigger"]) == ("manual", "manual")


# --- 6. beat's batches --------------------------------------------------------------------------------------------------

PACING_LIFETIME = {"source": "pacing_snapshots", "window": "lifetime", "schedule": "* * * * *"}
BATCH_LINE = re.compile(r"rules\.evaluate_batch ([0-9a-f-]+) sent: organization (\d+), (\w+), as of (\S+), "
                        r"schedule, rules (.*)$")


def pacing_rule(below: float) -> dict:
    """A pacing rule over every snapshot so far: matches the entities whose latest pacing rate is below `below`."""
    return {**PACING_LIFETIME, "logic": {"<": [{"var": "pacing_rate"}, below]}}


def two_line_items(data, org_id: int) -> None:
    """Line items li1 and li2 with pacing rates 0.2 and 0.9, three days ago."""
    moment = (utc_now() - timedelta(days=3)).strftime("%Y-%m-%d %H:%M:%S")
    data.snapshots(*({"org_id": org_id, "snapshot_time": moment, "entity_type": "line_item", "entity_id": f"li{i}",
                      "pacing_rate": rate} for i, rate in ((1, 0.2), (2, 0.9))))


def sent_batches(log: str) -> dict[tuple[int, str, str], list[tuple[str, list[str]]]]:
    """Beat's batches by (organization, source, T): [(task id, rule ids)] as its log lines say."""
    found: dict[tuple[int, str, str], list[tuple[str, list[str]]]] = {}
    for line in log.splitlines():
        if match := BATCH_LINE.search(line):
            task_id, org, source, at, rule_ids = match.groups()
            found.setdefault((int(org), source, at), []).append((task_id, rule_ids.split(", ")))
    return found


@pytest.mark.slow
def test_beat_sends_one_batch_per_organization_source_and_minute_and_each_rule_runs_once(pg_url, migrated_ch_url,
                                                                                          tmp_path):
    """Two organizations (in UTC and Asia/Kolkata), rules of both sources in each, and beside them in the first one
    a rule that is not valid and one of an unknown source: along two fire times, beat sends one rules.evaluate_batch
    per (organization, source, T) with exactly the valid rules of that organization and source, each rule that is
    not valid alone, and every (rule, T) runs once, the valid ones with their rows, the others failing."""
    with services_on(pg_url, migrated_ch_url, 12, tmp_path, time_limit=10) as services:
        data = services.data()
        first, second = data.org(timezone="UTC", modules=["alerts"]), data.org(timezone="Asia/Kolkata",
                                                                             modules=["alerts"])
        for org in (first, second):
            three_campaigns(data, org)
            two_line_items(data, org)
        metrics = {first: {data.rule(first, spend_rule(15), NO_COOLDOWN): 2,
                           data.rule(first, spend_rule(25), NO_COOLDOWN): 1},
                   second: {data.rule(second, spend_rule(15), NO_COOLDOWN): 2}}
        pacing = {first: {data.rule(first, pacing_rule(0.5), NO_COOLDOWN): 1},
                  second: {data.rule(second, pacing_rule(0.5), NO_COOLDOWN): 1,
                           data.rule(second, pacing_rule(0.95), NO_COOLDOWN): 2}}
        broken = {data.rule(first, {**spend_rule(15), "window": "last_fortnight"}, NO_COOLDOWN):
                  'conditions.window: unknown window "last_fortnight"',
                  data.rule(first, {**pacing_rule(0.5), "source": "clicks_hourly"}, NO_COOLDOWN):
                  "conditions.source"}
        matched = {rule: n for by_rule in (*metrics.values(), *pacing.values()) for rule, n in by_rule.items()}
        worker = services.start_worker()
        beat = services.start_beat()

        # The first fire time beat sends, and the next minute's.
        def runs_at(at: datetime) -> list[dict]:
            return wait_for_runs(services, lambda rows: len(rows) == len(matched) + len(broken) and all(
                r["status"] != "running" for r in rows), 150, f"the runs at {iso(at)}",
                "SELECT * FROM rule_runs WHERE scheduled_for = %s ORDER BY rule_id", (naive(at),))

        beat.wait_for_log("sent rule", timeout=60)
        t1 = minute_floor(min(r["scheduled_for"] for r in wait_for_runs(
            services, lambda rows: rows, 60, "a first run", "SELECT scheduled_for FROM rule_runs"))).replace(tzinfo=UTC)
        times = [t1, t1 + timedelta(minutes=1)]
        runs = {at: runs_at(at) for at in times}
        log = beat.log()

        expected = {(org, source, iso(at)): sorted(rules[org])
                    for at in times for source, rules in (("campaign_metrics_daily", metrics),
                                                          ("pacing_snapshots", pacing)) for org in rules}
        batches = {key: value for key, value in sent_batches(log).items() if key[2] in {iso(at) for at in times}}
        assert {key: [rule_ids for _, rule_ids in sent] for key, sent in batches.items()} == {
            key: [rule_ids] for key, rule_ids in expected.items()}
        batched = {rule for sent in batches.values() for _, rule_ids in sent for rule in rule_ids}
        for at in times:
            for rule in [*matched, *broken]:
                assert log.count(f"sent rule {rule} for {iso(at)}\n") == 1, (rule, at)
        assert not batched & set(broken)
        task_ids = {task_id for sent in batches.values() for task_id, _ in sent}
        assert task_ids <= set(received_tasks(worker.log(), "rules.evaluate_batch"))

        for at in times:
            by_rule = {str(r["rule_id"]): r for r in runs[at]}
            assert sorted(by_rule) == sorted([*matched, *broken])
            for rule, count in matched.items():
                assert (by_rule[rule]["status"], by_rule[rule]["trigger"], by_rule[rule]["matched"]) == (
                    "succeeded", "schedule", count), (rule, by_rule[rule])
                assert len(data.evaluations(rule, at)) == (3 if rule in metrics[first] or rule in metrics[second]
                                                           else 2)
            for rule, message in broken.items():
                assert by_rule[rule]["status"] == "failed" and message in by_rule[rule]["error"], by_rule[rule]
        everything = services.pg("SELECT rule_id, scheduled_for, count(*) AS n FROM rule_runs GROUP BY 1, 2")
        assert {row["n"] for row in everything} == {1}
        for rule in broken:
            assert data.count("rule_evaluations", rule) == 0


# --- 4. a worker killed mid-run ---------------------------------------------------------------------------------------


def _gate(services, rule_id: str, org_id: int, at) -> psycopg.Connection:
    """An open transaction holding an uncommitted rule_runs row for (rule, T): the worker's claim waits for it."""
    connection = psycopg.connect(services.pg_url)
    connection.execute("INSERT INTO rule_runs (rule_id, org_id, trigger, scheduled_for, status, state) "
                       "VALUES (%s, %s, 'schedule', %s, 'running', 'claimed')", (rule_id, org_id, naive(at)))
    return connection


def _blocks_someone(services, connection: psycopg.Connection) -> bool:
    """True when another backend waits for a lock that `connection`'s open transaction holds."""
    return services.pg("SELECT count(*) AS n FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
                       (connection.info.backend_pid,))[0]["n"] > 0


def _run_row(services, rule_id: str, at) -> dict | None:
    rows = services.pg("SELECT * FROM rule_runs WHERE rule_id = %s AND scheduled_for = %s AND NOT dry_run",
                       (rule_id, naive(at)))
    return rows[0] if rows else None


def _state_is(services, rule_id: str, at, state: str) -> bool:
    row = _run_row(services, rule_id, at)
    return row is not None and row["state"] == state


def _pool_child(services, task_id: str, worker) -> int:
    """The pid of the pool child running the task, from its STARTED record (task_track_started)."""
    meta = wait_until(lambda: (m := services.task_meta(task_id)) and m["status"] == "STARTED" and m,
                      10, f"task {task_id} to start", interval=0.05)
    pid = meta["result"]["pid"]
    assert pid in children_of(worker.pid), (pid, children_of(worker.pid))
    return pid


def _lease_left(services, rule_id: str, at) -> float:
    """Seconds until the run's lease expires, by PostgreSQL's clock."""
    return float(services.pg(
        "SELECT EXTRACT(EPOCH FROM lease_expires_at - (now() AT TIME ZONE 'UTC')) AS left FROM rule_runs "
        "WHERE rule_id = %s AND scheduled_for = %s AND NOT dry_run", (rule_id, naive(at)))[0]["left"])


# The held-run retries Celery really makes: four tries, the last at least 7.5 + 15 + 30 s after the first (see
# test_a_held_run_is_waited_for_past_four_tries). A child is killed once its run's lease has less than this left.
LEASE_LEFT_AT_KILL = 45


@pytest.mark.slow
def test_a_pool_child_killed_mid_run_leaves_the_run_finished_exactly_once(pg_url, tmp_path):
    """Two runs, each frozen at a chosen point and its pool child SIGKILLed there; each is finished once.

    The points are reached deterministically, with no sleeps: an uncommitted rule_runs row for (rule, T) holds the
    claim back; the ClickHouse server (a clickhouse-local of this test's own) is SIGSTOPped so that a claimed run
    blocks in its first ClickHouse statement (state 'compiled', right after the claim); a row lock on the run holds
    its 'evaluated' transition back until rule_evaluations is written and the server is stopped again, so that the
    run blocks between the rule_evaluations insert and the alert_events insert (state 'evaluated'). Each child is
    then SIGSTOPped with its request in the server's socket (so the first run's rule_evaluations insert is carried
    out when the server resumes: a half-written stage the take-over must not double), and SIGKILLed once its lease
    has less than LEASE_LEFT_AT_KILL s left, so that the take-over comes within the tries Celery really makes.
    """
    with own_clickhouse(tmp_path, "rules_killed") as (server, port, ch_url):
        with services_on(pg_url, ch_url, 12, tmp_path / "logs", time_limit=10) as services:
            _kill_mid_run(services, server["process"], port)


def _kill_mid_run(services, server, port: int) -> None:
    data = services.data()
    org = data.org(timezone="UTC", modules=["alerts"])
    three_campaigns(data, org)
    after_claim = data.rule(org, spend_rule(15), NO_COOLDOWN, name="killed right after the claim")
    between_inserts = data.rule(org, spend_rule(15), NO_COOLDOWN, name="killed between the two inserts")
    worker = services.start_worker()
    at = minute_floor(utc_now()) - timedelta(minutes=1)

    gates = {rule: _gate(services, rule, org, at) for rule in (after_claim, between_inserts)}
    tasks = {rule: services.send("rules.evaluate", rule, scheduled_for=iso(at)) for rule in gates}
    children = {rule: _pool_child(services, tasks[rule].id, worker) for rule in tasks}
    assert len(set(children.values())) == 2
    for rule, gate in gates.items():
        wait_until(lambda: _blocks_someone(services, gate), 10, f"the claim of {rule} to wait", interval=0.05)

    # Both claims go through with ClickHouse stopped: each run blocks in its first ClickHouse statement.
    os.kill(server.pid, signal.SIGSTOP)
    for gate in gates.values():
        gate.rollback()
        gate.close()
    for rule in tasks:
        wait_until(lambda: _state_is(services, rule, at, "compiled"), 10, f"{rule} compiled", interval=0.05)
    wait_for_pending_requests(port, 2)
    os.kill(children[after_claim], signal.SIGSTOP)

    # The other run writes rule_evaluations, then waits on the row lock before recording 'evaluated'.
    run_id = _run_row(services, between_inserts, at)["id"]
    with psycopg.connect(services.pg_url) as lock:
        lock.execute("SELECT id FROM rule_runs WHERE id = %s FOR UPDATE", (run_id,))
        os.kill(server.pid, signal.SIGCONT)
        wait_until(lambda: _blocks_someone(services, lock), 10, "the 'evaluated' transition to wait", interval=0.05)
        assert len(data.evaluations(between_inserts, at)) == 3
        os.kill(server.pid, signal.SIGSTOP)
        lock.rollback()
    wait_until(lambda: _state_is(services, between_inserts, at, "evaluated"), 10, "'evaluated'", interval=0.05)
    wait_for_pending_requests(port, 1)
    os.kill(children[between_inserts], signal.SIGSTOP)
    os.kill(server.pid, signal.SIGCONT)

    for rule in (after_claim, between_inserts):
        wait_until(lambda: _lease_left(services, rule, at) < LEASE_LEFT_AT_KILL, services.lease_seconds,
                   f"the lease of {rule} to run down", interval=0.2)
        os.kill(children[rule], signal.SIGKILL)
    wait_until(lambda: not any(is_alive(pid) for pid in children.values()), 10, "the killed children to die")

    # Dead: each run is left as it was, the first with its rule_evaluations half-written behind its state.
    wait_until(lambda: len(data.evaluations(after_claim, at)) == 3, 10, "the first run's stranded insert")
    frozen = {rule: _run_row(services, rule, at) for rule in tasks}
    assert [(frozen[r]["status"], frozen[r]["state"], frozen[r]["attempts"])
            for r in (after_claim, between_inserts)] == [
        ("running", "compiled", 1), ("running", "evaluated", 1)]
    assert len(data.evaluations(between_inserts, at)) == 3
    assert data.alerts(between_inserts, at) == [] and data.alerts(after_claim, at) == []
    assert worker.alive()

    # The requeued tasks wait for the leases to expire, take the runs over and finish them, once.
    results = {rule: task.get(timeout=services.lease_seconds + 120) for rule, task in tasks.items()}
    for rule in tasks:
        [row] = services.pg("SELECT * FROM rule_runs WHERE rule_id = %s", (rule,))
        details = [entry["detail"] for entry in row["transitions"]]
        assert (row["status"], row["state"], row["attempts"], row["trigger"]) == (
            "succeeded", "succeeded", 2, "schedule")
        assert details.count("taken over after the lease expired") == 1, details
        assert (row["entities"], row["matched"], row["alerts"]) == (3, 2, 2)
        assert (results[rule]["run_id"], results[rule]["status"]) == (str(row["id"]), "succeeded")
        assert [e["entity_id"] for e in data.evaluations(rule, at)] == ["c1", "c2", "c3"]
        assert [a["entity_id"] for a in data.alerts(rule, at)] == ["c2", "c3"]
        assert data.count("rule_evaluations", rule) == 3 and data.count("alert_events", rule) == 2


HELD_LEASE_SECONDS = 120


@pytest.mark.slow
def test_a_held_run_is_waited_for_past_four_tries(pg_url, migrated_ch_url, tmp_path):
    """A run left 'running' by a dead worker, whose lease has HELD_LEASE_SECONDS left, as right after a renewal.

    HELD_RUN_RETRY allows 12 tries; Celery's own cap allows four, the fourth at most 105 s after the first.
    """
    with services_on(pg_url, migrated_ch_url, 14, tmp_path, time_limit=10) as services:
        data = services.data()
        org = data.org(timezone="UTC", modules=["alerts"])
        three_campaigns(data, org)
        rule = data.rule(org, spend_rule(15), NO_COOLDOWN)
        at = minute_floor(utc_now()) - timedelta(minutes=1)
        services.pg(
            "INSERT INTO rule_runs (rule_id, org_id, trigger, scheduled_for, status, state, lease_expires_at) "
            "VALUES (%s, %s, 'schedule', %s, 'running', 'claimed', "
            "(now() AT TIME ZONE 'UTC') + make_interval(secs => %s))", (rule, org, naive(at), HELD_LEASE_SECONDS))
        services.start_worker()
        task = services.send("rules.evaluate", rule, scheduled_for=iso(at))

        result = task.get(timeout=HELD_LEASE_SECONDS + 120)

        [row] = services.pg("SELECT * FROM rule_runs WHERE rule_id = %s", (rule,))
        assert (result["run_id"], result["status"]) == (str(row["id"]), "succeeded")
        assert (row["status"], row["attempts"], row["entities"], row["matched"]) == ("succeeded", 2, 3, 2)
        assert len(data.evaluations(rule, at)) == 3 and len(data.alerts(rule, at)) == 2


# --- 1 and 2. beat: two beats, edits by plain SQL, a stop across two fire times ---------------------------------------


@dataclass
class Scenario:
    """Beat and worker processes driven along the clock in a thread of their own, while the other tests run.

    Timeline (M1 = the first minute boundary after both beats have sent something; Mn = M1 + n-1 minutes):
    two beats and one worker run from M0 (a partial minute) through M3; at M1 + 20 s one rule's conditions are
    edited and another rule is disabled, both by plain SQL; once the M3 runs are in, both beats are stopped; at
    M5 + 5 s a beat is started again, so that beat was down across M4 and M5; once the M5 runs are in, every process
    is killed and the databases hold still for the assertions.
    """

    services: Services
    org: int = 0
    rules: dict[str, str] = field(default_factory=dict)
    times: dict[str, datetime] = field(default_factory=dict)
    beat_logs: dict[str, str] = field(default_factory=dict)
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)
    abort: threading.Event = field(default_factory=threading.Event)

    def prepare(self) -> None:
        data = self.services.data()
        self.org = data.org(timezone="UTC", modules=["alerts"])
        three_campaigns(data, self.org)
        self.rules = {
            "steady": data.rule(self.org, spend_rule(15), NO_COOLDOWN, name="steady"),
            "edited": data.rule(self.org, spend_rule(15), NO_COOLDOWN, name="edited"),
            "disabled": data.rule(self.org, spend_rule(15), NO_COOLDOWN, name="disabled"),
            "module off": data.rule(self.org, spend_rule(15), NO_COOLDOWN, module="qa", name="module off"),
        }

    def _sleep_until(self, moment: datetime) -> None:
        if self.abort.wait(max(0.0, (moment - utc_now()).total_seconds())):
            raise RuntimeError("aborted")

    def _runs_done(self, at: datetime, names: tuple[str, ...]) -> list[dict]:
        ids = [self.rules[name] for name in names]
        return wait_for_runs(
            self.services, lambda rows: len(rows) == len(ids) and all(r["status"] != "running" for r in rows), 45,
            f"the runs at {iso(at)}", "SELECT * FROM rule_runs WHERE scheduled_for = %s AND rule_id::text = ANY(%s)",
            (naive(at), ids))

    def drive(self) -> None:
        services = self.services
        try:
            services.start_worker()
            beats = [services.start_beat("beat-a"), services.start_beat("beat-b")]
            for beat in beats:
                beat.wait_for_log("sent rule", timeout=60)
            self.times["start"] = start = utc_now()
            m1 = minute_floor(start) + timedelta(minutes=1)
            self.times.update(m0=minute_floor(start), m1=m1, m2=m1 + timedelta(minutes=1),
                              m3=m1 + timedelta(minutes=2), m4=m1 + timedelta(minutes=3), m5=m1 + timedelta(minutes=4))

            self._sleep_until(m1 + timedelta(seconds=20))
            services.pg("UPDATE rules SET conditions = %s WHERE id = %s", (Jsonb(spend_rule(25)), self.rules["edited"]))
            self.times["edited"] = utc_now()
            services.pg("UPDATE rules SET enabled = FALSE WHERE id = %s", (self.rules["disabled"],))
            self.times["disabled"] = utc_now()

            self._sleep_until(self.times["m3"])
            self._runs_done(self.times["m3"], ("steady", "edited", "module off"))
            for beat in beats:  # both have sent M3 before they are stopped (test 1 counts their sends)
                beat.wait_for_log(f"sent rule {self.rules['steady']} for {iso(self.times['m3'])}", timeout=20)
            for beat in beats:
                beat.stop()
            self.times["beats stopped"] = utc_now()
            if self.times["beats stopped"] > self.times["m4"] - timedelta(seconds=5):
                raise RuntimeError(f"the beats were stopped only at {self.times['beats stopped']}: "
                                   "the machine is too slow")

            self._sleep_until(self.times["m5"] + timedelta(seconds=5))
            restarted = services.start_beat("beat-restarted")
            self.times["beat restarted"] = utc_now()
            beats.append(restarted)
            self._runs_done(self.times["m5"], ("steady", "edited", "module off"))
            if utc_now() > self.times["m5"] + timedelta(seconds=55):
                raise RuntimeError("the catch-up runs came in only near M6: the machine is too slow")
            restarted.stop()
            self.times["end"] = utc_now()
            self.beat_logs = {beat.name: beat.log() for beat in beats}
        except BaseException as error:  # handed to the tests that wait for the scenario
            self.error = error
        finally:
            for process in services.processes:
                process.kill()
            self.done.set()

    def wait(self) -> Scenario:
        """Blocks until the scenario is over; fails with what went wrong (and the logs) if it did."""
        assert self.done.wait(timeout=10 * 60), "the schedule scenario did not end within 10 minutes"
        if self.error is not None:
            raise AssertionError(f"the schedule scenario failed: {self.error!r}\n{self.services.logs_text()}")
        return self

    def runs(self) -> dict[tuple[str, datetime], list[dict]]:
        """The non-dry rule_runs rows by (rule name, T as an aware UTC time)."""
        names = {rule_id: name for name, rule_id in self.rules.items()}
        grouped: dict[tuple[str, datetime], list[dict]] = {}
        for row in self.services.pg("SELECT * FROM rule_runs WHERE NOT dry_run ORDER BY scheduled_for"):
            at = row["scheduled_for"].replace(tzinfo=UTC)
            grouped.setdefault((names[str(row["rule_id"])], at), []).append(row)
        return grouped


@pytest.fixture(scope="module")
def schedule_scenario(pg_template, clickhouse_local, tmp_path_factory):
    """The Scenario on databases of its own and Redis database 10, driven in a thread from first use on."""
    pg_name = f"rules_beat_{uuid.uuid4().hex[:12]}"
    admin_sql(f'CREATE DATABASE "{pg_name}" TEMPLATE "{pg_template}"')
    ch_name = f"t_beat_{uuid.uuid4().hex[:12]}"
    admin = clickhouse_local.client()
    admin.command(f"CREATE DATABASE {ch_name}")
    migrate_clickhouse(clickhouse_local.url(ch_name))
    try:
        with services_on(postgres_url(pg_name), clickhouse_local.url(ch_name), 10,
                         tmp_path_factory.mktemp("schedule"), time_limit=10) as services:
            scenario = Scenario(services)
            scenario.prepare()
            driver = threading.Thread(target=scenario.drive, name="schedule scenario", daemon=True)
            driver.start()
            try:
                yield scenario
            finally:
                scenario.abort.set()
                driver.join(timeout=60)
    finally:
        admin_sql(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')
        admin.command(f"DROP DATABASE IF EXISTS {ch_name}")
        admin.close()


@pytest.fixture(scope="module", autouse=True)
def _start_the_schedule_scenario_first(request):
    """Starts the minutes-long Scenario before the module's first test when a selected test needs it, so that the
    other tests of the module run while it waits for the clock."""
    if any(item.module is request.module and "schedule_scenario" in item.fixturenames
           for item in request.session.items):
        request.getfixturevalue("schedule_scenario")


def _evaluation_counts(scenario: Scenario) -> dict[tuple[str, datetime], tuple[int, int, int]]:
    """(rows, distinct entities, matched rows) of rule_evaluations per (rule id, eval_time)."""
    data = scenario.services.data()
    rows = data.ch_rows("SELECT toString(rule_id) AS rule, toString(eval_time, 'UTC') AS at, count() AS n, "
                        "uniqExact(entity_id) AS entities, sum(matched) AS matched FROM rule_evaluations "
                        "GROUP BY rule, at")
    return {(r["rule"], r["at"]): (int(r["n"]), int(r["entities"]), int(r["matched"])) for r in rows}


def _alert_counts(scenario: Scenario) -> dict[tuple[str, str], int]:
    data = scenario.services.data()
    rows = data.ch_rows("SELECT toString(rule_id) AS rule, toString(alert_time, 'UTC') AS at, count() AS n "
                        "FROM alert_events GROUP BY rule, at")
    return {(r["rule"], r["at"]): int(r["n"]) for r in rows}


RUNNING = ("steady", "edited", "module off")  # the rules enabled from start to end


@pytest.mark.slow
def test_two_beats_run_each_rule_once_per_minute_and_follow_plain_sql_changes(schedule_scenario):
    scenario = schedule_scenario.wait()
    t, rules, runs = scenario.times, scenario.rules, scenario.runs()
    full_minutes = [t["m1"], t["m2"], t["m3"]]

    # Every full minute with both beats up: one run per rule, none missing; at most one for any (rule, T).
    for name in RUNNING:
        assert [len(runs.get((name, at), [])) for at in full_minutes] == [1, 1, 1], name
    assert len(runs[("disabled", t["m1"])]) == 1 and t["m1"] < t["disabled"]
    assert all(len(rows) == 1 for rows in runs.values())
    assert not [key for key in runs if t["m3"] < key[1] < t["m5"] or key[1] > t["m5"]]
    # Both beats did send each of them: the single run is the claim's doing.
    for beat in ("beat-a", "beat-b"):
        for name in RUNNING:
            sent = [scenario.beat_logs[beat].count(f"sent rule {rules[name]} for {iso(at)}") for at in full_minutes]
            assert sent == [1, 1, 1], (beat, name)

    # Disabled by SQL: no run for a fire time more than 60 s after.
    assert not [at for name, at in runs if name == "disabled" and at > t["disabled"] + timedelta(seconds=60)]

    for (name, at), [row] in runs.items():
        assert (row["trigger"], row["dry_run"], row["triggered_by"]) == ("schedule", False, None)
        if name == "module off":
            assert (row["status"], row["entities"], row["error"]) == (
                "skipped", 0, f"module 'qa' is not enabled for organization {scenario.org}")
        else:
            assert (row["status"], row["path"], row["error"], row["entities"]) == ("succeeded", "sql", None, 3)

    # Edited by SQL (threshold 15 -> 25): the old conditions before, the new ones from 60 s after.
    for (name, at), [row] in runs.items():
        if name == "edited" and at < t["edited"]:
            assert row["matched"] == 2, at
        elif name == "edited" and at > t["edited"] + timedelta(seconds=60):
            assert row["matched"] == 1, at
        elif name in ("steady", "disabled"):
            assert row["matched"] == 2, (name, at)
    assert [runs[("edited", at)][0]["matched"] for at in (t["m1"], t["m3"])] == [2, 1]

    # ClickHouse: rule_evaluations = the run's entities, alert_events = its alerts, per (rule, T); nothing else.
    expected_evaluations, expected_alerts = {}, {}
    for (name, at), [row] in runs.items():
        if row["status"] == "succeeded":
            expected_evaluations[(rules[name], ch_text(at))] = (3, 3, row["matched"])
            assert row["alerts"] == row["matched"]  # cooldown 0: every match alerts
            expected_alerts[(rules[name], ch_text(at))] = row["alerts"]
    assert _evaluation_counts(scenario) == expected_evaluations
    assert _alert_counts(scenario) == expected_alerts


@pytest.mark.slow
def test_after_beat_was_down_across_two_fire_times_only_the_latest_one_runs(schedule_scenario):
    scenario = schedule_scenario.wait()
    t, rules, runs = scenario.times, scenario.rules, scenario.runs()
    assert t["m3"] < t["beats stopped"] < t["m4"] < t["m5"] < t["beat restarted"] < t["end"]
    assert t["end"] < t["m5"] + timedelta(minutes=1)

    assert not [key for key in runs if key[1] == t["m4"]]
    for name in RUNNING:
        [row] = runs[(name, t["m5"])]
        assert (row["trigger"], row["status"]) == ("schedule", "skipped" if name == "module off" else "succeeded")
    assert ("disabled", t["m5"]) not in runs
    assert runs[("edited", t["m5"])][0]["matched"] == 1
    log = scenario.beat_logs["beat-restarted"]
    assert sorted(line.split("sent rule ", 1)[1] for line in log.splitlines() if "sent rule " in line) == sorted(
        f"{rules[name]} for {iso(t['m5'])}" for name in RUNNING)
    evaluations = _evaluation_counts(scenario)
    assert not [key for key in evaluations if key[1] == ch_text(t["m4"])]
    assert evaluations[(rules["steady"], ch_text(t["m5"]))] == (3, 3, 2)
    assert evaluations[(rules["edited"], ch_text(t["m5"]))] == (3, 3, 1)
