"""`rulesctl up` (the README's Quick start) as a real foreground process: its own data directory, a PostgreSQL
database that does not exist yet, and a CLICKHOUSE_URL on a free loopback port, so that it starts its own embedded
ClickHouse.

One `up --demo` is started for the module, with a Redis server of the module's own (the shared one at 6379 would
let its worker take other test runs' tasks); the tests look at it while it runs, and the last one stops it with
SIGINT (Ctrl-C). Everything it started is killed in the fixture's `finally` whatever happens.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import clickhouse_connect
import psycopg
import pytest

from demo.inbox import INBOX_DIR_NAME, MAIL_FILE, MAIL_PORT, POSTS_FILE, SLACK_URL, WEBHOOK_PORT
from tests.conftest import RULESCTL, admin_sql, free_port, postgres_url

START_TIMEOUT = 90
STOP_TIMEOUT = 15
# The demo's first fire time is at most a minute away; its run and deliveries follow within seconds.
DELIVERY_TIMEOUT = 180
FLOWER_PORT = 5555


def ping(port: int, timeout: float = 5) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=timeout) as answer:
            return answer.status == 200
    except OSError:
        return False


def answers(port: int, within: float = 15) -> bool:
    """True once /ping answers; patient, because the embedded server may be busy with the demo rules' runs."""
    deadline = time.monotonic() + within
    while not ping(port):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _proc_table() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, process group id, start time in ticks) for every process we can see."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        table[int(entry)] = (int(fields[1]), int(fields[2]), fields[19])
    return table


def descendants(pid: int) -> dict[int, str]:
    """Every process below `pid` (children, grandchildren…), with its start time to tell a reused pid apart."""
    table = _proc_table()
    found: dict[int, str] = {}
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, _pgid, started) in table.items():
            if ppid == parent and child not in found:
                found[child] = started
                frontier.append(child)
    return found


def still_alive(processes: dict[int, str]) -> list[int]:
    table = _proc_table()
    alive = []
    for pid, started in processes.items():
        if pid in table and table[pid][2] == started:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z":
                alive.append(pid)
    return alive


def group_members(pgid: int) -> list[int]:
    return [pid for pid, (_ppid, group, _s) in _proc_table().items() if group == pgid and _is_running(pid)]


def _is_running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@dataclass
class Up:
    process: subprocess.Popen
    port: int
    data_dir: Path
    env: dict[str, str]
    pg_url: str
    lines: list[str] = field(default_factory=list)
    children: dict[int, str] = field(default_factory=dict)

    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return True
            if self.process.poll() is not None:
                time.sleep(0.2)  # let the reader drain the pipe
                return text in self.output()
            time.sleep(0.1)
        return False


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    """A Redis server of this module's own, so that the worker `up` starts never takes tasks meant for others."""
    port = free_port()
    directory = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--dir", str(directory)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as connection:
                    connection.sendall(b"PING\r\n")
                    if connection.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.1)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        _kill_group(process.pid)
        process.wait(timeout=10)


