"""The lifecycle and cooldown decisions of worker.alert_state and engine.alert_lifecycle, without servers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from engine.alert_lifecycle import FIRING, NORMAL, PENDING, RECOVERING, EntityState, next_state
from engine.model import parse_rule
from storage.alert_states import StoredState
from worker.alert_state import LifecyclePolicy, cooldown_start, decide, lifecycle_policy, out_of_cooldown, \
    state_writes
from worker.audience import Entity

T = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)


def campaign(entity_id: str, name: str = "") -> Entity:
    return Entity("campaign", entity_id, name or entity_id, '{"conditions":[true]}', "DV360", "adv-1")


def test_a_cooldown_starts_that_many_minutes_before_t():
    assert cooldown_start(T, 90) == T - timedelta(minutes=90)


def test_no_cooldown_has_no_start():
    assert cooldown_start(T, 0) is None


def test_entities_alerted_within_the_cooldown_are_held_back_by_type_and_id():
    matched = [campaign("c-1"), campaign("c-2"), Entity("line_item", "c-3", "c-3", "{}"), campaign("c-3")]
    kept = out_of_cooldown(matched, {("campaign", "c-2"), ("insertion_order", "c-1"), ("line_item", "c-3")})
    assert [entity.key for entity in kept] == [("campaign", "c-1"), ("campaign", "c-3")]


def test_nothing_cooling_keeps_every_match_in_order():
    matched = [campaign("c-2"), campaign("c-1")]
    assert out_of_cooldown(matched, set()) == matched


POLICY = LifecyclePolicy(pending_runs=1, recovery_runs=1, conditions_hash="h")


def stored(entity_id: str, state: EntityState, evaluated_at: datetime = T - timedelta(hours=1),
           conditions_hash: str = "h", entity_type: str = "campaign") -> StoredState:
    return StoredState(entity_type, entity_id, f"name of {entity_id}", '{"conditions":[true]}', "TTD", "adv-2",
                       state, conditions_hash, evaluated_at.replace(tzinfo=None))


def test_with_the_defaults_a_first_match_fires_and_a_first_miss_resolves_with_what_was_stored():
    lifecycle = decide([stored("c-1", EntityState(FIRING)), stored("c-2", EntityState(FIRING))],
                       [campaign("c-2"), campaign("c-3")], set(), T, POLICY)
    assert [entity.entity_id for entity in lifecycle.firing] == ["c-2", "c-3"]
    assert lifecycle.resolved == [Entity("campaign", "c-1", "name of c-1", '{"conditions":[true]}', "TTD", "adv-2")]
    assert [(entity.entity_id, before, after) for entity, before, after in lifecycle.changes] == [
        ("c-3", NORMAL, EntityState(FIRING)), ("c-1", FIRING, EntityState(NORMAL))]
    assert lifecycle.counts == {"pending": 0, "firing": 2, "recovering": 0, "resolved": 1}


def test_a_pending_entity_gets_no_firing_until_its_pending_runs_and_a_miss_sends_it_back():
    policy = LifecyclePolicy(pending_runs=3, recovery_runs=1, conditions_hash="h")
    first = decide([], [campaign("c-1")], set(), T, policy)
    assert first.firing == [] and first.changes[0][2] == EntityState(PENDING, 1)
    second = decide([stored("c-1", EntityState(PENDING, 2))], [campaign("c-1")], set(), T, policy)
    assert [entity.entity_id for entity in second.firing] == ["c-1"]
    assert second.changes[0][1:] == (PENDING, EntityState(FIRING))
    missed = decide([stored("c-1", EntityState(PENDING, 2))], [], set(), T, policy)
    assert missed.resolved == [] and missed.changes[0][1:] == (PENDING, EntityState(NORMAL))


def test_a_firing_entity_recovers_for_its_recovery_runs_and_a_match_makes_it_fire_again():
    policy = LifecyclePolicy(pending_runs=1, recovery_runs=2, conditions_hash="h")
    first_miss = decide([stored("c-1", EntityState(FIRING))], [], set(), T, policy)
    assert first_miss.resolved == [] and first_miss.changes[0][2] == EntityState(RECOVERING, 1)
    second_miss = decide([stored("c-1", EntityState(RECOVERING, 1))], [], set(), T, policy)
    assert [entity.entity_id for entity in second_miss.resolved] == ["c-1"]
    again = decide([stored("c-1", EntityState(RECOVERING, 1))], [campaign("c-1")], set(), T, policy)
    assert [entity.entity_id for entity in again.firing] == ["c-1"] and again.changes[0][2] == EntityState(FIRING)


def test_an_entity_whose_recover_when_fails_keeps_recovering_from_the_start():
    policy = LifecyclePolicy(pending_runs=1, recovery_runs=1, conditions_hash="h")
    held = decide([stored("c-1", EntityState(FIRING))], [], {("campaign", "c-1")}, T, policy)
    assert held.resolved == [] and held.changes[0][2] == EntityState(RECOVERING)
    released = decide([stored("c-1", EntityState(RECOVERING))], [], set(), T, policy)
    assert [entity.entity_id for entity in released.resolved] == ["c-1"]


def test_a_state_reached_under_other_conditions_counts_as_normal():
    policy = LifecyclePolicy(pending_runs=2, recovery_runs=1, conditions_hash="new")
    lifecycle = decide([stored("c-1", EntityState(FIRING), conditions_hash="old"),
                        stored("c-2", EntityState(FIRING), conditions_hash="old"),
                        stored("c-3", EntityState(PENDING, 1), conditions_hash="old")],
                       [campaign("c-1"), campaign("c-3")], set(), T, policy)
    assert lifecycle.firing == [] and lifecycle.resolved == []
    # c-3 stays pending at 1, now under the new hash, so that its next match counts as the second.
    assert [(entity.entity_id, before, after) for entity, before, after in lifecycle.changes] == [
        ("c-1", FIRING, EntityState(PENDING, 1)), ("c-3", PENDING, EntityState(PENDING, 1)),
        ("c-2", FIRING, EntityState(NORMAL))]


def test_a_state_written_at_t_or_later_is_left_alone():
    states = [stored("c-1", EntityState(FIRING), T), stored("c-2", EntityState(FIRING), T + timedelta(minutes=5)),
              stored("c-3", EntityState(FIRING), T - timedelta(seconds=1))]
    lifecycle = decide(states, [campaign("c-1")], set(), T, POLICY)
    assert [entity.entity_id for entity in lifecycle.firing] == ["c-1"]
    assert [entity.entity_id for entity in lifecycle.resolved] == ["c-3"]
    assert lifecycle.decided == {("campaign", "c-3")}


def test_the_same_id_of_another_type_is_another_entity():
    lifecycle = decide([stored("x-1", EntityState(FIRING), entity_type="line_item")],
                       [Entity("insertion_order", "x-1", "x-1", "{}")], set(), T, POLICY)
    assert [entity.key for entity in lifecycle.resolved] == [("line_item", "x-1")]


def test_a_match_with_nul_characters_is_compared_as_postgresql_stored_it():
    matched = [Entity("campaign", "c\x001", "c\x001", '{"conditions":[true]}')]
    lifecycle = decide([stored("c\ufffd1", EntityState(FIRING))], matched, set(), T, POLICY)
    assert lifecycle.resolved == [] and lifecycle.firing == matched and lifecycle.changes == []


def test_an_alerted_entity_that_stays_firing_is_written_again_and_one_left_alone_is_not():
    lifecycle = decide([stored("c-1", EntityState(FIRING)), stored("c-2", EntityState(FIRING), T)],
                       [campaign("c-1"), campaign("c-2"), campaign("c-3")], set(), T, POLICY)
    writes = state_writes("rule", "run", POLICY, lifecycle, lifecycle.firing)
    assert [(write.entity.entity_id, write.before, write.after.state) for write in writes] == [
        ("c-3", NORMAL, FIRING), ("c-1", FIRING, FIRING)]


def test_a_new_match_with_nul_characters_is_written_as_postgresql_stores_it():
    matched = [Entity("campaign", "c\x001", "c\x001", '{"conditions":[true]}')]
    lifecycle = decide([], matched, set(), T, POLICY)
    [write] = state_writes("rule", "run", POLICY, lifecycle, [])
    assert write.entity.key == ("campaign", "c\ufffd1") and write.entity.entity_name == "c\ufffd1"


def test_naming_a_lifecycle_replaces_its_firing_and_changed_matches_and_leaves_the_stored_ones():
    lifecycle = decide([stored("c-1", EntityState(FIRING)), stored("c-2", EntityState(FIRING))],
                       [campaign("c-1"), campaign("c-3")], set(), T, LifecyclePolicy(1, 2, "h"))
    named = lifecycle.named({("campaign", "c-1"): campaign("c-1", "Spring"),
                             ("campaign", "c-3"): campaign("c-3", "Push")})
    assert [entity.entity_name for entity in named.firing] == ["Spring", "Push"]
    # c-3 is new; c-2 (stored, not matched) starts recovering under its stored name.
    assert [(entity.entity_name, after.state) for entity, _, after in named.changes] == [
        ("Push", FIRING), ("name of c-2", RECOVERING)]
    assert (named.resolved, named.decided, named.counts) == (lifecycle.resolved, lifecycle.decided, lifecycle.counts)


def test_the_next_state_of_each_state():
    assert next_state(EntityState(NORMAL), True, True, 1, 1) == EntityState(FIRING)
    assert next_state(EntityState(NORMAL), True, True, 2, 1) == EntityState(PENDING, 1)
    assert next_state(EntityState(NORMAL), False, False, 2, 1) == EntityState(NORMAL)
    assert next_state(EntityState(PENDING, 1), True, True, 2, 1) == EntityState(FIRING)
    assert next_state(EntityState(PENDING, 1), False, True, 2, 1) == EntityState(NORMAL)
    assert next_state(EntityState(FIRING), True, True, 1, 3) == EntityState(FIRING)
    assert next_state(EntityState(FIRING), False, True, 1, 3) == EntityState(RECOVERING, 1)
    assert next_state(EntityState(RECOVERING, 2), False, True, 1, 3) == EntityState(NORMAL)
    assert next_state(EntityState(RECOVERING, 2), False, False, 1, 3) == EntityState(RECOVERING, 0)
    assert next_state(EntityState(RECOVERING, 2), True, True, 1, 3) == EntityState(FIRING)


def test_editing_what_decides_matches_changes_the_hash_and_the_schedule_does_not():
    def rule(conditions, actions=None):
        return parse_rule(conditions, actions or {})
    base = lifecycle_policy(rule({"logic": {">": [{"var": "spend"}, 1]}, "schedule": "0 * * * *"})).conditions_hash
    assert lifecycle_policy(rule({"logic": {">": [{"var": "spend"}, 1]}, "schedule": "*/5 * * * *"})
                            ).conditions_hash == base
    assert lifecycle_policy(rule({"logic": {">": [{"var": "spend"}, 2]}})).conditions_hash != base
    assert lifecycle_policy(rule({"logic": {">": [{"var": "spend"}, 1]}},
                                 {"recover_when": {"<": [{"var": "spend"}, 1]}})).conditions_hash != base
    assert lifecycle_policy(rule({"logic": {">": [{"var": "spend"}, 1]}}, {"pending_runs": 3})
                            ).conditions_hash == base
