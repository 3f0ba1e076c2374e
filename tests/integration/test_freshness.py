"""Data freshness on real servers (the README's Data freshness): runs that wait for their DSP accounts' syncs, go
ahead once they have synced, time out into a stale run or a skip, are superseded by a later fire time, and the
`fresh` field of each campaign on the SQL, interpreter and batch paths.

The accounts' `last_sync_at` are written with plain SQL, as the sync pipelines would write them.
"""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime, timedelta

import pytest

from tests.conftest import RULESCTL
from tests.integration.celery_support import iso, own_redis, services_on, utc_now, wait_until
from worker.batch_runner import BatchRequest, BatchRunner
from worker.runner import RuleRunner, RunRequest, RunWaiting
from worker.sweeper import Sweeper

NOW = datetime.now(UTC).replace(microsecond=0)
LONG_AGO = NOW - timedelta(days=3)
# Where last_N_days windows end, in UTC.
TODAY_START = NOW.replace(hour=0, minute=0, second=0)
FRESH_ONLY = {"and": [{"==": [{"var": "fresh"}, True]}, {">": [{"var": "spend"}, 5]}]}
SPEND_OVER_5 = {">": [{"var": "spend"}, 5]}
NO_COOLDOWN = {"cooldown_minutes": 0}


def account(data, org_id: int, dsp_type: str, external_id: str, synced: datetime | None,
            status: str = "active") -> int:
    return data.pg("INSERT INTO dsp_accounts (org_id, dsp_type, external_id, name, status, last_sync_at) "
                   "VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
                   (org_id, dsp_type, external_id, f"{dsp_type} {external_id}", status,
                    synced.replace(tzinfo=None) if synced else None))[0]["id"]


def sync(data, account_id: int, at: datetime | None = None) -> None:
    data.pg("UPDATE dsp_accounts SET last_sync_at = %s WHERE id = %s",
            ((at or datetime.now(UTC)).replace(tzinfo=None), account_id))


def two_accounts_org(data) -> tuple[int, int, int]:
    """An organization in UTC with campaign c1 of DV360 account adv-1, three days behind, and c2 of TTD account
    adv-2, synced now; both spent 10 on each of the four days before today (a last_3_days window at NOW, or two
    hours before it, holds 30 of it)."""
    org = data.org(timezone="UTC", modules=["alerts"])
    behind = account(data, org, "DV360", "adv-1", LONG_AGO)
    synced = account(data, org, "TTD", "adv-2", NOW + timedelta(minutes=5))
    for days_ago in (1, 2, 3, 4):
        day = (NOW - timedelta(days=days_ago)).date().isoformat()
        data.metrics({"org_id": org, "date": day, "campaign_id": "c1", "dsp_type": "DV360", "advertiser_id": "adv-1",
                      "spend": 10},
                     {"org_id": org, "date": day, "campaign_id": "c2", "dsp_type": "TTD", "advertiser_id": "adv-2",
                      "spend": 10})
    return org, behind, synced


def conditions(logic, **extra):
    return {"window": "last_3_days", "schedule": "0 0 1 1 *", "logic": logic, **extra}


def transitions(data, run_id: str) -> list[tuple[str, str]]:
    return [(entry["state"], entry["detail"]) for entry in data.run_row(run_id)["transitions"]]


def test_a_run_on_incomplete_data_waits_saying_which_account_is_behind_and_since_when(env):
    org, _, _ = two_accounts_org(env)
    rule = env.rule(org, conditions(SPEND_OVER_5))
    with pytest.raises(RunWaiting) as waiting:
        env.run(rule, NOW, trigger="schedule")
    summary = waiting.value.summary
    assert (summary["status"], summary["stale"]) == ("waiting", False)
    assert summary["waiting_for"] == (
        f"data incomplete (needs a sync after {iso(TODAY_START)}): DV360 account adv-1 (DV360 adv-1) last synced "
        f"{iso(LONG_AGO)}")
    row = env.run_row(summary["run_id"])
    assert (row["state"], row["status"], row["attempts"]) == ("waiting", "waiting", 1)
    # Its lease ends at its next check, a second before the check is due.
    assert waiting.value.check_in == 61
    assert timedelta(seconds=50) < row["lease_expires_at"] - datetime.now(UTC).replace(tzinfo=None) \
        <= timedelta(seconds=60)
    assert [state for state, _ in transitions(env, summary["run_id"])] == ["claimed", "waiting"]
    assert env.count("rule_evaluations", rule) == 0
    # Another request for the same (rule, T) while it waits gets its summary and leaves it alone.
    assert env.run(rule, NOW, trigger="schedule")["status"] == "waiting"


