"""Faults of the servers around the service, with real processes: Redis down for 30 s, PostgreSQL restarted and its
connections terminated in the middle of runs, ClickHouse killed with an INSERT ... SELECT in flight and restarted,
a beat stopped for longer than a run's lease beside a second beat.

Every worker and beat is a real `python -m celery -A worker.app ...` process (celery_support). A test that stops a
server starts a throwaway one of its own on a free port from the binaries of this machine and never touches the
shared servers: a redis-server (test 1), a PostgreSQL cluster made with initdb and driven with pg_ctl (test 2; as
the `postgres` OS user when the tests run as root, since initdb refuses root), a clickhouse-local (tests 2 and 3).
Runs are held at chosen points deterministically, as test_worker_beat does: an uncommitted rule_runs row for
(rule, T) holds a claim back, a SIGSTOPped clickhouse-local holds a run in its first ClickHouse statement (the
INSERT ... SELECT of rule_evaluations), a row lock on a run holds its next transition back.

Each test ends with `assert_every_run_exact`: one rule_runs row per (rule, T), succeeded with 3 evaluations, 2
alerts and one in-app delivery (the organization's owner), or failed with its error and no stage written twice;
no rule_evaluations, alert_events or deliveries without their run.

Redis: test 1 a redis-server of its own; the others database 5 of the shared one (flushed before and after).
Process logs are under each test's tmp_path (logs/), with `evidence.txt` saying what each fault led to.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from storage.migrations import ensure_postgres_database, migrate_postgres
from tests.conftest import free_port, start_clickhouse_local, stop_process
from tests.integration.celery_support import (NO_COOLDOWN, RedisServer, Services, iso, minute_floor, naive, own_clickhouse,
                                              own_redis, services_on, spend_rule, three_campaigns, utc_now,
                                              wait_for_pending_requests, wait_for_runs, wait_until)
from tests.integration.runs_support import RunEnv, ch_text
from tests.integration.test_worker_beat import _blocks_someone, _gate, _pool_child, _run_row, _state_is

SHARED_REDIS_DB = 5
# A schedule that never comes due during a test: beat runs for its sweeper only, the test sends the runs itself.
NEVER_DURING_THE_TEST = "0 0 1 1 *"
TIME_LIMIT = 10  # RUN_TIME_LIMIT_SECONDS: a 70 s lease


# --- evidence and checks --------------------------------------------------------------------------------------------


class Evidence:
    """What a test saw, line by line, kept in tmp_path/evidence.txt (and printed: pytest -s shows it)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, text: str) -> None:
        line = f"{utc_now():%H:%M:%S} {text}"
        print(line)
        with open(self.path, "a") as out:
            out.write(line + "\n")


def owner_of(data: RunEnv, org: int) -> int:
    """A user who is the organization's owner: every alerted entity notifies them in-app (one delivery per run)."""
    user = data.user()
    data.member(user, org, "owner")
    return user


def two_rules_every_minute(data: RunEnv) -> list[str]:
    """An organization with three campaigns and an owner, and two rules due every minute that alert on two."""
    org = data.org(timezone="UTC", modules=["alerts"])
    three_campaigns(data, org)
    owner_of(data, org)
    return [data.rule(org, spend_rule(15), NO_COOLDOWN, name=f"every minute {n}") for n in (1, 2)]


def runs_by_key(services: Services) -> dict[tuple[str, datetime], list[dict[str, Any]]]:
    """The non-dry rule_runs rows by (rule id, T as an aware UTC time)."""
    grouped: dict[tuple[str, datetime], list[dict[str, Any]]] = {}
    for row in services.pg("SELECT * FROM rule_runs WHERE NOT dry_run ORDER BY scheduled_for, rule_id"):
        grouped.setdefault((str(row["rule_id"]), row["scheduled_for"].replace(tzinfo=UTC)), []).append(row)
    return grouped


