"""Batches of rules (the README's How a run works): the rules of one organization due at T run together, and every
row they write is the row each would write alone.

Each test makes every rule twice, with the same document and name: one copy runs in batches, the other as separate
runs, in the same organization over the same data at the same fire times. Then every row either wrote
(rule_evaluations, alert_events, rule_runs, notifications, deliveries, alert_states) is compared, with only what
names the copy (rule id, run id, delivery keys, timestamps of the writes) left out.
"""

from __future__ import annotations

import json
import random
import re
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from engine.compiler import compile_logic
from engine.errors import NotCompilable
from engine.fields import CAMPAIGN_METRICS, field_types
from worker.batch_runner import BatchRequest, BatchRunner
from worker.runner import RunRequest

LOOPBACK = frozenset({"127.0.0.1"})
# 14:00 UTC, twelve days ago, and the next day: both within the TTL of rule_evaluations.
T1 = datetime.now(UTC).replace(hour=14, minute=0, second=0, microsecond=0) - timedelta(days=12)
T2 = T1 + timedelta(days=1)
TIMEZONE = "America/New_York"
NOTIFY = {"channels": ["in_app", "email", "slack", "webhook"], "slack_webhook_url": "http://127.0.0.1:9/slack",
          "webhook_url": "http://127.0.0.1:9/webhook"}
REFUSED_LOGIC = {"some": [{"merge": [{"var": "spend"}, {"var": "clicks"}]}, {">": [{"var": ""}, 100]}]}

# (conditions, actions): every mix of windows, previous periods, scopes and both sources, with cooldowns, resolve
# notices, roles and channels.
RULES: list[tuple[Any, Any]] = [
    ({"window": "yesterday", "logic": {">": [{"var": "spend"}, 100]}}, {"notify": NOTIFY, "cooldown_minutes": 0}),
    ({"window": "last_7_days", "compare_to": "previous_period",
      "logic": {"and": [{">": [{"var": "impressions"}, 0]}, {"<": [{"var": "ctr"}, {"var": "prev.ctr"}]}]}},
     {"cooldown_minutes": 2000, "severity": "critical"}),
    ({"window": "last_14_days", "scope": {"dsp_type": ["DV360"]}, "logic": {">": [{"var": "spend"}, 900]}},
     {"notify_on_resolve": True, "cooldown_minutes": 0, "notify": {"channels": ["in_app", "email"]}}),
    ({"window": "last_30_days", "logic": {">=": [{"var": "days"}, 25]}},
     {"notify": {"roles": ["owner", "member"], "channels": ["in_app", "email"]}}),
    ({"window": "month_to_date", "compare_to": "previous_period", "scope": {"advertiser_id": ["adv-2"]},
      "logic": {"or": [{"matches": [{"var": "campaign_name"}, "^Sale"]}, {">": [{"var": "prev.clicks"}, 300]}]}},
     {"severity": "info"}),
    ({"window": "lifetime", "logic": {">": [{"var": "conversions"}, 150]}}, {"notify_on_resolve": True}),
    ({"window": "today", "logic": {"and": [{">": [{"var": "booked_amount"}, 0]},
                                           {"<": [{"var": "pacing_rate"}, 0.8]}]}, "source": "pacing_snapshots"},
     {"notify": NOTIFY, "notify_on_resolve": True, "cooldown_minutes": 0}),
    ({"source": "pacing_snapshots", "window": "last_7_days", "compare_to": "previous_period",
      "logic": {"and": [{"==": [{"var": "delivered_amount"}, 0]}, {">": [{"var": "prev.delivered_amount"}, 0]}]}},
     {"notify_on_resolve": True, "cooldown_minutes": 0}),
    ({"source": "pacing_snapshots", "window": "yesterday", "scope": {"entity_type": ["line_item"]},
      "logic": {">": [{"var": "margin_percent"}, 20]}}, {}),
    ({"window": "yesterday", "logic": REFUSED_LOGIC}, {}),                      # the interpreter: alone
    ({"window": "last_999_days", "logic": {">": [{"var": "spend"}, 1]}}, {}),  # invalid: alone, failed
]
SKIPPED_RULE = ({"window": "yesterday", "logic": {">": [{"var": "spend"}, 1]}}, {})  # module qa, not enabled


