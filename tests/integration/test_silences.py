"""Silences and acknowledgements (the README's "Silences and acknowledgements") on the real PostgreSQL and the
embedded ClickHouse: what a silenced or acknowledged entity still gets (its alert_events, its firing state) and
what it does not (any channel's notice), silences starting and ending between runs, acknowledgements ending when
their entity resolves, dry runs and backfills, who may create them, their audit rows, and `rulesctl`.

The team is test_notifications' (make_team): campaigns c1 (DV360, adv-1, spend 150.5) and c2 (TTD, adv-2, spend 320)
match `spend > 100`; c1's audience is the owner, the admin, the campaign member and the account member, c2's the
owner and the admin. A silence must end after now, and an acknowledgement covers the runs as of T after it was
made, so runs here are as of instants around now (`now`, when each test starts).
"""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime, timedelta

import pytest
from psycopg.types.json import Jsonb

from engine.model import parse_rule
from engine.silences import SilenceScope
from storage.results import ResultStore
from tests.conftest import RULESCTL
from tests.integration.celery_support import iso, naive, own_redis, services_on
from tests.integration.receivers import HttpReceiver, SmtpReceiver
from tests.integration.test_notifications import LOOPBACK, T, day_before, deliver_all, make_team, runner, settings
from worker.backfill import backfill, format_days
from worker.batch_runner import BatchRequest, BatchRunner
from worker.runner import RunRequest
from worker.silencing import (BadSilenceRequest, SilenceRefused, SilenceRequest, acknowledge, add_silence,
                              expire_silence, list_silences, silence_request)

OVER_100 = {"window": "lifetime", "logic": {">": [{"var": "spend"}, 100]}}
C1_ONLY = SilenceScope(entity_type="campaign", entity_id="c1")


@pytest.fixture
def now() -> datetime:
    """When the test starts, to the second."""
    return datetime.now(UTC).replace(microsecond=0)


def every_channel(http: HttpReceiver, **actions) -> dict:
    return {"cooldown_minutes": 0, **actions, "notify": {
        "channels": ["in_app", "email", "slack", "webhook"], "roles": ["owner", "admin", "member"],
        "slack_webhook_url": http.url("/slack"), "webhook_url": http.url("/hook")}}


IN_APP = {"cooldown_minutes": 0, "notify": {"roles": ["owner", "admin", "member"]}}


def run(env, rule: str, at: datetime, **options) -> dict:
    summary = runner(env).run(RunRequest(rule, at, trigger=options.pop("trigger", "schedule"), **options))
    assert summary["status"] == "succeeded", summary["error"]
    return summary


def told(env, run_id: str) -> dict[str, list[str]]:
    """Each in-app recipient (by user id) of the run and the entity ids their alert notification lists."""
    return {str(row["user_id"]): [e["entity_id"] for e in row["entities"]] for row in env.pg(
        "SELECT user_id, entities FROM notifications WHERE run_id = %s AND kind = 'alert'", (run_id,))}


def users(*ids: int) -> dict[str, list[str]]:
    return {str(user): ["c1"] for user in ids}


def grant(env, user: int, org: int, entity_type: str, entity_id: str, permission: str = "edit",
          expires: datetime | None = None) -> None:
    env.pg("INSERT INTO entity_permissions (user_id, org_id, entity_type, entity_id, permission, expires_at) "
           "VALUES (%s, %s, %s, %s, %s, %s)",
           (user, org, entity_type, entity_id, permission, expires.replace(tzinfo=None) if expires else None))


def silence(env, org: int, by: int, scope: SilenceScope, **period) -> dict:
    period = period or {"duration": timedelta(hours=1)}
    return add_silence(env.postgres, SilenceRequest(org, by, scope, **period)).to_dict()


def ack(env, rule: str, entity_id: str, by: int, **options):
    return acknowledge(env.postgres, ResultStore(env.clickhouse), rule, "campaign", entity_id, by, **options)


def count(env, table: str) -> int:
    return env.pg(f"SELECT count(*) AS n FROM {table}")[0]["n"]


MAKE_TEAM_CAMPAIGNS = {"c1": ("Spring Sale", "DV360", "adv-1"), "c2": ("Brand Push", "TTD", "adv-2")}


