"""`rulesctl run` through the installed console script (the README's Commands), on real PostgreSQL and the embedded
ClickHouse.

The data and the rule are those of test_runs: at T, SPEND_AND_CTR over yesterday_data has 3 entities (c1, c2, c3)
of which only c1 matches.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid

import pytest

from tests.conftest import RULESCTL
from tests.integration.test_runs import SPEND_AND_CTR, SUMMARY_KEYS, T, yesterday_data

AT = T.strftime("%Y-%m-%dT%H:%M:%SZ")


def rulesctl(env, *args: str) -> subprocess.CompletedProcess:
    environment = dict(os.environ)
    if env is not None:
        environment.update(DATABASE_URL=env.pg_url, CLICKHOUSE_URL=env.ch_url)
    return subprocess.run([RULESCTL, *args], env=environment, capture_output=True, text=True, timeout=60)


def summary_of(process: subprocess.CompletedProcess) -> dict:
    lines = process.stdout.splitlines()
    assert len(lines) == 1, process.stdout
    result = json.loads(lines[0])
    assert isinstance(result, dict)
    return result


@pytest.fixture
def rule(env):
    org = env.org()
    yesterday_data(env, org)
    return env.rule(org, SPEND_AND_CTR, {"severity": "critical"})


def test_run_json_prints_the_summary_and_exits_0(env, rule):
    process = rulesctl(env, "run", rule, "--at", AT, "--json")

    assert process.returncode == 0, process.stderr
    result = summary_of(process)
    assert SUMMARY_KEYS <= set(result)
    assert (result["rule_id"], result["status"], result["path"], result["dry_run"]) == (rule, "succeeded", "sql", False)
    assert (result["entities"], result["matched"], result["alerts"]) == (3, 1, 1)
    assert (result["scheduled_for"], result["error"], result["notified_users"]) == (AT, None, [])
    [run] = env.runs(rule)
    assert (str(run["id"]), run["trigger"], run["triggered_by"]) == (result["run_id"], "manual", None)
    assert [e["entity_id"] for e in env.evaluations(rule, T)] == ["c1", "c2", "c3"]
    assert [a["entity_id"] for a in env.alerts(rule, T)] == ["c1"]

    again = rulesctl(env, "run", rule, "--at", AT, "--json")

    assert again.returncode == 0
    assert summary_of(again) == result
    assert env.count("rule_evaluations", rule) == 3 and env.count("alert_events", rule) == 1


def test_plain_output_names_the_run(env, rule):
    process = rulesctl(env, "run", rule, "--at", AT)

    assert process.returncode == 0, process.stderr
    [run] = env.runs(rule)
    assert str(run["id"]) in process.stdout and "succeeded" in process.stdout


def test_failing_rule_exits_1(env):
    org = env.org()
    rule = env.rule(org, {"window": "yesterday", "logic": {">": [{"var": "spendd"}, 1]}})

    process = rulesctl(env, "run", rule, "--at", AT, "--json")

    assert process.returncode == 1
    result = summary_of(process)
    assert result["status"] == "failed"
    assert 'conditions.logic.>[0]: unknown variable "spendd"' in result["error"]
    assert env.count("rule_evaluations") == 0 and env.count("alert_events") == 0


@pytest.mark.parametrize("case", ["unknown rule", "not a uuid", "bad --at", "unknown user"])
def test_bad_usage_exits_2_with_one_line_and_writes_nothing(env, rule, case):
    args = {
        "unknown rule": ["run", str(uuid.uuid4()), "--at", AT, "--json"],
        "not a uuid": ["run", "rule-1; DROP TABLE rules", "--at", AT, "--json"],
        "bad --at": ["run", rule, "--at", "2025-13-45T99:00", "--json"],
        "unknown user": ["run", rule, "--at", AT, "--user", "2000000000", "--json"],
    }[case]

    process = rulesctl(env, *args)

    assert process.returncode == 2
    assert process.stdout == ""
    lines = process.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("rulesctl: "), process.stderr
    assert "Traceback" not in process.stderr
    assert env.runs() == [] and env.audit_logs() == []
    assert env.count("rule_evaluations") == 0 and env.count("alert_events") == 0


def test_dry_run_writes_nothing_in_clickhouse(env, rule):
    process = rulesctl(env, "run", rule, "--at", AT, "--dry-run", "--json")

    assert process.returncode == 0, process.stderr
    result = summary_of(process)
    assert (result["status"], result["dry_run"], result["entities"], result["matched"], result["alerts"]) == (
        "succeeded", True, 3, 1, 0)
    assert env.count("rule_evaluations") == 0 and env.count("alert_events") == 0
    assert [run["dry_run"] for run in env.runs(rule)] == [True]


def test_user_run_is_audited(env, rule):
    org = env.pg("SELECT org_id FROM rules WHERE id = %s", (rule,))[0]["org_id"]
    user = env.user()
    env.member(user, org, "owner")

    process = rulesctl(env, "run", rule, "--at", AT, "--user", str(user), "--json")

    assert process.returncode == 0, process.stderr
    result = summary_of(process)
    [log] = env.audit_logs()
    assert (log["org_id"], log["user_id"], log["action"], log["resource_type"], log["resource_id"]) == (
        org, user, "rule.run", "rule", rule)
    assert log["details"] == {"run_id": result["run_id"], "dry_run": False}
    assert env.runs(rule)[0]["triggered_by"] == user


def test_help_exits_0():
    top = rulesctl(None, "--help")
    run = rulesctl(None, "run", "--help")

    assert top.returncode == 0 and "run" in top.stdout
    assert run.returncode == 0
    for option in ("--at", "--dry-run", "--user", "--json", "RULE_ID"):
        assert option in run.stdout
