"""Fixtures for the rule-run tests (a pytest plugin, loaded by pyproject.toml's addopts): real PostgreSQL and the
embedded ClickHouse, data inserted with plain SQL.

Everything read back (rule_runs, audit_logs, rule_evaluations, alert_events) is read with plain SQL through
psycopg and a clickhouse-connect client of its own, never through the product's storage layer.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import clickhouse_connect
import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from storage.clickhouse import ClickHouse
from storage.postgres import Postgres
from tests.conftest import admin_sql, postgres_url
from worker.runner import RuleRunner, RunRequest

ALL_MODULES = ("alerts", "qa", "taxonomy")
METRIC_COLUMNS = ("org_id", "date", "dsp_type", "campaign_id", "campaign_name", "advertiser_id", "impressions",
                  "clicks", "conversions", "spend", "cpm", "ctr", "cvr")
SNAPSHOT_COLUMNS = ("org_id", "snapshot_time", "entity_type", "entity_id", "booked_amount", "delivered_amount",
                    "pacing_rate", "days_elapsed", "days_remaining", "projected_spend", "margin_percent")


@dataclass
class RunEnv:
    """One test's databases, the runner on them, and plain-SQL helpers to fill and read them."""

    pg_url: str
    ch_url: str
    ch_database: str
    postgres: Postgres
    clickhouse: ClickHouse
    runner: RuleRunner
    ch_raw: Any
    _counter: int = field(default=0)

    # --- PostgreSQL ---------------------------------------------------------------------------------------------

    def pg(self, sql: str, params: Any = None) -> list[dict[str, Any]]:
        with psycopg.connect(self.pg_url, row_factory=dict_row, autocommit=True) as connection:
            cursor = connection.execute(sql, params)
            return cursor.fetchall() if cursor.description else []

    def org(self, name: str | None = None, timezone: str = "America/New_York",
            modules: tuple[str, ...] | list[str] = ALL_MODULES) -> int:
        self._counter += 1
        name = name or f"Org {self._counter}"
        return self.pg(
            "INSERT INTO organizations (name, slug, timezone, enabled_modules) VALUES (%s, %s, %s, %s) RETURNING id",
            (name, f"org-{self._counter}-{uuid.uuid4().hex[:6]}", timezone, Jsonb(list(modules))),
        )[0]["id"]

    def user(self, email: str | None = None) -> int:
        self._counter += 1
        return self.pg("INSERT INTO users (email, password_hash, full_name) VALUES (%s, 'x', %s) RETURNING id",
                       (email or f"user{self._counter}@example.com", f"User {self._counter}"))[0]["id"]

    def member(self, user_id: int, org_id: int, role: str = "member") -> None:
        self.pg("INSERT INTO org_memberships (user_id, org_id, role) VALUES (%s, %s, %s)", (user_id, org_id, role))

    def rule(self, org_id: int, conditions: Any, actions: Any | None = None, *, module: str = "alerts",
             name: str | None = None) -> str:
        self._counter += 1
        return self.pg(
            "INSERT INTO rules (org_id, name, module, enabled, conditions, actions) VALUES (%s, %s, %s, TRUE, %s, %s) "
            "RETURNING id::text AS id",
            (org_id, name or f"Rule {self._counter}", module, Jsonb(conditions), Jsonb(actions or {})),
        )[0]["id"]

    def runs(self, rule_id: str | None = None) -> list[dict[str, Any]]:
        if rule_id is None:
            return self.pg("SELECT * FROM rule_runs ORDER BY started_at, id")
        return self.pg("SELECT * FROM rule_runs WHERE rule_id = %s ORDER BY started_at, id", (rule_id,))

    def run_row(self, run_id: str) -> dict[str, Any]:
        return self.pg("SELECT * FROM rule_runs WHERE id = %s", (run_id,))[0]

    def audit_logs(self) -> list[dict[str, Any]]:
        return self.pg("SELECT * FROM audit_logs ORDER BY id")

    # --- ClickHouse ---------------------------------------------------------------------------------------------

    def metrics(self, *rows: dict[str, Any]) -> None:
        """campaign_metrics_daily rows; each needs org_id, date, campaign_id; the rest default."""
        data = []
        for row in rows:
            full = {"dsp_type": "DV360", "campaign_name": f"name of {row['campaign_id']}", "advertiser_id": "adv-1",
                    "impressions": 0, "clicks": 0, "conversions": 0, "spend": Decimal("0"), "cpm": Decimal("0"),
                    "ctr": Decimal("0"), "cvr": Decimal("0"), **row}
            full["spend"] = Decimal(str(full["spend"]))
            if isinstance(full["date"], str):
                full["date"] = date.fromisoformat(full["date"])
            data.append([full[column] for column in METRIC_COLUMNS])
        self.ch_raw.insert("campaign_metrics_daily", data, column_names=list(METRIC_COLUMNS))

    def snapshots(self, *rows: dict[str, Any]) -> None:
        """pacing_snapshots rows; each needs org_id, snapshot_time (UTC text), entity_type, entity_id."""
        data = []
        for row in rows:
            full = {"booked_amount": 0, "delivered_amount": 0, "pacing_rate": 0, "days_elapsed": 0,
                    "days_remaining": 0, "projected_spend": 0, "margin_percent": 0, **row}
            for name in ("booked_amount", "delivered_amount", "pacing_rate", "projected_spend", "margin_percent"):
                full[name] = Decimal(str(full[name]))
            full["snapshot_time"] = datetime.fromisoformat(full["snapshot_time"])
            data.append([full[column] for column in SNAPSHOT_COLUMNS])
        self.ch_raw.insert("pacing_snapshots", data, column_names=list(SNAPSHOT_COLUMNS))

    def ch_rows(self, sql: str, **parameters: Any) -> list[dict[str, Any]]:
        return list(self.ch_raw.query(sql, parameters=parameters).named_results())

    def evaluations(self, rule_id: str, at: datetime | None = None) -> list[dict[str, Any]]:
        """rule_evaluations rows of a rule (at one eval_time if given), condition_results parsed."""
        where = "rule_id = {rule:UUID}" + (" AND eval_time = {at:DateTime('UTC')}" if at else "")
        rows = self.ch_rows(
            "SELECT org_id, toString(eval_time, 'UTC') AS eval_text, toString(rule_id) AS rule_uuid, entity_id, matched, "
            f"condition_results, execution_time_ms FROM rule_evaluations WHERE {where} ORDER BY entity_id, condition_results",
            rule=rule_id, at=at.strftime("%Y-%m-%d %H:%M:%S") if at else None)
        for row in rows:
            row["rule_id"], row["eval_time"] = row.pop("rule_uuid"), row.pop("eval_text")
            row["results"] = json.loads(row["condition_results"])
        return rows

    def alerts(self, rule_id: str, at: datetime | None = None) -> list[dict[str, Any]]:
        """alert_events rows of a rule (at one alert_time if given), condition_details parsed."""
        where = "rule_id = {rule:UUID}" + (" AND alert_time = {at:DateTime('UTC')}" if at else "")
        rows = self.ch_rows(
            "SELECT org_id, toString(alert_time, 'UTC') AS alert_text, toString(rule_id) AS rule_uuid, rule_name, "
            "toString(severity) AS severity, toString(entity_type) AS entity_type, entity_id, entity_name, "
            f"condition_details, notified_users FROM alert_events WHERE {where} "
            "ORDER BY alert_text, entity_type, entity_id",
            rule=rule_id, at=at.strftime("%Y-%m-%d %H:%M:%S") if at else None)
        for row in rows:
            row["rule_id"], row["alert_time"] = row.pop("rule_uuid"), row.pop("alert_text")
            row["details"] = json.loads(row["condition_details"])
        return rows

    def count(self, table: str, rule_id: str | None = None) -> int:
        where = " WHERE rule_id = {rule:UUID}" if rule_id else ""
        return int(self.ch_rows(f"SELECT count() AS n FROM {table}{where}", rule=rule_id)[0]["n"])

    # --- running --------------------------------------------------------------------------------------------------

    def run(self, rule_id: str, at: datetime | None, **options: Any) -> dict[str, Any]:
        return self.runner.run(RunRequest(rule_id=rule_id, scheduled_for=at, **options))


