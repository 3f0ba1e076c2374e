"""Which of a run's entities alert and which resolve: the alert lifecycle of each (rule, entity) (README, Alert
lifecycle), then the cooldown.

`decide` (pure) moves every entity a run concerns, the ones it matched and the ones not normal before it, one
step through engine.alert_lifecycle, and says which matched entities fire (they alert unless the rule alerted on
them within `cooldown_minutes` before T) and which resolve. AlertState reads and records what that needs, in
PostgreSQL; SimulatedStates keeps the same in memory, for a backfill, which never touches the live states.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from engine.alert_lifecycle import FIRING, FIRING_STATE, NORMAL, PENDING, RECOVERING, UNSEEN, EntityState, \
    conditions_hash, next_state, resolves
from engine.model import Rule
from storage.alert_states import AlertStateStore, StateWrite, StoredState
from storage.postgres import Transaction
from storage.results import Evaluation, ResultStore
from worker.audience import Entity


def cooldown_start(at: datetime, cooldown_minutes: int) -> datetime | None:
    """The first instant of the cooldown before `at`, or None when the rule has no cooldown."""
    return at - timedelta(minutes=cooldown_minutes) if cooldown_minutes else None


def out_of_cooldown(matched: Sequence[Entity], cooling: Collection[tuple[str, str]]) -> list[Entity]:
    """The matched entities whose (entity_type, entity_id) is not among the `cooling` ones, in their order."""
    return [entity for entity in matched if entity.key not in cooling]


@dataclass(frozen=True)
class LifecyclePolicy:
    """A rule's lifecycle settings, and the hash of the conditions its states must have been reached under."""

    pending_runs: int
    recovery_runs: int
    conditions_hash: str


def lifecycle_policy(rule: Rule) -> LifecyclePolicy:
    """The rule's lifecycle settings; its states are void once its conditions (other than the schedule) or its
    recover_when are edited."""
    conditions = rule.conditions.model_dump(mode="json", exclude={"schedule"})
    return LifecyclePolicy(rule.actions.pending_runs, rule.actions.recovery_runs,
                           conditions_hash(conditions, rule.actions.recover_when))


@dataclass(frozen=True)
class Lifecycle:
    """What one run does to its rule's entities.

    `firing`: the matched entities firing after the run, in their order (they alert unless cooling down);
    `resolved`: the entities that resolve, as last stored; `changes`: the entities whose state (or streak) moved
    (a matched one as the run found it, the others as last stored), with their stored state and their new one;
    `decided`: the keys, as PostgreSQL stores them, of the entities the run moved (or kept) itself, the others
    being left to the later run that last wrote them; `counts`: how many entities are pending, firing and
    recovering after the run, and how many it resolved.
    """

    firing: list[Entity]
    resolved: list[Entity]
    changes: list[tuple[Entity, str, EntityState]]
    decided: frozenset[tuple[str, str]]
    counts: dict[str, int] = field(default_factory=dict)

    def named(self, names: Mapping[tuple[str, str], Entity]) -> Lifecycle:
        """This lifecycle with each firing or changed entity whose key `names` holds replaced by its entry there."""
        return replace(self, firing=[names.get(entity.key, entity) for entity in self.firing],
                       changes=[(names.get(entity.key, entity), before, after)
                                for entity, before, after in self.changes])


def decide(stored: Iterable[StoredState], matched: Sequence[Entity], unrecovered: Collection[tuple[str, str]],
           at: datetime, policy: LifecyclePolicy) -> Lifecycle:
    """The lifecycle step of one run as of `at` (aware, UTC) over the rule's `stored` states that are not normal.

    Entities are compared as PostgreSQL stores them (NUL characters replaced). `unrecovered` are the keys of the
    entities for which the rule's recover_when does not hold. A state stored under other conditions (another hash)
    counts as normal, and its row is written again with the rule's hash. A state written as of `at` or later is
    left as it is: the entity fires if it matched and that state is firing, and nothing of it is written.
    """
    moment = at.replace(tzinfo=None)
    current: dict[tuple[str, str], tuple[StoredState, EntityState]] = {}
    later: dict[tuple[str, str], EntityState] = {}
    for row in stored:
        key = (row.entity_type, row.entity_id)
        if row.evaluated_at >= moment:
            later[key] = row.state
        else:
            valid = not row.conditions_hash or row.conditions_hash == policy.conditions_hash
            current[key] = (row, row.state if valid else UNSEEN)
    firing: list[Entity] = []
    changes: list[tuple[Entity, str, EntityState]] = []
    after_states: list[EntityState] = list(later.values())
    decided: set[tuple[str, str]] = set()
    first_match = next_state(UNSEEN, True, True, policy.pending_runs, policy.recovery_runs)
    for entity in matched:
        key = entity.without_nul().key
        if key in later:
            if later[key].state == FIRING:
                firing.append(entity)
            continue
        row, before = current.pop(key, (None, UNSEEN))
        after = first_match if row is None else next_state(before, True, True, policy.pending_runs,
                                                             policy.recovery_runs)
        if row is None or after != row.state or row.conditions_hash != policy.conditions_hash:
            changes.append((entity, row.state.state if row else NORMAL, after))
        if after.state == FIRING:
            firing.append(entity)
        after_states.append(after)
        decided.add(key)
    resolved: list[Entity] = []
    for key, (row, before) in current.items():
        after = next_state(before, False, key not in unrecovered, policy.pending_runs, policy.recovery_runs)
        entity = Entity(row.entity_type, row.entity_id, row.entity_name, row.condition_details, row.dsp_type,
                        row.advertiser_id)
        if after != row.state or row.conditions_hash != policy.conditions_hash:
            changes.append((entity, row.state.state, after))
        if resolves(before, after):
            resolved.append(entity)
        after_states.append(after)
        decided.add(key)
    counts = {state: sum(1 for after in after_states if after.state == state)
              for state in (PENDING, FIRING, RECOVERING)}
    counts["resolved"] = len(resolved)
    return Lifecycle(firing, resolved, changes, frozenset(decided), counts)