def correct_spend(data, org: int, campaign_id: str, amount: str) -> None:
    """A spend correction of make_team's campaign (a credit when negative) on its day: the rule's conditions, and
    so its entities' states, stay as they are while the campaign's lifetime spend changes."""
    name, dsp, advertiser = MAKE_TEAM_CAMPAIGNS[campaign_id]
    data.metrics({"org_id": org, "date": day_before(T), "campaign_id": campaign_id, "campaign_name": name,
                  "dsp_type": dsp, "advertiser_id": advertiser, "spend": amount})


# --- what a silence withholds -------------------------------------------------------------------------------------


def test_a_silenced_campaign_is_alerted_as_usual_and_reaches_no_channel(env, now):
    team = make_team(env)
    with SmtpReceiver() as smtp, HttpReceiver() as http:
        rule = env.rule(team.org, OVER_100, every_channel(http))
        silence(env, team.org, team.admin, SilenceScope(rule_id=rule, entity_type="campaign", entity_id="c1"))
        summary = run(env, rule, now + timedelta(minutes=5))
        outcomes = deliver_all(env, summary["run_id"], settings(smtp_url=smtp.url))
        mails = smtp.wait_for(2)
        [slack] = http.wait_for(1, "/slack")
        [hook] = http.wait_for(1, "/hook")

    # c1's evaluation and alert are written; nobody hears of it on any channel; c2 goes out as usual.
    assert (summary["matched"], summary["alerts"], summary["silenced"], summary["acknowledged"]) == (2, 2, 1, 0)
    assert summary["notified_users"] == sorted([team.owner, team.admin])
    assert [e["entity_id"] for e in env.evaluations(rule) if e["matched"]] == ["c1", "c2"]
    assert [(a["entity_id"], a["notified_users"]) for a in env.alerts(rule)] == [
        ("c1", []), ("c2", sorted([team.owner, team.admin]))]
    assert told(env, summary["run_id"]) == {str(team.owner): ["c2"], str(team.admin): ["c2"]}
    assert sorted(outcomes.values()) == ["sent"] * 4
    assert sorted(mail.rcpt_tos[0] for mail in mails) == sorted(
        [f"owner-{team.org}@example.com", f"admin-{team.org}@example.com"])
    assert all("Spring Sale" not in mail.message.get_content() for mail in mails)
    assert "Spring Sale" not in json.loads(slack.body)["text"]
    assert [e["entity_id"] for e in json.loads(hook.body)["entities"]] == ["c2"]
    assert env.runs(rule)[0]["silenced"] == 1


def test_a_silence_that_starts_and_ends_between_runs_silences_only_the_runs_inside_it(env, now):
    team = make_team(env)
    rule = env.rule(team.org, OVER_100, IN_APP)
    other_rule = env.rule(team.org, OVER_100, IN_APP)
    starts, ends = now + timedelta(minutes=10), now + timedelta(minutes=20)
    # Every rule of the organization, for the DV360 advertiser adv-1: c1.
    silence(env, team.org, team.owner, SilenceScope(dsp_type="DV360", advertiser_id="adv-1"),
            starts_at=starts, ends_at=ends)
    everyone_on_c1 = users(team.campaign_member, team.account_member)

    before = run(env, rule, starts - timedelta(minutes=5))
    # The rules due inside the silence run as one batch.
    inside = BatchRunner(env.postgres, env.clickhouse, allowed_hosts=LOOPBACK).run_batch(
        BatchRequest(team.org, starts + timedelta(minutes=5), (rule, other_rule)))
    at_the_end = run(env, rule, ends)
    after = run(env, rule, ends + timedelta(minutes=5))

    assert [s["status"] for s in inside] == ["succeeded", "succeeded"]
    assert [(s["alerts"], s["silenced"]) for s in (before, *inside, at_the_end, after)] == [
        (2, 0), (2, 1), (2, 1), (2, 0), (2, 0)]
    assert told(env, before["run_id"]).items() >= everyone_on_c1.items()
    for summary in inside:
        assert told(env, summary["run_id"]) == {str(team.owner): ["c2"], str(team.admin): ["c2"]}
    assert told(env, after["run_id"]).items() >= everyone_on_c1.items()
    assert [a["notified_users"] for a in env.alerts(rule, starts + timedelta(minutes=5)) if a["entity_id"] == "c1"] \
        == [[]]


