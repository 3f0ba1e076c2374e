"""Rechecks of late data (the README's "Late data and rechecks"): a scheduled run of a rule with
`conditions.recheck_after` is evaluated once more over the same window, as the run of trigger `recheck`; the
entities whose verdict flipped are marked `restated` and told in one notice per run, by the rule's channels.

Real PostgreSQL and the embedded ClickHouse; notices go to a real SMTP server and a real HTTP receiver on loopback;
the last test runs a real beat and worker.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from tests.integration.celery_support import iso, naive, own_redis, services_on, utc_now, wait_for_runs, wait_until
from tests.integration.receivers import HttpReceiver, SmtpReceiver
from tests.integration.runs_support import ch_text
from storage.runs import RunClaim, RunStore
from worker.deliveries import deliver
from worker.batch_runner import BatchRequest, BatchRunner
from worker.runner import BadRunRequest, RuleRunner, RunRequest
from worker.settings import Settings

LOOPBACK = frozenset({"127.0.0.1"})
# T is 02:00 UTC two days ago; the organization is in UTC, so "yesterday" is the UTC date before T's.
T = datetime.now(UTC).replace(hour=2, minute=0, second=0, microsecond=0) - timedelta(days=2)
DAY = (T.date() - timedelta(days=1)).isoformat()
SPEND_OVER_100 = {"window": "yesterday", "logic": {">": [{"var": "spend"}, 100]}, "recheck_after": "24h",
                  "schedule": "0 2 * * *"}


def runner(env, **options) -> RuleRunner:
    return RuleRunner(env.postgres, env.clickhouse, allowed_hosts=LOOPBACK, **options)


def campaign(org: int, campaign_id: str, spend: str) -> dict:
    return {"org_id": org, "date": DAY, "campaign_id": campaign_id, "campaign_name": f"Campaign {campaign_id}",
            "dsp_type": "DV360", "advertiser_id": "adv-1", "spend": spend, "impressions": 1000}


def restate_spend(env, org: int, campaign_id: str, spend: str) -> None:
    """The late data: the campaign's row of DAY replaced by one with another spend."""
    env.ch_raw.command(f"DELETE FROM campaign_metrics_daily WHERE org_id = {org} AND campaign_id = '{campaign_id}'")
    env.metrics(campaign(org, campaign_id, spend))


def team(env) -> tuple[int, int, int]:
    """An organization in UTC with an owner and a member who holds a grant on campaign c1 only (both verified);
    campaigns c1 (spend 150), c2 (50) and c3 (200) on DAY."""
    org = env.org(timezone="UTC")
    owner, member = env.user("owner@example.com"), env.user("member@example.com")
    env.member(owner, org, "owner")
    env.member(member, org, "member")
    env.pg("UPDATE users SET email_verified = TRUE WHERE id = ANY(%s)", ([owner, member],))
    env.pg("INSERT INTO entity_permissions (user_id, org_id, entity_type, entity_id, permission) "
           "VALUES (%s, %s, 'campaign', 'c1', 'view')", (member, org))
    env.metrics(campaign(org, "c1", "150"), campaign(org, "c2", "50"), campaign(org, "c3", "200"))
    return org, owner, member


def verdicts(env, rule: str, at: datetime) -> dict[str, tuple[int, bool]]:
    """Each entity's (matched, marked restated) in the rows of (rule, at)."""
    return {row["entity_id"]: (row["matched"], row["results"].get("restated", False))
            for row in env.evaluations(rule, at)}


def evaluated_at(summary: dict) -> datetime:
    return datetime.fromisoformat(summary["evaluated_at"].replace("Z", "+00:00"))


