"""Who hears of a run's alerts, and how (the README's Notifications): the audience by role and grant, in-app rows,
e-mail to a real SMTP server, Slack and signed webhook posts to real HTTP receivers on loopback, cooldown and resolve
notices.

These tests run the rule in-process and send each delivery with `worker.deliveries.deliver`, the function the
`notifications.deliver` task calls; test_notification_worker.py runs the same through a real worker.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from tests.integration.receivers import HttpReceiver, SmtpReceiver, self_signed_certificate
from worker.channels import DeliveryFailed, checked_address
from worker.deliveries import deliver
from worker.runner import RuleRunner, RunRequest
from worker.settings import Settings

LOOPBACK = frozenset({"127.0.0.1"})
SECRET = "s3cret-key"
# T is 02:00 UTC two days ago; the organization is in UTC, so "yesterday" is the UTC date before T's.
T = datetime.now(UTC).replace(hour=2, minute=0, second=0, microsecond=0) - timedelta(days=2)
SPEND_OVER_100 = {"window": "yesterday", "logic": {">": [{"var": "spend"}, 100]}}


def day_before(moment: datetime) -> str:
    return (moment.date() - timedelta(days=1)).isoformat()


@dataclass
class Team:
    """Two organizations sharing campaign ids and advertiser ids; the users of the first, by what they hold."""

    org: int
    other_org: int
    owner: int
    admin: int
    campaign_member: int
    account_member: int
    viewer: int
    expired_member: int
    elsewhere_member: int
    listed_viewer: int
    outsider: int
    other_owner: int


def make_team(env) -> Team:
    """Org A and org B, both with campaigns c1 (DV360, adv-1) and c2 (TTD, adv-2) spending over 100 yesterday.

    In org A: an owner and an admin; a member with a grant on campaign c1; a member with a grant on the DV360
    account adv-1 (so on c1 only); a viewer with no grant; a member whose c1 grant expired before T; a member
    whose c1 grant is held in org B; a viewer with a grant on c2 (notified only when viewers are listed). In org B:
    its owner, and an outsider with grants on c1 and c2 there.
    """
    org, other = env.org(timezone="UTC"), env.org(timezone="UTC")
    users = {}
    for name, org_id, role in (("owner", org, "owner"), ("admin", org, "admin"), ("campaign_member", org, "member"),
                               ("account_member", org, "member"), ("viewer", org, "viewer"),
                               ("expired_member", org, "member"), ("elsewhere_member", org, "member"),
                               ("listed_viewer", org, "viewer"), ("outsider", other, "member"),
                               ("other_owner", other, "owner")):
        users[name] = env.user(f"{name}-{org_id}@example.com")
        env.member(users[name], org_id, role)
    env.member(users["elsewhere_member"], other, "member")
    env.pg("UPDATE users SET email_verified = TRUE WHERE id = ANY(%s)", (list(users.values()),))
    accounts = {}
    for org_id in (org, other):
        for dsp, external in (("DV360", "adv-1"), ("TTD", "adv-2")):
            accounts[(org_id, external)] = env.pg(
                "INSERT INTO dsp_accounts (org_id, dsp_type, external_id, name, last_sync_at) "
                "VALUES (%s, %s, %s, %s, now() AT TIME ZONE 'UTC') RETURNING id",  # synced: complete windows
                (org_id, dsp, external, f"{dsp} {external}"))[0]["id"]

    def grant(user: str, org_id: int, entity_type: str, entity_id: str, expires: datetime | None = None) -> None:
        env.pg("INSERT INTO entity_permissions (user_id, org_id, entity_type, entity_id, permission, expires_at) "
               "VALUES (%s, %s, %s, %s, 'view', %s)",
               (users[user], org_id, entity_type, entity_id, expires.replace(tzinfo=None) if expires else None))

    grant("campaign_member", org, "campaign", "c1", expires=T + timedelta(days=30))
    grant("account_member", org, "dsp_account", str(accounts[(org, "adv-1")]))
    grant("expired_member", org, "campaign", "c1", expires=T - timedelta(minutes=1))
    grant("elsewhere_member", other, "campaign", "c1")
    grant("listed_viewer", org, "campaign", "c2")
    grant("outsider", other, "campaign", "c1")
    grant("outsider", other, "dsp_account", str(accounts[(other, "adv-2")]))
    for org_id in (org, other):
        env.metrics({"org_id": org_id, "date": day_before(T), "campaign_id": "c1", "campaign_name": "Spring Sale",
                     "dsp_type": "DV360", "advertiser_id": "adv-1", "spend": "150.5", "impressions": 1000},
                    {"org_id": org_id, "date": day_before(T), "campaign_id": "c2", "campaign_name": "Brand Push",
                     "dsp_type": "TTD", "advertiser_id": "adv-2", "spend": "320", "impressions": 2000},
                    {"org_id": org_id, "date": day_before(T), "campaign_id": "c3", "campaign_name": "Quiet",
                     "dsp_type": "TTD", "advertiser_id": "adv-2", "spend": "5", "impressions": 100})
    return Team(org, other, **users)


def runner(env, **options) -> RuleRunner:
    return RuleRunner(env.postgres, env.clickhouse, allowed_hosts=LOOPBACK, **options)


def settings(**values) -> Settings:
    return Settings(notify_allowed_hosts=LOOPBACK, **values)


def deliveries(env, run_id: str) -> list[dict]:
    return env.pg("SELECT * FROM deliveries WHERE run_id = %s ORDER BY kind, channel, recipient", (run_id,))


def deliver_all(env, run_id: str, config: Settings) -> dict[int, str | None]:
    """Sends every pending delivery of the run once; returns each one's status after the attempt."""
    outcomes = {}
    for row in deliveries(env, run_id):
        if row["status"] == "pending":
            outcome = deliver(env.postgres, row["id"], config)
            outcomes[row["id"]] = outcome.status if outcome else None
    return outcomes