def _wait_until_fixed_ports_are_free(timeout: float = 20) -> None:
    """Flower's port (5555) and the demo inbox's (2525, 8525) are fixed: while another `rulesctl up --demo` on this
    machine holds them, ours cannot run."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        held = []
        for port in (FLOWER_PORT, MAIL_PORT, WEBHOOK_PORT):
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    held.append(port)
        if not held:
            return
        time.sleep(0.5)
    pytest.skip(f"the fixed ports {held} (Flower, the demo inbox) are held by another process on this machine")


@pytest.fixture(scope="module")
def up(tmp_path_factory, redis_url):
    database = f"rules_e_{uuid.uuid4().hex[:12]}"
    pg_url = postgres_url(database)
    port = free_port()
    data_dir = tmp_path_factory.mktemp("up") / "data"
    env = dict(os.environ, DATABASE_URL=pg_url, CLICKHOUSE_URL=f"http://default@127.0.0.1:{port}/rules",
               REDIS_URL=redis_url, PYTHONUNBUFFERED="1")
    _wait_until_fixed_ports_are_free()
    process = subprocess.Popen([RULESCTL, "up", "--demo", "--data-dir", str(data_dir)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               text=True, bufsize=1, start_new_session=True)
    running = Up(process, port, data_dir, env, pg_url)

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            running.lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        running.wait_for("the service is up", START_TIMEOUT)
        running.children = descendants(process.pid)
        yield running
    finally:
        known = {**running.children, **descendants(process.pid)}
        _kill_group(process.pid)
        for pid in still_alive(known):
            try:
                _kill_group(os.getpgid(pid))
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        admin_sql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def test_up_starts_clickhouse_migrates_loads_the_demo_and_says_it_is_up(up):
    assert "the service is up" in up.output(), up.output()
    assert up.process.poll() is None, up.output()
    prefixes = {line.split("|", 1)[0].strip() for line in up.lines if "|" in line}
    assert {"clickhouse", "migrate", "demo-data", "rulesctl"} <= prefixes, up.output()
    up_line = next(line for line in up.lines if "the service is up" in line)
    assert up_line.split("|", 1)[0].strip() == "rulesctl"
    assert any(line.split("|", 1)[0].strip() == "demo-data" and "loaded" in line for line in up.lines)

    assert answers(up.port)
    client = clickhouse_connect.get_client(host="127.0.0.1", port=up.port, database="rules")
    try:
        metric_orgs = client.query("SELECT groupUniqArray(org_id), count() FROM campaign_metrics_daily").result_rows[0]
        snapshots = client.query("SELECT count() FROM pacing_snapshots").result_rows[0][0]
    finally:
        client.close()
    with psycopg.connect(up.pg_url) as connection:
        [(org_id,)] = connection.execute("SELECT id FROM organizations WHERE slug = 'demo'").fetchall()
        rules = connection.execute("SELECT count(*) FROM rules WHERE org_id = %s", (org_id,)).fetchone()[0]
    assert list(metric_orgs[0]) == [org_id] and metric_orgs[1] > 0
    assert snapshots > 0 and rules == 5
    assert (up.data_dir / "clickhouse").is_dir()


def test_up_runs_a_worker_beat_and_flower(up):
    assert up.process.poll() is None, up.output()
    deadline = time.monotonic() + 8
    prefixes: set[str] = set()
    while time.monotonic() < deadline and not {"worker", "beat", "flower"} <= prefixes:
        prefixes = {line.split("|", 1)[0].strip() for line in up.lines if "|" in line}
        time.sleep(0.5)
    assert {"worker", "beat", "flower"} <= prefixes, up.output()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{FLOWER_PORT}/healthcheck", timeout=2) as answer:
            assert answer.status == 200
    except OSError as error:
        pytest.fail(f"Flower does not answer on port {FLOWER_PORT}: {error}")


def test_a_second_up_on_the_same_data_dir_refuses(up):
    assert up.process.poll() is None, up.output()

    second = subprocess.run([RULESCTL, "up", "--data-dir", str(up.data_dir)], env=up.env, capture_output=True,
                            text=True, timeout=30, start_new_session=True)

    assert second.returncode != 0
    lines = (second.stdout + second.stderr).splitlines()
    assert len(lines) == 1, lines
    assert "already running" in lines[0]
    assert "Traceback" not in second.stderr
    assert up.process.poll() is None and answers(up.port)


def _received_channels(inbox_dir: Path) -> set[str]:
    channels = set()
    for name in (MAIL_FILE, POSTS_FILE):
        try:
            lines = (inbox_dir / name).read_text().splitlines()
        except FileNotFoundError:
            continue
        channels |= {json.loads(line)["channel"] for line in lines}
    return channels


def test_the_demo_rules_deliver_to_the_local_inbox(up):
    assert up.process.poll() is None, up.output()
    prefixes = {line.split("|", 1)[0].strip() for line in up.lines if "|" in line}
    assert {"mail-sink", "webhooks"} <= prefixes, up.output()
    inbox_dir = up.data_dir / INBOX_DIR_NAME
    deadline = time.monotonic() + DELIVERY_TIMEOUT
    while _received_channels(inbox_dir) != {"email", "slack", "webhook"} and time.monotonic() < deadline:
        time.sleep(1)

    listed = subprocess.run([RULESCTL, "demo-inbox", "--json", "--data-dir", str(up.data_dir)], env=up.env,
                            capture_output=True, text=True, timeout=60)

    assert listed.returncode == 0, listed.stderr
    summaries = [json.loads(line) for line in listed.stdout.splitlines()]
    assert {summary["channel"] for summary in summaries} == {"email", "slack", "webhook"}, up.output()
    with psycopg.connect(up.pg_url) as connection:
        def delivery(key: str) -> tuple:
            return connection.execute(
                "SELECT d.channel, d.recipient, d.kind, d.status, ru.name, r.alerts - r.silenced FROM deliveries d "
                "JOIN rule_runs r ON r.id = d.run_id JOIN rules ru ON ru.id = d.rule_id WHERE d.idempotency_key = %s",
                (key,)).fetchone()

        for summary in summaries:
            if summary["channel"] == "email":
                channel, recipient, _kind, status, rule, _alerts = delivery(summary["message_id"][1:].split("@")[0])
                assert (channel, [recipient]) == ("email", summary["recipients"]) and rule in summary["subject"]
            elif summary["channel"] == "slack":
                channel, recipient, _kind, status, rule, _alerts = delivery(summary["idempotency_key"])
                assert (channel, recipient) == ("slack", SLACK_URL) and rule in summary["subject"]
            else:
                # The demo's silenced campaign alerts with the other overspending one (the same cooldown), untold.
                channel, _recipient, kind, status, rule, alerts = delivery(summary["idempotency_key"])
                assert (channel, summary["event"], summary["rule"], summary["entities"]) == ("webhook", kind, rule,
                                                                                             alerts)
                assert summary["signature"] == "valid"
            assert status in ("sending", "sent"), summary
        failed = connection.execute("SELECT channel, recipient, last_error FROM deliveries "
                                    "WHERE status = 'failed' OR last_error IS NOT NULL").fetchall()
    assert failed == []


def test_a_second_up_demo_beside_it_refuses_with_one_line_naming_the_port(up, tmp_path):
    assert up.process.poll() is None, up.output()

    second = subprocess.run([RULESCTL, "up", "--demo", "--data-dir", str(tmp_path / "data")], env=up.env,
                            capture_output=True, text=True, timeout=30, start_new_session=True)

    assert second.returncode == 1
    lines = (second.stdout + second.stderr).splitlines()
    assert len(lines) == 1, lines
    assert f"port {MAIL_PORT}" in lines[0] and "in use" in lines[0], lines
    assert up.process.poll() is None and answers(up.port)


def test_chdb_url_is_refused_with_one_line(tmp_path):
    env = dict(os.environ, CLICKHOUSE_URL=f"chdb:///{tmp_path}/chdb/rules")

    process = subprocess.run([RULESCTL, "up", "--data-dir", str(tmp_path / "data")], env=env, capture_output=True,
                             text=True, timeout=30, start_new_session=True)

    assert process.returncode == 1
    assert process.stdout == ""
    lines = process.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("rulesctl: ") and "CLICKHOUSE_URL" in lines[0], process.stderr
    assert not (tmp_path / "chdb").exists()


def test_sigint_stops_it_and_every_process_it_started(up):
    """Last in the module: it stops the shared `up`."""
    assert up.process.poll() is None, up.output()
    children = {**up.children, **descendants(up.process.pid)}
    assert children, "up started no process"
    assert answers(up.port)

    os.killpg(up.process.pid, signal.SIGINT)  # what Ctrl-C sends to the foreground process group
    started = time.monotonic()
    up.process.wait(timeout=STOP_TIMEOUT)

    assert time.monotonic() - started < STOP_TIMEOUT
    # every line comes from a named process: `up` itself printed no traceback or stray text
    assert all("|" in line for line in up.lines), up.output()
    deadline = time.monotonic() + 2
    while (still_alive(children) or group_members(up.process.pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert still_alive(children) == []
    assert group_members(up.process.pid) == []
    assert not ping(up.port, timeout=2)