def test_a_waiting_run_checked_again_after_its_account_synced_goes_ahead(env):
    org, behind, _ = two_accounts_org(env)
    rule = env.rule(org, conditions(SPEND_OVER_5), NO_COOLDOWN)
    runner = RuleRunner(env.postgres, env.clickhouse, wait_check_seconds=1)
    with pytest.raises(RunWaiting) as waiting:
        runner.run(RunRequest(rule, NOW, trigger="schedule"))
    sync(env, behind)
    run_id = waiting.value.summary["run_id"]
    wait_until(lambda: env.run_row(run_id)["lease_expires_at"] < datetime.now(UTC).replace(tzinfo=None), 10,
               "the lease of the waiting run to end")
    summary = runner.run(RunRequest(rule, NOW, trigger="schedule"))
    assert (summary["run_id"], summary["status"], summary["stale"], summary["matched"]) == \
        (run_id, "succeeded", False, 2)
    states = [state for state, _ in transitions(env, run_id)]
    assert states[:4] == ["claimed", "waiting", "waiting", "compiled"] and states[-1] == "succeeded"
    assert transitions(env, run_id)[2][1] == "checked again"
    assert env.run_row(run_id)["attempts"] == 1


def test_past_max_wait_on_stale_run_goes_ahead_marked_stale_with_fresh_false_for_the_late_account(env):
    org, _, _ = two_accounts_org(env)
    at = NOW - timedelta(hours=2)
    rule = env.rule(org, conditions({"!!": [{"var": "campaign_id"}]}, max_wait="1h"), NO_COOLDOWN)
    fresh_rule = env.rule(org, conditions(FRESH_ONLY, max_wait="1h"), NO_COOLDOWN)
    summary = env.run(rule, at, trigger="schedule")
    assert (summary["status"], summary["stale"], summary["alerts"]) == ("succeeded", True, 2)
    assert "DV360 account adv-1" in summary["waiting_for"]
    assert [alert["details"].get("stale") for alert in env.alerts(rule)] == [True, True]
    assert [state for state, _ in transitions(env, summary["run_id"])][:2] == ["claimed", "compiled"]
    assert "evaluated on stale data" in transitions(env, summary["run_id"])[1][1]
    fresh_summary = env.run(fresh_rule, at, trigger="schedule")
    assert (fresh_summary["matched"], [alert["entity_id"] for alert in env.alerts(fresh_rule)]) == (1, ["c2"])
    assert {row["entity_id"]: row["results"]["fresh"] for row in env.evaluations(fresh_rule)} == \
        {"c1": False, "c2": True}


def test_past_max_wait_on_stale_skip_skips_the_run_and_writes_nothing(env):
    org, _, _ = two_accounts_org(env)
    rule = env.rule(org, conditions(SPEND_OVER_5, max_wait="1h", on_stale="skip"))
    summary = env.run(rule, NOW - timedelta(hours=2), trigger="schedule")
    assert summary["status"] == "skipped" and summary["stale"] is False
    assert summary["error"].startswith("skipped (on_stale is skip): still data incomplete")
    assert env.count("rule_evaluations", rule) == 0 and env.count("alert_events", rule) == 0