# --- the audience ---------------------------------------------------------------------------------------------------


def test_each_alert_reaches_exactly_the_members_who_may_see_its_campaign(env):
    team = make_team(env)
    rule = env.rule(team.org, SPEND_OVER_100, {"notify": {"roles": ["owner", "admin", "member"]}})

    summary = runner(env).run(RunRequest(rule, T, trigger="schedule"))

    allowed_c1 = sorted([team.owner, team.admin, team.campaign_member, team.account_member])
    allowed_c2 = sorted([team.owner, team.admin])
    assert (summary["status"], summary["matched"], summary["alerts"]) == ("succeeded", 2, 2), summary["error"]
    assert summary["notified_users"] == allowed_c1
    assert env.run_row(summary["run_id"])["notified_users"] == allowed_c1
    assert [(a["entity_id"], a["entity_name"], a["notified_users"]) for a in env.alerts(rule)] == [
        ("c1", "Spring Sale", allowed_c1), ("c2", "Brand Push", allowed_c2)]
    in_app = env.pg("SELECT user_id, org_id, rule_id::text AS rule_id, severity, kind, entities, read_at "
                    "FROM notifications WHERE run_id = %s ORDER BY user_id", (summary["run_id"],))
    listed = {row["user_id"]: [e["entity_id"] for e in row["entities"]] for row in in_app}
    assert listed == {team.owner: ["c1", "c2"], team.admin: ["c1", "c2"], team.campaign_member: ["c1"],
                      team.account_member: ["c1"]}
    assert {(r["org_id"], r["rule_id"], r["severity"], r["kind"], r["read_at"]) for r in in_app} == {
        (team.org, rule, "warning", "alert", None)}
    c1 = in_app[0]["entities"][0]
    assert (c1["entity_name"], c1["values"], c1["conditions"]) == ("Spring Sale", {"spend": 150.5}, [True])
    assert [(d["channel"], d["status"], d["attempts"], d["user_id"]) for d in deliveries(env, summary["run_id"])] == [
        ("in_app", "sent", 1, int(recipient)) for recipient in sorted(str(u) for u in listed)]


