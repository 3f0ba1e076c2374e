"""`rulesctl` commands other than `run` (the README's Commands), through the installed console script.

Real PostgreSQL (a fresh migrated database per test) and the session's embedded ClickHouse (a fresh migrated
database per test). Data is inserted and read back with plain SQL (psycopg, clickhouse-connect), never through the
product's storage layer; every expected number below is worked out from the data the test inserts.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from tests.conftest import PG_SERVER, RULESCTL, free_port
from benchmarks.bench import NAMING_CONVENTION as CONVENTION

COMMANDS = ("migrate", "clickhouse-local", "run", "runs", "validate", "validate-convention", "schema", "backfill", "bench", "load-bench",
            "demo-data", "demo-inbox", "up", "silence", "ack")
METRIC_COLUMNS = ["org_id", "date", "dsp_type", "campaign_id", "campaign_name", "advertiser_id", "impressions",
                  "clicks", "conversions", "spend", "cpm", "ctr", "cvr"]
ISO_Z = "%Y-%m-%dT%H:%M:%SZ"


# --- helpers ----------------------------------------------------------------------------------------------------------


def rulesctl(*args: str, pg: str | None = None, ch: str | None = None, stdin: str | None = None,
             timeout: float = 60, **extra_env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_ALLOWED_HOSTS",)}
    if pg is not None:
        environment["DATABASE_URL"] = pg
    if ch is not None:
        environment["CLICKHOUSE_URL"] = ch
    environment.update(extra_env)
    return subprocess.run([RULESCTL, *args], env=environment, capture_output=True, text=True, timeout=timeout,
                          input=stdin if stdin is not None else "")


def assert_one_line_error(process: subprocess.CompletedProcess, code: int) -> str:
    """The process failed with `code`, wrote nothing on stdout and exactly one `rulesctl: …` line on stderr."""
    assert process.returncode == code, (process.returncode, process.stdout, process.stderr)
    assert process.stdout == "", process.stdout
    lines = process.stderr.splitlines()
    assert len(lines) == 1, process.stderr
    assert lines[0].startswith("rulesctl: "), process.stderr
    assert "Traceback" not in process.stderr
    return lines[0]


def pg_rows(url: str, sql: str, params=None) -> list[dict]:
    with psycopg.connect(url, row_factory=dict_row, autocommit=True) as connection:
        cursor = connection.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


def ch_client(clickhouse_local, url: str):
    return clickhouse_local.client(url.rsplit("/", 1)[1])


def ch_value(clickhouse_local, url: str, sql: str, **parameters):
    client = ch_client(clickhouse_local, url)
    try:
        return client.query(sql, parameters=parameters).result_rows[0][0]
    finally:
        client.close()


def insert_org(pg: str, timezone: str, modules=("alerts", "qa", "taxonomy")) -> int:
    return pg_rows(pg, "INSERT INTO organizations (name, slug, timezone, enabled_modules) VALUES (%s, %s, %s, %s) "
                       "RETURNING id", (f"Org {uuid.uuid4().hex[:6]}", f"org-{uuid.uuid4().hex[:8]}", timezone,
                                        Jsonb(list(modules))))[0]["id"]


def insert_rule(pg: str, org_id: int, conditions: dict, actions: dict | None = None, name: str = "rule") -> str:
    return pg_rows(pg, "INSERT INTO rules (org_id, name, module, enabled, conditions, actions) "
                       "VALUES (%s, %s, 'alerts', TRUE, %s, %s) RETURNING id::text AS id",
                   (org_id, name, Jsonb(conditions), Jsonb(actions or {})))[0]["id"]


def insert_metrics(clickhouse_local, ch: str, org_id: int, spends: dict[date, dict[str, int]]) -> None:
    """One campaign_metrics_daily row per (day, campaign) with the given spend and 10,000 impressions."""
    rows = []
    for day, by_campaign in spends.items():
        for campaign, spend in by_campaign.items():
            rows.append([org_id, day, "DV360", campaign, f"name of {campaign}", "adv-1", 10_000, 100, 5,
                         Decimal(spend), Decimal(spend) / 10, Decimal("0.01"), Decimal("0.05")])
    client = ch_client(clickhouse_local, ch)
    try:
        client.insert("campaign_metrics_daily", rows, column_names=METRIC_COLUMNS)
    finally:
        client.close()


# --- validate -----------------------------------------------------------------------------------------------------

VALID = {"conditions": {"window": "last_7_days", "schedule": "*/15 * * * *",
                        "logic": {">": [{"var": "spend"}, 1000]}},
         "actions": {"severity": "critical"}}
INVALID = {"conditions": {"window": "last_0_days", "schedule": "61 * * * *",
                          "logic": {">": [{"var": "spnd"}, 1000]}},
           "actions": {"notify": {"channels": ["webhook"], "webhook_url": "http://127.0.0.1:9000/hook"}}}


def test_validate_a_valid_file_exits_0(tmp_path):
    path = tmp_path / "rule.json"
    path.write_text(json.dumps(VALID))

    process = rulesctl("validate", str(path))

    assert process.returncode == 0, process.stderr
    assert process.stdout.splitlines() == [f"{path}: valid"]


def test_validate_prints_each_problem_with_its_path_and_exits_1(tmp_path):
    path = tmp_path / "rule.json"
    path.write_text(json.dumps(INVALID))

    process = rulesctl("validate", str(path))

    assert process.returncode == 1, process.stderr
    assert "Traceback" not in process.stdout + process.stderr
    lines = process.stdout.splitlines()
    assert len(lines) == 4, process.stdout
    by_path = {line.split(": ", 1)[0]: line for line in lines}
    assert set(by_path) == {"conditions.window", "conditions.schedule", "conditions.logic.>[0]",
                            "actions.notify.webhook_url"}
    assert by_path["conditions.logic.>[0]"] == 'conditions.logic.>[0]: unknown variable "spnd" (did you mean "spend"?)'
    assert "last_0_days" in by_path["conditions.window"]
    assert "61 * * * *" in by_path["conditions.schedule"]
    assert "127.0.0.1" in by_path["actions.notify.webhook_url"]
    assert not any(line.endswith(": valid") for line in lines)


def test_notify_allowed_hosts_admits_the_loopback_webhook(tmp_path):
    path = tmp_path / "rule.json"
    path.write_text(json.dumps(INVALID))

    process = rulesctl("validate", str(path), NOTIFY_ALLOWED_HOSTS="127.0.0.1")

    assert process.returncode == 1
    paths = [line.split(": ", 1)[0] for line in process.stdout.splitlines()]
    assert sorted(paths) == ["conditions.logic.>[0]", "conditions.schedule", "conditions.window"]

    allowed = {**VALID, "actions": INVALID["actions"]}
    ok = rulesctl("validate", "-", stdin=json.dumps(allowed), NOTIFY_ALLOWED_HOSTS="127.0.0.1")
    refused = rulesctl("validate", "-", stdin=json.dumps(allowed))

    assert ok.returncode == 0, ok.stdout
    assert refused.returncode == 1
    assert [line.split(": ", 1)[0] for line in refused.stdout.splitlines()] == ["actions.notify.webhook_url"]


def test_validate_reads_standard_input():
    dash = rulesctl("validate", "-", stdin=json.dumps(VALID))
    default = rulesctl("validate", stdin=json.dumps(VALID))
    bad = rulesctl("validate", "-", stdin=json.dumps(INVALID))

    assert dash.returncode == 0 and default.returncode == 0, (dash.stdout, default.stdout)
    assert dash.stdout.splitlines() == ["standard input: valid"]
    assert default.stdout == dash.stdout
    assert bad.returncode == 1 and len(bad.stdout.splitlines()) == 4


@pytest.mark.parametrize("text", ['{"conditions": ', "not json at all", ""])
def test_validate_not_json_is_one_line_exit_1(text):
    process = rulesctl("validate", "-", stdin=text)

    assert process.returncode == 1
    output = (process.stdout + process.stderr).splitlines()
    assert len(output) == 1, output
    assert "JSON" in output[0]
    assert "Traceback" not in process.stdout + process.stderr


def test_validate_missing_file_is_one_line_exit_2(tmp_path):
    missing = tmp_path / "nope.json"

    process = rulesctl("validate", str(missing))

    line = assert_one_line_error(process, 2)
    assert str(missing) in line


def test_validate_a_file_that_is_not_text_is_one_line(tmp_path):
    path = tmp_path / "rule.json"
    path.write_bytes(b'\xff\xfe{"conditions": 1}')

    process = rulesctl("validate", str(path))

    assert process.returncode in (1, 2)
    assert "Traceback" not in process.stderr
    assert len((process.stdout + process.stderr).splitlines()) == 1, process.stderr


def test_validate_deeply_nested_json_is_one_line():
    process = rulesctl("validate", "-", stdin="[" * 100_000 + "]" * 100_000)

    assert process.returncode == 1
    assert "Traceback" not in process.stderr
    assert len((process.stdout + process.stderr).splitlines()) == 1, process.stderr


# --- schema -------------------------------------------------------------------------------------------------------


def test_schema_prints_the_json_schema():
    process = rulesctl("schema")

    assert process.returncode == 0, process.stderr
    schema = json.loads(process.stdout)
    assert isinstance(schema, dict)
    assert "conditions" in schema["properties"] and "actions" in schema["properties"]
    assert schema["properties"]["conditions"] and schema["properties"]["actions"]


def test_schema_into_a_reader_that_has_gone_ends_quietly():
    # As `rulesctl schema | head -1` does once head has its line: every write finds the pipe closed.
    process = subprocess.Popen([RULESCTL, "schema"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()
    _, stderr = process.communicate(timeout=60)

    assert stderr == b""
    assert process.returncode == 141


# --- naming conventions -------------------------------------------------------------------------------------------



def test_validate_convention_of_a_valid_file_exits_0(tmp_path):
    path = tmp_path / "convention.json"
    path.write_text(json.dumps(CONVENTION))

    from_file = rulesctl("validate-convention", str(path))
    from_input = rulesctl("validate-convention", "-", stdin=json.dumps(CONVENTION))

    assert from_file.returncode == 0, from_file.stdout
    assert from_file.stdout.splitlines() == [f"{path}: valid"]
    assert from_input.returncode == 0 and from_input.stdout.splitlines() == ["standard input: valid"]


def test_validate_convention_prints_each_problem_with_its_path_and_exits_1():
    invalid = {"delimiter": "", "max_tokens": 9, "tokens": [
        {"name": "market", "values": ["US", ""]},
        {"name": "market", "pattern": "([a-z"},
        {"name": "month", "date": "YYYYQQ"},
        {"name": "dsp", "equals": "dsp"},
        {"name": "label", "free": True, "values": ["x"]}]}

    process = rulesctl("validate-convention", stdin=json.dumps(invalid))

    assert process.returncode == 1, process.stdout
    by_path = {line.split(": ", 1)[0]: line.split(": ", 1)[1] for line in process.stdout.splitlines()}
    assert set(by_path) == {"delimiter", "tokens[0].values[1]", "tokens[1].name", "tokens[1].pattern",
                            "tokens[2].date", "tokens[3].equals", "tokens[4]", "max_tokens"}
    assert by_path["tokens[1].name"] == '"market" names an earlier token too'
    assert by_path["tokens[1].pattern"].startswith("invalid RE2 pattern")
    assert by_path["tokens[4]"] == "needs exactly one of values, pattern, date, free, equals, found values, free"
    assert by_path["max_tokens"] == "is 9, but the convention has 5 tokens"


def test_validate_convention_of_text_that_is_not_json_is_one_line_exit_1():
    process = rulesctl("validate-convention", "-", stdin='{"delimiter": ')

    assert process.returncode == 1
    assert process.stdout.splitlines() == [process.stdout.strip()] and "not JSON" in process.stdout


def test_schema_of_conventions_describes_every_token_kind():
    process = rulesctl("schema", "--convention")

    assert process.returncode == 0, process.stderr
    schema = json.loads(process.stdout)
    assert schema["required"] == ["delimiter", "tokens"]
    token = schema["$defs"]["Token"]
    assert [kind["required"] for kind in token["oneOf"]] == [["values"], ["pattern"], ["date"], ["free"], ["equals"]]
    assert token["oneOf"][4]["properties"]["equals"]["enum"] == ["dsp_type", "advertiser_id"]
    assert "naming" in json.dumps(rulesctl("schema").stdout)


# --- backfill -----------------------------------------------------------------------------------------------------

BERLIN = ZoneInfo("Europe/Berlin")
DAY_ROW = re.compile(r"^(\d{4}-\d\d-\d\d)\s+(\d+)\s+(\d+(?:-\d+)?)\s+(\d+)\s+(\d+)$")


def table_rows(stdout: str) -> list[tuple[str, str, int, int, int]]:
    """(fire time, status, entities, matched, alerts) of each fire time, from `backfill --json`."""
    summaries = [json.loads(line) for line in stdout.splitlines()]
    return [(s["scheduled_for"], s["status"], s["entities"], s["matched"], s["alerts"]) for s in summaries]


def day_rows(stdout: str) -> list[tuple[str, int, str, int, int]]:
    """(local day, fire times, matched, alerts, failed) of each line of the per-day table."""
    return [(m[1], int(m[2]), m[3], int(m[4]), int(m[5])) for m in map(DAY_ROW.match, stdout.splitlines()) if m]


@pytest.fixture
def backfill_case(pg_url, migrated_ch_url, clickhouse_local):
    """A Berlin org, a rule `spend > 100` over yesterday firing at 00, 06, 12 and 18 local time, and metrics.

    Three local days D1..D2 (ten days ago). Spend by day: D1-1: c1 over; D1: c1, c2 over; D1+1: none over; so a
    fire time on D1 sees 1 match, on D1+1 2 matches, on D1+2 none, each of 3 entities. A huge spend dated D1+2 must
    never be read (yesterday only).
    """
    first = datetime.now(BERLIN).date() - timedelta(days=10)
    last = first + timedelta(days=2)
    org = insert_org(pg_url, "Europe/Berlin")
    owner = pg_rows(pg_url, "INSERT INTO users (email, password_hash, full_name, email_verified) "
                            "VALUES ('o@example.com', 'x', 'O', TRUE) RETURNING id")[0]["id"]
    pg_rows(pg_url, "INSERT INTO org_memberships (user_id, org_id, role) VALUES (%s, %s, 'owner')", (owner, org))
    rule = insert_rule(pg_url, org, {"window": "yesterday", "schedule": "0 */6 * * *",
                                     "logic": {">": [{"var": "spend"}, 100]}},
                       {"cooldown_minutes": 60, "notify": {"channels": ["in_app"]}})
    day = timedelta(days=1)
    insert_metrics(clickhouse_local, migrated_ch_url, org, {
        first - day: {"c1": 500, "c2": 50, "c3": 50},
        first: {"c1": 500, "c2": 500, "c3": 50},
        first + day: {"c1": 50, "c2": 50, "c3": 50},
        first + 2 * day: {"c1": 90000, "c2": 90000, "c3": 90000},
    })
    expected = []  # (fire time text, matched)
    for offset, matched in ((0, 1), (1, 2), (2, 0)):
        for hour in (0, 6, 12, 18):
            local = datetime.combine(first + offset * day, datetime.min.time().replace(hour=hour), tzinfo=BERLIN)
            expected.append((local.astimezone(UTC).strftime(ISO_Z), matched))
    return {"pg": pg_url, "ch": migrated_ch_url, "rule": rule, "first": first.isoformat(), "last": last.isoformat(),
            "expected": expected}


def _ch_count(clickhouse_local, case, table):
    return ch_value(clickhouse_local, case["ch"], f"SELECT count() FROM {table} WHERE rule_id = {{r:UUID}}",
                    r=case["rule"])


def test_backfill_dry_prints_one_row_per_fire_time_and_writes_nothing(backfill_case, clickhouse_local):
    case = backfill_case

    process = rulesctl("backfill", case["rule"], "--from", case["first"], "--to", case["last"], "--json",
                       pg=case["pg"], ch=case["ch"])

    assert process.returncode == 0, process.stderr
    rows = table_rows(process.stdout)
    assert len(rows) == 12  # 4 fire times per local day, 3 days
    assert [(r[0], r[3]) for r in rows] == case["expected"]
    assert all(r[1] == "succeeded" and r[2] == 3 and r[4] == 0 for r in rows), rows
    assert _ch_count(clickhouse_local, case, "rule_evaluations") == 0
    assert _ch_count(clickhouse_local, case, "alert_events") == 0
    runs = pg_rows(case["pg"], "SELECT trigger, dry_run FROM rule_runs WHERE rule_id = %s", (case["rule"],))
    assert [(run["trigger"], run["dry_run"]) for run in runs] == [("backfill", True)] * 12
    assert pg_rows(case["pg"], "SELECT count(*) AS n FROM notifications")[0]["n"] == 0


def test_backfill_write_writes_each_fire_time_once(backfill_case, clickhouse_local):
    case = backfill_case
    args = ("backfill", case["rule"], "--from", case["first"], "--to", case["last"], "--write", "--json")

    process = rulesctl(*args, pg=case["pg"], ch=case["ch"])

    assert process.returncode == 0, process.stderr
    rows = table_rows(process.stdout)
    assert [(r[0], r[3]) for r in rows] == case["expected"]
    # cooldown 60 min, fire times 6 h apart: every match alerts
    assert [r[4] for r in rows] == [m for _t, m in case["expected"]]
    client = ch_client(clickhouse_local, case["ch"])
    try:
        per_time = client.query(
            "SELECT formatDateTime(eval_time, '%Y-%m-%dT%H:%i:%SZ', 'UTC') AS t, count() AS n, sum(matched) AS m "
            "FROM rule_evaluations WHERE rule_id = {r:UUID} GROUP BY t ORDER BY t", parameters={"r": case["rule"]}
        ).result_rows
        alerts = client.query("SELECT entity_id, count() FROM alert_events WHERE rule_id = {r:UUID} "
                              "GROUP BY entity_id ORDER BY entity_id", parameters={"r": case["rule"]}).result_rows
    finally:
        client.close()
    assert [(t, int(n), int(m)) for t, n, m in per_time] == [(t, 3, m) for t, m in case["expected"]]
    assert [(e, int(n)) for e, n in alerts] == [("c1", 8), ("c2", 4)]
    runs = pg_rows(case["pg"], "SELECT trigger, dry_run, to_char(scheduled_for, 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS t "
                               "FROM rule_runs WHERE rule_id = %s ORDER BY scheduled_for", (case["rule"],))
    assert [(r["trigger"], r["dry_run"], r["t"]) for r in runs] == [("backfill", False, t) for t, _m in case["expected"]]
    assert pg_rows(case["pg"], "SELECT count(*) AS n FROM notifications")[0]["n"] == 0

    again = rulesctl(*args, pg=case["pg"], ch=case["ch"])

    assert again.returncode == 0, again.stderr
    assert [(r[0], r[3]) for r in table_rows(again.stdout)] == case["expected"]
    assert _ch_count(clickhouse_local, case, "rule_evaluations") == 36
    assert _ch_count(clickhouse_local, case, "alert_events") == 12
    assert pg_rows(case["pg"], "SELECT count(*) AS n FROM rule_runs WHERE rule_id = %s", (case["rule"],))[0]["n"] == 12


def test_backfill_prints_one_line_per_local_day(backfill_case):
    case = backfill_case
    first = date.fromisoformat(case["first"])

    process = rulesctl("backfill", case["rule"], "--from", case["first"], "--to", case["last"], "--write",
                       pg=case["pg"], ch=case["ch"])

    assert process.returncode == 0, process.stderr
    # 4 fire times a day, each day's fire times share yesterday's window: 1, 2, then 0 matches, each alerting
    assert day_rows(process.stdout) == [(first.isoformat(), 4, "1", 4, 0),
                                        ((first + timedelta(days=1)).isoformat(), 4, "2", 8, 0),
                                        ((first + timedelta(days=2)).isoformat(), 4, "0", 0, 0)]
    assert process.stdout.splitlines()[-1] == "12 fire times (3 evaluated), 12 matches, 12 alerts, 0 failed"


def test_backfill_day_lines_show_the_matched_range_failures_and_errors(backfill_case):
    case = backfill_case
    second = date.fromisoformat(case["first"]) + timedelta(days=1)
    # The second day's first fire time already has a failed run: the backfill returns it as it is, and the day's
    # next fire time is the one evaluated for the others of that day.
    taken = datetime.combine(second, datetime.min.time(), tzinfo=BERLIN).astimezone(UTC).replace(tzinfo=None)
    pg_rows(case["pg"], "INSERT INTO rule_runs (rule_id, org_id, trigger, scheduled_for, status, state, error) "
                        "SELECT id, org_id, 'schedule', %s, 'failed', 'failed', 'ClickHouse was down' FROM rules "
                        "WHERE id = %s", (taken, case["rule"]))

    process = rulesctl("backfill", case["rule"], "--from", case["first"], "--to", case["last"], "--write",
                       pg=case["pg"], ch=case["ch"])

    assert process.returncode == 0, process.stderr
    lines = process.stdout.splitlines()
    second_line = lines.index(next(line for line in lines if line.startswith(second.isoformat())))
    assert day_rows(lines[second_line]) == [(second.isoformat(), 4, "0-2", 6, 1)]
    assert lines[second_line + 1] == "  1 × ClickHouse was down"
    assert lines[-1] == "12 fire times (3 evaluated), 10 matches, 10 alerts, 1 failed"


def test_backfill_bad_arguments_exit_2_with_one_line(backfill_case, clickhouse_local):
    case = backfill_case
    cases = {
        "to before from": [case["rule"], "--from", case["last"], "--to", case["first"]],
        "bad date": [case["rule"], "--from", "2025-02-30", "--to", case["last"]],
        "not a uuid": ["rule-1", "--from", case["first"], "--to", case["last"]],
        "unknown rule": [str(uuid.uuid4()), "--from", case["first"], "--to", case["last"]],
        "missing --to": [case["rule"], "--from", case["first"]],
    }

    for name, args in cases.items():
        process = rulesctl("backfill", *args, "--write", pg=case["pg"], ch=case["ch"])
        assert process.returncode == 2, (name, process.stdout, process.stderr)
        assert_one_line_error(process, 2)

    assert pg_rows(case["pg"], "SELECT count(*) AS n FROM rule_runs")[0]["n"] == 0
    assert _ch_count(clickhouse_local, case, "rule_evaluations") == 0


# --- bench --------------------------------------------------------------------------------------------------------


def _pg_bench_databases() -> set[str]:
    return {r["datname"] for r in pg_rows(PG_SERVER, "SELECT datname FROM pg_database WHERE datname LIKE 'rules\\_bench\\_%%'")}


def _pg_in_use(name: str) -> bool:
    return bool(pg_rows(PG_SERVER, "SELECT 1 FROM pg_stat_activity WHERE datname = %s", (name,)))


def test_bench_prints_the_figures_and_drops_its_scratch_databases(pg_url, migrated_ch_url, clickhouse_local):
    before = _pg_bench_databases()

    process = rulesctl("bench", "--entities", "200", "--days", "3", "--rules", "3", "--json",
                       pg=pg_url, ch=migrated_ch_url, timeout=120)

    assert process.returncode == 0, process.stderr
    lines = process.stdout.splitlines()
    assert len(lines) == 1, process.stdout
    figures = json.loads(lines[0])
    keys = {"entities", "days", "rules", "evaluations", "sql_evals_per_s", "interpreter_evals_per_s", "speedup",
            "bare_query_s", "engine_s", "peak_rss_mb"}
    assert keys <= set(figures), figures
    # 200 campaigns with data on each of the 3 days up to today, 3 rules: each rule sees the 200 campaigns
    assert (figures["entities"], figures["days"], figures["rules"], figures["evaluations"]) == (200, 3, 3, 600)
    # the naming rule reads yesterday's 200 campaign names
    assert figures["naming_names"] == 200 and figures["naming_sql_s"] > 0 and figures["naming_interpreter_s"] > 0
    for key in keys - {"entities", "days", "rules", "evaluations"}:
        assert isinstance(figures[key], (int, float)) and figures[key] > 0, (key, figures[key])
    # The same rules as separate runs, beside the batch that sql_evals_per_s and engine_s describe.
    assert all(isinstance(figures[key], (int, float)) and figures[key] > 0
               for key in ("separate_s", "separate_evals_per_s")), figures
    # Each path's stages, read from its runs' transitions, fit within the time that path took.
    assert isinstance(figures["matched"], int) and 0 <= figures["matched"] <= figures["evaluations"]
    for path, seconds in (("batch", figures["engine_s"]), ("separate", figures["separate_s"])):
        stages = figures["stages_s"][path]
        assert set(stages) == {"evaluate", "alert", "alert_write"}, stages
        assert all(value >= 0 for value in stages.values()) and stages["evaluate"] > 0, stages
        assert sum(stages.values()) <= seconds + 0.005, (path, stages, seconds)

    client = clickhouse_local.client()
    try:
        leftover = [r[0] for r in client.query("SELECT name FROM system.databases WHERE name LIKE 'rules_bench_%'")
                    .result_rows]
    finally:
        client.close()
    assert leftover == []
    # PostgreSQL is shared with other test runs, which may be benchmarking right now: a database that is new since
    # the start and still there, unused, after a few seconds is ours.
    new = _pg_bench_databases() - before
    deadline = time.monotonic() + 10
    while new and time.monotonic() < deadline:
        time.sleep(0.5)
        new = {name for name in new & _pg_bench_databases() if not _pg_in_use(name)}
    assert new == set()
    assert pg_rows(pg_url, "SELECT count(*) AS n FROM rules")[0]["n"] == 0


@pytest.mark.slow
def test_load_bench_runs_every_rule_once_per_fire_time_and_cleans_up(pg_url, migrated_ch_url, clickhouse_local):
    before = {r["datname"] for r in pg_rows(PG_SERVER, "SELECT datname FROM pg_database")}

    process = rulesctl("load-bench", "--rules", "6", "--orgs", "2", "--campaigns", "60", "--minutes", "1",
                       "--redis-db", "4", "--json", pg=pg_url, ch=migrated_ch_url, timeout=400)

    assert process.returncode == 0, process.stderr
    figures = json.loads(process.stdout.splitlines()[-1])
    assert {k: figures[k] for k in ("rules", "orgs", "fire_times", "runs_expected", "runs_succeeded", "runs_failed",
                                    "runs_missing", "runs_doubled")} == {
        "rules": 6, "orgs": 2, "fire_times": 1, "runs_expected": 6, "runs_succeeded": 6, "runs_failed": 0,
        "runs_missing": 0, "runs_doubled": 0}
    assert 0 < figures["lag_median_s"] <= figures["lag_p99_s"] <= figures["lag_max_s"]
    assert {"worker", "beat", "worker child 1", "worker child 2"} <= set(figures["peak_rss_mb"])
    after = {r["datname"] for r in pg_rows(PG_SERVER, "SELECT datname FROM pg_database")}
    assert not {name for name in after - before if name.startswith("rules_load_")}
    client = clickhouse_local.client()
    try:
        assert client.query("SELECT count() FROM system.databases WHERE name LIKE 'rules_load_%'").result_rows == [(0,)]
    finally:
        client.close()


def test_load_bench_refuses_more_organizations_than_rules():
    assert "--orgs: must not be more than --rules" in assert_one_line_error(
        rulesctl("load-bench", "--rules", "2", "--orgs", "3"), 2)


# --- demo-data ----------------------------------------------------------------------------------------------------


def _demo_counts(pg: str, ch: str, clickhouse_local) -> dict[str, int]:
    counts = {table: pg_rows(pg, f"SELECT count(*) AS n FROM {table}")[0]["n"]
              for table in ("organizations", "users", "org_memberships", "dsp_accounts", "entity_permissions", "rules",
                            "rule_runs")}
    for table in ("campaign_metrics_daily", "pacing_snapshots", "rule_evaluations", "alert_events"):
        counts[table] = int(ch_value(clickhouse_local, ch, f"SELECT count() FROM {table}"))
    return counts


def test_demo_data_loads_once_and_its_rules_match(pg_url, migrated_ch_url, clickhouse_local):
    pg, ch = pg_url, migrated_ch_url

    first = rulesctl("demo-data", pg=pg, ch=ch)

    assert first.returncode == 0, first.stderr
    [org] = pg_rows(pg, "SELECT id, timezone FROM organizations WHERE slug = 'demo'")
    assert pg_rows(pg, "SELECT count(*) AS n FROM organizations")[0]["n"] == 1
    roles = {r["role"] for r in pg_rows(pg, "SELECT role FROM org_memberships WHERE org_id = %s", (org["id"],))}
    assert roles == {"owner", "admin", "member", "viewer"}
    assert pg_rows(pg, "SELECT count(*) AS n FROM dsp_accounts WHERE org_id = %s", (org["id"],))[0]["n"] >= 1
    grants = pg_rows(pg, "SELECT expires_at IS NOT NULL AND expires_at < now() AT TIME ZONE 'UTC' AS expired "
                         "FROM entity_permissions WHERE org_id = %s", (org["id"],))
    assert any(g["expired"] for g in grants) and any(not g["expired"] for g in grants)
    rules = pg_rows(pg, "SELECT id::text AS id, name, module FROM rules WHERE org_id = %s AND enabled ORDER BY name",
                    (org["id"],))
    assert len(rules) == 5
    assert {r["module"] for r in rules} == {"alerts", "qa", "taxonomy"}
    today = datetime.now(ZoneInfo(org["timezone"])).date()
    client = ch_client(clickhouse_local, ch)
    try:
        metric_days, last_day, metric_orgs = client.query(
            "SELECT uniqExact(date), max(date), groupUniqArray(org_id) FROM campaign_metrics_daily").result_rows[0]
        snapshots, snapshot_orgs = client.query(
            "SELECT count(), groupUniqArray(org_id) FROM pacing_snapshots").result_rows[0]
    finally:
        client.close()
    assert (metric_days, list(metric_orgs)) == (60, [org["id"]])
    assert last_day in (today, today - timedelta(days=1))  # a load right at local midnight may straddle it
    assert snapshots > 0 and list(snapshot_orgs) == [org["id"]]
    counts = _demo_counts(pg, ch, clickhouse_local)

    second = rulesctl("demo-data", pg=pg, ch=ch)

    assert second.returncode == 0, second.stderr
    assert "already loaded" in second.stdout
    assert _demo_counts(pg, ch, clickhouse_local) == counts

    matched_by_module: dict[str, int] = {}
    alerted: dict[str, set[str]] = {}
    for rule in rules:
        process = rulesctl("run", rule["id"], "--json", pg=pg, ch=ch)
        assert process.returncode == 0, (rule["name"], process.stdout, process.stderr)
        result = json.loads(process.stdout)
        # demo/data.py: the search account synced a day before the others; the pacing rule covers it too and
        # does not wait for it
        if rule["name"] == "Search overspend yesterday":
            assert (result["status"], result["stale"]) == ("waiting", False), result
            assert "GOOGLE_ADS account adv-400 (Northwind Search) last synced" in result["waiting_for"]
            continue
        assert result["status"] == "succeeded", (rule["name"], result)
        assert result["stale"] is (rule["name"] == "Insertion orders under-pacing"), (rule["name"], result)
        if rule["name"] == "CTR collapsed week over week":
            # pending_runs 2: its first run makes the collapsed campaigns pending and alerts on none of them
            assert result["matched"] > 0 and result["lifecycle"]["pending"] == result["matched"], result
            assert result["alerts"] == 0, result
        matched_by_module[rule["module"]] = matched_by_module.get(rule["module"], 0) + result["matched"]
        client = ch_client(clickhouse_local, ch)
        try:
            alerted[rule["name"]] = {row[0] for row in client.query(
                "SELECT entity_id FROM alert_events WHERE rule_id = {r:UUID}", parameters={"r": rule["id"]}).result_rows}
        finally:
            client.close()
    assert all(matched_by_module[module] > 0 for module in ("alerts", "qa", "taxonomy")), matched_by_module
    # demo/data.py: campaigns 2, 5, 9, 14, 18, 22, 26, 31 and 34 (12 per account, in account order) carry the broken
    # names, and the insertion orders IO-1003, IO-1007 and IO-1011 pace at 55-70 % while the others pace at 92-108 %
    assert alerted["Campaign names break the convention"] == {"dv360-1002", "dv360-1005", "dv360-1009", "ttd-1102",
                                                              "ttd-1106", "ttd-1110", "meta-1202", "meta-1207",
                                                              "meta-1210"}
    assert alerted["Insertion orders under-pacing"] == {"IO-1003", "IO-1007", "IO-1011"}
    # The owner silenced one overspending campaign for the overspend rule: alerted, and told to nobody.
    [silence] = pg_rows(pg, "SELECT rule_id::text AS rule_id, entity_id, created_by FROM silences")
    overspend = next(rule["id"] for rule in rules if rule["name"] == "Overspend yesterday")
    assert (silence["rule_id"], silence["entity_id"]) == (overspend, "dv360-1007")
    assert "dv360-1007" in alerted["Overspend yesterday"]
    [run] = pg_rows(pg, "SELECT silenced FROM rule_runs WHERE rule_id = %s", (overspend,))
    assert run["silenced"] == 1


def test_demo_data_loads_the_metrics_again_into_a_clickhouse_without_them(pg_url, migrated_ch_url, clickhouse_local):
    """A new ./data beside a PostgreSQL that kept the demo: the metrics come back and the rules match again."""
    pg, ch = pg_url, migrated_ch_url
    assert rulesctl("demo-data", pg=pg, ch=ch).returncode == 0
    loaded = _demo_counts(pg, ch, clickhouse_local)
    client = ch_client(clickhouse_local, ch)
    try:
        for table in ("campaign_metrics_daily", "pacing_snapshots"):
            client.command(f"TRUNCATE TABLE {table}")
    finally:
        client.close()
    pg_rows(pg, "UPDATE dsp_accounts SET last_sync_at = last_sync_at - interval '5 days'")
    before = datetime.now(UTC).replace(tzinfo=None, microsecond=0)

    again = rulesctl("demo-data", pg=pg, ch=ch)

    assert again.returncode == 0, again.stderr
    assert "found without metrics" in again.stdout, again.stdout
    assert _demo_counts(pg, ch, clickhouse_local) == loaded
    synced = {row["external_id"]: row["last_sync_at"] for row in pg_rows(
        pg, "SELECT external_id, last_sync_at FROM dsp_accounts")}
    assert all(at >= before for external_id, at in synced.items() if external_id != "adv-400"), synced
    assert synced["adv-400"] == synced["adv-100"] - timedelta(days=1), synced
    [overspend] = pg_rows(pg, "SELECT id::text AS id FROM rules WHERE name = 'Overspend yesterday'")
    process = rulesctl("run", overspend["id"], "--json", pg=pg, ch=ch)
    result = json.loads(process.stdout)
    assert (result["status"], result["stale"]) == ("succeeded", False), result
    assert result["matched"] > 0, result


# --- runs ---------------------------------------------------------------------------------------------------------


def test_runs_lists_the_latest_runs_newest_first(pg_url, migrated_ch_url, clickhouse_local):
    pg, ch = pg_url, migrated_ch_url
    org = insert_org(pg, "UTC")
    rule_a = insert_rule(pg, org, {"window": "yesterday", "logic": {">": [{"var": "spend"}, 100]}}, name="A")
    rule_b = insert_rule(pg, org, {"window": "yesterday", "logic": {"<": [{"var": "spend"}, 100]}}, name="B")
    t0 = datetime.now(UTC).replace(hour=9, minute=0, second=0, microsecond=0) - timedelta(days=3)
    insert_metrics(clickhouse_local, ch, org, {(t0 + timedelta(days=k)).date(): {"c1": 500, "c2": 50}
                                               for k in range(-1, 3)})
    # scheduled times deliberately out of order: "newest" is the run made last
    plan = [(rule_a, t0 + timedelta(days=1), []), (rule_b, t0, []), (rule_a, t0 + timedelta(days=2), ["--dry-run"])]
    made = []
    for rule, at, extra in plan:
        process = rulesctl("run", rule, "--at", at.strftime(ISO_Z), "--json", *extra, pg=pg, ch=ch)
        assert process.returncode == 0, process.stderr
        made.append(json.loads(process.stdout))
    assert [(m["entities"], m["matched"]) for m in made] == [(2, 1), (2, 1), (2, 1)]
    newest_first = list(reversed(made))

    table = rulesctl("runs", pg=pg, ch=ch)
    as_json = rulesctl("runs", "--json", pg=pg, ch=ch)
    only_a = rulesctl("runs", "--rule", rule_a, "--json", pg=pg, ch=ch)
    one = rulesctl("runs", "--limit", "1", "--json", pg=pg, ch=ch)

    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert len(lines) == 4, table.stdout  # a header and the three runs
    for heading in ("rule", "trigger", "scheduled for", "status", "entities", "matched", "alerts", "duration", "error"):
        assert heading in lines[0]
    for line, run in zip(lines[1:], newest_first):
        assert line.startswith(run["rule_id"]), (line, run)
        assert run["scheduled_for"] in line and "manual" in line and "succeeded" in line

    assert as_json.returncode == 0, as_json.stderr
    summaries = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [s["run_id"] for s in summaries] == [m["run_id"] for m in newest_first]
    assert all(s["trigger"] == "manual" for s in summaries)
    assert [(s["rule_id"], s["scheduled_for"], s["dry_run"], s["matched"]) for s in summaries] == [
        (rule_a, (t0 + timedelta(days=2)).strftime(ISO_Z), True, 1),
        (rule_b, t0.strftime(ISO_Z), False, 1),
        (rule_a, (t0 + timedelta(days=1)).strftime(ISO_Z), False, 1),
    ]

    assert only_a.returncode == 0
    assert [json.loads(line)["run_id"] for line in only_a.stdout.splitlines()] == [made[2]["run_id"], made[0]["run_id"]]
    assert one.returncode == 0
    assert [json.loads(line)["run_id"] for line in one.stdout.splitlines()] == [made[2]["run_id"]]


@pytest.mark.parametrize("args", [["--limit", "0"], ["--limit", "many"], ["--rule", "not-a-uuid"]])
def test_runs_bad_arguments_exit_2(pg_url, migrated_ch_url, args):
    assert_one_line_error(rulesctl("runs", *args, pg=pg_url, ch=migrated_ch_url), 2)


# --- help, usage, environment -------------------------------------------------------------------------------------


def test_help_of_every_command_exits_0():
    top = rulesctl("--help")

    assert top.returncode == 0, top.stderr
    for command in COMMANDS:
        assert command in top.stdout
        process = rulesctl(command, "--help")
        assert process.returncode == 0, (command, process.stderr)
        assert process.stdout.startswith(f"usage: rulesctl {command}"), (command, process.stdout)
        assert "--help" in process.stdout


@pytest.mark.parametrize("args", [["frobnicate"], ["runs", "--frobnicate"], ["schema", "extra"], [],
                                  ["bench", "--entities", "0"], ["run"], ["runs", "--limit", "0"],
                                  ["runs", "--limit", "many"], ["runs", "--rule", "not-a-uuid"]])
def test_unknown_command_or_option_exits_2_with_one_line(args):
    assert_one_line_error(rulesctl(*args), 2)


def test_bad_environment_value_is_one_line_naming_it(pg_url):
    ch = "http://default@127.0.0.1:8123/rules"
    cases = [("CLICKHOUSE_URL", "ftp://x"), ("CLICKHOUSE_URL", "http://127.0.0.1:notaport/rules"),
             ("DATABASE_URL", "mysql://h/db"), ("REDIS_URL", "http://localhost:6379")]

    for variable, value in cases:
        env = {"DATABASE_URL": pg_url, "CLICKHOUSE_URL": ch, variable: value}
        process = rulesctl("demo-data", pg=env.pop("DATABASE_URL"), ch=env.pop("CLICKHOUSE_URL"), **env)
        line = assert_one_line_error(process, 1)
        assert line.startswith(f"rulesctl: {variable}"), line

    assert pg_rows(pg_url, "SELECT count(*) AS n FROM organizations")[0]["n"] == 0


def test_clickhouse_down_is_one_line_and_demo_data_writes_nothing(pg_url):
    process = rulesctl("demo-data", pg=pg_url, ch=f"http://default@127.0.0.1:{free_port()}/rules")

    line = assert_one_line_error(process, 1)
    assert "ClickHouse" in line, line
    for table in ("organizations", "users", "rules", "dsp_accounts"):
        assert pg_rows(pg_url, f"SELECT count(*) AS n FROM {table}")[0]["n"] == 0, table