def ch_text(moment: datetime) -> str:
    """`YYYY-MM-DD HH:MM:SS` in UTC, as toString(DateTime) writes it on a UTC server."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


# Every table a test may write, children before parents; emptied before each test of a module.
_PG_DATA_TABLES = ("audit_logs", "acknowledgements", "silences", "alert_states", "alert_state_history", "deliveries", "notifications", "rule_runs", "entity_permissions", "rules", "dsp_accounts",
                   "pipelines", "sessions", "org_memberships", "organizations", "users")


@pytest.fixture(scope="module")
def _module_pg_url(pg_template):
    """One migrated PostgreSQL database per test module (copying the template takes most of a second)."""
    name = f"rules_r_{uuid.uuid4().hex[:12]}"
    admin_sql(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
    yield postgres_url(name)
    admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def fresh_pg_url(_module_pg_url):
    """The module's PostgreSQL database, emptied back to its just-migrated state for this test.

    DELETE rather than TRUNCATE: truncating the 130-odd audit_logs partitions takes most of a second. Serial ids
    are not restarted, so tests never rely on id values, only on the ids the inserts return.
    """
    with psycopg.connect(_module_pg_url, autocommit=True) as connection:
        with connection.transaction():
            for table in _PG_DATA_TABLES:
                connection.execute(f"DELETE FROM {table}")
    return _module_pg_url


@pytest.fixture
def env(fresh_pg_url, migrated_ch_url, clickhouse_local):
    """A RuleRunner on an empty migrated PostgreSQL database and a fresh migrated ClickHouse database."""
    database = migrated_ch_url.rsplit("/", 1)[1]
    postgres = Postgres(fresh_pg_url)
    clickhouse = ClickHouse(migrated_ch_url)
    raw = clickhouse_connect.get_client(host=clickhouse_local.host, port=clickhouse_local.port, database=database)
    try:
        yield RunEnv(fresh_pg_url, migrated_ch_url, database, postgres, clickhouse, RuleRunner(postgres, clickhouse), raw)
    finally:
        raw.close()
        clickhouse.close()
        postgres.close()
