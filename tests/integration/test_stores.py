"""The typed stores a run works through, on real PostgreSQL and the embedded ClickHouse: what they promise beyond
what the runs of tests/integration/test_runs.py already show."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from psycopg.types.json import Jsonb

from engine.run_states import IllegalTransition, RunState
from engine.alert_lifecycle import EntityState
from engine.timestamps import utc_iso
from storage.alert_states import AlertStateStore, StateWrite
from storage.results import AlertEvent, Evaluation, ResultStore, RunScope
from storage.rule_rows import rule_with_organization, rules_with_organization
from storage.runs import Move, RunClaim, RunMovedOn, RunStore, UnknownUser
from worker.audience import Entity

T = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=2)
LAST = (T - timedelta(days=1)).date()


def claim(rule_id: str, org: int, **changes) -> RunClaim:
    return RunClaim(**{"rule_id": rule_id, "org_id": org, "scheduled_for": T, "trigger": "schedule",
                       "dry_run": False, "triggered_by": None, **changes})


# --- runs -----------------------------------------------------------------------------------------------------------


def test_a_transition_the_state_machine_forbids_writes_nothing(env):
    org = env.org()
    rule = env.rule(org, {"logic": {"==": [1, 1]}})
    store = RunStore(env.postgres, lease_seconds=60)
    run = store.claim(claim(rule, org))
    before = env.run_row(run.id)

    with pytest.raises(IllegalTransition, match="from claimed to alerted"):
        store.transition(run, RunState.ALERTED, "skipping ahead", alerts=5)

    assert env.run_row(run.id) == before


def test_a_claim_while_the_lease_lives_gets_nothing_and_one_after_it_expired_takes_the_run_over(env):
    org = env.org()
    rule = env.rule(org, {"logic": {"==": [1, 1]}})
    store = RunStore(env.postgres, lease_seconds=60)
    first = store.transition(store.claim(claim(rule, org)), RunState.COMPILED, "compiled", path="sql")

    assert store.claim(claim(rule, org)) is None
    env.pg("UPDATE rule_runs SET lease_expires_at = (now() AT TIME ZONE 'UTC') - interval '1 minute' WHERE id = %s",
           (first.id,))
    taken = store.claim(claim(rule, org))

    assert (taken.id, taken.state, taken.attempts, taken.path) == (first.id, RunState.COMPILED, 2, "sql")
    assert store.for_fire_time(rule, T) == taken


def test_a_dry_run_is_not_the_run_of_its_fire_time(env):
    org = env.org()
    rule = env.rule(org, {"logic": {"==": [1, 1]}})
    store = RunStore(env.postgres, lease_seconds=60)
    dry = store.claim(claim(rule, org, dry_run=True, trigger="manual"))

    assert dry.dry_run and store.for_fire_time(rule, T) is None
    assert store.claim(claim(rule, org)).id != dry.id


def test_an_unknown_triggering_user_writes_nothing(env):
    org = env.org()
    rule = env.rule(org, {"logic": {"==": [1, 1]}})

    with pytest.raises(UnknownUser, match="no user with id 2000000000"):
        RunStore(env.postgres, lease_seconds=60).claim(claim(rule, org, trigger="manual",
                                                        triggered_by=2_000_000_000))

    assert env.runs() == [] and env.audit_logs() == []




def test_transitions_sent_together_record_each_run_and_one_that_moved_on_writes_none_of_them(env):
    org = env.org()
    store = RunStore(env.postgres, lease_seconds=60)
    runs = [store.claim(claim(env.rule(org, {"logic": {"==": [1, 1]}}), org)) for _ in range(3)]

    with env.postgres.transaction() as tx:
        compiled = store.transitions(tx, [Move(run, RunState.COMPILED, f"compiled {index}", {"path": "sql"})
                                          for index, run in enumerate(runs)])
    assert [(run.id, run.state, run.path) for run in compiled] == [(run.id, RunState.COMPILED, "sql") for run in runs]
    assert [env.run_row(run.id)["transitions"][-1]["detail"] for run in runs] == ["compiled 0", "compiled 1",
                                                                                 "compiled 2"]
    env.pg("UPDATE rule_runs SET state = 'skipped', status = 'skipped' WHERE id = %s", (runs[1].id,))
    before = [env.run_row(run.id) for run in runs]

    with pytest.raises(RunMovedOn, match=f"run {runs[1].id} is no longer compiled"):
        with env.postgres.transaction() as tx:
            store.transitions(tx, [Move(run, RunState.EVALUATED, "evaluated", {"entities": 4, "matched": 1})
                                   for run in compiled])
    assert [env.run_row(run.id) for run in runs] == before
    with pytest.raises(TypeError, match="a transition sets no colour"), env.postgres.transaction() as tx:
        store.transitions(tx, [Move(compiled[0], RunState.EVALUATED, "evaluated", {"colour": "red"})])

def test_claims_together_answer_each_rule_as_a_claim_alone_would(env):
    org = env.org()
    new, held, dead, waiting = (env.rule(org, {"logic": {"==": [1, 1]}}) for _ in range(4))
    store = RunStore(env.postgres, lease_seconds=60)
    held_run = store.claim(claim(held, org))
    dead_run = store.claim(claim(dead, org))
    env.pg("UPDATE rule_runs SET lease_expires_at = (now() AT TIME ZONE 'UTC') - interval '1 minute' WHERE id = %s",
           (dead_run.id,))
    earlier = store.transition(store.claim(claim(waiting, org, scheduled_for=T - timedelta(hours=1))),
                               RunState.WAITING, "waiting for its data", waiting_for="metrics")

    answers = store.claim_all([claim(new, org), claim(held, org), claim(dead, org), claim(new.upper(), org),
                               claim(waiting, org)])

    assert [answer and answer.rule_id for answer in answers] == [new, None, dead, None, waiting]
    assert (answers[2].id, answers[2].attempts) == (dead_run.id, 2)
    assert store.by_id(held_run.id) == held_run
    assert [run["id"] for run in env.runs(new)] == [uuid.UUID(answers[0].id)]
    superseded = store.by_id(earlier.id)
    assert (superseded.status, superseded.error) == ("skipped", f"superseded by the run for {utc_iso(T)}")


def test_claims_that_do_not_share_t_and_trigger_are_refused_before_anything_is_written(env):
    org = env.org()
    rules = [env.rule(org, {"logic": {"==": [1, 1]}}) for _ in range(2)]

    with pytest.raises(ValueError, match="share T, trigger"):
        RunStore(env.postgres, lease_seconds=60).claim_all([claim(rules[0], org),
                                                            claim(rules[1], org, trigger="manual")])

    assert env.runs() == []

# --- rule rows --------------------------------------------------------------------------------------------------------


def test_a_rule_row_carries_its_organizations_timezone_and_modules(env):
    org = env.org(timezone="Europe/Paris", modules=["alerts", "qa"])
    rule = env.rule(org, {"logic": {"==": [1, 1]}}, {"severity": "info"}, module="qa", name="Quality")

    row = rule_with_organization(env.postgres, rule)

    assert (row.rule_id, row.org_id, row.name, row.module, row.enabled) == (rule, org, "Quality", "qa", True)
    assert (row.conditions, row.actions) == ({"logic": {"==": [1, 1]}}, {"severity": "info"})
    assert (row.timezone, row.enabled_modules, row.organization_exists) == ("Europe/Paris", ("alerts", "qa"), True)


@pytest.mark.parametrize("stored, modules", [(None, ()), ("alerts", ()), ({"alerts": True}, ()),
                                             (["alerts", 7, None], ("alerts",))])
def test_enabled_modules_that_are_not_a_list_of_names_enable_only_the_names_listed(env, stored, modules):
    org = env.org()
    env.pg("UPDATE organizations SET enabled_modules = %s WHERE id = %s", (Jsonb(stored), org))
    assert rule_with_organization(env.postgres, env.rule(org, {})).enabled_modules == modules


def test_a_rule_with_a_null_enabled_or_no_organization_reads_so(env):
    rule = env.pg("INSERT INTO rules (org_id, name, module, enabled, conditions, actions) "
                  "VALUES (NULL, 'orphan', 'alerts', NULL, '[]', '7') RETURNING id::text AS id")[0]["id"]

    row = rule_with_organization(env.postgres, rule)

    assert (row.org_id, row.enabled, row.organization_exists, row.timezone) == (None, False, False, None)
    assert (row.conditions, row.actions) == ([], 7)
    assert rule_with_organization(env.postgres, str(uuid.uuid4())) is None


def test_rules_read_together_are_keyed_by_their_canonical_ids_and_a_missing_one_is_absent(env):
    org = env.org(timezone="Europe/Paris")
    first, second = env.rule(org, {}, name="first"), env.rule(org, {}, name="second")

    rows = rules_with_organization(env.postgres, [first.upper(), second, str(uuid.uuid4())])

    assert {rule_id: (row.name, row.timezone) for rule_id, row in rows.items()} == {
        first: ("first", "Europe/Paris"), second: ("second", "Europe/Paris")}


# --- results ----------------------------------------------------------------------------------------------------------


def test_evaluations_written_by_python_read_back_as_the_outcome_and_are_deleted_per_run(env):
    store = ResultStore(env.clickhouse)
    rule = str(uuid.uuid4())
    scope, later, other_org = RunScope(1, rule, T), RunScope(1, rule, T + timedelta(hours=1)), RunScope(2, rule, T)
    for each in (scope, later, other_org):
        store.insert_evaluations(each, [Evaluation("c-2", True, '{"conditions":[true]}'),
                                        Evaluation("c-3", False, '{"conditions":[false]}'),
                                        Evaluation("c-1", True, '{"conditions":[true]}')], 12)

    outcome = store.outcome(scope)
    assert outcome.entities == 3
    assert outcome.matched == [Evaluation("c-1", True, '{"conditions":[true]}'),
                               Evaluation("c-2", True, '{"conditions":[true]}')]
    assert {row["execution_time_ms"] for row in env.evaluations(rule, T)} == {12}

    store.delete_evaluations(scope)
    assert store.outcome(scope).entities == 0
    assert (store.outcome(later).entities, store.outcome(other_org).entities) == (3, 3)


def test_cooldown_looks_from_its_start_until_just_before_t_in_the_rules_organization(env):
    store = ResultStore(env.clickhouse)
    rule = str(uuid.uuid4())
    since = T - timedelta(minutes=30)

    def alert(org: int, at: datetime, entity_id: str, entity_type: str = "campaign") -> None:
        store.insert_alerts(RunScope(org, rule, at), "rule", "warning",
                            [AlertEvent(entity_type, entity_id, entity_id, "{}", [])])

    alert(1, since, "at-start")
    alert(1, T - timedelta(seconds=1), "just-before", "line_item")
    alert(1, since - timedelta(seconds=1), "too-early")
    alert(1, T, "at-t")
    alert(2, T - timedelta(minutes=1), "other-org")

    cooling = store.alerted_since(RunScope(1, rule, T), since,
                                  ["at-start", "just-before", "too-early", "at-t", "other-org"])

    assert cooling == {("campaign", "at-start"), ("line_item", "just-before")}


def test_campaign_identities_come_from_the_latest_date_with_data_falling_back_to_the_range(env):
    org = env.org()
    env.metrics({"org_id": org, "date": LAST, "campaign_id": "c-1", "campaign_name": "Latest",
                 "dsp_type": "TTD", "advertiser_id": "adv-9"},
                {"org_id": org, "date": LAST - timedelta(days=3), "campaign_id": "c-1", "campaign_name": "Older"},
                {"org_id": org, "date": LAST - timedelta(days=5), "campaign_id": "c-2", "campaign_name": "Early"},
                {"org_id": org, "date": LAST - timedelta(days=2), "campaign_id": "c-2", "campaign_name": "Later"},
                {"org_id": org, "date": LAST - timedelta(days=20), "campaign_id": "c-3", "campaign_name": "Gone"},
                {"org_id": org + 1, "date": LAST, "campaign_id": "c-4", "campaign_name": "Elsewhere"})
    store = ResultStore(env.clickhouse)

    found = store.campaign_identities(org, ["c-1", "c-2", "c-3", "c-4"], LAST, LAST - timedelta(days=7))

    assert {key: (value.entity_name, value.dsp_type, value.advertiser_id) for key, value in found.items()} == {
        "c-1": ("Latest", "TTD", "adv-9"), "c-2": ("Later", "DV360", "adv-1")}
    assert store.campaign_identities(org, ["c-3"], LAST, None)["c-3"].entity_name == "Gone"
    assert store.campaign_identities(org, [], LAST, None) == {}


def test_campaign_identities_of_many_ranges_are_each_range_s_own(env):
    """Ranges with other last days and other first days, read together: each campaign is named as of its latest
    date within each range, or absent from a range where it has no data."""
    org = env.org()

    def day(days_before: int):
        return LAST - timedelta(days=days_before)

    env.metrics({"org_id": org, "date": LAST, "campaign_id": "c-1", "campaign_name": "Today's"},
                {"org_id": org, "date": day(1), "campaign_id": "c-1", "campaign_name": "Yesterday's"},
                {"org_id": org, "date": day(10), "campaign_id": "c-1", "campaign_name": "Long ago"},
                {"org_id": org, "date": day(4), "campaign_id": "c-2", "campaign_name": "Mid"},
                {"org_id": org, "date": day(12), "campaign_id": "c-3", "campaign_name": "Old"})
    store = ResultStore(env.clickhouse)
    ranges = [(LAST, LAST), (day(7), day(1)), (day(30), day(1)), (None, day(11)), (day(3), LAST)]

    found = store.campaign_identities_in_ranges(org, ["c-1", "c-2", "c-3", "c-9"], ranges)

    names = {key: {entity_id: identity.entity_name for entity_id, identity in identities.items()}
             for key, identities in found.items()}
    assert names == {
        (LAST, LAST): {"c-1": "Today's"},
        (day(7), day(1)): {"c-1": "Yesterday's", "c-2": "Mid"},
        (day(30), day(1)): {"c-1": "Yesterday's", "c-2": "Mid", "c-3": "Old"},
        (None, day(11)): {"c-3": "Old"},
        (day(3), LAST): {"c-1": "Today's"},
    }
    for key in ranges:
        earliest, last = key
        assert {entity_id: identity.entity_name for entity_id, identity in store.campaign_identities(
            org, ["c-1", "c-2", "c-3", "c-9"], last, earliest).items()} == names[key]


# --- alert states -------------------------------------------------------------------------------------------------------


def test_a_state_only_moves_forward_in_time_and_each_change_is_in_the_history(env):
    org = env.org()
    rule, run, later_run = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    store = AlertStateStore(env.postgres)
    entity = Entity("campaign", "c-1", "Spring", '{"conditions":[true]}', "DV360", "adv-1")
    renamed = Entity("campaign", "c-1", "Spring (renamed)", '{"conditions":[true]}', "DV360", "adv-1")

    with env.postgres.transaction() as tx:
        store.write(tx, org, T, [StateWrite(rule, later_run, "h", renamed, "normal", EntityState("firing"))])
    with env.postgres.transaction() as tx:  # an earlier fire time, finishing late, changes nothing
        store.write(tx, org, T - timedelta(hours=1), [StateWrite(rule, run, "h", entity, "normal",
                                                                 EntityState("pending", 1))])
    with env.postgres.transaction() as tx:  # nor does the same fire time again
        store.write(tx, org, T, [StateWrite(rule, run, "h", entity, "firing", EntityState("recovering", 1))])

    [state] = store.not_normal([rule])[rule]
    assert (state.entity_name, state.state, state.conditions_hash, state.evaluated_at) == (
        "Spring (renamed)", EntityState("firing"), "h", T.replace(tzinfo=None))
    history = env.pg("SELECT from_state, to_state, run_id::text AS run_id, at FROM alert_state_history")
    assert history == [{"from_state": "normal", "to_state": "firing", "run_id": later_run,
                        "at": T.replace(tzinfo=None)}]

    with env.postgres.transaction() as tx:
        store.write(tx, org, T + timedelta(hours=1), [StateWrite(rule, run, "h", entity, "firing",
                                                                 EntityState("normal"))])
    assert store.not_normal([rule]) == {rule: []}
    assert [row["to_state"] for row in env.pg("SELECT to_state FROM alert_state_history ORDER BY at")] == [
        "firing", "normal"]