def test_a_silence_by_advertiser_counts_the_campaigns_it_covers_while_they_cool_down(env, now):
    team = make_team(env)
    rule = env.rule(team.org, OVER_100, {**IN_APP, "cooldown_minutes": 60})
    first = run(env, rule, now + timedelta(minutes=5))
    silence(env, team.org, team.owner, SilenceScope(dsp_type="DV360", advertiser_id="adv-1"))

    # Both campaigns stay firing in their cooldown: nothing is alerted or written of them, yet the silence covers c1
    # by its DSP and advertiser, which only its name tells.
    cooling = run(env, rule, now + timedelta(minutes=10))

    assert (first["alerts"], first["silenced"]) == (2, 0)
    assert (cooling["matched"], cooling["alerts"], cooling["silenced"], cooling["notified_users"]) == (2, 0, 1, [])


def test_a_silence_of_one_rule_leaves_the_other_rules_alone(env, now):
    team = make_team(env)
    rule, other_rule = env.rule(team.org, OVER_100, IN_APP), env.rule(team.org, OVER_100, IN_APP)
    silence(env, team.org, team.owner, SilenceScope(rule_id=rule))

    silenced, untouched = run(env, rule, now + timedelta(minutes=5)), run(env, other_rule, now + timedelta(minutes=5))

    assert (silenced["alerts"], silenced["silenced"], silenced["notified_users"], count(env, "deliveries")) == (
        2, 2, [], len(untouched["notified_users"]))
    assert (untouched["silenced"], len(untouched["notified_users"])) == (0, 4)


def test_a_silence_withholds_the_resolved_notice_of_an_entity_it_covers(env, now):
    team = make_team(env)
    rule = env.rule(team.org, OVER_100, {**IN_APP, "notify_on_resolve": True})
    run(env, rule, now - timedelta(minutes=1))
    silence(env, team.org, team.owner, C1_ONLY)
    correct_spend(env, team.org, "c1", "-100")

    resolving = run(env, rule, now + timedelta(minutes=5))

    assert resolving["lifecycle"]["resolved"] == 1
    assert env.pg("SELECT entity_id, firing FROM alert_states WHERE rule_id = %s ORDER BY entity_id", (rule,)) == [
        {"entity_id": "c1", "firing": False}, {"entity_id": "c2", "firing": True}]
    assert count(env, f"notifications WHERE run_id = '{resolving['run_id']}' AND kind = 'resolved'") == 0


# --- acknowledgements ----------------------------------------------------------------------------------------------


def test_an_acknowledged_entity_is_not_notified_again_until_it_resolves_then_the_acknowledgement_ends(env, now):
    team = make_team(env)
    rule = env.rule(team.org, OVER_100, {**IN_APP, "notify_on_resolve": True})
    grant(env, team.campaign_member, team.org, "campaign", "c1")
    first = run(env, rule, now - timedelta(minutes=1))

    acknowledgement = ack(env, rule, "c1", team.campaign_member, comment="looking into it")
    still = run(env, rule, now + timedelta(minutes=5))
    correct_spend(env, team.org, "c1", "-100")  # c1 now spends 50.5
    resolving = run(env, rule, now + timedelta(minutes=6))
    correct_spend(env, team.org, "c1", "100")
    again = run(env, rule, now + timedelta(minutes=7))

    assert told(env, first["run_id"]).items() >= users(team.campaign_member).items()
    assert (still["alerts"], still["silenced"], still["acknowledged"]) == (2, 0, 1)
    assert told(env, still["run_id"]) == {str(team.owner): ["c2"], str(team.admin): ["c2"]}
    assert [(a["entity_id"], a["notified_users"]) for a in env.alerts(rule, now + timedelta(minutes=5))] == [
        ("c1", []), ("c2", sorted([team.owner, team.admin]))]
    # The resolve is told to c1's audience, and ends the acknowledgement as of that run's T.
    resolved = env.pg("SELECT user_id, entities FROM notifications WHERE run_id = %s AND kind = 'resolved'",
                      (resolving["run_id"],))
    assert sorted(row["user_id"] for row in resolved) == sorted(
        [team.owner, team.admin, team.campaign_member, team.account_member])
    assert {e["entity_id"] for row in resolved for e in row["entities"]} == {"c1"}
    [row] = env.pg("SELECT * FROM acknowledgements")
    assert (row["id"], row["ended_at"], str(row["ended_by_run"]), row["comment"]) == (
        acknowledgement.id, (now + timedelta(minutes=6)).replace(tzinfo=None), resolving["run_id"], "looking into it")
    assert (resolving["acknowledged"], again["acknowledged"]) == (0, 0)
    assert told(env, again["run_id"]).items() >= users(team.campaign_member, team.account_member).items()


