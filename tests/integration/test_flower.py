"""Flower shows the runs: every task with its name, arguments, state and runtime, through Flower's HTTP API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import redis

from tests.conftest import RULESCTL, free_port
from tests.integration.celery_support import REDIS_SERVER
from worker.supervisor import stop_process_group

# A Redis database no other test module uses: a worker of another module on the same one would take this
# module's tasks and look their rules up in its own PostgreSQL database.
REDIS_DB = 2


def _get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as answer:
        return json.loads(answer.read())


@contextmanager
def _worker_and_flower(env, tmp_path) -> Iterator[tuple[int, dict[str, str]]]:
    """A worker and Flower on the test's databases and this module's Redis database, until the block ends:
    (Flower's port, the environment that reaches them)."""
    redis_url = f"{REDIS_SERVER}/{REDIS_DB}"
    redis.Redis.from_url(redis_url).flushdb()
    process_env = {**os.environ, "DATABASE_URL": env.pg_url, "CLICKHOUSE_URL": env.ch_url, "REDIS_URL": redis_url}
    celery = [sys.executable, "-m", "celery", "-A", "worker.app"]
    port = free_port()
    worker = subprocess.Popen([*celery, "worker", "--concurrency", "1", "--hostname", f"flower-test-{port}@%h",
                               "--without-mingle", "--without-gossip"], env=process_env, start_new_session=True,
                              stdout=open(tmp_path / "worker.log", "wb"), stderr=subprocess.STDOUT)
    flower = subprocess.Popen([*celery, "flower", f"--port={port}", "--address=127.0.0.1"],
                              env={**process_env, "FLOWER_UNAUTHENTICATED_API": "true"},
                              start_new_session=True, stdout=open(tmp_path / "flower.log", "wb"),
                              stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                _get_json(f"http://127.0.0.1:{port}/api/workers?refresh=1")
                break
            except OSError:
                time.sleep(0.5)
        yield port, process_env
    finally:
        stop_process_group(flower)
        stop_process_group(worker)
        redis.Redis.from_url(redis_url).flushdb()


def _finished_tasks(port: int, name: str) -> list[dict]:
    """Flower's tasks named `name`, once one of them has succeeded (or after 30 s)."""
    tasks: dict = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        tasks = _get_json(f"http://127.0.0.1:{port}/api/tasks")
        if any(task.get("state") == "SUCCESS" and task.get("name") == name for task in tasks.values()):
            break
        time.sleep(0.5)
    return [task for task in tasks.values() if task.get("name") == name]


def test_flower_lists_each_run_with_name_arguments_state_and_runtime(env, tmp_path):
    at = datetime.now(UTC).replace(second=0, microsecond=0)
    yesterday = (at.date() - timedelta(days=1)).isoformat()
    org = env.org(timezone="UTC")
    env.metrics({"org_id": org, "date": yesterday, "campaign_id": "c1", "campaign_name": "One", "spend": "1500"},
                {"org_id": org, "date": yesterday, "campaign_id": "c2", "campaign_name": "Two", "spend": "10"})
    rule_id = env.rule(org, {"window": "yesterday", "logic": {">": [{"var": "spend"}, 1000]}})
    with _worker_and_flower(env, tmp_path) as (port, process_env):
        result = subprocess.run([RULESCTL, "run", rule_id, "--enqueue", "--json", "--at", at.isoformat()],
                                env=process_env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        summary = json.loads(result.stdout)
        assert summary["matched"] == 1 and summary["status"] == "succeeded"

        [task] = _finished_tasks(port, "rules.evaluate")
        assert task["state"] == "SUCCESS"
        assert rule_id in task["args"]
        assert "scheduled_for" in task["kwargs"]
        assert task["runtime"] is not None and task["runtime"] > 0
        assert summary["run_id"] in task["result"]


def test_flower_lists_a_batch_with_its_organization_time_rules_state_and_runtime(env, tmp_path):
    at = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    yesterday = (at.date() - timedelta(days=1)).isoformat()
    org = env.org(timezone="UTC")
    env.metrics({"org_id": org, "date": yesterday, "campaign_id": "c1", "campaign_name": "One", "spend": "1500"},
                {"org_id": org, "date": yesterday, "campaign_id": "c2", "campaign_name": "Two", "spend": "10"})
    rule_ids = sorted(env.rule(org, {"window": "yesterday", "logic": {">": [{"var": "spend"}, threshold]},
                                     "schedule": "0 * * * *"}) for threshold in (5, 1000))
    with _worker_and_flower(env, tmp_path) as (port, process_env):
        result = subprocess.run([RULESCTL, "dispatch", "--at", at.isoformat(), "--json"], env=process_env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        sent = [json.loads(line) for line in result.stdout.splitlines()]
        assert [(item["rule_id"], item["task"]) for item in sent] == [(rule, "rules.evaluate_batch")
                                                                       for rule in rule_ids]
        [task_id] = {item["task_id"] for item in sent}

        [task] = _finished_tasks(port, "rules.evaluate_batch")
        assert (task["uuid"], task["state"]) == (task_id, "SUCCESS")
        assert all(str(value) in task["args"] for value in (org, at.strftime("%Y-%m-%dT%H:%M:%SZ"), *rule_ids))
        assert task["runtime"] is not None and task["runtime"] > 0
        runs = env.pg("SELECT id::text AS id, matched FROM rule_runs ORDER BY rule_id")
        assert sorted(run["matched"] for run in runs) == [1, 2]
        assert all(run["id"] in task["result"] for run in runs)