def assert_every_run_exact(services: Services) -> dict[tuple[str, datetime], dict[str, Any]]:
    """Every (rule, T) has one run, none still running; a succeeded run has exactly its 3 evaluations, 2 alerts and
    one in-app delivery; a failed one has its error and each stage either not written or written once; nothing in
    ClickHouse or deliveries belongs to no run. Returns the runs by (rule, T)."""
    data = services.data()
    grouped = runs_by_key(services)
    doubled = {key: [str(r["id"]) for r in rows] for key, rows in grouped.items() if len(rows) != 1}
    assert not doubled, f"(rule, T) with more than one run: {doubled}"
    evaluations = {(r["rule"], r["at"]): (int(r["n"]), int(r["entities"]), int(r["matched"])) for r in data.ch_rows(
        "SELECT toString(rule_id) AS rule, toString(eval_time, 'UTC') AS at, count() AS n, "
        "uniqExact(entity_id) AS entities, sum(matched) AS matched FROM rule_evaluations GROUP BY rule, at")}
    alerts = {(r["rule"], r["at"]): (int(r["n"]), int(r["entities"])) for r in data.ch_rows(
        "SELECT toString(rule_id) AS rule, toString(alert_time, 'UTC') AS at, count() AS n, "
        "uniqExact(entity_id) AS entities FROM alert_events GROUP BY rule, at")}
    deliveries: dict[str, list[tuple[str, int, list[str]]]] = {}
    for row in services.pg("SELECT run_id::text AS run, channel, recipient, count(*) AS n, "
                           "array_agg(status ORDER BY id) AS statuses FROM deliveries GROUP BY 1, 2, 3"):
        deliveries.setdefault(row["run"], []).append((row["channel"], row["n"], row["statuses"]))
    notifications = {row["run"]: row["n"] for row in services.pg(
        "SELECT run_id::text AS run, count(*) AS n FROM notifications GROUP BY 1")}

    keys = {(rule, ch_text(at)) for rule, at in grouped}
    assert set(evaluations) <= keys, f"rule_evaluations without a run: {set(evaluations) - keys}"
    assert set(alerts) <= keys, f"alert_events without a run: {set(alerts) - keys}"
    run_ids = {str(rows[0]["id"]) for rows in grouped.values()}
    assert set(deliveries) <= run_ids and set(notifications) <= run_ids

    runs = {}
    for (rule, at), [row] in grouped.items():
        key, run_id = (rule, ch_text(at)), str(row["id"])
        runs[(rule, at)] = row
        where = f"run {run_id} of rule {rule} at {iso(at)}: {row['status']}, {row['state']}, {row['error']}"
        if row["status"] == "succeeded":
            assert (row["state"], row["entities"], row["matched"], row["alerts"], row["error"]) == (
                "succeeded", 3, 2, 2, None), where
            assert evaluations.get(key) == (3, 3, 2), (where, evaluations.get(key))
            assert alerts.get(key) == (2, 2), (where, alerts.get(key))
            assert deliveries.get(run_id) == [("in_app", 1, ["sent"])], (where, deliveries.get(run_id))
            assert notifications.get(run_id) == 1, where
        else:
            assert row["status"] == "failed" and row["state"] == "failed" and row["error"], where
            assert evaluations.get(key) in (None, (3, 3, 2)), (where, evaluations.get(key))
            assert alerts.get(key) in (None, (2, 2)), (where, alerts.get(key))
            # deliveries and notifications are written in the transaction of the 'alerted' transition
            alerted = "alerted" in [entry["state"] for entry in row["transitions"]]
            assert deliveries.get(run_id) == ([("in_app", 1, ["sent"])] if alerted else None), where
            assert notifications.get(run_id) == (1 if alerted else None), where
    return runs


def transition_details(row: dict[str, Any]) -> list[str]:
    return [f"{entry['state']}: {entry['detail']}" for entry in row["transitions"]]


def log_lines(text: str, *needles: str) -> list[str]:
    """The lines of a log containing every one of `needles`."""
    return [line.strip() for line in text.splitlines() if all(needle in line for needle in needles)]


def sleep_until(moment: datetime) -> None:
    time.sleep(max(0.0, (moment - utc_now()).total_seconds()))


def wait_all_finished(services: Services, timeout: float, what: str, sql: str = "SELECT * FROM rule_runs",
                      params: Any = None, count: int = 1) -> list[dict[str, Any]]:
    return wait_for_runs(services, lambda rows: len(rows) >= count and all(r["status"] != "running" for r in rows),
                         timeout, what, sql, params)


def runs_at(services: Services, rules: list[str], at: datetime, timeout: float) -> list[dict[str, Any]]:
    """Waits until every rule of `rules` has a finished run as of `at`; returns them."""
    return wait_all_finished(services, timeout, f"the runs at {iso(at)}",
                             "SELECT * FROM rule_runs WHERE scheduled_for = %s AND rule_id::text = ANY(%s)",
                             (naive(at), rules), count=len(rules))


