"""`rulesctl migrate`: creates the databases if missing and applies sql/postgres then sql/clickhouse, each file once."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from storage.clickhouse import ClickHouse, connect, parse_clickhouse_url, translated_errors as ch_errors
from storage.errors import MigrationFailed, QueryFailed, first_line
from storage.postgres import describe_postgres, translated_errors as pg_errors
from storage.queries import queries

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "sql"
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def migration_files(dialect: str) -> list[Path]:
    """The numbered migration files of `dialect` ("postgres" or "clickhouse"), in the order they apply."""
    return sorted((MIGRATIONS_DIR / dialect).glob("*.sql"))


def split_statements(text: str) -> list[str]:
    """Splits a ClickHouse migration file into statements at semicolons that end a line."""
    statements = re.split(r";\s*$", text, flags=re.MULTILINE)
    return [s.strip() for s in statements if _strip_comments(s).strip()]


def _strip_comments(text: str) -> str:
    return re.sub(r"--[^\n]*", "", text)


def ensure_postgres_database(url: str) -> bool:
    """Creates the database named in `url` if it is missing; returns True when it was created."""
    target = conninfo_to_dict(url)
    name = target.get("dbname") or ""
    maintenance = make_conninfo(url, dbname="postgres", connect_timeout=5)
    with pg_errors(url, "connecting to create the database"):
        with psycopg.connect(maintenance, autocommit=True) as connection:
            if connection.execute(queries("postgres")["database_exists"], {"name": name}).fetchone():
                return False
            try:
                connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            except psycopg.errors.DuplicateDatabase:
                return False
    return True


def drop_postgres_database(url: str) -> None:
    """Drops the database named in `url`, closing its connections first (for scratch databases)."""
    name = conninfo_to_dict(url).get("dbname") or ""
    with pg_errors(url, "dropping the database"):
        with psycopg.connect(make_conninfo(url, dbname="postgres", connect_timeout=5), autocommit=True) as connection:
            connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def migrate_postgres(url: str) -> list[str]:
    """Applies pending PostgreSQL migrations in order, one transaction each; returns the names applied."""
    applied_now: list[str] = []
    with pg_errors(url, "connecting"):
        connection = psycopg.connect(make_conninfo(url, connect_timeout=5))
    with connection:
        for path in migration_files("postgres"):
            with connection.transaction():
                with pg_errors(url, "reading the migrations table"):
                    connection.execute(queries("postgres")["migration_lock"])
                    connection.execute(queries("postgres")["create_migrations_table"])
                    done = {row[0] for row in connection.execute(queries("postgres")["applied_migrations"])}
                if path.name in done:
                    continue
                try:
                    connection.execute(path.read_text())
                except psycopg.Error as error:
                    raise MigrationFailed(f"{describe_postgres(url)}: migration {path.name} failed: {first_line(error)}") from error
                connection.execute(queries("postgres")["record_migration"], {"name": path.name})
            applied_now.append(path.name)
    return applied_now


def _on_clickhouse_server(url: str, statement: str, what: str) -> None:
    """Runs `statement` (with `{database}` for the URL's database, checked to be a plain name) from `default`."""
    target = parse_clickhouse_url(url)
    if not _IDENTIFIER.match(target.database):
        raise MigrationFailed(f"{target.describe()}: database name must be letters, digits and underscores")
    client = connect(target, database="default")
    try:
        with ch_errors(target, what):
            client.command(statement.format(database=f"`{target.database}`"))
    finally:
        client.close()


def ensure_clickhouse_database(url: str) -> None:
    """Creates the ClickHouse database named in `url` if it is missing."""
    _on_clickhouse_server(url, "CREATE DATABASE IF NOT EXISTS {database}", "creating the database")


def drop_clickhouse_database(url: str) -> None:
    """Drops the ClickHouse database named in `url` (for scratch databases)."""
    _on_clickhouse_server(url, "DROP DATABASE IF EXISTS {database}", "dropping the database")


def migrate_clickhouse(url: str) -> list[str]:
    """Applies pending ClickHouse migrations in order, statement by statement; returns the names applied."""
    clickhouse = ClickHouse(url)
    applied_now: list[str] = []
    try:
        clickhouse.command(queries("clickhouse")["create_migrations_table"], what="creating the migrations table")
        done = {row["name"] for row in clickhouse.rows("applied_migrations")}
        for path in migration_files("clickhouse"):
            if path.name in done:
                continue
            for statement in split_statements(path.read_text()):
                try:
                    clickhouse.command(statement, what=f"migration {path.name}")
                except QueryFailed as error:
                    raise MigrationFailed(str(error)) from error
            clickhouse.insert("schema_migrations", [[path.name]], ["name"])
            applied_now.append(path.name)
    finally:
        clickhouse.close()
    return applied_now


def migrate_all(database_url: str, clickhouse_url: str) -> Iterator[str]:
    """Migrates PostgreSQL then ClickHouse; yields one line per database saying what was done."""
    created = ensure_postgres_database(database_url)
    applied = migrate_postgres(database_url)
    yield _summary(describe_postgres(database_url), created, applied)
    ensure_clickhouse_database(clickhouse_url)
    applied = migrate_clickhouse(clickhouse_url)
    yield _summary(parse_clickhouse_url(clickhouse_url).describe(), False, applied)


def _summary(where: str, created: bool, applied: list[str]) -> str:
    prefix = f"{where}: created the database; " if created else f"{where}: "
    return prefix + (f"applied {', '.join(applied)}" if applied else "up to date")

