"""Faults of batches on real processes (the README's How a run works, Guarantees): a worker killed mid-batch, a
batch task delivered again (sent again, and redelivered after its pool child was killed), ClickHouse killed with a
batch's insert half-written, and one rule of a batch too slow for the time limit (last in its batch, and first,
stopped mid-statement with the rule after it in the same process).

Each rule of a batch keeps its own run, so a worker killed in the middle of a batch leaves each run as it was;
beat's sweeper sends each lost run again as a single rules.evaluate, and a redelivered or retried batch task finds
the runs held until their leases expire, then takes each over alone and finishes it once. The points are reached
as in test_worker_beat.py, with no sleeps: an uncommitted rule_runs row holds a claim back, the test's own
ClickHouse server is SIGSTOPped so that the batch blocks in its next statement, a row lock on a run holds its
'evaluated' transition back until the batch's insert is written, and system.processes shows an insert in flight.
"""

from __future__ import annotations

import os
import signal
from datetime import datetime, timedelta

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.conftest import start_clickhouse_local
from tests.integration.celery_support import (NO_COOLDOWN, children_of, is_alive, iso, minute_floor, own_clickhouse,
                                              own_redis, received_tasks, services_on, spend_rule, three_campaigns,
                                              utc_now, wait_for_pending_requests, wait_for_runs, wait_until)
from tests.integration.test_worker_beat import (LEASE_LEFT_AT_KILL, _blocks_someone, _gate, _lease_left, _pool_child,
                                               _run_row, _state_is)
from tests.integration.test_worker_faults import never_firing, queued_task_ids

TAKEN_OVER = "taken over after the lease expired"


def written(services, rule_ids) -> dict:
    """Every run, evaluation and alert of the rules, as comparable values."""
    data = services.data()
    runs = services.pg("SELECT id, status, state, attempts, entities, matched, alerts, transitions FROM rule_runs "
                       "WHERE rule_id = ANY(%s) ORDER BY rule_id", (list(rule_ids),))
    return {"runs": [{**run, "id": str(run["id"])} for run in runs],
            "evaluations": {rule: data.evaluations(rule) for rule in rule_ids},
            "alerts": {rule: data.alerts(rule) for rule in rule_ids}}