def assert_every_minute(runs: dict[tuple[str, datetime], dict], rules: list[str], last: datetime) -> None:
    """Each rule has a run for every minute from its first one through `last`: no fire time is missing."""
    for rule in rules:
        times = sorted(at for r, at in runs if r == rule)
        assert times and times[-1] >= last, (rule, [iso(t) for t in times])
        expected = [times[0] + timedelta(minutes=n) for n in range(int((times[-1] - times[0]).total_seconds() // 60) + 1)]
        assert times == expected, f"rule {rule}: missing fire times {[iso(t) for t in set(expected) - set(times)]}"


def hold_in_clickhouse(services: Services, server: subprocess.Popen, port: int, rule: str, at: datetime,
                       gate: psycopg.Connection) -> None:
    """With the run of (rule, at) waiting on `gate` (an uncommitted rule_runs row), SIGSTOPs the ClickHouse server
    and lets the claim through: the run blocks in its INSERT ... SELECT of rule_evaluations, unread by the server."""
    os.kill(server.pid, signal.SIGSTOP)
    gate.rollback()
    gate.close()
    wait_until(lambda: _state_is(services, rule, at, "compiled"), 10, f"the run of {rule} to be compiled",
               interval=0.05)
    wait_for_pending_requests(port, 1)


def send_held_at_claim(services: Services, worker, rule: str, org: int, at: datetime):
    """Sends rules.evaluate(rule, at) behind a gate: its claim waits (a PostgreSQL statement in flight, inside the
    run's transaction) until the gate is rolled back or dies. Returns (the task, the gate)."""
    gate = _gate(services, rule, org, at)
    task = services.send("rules.evaluate", rule, scheduled_for=iso(at))
    _pool_child(services, task.id, worker)  # its runner and ClickHouse client are made before the claim
    wait_until(lambda: _blocks_someone(services, gate), 10, f"the claim of {rule} to wait", interval=0.05)
    return task, gate


def close_quietly(connection: psycopg.Connection) -> None:
    try:
        connection.close()
    except psycopg.Error:
        pass


# --- servers of the test's own ---------------------------------------------------------------------------------------


def postgres_binaries() -> Path:
    """The bin directory of the newest PostgreSQL installed under /usr/lib/postgresql, or the one on PATH."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    if found:
        return found[-1].parent
    on_path = shutil.which("initdb")
    if on_path is None:
        pytest.skip("no PostgreSQL server binaries (initdb) on this machine")
    return Path(on_path).parent


@dataclass
class PostgresCluster:
    """A PostgreSQL cluster of the test's own (trust authentication, superuser `postgres`) on a free port.

    initdb refuses to run as root: when the tests run as root, initdb and pg_ctl run as the `postgres` OS user,
    with the cluster in a directory under /tmp that this user owns (the test's tmp_path is closed to it); the
    server's log is copied to tmp_path at the end. pg_ctl's own output goes to tmp_path/pg_ctl.log.
    """

    binaries: Path
    root: Path
    port: int
    ctl_log: Path
    os_user: str | None

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def server_log(self) -> Path:
        return self.root / "server.log"

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *argv: str, timeout: float = 120, check: bool = True) -> int:
        options: dict[str, Any] = {}
        if self.os_user:
            options.update(user=self.os_user, group=pwd.getpwnam(self.os_user).pw_gid, extra_groups=[])
        with open(self.ctl_log, "ab") as log:
            log.write(f"$ {' '.join(argv)}\n".encode())
            log.flush()
            # the postmaster that pg_ctl starts inherits these descriptors: never a pipe, or run() waits for it
            result = subprocess.run([str(self.binaries / argv[0]), *argv[1:]], cwd=self.root, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, timeout=timeout, **options)
        if check and result.returncode != 0:
            raise AssertionError(f"{argv[0]} exited with {result.returncode}: {self.ctl_log.read_text()[-2000:]}")
        return result.returncode

    def init_and_start(self) -> None:
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C",
                  "--no-sync")
        self.start()

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.server_log), "-w", "-t", "60", "-o",
                  f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                  "-c full_page_writes=off -c synchronous_commit=off", "start")

    def restart_fast(self) -> None:
        """`pg_ctl restart -m fast`: every session is terminated, the server shut down and started again."""
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.server_log), "-w", "-t", "60", "-m", "fast",
                  "restart")

    def stop_fast(self) -> None:
        """`pg_ctl stop -m fast`: every session is terminated and the server shut down."""
        self._run("pg_ctl", "-D", str(self.data), "-w", "-t", "60", "-m", "fast", "stop")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-w", "-t", "60", "-m", "immediate", "stop", check=False)


@contextmanager
def own_postgres(tmp_path: Path) -> Iterator[PostgresCluster]:
    os_user = None
    if os.geteuid() == 0:
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` OS user to run initdb as")
        os_user = account.pw_name
    root = Path(tempfile.mkdtemp(prefix="rules-pg-faults-"))
    if os_user:
        os.chown(root, account.pw_uid, account.pw_gid)
    os.chmod(root, 0o700)
    cluster = PostgresCluster(postgres_binaries(), root, free_port(), tmp_path / "pg_ctl.log", os_user)
    try:
        cluster.init_and_start()
        yield cluster
    finally:
        try:
            cluster.stop()
        finally:
            if cluster.server_log.exists():
                shutil.copyfile(cluster.server_log, tmp_path / "postgres-server.log")
            shutil.rmtree(root, ignore_errors=True)


# --- 1. Redis down for 30 seconds ------------------------------------------------------------------------------------

OUTAGE_SECONDS = 30
OUTAGE_BEFORE_FIRE_TIME = 10  # Redis goes down 10 s before a fire time F and comes back 20 s after it


@pytest.mark.slow
def test_redis_down_for_30_seconds(pg_url, migrated_ch_url, tmp_path):
    """Redis (the broker and result backend, a redis-server of the test's own) goes down for 30 s across a fire
    time F and comes back empty on the same port, with a worker and a beat running and two rules due every minute.

    Proves: both processes live through it and reconnect by themselves; beat's send of F fails while Redis is down
    and, as README promises (a fire time is sent once, the latest at or before now; nothing is marked as sent when
    the broker is down), F is sent once Redis is back and runs once; the next fire time runs once; every fire time
    from the first to F + 1 minute has exactly one succeeded run per rule with its exact rows.
    """
    note = Evidence(tmp_path / "evidence.txt")
    with own_redis(tmp_path) as broker:
        with services_on(pg_url, migrated_ch_url, 0, tmp_path / "logs", time_limit=TIME_LIMIT,
                         redis_server=broker.url) as services:
            try:
                _redis_down(services, broker, note)
            finally:
                if not broker.running():  # services_on flushes Redis on the way out
                    broker.start()


def _redis_down(services: Services, broker: RedisServer, note: Evidence) -> None:
    data = services.data()
    rules = two_rules_every_minute(data)
    worker = services.start_worker()
    beat = services.start_beat()
    beat.wait_for_log("sent rule", timeout=60)
    wait_all_finished(services, 60, "the first runs", count=len(rules))

    fire = minute_floor(utc_now() + timedelta(seconds=OUTAGE_BEFORE_FIRE_TIME + 3)) + timedelta(minutes=1)
    sleep_until(fire - timedelta(seconds=OUTAGE_BEFORE_FIRE_TIME))
    assert not services.pg("SELECT id FROM rule_runs WHERE status = 'running'"), "a run was in progress"
    broker.stop()
    down_at = utc_now()
    note(f"redis-server stopped (SIGTERM) at {down_at:%H:%M:%S}; fire time F = {iso(fire)}")
    sleep_until(down_at + timedelta(seconds=OUTAGE_SECONDS))
    assert worker.alive() and beat.alive(), services.logs_text()
    broker.start()
    up_at = utc_now()
    note(f"redis-server started again, empty, on port {broker.port} at {up_at:%H:%M:%S} "
         f"({(up_at - down_at).total_seconds():.1f} s down); worker and beat alive")

    # F (during the outage) is sent once Redis is back, and runs once; F + 1 minute (after it) runs once.
    for at in (fire, fire + timedelta(minutes=1)):
        rows = runs_at(services, rules, at, timeout=max(45.0, (at - utc_now()).total_seconds() + 60))
        note(f"runs at {iso(at)}: " + ", ".join(f"{r['status']} (started {r['started_at']:%H:%M:%S}, attempts "
                                                  f"{r['attempts']})" for r in rows))
    assert worker.alive() and beat.alive()

    beat_log, worker_log = beat.log(), worker.log()
    failed_sends = log_lines(beat_log, "could not send rule")
    note(f"beat: {len(failed_sends)} failed sends while Redis was down, e.g. {failed_sends[:1]}")
    note("worker: " + " | ".join(
        (log_lines(worker_log, "Connection to broker lost")[:1] + log_lines(worker_log, "Cannot connect")[:1]
         + log_lines(worker_log, "Connected to redis")[-1:])))
    assert [line for line in failed_sends if iso(fire) in line], "beat never tried to send F while Redis was down"
    for rule in rules:
        # beat sent F once, after Redis was back (the failed tries mark nothing as sent), and F + 1 minute once
        assert len(log_lines(beat_log, f"sent rule {rule} for {iso(fire)}")) == 1, beat_log[-3000:]
        assert len(log_lines(beat_log, f"sent rule {rule} for {iso(fire + timedelta(minutes=1))}")) == 1
    assert len(log_lines(worker_log, "Connected to redis://")) >= 2, "the worker never reconnected"

    runs = assert_every_run_exact(services)
    assert {row["status"] for row in runs.values()} == {"succeeded"}
    assert {row["attempts"] for row in runs.values()} == {1}
    assert_every_minute(runs, rules, fire + timedelta(minutes=1))
    note(f"{len(runs)} runs, one per (rule, T), all succeeded with 3 evaluations, 2 alerts, 1 in-app delivery")


# --- 2. PostgreSQL restarted, and its connections terminated, in the middle of runs -----------------------------------


@pytest.mark.slow
def test_postgres_restarted_and_connections_terminated_mid_run(tmp_path):
    """A PostgreSQL cluster of the test's own under a worker and a beat (its sweeper), five rules, each run as of a
    fixed past minute by a task of the test's own, held at a chosen point when the fault comes:

    (a) `pg_ctl restart -m fast` while run A is held in its ClickHouse statement (its pooled connections die
    under it) and run B in its claim (an INSERT in flight, inside its transaction, whose session is terminated);
    (b) `pg_terminate_backend` of every other session of the database while run C is held in the UPDATE of its
    'evaluated' transition (its rule_evaluations already written) and run D in its claim;
    (c) `pg_ctl stop -m fast`, PostgreSQL down for DOWN_SECONDS, `pg_ctl start`, while run E, held in its ClickHouse
    statement until PostgreSQL is down, goes on to its next transition and finds PostgreSQL gone.
    Proves: each run either finishes (a retried claim, a pool that replaces dead connections, a take-over once its
    lease expired) or ends `failed` with its error; none is left `running` past its lease (beat's sweeper sends it
    again); afterwards every rule runs normally; nothing is missing or doubled for any (rule, T).
    """
    note = Evidence(tmp_path / "evidence.txt")
    with own_postgres(tmp_path) as cluster:
        pg_url = cluster.url("rules_faults")
        ensure_postgres_database(pg_url)
        migrate_postgres(pg_url)
        note(f"own PostgreSQL cluster ({cluster.binaries}) on port {cluster.port}, as OS user "
             f"{cluster.os_user or 'of the tests'}; migrated")
        with own_clickhouse(tmp_path, "rules_pg_faults") as (server, port, ch_url):
            with services_on(pg_url, ch_url, SHARED_REDIS_DB, tmp_path / "logs", time_limit=TIME_LIMIT) as services:
                _postgres_faults(services, cluster, server["process"], port, note)


DOWN_SECONDS = 25  # longer than the pool's 10 s wait for a connection plus the run's 10 s soft time limit


def _postgres_faults(services: Services, cluster: PostgresCluster, server: subprocess.Popen, port: int,
                     note: Evidence) -> None:
    data = services.data()
    org = data.org(timezone="UTC", modules=["alerts"])
    three_campaigns(data, org)
    owner_of(data, org)
    names = ("A, in ClickHouse at the restart", "B, in its claim at the restart",
             "C, in its transition at the terminate", "D, in its claim at the terminate",
             "E, in ClickHouse when PostgreSQL went down")
    a, b, c, d, e = rules = [data.rule(org, spend_rule(15, NEVER_DURING_THE_TEST), NO_COOLDOWN, name=n)
                             for n in names]
    worker = services.start_worker()
    beat = services.start_beat()
    beat.wait_for_log("beat: Starting...", timeout=60)
    now = minute_floor(utc_now())
    at_restart, at_terminate, at_down, at_after = (now - timedelta(minutes=n) for n in (4, 3, 2, 1))
    fire_times = {a: at_restart, b: at_restart, c: at_terminate, d: at_terminate, e: at_down}
    tasks: dict[str, Any] = {}

    # (a) pg_ctl restart -m fast: A in its INSERT ... SELECT (ClickHouse stopped), B's claim waiting on a gate.
    tasks[a], gate_a = send_held_at_claim(services, worker, a, org, at_restart)
    tasks[b], gate_b = send_held_at_claim(services, worker, b, org, at_restart)
    try:
        hold_in_clickhouse(services, server, port, a, at_restart, gate_a)
        started = time.monotonic()
        cluster.restart_fast()
        note(f"(a) pg_ctl restart -m fast took {time.monotonic() - started:.1f} s, with A compiled and in its "
             "ClickHouse statement and B's claim waiting")
    finally:
        os.kill(server.pid, signal.SIGCONT)
        close_quietly(gate_b)
    for rule in (a, b):
        tasks[rule].get(timeout=services.lease_seconds + 150, propagate=False)

    # (b) pg_terminate_backend: C held in its 'evaluated' transition by a row lock, D's claim waiting on a gate.
    tasks[c], gate_c = send_held_at_claim(services, worker, c, org, at_terminate)
    tasks[d], gate_d = send_held_at_claim(services, worker, d, org, at_terminate)
    lock = None
    try:
        hold_in_clickhouse(services, server, port, c, at_terminate, gate_c)
        lock = psycopg.connect(services.pg_url)
        lock.execute("SELECT id FROM rule_runs WHERE id = %s FOR UPDATE", (_run_row(services, c, at_terminate)["id"],))
        os.kill(server.pid, signal.SIGCONT)
        wait_until(lambda: _blocks_someone(services, lock), 10, "C's 'evaluated' transition to wait", interval=0.05)
        assert len(data.evaluations(c, at_terminate)) == 3
        terminated = services.pg(
            "SELECT state, left(regexp_replace(query, '\\s+', ' ', 'g'), 50) AS query, pg_terminate_backend(pid) AS done "
            "FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", ("rules_faults",))
        note(f"(b) pg_terminate_backend: {sum(r['done'] for r in terminated)} sessions terminated: "
             + "; ".join(f"{r['state']} {r['query']!r}" for r in terminated))
        assert sum(r["done"] for r in terminated) >= 4  # C's, D's, the gate's and the lock's, at least
    finally:
        os.kill(server.pid, signal.SIGCONT)
        for connection in (lock, gate_d):
            if connection is not None:
                close_quietly(connection)
    for rule in (c, d):
        tasks[rule].get(timeout=services.lease_seconds + 150, propagate=False)

    # (c) PostgreSQL down for DOWN_SECONDS: E, released from ClickHouse, needs it for its 'evaluated' transition.
    tasks[e], gate_e = send_held_at_claim(services, worker, e, org, at_down)
    down = False
    try:
        hold_in_clickhouse(services, server, port, e, at_down, gate_e)
        cluster.stop_fast()
        down, down_at = True, time.monotonic()
        note("(c) pg_ctl stop -m fast, with E compiled and in its ClickHouse statement; ClickHouse resumed")
        os.kill(server.pid, signal.SIGCONT)
        time.sleep(max(0.0, DOWN_SECONDS - (time.monotonic() - down_at)))
    finally:
        os.kill(server.pid, signal.SIGCONT)
        if down:
            cluster.start()
    note(f"(c) pg_ctl start after {time.monotonic() - down_at:.0f} s down; E: "
         f"{ {k: v for k, v in _run_row(services, e, at_down).items() if k in ('status', 'state', 'attempts', 'error')} }, "
         f"{len(data.evaluations(e, at_down))} evaluations written")

    # Nothing stays running past its lease (beat's sweeper sends it again); then every rule runs normally.
    wait_all_finished(services, services.lease_seconds + 90, "no run left running", count=len(rules))
    results = {rule: task.get(timeout=services.lease_seconds + 150, propagate=False) for rule, task in tasks.items()}
    after = {rule: services.send("rules.evaluate", rule, scheduled_for=iso(at_after)) for rule in rules}
    after_results = {rule: task.get(timeout=90) for rule, task in after.items()}
    assert {r["status"] for r in after_results.values()} == {"succeeded"}, after_results

    runs = assert_every_run_exact(services)
    worker_log, beat_log = worker.log(), beat.log()
    for name, rule in zip(names, rules):
        row, result = runs[(rule, fire_times[rule])], results[rule]
        outcome = repr(result) if isinstance(result, BaseException) else (result or {}).get("status")
        note(f"run {name}: {row['status']}, attempts {row['attempts']}, error {row['error']!r}; task result "
             f"{outcome}; transitions "
             f"{transition_details(row)}; task log: {log_lines(worker_log, tasks[rule].id)}")
        if isinstance(result, dict):
            assert (result["run_id"], result["status"]) == (str(row["id"]), row["status"])
    note(f"sweeper re-sends: {log_lines(beat_log, 'lost its process')}; beat warnings: "
         f"{log_lines(beat_log, 'WARNING')}")
    # The run held in ClickHouse never saw PostgreSQL go: its pool replaced the dead connections.
    assert runs[(a, at_restart)]["status"] == "succeeded"
    # A claim whose session died wrote nothing; its task was retried and claimed once.
    assert runs[(b, at_restart)]["status"] == runs[(d, at_terminate)]["status"] == "succeeded"
    for rule in (c, e):
        row = runs[(rule, fire_times[rule])]
        assert row["status"] == "succeeded" or row["error"], row
    for rule in rules:
        assert runs[(rule, at_after)]["status"] == "succeeded"


# --- 3. ClickHouse killed mid-insert and restarted -------------------------------------------------------------------


@pytest.mark.slow
def test_clickhouse_killed_mid_insert_and_restarted(pg_url, tmp_path):
    """The test's own clickhouse-local is SIGSTOPped with a run's INSERT ... SELECT of rule_evaluations sent and
    unread, SIGKILLed, and started again on the same port and data directory.

    Proves: the run either ends `failed` with an error naming ClickHouse, having written nothing (the INSERT never
    ran), and a second request for the same (rule, T) returns that run and writes nothing; or it is retried (or
    taken over after its lease, the sweeper sending it again) and leaves exactly 3 evaluations and 2 alerts. The
    restarted server keeps its data and serves the next runs.
    """
    note = Evidence(tmp_path / "evidence.txt")
    with own_clickhouse(tmp_path, "rules_ch_faults") as (server, port, ch_url):
        with services_on(pg_url, ch_url, SHARED_REDIS_DB, tmp_path / "logs", time_limit=TIME_LIMIT) as services:
            _clickhouse_killed(services, server, port, note)


def _clickhouse_killed(services: Services, server: dict[str, Any], port: int, note: Evidence) -> None:
    data = services.data()
    org = data.org(timezone="UTC", modules=["alerts"])
    three_campaigns(data, org)
    owner_of(data, org)
    rule = data.rule(org, spend_rule(15, NEVER_DURING_THE_TEST), NO_COOLDOWN, name="killed mid-insert")
    worker = services.start_worker()
    beat = services.start_beat()
    at = minute_floor(utc_now()) - timedelta(minutes=2)

    task, gate = send_held_at_claim(services, worker, rule, org, at)
    process = server["process"]
    hold_in_clickhouse(services, process, port, rule, at, gate)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=15)
    killed_at = utc_now()
    note(f"clickhouse-local SIGKILLed at {killed_at:%H:%M:%S} with the INSERT ... SELECT unread")

    # The run learns of it at once: it ends (failed), or its task is retried; it is not left hanging.
    def reacted() -> bool:
        row = _run_row(services, rule, at)
        return row["status"] != "running" or bool(log_lines(worker.log(), "retry", task.id))

    wait_until(reacted, 30, "the run to notice the killed server")
    right_after = _run_row(services, rule, at)
    note(f"right after the kill: {right_after['status']}, {right_after['state']}, error {right_after['error']!r}")

    started = time.monotonic()
    server["process"] = start_clickhouse_local(server["path"], port, log=server["log"])
    note(f"clickhouse-local started again on port {port}, same data directory, in {time.monotonic() - started:.1f} s")

    row = runs_at(services, [rule], at, services.lease_seconds + 90)[0]
    result = task.get(timeout=services.lease_seconds + 150, propagate=False)
    note(f"the run: {row['status']}, attempts {row['attempts']}, error {row['error']!r}, transitions "
         f"{transition_details(row)}; task result {result if isinstance(result, BaseException) else result['status']}")
    evaluations, alerts = data.evaluations(rule, at), data.alerts(rule, at)
    if row["status"] == "failed":
        assert "ClickHouse at 127.0.0.1" in row["error"], row["error"]
        assert row["state"] == "failed" and (evaluations, alerts) == ([], [])
        # A second request for the same (rule, T) gets that run and writes nothing.
        again = services.send("rules.evaluate", rule, scheduled_for=iso(at)).get(timeout=60)
        assert (again["run_id"], again["status"]) == (str(row["id"]), "failed"), again
        assert (len(data.evaluations(rule, at)), len(data.alerts(rule, at))) == (0, 0)
        note(f"a second request for (rule, T) returned run {again['run_id']} ({again['status']}), wrote nothing")
    else:
        assert row["status"] == "succeeded"
        assert [e["entity_id"] for e in evaluations] == ["c1", "c2", "c3"]
        assert [a["entity_id"] for a in alerts] == ["c2", "c3"]

    # The restarted server has kept its data (the metrics) and serves the next run of the rule.
    later = at + timedelta(minutes=1)
    summary = services.send("rules.evaluate", rule, scheduled_for=iso(later)).get(timeout=90)
    assert (summary["status"], summary["entities"], summary["matched"], summary["alerts"]) == ("succeeded", 3, 2, 2)
    runs = assert_every_run_exact(services)
    assert len(runs) == 2
    note(f"worker log: {log_lines(worker.log(), 'ERROR')[:3] + log_lines(worker.log(), 'retry')[:3]}; "
         f"sweeper: {log_lines(beat.log(), 'lost its process')}")


# --- 4. a beat stopped past a run's lease beside a second beat --------------------------------------------------------


@pytest.mark.slow
def test_a_beat_stopped_past_its_lease_beside_a_second_beat(pg_url, migrated_ch_url, tmp_path):
    """Two beats and a worker, two rules due every minute; one beat is SIGSTOPped for longer than a run's lease
    (70 s) across two fire times F1 and F2, then SIGCONTed.

    Proves: the other beat kept sending, so F1 and F2 have their runs; the resumed beat sends its latest fire time
    F2 again (and not F1), and that duplicate gets the existing run's summary and writes nothing; every fire time
    from the first through F2 has exactly one succeeded run per rule, none missing, with its exact rows.
    """
    note = Evidence(tmp_path / "evidence.txt")
    with services_on(pg_url, migrated_ch_url, SHARED_REDIS_DB, tmp_path / "logs", time_limit=TIME_LIMIT) as services:
        data = services.data()
        rules = two_rules_every_minute(data)
        worker = services.start_worker()
        stopped, steady = services.start_beat("beat-stopped"), services.start_beat("beat-steady")
        for beat in (stopped, steady):
            beat.wait_for_log("sent rule", timeout=60)
        wait_all_finished(services, 60, "the first runs", count=len(rules))

        stopped.signal_group(signal.SIGSTOP)
        try:
            stopped_at = utc_now()
            f1 = minute_floor(stopped_at + timedelta(seconds=3)) + timedelta(minutes=1)
            f2 = f1 + timedelta(minutes=1)
            note(f"beat-stopped SIGSTOPped; F1 = {iso(f1)}, F2 = {iso(f2)}")
            for at in (f1, f2):
                runs_at(services, rules, at, timeout=(at - utc_now()).total_seconds() + 45)
            sleep_until(max(stopped_at + timedelta(seconds=services.lease_seconds + 5), f2 + timedelta(seconds=5)))
        finally:
            stopped.signal_group(signal.SIGCONT)
        resumed_at = utc_now()
        note(f"beat-stopped SIGCONTed after {(resumed_at - stopped_at).total_seconds():.0f} s "
             f"(lease {services.lease_seconds} s)")
        assert (resumed_at - stopped_at).total_seconds() > services.lease_seconds

        # The resumed beat sends its latest fire time, F2, again; each duplicate returns the run of (rule, F2).
        for rule in rules:
            stopped.wait_for_log(f"sent rule {rule} for {iso(f2)}", timeout=30)
        f2_runs = {str(r["rule_id"]): str(r["id"]) for r in runs_at(services, rules, f2, timeout=5)}

        def duplicates_answered() -> bool:
            log = worker.log()
            return all(len(log_lines(log, "succeeded in", f"'run_id': '{f2_runs[rule]}'")) >= 2 for rule in rules)

        wait_until(duplicates_answered, 30, "the worker to answer the duplicate sends of F2")
        assert stopped.alive() and steady.alive()

        stopped_log, steady_log = stopped.log(), steady.log()
        for rule in rules:
            assert log_lines(stopped_log, f"sent rule {rule} for {iso(f1)}") == []
            assert len(log_lines(stopped_log, f"sent rule {rule} for {iso(f2)}")) == 1
            for at in (f1, f2):
                assert len(log_lines(steady_log, f"sent rule {rule} for {iso(at)}")) == 1
        note("beat-stopped sent: " + "; ".join(line.split("sent rule ", 1)[1]
                                               for line in log_lines(stopped_log, "sent rule")))
        runs = assert_every_run_exact(services)
        assert {row["status"] for row in runs.values()} == {"succeeded"}
        assert {row["attempts"] for row in runs.values()} == {1}
        assert_every_minute(runs, rules, f2)
        note(f"{len(runs)} runs, one per (rule, T) through F2, all succeeded, attempts 1; "
             f"sweeper re-sends: {log_lines(stopped_log + steady_log, 'lost its process')}")