def test_a_rule_without_firing_state_takes_its_alerts_and_ends_the_acknowledgement_when_it_stops_matching(env, now):
    team = make_team(env)
    rule = env.rule(team.org, OVER_100, IN_APP)

    with pytest.raises(BadSilenceRequest, match="campaign c1 is not firing for rule"):
        ack(env, rule, "c1", team.owner)
    run(env, rule, now - timedelta(minutes=1))
    with pytest.raises(BadSilenceRequest, match="campaign c3 is not firing"):
        ack(env, rule, "c3", team.owner)
    first = ack(env, rule, "c1", team.owner)
    with pytest.raises(BadSilenceRequest, match=f"acknowledged already \\(acknowledgement {first.id}, by user "
                                                f"{team.owner} at"):
        ack(env, rule, "c1", team.admin)
    quiet = run(env, rule, now + timedelta(minutes=5))
    correct_spend(env, team.org, "c1", "-100")
    stopped = run(env, rule, now + timedelta(minutes=6))

    assert quiet["acknowledged"] == 1 and stopped["acknowledged"] == 0
    assert [(r["ended_at"], str(r["ended_by_run"])) for r in env.pg("SELECT * FROM acknowledgements")] == [
        ((now + timedelta(minutes=6)).replace(tzinfo=None), stopped["run_id"])]
    second = ack(env, rule, "c2", team.owner)
    assert second.id != first.id


def test_an_entity_that_resolved_cannot_be_acknowledged(env, now):
    team = make_team(env)
    rule = env.rule(team.org, OVER_100, {**IN_APP, "notify_on_resolve": True})
    run(env, rule, now - timedelta(minutes=2))
    correct_spend(env, team.org, "c1", "-100")
    run(env, rule, now - timedelta(minutes=1))

    with pytest.raises(BadSilenceRequest, match="campaign c1 is not firing"):
        ack(env, rule, "c1", team.owner)
    assert ack(env, rule, "c2", team.owner).entity_id == "c2"


# --- dry runs and backfills ---------------------------------------------------------------------------------------


def test_dry_runs_and_backfills_report_what_would_be_withheld_and_write_nothing(env, now):
    team = make_team(env)
    schedule = {"schedule": "0 */6 * * *"}
    rule = env.rule(team.org, {**OVER_100, **schedule}, IN_APP)
    run(env, rule, now - timedelta(minutes=1))
    acknowledgement = ack(env, rule, "c2", team.owner)
    silence(env, team.org, team.owner, C1_ONLY, starts_at=now - timedelta(days=3), ends_at=now + timedelta(hours=1))
    # c1 still matches (and is silenced); c2 no longer does, which a run that writes would take as its resolve.
    c1_only = {"and": [{">": [{"var": "spend"}, 100]}, {"<": [{"var": "spend"}, 300]}]}
    env.pg("UPDATE rules SET conditions = %s WHERE id = %s", (Jsonb({**OVER_100, **schedule, "logic": c1_only}), rule))
    deliveries_before = count(env, "deliveries")

    dry = run(env, rule, now + timedelta(minutes=5), dry_run=True)
    yesterday = (now - timedelta(days=1)).date()
    row = env.pg("SELECT conditions, actions FROM rules WHERE id = %s", (rule,))[0]
    replay = backfill(runner(env), rule, parse_rule(row["conditions"], row["actions"], timezone="UTC"), "UTC",
                      yesterday, yesterday, write=True)

    assert (dry["matched"], dry["silenced"], dry["acknowledged"], dry["alerts"]) == (1, 1, 0, 0)
    assert [(s["status"], s["alerts"], s["silenced"], s["acknowledged"]) for s in replay.summaries] == [
        ("succeeded", 1, 1, 0)] * 4
    assert "  notices withheld: 4 silenced, 0 acknowledged" in format_days(replay, "UTC").splitlines()
    assert count(env, "deliveries") == deliveries_before
    assert env.pg("SELECT ended_at FROM acknowledgements WHERE id = %s", (acknowledgement.id,)) == [
        {"ended_at": None}]


# --- who may silence and acknowledge, and the audit log -----------------------------------------------------------


