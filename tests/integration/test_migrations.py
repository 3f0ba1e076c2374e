"""`rulesctl migrate` builds exactly the seed schema, once, in PostgreSQL and in the embedded ClickHouse."""

from __future__ import annotations

import os
import re
import subprocess
import uuid

import psycopg
import pytest

from storage import migrations
from storage.errors import MigrationFailed
from tests.conftest import RULESCTL, REPO, admin_sql, postgres_url

SEED = (REPO / "tests" / "data" / "seed-database-schemas.md").read_text()
OUR_PG_TABLES = {"schema_migrations", "rule_runs", "notifications", "deliveries", "alert_states", "alert_state_history",
                 "sent_fire_times", "silences", "acknowledgements"}


def seed_blocks(section: str) -> list[str]:
    """The ```sql blocks of one section ("PostgreSQL Schemas" or "ClickHouse Schemas") of the seed document."""
    start = SEED.index(f"## {section}")
    following = SEED.find("\n## ", start + 3)
    part = SEED[start: following if following != -1 else None]
    return re.findall(r"```sql\n(.*?)```", part, flags=re.DOTALL)


def seed_postgres_sql() -> str:
    """The seed's PostgreSQL DDL with the one forced change: audit_logs's key includes its partition column."""
    text = "\n".join(seed_blocks("PostgreSQL Schemas"))
    forced = text.replace("id BIGSERIAL PRIMARY KEY,", "id BIGSERIAL,").replace(
        "timestamp TIMESTAMP DEFAULT NOW()\n) PARTITION BY", "timestamp TIMESTAMP DEFAULT NOW(),\n    PRIMARY KEY (id, timestamp)\n) PARTITION BY"
    )
    assert forced != text, "the audit_logs definition in the seed changed shape"
    return forced


def is_seed_table(name: str) -> bool:
    """True for the seed's tables: ours and the extra audit_logs partitions are left out of the comparison."""
    return name not in OUR_PG_TABLES and (not name.startswith("audit_logs_") or name == "audit_logs_2024_12")


def postgres_catalog(url: str) -> dict[str, list[tuple]]:
    """Columns, indexes, constraints and partitioning of the seed tables in one database."""
    queries = {
        "columns": """SELECT table_name, column_name, ordinal_position, data_type, character_maximum_length,
                             is_nullable, column_default
                      FROM information_schema.columns WHERE table_schema = 'public'""",
        "indexes": "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'",
        "constraints": """SELECT c.relname, k.conname, k.contype, pg_get_constraintdef(k.oid)
                          FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
                          JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public'""",
        "partitions": """SELECT c.relname, pg_get_expr(c.relpartbound, c.oid), pg_get_partkeydef(c.oid)
                         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                         WHERE n.nspname = 'public' AND c.relname LIKE 'audit_logs%'""",
    }
    with psycopg.connect(url) as connection:
        return {
            part: sorted(tuple(row) for row in connection.execute(query) if is_seed_table(row[0]))
            for part, query in queries.items()
        }


@pytest.fixture
def seed_pg_url():
    """A scratch PostgreSQL database built straight from the seed document."""
    name = f"rules_seed_{uuid.uuid4().hex[:10]}"
    admin_sql(f'CREATE DATABASE "{name}"')
    url = postgres_url(name)
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(seed_postgres_sql())
    yield url
    admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_postgres_schema_equals_the_seed(pg_url, seed_pg_url):
    migrated, seed = postgres_catalog(pg_url), postgres_catalog(seed_pg_url)
    assert migrated["columns"] and migrated["indexes"]
    for part in seed:
        assert migrated[part] == seed[part], part


