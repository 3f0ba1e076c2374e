"""Flower shows the runs: every task with its name, arguments, state and runtime, through Flower's HTTP API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta

import redis

from tests.conftest import RULESCTL, free_port
from worker.supervisor import stop_process_group

# A Redis database no other test module uses: a worker of another module on the same one would take this
# module's tasks and look their rules up in its own PostgreSQL database.
REDIS_DB = 2


def _get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as answer:
        return json.loads(answer.read())


def test_flower_lists_each_run_with_name_arguments_state_and_runtime(env, tmp_path):
    redis_url = f"redis://127.0.0.1:6379/{REDIS_DB}"
    redis.Redis.from_url(redis_url).flushdb()
    at = datetime.now(UTC).replace(second=0, microsecond=0)
    yesterday = (at.date() - timedelta(days=1)).isoformat()
    org = env.org(timezone="UTC")
    env.metrics({"org_id": org, "date": yesterday, "campaign_id": "c1", "campaign_name": "One", "spend": "1500"},
                {"org_id": org, "date": yesterday, "campaign_id": "c2", "campaign_name": "Two", "spend": "10"})
    rule_id = env.rule(org, {"window": "yesterday", "logic": {">": [{"var": "spend"}, 1000]}})
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
        result = subprocess.run([RULESCTL, "run", rule_id, "--enqueue", "--json", "--at", at.isoformat()],
                                env=process_env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        summary = json.loads(result.stdout)
        assert summary["matched"] == 1 and summary["status"] == "succeeded"

        tasks = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            tasks = _get_json(f"http://127.0.0.1:{port}/api/tasks")
            if any(task.get("state") == "SUCCESS" for task in tasks.values()):
                break
            time.sleep(0.5)
        [task] = [task for task in tasks.values() if task.get("name") == "rules.evaluate"]
        assert task["state"] == "SUCCESS"
        assert rule_id in task["args"]
        assert "scheduled_for" in task["kwargs"]
        assert task["runtime"] is not None and task["runtime"] > 0
        assert summary["run_id"] in task["result"]
    finally:
        stop_process_group(flower)
        stop_process_group(worker)
        redis.Redis.from_url(redis_url).flushdb()