def organization(env) -> tuple[int, dict[str, int]]:
    """An organization in New York with an owner, an admin, two members holding grants (a campaign, a DSP account)
    and a viewer, all verified; 40 days of metrics of 8 campaigns renamed 5 days before T1, 11 days of snapshots of
    6 pacing entities."""
    org = env.org(timezone=TIMEZONE, modules=["alerts", "taxonomy"])
    users = {}
    for name, role in (("owner", "owner"), ("admin", "admin"), ("campaign_member", "member"),
                       ("account_member", "member"), ("viewer", "viewer")):
        users[name] = env.user(f"{name}-{org}@example.com")
        env.member(users[name], org, role)
    env.pg("UPDATE users SET email_verified = TRUE WHERE id = ANY(%s)", (list(users.values()),))
    # Synced now: its windows are complete (README, Data freshness).
    account = env.pg("INSERT INTO dsp_accounts (org_id, dsp_type, external_id, name, last_sync_at) "
                     "VALUES (%s, 'DV360', 'adv-1', 'DV360 adv-1', now() AT TIME ZONE 'UTC') RETURNING id",
                     (org,))[0]["id"]
    for user, entity_type, entity_id in (("campaign_member", "campaign", "c3"),
                                         ("account_member", "dsp_account", str(account)),
                                         ("viewer", "campaign", "c2")):
        env.pg("INSERT INTO entity_permissions (user_id, org_id, entity_type, entity_id, permission) "
               "VALUES (%s, %s, %s, %s, 'view')", (users[user], org, entity_type, entity_id))
    rng = random.Random(7)
    rows = []
    for number in range(1, 9):
        for day in range(-40, 1):
            when = T1.date() + timedelta(days=day)
            if rng.random() < 0.15:
                continue
            renamed = when >= T1.date() - timedelta(days=5)
            rows.append({"org_id": org, "date": when, "campaign_id": f"c{number}",
                         "campaign_name": f"{'Sale' if renamed and number % 2 else 'Brand'} {number}",
                         "dsp_type": "DV360" if number % 3 else "TTD",
                         "advertiser_id": "adv-1" if number % 2 else "adv-2",
                         "impressions": rng.randint(0, 5000), "clicks": rng.randint(0, 60),
                         "conversions": rng.randint(0, 8), "spend": f"{rng.randint(0, 20000) / 100:.2f}"})
    env.metrics(*rows)
    snapshots = []
    for number, entity_type in enumerate(("line_item", "line_item", "line_item", "insertion_order",
                                          "insertion_order", "line_item")):
        for hour in range(-11 * 24, 30, 6):
            moment = T1 + timedelta(hours=hour)
            stopped = number % 2 == 0 and hour > -2 * 24
            snapshots.append({"org_id": org, "snapshot_time": moment.strftime("%Y-%m-%d %H:%M:%S"),
                              "entity_type": entity_type, "entity_id": f"p{number}",
                              "booked_amount": 1000 + number, "delivered_amount": 0 if stopped else rng.randint(1, 900),
                              "pacing_rate": rng.randint(40, 120) / 100, "days_elapsed": 10, "days_remaining": 20,
                              "projected_spend": rng.randint(500, 1500), "margin_percent": rng.randint(0, 40)})
    env.snapshots(*snapshots)
    return org, users


def two_copies(env, org: int) -> tuple[list[str], list[str]]:
    """Every rule of RULES and SKIPPED_RULE made twice, same names: (the batch's copies, the separate ones)."""
    batched, separate = [], []
    for index, (conditions, actions) in enumerate([*RULES, SKIPPED_RULE]):
        module = "qa" if index == len(RULES) else "alerts"
        for copies in (batched, separate):
            copies.append(env.rule(org, conditions, actions, module=module, name=f"Rule {index}"))
    return batched, separate


_NAMING_THE_COPY = {"id", "created_at", "started_at", "finished_at", "lease_expires_at", "duration_ms",
                    "next_attempt_at", "sent_at", "idempotency_key", "run_id", "rule_id", "execution_time_ms",
                    "updated_at"}
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def canonical(rows: list[dict[str, Any]]) -> list[str]:
    """The rows as sorted JSON text without what names the copy: ids, keys and the times of the writes."""
    kept = []
    for row in rows:
        text = json.dumps({key: value for key, value in row.items() if key not in _NAMING_THE_COPY},
                          sort_keys=True, default=str)
        kept.append(_UUID.sub("<id>", text))
    return sorted(kept)


def written_rows(env, rule_id: str) -> dict[str, list[str]]:
    """Every row written for `rule_id`, canonical."""
    runs = env.pg("SELECT * FROM rule_runs WHERE rule_id = %s", (rule_id,))
    for run in runs:
        # A transition's time is when it was written, and its detail says how the run was evaluated.
        run["transitions"] = [entry["state"] for entry in run["transitions"]]
    return {
        "rule_evaluations": canonical(env.evaluations(rule_id)),
        "alert_events": canonical(env.alerts(rule_id)),
        "rule_runs": canonical(runs),
        "notifications": canonical(env.pg("SELECT * FROM notifications WHERE rule_id = %s", (rule_id,))),
        "deliveries": canonical(env.pg("SELECT * FROM deliveries WHERE rule_id = %s", (rule_id,))),
        "alert_states": canonical(env.pg("SELECT * FROM alert_states WHERE rule_id = %s", (rule_id,))),
    }


