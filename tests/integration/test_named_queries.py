"""Named queries of a file outside storage/queries, run by name through the service's own Postgres and ClickHouse
classes, on the real PostgreSQL and the embedded ClickHouse."""

from __future__ import annotations

from datetime import date, datetime

import psycopg
import pytest

from benchmarks.bench import QUERY_DIR as BENCH_QUERY_DIR
from storage.clickhouse import ClickHouse
from storage.postgres import Postgres
from storage.queries import queries

EXTRA_POSTGRES = """
-- name: insert_test_organization
INSERT INTO organizations (name, slug) VALUES (%(slug)s, %(slug)s) RETURNING id;

-- name: insert_test_rule
INSERT INTO rules (org_id, name, module, conditions, actions)
VALUES (%(org_id)s, %(name)s, 'alerts', '{}', '{}')
RETURNING id::text AS id;

-- name: rule_names_of_organization
SELECT name FROM rules WHERE org_id = %(org_id)s ORDER BY name;
"""

EXTRA_CLICKHOUSE = """
-- name: insert_one_metric
INSERT INTO campaign_metrics_daily (org_id, date, dsp_type, campaign_id, campaign_name, advertiser_id)
SELECT {org_id:UInt32}, {day:Date}, 'TTD', {campaign_id:String}, 'extra', 'adv';

-- name: campaigns_of_organization
SELECT campaign_id FROM campaign_metrics_daily WHERE org_id = {org_id:UInt32} ORDER BY campaign_id;
"""


def _organization(tx, slug: str) -> int:
    return tx.one("insert_test_organization", slug=slug)["id"]


def _rule(tx, org_id: int, name: str) -> str:
    return tx.one("insert_test_rule", org_id=org_id, name=name)["id"]


def test_an_extra_postgres_file_runs_by_name_beside_the_service_queries(pg_url, tmp_path):
    extra = tmp_path / "postgres.sql"
    extra.write_text(EXTRA_POSTGRES)
    postgres = Postgres(pg_url, extra_queries=extra)
    plain = Postgres(pg_url)
    try:
        with postgres.transaction() as tx:
            org_id = _organization(tx, "extra-queries")
            _rule(tx, org_id, "b")
            _rule(tx, org_id, "a")
            in_transaction = tx.all("rule_names_of_organization", org_id=org_id)
            # A query of the service's own file, in the same transaction.
            found = tx.one("database_exists", name=pg_url.rsplit("/", 1)[1])

        assert in_transaction == [{"name": "a"}, {"name": "b"}]
        assert found == {"found": 1}
        assert postgres.all("rule_names_of_organization", org_id=org_id) == [{"name": "a"}, {"name": "b"}]
        # The service's own client knows only the service's queries.
        with pytest.raises(KeyError):
            plain.all("rule_names_of_organization", org_id=org_id)
    finally:
        postgres.close()
        plain.close()


def test_an_extra_clickhouse_file_runs_by_name_beside_the_service_queries(migrated_ch_url, tmp_path):
    extra = tmp_path / "clickhouse.sql"
    extra.write_text(EXTRA_CLICKHOUSE)
    clickhouse = ClickHouse(migrated_ch_url, extra_queries=extra)
    try:
        for campaign_id in ("c-2", "c-1"):
            clickhouse.command_named("insert_one_metric", org_id=7, day=date(2026, 11, 20), campaign_id=campaign_id)
        clickhouse.command_named("insert_one_metric", org_id=8, day=date(2026, 11, 20), campaign_id="c-9")

        assert clickhouse.rows("campaigns_of_organization", org_id=7) == [{"campaign_id": "c-1"},
                                                                          {"campaign_id": "c-2"}]
        assert "create_migrations_table" in queries("clickhouse", extra)
    finally:
        clickhouse.close()


def test_an_extra_file_may_not_redefine_a_service_query(tmp_path):
    extra = tmp_path / "postgres.sql"
    extra.write_text("-- name: claim_runs\nSELECT 1;\n\n-- name: something_new\nSELECT 2;\n")

    with pytest.raises(ValueError, match=r"claim_runs already defined in storage/queries/postgres\.sql"):
        queries("postgres", extra)
    assert "something_new" not in queries("postgres")


def test_the_load_bench_touches_only_the_rules_of_its_own_organizations(pg_url):
    postgres = Postgres(pg_url, extra_queries=BENCH_QUERY_DIR / "postgres.sql")
    long_ago = datetime(2020, 1, 1)
    try:
        with psycopg.connect(pg_url, autocommit=True) as connection:
            def rule_of_new_organization(slug: str) -> tuple[int, str]:
                org_id = connection.execute("INSERT INTO organizations (name, slug) VALUES (%s, %s) RETURNING id",
                                            (slug, slug)).fetchone()[0]
                rule_id = connection.execute("INSERT INTO rules (org_id, name, module, conditions, actions, created_at)"
                                             " VALUES (%s, 'r', 'alerts', '{}', '{}', %s) RETURNING id::text",
                                             (org_id, long_ago)).fetchone()[0]
                return org_id, rule_id

            (own, own_rule), (_, other_rule) = rule_of_new_organization("load-own"), rule_of_new_organization("other")

            touched = postgres.execute("load_bench_rules_created_now", org_ids=[own])

            created = dict(connection.execute("SELECT id::text, created_at FROM rules").fetchall())
        assert touched == 1
        assert created[own_rule] > long_ago
        assert created[other_rule] == long_ago
    finally:
        postgres.close()
