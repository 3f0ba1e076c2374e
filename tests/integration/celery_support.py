"""Real Celery processes for test_worker_beat: workers and beats started as `python -m celery -A worker.app ...`.

Each test gets its own PostgreSQL database, its own ClickHouse database and its own Redis database number
(FLUSHDB before and after), so the processes of one test never see the tasks or rows of another, even when two
tests' processes run at the same time. Every process is started in a session of its own (its pid is its process
group) with its output in a log file under the test's tmp_path, and is killed with its whole group at the end,
whatever happens.

Everything the tests read back comes from plain SQL (psycopg, clickhouse-connect) and from Redis itself, never
through the product's storage layer or its Celery app (whose settings are read once per process, from the
environment of the test process, not of the test).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import clickhouse_connect
import psycopg
import pytest
import redis
from celery import Celery
from psycopg.rows import dict_row

from storage.migrations import ensure_clickhouse_database, migrate_clickhouse
from tests.conftest import free_port, start_clickhouse_local, stop_process
from tests.integration.runs_support import RunEnv

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
REDIS_SERVER = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379").rstrip("/")
# The variables a worker or beat reads; anything else of the test process's environment is passed as it is.
_PRODUCT_VARIABLES = ("DATABASE_URL", "REDIS_URL", "CLICKHOUSE_URL", "SMTP_URL", "SMTP_FROM", "WEBHOOK_SECRET",
                      "NOTIFY_ALLOWED_HOSTS", "RUN_TIME_LIMIT_SECONDS", "WORKER_SHUTDOWN_SECONDS",
                      "DELIVERY_MAX_ATTEMPTS", "DELIVERY_BACKOFF_SECONDS")

T = TypeVar("T")


def wait_until(check: Callable[[], T], timeout: float, what: str, interval: float = 0.25) -> T:
    """Calls `check` until it returns something truthy and returns that; fails naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def minute_floor(moment: datetime) -> datetime:
    """The start of `moment`'s minute."""
    return moment.replace(second=0, microsecond=0)


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    """`YYYY-MM-DDTHH:MM:SSZ`, as beat and the run summary write T."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def naive(moment: datetime) -> datetime:
    """The naive UTC timestamp that `rule_runs.scheduled_for` stores."""
    return moment.astimezone(UTC).replace(tzinfo=None)


# --- processes ------------------------------------------------------------------------------------------------------


def _proc_stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def children_of(pid: int) -> list[int]:
    """The live (not zombie) processes whose parent is `pid` (what `ps --ppid` lists)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _proc_stat(int(entry))
            if fields and int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry))
    return sorted(found)


def is_alive(pid: int) -> bool:
    fields = _proc_stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