def details(env, rule_id: str) -> list[str]:
    return [entry["detail"] for run in env.pg("SELECT transitions FROM rule_runs WHERE rule_id = %s ORDER BY "
                                              "scheduled_for", (rule_id,)) for entry in run["transitions"]]


def test_a_batch_writes_every_row_that_separate_runs_write(env):
    with pytest.raises(NotCompilable):
        compile_logic(REFUSED_LOGIC, field_types(CAMPAIGN_METRICS, False))
    org, _ = organization(env)
    batched, separate = two_copies(env, org)
    handed: list[list[int]] = []
    runner = BatchRunner(env.postgres, env.clickhouse, allowed_hosts=LOOPBACK, send_deliveries=handed.append)

    for at in (T1, T2):
        batch_summaries = runner.run_batch(BatchRequest(org, at, tuple(batched)))
        separate_summaries = [runner.run(RunRequest(rule_id, at, trigger="schedule")) for rule_id in separate]
        assert [s["rule_id"] for s in batch_summaries] == batched
        for batch_summary, separate_summary in zip(batch_summaries, separate_summaries):
            for key in ("status", "entities", "matched", "alerts", "notified_users", "error", "path", "trigger"):
                assert batch_summary[key] == separate_summary[key], (batch_summary, separate_summary)

    for batch_rule, separate_rule in zip(batched, separate):
        assert written_rows(env, batch_rule) == written_rows(env, separate_rule)

    # Not vacuous: the rules matched, alerted, notified, held back by cooldown and resolved.
    totals = env.pg("SELECT sum(matched) AS matched, sum(alerts) AS alerts FROM rule_runs WHERE rule_id = ANY(%s)",
                    (batched,))[0]
    assert totals["alerts"] > 0 and totals["matched"] > totals["alerts"]
    kinds = {row["kind"] for row in env.pg("SELECT kind FROM deliveries WHERE rule_id = ANY(%s)", (batched,))}
    assert kinds == {"alert", "resolved"}
    assert {row["channel"] for row in env.pg("SELECT channel FROM deliveries")} == {"in_app", "email", "slack",
                                                                                   "webhook"}
    # Every delivery owed is handed to its sender once (nothing sends them here, so they stay pending); those of a
    # batch's runs together, in one call.
    assert sorted(i for ids in handed for i in ids) == [row["id"] for row in env.pg(
        "SELECT id FROM deliveries WHERE status = 'pending' ORDER BY id")]
    metrics_batch_at_t1 = {row["id"] for row in env.pg(
        "SELECT d.id FROM deliveries d JOIN rule_runs r ON r.id = d.run_id WHERE r.rule_id = ANY(%s) "
        "AND r.scheduled_for = %s AND d.status = 'pending'", (batched[:6], T1.replace(tzinfo=None)))}
    assert len({row["run_id"] for row in env.pg("SELECT run_id FROM deliveries WHERE id = ANY(%s)",
                                                (list(metrics_batch_at_t1),))}) > 1
    assert any(metrics_batch_at_t1 <= set(ids) for ids in handed)
    # Each run says how it ran: in a batch (with its size, per source) or alone and why.
    metrics_batch, pacing_batch = 6, 3
    for index, rule_id in enumerate(batched[:6]):
        assert f"in a batch of {metrics_batch} rules" in " ".join(details(env, rule_id)), index
    for rule_id in batched[6:9]:
        assert f"in a batch of {pacing_batch} rules" in " ".join(details(env, rule_id))
    assert "alone: it runs on the interpreter" in " ".join(details(env, batched[9]))
    assert "alone: the rule is not valid" in " ".join(details(env, batched[10]))
    assert "alone: its module is not enabled" in " ".join(details(env, batched[11]))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_generated_mixes_of_rules_give_the_rows_of_separate_runs(env, seed):
    """A random mix of the batchable rules (windows, previous periods, scopes, both sources), some of them twice
    with other thresholds, in a random order: as a batch, every row is that of a separate run."""
    rng = random.Random(seed)
    org, _ = organization(env)
    mix = [RULES[index] for index in rng.sample(range(9), rng.randint(3, 9))]
    mix += [({**conditions, "logic": {"!": conditions["logic"]}}, actions) for conditions, actions in
            rng.sample(mix, 2)]
    rng.shuffle(mix)
    batched, separate = [], []
    for index, (conditions, actions) in enumerate(mix):
        for copies in (batched, separate):
            copies.append(env.rule(org, conditions, actions, name=f"Mix {index}"))
    runner = BatchRunner(env.postgres, env.clickhouse, allowed_hosts=LOOPBACK)

    for at in (T1, T2):
        runner.run_batch(BatchRequest(org, at, tuple(batched)))
        for rule_id in separate:
            runner.run(RunRequest(rule_id, at, trigger="schedule"))

    for batch_rule, separate_rule in zip(batched, separate):
        assert written_rows(env, batch_rule) == written_rows(env, separate_rule)
    assert all("in a batch of" in " ".join(details(env, rule_id)) or "alone: the only rule" in
               " ".join(details(env, rule_id)) for rule_id in batched)
    assert sum(len(env.evaluations(rule_id)) for rule_id in batched) > 0


