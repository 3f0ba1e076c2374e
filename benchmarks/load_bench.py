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
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import redis

from benchmarks.bench import RULE_TEMPLATES, load_metrics, scratch_stores
from storage.clickhouse import ClickHouse
from storage.postgres import Postgres
from worker.errors import CommandFailed
from worker.progress import ProgressBar
from worker.settings import Settings
from worker.supervisor import stop_process_group

TIMEZONES = ("UTC", "America/New_York", "Europe/Berlin", "Asia/Tokyo")
METRIC_DAYS = 8
DRAIN_SECONDS = 300
# Beat is stopped this long after the last measured fire time: it has sent that one, and not the next.
BEAT_GRACE = timedelta(seconds=45)


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
              suffix: str) -> list[int]:
    """Creates `orgs` organizations with `rules` rules among them and their campaigns' metrics; returns their ids."""
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
    return org_ids


def _start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as output:
        return subprocess.Popen(argv, env=env, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


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
        # From the first measured fire time to the last run's finish: what one worker completes in a minute.
        "runs_per_minute": round(len(succeeded) / (minutes - 1 + max(lags) / 60)) if lags else 0,
        "finished_within_the_minute": round(sum(1 for lag in lags if lag < 60) / len(lags), 4) if lags else 0.0,
        "lag_median_s": round(statistics.median(lags), 2) if lags else None,
        "lag_p99_s": round(lags[min(len(lags) - 1, int(len(lags) * 0.99))], 2) if lags else None,
        "lag_max_s": round(lags[-1], 2) if lags else None,
    }


def run_load_bench(config: Settings, *, rules: int, orgs: int, campaigns: int, minutes: int,
                   redis_db: int) -> dict:
    """Runs the load benchmark on scratch databases and Redis database `redis_db` (flushed before and after)."""
    redis_url = _redis_url(config.redis_url, redis_db)
    broker = redis.Redis.from_url(redis_url)
    logs = Path(tempfile.mkdtemp(prefix="rules-load-"))
    celery = [sys.executable, "-m", "celery", "-A", "worker.app"]
    processes: list[subprocess.Popen] = []
    peaks: dict[str, float] = {}
    try:
        with scratch_stores(config, "rules_load") as stores:
            try:
                env = dict(os.environ, DATABASE_URL=stores.pg_url, CLICKHOUSE_URL=stores.ch_url, REDIS_URL=redis_url,
                           REMAP_SIGTERM="SIGQUIT", PYTHONUNBUFFERED="1")
                org_ids = _populate(stores.postgres, stores.clickhouse, orgs, rules, campaigns, stores.name)
                broker.flushdb()
                worker = _start([*celery, "worker", "-Q", "rules", "-c", "2", "--without-mingle", "--without-gossip",
                                 "--loglevel", "WARNING", "--hostname", f"{stores.name}@%h"], env, logs / "worker.log")
                processes.append(worker)
                time.sleep(5)  # the worker forks its pool and connects before beat sends anything
                # Created now, the rules have no fire time before the next minute: beat starts with no backlog.
                first = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
                stores.postgres.execute("load_bench_rules_created_now", org_ids=org_ids)
                beat = _start([*celery, "beat", "--loglevel", "WARNING", "--schedule", str(logs / "beat-schedule")],
                              env, logs / "beat.log")
                processes.append(beat)
                last = first + timedelta(minutes=minutes - 1)
                _watch(stores.postgres, worker, beat, first, last, rules * minutes, peaks, logs)
                figures = _lag_figures(stores.postgres, first, last, rules)
            finally:
                # Stopped before the scratch databases are dropped under them.
                for process in reversed(processes):
                    stop_process_group(process)
    finally:
        broker.flushdb()
        broker.close()
    return {"rules": rules, "orgs": orgs, "campaigns": campaigns, "minutes": minutes, **figures,
            "peak_rss_mb": {role: round(mb, 1) for role, mb in peaks.items()}, "logs": str(logs)}


def _watch(postgres: Postgres, worker: subprocess.Popen, beat: subprocess.Popen, first: datetime, last: datetime,
           expected: int, peaks: dict[str, float], logs: Path) -> None:
    """Samples the processes' memory every second until every run through `last` is finished (or DRAIN_SECONDS
    have passed since `last`); stops beat BEAT_GRACE after `last`."""
    minutes = int((last - first).total_seconds() // 60) + 1
    bar = ProgressBar("fire times", minutes)
    counted = 0
    try:
        while datetime.now(UTC) < last + timedelta(seconds=DRAIN_SECONDS):
            if worker.poll() is not None:
                raise CommandFailed(f"the worker stopped (exit {worker.returncode}); see {logs}")
            roles = {"worker": worker.pid, "beat": beat.pid}
            roles.update({f"worker child {i + 1}": pid for i, pid in enumerate(sorted(_children(worker.pid)))})
            for role, pid in roles.items():
                peaks[role] = max(peaks.get(role, 0.0), _rss_mb(pid))
            passed = min(minutes, max(0, int((datetime.now(UTC) - first).total_seconds() // 60) + 1))
            while counted < passed:
                bar.advance()
                counted += 1
            if datetime.now(UTC) > last + BEAT_GRACE:
                stop_process_group(beat)
                progress = postgres.one("load_bench_unfinished", first=first.replace(tzinfo=None),
                                        last=last.replace(tzinfo=None))
                if progress["runs"] >= expected and progress["unfinished"] == 0:
                    return
            time.sleep(1)
    finally:
        bar.close()