@pytest.mark.slow
def test_a_worker_killed_mid_batch_leaves_each_rule_finished_once_by_take_over(pg_url, tmp_path):
    """Two batches of three rules on one worker: batch A killed right after its claims (blocked in its statement,
    which the server carries out once resumed: a half-written stage), batch B killed between its insert and its
    alerts. The whole worker is SIGKILLed; beat's sweeper sends each of the six runs again once its lease is over,
    and a new worker takes each over alone and finishes it once: one rule_evaluations row per (rule, T, entity),
    one alert per matched entity. The batch tasks sent again afterwards write nothing."""
    with own_clickhouse(tmp_path, "rules_batch_killed") as (server, port, ch_url), own_redis(tmp_path) as broker:
        with services_on(pg_url, ch_url, 0, tmp_path / "logs", time_limit=10, redis_server=broker.url) as services:
            data = services.data()
            schedule = never_firing(utc_now())
            batches = {}
            for name in ("A", "B"):
                org = data.org(timezone="UTC", modules=["alerts"])
                three_campaigns(data, org)
                batches[name] = (org, [data.rule(org, spend_rule(15, schedule), NO_COOLDOWN, name=f"{name} {i}")
                                       for i in range(3)])
            worker = services.start_worker()
            at = minute_floor(utc_now()) - timedelta(minutes=1)
            process = server["process"]

            gates = {name: _gate(services, rules[0], org, at) for name, (org, rules) in batches.items()}
            tasks = {name: services.send("rules.evaluate_batch", org, iso(at), rules)
                     for name, (org, rules) in batches.items()}
            children = {name: _pool_child(services, tasks[name].id, worker) for name in tasks}
            assert len(set(children.values())) == 2
            for name, gate in gates.items():
                wait_until(lambda: _blocks_someone(services, gate), 10, f"the claims of {name} to wait",
                           interval=0.05)

            # The claims go through with ClickHouse stopped: each batch blocks in its one statement.
            os.kill(process.pid, signal.SIGSTOP)
            for gate in gates.values():
                gate.rollback()
                gate.close()
            for name, (org, rules) in batches.items():
                for rule in rules:
                    wait_until(lambda: _state_is(services, rule, at, "compiled"), 10, f"{rule} compiled",
                               interval=0.05)
            wait_for_pending_requests(port, 2)
            os.kill(children["A"], signal.SIGSTOP)

            # Batch B writes its rows, then waits on a row lock before recording 'evaluated'; once that is
            # recorded it blocks in the alert stage's first statement.
            first_of_b = _run_row(services, batches["B"][1][0], at)["id"]
            with psycopg.connect(services.pg_url) as lock:
                lock.execute("SELECT id FROM rule_runs WHERE id = %s FOR UPDATE", (first_of_b,))
                os.kill(process.pid, signal.SIGCONT)
                wait_until(lambda: _blocks_someone(services, lock), 10, "B's 'evaluated' to wait", interval=0.05)
                assert all(len(data.evaluations(rule, at)) == 3 for rule in batches["B"][1])
                os.kill(process.pid, signal.SIGSTOP)
                lock.rollback()
            for rule in batches["B"][1]:
                wait_until(lambda: _state_is(services, rule, at, "evaluated"), 10, f"{rule} evaluated",
                           interval=0.05)
            wait_for_pending_requests(port, 1)
            os.kill(children["B"], signal.SIGSTOP)

            group = [worker.pid, *children_of(worker.pid)]
            worker.kill()
            wait_until(lambda: not any(is_alive(pid) for pid in group), 10, "the worker's processes to die")
            os.kill(process.pid, signal.SIGCONT)
            # A's statement, stranded in the server's socket, is carried out: every rule's rows, behind 'compiled'.
            wait_until(lambda: all(len(data.evaluations(rule, at)) == 3 for rule in batches["A"][1]), 10,
                       "A's stranded insert")
            frozen = {rule: _run_row(services, rule, at) for _, rules in batches.values() for rule in rules}
            assert [(row["status"], row["state"], row["attempts"]) for row in frozen.values()] == (
                [("running", "compiled", 1)] * 3 + [("running", "evaluated", 1)] * 3)
            assert all(data.alerts(rule, at) == [] for rule in frozen)

            services.start_worker("worker-2")
            services.start_beat()
            everyone = list(frozen)
            wait_for_runs(services, lambda rows: len(rows) == 6 and all(r["status"] != "running" for r in rows),
                          services.lease_seconds + 90, "every run to be finished",
                          "SELECT * FROM rule_runs WHERE rule_id = ANY(%s)", (everyone,))

            for rule in everyone:
                [row] = services.pg("SELECT * FROM rule_runs WHERE rule_id = %s", (rule,))
                details = [entry["detail"] for entry in row["transitions"]]
                assert (row["status"], row["attempts"], row["entities"], row["matched"], row["alerts"]) == (
                    "succeeded", 2, 3, 2, 2), details
                assert details.count(TAKEN_OVER) == 1, details
                assert any("in a batch of 3 rules" in detail for detail in details), details
                assert [e["entity_id"] for e in data.evaluations(rule, at)] == ["c1", "c2", "c3"]
                assert [a["entity_id"] for a in data.alerts(rule, at)] == ["c2", "c3"]
                assert (data.count("rule_evaluations", rule), data.count("alert_events", rule)) == (3, 2)

            # The batch tasks delivered again (as Redis does after the visibility timeout) write nothing.
            before = written(services, everyone)
            again = {name: services.send("rules.evaluate_batch", org, iso(at), rules)
                     for name, (org, rules) in batches.items()}
            for name, (org, rules) in batches.items():
                summaries = again[name].get(timeout=60)
                assert [s["status"] for s in summaries] == ["succeeded"] * 3
                assert [s["run_id"] for s in summaries] == [str(frozen[rule]["id"]) for rule in rules]
            assert written(services, everyone) == before


# --- ClickHouse killed with a batch's INSERT ... SELECT in flight -----------------------------------------------------

