"""Faults of a worker in the middle of a run, with real processes: a SIGTERM, a SIGKILL of the whole worker, a run
past its time limit.

Each test has a clickhouse-local of its own, which it SIGSTOPs so that a run blocks in its first ClickHouse
statement right after its claim (state 'compiled'), the way test_worker_beat's kill test holds a run: an
uncommitted rule_runs row for (rule, T) holds the claim back until the pool child has connected to ClickHouse, the
server is stopped, and the row is rolled back. The server is always resumed (SIGCONT) before it is stopped.

Redis database numbers: 6, 7 and 8, one per test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from datetime import datetime, timedelta

import pytest

from tests.integration.celery_support import (NO_COOLDOWN, Services, children_of, is_alive, iso, minute_floor,
                                              naive, own_clickhouse, pending_requests, services_on, spend_rule, three_campaigns,
                                              utc_now, wait_for_pending_requests, wait_for_runs, wait_until)
from tests.integration.test_worker_beat import _blocks_someone, _gate, _lease_left, _pool_child, _run_row, _state_is

TAKEN_OVER = "taken over after the lease expired"


def hold_in_first_clickhouse_statement(services: Services, server, port: int, worker, rule: str, org: int,
                                       at: datetime):
    """Sends rules.evaluate(rule, T) and leaves it blocked in its first ClickHouse statement (state 'compiled'),
    with the server SIGSTOPped; returns (the task, the pid of the pool child running it)."""
    gate = _gate(services, rule, org, at)
    try:
        task = services.send("rules.evaluate", rule, scheduled_for=iso(at))
        child = _pool_child(services, task.id, worker)  # its runner (and ClickHouse client) is made by now
        wait_until(lambda: _blocks_someone(services, gate), 10, "the claim to wait", interval=0.05)
        os.kill(server["process"].pid, signal.SIGSTOP)
    finally:
        gate.rollback()
        gate.close()
    wait_until(lambda: _state_is(services, rule, at, "compiled"), 10, "the run to be compiled", interval=0.05)
    wait_for_pending_requests(port, 1)
    return task, child


def queued_task_ids(services: Services) -> dict[str, list[str]]:
    """The task ids in the `rules` list (waiting to be handed out) and in kombu's `unacked` hash (handed out and
    not acknowledged), as kombu's Redis transport keeps them."""
    waiting = [json.loads(raw)["headers"]["id"] for raw in services.redis.lrange("rules", 0, -1)]
    unacked = [json.loads(raw)[0]["headers"]["id"] for raw in services.redis.hvals("unacked")]
    return {"rules": waiting, "unacked": unacked}


def transitions(row: dict) -> list[str]:
    return [entry["detail"] for entry in row["transitions"]]


def assert_finished_once(services: Services, rule: str, at: datetime) -> dict:
    """The run of (rule, T) is the rule's only run, succeeded on its second attempt after one take-over, and
    rule_evaluations and alert_events hold its rows once; returns its row."""
    data = services.data()
    [row] = services.pg("SELECT * FROM rule_runs WHERE rule_id = %s", (rule,))
    assert (row["status"], row["state"], row["attempts"], row["trigger"]) == ("succeeded", "succeeded", 2, "schedule")
    assert transitions(row).count(TAKEN_OVER) == 1, transitions(row)
    assert (row["entities"], row["matched"], row["alerts"], row["error"]) == (3, 2, 2, None)
    assert row["lease_expires_at"] is None and row["finished_at"] is not None
    assert [e["entity_id"] for e in data.evaluations(rule, at)] == ["c1", "c2", "c3"]
    assert [a["entity_id"] for a in data.alerts(rule, at)] == ["c2", "c3"]
    assert (data.count("rule_evaluations", rule), data.count("alert_events", rule)) == (3, 2)
    return row


def server_is_idle(services: Services) -> bool:
    """True when the ClickHouse server runs no query but this one."""
    return not services.data().ch_rows("SELECT query FROM system.processes WHERE query_id != queryID()")


def never_firing(now: datetime) -> str:
    """A daily cron 12 hours away: beat has nothing of the rule's own to send (its last fire time is before the
    rule was created), so the only runs are the test's."""
    later = now + timedelta(hours=12)
    return f"{later.minute} {later.hour} * * *"


# --- 1. SIGTERM: the task in hand is requeued -------------------------------------------------------------------------