def test_listing_viewers_adds_the_viewer_with_a_grant_and_never_the_one_without(env):
    team = make_team(env)
    rule = env.rule(team.org, SPEND_OVER_100, {"notify": {"roles": ["viewer"]}})

    summary = runner(env).run(RunRequest(rule, T, trigger="schedule"))

    assert summary["notified_users"] == [team.listed_viewer]
    assert [(a["entity_id"], a["notified_users"]) for a in env.alerts(rule)] == [
        ("c1", []), ("c2", [team.listed_viewer])]


def test_a_rule_of_the_other_organization_notifies_only_its_own_members(env):
    team = make_team(env)
    rule = env.rule(team.other_org, SPEND_OVER_100)

    summary = runner(env).run(RunRequest(rule, T, trigger="schedule"))

    assert summary["notified_users"] == sorted([team.other_owner, team.outsider, team.elsewhere_member])
    assert [(a["entity_id"], a["notified_users"]) for a in env.alerts(rule)] == [
        ("c1", sorted([team.other_owner, team.outsider, team.elsewhere_member])),
        ("c2", sorted([team.other_owner, team.outsider]))]


def test_dry_runs_and_backfills_notify_nobody(env):
    team = make_team(env)
    rule = env.rule(team.org, SPEND_OVER_100, {"notify": {"channels": ["in_app", "email"]}})

    dry = runner(env).run(RunRequest(rule, T, dry_run=True))
    backfill = runner(env).run(RunRequest(rule, T, trigger="backfill"))

    assert (dry["matched"], dry["notified_users"], backfill["alerts"], backfill["notified_users"]) == (2, [], 2, [])
    assert env.pg("SELECT count(*) AS n FROM deliveries")[0]["n"] == 0
    assert env.pg("SELECT count(*) AS n FROM notifications")[0]["n"] == 0


# --- e-mail -----------------------------------------------------------------------------------------------------------