CAMPAIGNS = 300_000  # enough for the batch's insert to write several blocks of rows, one after another
HOT = ("hot-1", "hot-2", "hot-3")  # the only campaigns over the rules' thresholds


def many_campaigns(data, org: int) -> None:
    """CAMPAIGNS campaigns with a spend of 1 three days ago, and the HOT ones with a spend of 100, written inside
    ClickHouse (INSERT ... SELECT FROM numbers)."""
    day = (utc_now() - timedelta(days=3)).date().isoformat()
    data.ch_raw.command(
        "INSERT INTO campaign_metrics_daily (org_id, date, campaign_id, campaign_name, dsp_type, advertiser_id, "
        "impressions, clicks, spend) SELECT {org:UInt32}, toDate({day:String}), concat('c', toString(number)), "
        "concat('name ', toString(number)), 'DV360', 'adv-1', 1000, 1, 1 FROM numbers({count:UInt64})",
        parameters={"org": org, "day": day, "count": CAMPAIGNS - len(HOT)})
    data.metrics(*({"org_id": org, "date": day, "campaign_id": campaign, "spend": "100", "impressions": 1000}
                   for campaign in HOT))


def half_written(data, at) -> int:
    """The rows of rule_evaluations at T while an INSERT INTO rule_evaluations is still running (0 otherwise): the
    insert writes its rows in blocks, each visible once written."""
    [row] = data.ch_rows(
        "SELECT (SELECT count() FROM system.processes WHERE query_id != queryID() "
        "AND query LIKE 'INSERT INTO rule_evaluations%') AS running, "
        "(SELECT count() FROM rule_evaluations WHERE eval_time = {at:DateTime('UTC')}) AS visible",
        at=at.strftime("%Y-%m-%d %H:%M:%S"))
    return int(row["visible"]) if row["running"] else 0


def evaluation_counts(data, rules, at) -> dict[str, tuple[int, int, int]]:
    """Each rule's (rows, distinct entities, matched) of rule_evaluations at T."""
    counts = {rule: (0, 0, 0) for rule in rules}
    for row in data.ch_rows(
            "SELECT toString(rule_id) AS rule, count() AS n, uniqExact(entity_id) AS entities, sum(matched) AS "
            "matched FROM rule_evaluations WHERE eval_time = {at:DateTime('UTC')} GROUP BY rule",
            at=at.strftime("%Y-%m-%d %H:%M:%S")):
        counts[row["rule"]] = (int(row["n"]), int(row["entities"]), int(row["matched"]))
    return counts