def test_a_later_fire_time_supersedes_a_run_still_waiting(env):
    org, _, _ = two_accounts_org(env)
    rule = env.rule(org, conditions(SPEND_OVER_5))
    first, second = NOW - timedelta(minutes=2), NOW - timedelta(minutes=1)
    with pytest.raises(RunWaiting) as earlier:
        env.run(rule, first, trigger="schedule")
    with pytest.raises(RunWaiting):
        env.run(rule, second, trigger="schedule")
    superseded = env.run_row(earlier.value.summary["run_id"])
    assert (superseded["status"], superseded["error"]) == ("skipped", f"superseded by the run for {iso(second)}")
    assert superseded["lease_expires_at"] is None
    # Its next check finds it final and does nothing more.
    assert env.run(rule, first, trigger="schedule")["status"] == "skipped"
    assert [row["status"] for row in env.runs(rule)] == ["skipped", "waiting"]


def test_a_dry_run_never_waits_and_says_it_would(env):
    org, _, _ = two_accounts_org(env)
    rule = env.rule(org, conditions(SPEND_OVER_5))
    summary = env.run(rule, NOW, dry_run=True)
    assert (summary["status"], summary["stale"], summary["matched"]) == ("succeeded", True, 2)
    assert "a run would wait: data incomplete" in transitions(env, summary["run_id"])[2][1]


def test_the_scope_decides_which_accounts_a_rule_waits_for(env):
    org, _, _ = two_accounts_org(env)
    ttd_only = env.rule(org, conditions(SPEND_OVER_5, scope={"dsp_type": ["TTD"]}))
    assert env.run(ttd_only, NOW, trigger="schedule")["status"] == "succeeded"
    org_without_accounts = env.org(timezone="UTC", modules=["alerts"])
    assert env.run(env.rule(org_without_accounts, conditions(SPEND_OVER_5)), NOW)["status"] == "succeeded"
    env.pg("INSERT INTO pipelines (org_id, name, connector_type, status, schedule, config) "
           "VALUES (%s, 'TTD import', 'TTD', 'failed', '{}', '{}')", (org,))
    with pytest.raises(RunWaiting) as waiting:
        env.run(ttd_only, NOW + timedelta(seconds=1), trigger="schedule")
    assert waiting.value.summary["waiting_for"].endswith("pipeline 'TTD import' (TTD) has failed")


def test_a_pacing_rule_waits_for_every_account_of_its_organization(env):
    org, _, _ = two_accounts_org(env)
    rule = env.rule(org, {"source": "pacing_snapshots", "window": "today", "schedule": "0 0 1 1 *",
                          "logic": {">": [{"var": "pacing_rate"}, 1]}})
    with pytest.raises(RunWaiting):
        env.run(rule, NOW, trigger="schedule")


def test_fresh_is_the_same_on_the_sql_interpreter_and_batch_paths(env):
    org, _, _ = two_accounts_org(env)
    at = NOW - timedelta(hours=2)
    logic = {"and": [{"==": [{"var": "fresh"}, True]}, {">": [{"var": "spend"}, 5]}]}
    sql_rule = env.rule(org, conditions(logic, max_wait="1h"), NO_COOLDOWN, name="fresh")
    interpreted_rule = env.rule(org, conditions(logic, max_wait="1h"), NO_COOLDOWN, name="fresh")
    batched = [env.rule(org, conditions(logic, max_wait="1h"), NO_COOLDOWN, name="fresh"),
               env.rule(org, conditions({"!": [{"var": "fresh"}]}, max_wait="1h"), NO_COOLDOWN, name="late")]
    assert env.run(sql_rule, at, trigger="schedule")["path"] == "sql"
    interpreter = RuleRunner(env.postgres, env.clickhouse, interpreter_only=True)
    assert interpreter.run(RunRequest(interpreted_rule, at, trigger="schedule"))["path"] == "interpreter"
    batch = BatchRunner(env.postgres, env.clickhouse).run_batch(BatchRequest(org, at, tuple(batched)))
    assert [summary["stale"] for summary in batch] == [True, True]
    assert all("in a batch of 2 rules" in transitions(env, summary["run_id"])[1][1] for summary in batch)

    def documents(rule_id):
        return {row["entity_id"]: (row["matched"], row["condition_results"]) for row in env.evaluations(rule_id)}

    expected = {"c1": (0, '{"fresh":false,"spend":30,"conditions":[false,true]}'),
                "c2": (1, '{"fresh":true,"spend":30,"conditions":[true,true]}')}
    assert documents(sql_rule) == documents(interpreted_rule) == documents(batched[0]) == expected
    assert {entity: matched for entity, (matched, _) in documents(batched[1]).items()} == {"c1": 1, "c2": 0}
    for rule_id in (sql_rule, interpreted_rule, batched[0]):
        assert [(alert["entity_id"], alert["details"]["stale"]) for alert in env.alerts(rule_id)] == [("c2", True)]


