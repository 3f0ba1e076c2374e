"""`rulesctl load-bench`: the whole service under load, as beat and one worker really run it.

Builds scratch PostgreSQL and ClickHouse databases beside the configured ones: O organizations in four timezones,
R enabled rules spread over them, all due every minute, over C campaigns with eight days of metrics. Starts one
worker (`-Q rules -c 2`) and beat on a scratch Redis database, lets M whole minutes of fire times pass, waits for
their runs, and reports from `rule_runs`: runs completed per minute, the lag from fire time to finish (median,
p99, max), runs missing or doubled per (rule, T), and each process's peak memory. Everything scratch is dropped
at the end.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import redis

from storage.clickhouse import ClickHouse
from storage.migrations import (drop_clickhouse_database, drop_postgres_database, ensure_clickhouse_database,
                                ensure_postgres_database, migrate_clickhouse, migrate_postgres)
from storage.postgres import Postgres
from worker.bench import RULE_TEMPLATES, load_metrics, scratch_url
from worker.errors import CommandFailed
from worker.progress import ProgressBar
from worker.settings import Settings

TIMEZONES = ("UTC", "America/New_York", "Europe/Berlin", "Asia/Tokyo")
METRIC_DAYS = 8
DRAIN_SECONDS = 180


def _redis_url(url: str, database: int) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _children(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _populate(postgres: Postgres, clickhouse: ClickHouse, orgs: int, rules: int, campaigns: int,
              suffix: str) -> None:
    today = datetime.now(UTC).date()
    per_org = [rules // orgs + (1 if i < rules % orgs else 0) for i in range(orgs)]
    with postgres.transaction() as tx:
        org_ids = [tx.one("insert_organization", name=f"load {i}", slug=f"load-{suffix}-{i}",
                          timezone=TIMEZONES[i % len(TIMEZONES)], currency="USD",
                          enabled_modules=json.dumps(["alerts"]))["id"] for i in range(orgs)]
        for org_id, count in zip(org_ids, per_org):
            for i in range(count):
                conditions = {**RULE_TEMPLATES[i % len(RULE_TEMPLATES)], "schedule": "* * * * *"}
                tx.one("insert_rule", org_id=org_id, name=f"load rule {org_id}-{i}", module="alerts",
                       conditions=json.dumps(conditions), actions=json.dumps({"cooldown_minutes": 60}),
                       created_by=None)
    for org_id in org_ids:
        load_metrics(clickhouse, org_id, max(1, campaigns // orgs), METRIC_DAYS, today)


def _start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as output:
        return subprocess.Popen(argv, env=env, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _lag_figures(postgres: Postgres, first: datetime, last: datetime, rules: int) -> dict:
    rows = postgres.all("load_bench_runs", first=first.replace(tzinfo=None), last=last.replace(tzinfo=None))
    minutes = int((last - first).total_seconds() // 60) + 1
    per_key: dict[tuple[str, datetime], int] = {}
    for row in rows:
        per_key[(row["rule_id"], row["scheduled_for"])] = per_key.get((row["rule_id"], row["scheduled_for"]), 0) + 1
    succeeded = [row for row in rows if row["status"] == "succeeded"]
    lags = sorted(row["lag_s"] for row in succeeded)
    return {
        "fire_times": minutes,
        "runs_expected": rules * minutes,
        "runs_succeeded": len(succeeded),
        "runs_failed": sum(1 for row in rows if row["status"] == "failed"),
        "runs_missing": rules * minutes - len(per_key),
        "runs_doubled": sum(count - 1 for count in per_key.values()),
        "runs_per_minute": round(len(succeeded) / minutes),
        "finished_within_the_minute": round(sum(1 for lag in lags if lag < 60) / len(lags), 4) if lags else 0.0,
        "lag_median_s": round(statistics.median(lags), 2) if lags else None,
        "lag_p99_s": round(lags[min(len(lags) - 1, int(len(lags) * 0.99))], 2) if lags else None,
        "lag_max_s": round(lags[-1], 2) if lags else None,
    }


def run_load_bench(config: Settings, *, rules: int, orgs: int, campaigns: int, minutes: int,
                   redis_db: int) -> dict:
    """Runs the load benchmark on scratch databases and Redis database `redis_db` (flushed before and after)."""
    suffix = uuid.uuid4().hex[:10]
    pg_url = scratch_url(config.database_url, f"rules_load_{suffix}")
    ch_url = scratch_url(config.clickhouse_url, f"rules_load_{suffix}")
    redis_url = _redis_url(config.redis_url, redis_db)
    broker = redis.Redis.from_url(redis_url)
    logs = Path(tempfile.mkdtemp(prefix="rules-load-"))
    env = dict(os.environ, DATABASE_URL=pg_url, CLICKHOUSE_URL=ch_url, REDIS_URL=redis_url,
               REMAP_SIGTERM="SIGQUIT", PYTHONUNBUFFERED="1")
    celery = [sys.executable, "-m", "celery", "-A", "worker.app"]
    processes: list[subprocess.Popen] = []
    ensure_postgres_database(pg_url)
    postgres = Postgres(pg_url)
    clickhouse = None
    try:
        migrate_postgres(pg_url)
        ensure_clickhouse_database(ch_url)
        migrate_clickhouse(ch_url)
        clickhouse = ClickHouse(ch_url)
        _populate(postgres, clickhouse, orgs, rules, campaigns, suffix)
        broker.flushdb()
        worker = _start([*celery, "worker", "-Q", "rules", "-c", "2", "--without-mingle", "--without-gossip",
                         "--loglevel", "WARNING", "--hostname", f"load-{suffix}@%h"], env, logs / "worker.log")
        processes.append(worker)
        time.sleep(5)  # the worker forks its pool and connects before beat sends anything
        beat = _start([*celery, "beat", "--loglevel", "WARNING", "--schedule", str(logs / "beat-schedule")], env,
                      logs / "beat.log")
        processes.append(beat)
        now = datetime.now(UTC)
        first = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
        last = first + timedelta(minutes=minutes - 1)
        peaks: dict[str, float] = {}
        bar = ProgressBar("fire times", minutes)
        counted = 0
        deadline = last + timedelta(seconds=2)
        drained_by = last + timedelta(seconds=DRAIN_SECONDS)
        while datetime.now(UTC) < drained_by:
            for process in processes:
                if process.poll() is not None:
                    raise CommandFailed(f"a service process stopped (exit {process.returncode}); see {logs}")
            roles = {"worker": worker.pid, "beat": beat.pid}
            roles.update({f"worker child {i + 1}": pid for i, pid in enumerate(sorted(_children(worker.pid)))})
            for role, pid in roles.items():
                peaks[role] = max(peaks.get(role, 0.0), _rss_mb(pid))
            passed = min(minutes, max(0, int((datetime.now(UTC) - first).total_seconds() // 60) + 1))
            while counted < passed:
                bar.advance()
                counted += 1
            if datetime.now(UTC) > deadline:
                if beat.poll() is None:
                    _stop(beat)
                done = postgres.one("load_bench_unfinished", first=first.replace(tzinfo=None),
                                    last=last.replace(tzinfo=None))
                if done["runs"] >= rules * minutes and done["unfinished"] == 0:
                    break
            time.sleep(1)
        bar.close()
        figures = _lag_figures(postgres, first, last, rules)
    finally:
        for process in reversed(processes):
            _stop(process)
        broker.flushdb()
        broker.close()
        postgres.close()
        if clickhouse is not None:
            clickhouse.close()
        drop_postgres_database(pg_url)
        drop_clickhouse_database(ch_url)
    return {"rules": rules, "orgs": orgs, "campaigns": campaigns, "minutes": minutes, **figures,
            "peak_rss_mb": {role: round(mb, 1) for role, mb in peaks.items()}, "logs": str(logs)}