@pytest.mark.slow
def test_clickhouse_killed_with_a_batch_insert_in_flight_finishes_every_run_once(pg_url, tmp_path):
    """A batch of four rules over CAMPAIGNS campaigns: its one INSERT ... SELECT is seen in flight in
    system.processes, having written some of its rows, when the test's own clickhouse-local is SIGKILLed; the server
    is started again on the same port and data directory, holding the rows that the insert had written.

    The batch's task is retried; once the leases expire each run is taken over alone (by the retried task or by
    beat's sweeper), deletes what the killed insert left and finishes: one rule_evaluations row per (rule, T,
    entity), one alert_events row per matched entity, one run per rule, nothing lost or doubled."""
    with own_clickhouse(tmp_path, "rules_batch_ch_killed") as (server, port, ch_url), own_redis(tmp_path) as broker:
        with services_on(pg_url, ch_url, 0, tmp_path / "logs", time_limit=20, redis_server=broker.url) as services:
            data = services.data()
            org = data.org(timezone="UTC", modules=["alerts"])
            many_campaigns(data, org)
            rules = [data.rule(org, spend_rule(threshold, never_firing(utc_now())), NO_COOLDOWN,
                               name=f"over {threshold}") for threshold in (50, 60, 70, 80)]
            worker = services.start_worker()
            services.start_beat()
            at = minute_floor(utc_now()) - timedelta(minutes=1)

            task = services.send("rules.evaluate_batch", org, iso(at), rules)
            seen = wait_until(lambda: half_written(data, at), 60, "the batch's insert to be half-written",
                              interval=0.01)
            os.kill(server["process"].pid, signal.SIGKILL)
            server["process"].wait(timeout=15)
            # What was in flight was the batch's statement: every run is compiled in the batch, none went on.
            for rule in rules:
                row = _run_row(services, rule, at)
                assert (row["status"], row["state"], row["attempts"]) == ("running", "compiled", 1), row
                assert row["transitions"][-1]["detail"] == "compiled to SQL (in a batch of 4 rules)", row

            # The worker notices (its task is retried) before the server is back.
            wait_until(lambda: f"Task rules.evaluate_batch[{task.id}] retry" in worker.log(), 30,
                       "the batch's task to be retried")
            server["process"] = start_clickhouse_local(server["path"], port, log=server["log"])
            left_behind = evaluation_counts(data, rules, at)
            written = sum(rows for rows, _, _ in left_behind.values())
            assert seen <= written < len(rules) * CAMPAIGNS, (seen, left_behind)

            wait_for_runs(services, lambda rows: len(rows) == 4 and all(r["status"] != "running" for r in rows),
                          services.lease_seconds + 120, "every run to be finished",
                          "SELECT * FROM rule_runs WHERE rule_id = ANY(%s)", (rules,))
            # The batch's task, tried again until then, answers with those runs.
            summaries = task.get(timeout=120)
            runs = {rule: services.pg("SELECT * FROM rule_runs WHERE rule_id = %s", (rule,)) for rule in rules}
            assert [(s["run_id"], s["status"]) for s in summaries] == [(str(runs[rule][0]["id"]), "succeeded")
                                                                       for rule in rules]
            assert evaluation_counts(data, rules, at) == {rule: (CAMPAIGNS, CAMPAIGNS, len(HOT)) for rule in rules}
            for rule in rules:
                [row] = runs[rule]
                details = [entry["detail"] for entry in row["transitions"]]
                assert (row["status"], row["attempts"], row["entities"], row["matched"], row["alerts"]) == (
                    "succeeded", 2, CAMPAIGNS, len(HOT), len(HOT)), details
                assert details.count(TAKEN_OVER) == 1, details
                assert "compiled to SQL (in a batch of 4 rules)" in details, details
                # Taken over by the retried batch (alone, saying why) or by the sweeper's rules.evaluate.
                assert [d for d in details if d.startswith("rule_evaluations written")] in (
                    ["rule_evaluations written (alone: the take-over of a run whose process was lost)"],
                    ["rule_evaluations written"]), details
                assert [a["entity_id"] for a in data.alerts(rule, at)] == list(HOT)
                assert data.count("alert_events", rule) == len(HOT)


# --- one rule of a batch too slow for the time limit -----------------------------------------------------------------

TIME_LIMIT = 10  # RUN_TIME_LIMIT_SECONDS: the batch's statement may use half of what is left of it, 3 s here
# A convention whose first token must be one of 200 values of 49 characters: the diagnosis of every name whose first
# token is not compares it with each of them (editDistanceUTF8), some 0.6 ms a name on the embedded server.
SLOW_CONVENTION = {"delimiter": "_", "tokens": [
    {"name": "line", "values": [f"line-{number:03d}-" + "x" * 40 for number in range(200)]},
    {"name": "label", "free": True}]}
# Over ClickHouse's 100,000 keys for a two-level GROUP BY, so that the diagnoses are computed bucket by bucket and
# ClickHouse stops a statement within a fraction of a second of its max_execution_time. Alone, the naming rule's
# statement would take over a minute.
FILLER_CAMPAIGNS = 150_000
# How long the naming rule's claim is held back. Alone, its statement may use what is left of the time limit counted
# from its run's start, so it outlasts the task's soft time limit by this less up to 1 s of rounding: the soft limit
# stops it, always (without the wait, ClickHouse or the soft limit would, whichever came first).
CLAIM_HELD_SECONDS = 2


def filler_campaigns(data, org: int) -> None:
    """FILLER_CAMPAIGNS campaigns f0, f1, … with no spend three days ago, named with a first token of 100 "Z"s
    (no allowed value of SLOW_CONVENTION), written inside ClickHouse."""
    day = (utc_now() - timedelta(days=3)).date().isoformat()
    data.ch_raw.command(
        "INSERT INTO campaign_metrics_daily (org_id, date, campaign_id, campaign_name, dsp_type, advertiser_id, "
        "impressions, clicks, spend) SELECT {org:UInt32}, toDate({day:String}), concat('f', toString(number)), "
        "concat(repeat('Z', 100), '_', toString(number)), 'DV360', 'adv-1', 1000, 1, 0 FROM numbers({count:UInt64})",
        parameters={"org": org, "day": day, "count": FILLER_CAMPAIGNS})