@dataclass
class Process:
    """One started process, the leader of its own process group, with its output in `log_path`."""

    name: str
    popen: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait_for_log(self, text: str, timeout: float = 60) -> None:
        def seen() -> bool:
            if text in self.log():
                return True
            if not self.alive():
                raise AssertionError(f"{self.name} exited with {self.popen.returncode}:\n{self.log()[-3000:]}")
            return False

        wait_until(seen, timeout, f"{text!r} in the log of {self.name}")

    def signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM to the group (a warm shutdown), SIGKILL if it is still there after `timeout` s."""
        if self.alive():
            self.signal_group(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def kill(self) -> None:
        """SIGKILL to the whole group (pool children included); reaps the leader."""
        self.signal_group(signal.SIGKILL)
        try:
            self.popen.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass


@dataclass
class Services:
    """One test's databases and Redis number, and the Celery processes started on them."""

    pg_url: str
    ch_url: str
    redis_db: int
    logs: Path
    time_limit: int = 10
    extra_env: dict[str, str] = field(default_factory=dict)
    processes: list[Process] = field(default_factory=list)
    _redis: Any = None
    _client: Any = None
    _ch_raw: Any = None
    # The Redis server (URL without a database number); a test that stops Redis passes one of its own.
    redis_server: str = REDIS_SERVER

    @property
    def redis_url(self) -> str:
        return f"{self.redis_server.rstrip('/')}/{self.redis_db}"

    @property
    def lease_seconds(self) -> int:
        return self.time_limit + 60

    def environment(self) -> dict[str, str]:
        env = {name: value for name, value in os.environ.items() if name not in _PRODUCT_VARIABLES}
        env.update(DATABASE_URL=self.pg_url, CLICKHOUSE_URL=self.ch_url, REDIS_URL=self.redis_url,
                   RUN_TIME_LIMIT_SECONDS=str(self.time_limit), PYTHONUNBUFFERED="1", REMAP_SIGTERM="SIGQUIT",
                   **self.extra_env)
        return env

    # --- processes --------------------------------------------------------------------------------------------

    def _start(self, name: str, argv: list[str]) -> Process:
        log_path = self.logs / f"{name}.log"
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(argv, cwd=REPO, env=self.environment(), stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        process = Process(name, popen, log_path)
        self.processes.append(process)
        return process

    def start_worker(self, name: str = "worker", *, wait: bool = True, queues: str | None = None) -> Process:
        """`celery -A worker.app worker` with two prefork children and a hostname of its own (on `queues`, or all
        of them); waits until ready."""
        hostname = f"{name}-{uuid.uuid4().hex[:8]}@tests"
        process = self._start(name, [
            PYTHON, "-m", "celery", "-A", "worker.app", "worker", "--loglevel", "INFO", "--concurrency", "2",
            "--pool", "prefork", "--without-mingle", "--without-gossip", "--hostname", hostname,
            *(["--queues", queues] if queues else []),
        ])
        if wait:
            process.wait_for_log(f"{hostname} ready.", timeout=90)
            # The pool's children are forked before "ready."; make sure both are there to be found.
            wait_until(lambda: len(children_of(process.pid)) >= 2, 30, f"the pool children of {name}")
        return process

    def start_notifier(self, name: str = "notifier") -> Process:
        """The notification worker as `rulesctl up` runs it: the notifications queue, eight threads."""
        hostname = f"{name}-{uuid.uuid4().hex[:8]}@tests"
        process = self._start(name, [
            PYTHON, "-m", "celery", "-A", "worker.app", "worker", "--loglevel", "INFO", "--queues", "notifications",
            "--pool", "threads", "--concurrency", "8", "--without-mingle", "--without-gossip", "--hostname", hostname,
        ])
        process.wait_for_log(f"{hostname} ready.", timeout=90)
        return process

    def start_beat(self, name: str = "beat") -> Process:
        """`celery -A worker.app beat`, with no scheduler flag (the app configures the rule scheduler)."""
        return self._start(name, [
            PYTHON, "-m", "celery", "-A", "worker.app", "beat", "--loglevel", "INFO",
            "--schedule", str(self.logs / f"{name}-schedule"),
        ])

    def rulesctl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([str(Path(PYTHON).with_name("rulesctl")), *args], cwd=REPO, env=self.environment(),
                              capture_output=True, text=True, timeout=timeout)

    def logs_text(self) -> str:
        """The tail of every process's log, for failure messages."""
        return "\n".join(f"--- {p.name} (pid {p.pid}) ---\n{p.log()[-4000:]}" for p in self.processes)

    # --- Redis and tasks --------------------------------------------------------------------------------------

    @property
    def redis(self) -> redis.Redis:
        if self._redis is None:
            self._redis = redis.Redis.from_url(self.redis_url)
        return self._redis

    @property
    def client(self) -> Celery:
        """A Celery app of the test's own on the test's Redis number, to send tasks and read their results."""
        if self._client is None:
            self._client = Celery("rules-tests", broker=self.redis_url, backend=self.redis_url)
            self._client.conf.update(task_default_queue="rules", broker_connection_retry_on_startup=True)
        return self._client

    def send(self, name: str, *args: Any, **kwargs: Any):
        return self.client.send_task(name, args=args, kwargs=kwargs, queue="rules")

    def task_meta(self, task_id: str) -> dict[str, Any] | None:
        """The result backend's record of a task (state STARTED carries the pool child's pid)."""
        raw = self.redis.get(f"celery-task-meta-{task_id}")
        return json.loads(raw) if raw else None

    def flush_redis(self) -> None:
        self.redis.flushdb()

    # --- data -------------------------------------------------------------------------------------------------

    def data(self) -> RunEnv:
        """runs_support's helpers (org, rule, metrics, runs, evaluations, alerts) on this test's databases."""
        if self._ch_raw is None:
            parts = urlsplit(self.ch_url)
            self._ch_raw = clickhouse_connect.get_client(host=parts.hostname, port=parts.port,
                                                         database=self.ch_database)
        return RunEnv(self.pg_url, self.ch_url, self.ch_database, None, None, None, self._ch_raw)

    @property
    def ch_database(self) -> str:
        return self.ch_url.rsplit("/", 1)[1]

    def pg(self, sql: str, params: Any = None) -> list[dict[str, Any]]:
        with psycopg.connect(self.pg_url, row_factory=dict_row, autocommit=True) as connection:
            cursor = connection.execute(sql, params)
            return cursor.fetchall() if cursor.description else []

    def close(self) -> None:
        """Kills every process (with its group), flushes and closes Redis, closes the clients."""
        for process in reversed(self.processes):
            process.kill()
        if self._client is not None:
            self._client.close()
        try:
            self.flush_redis()
        finally:
            if self._redis is not None:
                self._redis.close()
            if self._ch_raw is not None:
                self._ch_raw.close()


def received_tasks(log: str, name: str) -> list[str]:
    """The ids of the tasks named `name` that a worker's log says it received, each once, in order."""
    return list(dict.fromkeys(re.findall(rf"Task {re.escape(name)}\[([0-9a-f-]+)\] received", log)))


def summary_in(result: Any, rule_id: str) -> dict[str, Any] | None:
    """A rule's run summary in a task's result: the result of rules.evaluate, or the rule's one in the list of
    summaries rules.evaluate_batch returns."""
    if isinstance(result, list):
        [summary] = [summary for summary in result if summary is not None and summary["rule_id"] == rule_id]
        return summary
    return result


def wait_for_runs(services: Services, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float,
                  what: str, sql: str = "SELECT * FROM rule_runs", params: Any = None) -> list[dict[str, Any]]:
    """Polls rule_runs (a query of the caller's) until `predicate(rows)`; returns those rows."""
    found: list[dict[str, Any]] = []

    def check() -> bool:
        found[:] = services.pg(sql, params)
        return predicate(found)

    try:
        wait_until(check, timeout, what, interval=0.5)
    except AssertionError as error:
        raise AssertionError(f"{error}; last rows: {found}\n{services.logs_text()}") from None
    return found


LIFETIME_SPEND = {"source": "campaign_metrics_daily", "window": "lifetime", "schedule": "* * * * *"}


def spend_rule(threshold: float, schedule: str = "* * * * *") -> dict[str, Any]:
    """A rule over every date so far: matches the campaigns whose total spend is over `threshold`."""
    return {**LIFETIME_SPEND, "schedule": schedule, "logic": {">": [{"var": "spend"}, threshold]}}


NO_COOLDOWN = {"severity": "critical", "cooldown_minutes": 0}


def three_campaigns(data: RunEnv, org_id: int) -> None:
    """c1, c2, c3 with total spends 10, 20 and 30, dated three days ago (inside any `lifetime` window)."""
    day = (utc_now() - timedelta(days=3)).date().isoformat()
    data.metrics(*({"org_id": org_id, "date": day, "campaign_id": f"c{i}", "spend": str(10 * i),
                    "impressions": 1000 * i, "clicks": i} for i in (1, 2, 3)))


@contextmanager
def services_on(pg_url: str, ch_url: str, redis_db: int, logs: Path, time_limit: int = 10,
                env: dict[str, str] | None = None, redis_server: str | None = None) -> Iterator[Services]:
    """Services on the given databases and Redis number (flushed before and after); every process killed after.

    `env` adds settings (SMTP_URL, NOTIFY_ALLOWED_HOSTS, ...) to every process started; `redis_server` (a
    `redis://host:port` URL) replaces the shared Redis server."""
    logs.mkdir(parents=True, exist_ok=True)
    services = Services(pg_url, ch_url, redis_db, logs, time_limit, dict(env or {}),
                        redis_server=redis_server or REDIS_SERVER)
    services.flush_redis()
    try:
        yield services
    finally:
        services.close()


def pending_requests(port: int) -> list[int]:
    """The unread byte counts of the established connections to a local server on `port` that have any.

    With the server SIGSTOPped, each is a request that a client has sent and the server has not read yet.
    """
    counts = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            unread = int(fields[4].split(":")[1], 16)
            if local_port == port and fields[3] == "01" and unread:
                counts.append(unread)
    return sorted(counts)


def wait_for_pending_requests(port: int, count: int, timeout: float = 10) -> None:
    """Waits until `count` requests sit unread at the (stopped) server on `port`, and their bytes stop growing."""
    last: list[list[int]] = [[]]

    def settled() -> bool:
        now = pending_requests(port)
        done = len(now) >= count and now == last[0]
        last[0] = now
        return done

    wait_until(settled, timeout, f"{count} requests waiting at port {port}", interval=0.2)


@contextmanager
def own_clickhouse(tmp_path: Path, database: str) -> Iterator[tuple[dict[str, Any], int, str]]:
    """A migrated clickhouse-local of the test's own: ({"process": the current server}, its port, the
    CLICKHOUSE_URL of `database`). A test may kill and replace server["process"]; the last one is stopped."""
    port = free_port()
    path = tmp_path / "clickhouse"
    log = open(tmp_path / "clickhouse.log", "ab")
    server = {"process": start_clickhouse_local(path, port, log=log), "path": path, "log": log}
    try:
        ch_url = f"http://default@127.0.0.1:{port}/{database}"
        ensure_clickhouse_database(ch_url)
        migrate_clickhouse(ch_url)
        yield server, port, ch_url
    finally:
        process = server["process"]
        try:
            os.kill(process.pid, signal.SIGCONT)  # never leave the server stopped
        except ProcessLookupError:
            pass
        stop_process(process)
        log.close()


@dataclass
class RedisServer:
    """A redis-server of the test's own on a free port, with nothing persisted: a restart starts empty."""

    port: int
    directory: Path
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        with open(self.directory / "redis-server.log", "ab") as log:
            self.process = subprocess.Popen(
                [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", str(self.directory)], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)

        def answers() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"redis-server exited with {self.process.returncode}")
            try:
                with redis.Redis(port=self.port, socket_connect_timeout=1) as client:
                    return client.ping()
            except redis.ConnectionError:
                return False

        wait_until(answers, 30, f"redis-server on port {self.port}", interval=0.1)

    def stop(self) -> None:
        """SIGTERM (nothing is saved: --save ''), waits for the process to end."""
        if self.process is not None:
            stop_process(self.process)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@contextmanager
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(free_port(), tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()