@pytest.mark.slow
def test_a_worker_sigtermed_mid_run_requeues_the_task_and_it_finishes_once(pg_url, tmp_path):
    """SIGTERM to a worker whose task is stuck mid-run (REMAP_SIGTERM=SIGQUIT, WORKER_SHUTDOWN_SECONDS=2): the
    worker gives the task 2 s, stops it and exits by itself; the message is back in the `rules` list, unacknowledged
    work that Redis hands out again; the run is left 'running'. A new worker gets the same task, takes the run over
    once its lease has expired and finishes it once; the task's result is the run's summary."""
    with own_clickhouse(tmp_path, "rules_sigterm") as (server, port, ch_url):
        with services_on(pg_url, ch_url, 6, tmp_path / "logs", time_limit=10,
                         env={"WORKER_SHUTDOWN_SECONDS": "2"}) as services:
            data = services.data()
            org = data.org(timezone="UTC", modules=["alerts"])
            three_campaigns(data, org)
            rule = data.rule(org, spend_rule(15), NO_COOLDOWN)
            worker = services.start_worker()
            at = minute_floor(utc_now()) - timedelta(minutes=1)
            task, child = hold_in_first_clickhouse_statement(services, server, port, worker, rule, org, at)

            # Well inside the 10 s soft time limit, so that the shutdown, not the limit, stops the run.
            signalled = time.monotonic()
            os.kill(worker.pid, signal.SIGTERM)
            try:
                worker.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"no exit within 20 s of SIGTERM\n{services.logs_text()}") from None
            took = time.monotonic() - signalled
            assert worker.popen.returncode == 0 and 2 <= took < 20, (worker.popen.returncode, took)
            assert "Initiating Soft Shutdown, terminating in 2" in worker.log(), worker.log()[-3000:]
            wait_until(lambda: not is_alive(child), 10, "the pool child to be gone")

            # Unacknowledged, restored by kombu to the `rules` list as the worker closed its channel; the run is left
            # as the child left it.
            assert "Restoring 1 unacknowledged message(s)" in worker.log(), worker.log()[-3000:]
            queued = queued_task_ids(services)
            assert queued == {"rules": [task.id], "unacked": []}, queued
            frozen = _run_row(services, rule, at)
            assert (frozen["status"], frozen["state"], frozen["attempts"]) == ("running", "compiled", 1)

            # The child's INSERT ... SELECT sits in the stopped server's socket: resumed, the server carries it out,
            # a half-written stage that the take-over must not double.
            os.kill(server["process"].pid, signal.SIGCONT)
            wait_until(lambda: len(data.evaluations(rule, at)) == 3, 10, "the stranded insert")

            # A new worker started once the lease is over takes the run over at its first try.
            wait_until(lambda: _lease_left(services, rule, at) < 0, services.lease_seconds, "the lease to expire",
                       interval=0.5)
            services.start_worker("worker-2")
            result = task.get(timeout=60)

            row = assert_finished_once(services, rule, at)
            assert result["run_id"] == str(row["id"]) and result["status"] == "succeeded"
            assert (result["entities"], result["matched"], result["alerts"]) == (3, 2, 2)
            assert services.task_meta(task.id)["status"] == "SUCCESS"
            assert queued_task_ids(services) == {"rules": [], "unacked": []}


# --- 2. SIGKILL of the whole worker: beat's sweeper sends the run again -----------------------------------------------


@pytest.mark.slow
def test_a_whole_worker_killed_mid_run_is_finished_after_its_lease_by_beat(pg_url, tmp_path):
    """SIGKILL to a worker's whole process group while its task is stuck mid-run: nobody restores the message,
    which stays in kombu's `unacked` hash until the visibility timeout (2 x lease). Beat's sweeper sends the run
    again once its lease has expired (+5 s grace; a sweep before that sends nothing), a new worker takes it over
    and finishes it once, within lease + 60 s of the kill."""
    with own_clickhouse(tmp_path, "rules_killed_whole") as (server, port, ch_url):
        with services_on(pg_url, ch_url, 7, tmp_path / "logs", time_limit=10) as services:
            data = services.data()
            org = data.org(timezone="UTC", modules=["alerts"])
            three_campaigns(data, org)
            rule = data.rule(org, spend_rule(15, never_firing(utc_now())), NO_COOLDOWN)
            worker = services.start_worker()
            at = minute_floor(utc_now()) - timedelta(minutes=1)
            task, _ = hold_in_first_clickhouse_statement(services, server, port, worker, rule, org, at)

            group = [worker.pid, *children_of(worker.pid)]
            worker.kill()
            killed = time.monotonic()
            wait_until(lambda: not any(is_alive(pid) for pid in group), 10, "the worker's processes to die")
            assert queued_task_ids(services) == {"rules": [], "unacked": [task.id]}
            frozen = _run_row(services, rule, at)
            assert (frozen["status"], frozen["state"], frozen["attempts"]) == ("running", "compiled", 1)
            os.kill(server["process"].pid, signal.SIGCONT)
            wait_until(lambda: len(data.evaluations(rule, at)) == 3, 10, "the stranded insert")

            # Beat is started so that its first sweep (at once) comes while the lease holds and its second (30 s
            # later) after the lease and its grace are over.
            services.start_worker("worker-2")
            wait_until(lambda: _lease_left(services, rule, at) < 22, services.lease_seconds, "the lease to run down",
                       interval=0.5)
            beat = services.start_beat()
            deadline = killed + services.lease_seconds + 60
            wait_for_runs(services, lambda rows: rows and rows[0]["status"] != "running",
                          deadline - time.monotonic(), "the run to be finished",
                          "SELECT * FROM rule_runs WHERE rule_id = %s", (rule,))

            row = assert_finished_once(services, rule, at)
            taken_over = next(entry for entry in row["transitions"] if entry["detail"] == TAKEN_OVER)
            assert datetime.fromisoformat(taken_over["at"]) >= frozen["lease_expires_at"] + timedelta(seconds=5)
            resent = f"run {row['id']} of rule {rule} lost its process; sent again"
            assert beat.log().count(resent) == 1, beat.log()[-3000:]
            # The killed worker's message is still unacknowledged: the sweeper, not Redis, had the run finished.
            assert queued_task_ids(services) == {"rules": [], "unacked": [task.id]}


