"""Faults of batches on real processes (the README's How a run works, Guarantees): a worker killed mid-batch, and a
batch task delivered again.

Each rule of a batch keeps its own run, so a worker killed in the middle of a batch leaves each run as it was;
beat's sweeper sends each lost run again as a single rules.evaluate, which takes it over alone and finishes it
once. The points are reached as in test_worker_beat.py, with no sleeps: an uncommitted rule_runs row holds a claim
back, the test's own ClickHouse server is SIGSTOPped so that the batch blocks in its next statement, and a row
lock on a run holds its 'evaluated' transition back until the batch's insert is written.
"""

from __future__ import annotations

import os
import signal
from datetime import timedelta

import psycopg
import pytest

from tests.integration.celery_support import (NO_COOLDOWN, children_of, is_alive, iso, minute_floor, own_clickhouse,
                                              own_redis, services_on, spend_rule, three_campaigns, utc_now,
                                              wait_for_pending_requests, wait_for_runs, wait_until)
from tests.integration.test_worker_beat import _blocks_someone, _gate, _pool_child, _run_row, _state_is
from tests.integration.test_worker_faults import never_firing

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