def state_writes(rule_id: str, run_id: str, policy: LifecyclePolicy, lifecycle: Lifecycle,
                 alerted: Sequence[Entity]) -> list[StateWrite]:
    """The rows one run writes, each entity as PostgreSQL stores it: every change, and each alerted entity (as
    PostgreSQL stores it) that stays firing, so that its row keeps the name and details of its latest alert."""
    changes = [(entity.without_nul(), before, after) for entity, before, after in lifecycle.changes]
    changed = {entity.key for entity, _, _ in changes}
    writes = [StateWrite(rule_id, run_id, policy.conditions_hash, entity, before, after)
              for entity, before, after in changes]
    writes += [StateWrite(rule_id, run_id, policy.conditions_hash, entity, FIRING, FIRING_STATE)
               for entity in alerted if entity.key not in changed and entity.key in lifecycle.decided]
    return writes


class SimulatedStates:
    """The states (and alerts) of a backfill's runs, kept in memory as PostgreSQL would keep them; it reads and
    writes states as storage.alert_states.AlertStateStore does."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str, str], StoredState] = {}
        self._alerted_at: dict[tuple[str, str, str], datetime] = {}
        self._found_at: dict[datetime, tuple[tuple[Evaluation, ...], tuple[Evaluation, ...]]] = {}

    def evaluated(self, at: datetime, matched: Sequence[Evaluation], unrecovered: Sequence[Evaluation]) -> None:
        """Keeps the matched and the unrecovered evaluations of the run as of `at`, for later fire times that share
        its evaluation."""
        self._found_at[at] = (tuple(matched), tuple(unrecovered))

    def found_at(self, at: datetime) -> tuple[tuple[Evaluation, ...], tuple[Evaluation, ...]]:
        """The matched and the unrecovered evaluations kept of the run as of `at` (none kept: none)."""
        return self._found_at.get(at, ((), ()))

    def not_normal(self, rule_ids: Sequence[str]) -> dict[str, list[StoredState]]:
        """For each of the rules, its entities that are not normal."""
        found: dict[str, list[StoredState]] = {rule_id: [] for rule_id in rule_ids}
        for (rule_id, _, _), row in self._rows.items():
            if rule_id in found and row.state.state != NORMAL:
                found[rule_id].append(row)
        return found

    def write(self, tx: Transaction | None, org_id: int, at: datetime, writes: Sequence[StateWrite]) -> None:
        """Keeps `writes` as of `at`, leaving alone a row kept as of `at` or later (`tx` is not used)."""
        moment = at.replace(tzinfo=None)
        for write in writes:
            entity = write.entity
            key = (write.rule_id, entity.entity_type, entity.entity_id)
            row = self._rows.get(key)
            if row is None or row.evaluated_at < moment:
                self._rows[key] = StoredState(entity.entity_type, entity.entity_id, entity.entity_name,
                                              entity.condition_details, entity.dsp_type, entity.advertiser_id,
                                              write.after, write.conditions_hash, moment)

    def cooling(self, rule_id: str, at: datetime, cooldown_minutes: int) -> set[tuple[str, str]]:
        """The keys of the rule's entities it would have alerted on within its cooldown before `at`."""
        since = cooldown_start(at, cooldown_minutes)
        if since is None:
            return set()
        return {(entity_type, entity_id) for (rule, entity_type, entity_id), moment in self._alerted_at.items()
                if rule == rule_id and since <= moment < at}

    def alerted(self, rule_id: str, at: datetime, entities: Sequence[Entity]) -> None:
        """Keeps that the rule would have alerted on `entities` at `at`."""
        for entity in entities:
            self._alerted_at[(rule_id, *entity.key)] = at


class AlertState:
    """The cooldown (read from alert_events) and the lifecycle states (alert_states) of rules' entities."""

    def __init__(self, results: ResultStore, states: AlertStateStore) -> None:
        self._results = results
        self._states = states

    @property
    def states(self) -> AlertStateStore:
        """The live states, in PostgreSQL."""
        return self._states

    def alerting(self, org_id: int, at: datetime, runs: Sequence[tuple[str, int, Sequence[Entity]]]
                 ) -> list[list[Entity]]:
        """For each (rule id, cooldown minutes, firing entities) of one organization's runs as of T, the entities
        with no alert of that rule within its cooldown before T; the cooldowns are read in one query."""
        since_by_rule = {rule_id: since for rule_id, minutes, firing in runs
                         if firing and (since := cooldown_start(at, minutes)) is not None}
        entity_ids = sorted({entity.entity_id for rule_id, _, firing in runs if rule_id in since_by_rule
                             for entity in firing})
        cooling = self._results.alerted_since_by_rule(org_id, at, since_by_rule, entity_ids)
        return [out_of_cooldown(firing, cooling.get(rule_id, set())) for rule_id, _, firing in runs]


def keys_of(entities: Iterable[Entity]) -> set[tuple[str, str]]:
    """The (entity_type, entity_id) of `entities` as PostgreSQL stores them."""
    return {entity.without_nul().key for entity in entities}