def test_a_recheck_marks_the_flipped_verdicts_and_tells_each_one_who_may_see_them_once(env):
    org, owner, member = team(env)
    with HttpReceiver() as http, SmtpReceiver() as smtp:
        rule = env.rule(org, SPEND_OVER_100, {"cooldown_minutes": 0, "notify": {
            "channels": ["in_app", "email", "webhook"], "webhook_url": http.url("/hook")}}, name="Overspend")
        first = runner(env).run(RunRequest(rule, T, trigger="schedule"))
        assert (first["status"], first["matched"], first["alerts"]) == ("succeeded", 2, 2), first["error"]
        assert env.run_row(first["run_id"])["recheck_due_at"] == naive(T + timedelta(hours=24))
        restate_spend(env, org, "c1", "40")    # c1 no longer matches
        restate_spend(env, org, "c2", "130")   # c2 matches now

        recheck = runner(env).run(RunRequest(rule, T, trigger="recheck"))
        again = runner(env).run(RunRequest(rule, T, trigger="recheck"))

        moment = evaluated_at(recheck)
        assert (recheck["status"], recheck["trigger"], recheck["scheduled_for"]) == ("succeeded", "recheck", iso(T))
        assert (recheck["entities"], recheck["matched"], recheck["restated"], recheck["alerts"]) == (3, 2, 2, 1)
        assert moment > T + timedelta(days=1) and moment.second != 0
        assert recheck["notified_users"] == sorted([owner, member])
        assert again == recheck
        assert [(r["trigger"], r["status"]) for r in env.runs(rule)] == [("schedule", "succeeded"),
                                                                          ("recheck", "succeeded")]
        assert env.run_row(first["run_id"])["recheck_due_at"] is None
        # The first run's rows stay as they were; the recheck's carry its own time and mark c1 and c2.
        assert verdicts(env, rule, T) == {"c1": (1, False), "c2": (0, False), "c3": (1, False)}
        assert verdicts(env, rule, moment) == {"c1": (0, True), "c2": (1, True), "c3": (1, False)}
        assert env.count("rule_evaluations", rule) == 6
        # A newly matching entity gets its alert at the recheck's time; c3's verdict stood, so it has none.
        assert [(a["alert_time"], a["entity_id"], a["details"]["restated"], a["notified_users"])
                for a in env.alerts(rule, moment)] == [(ch_text(moment), "c2", True, [owner])]

        rows = env.pg("SELECT kind, channel, recipient FROM deliveries WHERE run_id = %s", (recheck["run_id"],))
        assert sorted((r["kind"], r["channel"], r["recipient"]) for r in rows) == sorted([
            ("restated", "email", "member@example.com"), ("restated", "email", "owner@example.com"),
            ("restated", "in_app", str(member)), ("restated", "in_app", str(owner)),
            ("restated", "webhook", http.url("/hook"))])
        in_app = {row["user_id"]: [(e["entity_id"], e["matched"]) for e in row["entities"]] for row in env.pg(
            "SELECT user_id, kind, entities FROM notifications WHERE run_id = %s AND kind = 'restated'",
            (recheck["run_id"],))}
        assert in_app == {owner: [("c2", True), ("c1", False)], member: [("c1", False)]}

        config = Settings(notify_allowed_hosts=LOOPBACK, smtp_url=smtp.url, smtp_from="rules@example.com")
        for row in env.pg("SELECT id FROM deliveries WHERE run_id = %s AND status = 'pending'", (recheck["run_id"],)):
            assert deliver(env.postgres, row["id"], config).status == "sent"
        [post] = http.wait_for(1, "/hook")
        mails = {mail.rcpt_tos[0]: mail.message for mail in smtp.wait_for(2)}

    body = json.loads(post.body)
    assert (body["event"], body["run_id"], body["scheduled_for"], body["evaluated_at"]) == (
        "restated", recheck["run_id"], iso(T), iso(moment))
    assert [(e["entity_id"], e["matched"], e["values"]) for e in body["entities"]] == [
        ("c2", True, {"spend": 130}), ("c1", False, {"spend": 40})]
    assert mails["owner@example.com"]["Subject"] == (
        "[restated] Overspend: 1 entity matches now after restated data, 1 entity no longer matches")
    member_text = mails["member@example.com"].get_content().replace("\r\n", "\n")
    assert mails["member@example.com"]["Subject"] == "[restated] Overspend: 1 entity no longer matches"
    assert "No longer matches:\n- campaign Campaign c1 (c1): spend = 40" in member_text
    assert "Campaign c2" not in member_text