@pytest.fixture
def grants(env, now):
    """make_team's people plus members by what they hold on a rule of org A: an edit grant on the rule, on c1,
    a view grant on the rule, an expired edit grant on it, an edit grant held in org B; a viewer with an edit
    grant on it."""
    team = make_team(env)
    rule = env.rule(team.org, OVER_100, IN_APP)
    people = {"owner": team.owner, "admin": team.admin, "outsider": team.outsider}
    for name, role, org, entity_type, entity_id, permission, expires in (
            ("rule_editor", "member", team.org, "rule", rule, "edit", None),
            ("c1_editor", "member", team.org, "campaign", "c1", "edit", now + timedelta(days=1)),
            ("rule_viewer", "member", team.org, "rule", rule, "view", None),
            ("expired_editor", "member", team.org, "rule", rule, "edit", now - timedelta(minutes=1)),
            ("elsewhere_editor", "member", team.other_org, "rule", rule, "edit", None),
            ("viewer_editor", "viewer", team.org, "rule", rule, "edit", None)):
        people[name] = env.user(f"{name}@example.com")
        env.member(people[name], team.org, role)
        if org != team.org:
            env.member(people[name], org, role)
        grant(env, people[name], org, entity_type, entity_id, permission, expires)
    return team, rule, people


RULE_AND_C1, RULE_ONLY, C1_EVERY_RULE, WHOLE_ORG = "rule and c1", "rule", "c1 of every rule", "every rule"


@pytest.mark.parametrize(("who", "scope", "allowed"), [
    ("owner", WHOLE_ORG, True), ("admin", WHOLE_ORG, True),
    ("rule_editor", RULE_AND_C1, True), ("rule_editor", RULE_ONLY, True), ("rule_editor", C1_EVERY_RULE, False),
    ("c1_editor", RULE_AND_C1, True), ("c1_editor", C1_EVERY_RULE, True), ("c1_editor", RULE_ONLY, False),
    ("rule_editor", WHOLE_ORG, False), ("rule_viewer", RULE_AND_C1, False), ("expired_editor", RULE_AND_C1, False),
    ("elsewhere_editor", RULE_AND_C1, False), ("viewer_editor", RULE_AND_C1, False), ("outsider", RULE_AND_C1, False),
])
def test_who_may_silence(env, grants, who, scope, allowed):
    team, rule, people = grants
    scopes = {RULE_AND_C1: SilenceScope(rule_id=rule, entity_type="campaign", entity_id="c1"),
              RULE_ONLY: SilenceScope(rule_id=rule), C1_EVERY_RULE: C1_ONLY, WHOLE_ORG: SilenceScope()}
    request = SilenceRequest(team.org, people[who], scopes[scope], duration=timedelta(hours=2), comment="burst")

    if allowed:
        created = add_silence(env.postgres, request)
        [audit] = env.audit_logs()
        assert (audit["action"], audit["resource_type"], audit["resource_id"], audit["user_id"], audit["org_id"]) == (
            "silence.create", "silence", str(created.id), people[who], team.org)
        assert audit["details"] == created.to_dict() and audit["details"]["comment"] == "burst"
    else:
        with pytest.raises(SilenceRefused, match=f"user {people[who]} .*may not silence"):
            add_silence(env.postgres, request)
        assert (count(env, "silences"), count(env, "audit_logs")) == (0, 0)


@pytest.mark.parametrize(("who", "allowed"), [
    ("owner", True), ("rule_editor", True), ("c1_editor", True), ("rule_viewer", False), ("expired_editor", False),
    ("viewer_editor", False), ("outsider", False),
])
def test_who_may_acknowledge(env, grants, who, allowed, now):
    team, rule, people = grants
    run(env, rule, now - timedelta(minutes=1))

    if allowed:
        created = ack(env, rule, "c1", people[who], comment="on it")
        [audit] = [row for row in env.audit_logs() if row["action"] == "alert.acknowledge"]
        assert (audit["resource_type"], audit["resource_id"], audit["user_id"]) == (
            "acknowledgement", str(created.id), people[who])
        assert (audit["details"]["rule_id"], audit["details"]["entity_id"], audit["details"]["comment"]) == (
            rule, "c1", "on it")
    else:
        with pytest.raises(SilenceRefused, match=f"user {people[who]} .*may not acknowledge campaign c1"):
            ack(env, rule, "c1", people[who])
        assert (count(env, "acknowledgements"), count(env, "audit_logs")) == (0, 0)


