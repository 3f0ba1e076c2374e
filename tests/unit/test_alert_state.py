"""The cooldown and resolve decisions of worker.alert_state, without servers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from storage.alert_states import FiringEntity
from worker.alert_state import cooldown_start, no_longer_matching, out_of_cooldown
from worker.audience import Entity

T = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)


def campaign(entity_id: str, name: str = "") -> Entity:
    return Entity("campaign", entity_id, name or entity_id, '{"conditions":[true]}', "DV360", "adv-1")


def firing(entity_type: str, entity_id: str, evaluated_at: datetime) -> FiringEntity:
    return FiringEntity(entity_type, entity_id, f"name of {entity_id}", '{"conditions":[true]}', "TTD", "adv-2",
                        evaluated_at.replace(tzinfo=None))


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


def test_a_firing_entity_that_no_longer_matches_resolves_with_what_was_stored_of_it():
    resolved = no_longer_matching([firing("campaign", "c-1", T - timedelta(hours=1)),
                                   firing("campaign", "c-2", T - timedelta(hours=1))], [campaign("c-2")], T)
    assert resolved == [Entity("campaign", "c-1", "name of c-1", '{"conditions":[true]}', "TTD", "adv-2")]


def test_the_same_id_of_another_type_still_resolves():
    resolved = no_longer_matching([firing("line_item", "x-1", T - timedelta(hours=1))],
                                  [Entity("insertion_order", "x-1", "x-1", "{}")], T)
    assert [entity.key for entity in resolved] == [("line_item", "x-1")]


def test_an_entity_marked_firing_at_t_or_later_does_not_resolve_at_t():
    states = [firing("campaign", "c-1", T), firing("campaign", "c-2", T + timedelta(minutes=5)),
              firing("campaign", "c-3", T - timedelta(seconds=1))]
    assert [entity.entity_id for entity in no_longer_matching(states, [], T)] == ["c-3"]


def test_a_match_with_nul_characters_is_compared_as_postgresql_stored_it():
    stored_id = "c\ufffd1"  # PostgreSQL keeps U+FFFD where ClickHouse has NUL
    matched = [Entity("campaign", "c\x001", "c\x001", '{"conditions":[true]}')]
    assert no_longer_matching([firing("campaign", stored_id, T - timedelta(hours=1))], matched, T) == []