def waited_seconds(services, gate: psycopg.Connection) -> float:
    """How long the statement waiting for `gate`'s lock has waited (0 while none waits), by PostgreSQL's clock."""
    rows = services.pg("SELECT EXTRACT(EPOCH FROM clock_timestamp() - query_start) AS waited FROM pg_stat_activity "
                       "WHERE %s = ANY(pg_blocking_pids(pid))", (gate.info.backend_pid,))
    return float(rows[0]["waited"]) if rows else 0.0


def slow_naming_organization(data) -> tuple[int, str]:
    """An organization with SLOW_CONVENTION, c1..c3 and FILLER_CAMPAIGNS campaigns, and a schedule that never fires
    during the test."""
    org = data.org(timezone="UTC", modules=["alerts", "taxonomy"])
    data.pg("UPDATE organizations SET settings = %s WHERE id = %s",
            (Jsonb({"naming_conventions": {"campaign": SLOW_CONVENTION}}), org))
    three_campaigns(data, org)
    filler_campaigns(data, org)
    return org, never_firing(utc_now())


def slow_naming_rule(data, org: int, schedule: str) -> str:
    """A taxonomy rule whose diagnoses over the organization's names take far longer than TIME_LIMIT."""
    return data.rule(org, {**spend_rule(0, schedule), "logic": {"naming": [{"var": "campaign_name"}, "campaign"]}},
                     NO_COOLDOWN, module="taxonomy", name="naming")


def batch_with_naming_claim_held(services, org: int, at: datetime, naming: str, rule_ids: list[str]) -> list[dict]:
    """The summaries of a batch of `rule_ids` as of `at` whose `naming` rule's claim is held CLAIM_HELD_SECONDS, so
    that its statement alone always outlasts the task's soft time limit."""
    gate = _gate(services, naming, org, at)
    try:
        task = services.send("rules.evaluate_batch", org, iso(at), rule_ids)
        wait_until(lambda: waited_seconds(services, gate) >= CLAIM_HELD_SECONDS, 30,
                   f"the naming rule's claim to wait {CLAIM_HELD_SECONDS} s", interval=0.05)
    finally:
        gate.rollback()
        gate.close()
    return task.get(timeout=90)