def test_the_interpreter_path_restates_the_same_entities_with_the_same_documents(env):
    org, _, _ = team(env)
    conditions = {**SPEND_OVER_100, "logic": {"and": [{">": [{"var": "spend"}, 100]},
                                                      {"!=": [{"var": "campaign_name"}, ""]}]}}
    on_sql, interpreted = env.rule(org, conditions), env.rule(org, conditions)
    runners = {on_sql: runner(env), interpreted: runner(env, interpreter_only=True)}
    for rule, rule_runner in runners.items():
        assert rule_runner.run(RunRequest(rule, T, trigger="schedule"))["status"] == "succeeded"
    restate_spend(env, org, "c1", "40")
    restate_spend(env, org, "c2", "130")

    rechecks = {rule: rule_runner.run(RunRequest(rule, T, trigger="recheck")) for rule, rule_runner in runners.items()}

    assert [(s["path"], s["restated"], s["alerts"]) for s in rechecks.values()] == [
        ("sql", 2, 1), ("interpreter", 2, 1)]
    rows = {rule: [(r["entity_id"], r["matched"], r["condition_results"])
                   for r in env.evaluations(rule, evaluated_at(summary))] for rule, summary in rechecks.items()}
    assert rows[on_sql] == rows[interpreted] == [
        ("c1", 0, '{"campaign_name":"Campaign c1","spend":40,"conditions":[false,true],"restated":true}'),
        ("c2", 1, '{"campaign_name":"Campaign c2","spend":130,"conditions":[true,true],"restated":true}'),
        ("c3", 1, '{"campaign_name":"Campaign c3","spend":200,"conditions":[true,true]}')]


def test_restated_pacing_entities_are_told_apart_by_their_type(env):
    org, owner, _ = team(env)
    snapshot = T - timedelta(hours=1)
    rule = env.rule(org, {"source": "pacing_snapshots", "window": "today", "recheck_after": "1h",
                          "logic": {">": [{"var": "pacing_rate"}, 1]}})
    env.snapshots(*({"org_id": org, "snapshot_time": ch_text(snapshot), "entity_type": kind, "entity_id": "x-1",
                     "pacing_rate": rate} for kind, rate in (("campaign", 1.5), ("line_item", 0.5))))
    assert runner(env).run(RunRequest(rule, T, trigger="schedule"))["matched"] == 1
    # Late snapshots, before T: the campaign slowed down, the line item sped up.
    env.snapshots(*({"org_id": org, "snapshot_time": ch_text(snapshot + timedelta(minutes=30)), "entity_type": kind,
                     "entity_id": "x-1", "pacing_rate": rate} for kind, rate in (("campaign", 0.9),
                                                                                  ("line_item", 1.2))))

    recheck = runner(env).run(RunRequest(rule, T, trigger="recheck"))

    assert (recheck["matched"], recheck["restated"], recheck["alerts"]) == (1, 2, 1), recheck["error"]
    assert sorted((r["results"]["entity_type"], r["matched"], r["results"]["restated"])
                  for r in env.evaluations(rule, evaluated_at(recheck))) == [
        ("campaign", 0, True), ("line_item", 1, True)]
    [notification] = env.pg("SELECT user_id, entities FROM notifications WHERE run_id = %s", (recheck["run_id"],))
    assert notification["user_id"] == owner
    assert [(e["entity_type"], e["matched"]) for e in notification["entities"]] == [
        ("line_item", True), ("campaign", False)]


def test_a_recheck_that_finds_every_verdict_standing_tells_nobody(env):
    org, _, _ = team(env)
    rule = env.rule(org, SPEND_OVER_100, {"notify": {"channels": ["in_app", "email"]}})
    runner(env).run(RunRequest(rule, T, trigger="schedule"))
    restate_spend(env, org, "c3", "180")  # later data, same verdict

    recheck = runner(env).run(RunRequest(rule, T, trigger="recheck"))

    assert (recheck["status"], recheck["matched"], recheck["restated"], recheck["alerts"],
            recheck["notified_users"]) == ("succeeded", 2, 0, 0, [])
    assert env.pg("SELECT count(*) AS n FROM deliveries WHERE run_id = %s", (recheck["run_id"],))[0]["n"] == 0
    assert env.alerts(rule, evaluated_at(recheck)) == []


def test_a_newly_matching_entity_in_cooldown_is_told_but_gets_no_second_alert(env):
    org, owner, _ = team(env)
    rule = env.rule(org, SPEND_OVER_100, {"cooldown_minutes": 10_080})
    runner(env).run(RunRequest(rule, T, trigger="schedule"))
    restate_spend(env, org, "c2", "130")
    # A later fire time already saw the late data and alerted on c2.
    later = runner(env).run(RunRequest(rule, T + timedelta(hours=1), trigger="schedule"))
    assert later["alerts"] == 1

    recheck = runner(env).run(RunRequest(rule, T, trigger="recheck"))

    assert (recheck["restated"], recheck["alerts"], recheck["notified_users"]) == (1, 0, [owner])
    assert env.alerts(rule, evaluated_at(recheck)) == []
    assert [e["entity_id"] for row in env.pg("SELECT entities FROM notifications WHERE run_id = %s",
                                             (recheck["run_id"],)) for e in row["entities"]] == ["c2"]