def test_the_sweeper_sends_a_waiting_run_again_only_once_its_check_is_well_overdue(env):
    org, _, _ = two_accounts_org(env)
    rule = env.rule(org, conditions(SPEND_OVER_5))
    with pytest.raises(RunWaiting) as waiting:
        env.run(rule, NOW, trigger="schedule")
    run_id = waiting.value.summary["run_id"]
    sent = []
    sweeper = Sweeper(env.postgres, lambda name, args, kwargs: sent.append((name, args, kwargs)))
    sweeper.sweep()
    env.pg("UPDATE rule_runs SET lease_expires_at = lease_expires_at - interval '90 seconds' WHERE id = %s",
           (run_id,))
    sweeper.sweep()
    assert sent == []
    env.pg("UPDATE rule_runs SET lease_expires_at = (now() AT TIME ZONE 'UTC') - interval '61 seconds' "
           "WHERE id = %s", (run_id,))
    sweeper.sweep()
    assert sent == [("rules.evaluate", (rule,), {"scheduled_for": iso(NOW), "triggered_by": None,
                                                 "trigger": "schedule"})]


@pytest.mark.slow
def test_waiting_runs_on_a_worker_go_ahead_after_the_sync_or_time_out_as_on_stale_says(pg_url, migrated_ch_url,
                                                                                       tmp_path):
    """On a real worker (WAIT_CHECK_SECONDS=1): a batch whose DV360 rule must wait leaves it and is checked again
    alone, a single rules.evaluate is retried while it waits, both go ahead once the account has synced; two rules
    with a max_wait of 20 s time out, one going ahead stale, the other skipped. The other rule of the batch runs
    at once."""
    with own_redis(tmp_path) as broker, services_on(pg_url, migrated_ch_url, 0, tmp_path / "logs",
                                                    env={"WAIT_CHECK_SECONDS": "1"},
                                                    redis_server=broker.url) as services:
        data = services.data()
        org, behind, _ = two_accounts_org(data)
        dv360 = {"scope": {"dsp_type": ["DV360"]}}
        batched_waiting = data.rule(org, conditions(SPEND_OVER_5, **dv360), NO_COOLDOWN)
        batched_ready = data.rule(org, conditions(SPEND_OVER_5, scope={"dsp_type": ["TTD"]}), NO_COOLDOWN)
        single = data.rule(org, conditions(SPEND_OVER_5, **dv360), NO_COOLDOWN)
        stale_run = data.rule(org, conditions(SPEND_OVER_5, max_wait="20s", **dv360), NO_COOLDOWN)
        stale_skip = data.rule(org, conditions(SPEND_OVER_5, max_wait="20s", on_stale="skip", **dv360))
        worker = services.start_worker()
        at = utc_now().replace(microsecond=0)
        services.send("rules.evaluate_batch", org, iso(at), [batched_waiting, batched_ready])
        single_task = services.send("rules.evaluate", single, iso(at), trigger="schedule")
        for rule in (stale_run, stale_skip):
            services.send("rules.evaluate", rule, iso(at), trigger="schedule")

        def status(rule_id):
            rows = data.runs(rule_id)
            return rows[0]["status"] if rows else None

        wait_until(lambda: status(batched_ready) == "succeeded", 60, "the ready rule of the batch to succeed")
        wait_until(lambda: status(batched_waiting) == status(single) == "waiting", 60, "the DV360 rules to wait")
        wait_until(lambda: status(stale_run) == "succeeded" and status(stale_skip) == "skipped", 90,
                   "the rules with a max_wait of 20 s to time out")
        assert data.runs(stale_run)[0]["stale"] is True and data.runs(stale_skip)[0]["stale"] is False
        assert [alert["details"]["stale"] for alert in data.alerts(stale_run)] == [True]
        sync(data, behind)
        wait_until(lambda: status(batched_waiting) == status(single) == "succeeded", 60,
                   "the waiting rules to go ahead after the sync")
        for rule in (batched_waiting, single):
            row = data.runs(rule)[0]
            assert (row["stale"], row["matched"], row["attempts"]) == (False, 1, 1)
            assert "checked again" in [entry["detail"] for entry in row["transitions"]]
        assert "alone: its window's data is incomplete" in json.dumps(data.runs(batched_waiting)[0]["transitions"])
        wait_until(lambda: single_task.ready(), 30, "the single task to finish")
        assert single_task.get(timeout=5)["status"] == "succeeded"
        assert "Retry in" in worker.log()


