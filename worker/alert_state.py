"""Which of a run's matched entities alert, and which resolve: the cooldown, the firing state, resolve notices.

A matched entity alerts unless the rule alerted on it within `cooldown_minutes` before T. For a rule with
`notify_on_resolve`, an entity that alerted fires until a later fire time finds it no longer matching: then it
resolves, once. The decisions are the pure functions below; AlertState reads and records what they need.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from datetime import datetime, timedelta

from storage.alert_states import AlertStateStore, FiringEntity
from storage.postgres import Transaction
from storage.results import ResultStore, RunScope
from worker.audience import Entity


def cooldown_start(at: datetime, cooldown_minutes: int) -> datetime | None:
    """The first instant of the cooldown before `at`, or None when the rule has no cooldown."""
    return at - timedelta(minutes=cooldown_minutes) if cooldown_minutes else None


def out_of_cooldown(matched: Sequence[Entity], cooling: Collection[tuple[str, str]]) -> list[Entity]:
    """The matched entities whose (entity_type, entity_id) is not among the `cooling` ones, in their order."""
    return [entity for entity in matched if entity.key not in cooling]


def no_longer_matching(firing: Iterable[FiringEntity], matched: Iterable[Entity], at: datetime) -> list[Entity]:
    """The entities that fired before `at` (aware, UTC) and are not among `matched`: they resolve at `at`.

    Matched entities are compared as PostgreSQL stored them (NUL characters replaced), since that is how the
    firing ones were stored. An entity marked firing by `at` itself or later is left alone.
    """
    still = {entity.without_nul().key for entity in matched}
    moment = at.replace(tzinfo=None)
    return [Entity(state.entity_type, state.entity_id, state.entity_name, state.condition_details, state.dsp_type,
                   state.advertiser_id)
            for state in firing if (state.entity_type, state.entity_id) not in still and state.evaluated_at < moment]


class AlertState:
    """The cooldown (read from alert_events) and the firing state (alert_states) of one rule's entities."""

    def __init__(self, results: ResultStore, states: AlertStateStore) -> None:
        self._results = results
        self._states = states

    def alerting(self, org_id: int, at: datetime, runs: Sequence[tuple[str, int, Sequence[Entity]]]
                 ) -> list[list[Entity]]:
        """For each (rule id, cooldown minutes, matched entities) of one organization's runs as of T, the matched
        entities with no alert of that rule within its cooldown before T; the cooldowns are read in one query."""
        since_by_rule = {rule_id: since for rule_id, minutes, matched in runs
                         if matched and (since := cooldown_start(at, minutes)) is not None}
        entity_ids = sorted({entity.entity_id for rule_id, _, matched in runs if rule_id in since_by_rule
                             for entity in matched})
        cooling = self._results.alerted_since_by_rule(org_id, at, since_by_rule, entity_ids)
        return [out_of_cooldown(matched, cooling.get(rule_id, set())) for rule_id, _, matched in runs]

    def resolving(self, scope: RunScope, matched: Sequence[Entity]) -> list[Entity]:
        """The entities firing for the rule before T that no longer match."""
        return no_longer_matching(self._states.firing(scope.rule_id), matched, scope.at)

    def record(self, tx: Transaction, scope: RunScope, alerted: Sequence[Entity], resolved: Sequence[Entity]) -> None:
        """Records in `tx` that `alerted` (as PostgreSQL stores them) fire as of T and `resolved` no longer do."""
        self._states.mark_firing(tx, scope.rule_id, scope.org_id, scope.at, alerted)
        self._states.mark_resolved(tx, scope.rule_id, scope.at, resolved)