def test_a_recheck_whose_process_was_lost_is_taken_over_at_its_own_time_and_written_once(env):
    org, _, _ = team(env)
    rule = env.rule(org, SPEND_OVER_100)
    runner(env).run(RunRequest(rule, T, trigger="schedule"))
    restate_spend(env, org, "c2", "130")
    lost = RunStore(env.postgres, lease_seconds=60).claim(RunClaim(rule, org, T, "recheck", False, None))
    # It died after writing part of its rows, at its own evaluation time.
    env.ch_raw.insert("rule_evaluations", [[org, lost.evaluated_at, rule, "c1", 1, "{}", 1]],
                      column_names=["org_id", "eval_time", "rule_id", "entity_id", "matched", "condition_results",
                                    "execution_time_ms"])
    env.pg("UPDATE rule_runs SET lease_expires_at = lease_expires_at - interval '1 hour' WHERE id = %s", (lost.id,))

    recheck = runner(env).run(RunRequest(rule, T, trigger="recheck"))

    assert (recheck["run_id"], recheck["status"], recheck["restated"]) == (lost.id, "succeeded", 1)
    assert env.run_row(lost.id)["attempts"] == 2
    assert evaluated_at(recheck) == lost.eval_time
    assert verdicts(env, rule, lost.eval_time) == {"c1": (1, False), "c2": (1, True), "c3": (1, False)}


@pytest.mark.parametrize("first", [None, "manual dry run", "failed"])
def test_a_recheck_needs_a_succeeded_first_run_and_writes_nothing_without_one(env, first):
    org, _, _ = team(env)
    rule = env.rule(org, SPEND_OVER_100)
    if first == "manual dry run":
        runner(env).run(RunRequest(rule, T, dry_run=True))
    elif first == "failed":
        env.pg("UPDATE rules SET conditions = conditions || '{\"window\": \"last_999_days\"}' WHERE id = %s", (rule,))
        assert runner(env).run(RunRequest(rule, T, trigger="schedule"))["status"] == "failed"
    runs_before = env.runs(rule)

    with pytest.raises(BadRunRequest, match="nothing to recheck"):
        runner(env).run(RunRequest(rule, T, trigger="recheck"))
    with pytest.raises(BadRunRequest, match="never a dry run"):
        runner(env).run(RunRequest(rule, T, trigger="recheck", dry_run=True))

    assert env.runs(rule) == runs_before
    assert env.count("rule_evaluations", rule) == 0



def test_rechecks_sent_as_a_batch_each_run_alone_as_a_recheck_would(env):
    org, owner, _ = team(env)
    rechecked, unrun = env.rule(org, SPEND_OVER_100), env.rule(org, SPEND_OVER_100)
    runner(env).run(RunRequest(rechecked, T, trigger="schedule"))
    restate_spend(env, org, "c2", "130")
    batch_runner = BatchRunner(env.postgres, env.clickhouse, allowed_hosts=LOOPBACK)

    recheck, refused = batch_runner.run_batch(BatchRequest(org, T, (rechecked, unrun), trigger="recheck"))

    assert (recheck["trigger"], recheck["status"], recheck["restated"], recheck["notified_users"]) == (
        "recheck", "succeeded", 1, [owner])
    assert evaluated_at(recheck) != T
    assert verdicts(env, rechecked, evaluated_at(recheck))["c2"] == (1, True)
    assert "alone: a recheck, which evaluates at a time of its own" in " ".join(
        entry["detail"] for entry in env.run_row(recheck["run_id"])["transitions"])
    assert (refused["rule_id"], refused["status"]) == (unrun, "failed")
    assert "nothing to recheck" in refused["error"] and env.runs(unrun) == []