def test_expiring_a_silence_ends_it_now_and_is_audited(env, grants, now):
    team, rule, people = grants
    active = silence(env, team.org, people["rule_editor"], SilenceScope(rule_id=rule))
    scheduled = silence(env, team.org, team.owner, C1_ONLY, starts_at=now + timedelta(hours=1),
                        ends_at=now + timedelta(hours=2))

    with pytest.raises(SilenceRefused, match="may not expire silence"):
        expire_silence(env.postgres, active["id"], people["rule_viewer"])
    ended = expire_silence(env.postgres, active["id"], people["rule_editor"])
    never = expire_silence(env.postgres, scheduled["id"], team.admin)
    with pytest.raises(BadSilenceRequest, match=f"silence {active['id']} ended already"):
        expire_silence(env.postgres, active["id"], team.owner)
    with pytest.raises(BadSilenceRequest, match="no silence with id 0"):
        expire_silence(env.postgres, 0, team.owner)
    summary = run(env, rule, now + timedelta(minutes=90))

    assert ended.state(datetime.now(UTC)) == "ended" and ended.ends_at <= datetime.now(UTC).replace(tzinfo=None)
    assert never.ends_at == never.starts_at == (now + timedelta(hours=1)).replace(tzinfo=None)
    assert summary["silenced"] == 0
    assert list_silences(env.postgres, team.org, include_ended=False) == []
    assert [s.id for s in list_silences(env.postgres, team.org, include_ended=True)] == [active["id"], scheduled["id"]]
    expiries = [row for row in env.audit_logs() if row["action"] == "silence.expire"]
    assert [(row["resource_id"], row["user_id"]) for row in expiries] == [
        (str(active["id"]), people["rule_editor"]), (str(scheduled["id"]), team.admin)]


def test_a_repeated_task_request_returns_the_silence_it_created(env):
    team = make_team(env)
    request = SilenceRequest(team.org, team.owner, C1_ONLY, duration=timedelta(hours=1), request_id="task-1")

    first, again = add_silence(env.postgres, request), add_silence(env.postgres, request)

    assert first == again and (count(env, "silences"), count(env, "audit_logs")) == (1, 1)


@pytest.mark.parametrize(("fields", "message"), [
    ({"org_id": "1"}, "org_id: must be a whole number, got '1'"),
    ({"created_by": None}, "created_by: must be a whole number, got None"),
    ({"rule_id": "nope"}, "rule_id: not a rule id (a UUID): 'nope'"),
    ({"entity_type": "campaign"}, "entity_type and entity_id: give both (one entity) or neither (every entity)"),
    ({"dsp_type": 7}, "dsp_type: must be text, got 7"),
    ({"ends_at": "tomorrow"}, "ends_at: not an ISO 8601 time: 'tomorrow'"),
    ({"duration": "forever"}, "duration: not a duration such as 30m, 2h, 1d or 1w: 'forever'"),
    ({"duration": "2h", "ends_at": "2099-01-01T00:00:00Z"}, "give either the end of the silence or its duration"),
    ({"duration": None}, "give either the end of the silence or its duration"),
    ({"duration": "400d"}, "a silence lasts at most 365 days"),
    ({"duration": None, "starts_at": "2019-01-01", "ends_at": "2020-01-01T00:00:00"},
     "the silence would end before now"),
    ({"org_id": 0}, "no organization with id 0"),
    ({"created_by": 0}, "no user with id 0"),
    ({"rule_id": "00000000-0000-4000-8000-000000000000"}, "no rule 00000000-0000-4000-8000-000000000000 in"),
])
def test_a_bad_silence_request_is_named_and_writes_nothing(env, fields, message):
    team = make_team(env)
    given = {"org_id": team.org, "created_by": team.owner, "duration": "2h", **fields}

    with pytest.raises(BadSilenceRequest) as raised:
        add_silence(env.postgres, silence_request(given.pop("org_id"), given.pop("created_by"), **given))

    assert str(raised.value).startswith(message)
    assert (count(env, "silences"), count(env, "audit_logs")) == (0, 0)


def test_a_rule_of_another_organization_cannot_be_silenced_there(env):
    team = make_team(env)
    rule = env.rule(team.other_org, OVER_100, IN_APP)

    with pytest.raises(BadSilenceRequest, match=f"no rule {rule} in organization {team.org}"):
        silence(env, team.org, team.owner, SilenceScope(rule_id=rule))


# --- rulesctl -----------------------------------------------------------------------------------------------------


def rulesctl(env, *args: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "DATABASE_URL": env.pg_url, "CLICKHOUSE_URL": env.ch_url}
    return subprocess.run([RULESCTL, *args], env=environment, capture_output=True, text=True, timeout=60)