def test_a_rule_too_slow_for_the_time_limit_fails_alone_and_the_rest_of_its_batch_succeeds(pg_url, migrated_ch_url,
                                                                                           tmp_path):
    """A batch of two spend rules and a naming rule whose diagnoses are slow, on a worker whose
    RUN_TIME_LIMIT_SECONDS is 10, over c1..c3 and FILLER_CAMPAIGNS campaigns. ClickHouse stops the batch's statement
    at its share of the time limit; each rule then runs alone, in the batch's order: the spend rules succeed with
    exactly their rows, and the naming rule, last, fails at the time limit and writes nothing. Every run's transitions
    say in which batch it was compiled and why it ran alone."""
    with own_redis(tmp_path) as broker:
        with services_on(pg_url, migrated_ch_url, 0, tmp_path / "logs", time_limit=TIME_LIMIT,
                         redis_server=broker.url) as services:
            data = services.data()
            org, schedule = slow_naming_organization(data)
            spend = [data.rule(org, spend_rule(15, schedule), NO_COOLDOWN, name=f"spend {n}") for n in (1, 2)]
            naming = slow_naming_rule(data, org, schedule)
            worker = services.start_worker()
            at = minute_floor(utc_now()) - timedelta(minutes=1)

            summaries = batch_with_naming_claim_held(services, org, at, naming, [*spend, naming])

            assert [s["status"] for s in summaries] == ["succeeded", "succeeded", "failed"], summaries
            assert f"organization {org} failed; each runs alone" in worker.log()
            runs = {rule: _run_row(services, rule, at) for rule in (*spend, naming)}
            for rule, summary in zip(runs, summaries):
                assert summary["run_id"] == str(runs[rule]["id"])
            batch_failed = "alone: the batch's statement failed: "
            timeout = "(TIMEOUT_EXCEEDED)"
            entities = FILLER_CAMPAIGNS + 3

            for rule in spend:
                row = runs[rule]
                details = [entry["detail"] for entry in row["transitions"]]
                assert (row["status"], row["attempts"], row["entities"], row["matched"], row["alerts"]) == (
                    "succeeded", 1, entities, 2, 2), details
                assert details[1] == "compiled to SQL (in a batch of 3 rules)", details
                assert details[2].startswith(f"rule_evaluations written ({batch_failed}") and timeout in details[2]
                assert (data.count("rule_evaluations", rule), data.count("alert_events", rule)) == (entities, 2)
                assert [a["entity_id"] for a in data.alerts(rule, at)] == ["c2", "c3"]

            failed = runs[naming]
            details = [entry["detail"] for entry in failed["transitions"]]
            assert (failed["state"], failed["attempts"]) == ("failed", 1)
            assert failed["error"] == (f"the run passed its time limit of {TIME_LIMIT} s (RUN_TIME_LIMIT_SECONDS) "
                                       "and was stopped"), failed["error"]
            assert len(details) == 3 and details[1] == "compiled to SQL (in a batch of 3 rules)", details
            assert details[2].startswith(f"{failed['error']} ({batch_failed}") and timeout in details[2], details
            assert (data.count("rule_evaluations", naming), data.count("alert_events", naming)) == (0, 0)


def test_a_rule_stopped_at_the_time_limit_mid_statement_leaves_the_next_rules_of_its_process_their_clickhouse(
        pg_url, migrated_ch_url, tmp_path):
    """The slow naming rule first in a batch, then a spend rule, on a worker whose RUN_TIME_LIMIT_SECONDS is 10.
    The batch's statement fails at its share of the time limit; the naming rule, alone, is stopped by the task's
    soft time limit while the server still runs its statement (for up to CLAIM_HELD_SECONDS more). The spend rule,
    next in the same process, gets its ClickHouse requests answered all the same (not refused with
    SESSION_IS_LOCKED, the abandoned statement's session being busy) and succeeds with exactly its rows."""
    with own_redis(tmp_path) as broker:
        with services_on(pg_url, migrated_ch_url, 0, tmp_path / "logs", time_limit=TIME_LIMIT,
                         redis_server=broker.url) as services:
            data = services.data()
            org, schedule = slow_naming_organization(data)
            naming = slow_naming_rule(data, org, schedule)
            spend = data.rule(org, spend_rule(15, schedule), NO_COOLDOWN, name="spend")
            worker = services.start_worker()
            at = minute_floor(utc_now()) - timedelta(minutes=1)

            summaries = batch_with_naming_claim_held(services, org, at, naming, [naming, spend])

            assert [s["status"] for s in summaries] == ["failed", "succeeded"], worker.log()[-3000:]
            assert "SESSION_IS_LOCKED" not in worker.log(), worker.log()[-3000:]
            stopped, succeeded = _run_row(services, naming, at), _run_row(services, spend, at)
            assert stopped["error"] == (f"the run passed its time limit of {TIME_LIMIT} s (RUN_TIME_LIMIT_SECONDS) "
                                        "and was stopped"), stopped["error"]
            details = [entry["detail"] for entry in succeeded["transitions"]]
            assert (succeeded["attempts"], succeeded["entities"], succeeded["matched"], succeeded["alerts"]) == (
                1, FILLER_CAMPAIGNS + 3, 2, 2), details
            assert (data.count("rule_evaluations", spend), data.count("alert_events", spend)) == (
                FILLER_CAMPAIGNS + 3, 2)
            assert [a["entity_id"] for a in data.alerts(spend, at)] == ["c2", "c3"]
            assert (data.count("rule_evaluations", naming), data.count("alert_events", naming)) == (0, 0)


# --- the same batch task delivered again after its pool child was killed ----------------------------------------------