def rulesctl(env, *args: str) -> subprocess.CompletedProcess:
    environment = dict(os.environ, DATABASE_URL=env.pg_url, CLICKHOUSE_URL=env.ch_url)
    return subprocess.run([RULESCTL, *args], env=environment, capture_output=True, text=True, timeout=60)


def test_rulesctl_freshness_lists_each_source_and_account_with_how_far_behind_it_is(env):
    org, _, _ = two_accounts_org(env)
    other = env.org(timezone="UTC")
    account(env, other, "META", "act-9", None)
    env.pg("INSERT INTO pipelines (org_id, name, connector_type, status, schedule, config) VALUES "
           "(%s, 'DV360 import', 'DV360', 'active', '{}', '{}'), (%s, 'CRM import', 'CRM', 'failed', '{}', '{}')",
           (org, org))
    process = rulesctl(env, "freshness", "--org", str(org), "--json")
    assert process.returncode == 0, process.stderr
    entries = [json.loads(line) for line in process.stdout.splitlines()]
    assert [(entry["org_id"], entry["source"], entry["account"] and entry["account"]["external_id"])
            for entry in entries] == [(org, "DV360", "adv-1"), (org, "TTD", "adv-2"), (org, "CRM", None)]
    dv360, ttd, crm = entries
    assert (dv360["last_sync_at"], dv360["pipelines"]) == (iso(LONG_AGO), [{"name": "DV360 import",
                                                                           "status": "active"}])
    assert 3 * 86400 <= dv360["behind_seconds"] < 3 * 86400 + 600 and dv360["behind"].startswith("3d ")
    assert (ttd["behind_seconds"], ttd["behind"]) == (0, "0m")
    assert (crm["last_sync_at"], crm["pipelines"]) == (None, [{"name": "CRM import", "status": "failed"}])

    table = rulesctl(env, "freshness")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["org", "source", "account", "status", "last", "sync", "behind", "pipelines"]
    assert any(line.split()[:3] == [str(other), "META", "act-9"] and "never synced" in line for line in lines)
    assert any(line.split()[:2] == [str(org), "DV360"] and "DV360 import: active" in line for line in lines)


def test_rulesctl_run_of_a_waiting_rule_prints_what_it_waits_for(env):
    org, _, _ = two_accounts_org(env)
    rule = env.rule(org, conditions(SPEND_OVER_5))
    process = rulesctl(env, "run", rule)
    assert process.returncode == 0, process.stderr
    assert ": waiting" in process.stdout.splitlines()[0]
    assert "waiting for: data incomplete" in process.stdout and "DV360 account adv-1" in process.stdout
    nothing = rulesctl(env, "freshness", "--org", "999999")
    assert nothing.stdout == "no DSP accounts or pipelines in organization 999999\n"