def test_rulesctl_silence_add_list_expire_and_ack(env, now):
    team = make_team(env)
    rule = env.rule(team.org, OVER_100, IN_APP)
    run(env, rule, now - timedelta(minutes=1))
    ends = (now + timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%S")

    added = rulesctl(env, "silence", "add", "--org", str(team.org), "--by", str(team.admin), "--rule", rule,
                     "--entity-type", "campaign", "--entity-id", "c1", "--ends", ends, "--comment", "burst", "--json")
    plain = rulesctl(env, "silence", "add", "--org", str(team.org), "--by", str(team.owner), "--dsp-type", "TTD",
                     "--for", "2h")
    listed = rulesctl(env, "silence", "list", "--org", str(team.org), "--json")
    created = json.loads(added.stdout)
    expired = rulesctl(env, "silence", "expire", str(created["id"]), "--by", str(team.owner), "--json")
    remaining = rulesctl(env, "silence", "list", "--org", str(team.org))
    everything = rulesctl(env, "silence", "list", "--org", str(team.org), "--all", "--json")
    acked = rulesctl(env, "ack", rule, "campaign", "c2", "--by", str(team.owner), "--comment", "seen", "--json")

    assert [p.returncode for p in (added, plain, listed, expired, remaining, everything, acked)] == [0] * 7, [
        p.stderr for p in (added, plain, listed, expired, remaining, everything, acked)]
    assert {k: created[k] for k in ("org_id", "rule_id", "entity_type", "entity_id", "dsp_type", "ends_at",
                                    "created_by", "comment", "state")} == {
        "org_id": team.org, "rule_id": rule, "entity_type": "campaign", "entity_id": "c1", "dsp_type": None,
        "ends_at": ends + "Z", "created_by": team.admin, "comment": "burst", "state": "active"}
    [ttd] = env.pg("SELECT * FROM silences WHERE dsp_type = 'TTD'")
    assert ttd["ends_at"] - ttd["starts_at"] == timedelta(hours=2)
    assert f"silence {ttd['id']} (active): every rule, every entity, DSP TTD, from " in plain.stdout
    assert [json.loads(line)["id"] for line in listed.stdout.splitlines()] == [created["id"], ttd["id"]]
    assert json.loads(expired.stdout)["state"] == "ended"
    assert remaining.stdout.splitlines() == plain.stdout.splitlines()
    assert len(everything.stdout.splitlines()) == 2
    acknowledgement = json.loads(acked.stdout)
    assert (acknowledgement["rule_id"], acknowledgement["entity_id"], acknowledgement["comment"],
            acknowledgement["ended_at"]) == (rule, "c2", "seen", None)
    assert [row["action"] for row in env.audit_logs()] == [
        "silence.create", "silence.create", "silence.expire", "alert.acknowledge"]


@pytest.mark.parametrize(("args", "code", "message"), [
    (("silence", "add", "--org", "{org}", "--by", "{owner}", "--entity-type", "campaign", "--for", "1h"), 2,
     "--entity-type and --entity-id go together"),
    (("silence", "add", "--org", "{org}", "--by", "{owner}", "--for", "soon"), 2, "--for: not a duration"),
    (("silence", "add", "--org", "{org}", "--by", "{owner}", "--ends", "2099-13-01"), 2, "--ends: not an ISO 8601"),
    (("silence", "add", "--org", "{org}", "--by", "{owner}", "--rule", "x", "--for", "1h"), 2, "--rule: not a rule"),
    (("silence", "add", "--org", "{org}", "--by", "{owner}"), 2, "one of the arguments --ends --for is required"),
    (("silence", "add", "--org", "{org}", "--by", "{viewer}", "--for", "1h"), 1, "user {viewer} (viewer) may not"),
    (("silence", "list", "--org", "0"), 2, "no organization with id 0"),
    (("silence", "expire", "0", "--by", "{owner}"), 2, "no silence with id 0"),
    (("ack", "{rule}", "campaign", "c3", "--by", "{owner}"), 2, "campaign c3 is not firing"),
    (("ack", "{rule}", "campaign", "c1", "--by", "{viewer}"), 1, "user {viewer} (viewer) may not acknowledge"),
])
def test_rulesctl_refuses_bad_input_in_one_line_and_writes_nothing(env, args, code, message, now):
    team = make_team(env)
    rule = env.rule(team.org, OVER_100, IN_APP)
    run(env, rule, now - timedelta(minutes=1))
    values = {"org": team.org, "owner": team.owner, "viewer": team.viewer, "rule": rule}

    process = rulesctl(env, *(arg.format(**values) for arg in args))

    assert process.returncode == code, process.stderr
    assert process.stdout == "" and len(process.stderr.splitlines()) == 1
    assert process.stderr.startswith("rulesctl: ") and message.format(**values) in process.stderr
    assert (count(env, "silences"), count(env, "acknowledgements"), count(env, "audit_logs")) == (0, 0, 0)


# --- through a real worker ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_through_a_worker_silences_and_acknowledgements_hold_between_runs_and_refusals_raise(pg_url, migrated_ch_url,
                                                                                           tmp_path, now):
    with own_redis(tmp_path) as broker, services_on(pg_url, migrated_ch_url, 0, tmp_path / "logs",
                                                     redis_server=broker.url) as services:
        data = services.data()
        team = make_team(data)
        rule = data.rule(team.org, OVER_100, {**IN_APP, "notify_on_resolve": True})
        services.start_worker(queues="rules")
        starts, ends = now + timedelta(minutes=10), now + timedelta(minutes=20)

        def evaluate(at: datetime) -> dict:
            summary = services.send("rules.evaluate", rule, scheduled_for=iso(at)).get(timeout=60)
            assert summary["status"] == "succeeded", summary
            return summary

        created = services.send("silences.add", org_id=team.org, created_by=team.admin, rule_id=rule,
                                entity_type="campaign", entity_id="c1", starts_at=iso(starts), ends_at=iso(ends),
                                comment="planned burst").get(timeout=60)
        refused = services.send("silences.add", org_id=team.org, created_by=team.viewer, rule_id=rule, duration="1h")
        bad = services.send("silences.add", org_id=team.org, created_by=team.admin, duration="soon")
        with pytest.raises(Exception, match=f"user {team.viewer} \\(viewer\\) may not silence rule {rule}"):
            refused.get(timeout=60)
        with pytest.raises(Exception, match="duration: not a duration such as 30m, 2h, 1d or 1w: 'soon'"):
            bad.get(timeout=60)
        before, inside, after = (evaluate(at) for at in (starts - timedelta(minutes=5), starts + timedelta(minutes=5),
                                                         ends + timedelta(minutes=5)))

        acknowledged = services.send("alerts.acknowledge", rule_id=rule, entity_type="campaign", entity_id="c2",
                                     created_by=team.owner, comment="on it").get(timeout=60)
        refused_ack = services.send("alerts.acknowledge", rule_id=rule, entity_type="campaign", entity_id="c1",
                                    created_by=team.viewer)
        with pytest.raises(Exception, match=f"user {team.viewer} \\(viewer\\) may not acknowledge campaign c1"):
            refused_ack.get(timeout=60)
        quiet = evaluate(ends + timedelta(minutes=6))
        for campaign_id, amount in (("c1", "-100"), ("c2", "-300")):
            correct_spend(data, team.org, campaign_id, amount)
        resolving = evaluate(ends + timedelta(minutes=7))

    assert {k: created[k] for k in ("rule_id", "entity_id", "starts_at", "ends_at", "created_by", "state")} == {
        "rule_id": rule, "entity_id": "c1", "starts_at": iso(starts), "ends_at": iso(ends), "created_by": team.admin,
        "state": "scheduled"}
    assert [(s["alerts"], s["silenced"], s["acknowledged"]) for s in (before, inside, after, quiet, resolving)] == [
        (2, 0, 0), (2, 1, 0), (2, 0, 0), (2, 0, 1), (0, 0, 0)]
    assert told(data, inside["run_id"]) == {str(team.owner): ["c2"], str(team.admin): ["c2"]}
    assert told(data, quiet["run_id"]).items() >= users(team.campaign_member, team.account_member).items()
    assert "c2" not in {entity for entities in told(data, quiet["run_id"]).values() for entity in entities}
    [ended] = data.pg("SELECT * FROM acknowledgements")
    assert (ended["id"], ended["comment"], str(ended["ended_by_run"]), ended["ended_at"]) == (
        acknowledged["id"], "on it", resolving["run_id"], naive(ends + timedelta(minutes=7)))
    resolved = data.pg("SELECT entities FROM notifications WHERE run_id = %s AND kind = 'resolved'",
                       (resolving["run_id"],))
    assert {e["entity_id"] for row in resolved for e in row["entities"]} == {"c1", "c2"}
    assert [row["action"] for row in data.pg("SELECT action FROM audit_logs ORDER BY id")] == [
        "silence.create", "alert.acknowledge"]