def test_postgres_has_our_tables_and_the_one_run_per_fire_time_index(pg_url):
    with psycopg.connect(pg_url) as connection:
        tables = {r[0] for r in connection.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        definition = connection.execute(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'rule_runs_one_per_fire_time'"
        ).fetchone()[0]
        delivery_keys = {r[0] for r in connection.execute(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid IN "
            "('deliveries'::regclass, 'notifications'::regclass) AND contype = 'u'")}
    assert OUR_PG_TABLES <= tables
    assert "UNIQUE" in definition and "WHERE (NOT dry_run)" in definition
    assert "(rule_id, scheduled_for, (((trigger)::text = 'recheck'::text)))" in definition
    assert {"UNIQUE (idempotency_key)", "UNIQUE (run_id, kind, channel, recipient)",
            "UNIQUE (run_id, user_id, kind)"} == delivery_keys


def test_migrate_creates_the_database_then_changes_nothing(empty_pg_url):
    assert migrations.ensure_postgres_database(empty_pg_url) is True
    first = migrations.migrate_postgres(empty_pg_url)
    before = postgres_catalog(empty_pg_url)
    assert migrations.ensure_postgres_database(empty_pg_url) is False
    assert first == [p.name for p in migrations.migration_files("postgres")]
    assert migrations.migrate_postgres(empty_pg_url) == []
    assert postgres_catalog(empty_pg_url) == before


def test_a_failing_migration_stops_with_its_name_and_keeps_the_ones_before(empty_pg_url, tmp_path, monkeypatch):
    (tmp_path / "postgres").mkdir()
    (tmp_path / "postgres" / "0001_good.sql").write_text("CREATE TABLE first_table (id INT);")
    (tmp_path / "postgres" / "0002_bad.sql").write_text("CREATE TABLE second_table (id INT);\nSELEC nonsense;")
    (tmp_path / "postgres" / "0003_later.sql").write_text("CREATE TABLE third_table (id INT);")
    monkeypatch.setattr(migrations, "MIGRATIONS_DIR", tmp_path)
    migrations.ensure_postgres_database(empty_pg_url)

    with pytest.raises(MigrationFailed) as failure:
        migrations.migrate_postgres(empty_pg_url)

    assert "0002_bad.sql" in str(failure.value) and "syntax error" in str(failure.value)
    with psycopg.connect(empty_pg_url) as connection:
        applied = [r[0] for r in connection.execute("SELECT name FROM schema_migrations ORDER BY name")]
        tables = {r[0] for r in connection.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert applied == ["0001_good.sql"]
    assert "first_table" in tables and "second_table" not in tables and "third_table" not in tables


@pytest.mark.parametrize(
    ("timestamp", "partition"),
    [("2024-12-15 10:00", "audit_logs_2024_12"), ("2026-11-25 08:00", "audit_logs_2026_11"),
     ("2041-07-04 12:00", "audit_logs_default"), ("2019-03-01 00:00", "audit_logs_default")],
)
def test_audit_logs_accepts_any_month(pg_url, timestamp, partition):
    with psycopg.connect(pg_url) as connection:
        stored_in = connection.execute(
            "INSERT INTO audit_logs (action, timestamp) VALUES ('rule.run', %s) RETURNING tableoid::regclass::text",
            (timestamp,),
        ).fetchone()[0]
    assert stored_in == partition


def clickhouse_catalog(client, database: str) -> dict[str, list[tuple]]:
    """Engines, keys, TTLs and columns of the seed tables in one ClickHouse database."""
    tables = client.query(
        "SELECT name, engine, partition_key, sorting_key, primary_key, "
        "replaceAll(engine_full, {db:String}, 'DB'), replaceAll(as_select, {db:String}, 'DB') "
        "FROM system.tables WHERE database = {db:String} AND name != 'schema_migrations' "
        "AND NOT startsWith(name, '.inner') ORDER BY name",
        parameters={"db": database},
    ).result_rows
    columns = client.query(
        "SELECT table, name, type, position, default_kind, default_expression FROM system.columns "
        "WHERE database = {db:String} AND table != 'schema_migrations' AND NOT startsWith(table, '.inner') "
        "ORDER BY table, position",
        parameters={"db": database},
    ).result_rows
    return {"tables": [tuple(r) for r in tables], "columns": [tuple(r) for r in columns]}


def test_clickhouse_schema_equals_the_seed(clickhouse_local, migrated_ch_url, ch_database):
    seed_database = f"seed_{uuid.uuid4().hex[:10]}"
    client = clickhouse_local.client()
    client.command(f"CREATE DATABASE {seed_database}")
    try:
        seed_client = clickhouse_local.client(seed_database)
        for block in seed_blocks("ClickHouse Schemas"):
            seed_client.command(block.strip().rstrip(";"))
        migrated = clickhouse_catalog(client, ch_database)
        seed = clickhouse_catalog(client, seed_database)
    finally:
        client.command(f"DROP DATABASE IF EXISTS {seed_database}")
    names = [t[0] for t in migrated["tables"]]
    assert names == ["alert_events", "campaign_metrics_daily", "mv_daily_campaign_summary", "pacing_snapshots", "rule_evaluations"]
    assert migrated == seed


def test_clickhouse_migrate_twice_changes_nothing(clickhouse_local, ch_url, ch_database):
    assert migrations.migrate_clickhouse(ch_url) == [p.name for p in migrations.migration_files("clickhouse")]
    before = clickhouse_catalog(clickhouse_local.client(), ch_database)
    assert migrations.migrate_clickhouse(ch_url) == []
    assert clickhouse_catalog(clickhouse_local.client(), ch_database) == before


def run_rulesctl(*args: str, **env: str) -> subprocess.CompletedProcess:
    """Runs the rulesctl console script with extra environment variables."""
    return subprocess.run([RULESCTL, *args], capture_output=True, text=True, timeout=60, env={**os.environ, **env})


def test_rulesctl_migrate_end_to_end(empty_pg_url, clickhouse_local):
    database = f"cli_{uuid.uuid4().hex[:10]}"
    try:
        first = run_rulesctl("migrate", DATABASE_URL=empty_pg_url, CLICKHOUSE_URL=clickhouse_local.url(database))
        second = run_rulesctl("migrate", DATABASE_URL=empty_pg_url, CLICKHOUSE_URL=clickhouse_local.url(database))
        tables = clickhouse_local.client().query(
            "SELECT count() FROM system.tables WHERE database = {db:String}", parameters={"db": database}
        ).result_rows[0][0]
    finally:
        clickhouse_local.client().command(f"DROP DATABASE IF EXISTS {database}")
    assert first.returncode == 0, first.stderr
    assert "created the database" in first.stdout and "0003_rule_runs_and_notifications.sql" in first.stdout
    assert second.returncode == 0 and second.stdout.count("up to date") == 2
    assert tables >= 6


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("DATABASE_URL", "postgresql://postgres@127.0.0.1:1/rules", "PostgreSQL at 127.0.0.1:1/rules"),
        ("DATABASE_URL", "mysql://root@127.0.0.1/rules", "DATABASE_URL: must be a postgresql:// URL"),
        ("CLICKHOUSE_URL", "http://default@127.0.0.1:1/rules", "ClickHouse at 127.0.0.1:1/rules"),
        ("CLICKHOUSE_URL", "ftp://127.0.0.1/rules", "CLICKHOUSE_URL: must be an http(s):// or chdb:// URL"),
        ("CLICKHOUSE_URL", "http://default@127.0.0.1:xx/rules", "CLICKHOUSE_URL: has a port that is not a number"),
    ],
)
def test_a_bad_url_gives_one_clear_line(empty_pg_url, clickhouse_local, variable, value, expected):
    env = {"DATABASE_URL": empty_pg_url, "CLICKHOUSE_URL": clickhouse_local.url("unused"), variable: value}
    result = run_rulesctl("migrate", **env)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert "Traceback" not in result.stderr
