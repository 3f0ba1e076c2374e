"""Shared fixtures: one embedded ClickHouse per test session, fresh databases per test."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from urllib.parse import urlsplit, urlunsplit
from dataclasses import dataclass
from pathlib import Path

import clickhouse_connect
import pytest
from hypothesis import settings as hypothesis_settings

# CI replays the same generated examples on every run (a failure there is then reproducible); locally each run
# explores new ones.
hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    hypothesis_settings.load_profile("ci")

REPO = Path(__file__).resolve().parent.parent
RULESCTL = str(Path(sys.executable).with_name("rulesctl"))
# Runs made in-process or by `rulesctl run` queue their deliveries: on a Redis database of the tests' own, never
# on database 0 where a developer's service may be listening.
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379").rstrip("/") + "/3"
os.environ["REDIS_URL"] = TEST_REDIS_URL


@pytest.fixture(scope="session", autouse=True)
def _empty_test_redis_database():
    """Flushes the tests' Redis database after the session (queued deliveries of finished tests)."""
    yield
    import redis

    try:
        with redis.Redis.from_url(TEST_REDIS_URL) as client:
            client.flushdb()
    except redis.RedisError:
        pass


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ClickHouseLocal:
    """A running `rulesctl clickhouse-local` process."""

    host: str
    port: int
    path: Path
    process: subprocess.Popen | None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url(self, database: str) -> str:
        """A CLICKHOUSE_URL for `database` on this server."""
        return f"http://default@{self.host}:{self.port}/{database}"

    def client(self, database: str = "default", **kwargs):
        return clickhouse_connect.get_client(host=self.host, port=self.port, database=database, **kwargs)


def start_clickhouse_local(path: Path, port: int, *extra: str, log=None) -> subprocess.Popen:
    """Starts `rulesctl clickhouse-local` on `port` and waits until it answers /ping."""
    process = subprocess.Popen(
        [RULESCTL, "clickhouse-local", "--path", str(path), "--port", str(port), *extra],
        stdout=log or subprocess.DEVNULL,
        stderr=subprocess.STDOUT if log else subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"clickhouse-local exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=1) as answer:
                if answer.status == 200:
                    return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("clickhouse-local did not answer /ping within 60 s")


def stop_process(process: subprocess.Popen) -> None:
    """Stops a child process, politely first."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def clickhouse_local(tmp_path_factory) -> ClickHouseLocal:
    """One embedded ClickHouse server for the whole test session, on a free port."""
    path = tmp_path_factory.mktemp("clickhouse")
    port = free_port()
    log = open(path.parent / "clickhouse-local.log", "wb")
    process = start_clickhouse_local(path / "data", port, log=log)
    yield ClickHouseLocal("127.0.0.1", port, path / "data", process)
    stop_process(process)
    log.close()


@pytest.fixture
def ch_database(clickhouse_local) -> str:
    """A fresh, empty ClickHouse database on the session's server, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = clickhouse_local.client()
    admin.command(f"CREATE DATABASE {name}")
    yield name
    admin.command(f"DROP DATABASE IF EXISTS {name}")
    admin.close()


@pytest.fixture
def ch(clickhouse_local, ch_database):
    """A clickhouse-connect client (default settings) bound to a fresh database."""
    client = clickhouse_local.client(ch_database)
    yield client
    client.close()


PG_SERVER = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def postgres_url(database: str) -> str:
    """A DATABASE_URL for `database` on the test PostgreSQL server."""
    return urlunsplit(urlsplit(PG_SERVER)._replace(path=f"/{database}"))


def admin_sql(statement: str) -> None:
    """Runs one statement on the test server's maintenance database, outside a transaction."""
    import psycopg

    with psycopg.connect(PG_SERVER, autocommit=True) as connection:
        connection.execute(statement)


@pytest.fixture(scope="session")
def pg_template() -> str:
    """A migrated PostgreSQL database used as the template for each test's fresh database."""
    from storage.migrations import ensure_postgres_database, migrate_postgres

    name = f"rules_template_{uuid.uuid4().hex[:8]}"
    ensure_postgres_database(postgres_url(name))
    migrate_postgres(postgres_url(name))
    yield name
    admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(pg_template) -> str:
    """The URL of a fresh, migrated PostgreSQL database (copied from the template), dropped afterwards."""
    name = f"rules_t_{uuid.uuid4().hex[:12]}"
    admin_sql(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
    yield postgres_url(name)
    admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def empty_pg_url() -> str:
    """The URL of a PostgreSQL database that does not exist yet; dropped afterwards if a test created it."""
    name = f"rules_e_{uuid.uuid4().hex[:12]}"
    yield postgres_url(name)
    admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def ch_url(clickhouse_local, ch_database) -> str:
    """A CLICKHOUSE_URL naming a fresh, empty database on the session's embedded ClickHouse."""
    return clickhouse_local.url(ch_database)


@pytest.fixture
def migrated_ch_url(ch_url) -> str:
    """A CLICKHOUSE_URL naming a fresh database with every ClickHouse migration applied."""
    from storage.migrations import migrate_clickhouse

    migrate_clickhouse(ch_url)
    return ch_url