def test_one_email_per_verified_user_over_starttls_listing_their_entities(env, tmp_path, monkeypatch):
    team = make_team(env)
    env.pg("UPDATE users SET email_verified = FALSE WHERE id = %s", (team.campaign_member,))
    cert, key = self_signed_certificate(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    rule = env.rule(team.org, SPEND_OVER_100, {"severity": "critical",
                                               "notify": {"channels": ["email"], "roles": ["owner", "member"]}})
    summary = runner(env).run(RunRequest(rule, T, trigger="schedule"))

    with SmtpReceiver(starttls_cert=(cert, key), auth=("mailer", "p@ss/word")) as smtp:
        config = settings(smtp_url=smtp.url.replace("127.0.0.1", "localhost"), smtp_from="alerts@example.com")
        outcomes = deliver_all(env, summary["run_id"], config)
        mails = smtp.wait_for(2)

    # The campaign member's address is not verified: an in-app channel would reach them, e-mail does not.
    assert summary["notified_users"] == sorted([team.owner, team.campaign_member, team.account_member])
    assert sorted(outcomes.values()) == ["sent", "sent"]
    by_recipient = {mail.rcpt_tos[0]: mail for mail in mails}
    assert sorted(by_recipient) == sorted([f"owner-{team.org}@example.com", f"account_member-{team.org}@example.com"])
    assert all(mail.tls and mail.mail_from == "alerts@example.com" for mail in mails)
    owner_mail = by_recipient[f"owner-{team.org}@example.com"].message
    member_mail = by_recipient[f"account_member-{team.org}@example.com"].message
    assert owner_mail["Subject"] == f"[critical] Rule {rule_number(env, rule)}: 2 entities matched"
    owner_text = owner_mail.get_content()
    assert "campaign Spring Sale (c1): spend = 150.5" in owner_text
    assert "campaign Brand Push (c2): spend = 320" in owner_text
    assert "Brand Push" not in member_mail.get_content()
    assert member_mail["Subject"].endswith(": 1 entity matched")
    rows = deliveries(env, summary["run_id"])
    assert [(r["channel"], r["status"], r["attempts"], r["last_error"]) for r in rows] == [
        ("email", "sent", 1, None), ("email", "sent", 1, None)]
    assert {owner_mail["Message-ID"], member_mail["Message-ID"]} == {f"<{r['idempotency_key']}@rules>" for r in rows}


def rule_number(env, rule_id: str) -> str:
    return env.pg("SELECT name FROM rules WHERE id = %s", (rule_id,))[0]["name"].removeprefix("Rule ")


def test_email_over_smtps(env, tmp_path, monkeypatch):
    team = make_team(env)
    cert, key = self_signed_certificate(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    rule = env.rule(team.org, SPEND_OVER_100, {"notify": {"channels": ["email"], "roles": ["owner"]}})
    summary = runner(env).run(RunRequest(rule, T, trigger="schedule"))

    with SmtpReceiver(implicit_tls_cert=(cert, key)) as smtp:
        outcomes = deliver_all(env, summary["run_id"], settings(smtp_url=smtp.url.replace("127.0.0.1", "localhost")))
        [mail] = smtp.wait_for(1)

    assert list(outcomes.values()) == ["sent"]
    assert (mail.tls, mail.rcpt_tos) == (True, [f"owner-{team.org}@example.com"])


def test_without_smtp_url_email_fails_with_that_reason_and_in_app_still_works(env):
    team = make_team(env)
    rule = env.rule(team.org, SPEND_OVER_100, {"notify": {"channels": ["in_app", "email"], "roles": ["owner"]}})
    summary = runner(env).run(RunRequest(rule, T, trigger="schedule"))

    outcomes = deliver_all(env, summary["run_id"], settings())

    assert list(outcomes.values()) == ["failed"]
    assert [(r["channel"], r["status"], r["attempts"], r["last_error"]) for r in deliveries(env, summary["run_id"])] == [
        ("email", "failed", 1, "SMTP_URL is not set, so e-mail cannot be sent"), ("in_app", "sent", 1, None)]


# --- Slack and webhooks -------------------------------------------------------------------------------------------


def test_slack_and_a_signed_webhook_get_one_post_per_run(env):
    team = make_team(env)
    with HttpReceiver() as http:
        rule = env.rule(team.org, SPEND_OVER_100, {"severity": "info", "notify": {
            "channels": ["slack", "webhook"], "slack_webhook_url": http.url("/slack"),
            "webhook_url": http.url("/hook?team=ads")}})
        summary = runner(env).run(RunRequest(rule, T, trigger="schedule"))
        outcomes = deliver_all(env, summary["run_id"], settings(webhook_secret=SECRET))
        [slack] = http.wait_for(1, "/slack")
        [hook] = http.wait_for(1, "/hook?team=ads")

    assert sorted(outcomes.values()) == ["sent", "sent"]
    rows = {r["channel"]: r for r in deliveries(env, summary["run_id"])}
    expected = "sha256=" + hmac.new(SECRET.encode(), hook.body, hashlib.sha256).hexdigest()
    assert hook.headers["x-signature"] == expected
    assert hook.headers["content-type"] == "application/json"
    assert hook.headers["idempotency-key"] == str(rows["webhook"]["idempotency_key"])
    body = json.loads(hook.body)
    assert {k: body[k] for k in ("event", "delivery_id", "run_id", "org_id", "evaluated_at")} == {
        "event": "alert", "delivery_id": str(rows["webhook"]["idempotency_key"]), "run_id": summary["run_id"],
        "org_id": team.org, "evaluated_at": T.strftime("%Y-%m-%dT%H:%M:%SZ")}
    assert body["rule"] == {"id": rule, "name": f"Rule {rule_number(env, rule)}", "severity": "info"}
    assert body["entities"] == [
        {"entity_type": "campaign", "entity_id": "c1", "entity_name": "Spring Sale", "values": {"spend": 150.5},
         "conditions": [True]},
        {"entity_type": "campaign", "entity_id": "c2", "entity_name": "Brand Push", "values": {"spend": 320.0},
         "conditions": [True]}]
    text = json.loads(slack.body)["text"]
    assert "x-signature" not in slack.headers
    assert text.startswith(f"*[info] Rule {rule_number(env, rule)}: 2 entities matched*")
    assert "campaign Spring Sale (c1): spend = 150.5" in text


def test_a_sent_delivery_is_never_sent_again(env):
    team = make_team(env)
    with HttpReceiver() as http:
        rule = env.rule(team.org, SPEND_OVER_100, {"notify": {"channels": ["webhook"], "webhook_url": http.url("/h")}})
        summary = runner(env).run(RunRequest(rule, T, trigger="schedule"))
        [row] = deliveries(env, summary["run_id"])
        first = deliver(env.postgres, row["id"], settings())
        second = deliver(env.postgres, row["id"], settings())
        again = runner(env).run(RunRequest(rule, T, trigger="schedule"))
        http.wait_for(1)

    assert (first.status, second, again["run_id"]) == ("sent", None, summary["run_id"])
    assert len(http.requests()) == 1
    assert env.pg("SELECT count(*) AS n FROM deliveries")[0]["n"] == 1


def test_a_failing_receiver_is_retried_then_recorded_as_failed(env):
    team = make_team(env)
    with HttpReceiver() as http:
        http.answer("/h", [503, 500, 404])
        rule = env.rule(team.org, SPEND_OVER_100, {"notify": {"channels": ["webhook"], "webhook_url": http.url("/h")}})
        summary = runner(env).run(RunRequest(rule, T, trigger="schedule"))
        [row] = deliveries(env, summary["run_id"])
        outcomes = []
        for _ in range(3):
            outcome = deliver(env.postgres, row["id"], settings(delivery_backoff_seconds=0.001))
            outcomes.append((outcome.status, outcome.error))
            env.pg("UPDATE deliveries SET next_attempt_at = next_attempt_at - interval '1 hour' WHERE id = %s",
                   (row["id"],))

    assert [status for status, _error in outcomes] == ["pending", "pending", "failed"]
    assert outcomes[0][1].endswith("answered HTTP 503 Service Unavailable")
    [final] = deliveries(env, summary["run_id"])
    assert (final["status"], final["attempts"], final["last_error"]) == (
        "failed", 3, "127.0.0.1 answered HTTP 404 Not Found")
    assert deliver(env.postgres, row["id"], settings()) is None


# --- private addresses --------------------------------------------------------------------------------------------


def test_a_rule_posting_to_loopback_is_refused_unless_allowed(env):
    team = make_team(env)
    rule = env.rule(team.org, SPEND_OVER_100, {"notify": {"channels": ["webhook"],
                                                          "webhook_url": "http://127.0.0.1:9/hook"}})

    refused = RuleRunner(env.postgres, env.clickhouse).run(RunRequest(rule, T, trigger="schedule"))

    assert refused["status"] == "failed"
    assert "actions.notify.webhook_url" in refused["error"] and "not a public address" in refused["error"]
    assert env.alerts(rule) == [] and env.pg("SELECT count(*) AS n FROM deliveries")[0]["n"] == 0


def test_a_host_name_that_resolves_to_a_private_address_is_refused_at_send_time():
    name = socket.gethostname()
    addresses = {info[4][0] for info in socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)}
    if not any(address.startswith("127.") or address == "::1" for address in addresses):
        pytest.skip(f"{name} does not resolve to loopback on this machine")

    with pytest.raises(DeliveryFailed) as refused:
        checked_address(f"http://{name}:8080/hook", frozenset())

    assert refused.value.permanent
    assert f"{name} resolves to" in str(refused.value) and "not a public address" in str(refused.value)
    assert checked_address(f"http://{name}:8080/hook", frozenset({name})) in addresses


# --- cooldown and resolve -----------------------------------------------------------------------------------------


def test_cooldown_holds_back_alerts_and_their_notifications(env):
    team = make_team(env)
    rule = env.rule(team.org, SPEND_OVER_100, {"cooldown_minutes": 30})

    first = runner(env).run(RunRequest(rule, T, trigger="schedule"))
    within = runner(env).run(RunRequest(rule, T + timedelta(minutes=29), trigger="schedule"))
    after = runner(env).run(RunRequest(rule, T + timedelta(minutes=31), trigger="schedule"))

    assert [(s["alerts"], len(deliveries(env, s["run_id"])) > 0) for s in (first, within, after)] == [
        (2, True), (0, False), (2, True)]
    assert within["notified_users"] == []


def test_an_entity_that_stops_matching_gets_one_resolved_notice(env):
    team = make_team(env)
    later = T + timedelta(days=1)
    env.metrics({"org_id": team.org, "date": day_before(later), "campaign_id": "c2", "campaign_name": "Brand Push",
                 "dsp_type": "TTD", "advertiser_id": "adv-2", "spend": "410", "impressions": 2000},
                {"org_id": team.org, "date": day_before(later), "campaign_id": "c1", "campaign_name": "Spring Sale",
                 "dsp_type": "DV360", "advertiser_id": "adv-1", "spend": "20", "impressions": 900})
    with HttpReceiver() as http:
        rule = env.rule(team.org, SPEND_OVER_100, {
            "notify_on_resolve": True, "cooldown_minutes": 0,
            "notify": {"channels": ["in_app", "webhook"], "roles": ["owner", "member"], "webhook_url": http.url("/h")}})
        first = runner(env).run(RunRequest(rule, T, trigger="schedule"))
        second = runner(env).run(RunRequest(rule, later, trigger="schedule"))
        third = runner(env).run(RunRequest(rule, later + timedelta(hours=1), trigger="schedule"))
        for summary in (first, second, third):
            deliver_all(env, summary["run_id"], settings())
        posts = http.wait_for(4)

    # c1 fired at T and stopped matching at `later`: one resolved notice, to c1's audience, and never again.
    resolved = env.pg("SELECT user_id, entities FROM notifications WHERE kind = 'resolved' ORDER BY user_id")
    assert [(r["user_id"], [e["entity_id"] for e in r["entities"]]) for r in resolved] == [
        (user, ["c1"]) for user in sorted([team.owner, team.campaign_member, team.account_member])]
    assert {r["run_id"] for r in env.pg("SELECT run_id::text AS run_id FROM notifications WHERE kind = 'resolved'")} == {
        second["run_id"]}
    events = [(json.loads(p.body)["event"], [e["entity_id"] for e in json.loads(p.body)["entities"]]) for p in posts]
    assert events == [("alert", ["c1", "c2"]), ("alert", ["c2"]), ("resolved", ["c1"]), ("alert", ["c2"])]
    assert (second["matched"], second["alerts"], third["alerts"]) == (1, 1, 1)
    states = env.pg("SELECT entity_id, firing FROM alert_states WHERE rule_id = %s ORDER BY entity_id", (rule,))
    assert [(s["entity_id"], s["firing"]) for s in states] == [("c1", False), ("c2", True)]


@pytest.mark.parametrize("url", ["http://10.0.0.5/hook", "http://169.254.169.254/latest/meta-data/",
                                 "http://[fe80::1]/hook", "http://[::ffff:127.0.0.1]/hook", "http://0x7f.1/hook",
                                 "https://localhost/hook"])
def test_a_private_address_is_refused_at_send_time_when_no_longer_allowed(url):
    with pytest.raises(DeliveryFailed) as refused:
        checked_address(url, frozenset())

    assert refused.value.permanent and "not a public address" in str(refused.value)
