"""Storm protection (the README's "Storm protection") on real PostgreSQL and the embedded ClickHouse: a run that
matches more than `max_alerts` entities, or more than `max_alert_share` of those it evaluated, still writes every
alert but gives each recipient one incident notice, on every channel: in-app rows, e-mail to a real aiosmtpd
server, Slack and signed webhook posts to real HTTP receivers on loopback; through a real rule worker and
notification worker as well. Dry runs and backfills say whether the run would have been a storm and write nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass

import pytest

from engine.model import parse_rule
from engine.storms import STORM_LISTED_ENTITIES
from tests.integration.celery_support import iso, own_redis, services_on, wait_until
from tests.integration.receivers import HttpReceiver, SmtpReceiver
from tests.integration.test_run_cli import rulesctl
from tests.integration.test_notifications import LOOPBACK, SECRET, T, day_before, deliver_all, settings
from worker.backfill import backfill
from worker.messages import MAX_POST_BYTES
from worker.runner import RuleRunner, RunRequest

CAMPAIGNS = 150
# Matches every campaign with some spend: all 150 of them, a storm under the default max_alerts of 100.
ANY_SPEND = {"window": "yesterday", "logic": {"and": [{">": [{"var": "spend"}, 0]}, {">=": [{"var": "clicks"}, 0]}]}}


@dataclass
class Storming:
    """An organization with CAMPAIGNS campaigns spending 1..CAMPAIGNS yesterday, listed in the feed lowest spend
    first; an owner and an admin with verified addresses, and a member with a grant on c1, c2 and c3 only."""

    org: int
    owner: int
    admin: int
    member: int


def storming(env, campaigns: int = CAMPAIGNS) -> Storming:
    org = env.org(timezone="UTC")
    users = {}
    for role in ("owner", "admin", "member"):
        users[role] = env.user(f"{role}-{org}@example.com")
        env.member(users[role], org, role)
    env.pg("UPDATE users SET email_verified = TRUE WHERE id = ANY(%s)", (list(users.values()),))
    for campaign in ("c1", "c2", "c3"):
        env.pg("INSERT INTO entity_permissions (user_id, org_id, entity_type, entity_id, permission) "
               "VALUES (%s, %s, 'campaign', %s, 'view')", (users["member"], org, campaign))
    env.metrics(*({"org_id": org, "date": day_before(T), "campaign_id": f"c{n}", "campaign_name": f"Campaign {n}",
                   "spend": str(n), "impressions": 1000, "clicks": n} for n in range(1, campaigns + 1)))
    return Storming(org, users["owner"], users["admin"], users["member"])


def every_channel(http: HttpReceiver, **limits) -> dict:
    return {"severity": "critical", **limits, "notify": {
        "channels": ["in_app", "email", "slack", "webhook"], "roles": ["owner", "admin", "member"],
        "slack_webhook_url": http.url("/slack"), "webhook_url": http.url("/hook")}}


def runner(env) -> RuleRunner:
    return RuleRunner(env.postgres, env.clickhouse, allowed_hosts=LOOPBACK)


def top_by_spend(count: int, of: int = CAMPAIGNS) -> list[str]:
    return [f"c{n}" for n in range(of, of - count, -1)]


def listed_ids(text: str) -> list[str]:
    """The entity ids of the listed lines (`- campaign Campaign 150 (c150): spend = 150`) of an e-mail or Slack text."""
    return [line.split("(", 1)[1].split(")", 1)[0] for line in text.splitlines() if line.startswith("- ")]


def test_a_storm_writes_every_alert_and_sends_one_incident_notice_per_recipient_on_every_channel(env):
    team = storming(env)
    with SmtpReceiver() as smtp, HttpReceiver() as http:
        rule = env.rule(team.org, ANY_SPEND, every_channel(http), name="Any spend")
        summary = runner(env).run(RunRequest(rule, T, trigger="schedule"))
        outcomes = deliver_all(env, summary["run_id"], settings(smtp_url=smtp.url, webhook_secret=SECRET))
        mails = smtp.wait_for(3)
        [slack] = http.wait_for(1, "/slack")
        [hook] = http.wait_for(1, "/hook")

    everyone = sorted([team.owner, team.admin, team.member])
    assert (summary["status"], summary["entities"], summary["matched"], summary["alerts"]) == (
        "succeeded", CAMPAIGNS, CAMPAIGNS, CAMPAIGNS), summary["error"]
    assert (summary["storm"], summary["notified_users"]) == (True, everyone)
    run_row = env.run_row(summary["run_id"])
    assert run_row["storm"] is True
    assert [t["detail"] for t in run_row["transitions"] if t["state"] == "alerted"] == [
        "alert_events written; a storm: 150 of 150 entities matched, more than max_alerts (100) and "
        "max_alert_share (0.5 of the entities evaluated)"]
    # Every alert is written, with its recipients, as without a storm.
    alerts = env.alerts(rule)
    assert len(alerts) == CAMPAIGNS
    assert {a["entity_id"]: a["notified_users"] for a in alerts}["c2"] == everyone

    # in_app: one row per recipient, its count, and the first 20 by spend (highest first).
    notes = {n["user_id"]: n for n in env.pg("SELECT * FROM notifications WHERE run_id = %s", (summary["run_id"],))}
    assert sorted(notes) == everyone
    assert all(n["storm"] for n in notes.values())
    assert (notes[team.owner]["entity_count"], [e["entity_id"] for e in notes[team.owner]["entities"]]) == (
        CAMPAIGNS, top_by_spend(STORM_LISTED_ENTITIES))
    assert notes[team.owner]["entities"][0]["values"] == {"spend": 150.0, "clicks": 150}
    assert (notes[team.member]["entity_count"], [e["entity_id"] for e in notes[team.member]["entities"]]) == (
        3, ["c3", "c2", "c1"])

    # e-mail: one incident notice per verified recipient, only their entities.
    assert sorted(outcomes.values()) == ["sent"] * 5
    by_user = {mail.rcpt_tos[0]: mail.message for mail in mails}
    owner_mail, member_mail = by_user[f"owner-{team.org}@example.com"], by_user[f"member-{team.org}@example.com"]
    assert owner_mail["Subject"] == "[critical] Any spend: storm, 150 campaigns matched"
    owner_text = owner_mail.get_content()
    assert listed_ids(owner_text) == top_by_spend(STORM_LISTED_ENTITIES)
    assert "- campaign Campaign 150 (c150): spend = 150" in owner_text
    assert "The first 20 of 150 by spend (numbers highest first):" in owner_text
    assert "... and 130 more" in owner_text
    assert member_mail["Subject"] == "[critical] Any spend: storm, 3 campaigns matched"
    assert listed_ids(member_mail.get_content()) == ["c3", "c2", "c1"]

    # Slack: one post with the run's full count, the first 20.
    text = json.loads(slack.body)["text"]
    assert text.splitlines()[0] == "*[critical] Any spend: storm, 150 campaigns matched*"
    assert "This run is a storm: 150 of 150 entities matched" in text
    assert listed_ids(text) == top_by_spend(STORM_LISTED_ENTITIES)

    # Webhook: signed, flagged, with the full count and the first 20 with all their values.
    assert hook.headers["x-signature"] == "sha256=" + hmac.new(SECRET.encode(), hook.body, hashlib.sha256).hexdigest()
    body = json.loads(hook.body)
    assert (body["storm"], body["entity_count"], body["ordered_by"]) == (True, CAMPAIGNS, "spend")
    assert [e["entity_id"] for e in body["entities"]] == top_by_spend(STORM_LISTED_ENTITIES)
    assert body["entities"][0]["values"] == {"spend": 150.0, "clicks": 150}
    assert max(len(slack.body), len(hook.body)) < 16 * 1024


def test_over_the_share_is_a_storm_and_a_handful_of_matches_is_not(env):
    share = storming(env, campaigns=40)
    handful = storming(env, campaigns=3)
    # 30 of 40 campaigns spend over 10: three quarters, over max_alert_share (0.5) and over 20 matches.
    over_ten = {"window": "yesterday", "logic": {">": [{"var": "spend"}, 10]}}
    over_zero = {"window": "yesterday", "logic": {">": [{"var": "spend"}, 1]}}
    with HttpReceiver() as http:
        stormy = runner(env).run(RunRequest(env.rule(share.org, over_ten, every_channel(http)), T,
                                            trigger="schedule"))
        calm = runner(env).run(RunRequest(env.rule(handful.org, over_zero, every_channel(http)), T,
                                          trigger="schedule"))
        lenient = runner(env).run(RunRequest(env.rule(share.org, over_ten, every_channel(http, max_alert_share=0.8)),
                                             T, trigger="schedule"))
        deliver_all(env, stormy["run_id"], settings())
        deliver_all(env, calm["run_id"], settings())
        hooks = [json.loads(h.body) for h in http.wait_for(2, "/hook")]

    assert [(s["matched"], s["entities"], s["storm"]) for s in (stormy, calm, lenient)] == [
        (30, 40, True), (2, 3, False), (30, 40, False)]
    storm_hook, calm_hook = sorted(hooks, key=lambda body: body["entity_count"], reverse=True)
    assert (storm_hook["storm"], storm_hook["entity_count"], len(storm_hook["entities"])) == (True, 30, 20)
    assert (calm_hook["storm"], calm_hook["entity_count"], calm_hook["ordered_by"]) == (False, 2, None)
    assert [e["entity_id"] for e in calm_hook["entities"]] == ["c2", "c3"]
    notes = env.pg("SELECT storm, entity_count, jsonb_array_length(entities) AS listed FROM notifications "
                   "WHERE run_id = %s AND user_id = %s", (calm["run_id"], handful.owner))
    assert notes == [{"storm": False, "entity_count": 2, "listed": 2}]


def test_dry_runs_and_backfills_say_a_storm_would_have_been_and_write_nothing(env):
    team = storming(env)
    with HttpReceiver() as http:
        actions = every_channel(http)
        rule = env.rule(team.org, ANY_SPEND, actions)
        dry = runner(env).run(RunRequest(rule, T, dry_run=True))
        result = backfill(runner(env), rule, parse_rule(ANY_SPEND, actions, allowed_hosts=LOOPBACK), "UTC",
                          T.date(), T.date(), write=False)

    assert (dry["status"], dry["matched"], dry["storm"], dry["alerts"]) == ("succeeded", CAMPAIGNS, True, 0)
    assert env.run_row(dry["run_id"])["transitions"][-2]["detail"] == (
        "evaluated without writing; it would have been a storm: 150 of 150 entities matched, more than max_alerts "
        "(100) and max_alert_share (0.5 of the entities evaluated)")
    # The default schedule fires hourly: 24 fire times on T's day, each a dry run that would have been a storm.
    assert [(s["dry_run"], s["matched"], s["storm"]) for s in result.summaries] == [(True, CAMPAIGNS, True)] * 24
    assert (env.count("rule_evaluations", rule), env.count("alert_events", rule)) == (0, 0)
    assert env.pg("SELECT count(*) AS n FROM deliveries")[0]["n"] == 0
    assert env.pg("SELECT count(*) AS n FROM notifications")[0]["n"] == 0
    assert http.requests() == []


def test_rulesctl_run_says_a_dry_run_would_have_been_a_storm(env):
    team = storming(env)
    rule = env.rule(team.org, ANY_SPEND)

    process = rulesctl(env, "run", rule, "--at", iso(T), "--dry-run")

    assert process.returncode == 0, process.stderr
    assert process.stdout.splitlines()[1].startswith("  entities 150, matched 150, alerts 0")
    assert process.stdout.splitlines()[2] == "  it would have been a storm (see rule_runs.transitions)"
    assert env.count("rule_evaluations", rule) == 0


def test_a_written_backfill_records_the_storm_and_notifies_nobody(env):
    team = storming(env)
    rule = env.rule(team.org, ANY_SPEND, {"notify": {"channels": ["in_app", "email"]}})

    summary = runner(env).run(RunRequest(rule, T, trigger="backfill"))

    assert (summary["storm"], summary["alerts"], summary["notified_users"]) == (True, CAMPAIGNS, [])
    assert env.pg("SELECT count(*) AS n FROM notifications")[0]["n"] == 0


WORKER_SETTINGS = {"NOTIFY_ALLOWED_HOSTS": "127.0.0.1", "WEBHOOK_SECRET": "worker-secret",
                   "DELIVERY_BACKOFF_SECONDS": "1"}


@pytest.mark.slow
def test_a_storm_in_a_batch_on_real_workers_reaches_every_channel_once(pg_url, migrated_ch_url, tmp_path):
    """A batch of two rules, one a storm and one not, on a rule worker and the notification worker."""
    with own_redis(tmp_path) as broker, SmtpReceiver() as smtp, HttpReceiver() as http, services_on(
            pg_url, migrated_ch_url, 0, tmp_path / "logs", env={**WORKER_SETTINGS, "SMTP_URL": smtp.url},
            redis_server=broker.url) as services:
        data = services.data()
        team = storming(data)
        storm_rule = data.rule(team.org, ANY_SPEND, every_channel(http), name="Any spend")
        calm_logic = {"window": "yesterday", "logic": {">": [{"var": "spend"}, 147]}}
        calm_rule = data.rule(team.org, calm_logic, {"notify": {
            "channels": ["in_app", "webhook"], "roles": ["owner"], "webhook_url": http.url("/calm")}}, name="Top")
        services.start_worker(queues="rules")
        services.start_notifier()

        summaries = services.send("rules.evaluate_batch", team.org, iso(T), [storm_rule, calm_rule]).get(timeout=90)
        wait_until(lambda: all(d["status"] == "sent" for d in services.pg("SELECT status FROM deliveries")), 60,
                   "every delivery to be sent")
        mails = smtp.wait_for(3)
        [slack] = http.wait_for(1, "/slack")
        [hook] = http.wait_for(1, "/hook")
        [calm_hook] = http.wait_for(1, "/calm")
        [transitions] = services.pg("SELECT transitions FROM rule_runs WHERE rule_id = %s", (storm_rule,))

    assert "compiled to SQL (in a batch of 2 rules)" in [t["detail"] for t in transitions["transitions"]]
    by_rule = {s["rule_id"]: s for s in summaries}
    assert (by_rule[storm_rule]["storm"], by_rule[storm_rule]["alerts"]) == (True, CAMPAIGNS)
    assert (by_rule[calm_rule]["storm"], by_rule[calm_rule]["alerts"]) == (False, 3)
    assert len(mails) == 3 and all("storm, " in mail.message["Subject"] for mail in mails)
    assert listed_ids(json.loads(slack.body)["text"]) == top_by_spend(STORM_LISTED_ENTITIES)
    body = json.loads(hook.body)
    assert (body["storm"], body["entity_count"], len(body["entities"])) == (True, CAMPAIGNS, STORM_LISTED_ENTITIES)
    assert len(hook.body) <= MAX_POST_BYTES
    calm = json.loads(calm_hook.body)
    assert (calm["storm"], calm["entity_count"], [e["entity_id"] for e in calm["entities"]]) == (
        False, 3, ["c148", "c149", "c150"])
    notes = services.pg("SELECT n.storm, n.entity_count, r.rule_id::text AS rule_id FROM notifications n "
                        "JOIN rule_runs r ON r.id = n.run_id WHERE n.user_id = %s ORDER BY n.storm", (team.owner,))
    assert [(n["rule_id"], n["storm"], n["entity_count"]) for n in notes] == [
        (calm_rule, False, 3), (storm_rule, True, CAMPAIGNS)]
