"""Silences and acknowledgements without I/O: which of a run's entities they cover, what that withholds, who may
create them, and how their fields are checked (README "Silences and acknowledgements")."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

# The longest silence: one that outlives the reason for it is easily forgotten.
MAX_SILENCE = timedelta(days=365)
MAX_COMMENT_CHARACTERS = 1000
# The width of each scope column (entity_permissions and dsp_accounts have the same).
TEXT_LIMITS = {"entity_type": 100, "entity_id": 255, "dsp_type": 50, "advertiser_id": 255}
EDITING_ROLES = ("owner", "admin")


class Quietable(Protocol):
    """What a silence is matched on (worker.audience.Entity is one)."""

    entity_type: str
    entity_id: str
    dsp_type: str
    advertiser_id: str


@dataclass(frozen=True)
class SilenceScope:
    """What a silence covers; a field left None covers every value of it."""

    rule_id: str | None = None
    entity_type: str | None = None
    entity_id: str | None = None
    dsp_type: str | None = None
    advertiser_id: str | None = None

    def covers(self, rule_id: str, entity: Quietable) -> bool:
        """True when the entity of rule `rule_id` is within every field this scope sets."""
        return ((self.rule_id is None or self.rule_id == rule_id)
                and (self.entity_type is None or self.entity_type == entity.entity_type)
                and (self.entity_id is None or self.entity_id == entity.entity_id)
                and (self.dsp_type is None or self.dsp_type == entity.dsp_type)
                and (self.advertiser_id is None or self.advertiser_id == entity.advertiser_id))


@dataclass(frozen=True)
class OpenAcknowledgement:
    """An acknowledgement in force: (rule, entity) is not notified again until it no longer matches."""

    id: int
    rule_id: str
    entity_type: str
    entity_id: str

    @property
    def key(self) -> tuple[str, str]:
        return self.entity_type, self.entity_id


@dataclass(frozen=True)
class Hush:
    """What silences and acknowledgements do to one run: the (entity_type, entity_id) of the entities whose
    notices are withheld, how many matched entities a silence covered and how many (not silenced) an
    acknowledgement covered, and the acknowledgements that end because their entity no longer matches."""

    withheld: frozenset[tuple[str, str]] = frozenset()
    silenced: int = 0
    acknowledged: int = 0
    ending: tuple[int, ...] = ()

    def told(self, entities: Sequence[Quietable]) -> list:
        """The entities whose notices are not withheld, in their order."""
        if not self.withheld:
            return list(entities)
        return [entity for entity in entities if (entity.entity_type, entity.entity_id) not in self.withheld]


@dataclass(frozen=True)
class Quieting:
    """The silences in force and the open acknowledgements of some rules of one organization at one T."""

    silences: tuple[SilenceScope, ...] = ()
    acknowledgements: tuple[OpenAcknowledgement, ...] = ()

    def concerns(self, rule_id: str) -> bool:
        """True when a silence or an acknowledgement may cover an entity of the rule."""
        return (any(silence.rule_id in (None, rule_id) for silence in self.silences)
                or any(ack.rule_id == rule_id for ack in self.acknowledgements))

    def hush(self, rule_id: str, matched: Iterable[Quietable], resolved: Iterable[Quietable] = (),
             ongoing: Collection[tuple[str, str]] = frozenset()) -> Hush:
        """What this does to a run of the rule that matched `matched` and resolves `resolved`: a matched entity a
        silence covers is counted as silenced, else one with an open acknowledgement as acknowledged; the notices
        of both are withheld, as are the resolved notices of entities a silence covers (a resolved entity's
        acknowledgement lets its notice through, and ends). Every acknowledgement whose entity is neither matched
        nor among the `ongoing` keys (the entities that stay firing or recovering without matching) ends."""
        if not self.concerns(rule_id):
            return Hush()
        silences = [silence for silence in self.silences if silence.rule_id in (None, rule_id)]
        acknowledged_keys = {ack.key for ack in self.acknowledgements if ack.rule_id == rule_id}
        withheld: set[tuple[str, str]] = set()
        matched_keys: set[tuple[str, str]] = set()
        silenced = acknowledged = 0
        for entity in matched:
            key = (entity.entity_type, entity.entity_id)
            matched_keys.add(key)
            if any(silence.covers(rule_id, entity) for silence in silences):
                silenced += 1
            elif key in acknowledged_keys:
                acknowledged += 1
            else:
                continue
            withheld.add(key)
        for entity in resolved:
            if any(silence.covers(rule_id, entity) for silence in silences):
                withheld.add((entity.entity_type, entity.entity_id))
        ending = tuple(ack.id for ack in self.acknowledgements
                       if ack.rule_id == rule_id and ack.key not in matched_keys and ack.key not in ongoing)
        return Hush(frozenset(withheld), silenced, acknowledged, ending)


def refusal(user_id: int, org_id: int, role: str | None, holds_edit_grant: bool, what: str,
            scope: SilenceScope) -> str | None:
    """Why user `user_id` (of `role` in the organization, None: not a member) may not `what` ("silence …",
    "acknowledge …") within `scope`, or None when they may: an owner or an admin may; a member may with an
    unexpired `edit` grant on the scope's rule or on its entity (`holds_edit_grant`); nobody else may."""
    if role is None:
        return f"user {user_id} may not {what}: not a member of organization {org_id}"
    if role in EDITING_ROLES or (role == "member" and holds_edit_grant):
        return None
    on = " or ".join(part for part in (
        f"rule {scope.rule_id}" if scope.rule_id else "",
        f"{scope.entity_type} {scope.entity_id}" if scope.entity_id is not None else "") if part)
    needed = f"an owner, an admin or a member with an unexpired edit grant on {on}" if on else "an owner or an admin"
    return f"user {user_id} ({role}) may not {what}: that takes {needed}"


def scope_problem(scope: SilenceScope) -> str | None:
    """What is wrong with a scope's text (empty, too long, a NUL character, an entity type without an id or the
    other way round), or None."""
    if (scope.entity_type is None) != (scope.entity_id is None):
        return "entity_type and entity_id: give both (one entity) or neither (every entity)"
    for name, limit in TEXT_LIMITS.items():
        value = getattr(scope, name)
        if value is not None and (problem := text_problem(value, limit)):
            return f"{name}: {problem}"
    return None


def text_problem(value: str, limit: int) -> str | None:
    """What is wrong with a text field of at most `limit` characters, or None."""
    if not value.strip():
        return "must not be empty"
    if len(value) > limit:
        return f"at most {limit} characters, got {len(value)}"
    if "\x00" in value:
        return "must not hold a NUL character"
    return None


def comment_problem(comment: str | None) -> str | None:
    """What is wrong with a comment (optional), or None."""
    if comment is None:
        return None
    if len(comment) > MAX_COMMENT_CHARACTERS:
        return f"comment: at most {MAX_COMMENT_CHARACTERS} characters, got {len(comment)}"
    if "\x00" in comment:
        return "comment: must not hold a NUL character"
    return None


def period_problem(starts_at: datetime, ends_at: datetime, now: datetime) -> str | None:
    """What is wrong with a new silence's period (aware instants), or None: it must end after it starts and after
    `now`, and last at most MAX_SILENCE."""
    if ends_at <= starts_at:
        return "the silence must end after it starts"
    if ends_at <= now:
        return "the silence would end before now"
    if ends_at - starts_at > MAX_SILENCE:
        return f"a silence lasts at most {MAX_SILENCE.days} days"
    return None