# --- 3. the time limit ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_run_past_its_time_limit_fails_clearly_and_others_run(pg_url, tmp_path):
    """RUN_TIME_LIMIT_SECONDS=5 and a run stuck in ClickHouse: the soft time limit stops it, the run is 'failed'
    with an error naming the time limit, finished, holding no lease, and the task returns that summary. The pool
    child lives on: with the server back, another rule's runs on both children of the same worker succeed."""
    with own_clickhouse(tmp_path, "rules_time_limit") as (server, port, ch_url):
        with services_on(pg_url, ch_url, 8, tmp_path / "logs", time_limit=5) as services:
            data = services.data()
            org = data.org(timezone="UTC", modules=["alerts"])
            three_campaigns(data, org)
            stuck = data.rule(org, spend_rule(15), NO_COOLDOWN, name="stuck")
            other = data.rule(org, spend_rule(15), NO_COOLDOWN, name="other")
            worker = services.start_worker()
            at = minute_floor(utc_now()) - timedelta(minutes=1)
            task, child = hold_in_first_clickhouse_statement(services, server, port, worker, stuck, org, at)

            summary = task.get(timeout=30)
            row = _run_row(services, stuck, at)
            assert (row["status"], row["state"], row["attempts"]) == ("failed", "failed", 1)
            assert row["error"] == "the run passed its time limit of 5 s (RUN_TIME_LIMIT_SECONDS) and was stopped"
            assert transitions(row)[-1] == row["error"]
            assert row["finished_at"] is not None and row["lease_expires_at"] is None
            assert (summary["run_id"], summary["status"], summary["error"]) == (str(row["id"]), "failed", row["error"])
            assert is_alive(child) and child in children_of(worker.pid)

            # The server resumes and deals with the stopped run's request (which the child has given up) first.
            os.kill(server["process"].pid, signal.SIGCONT)
            wait_until(lambda: not pending_requests(port) and server_is_idle(services), 10,
                       "the server to be done with the stopped run's request")

            # Another rule, on each of the worker's two children: the first held at its claim, the second sent then.
            later = at - timedelta(minutes=1)
            gate = _gate(services, other, org, at)
            try:
                first = services.send("rules.evaluate", other, scheduled_for=iso(at))
                first_child = _pool_child(services, first.id, worker)
                wait_until(lambda: _blocks_someone(services, gate), 10, "the claim to wait", interval=0.05)
                second = services.send("rules.evaluate", other, scheduled_for=iso(later))
                second_child = _pool_child(services, second.id, worker)
            finally:
                gate.rollback()
                gate.close()
            assert {first_child, second_child} == set(children_of(worker.pid)) and child in (first_child, second_child)
            for done, moment in ((first.get(timeout=30), at), (second.get(timeout=30), later)):
                [run] = services.pg("SELECT * FROM rule_runs WHERE rule_id = %s AND scheduled_for = %s",
                                    (other, naive(moment)))
                assert (done["run_id"], done["status"]) == (str(run["id"]), "succeeded")
                assert (run["status"], run["attempts"], run["entities"], run["matched"], run["alerts"]) == (
                    "succeeded", 1, 3, 2, 2)
                assert (len(data.evaluations(other, moment)), len(data.alerts(other, moment))) == (3, 2)