@pytest.mark.slow
def test_a_batch_task_redelivered_after_its_pool_child_was_killed_writes_each_row_once(pg_url, tmp_path):
    """A batch of three rules whose pool child is SIGKILLed right after the claims, its statement unread by the
    stopped ClickHouse server (and carried out once the server resumes: a half-written stage). Tasks are acknowledged
    late and rejected when their worker process is lost, so the worker hands the same task to its next child, which
    finds the runs held, waits for their leases and takes each over alone: one rule_evaluations row per (rule, T,
    entity), one alert per matched entity, and the task's result is the three runs' summaries. No beat runs, so
    no sweeper sends anything: the redelivered task alone finishes the runs."""
    with own_clickhouse(tmp_path, "rules_batch_redelivered") as (server, port, ch_url), \
            own_redis(tmp_path) as broker:
        with services_on(pg_url, ch_url, 0, tmp_path / "logs", time_limit=10, redis_server=broker.url) as services:
            data = services.data()
            org = data.org(timezone="UTC", modules=["alerts"])
            three_campaigns(data, org)
            rules = [data.rule(org, spend_rule(15, never_firing(utc_now())), NO_COOLDOWN, name=f"rule {n}")
                     for n in range(3)]
            worker = services.start_worker()
            at = minute_floor(utc_now()) - timedelta(minutes=1)
            process = server["process"]

            gate = _gate(services, rules[0], org, at)
            task = services.send("rules.evaluate_batch", org, iso(at), rules)
            child = _pool_child(services, task.id, worker)
            wait_until(lambda: _blocks_someone(services, gate), 10, "the claims to wait", interval=0.05)
            os.kill(process.pid, signal.SIGSTOP)
            gate.rollback()
            gate.close()
            for rule in rules:
                wait_until(lambda: _state_is(services, rule, at, "compiled"), 10, f"{rule} compiled", interval=0.05)
            wait_for_pending_requests(port, 1)
            os.kill(child, signal.SIGSTOP)
            os.kill(process.pid, signal.SIGCONT)
            wait_until(lambda: all(len(data.evaluations(rule, at)) == 3 for rule in rules), 10,
                       "the stranded insert")

            # Killed once the leases have little left, so that the take-over comes within the retries Celery makes.
            wait_until(lambda: _lease_left(services, rules[0], at) < LEASE_LEFT_AT_KILL, services.lease_seconds,
                       "the leases to run down", interval=0.2)
            os.kill(child, signal.SIGKILL)
            wait_until(lambda: not is_alive(child), 10, "the killed child to die")
            frozen = {rule: _run_row(services, rule, at) for rule in rules}
            assert [(row["status"], row["state"], row["attempts"]) for row in frozen.values()] == [
                ("running", "compiled", 1)] * 3
            assert all(data.alerts(rule, at) == [] for rule in rules)

            summaries = task.get(timeout=services.lease_seconds + 120)

            assert received_tasks(worker.log(), "rules.evaluate_batch") == [task.id]
            assert worker.log().count(f"Task rules.evaluate_batch[{task.id}] received") >= 2, worker.log()[-3000:]
            assert [(s["run_id"], s["status"]) for s in summaries] == [(str(frozen[rule]["id"]), "succeeded")
                                                                       for rule in rules]
            for rule in rules:
                [row] = services.pg("SELECT * FROM rule_runs WHERE rule_id = %s", (rule,))
                details = [entry["detail"] for entry in row["transitions"]]
                assert (row["status"], row["attempts"], row["entities"], row["matched"], row["alerts"]) == (
                    "succeeded", 2, 3, 2, 2), details
                assert details.count(TAKEN_OVER) == 1, details
                assert "compiled to SQL (in a batch of 3 rules)" in details, details
                assert "rule_evaluations written (alone: the take-over of a run whose process was lost)" in details
                assert [e["entity_id"] for e in data.evaluations(rule, at)] == ["c1", "c2", "c3"]
                assert [a["entity_id"] for a in data.alerts(rule, at)] == ["c2", "c3"]
                assert (data.count("rule_evaluations", rule), data.count("alert_events", rule)) == (3, 2)
            assert queued_task_ids(services) == {"rules": [], "unacked": []}
