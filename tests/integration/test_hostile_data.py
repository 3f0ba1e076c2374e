"""Hostile data through a whole run (the README's Guarantees): strings built to break SQL are stored and compared as
plain data, a catastrophic regex runs in linear time, and one organization's rule never reads another's rows or
notifies its users. Plus `rulesctl validate` on malformed input: one clear line, exit 1, no traceback."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta

import pytest

from tests.conftest import RULESCTL
from worker.runner import RuleRunner, RunRequest

T = datetime.now(UTC).replace(hour=3, minute=0, second=0, microsecond=0) - timedelta(days=2)
YESTERDAY = (T.date() - timedelta(days=1)).isoformat()
NASTY = ["x' OR '1'='1", "{p0:String}", "back\\slash", "tab\tnew\nline", "-- comment", "/* c */", "\"double\"",
         "'); DROP TABLE campaign_metrics_daily; --", "{{braces}}", "%(name)s", "$1"]


def campaigns(env, org: int, rows: list[tuple[str, str, float]]) -> None:
    env.metrics(*({"org_id": org, "date": YESTERDAY, "campaign_id": campaign_id, "campaign_name": name,
                   "spend": spend, "impressions": 1000} for campaign_id, name, spend in rows))


@pytest.mark.parametrize("runner_kind", ["sql", "interpreter"])
def test_sql_breaking_strings_are_plain_data_everywhere(env, runner_kind):
    org = env.org(timezone="UTC")
    owner = env.user()
    env.member(owner, org, "owner")
    campaigns(env, org, [(text, f"name {text}", 50.0) for text in NASTY] + [("plain", "plain", 50.0)])
    target = NASTY[0]
    rule = env.rule(org, {"window": "yesterday",
                          "scope": {"campaign_id": NASTY},
                          "logic": {"or": [{"==": [{"var": "campaign_id"}, target]},
                                           {"in": [{"var": "campaign_name"}, [f"name {NASTY[1]}", f"name {NASTY[3]}"]]},
                                           {"in": ["DROP TABLE", {"var": "campaign_name"}]}]}},
                    name="Rule ' OR 1=1; -- {p0:String} \\ %(x)s")
    runner = RuleRunner(env.postgres, env.clickhouse, interpreter_only=runner_kind == "interpreter")

    summary = runner.run(RunRequest(rule, T, trigger="schedule"))

    assert (summary["status"], summary["path"], summary["error"]) == ("succeeded", runner_kind, None)
    assert summary["entities"] == len(NASTY)  # the scope keeps "plain" out
    expected = sorted([NASTY[0], NASTY[1], NASTY[3], NASTY[7]])
    assert sorted(a["entity_id"] for a in env.alerts(rule)) == expected
    assert {a["rule_name"] for a in env.alerts(rule)} == {"Rule ' OR 1=1; -- {p0:String} \\ %(x)s"}
    assert {a["entity_id"]: a["entity_name"] for a in env.alerts(rule)} == {e: f"name {e}" for e in expected}
    assert sorted(e["entity_id"] for e in env.evaluations(rule) if e["matched"]) == expected
    assert env.count("campaign_metrics_daily") == len(NASTY) + 1


def test_nul_characters_in_clickhouse_data_reach_alerts_exactly_and_notifications_replaced(env):
    """PostgreSQL text refuses NUL, ClickHouse strings may hold it: alert_events keep it, in-app rows get U+FFFD."""
    org = env.org(timezone="UTC")
    owner = env.user()
    env.member(owner, org, "owner")
    campaigns(env, org, [("nul\x00id", "nul\x00name", 50.0), ("other", "other", 1.0)])
    rule = env.rule(org, {"window": "yesterday", "logic": {"in": ["nul", {"var": "campaign_name"}]}},
                    {"notify_on_resolve": True})

    summary = RuleRunner(env.postgres, env.clickhouse).run(RunRequest(rule, T, trigger="schedule"))

    assert (summary["status"], summary["matched"], summary["notified_users"]) == ("succeeded", 1, [owner])
    assert [(a["entity_id"], a["entity_name"], a["details"]["campaign_name"]) for a in env.alerts(rule)] == [
        ("nul\x00id", "nul\x00name", "nul\x00name")]
    [notification] = env.pg("SELECT entities FROM notifications")
    assert [(e["entity_id"], e["entity_name"], e["values"]) for e in notification["entities"]] == [
        ("nul\ufffdid", "nul\ufffdname", {"campaign_name": "nul\ufffdname"})]
    assert env.pg("SELECT entity_id, firing FROM alert_states") == [{"entity_id": "nul\ufffdid", "firing": True}]


@pytest.mark.parametrize("runner_kind", ["sql", "interpreter"])
def test_a_catastrophic_regex_runs_in_linear_time(env, runner_kind):
    org = env.org(timezone="UTC")
    campaigns(env, org, [("long", "a" * 200_000 + "!", 1.0), ("short", "aaa", 1.0)])
    rule = env.rule(org, {"window": "yesterday", "logic": {"matches": [{"var": "campaign_name"}, "^(a+)+$"]}})
    runner = RuleRunner(env.postgres, env.clickhouse, interpreter_only=runner_kind == "interpreter")

    summary = runner.run(RunRequest(rule, T, trigger="schedule"))

    assert (summary["status"], summary["path"], summary["entities"], summary["matched"]) == (
        "succeeded", runner_kind, 2, 1)
    assert [a["entity_id"] for a in env.alerts(rule)] == ["short"]


def test_a_rule_reads_and_notifies_only_its_own_organization(env):
    mine, theirs = env.org(timezone="UTC"), env.org(timezone="UTC")
    my_owner, their_owner = env.user(), env.user()
    env.member(my_owner, mine, "owner")
    env.member(their_owner, theirs, "owner")
    campaigns(env, mine, [("c1", "mine", 10.0), ("c2", "mine too", 500.0)])
    campaigns(env, theirs, [("c1", "theirs", 900.0), ("c2", "theirs too", 900.0), ("c3", "only theirs", 900.0)])
    rule = env.rule(mine, {"window": "yesterday", "logic": {">": [{"var": "spend"}, 100]}})

    summary = RuleRunner(env.postgres, env.clickhouse).run(RunRequest(rule, T, trigger="schedule"))

    assert (summary["entities"], summary["matched"], summary["notified_users"]) == (2, 1, [my_owner])
    assert [(e["entity_id"], e["org_id"], e["results"]["spend"]) for e in env.evaluations(rule)] == [
        ("c1", mine, 10.0), ("c2", mine, 500.0)]
    assert [(a["entity_id"], a["entity_name"], a["org_id"], a["notified_users"]) for a in env.alerts(rule)] == [
        ("c2", "mine too", mine, [my_owner])]
    assert env.pg("SELECT DISTINCT user_id FROM notifications") == [{"user_id": my_owner}]


@pytest.mark.parametrize("stdin, expected", [
    (b"\xff\xfe not utf-8", "standard input: not UTF-8 text (byte 0)"),
    (b"[" * 200_000 + b"]" * 200_000, "standard input: not a rule document: nested too deeply"),
    (b'{"conditions": {"logic": {">": [{"var": "spend"}, NaN]}}}', None),
    (b'{"conditions": {"logic": {"==": [{"var": "campaign_name"}, "nul\\u0000"]}}, "actions": 1e400}', None),
    (b'{"conditions": "' + b"x" * 70_000 + b'"}', "the rule document is larger than 64 KiB of JSON"),
])
def test_validate_answers_malformed_input_with_clear_lines(stdin, expected):
    result = subprocess.run([RULESCTL, "validate", "-"], input=stdin, capture_output=True, timeout=60)
    out = result.stdout.decode()
    assert result.returncode == 1, out + result.stderr.decode()
    assert "Traceback" not in out + result.stderr.decode() and out.strip()
    if expected:
        assert out.strip().endswith(expected)