def test_only_scheduled_runs_of_rules_with_recheck_after_wait_for_a_recheck(env):
    org, _, _ = team(env)
    rechecked = env.rule(org, SPEND_OVER_100)
    plain = env.rule(org, {key: value for key, value in SPEND_OVER_100.items() if key != "recheck_after"})
    summaries = [runner(env).run(RunRequest(rechecked, T, trigger="manual")),
                 runner(env).run(RunRequest(rechecked, T + timedelta(days=1), trigger="backfill")),
                 runner(env).run(RunRequest(plain, T, trigger="schedule"))]
    assert [env.run_row(s["run_id"])["recheck_due_at"] for s in summaries] == [None, None, None]


# --- beat and a worker ----------------------------------------------------------------------------------------------


def test_beat_sends_each_due_recheck_once_and_it_runs_once(pg_url, migrated_ch_url, tmp_path):
    """Two beats and a worker: a rule firing every minute, rechecked a minute after each fire time. The late data
    lands after the first run; that run's recheck restates it and notifies once, every recheck runs once."""
    with own_redis(tmp_path) as broker, services_on(pg_url, migrated_ch_url, 0, tmp_path / "logs", time_limit=20,
                                                    redis_server=broker.url) as services:
        data = services.data()
        org = data.org(timezone="UTC")
        owner = data.user()
        data.member(owner, org, "owner")
        day = (utc_now() - timedelta(days=3)).date().isoformat()
        data.metrics({"org_id": org, "date": day, "campaign_id": "c1", "spend": "150"},
                     {"org_id": org, "date": day, "campaign_id": "c2", "spend": "50"})
        rule = data.rule(org, {"window": "lifetime", "schedule": "* * * * *", "recheck_after": "1m",
                               "logic": {">": [{"var": "spend"}, 100]}}, {"cooldown_minutes": 0})
        services.start_worker()
        services.start_beat("beat-1")
        services.start_beat("beat-2")
        sql, params = "SELECT * FROM rule_runs WHERE rule_id = %s ORDER BY scheduled_for, trigger", (rule,)
        rows = wait_for_runs(services, lambda rows: any(r["status"] == "succeeded" for r in rows), 150,
                             "the first scheduled run", sql, params)
        first = next(r for r in rows if r["status"] == "succeeded")
        data.metrics({"org_id": org, "date": day, "campaign_id": "c2", "spend": "80"})  # c2 now spends 130

        def first_rechecked(rows: list[dict]) -> bool:
            return any(r["trigger"] == "recheck" and r["scheduled_for"] == first["scheduled_for"]
                       and r["status"] == "succeeded" for r in rows)

        wait_for_runs(services, first_rechecked, 180, "the recheck of the first run", sql, params)
        # Another round of beat passes (every 30 s each) finds nothing more to send for that fire time.
        def second_recheck_finished() -> bool:
            [count] = services.pg("SELECT count(*) AS n, bool_and(status <> 'running') AS finished FROM rule_runs "
                                  "WHERE rule_id = %s AND trigger = 'recheck'", (rule,))
            return count["n"] >= 2 and count["finished"]

        wait_until(second_recheck_finished, 150, "a second recheck, finished")
        rows = services.pg(sql, params)

    rechecks = [r for r in rows if r["trigger"] == "recheck"]
    assert all(r["status"] == "succeeded" for r in rechecks), rows
    fire_times = [r["scheduled_for"] for r in rechecks]
    assert len(fire_times) == len(set(fire_times))
    firsts = {r["scheduled_for"]: r for r in rows if r["trigger"] == "schedule"}
    assert set(fire_times) <= set(firsts)
    [restating] = [r for r in rechecks if r["scheduled_for"] == first["scheduled_for"]]
    assert (restating["restated"], restating["alerts"], restating["notified_users"]) == (1, 1, [owner])
    assert restating["evaluated_at"] >= first["scheduled_for"] + timedelta(minutes=1)
    # Every recheck matches c1 and c2; it restates c2 exactly when its first run ran before the late data.
    assert [(r["matched"], r["restated"]) for r in rechecks] == [
        (2, 2 - firsts[r["scheduled_for"]]["matched"]) for r in rechecks]
    notices = services.pg("SELECT run_id, user_id, entities FROM notifications WHERE kind = 'restated' "
                          "AND rule_id = %s ORDER BY run_id", (rule,))
    assert [(str(n["run_id"]), n["user_id"], [e["entity_id"] for e in n["entities"]]) for n in notices] == sorted(
        (str(r["id"]), owner, ["c2"]) for r in rechecks if r["restated"])