def test_a_batch_sent_again_writes_nothing_twice(env):
    org, _ = organization(env)
    batched, _ = two_copies(env, org)
    runner = BatchRunner(env.postgres, env.clickhouse, allowed_hosts=LOOPBACK)
    first = runner.run_batch(BatchRequest(org, T1, tuple(batched)))
    before = {rule_id: written_rows(env, rule_id) for rule_id in batched}

    again = runner.run_batch(BatchRequest(org, T1, tuple(batched)))

    assert again == first
    assert {rule_id: written_rows(env, rule_id) for rule_id in batched} == before
    assert [row["n"] for row in env.pg("SELECT count(*) AS n FROM rule_runs GROUP BY rule_id")] == [1] * len(batched)


def test_rules_claimed_elsewhere_drop_out_and_deleted_ones_give_none(env):
    org, _ = organization(env)
    batched, _ = two_copies(env, org)
    runner = BatchRunner(env.postgres, env.clickhouse, allowed_hosts=LOOPBACK)
    alone = runner.run(RunRequest(batched[0], T1, trigger="schedule"))
    env.pg("DELETE FROM rules WHERE id = %s", (batched[1],))

    summaries = runner.run_batch(BatchRequest(org, T1, tuple(batched)))

    assert summaries[0] == alone
    assert summaries[1] is None
    assert all(summary["status"] in ("succeeded", "failed", "skipped") for summary in summaries[2:])
    assert "in a batch of 4 rules" in " ".join(details(env, batched[2]))



def test_an_id_that_is_not_a_uuid_fails_alone_and_the_others_run_in_their_batch(env):
    org, _ = organization(env)
    batched, separate = two_copies(env, org)
    runner = BatchRunner(env.postgres, env.clickhouse, allowed_hosts=LOOPBACK)
    without = runner.run_batch(BatchRequest(org, T1, tuple(separate)))

    summaries = runner.run_batch(BatchRequest(org, T1, ("nope", batched[0].upper(), *batched[1:])))

    assert summaries[0] == {"rule_id": "nope", "status": "failed", "error": "not a rule id (a UUID): 'nope'"}
    assert [summary["rule_id"] for summary in summaries[1:]] == batched
    assert [summary["status"] for summary in summaries[1:]] == [summary["status"] for summary in without]
    assert [written_rows(env, rule_id) for rule_id in batched] == [written_rows(env, rule_id) for rule_id in separate]
    assert "in a batch of 6 rules" in " ".join(details(env, batched[0]))

def test_when_a_batch_statement_fails_each_of_its_rules_runs_alone_and_other_batches_go_on(env):
    org, _ = organization(env)
    spend = env.rule(org, RULES[0][0], RULES[0][1], name="spend")
    clicks = env.rule(org, {"window": "last_7_days", "logic": {">": [{"var": "clicks"}, 100]}}, name="clicks")
    pacing = [env.rule(org, conditions, actions, name=f"pacing {index}")
              for index, (conditions, actions) in enumerate(RULES[6:9])]
    # Every statement over the metrics now fails, in the batch and alone; the snapshots are untouched.
    env.ch_rows("ALTER TABLE campaign_metrics_daily RENAME COLUMN conversions TO conversions_elsewhere")
    runner = BatchRunner(env.postgres, env.clickhouse, allowed_hosts=LOOPBACK)

    summaries = runner.run_batch(BatchRequest(org, T1, (spend, clicks, *pacing)))

    assert [summary["status"] for summary in summaries] == ["failed", "failed"] + ["succeeded"] * 3
    for rule_id, summary in zip((spend, clicks), summaries):
        assert "conversions" in summary["error"]
        notes = " ".join(details(env, rule_id))
        assert "in a batch of 2 rules" in notes and "alone: the batch's statement failed" in notes
        assert env.evaluations(rule_id) == [] and env.alerts(rule_id) == []
    for rule_id, summary in zip(pacing, summaries[2:]):
        assert "in a batch of 3 rules" in " ".join(details(env, rule_id))
        rows = env.evaluations(rule_id)
        assert len(rows) == summary["entities"] > 0
        assert len({row["entity_id"] for row in rows}) == len(rows)
        assert len(env.alerts(rule_id)) == summary["alerts"]
