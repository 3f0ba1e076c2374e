"""Silences and acknowledgements as users make them (rulesctl silence and ack, the silences.add and
alerts.acknowledge tasks): the request checked, the user's permission checked, the row and its audit row written in
one transaction. Bad input or a refusal raises before anything is written (README "Silences and
acknowledgements")."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from engine.silences import (SilenceScope, TEXT_LIMITS, comment_problem, period_problem, refusal,
                             scope_problem, text_problem)
from engine.durations import parse_duration
from engine.rule_ids import canonical_rule_id
from engine.timestamps import parse_instant, utc_iso
from storage.postgres import Postgres, Transaction
from storage.results import ResultStore
from storage.rule_rows import rule_with_organization
from storage.silences import AcknowledgementRow, SilenceRow, SilenceStore, Standing
from worker.errors import WorkerError


class BadSilenceRequest(WorkerError):
    """The request is wrong (a bad field, an unknown organization, rule, user or silence, nothing to acknowledge);
    nothing was written."""


class SilenceRefused(WorkerError):
    """The user may not do this (README "Silences and acknowledgements"); nothing was written."""


@dataclass(frozen=True)
class SilenceRequest:
    """A silence to create: by user `created_by` in organization `org_id`, covering `scope`, from `starts_at`
    (None: now) until `ends_at` or for `duration` (exactly one of them). `request_id` (the creating task's id)
    makes a repeated request return the silence it created."""

    org_id: int
    created_by: int
    scope: SilenceScope
    ends_at: datetime | None = None
    duration: timedelta | None = None
    starts_at: datetime | None = None
    comment: str | None = None
    request_id: str | None = None


def now_utc() -> datetime:
    """Now, in UTC, to the second."""
    return datetime.now(UTC).replace(microsecond=0)


def parse_time(text: str, label: str) -> datetime:
    """An ISO 8601 time (without an offset: UTC) as an aware instant; BadSilenceRequest names `label` if it is not
    one."""
    try:
        return parse_instant(text)
    except ValueError:
        raise BadSilenceRequest(f"{label}: not an ISO 8601 time: {text!r}") from None


def parse_length(text: str, label: str) -> timedelta:
    """A duration longer than zero, such as `30m`, `2h`, `1d` or `1w` (engine/durations.py); BadSilenceRequest
    names `label` if it is not one."""
    try:
        duration = parse_duration(text.strip())
    except (AttributeError, ValueError):
        duration = None
    if not duration:
        raise BadSilenceRequest(f"{label}: not a duration such as 30m, 2h, 1d or 1w: {text!r}")
    return duration


def parse_rule_id(text: Any, label: str = "rule_id") -> str:
    """A rule id (a UUID) in its canonical form; BadSilenceRequest names `label` if it is not one."""
    try:
        return canonical_rule_id(text)
    except ValueError as error:
        raise BadSilenceRequest(f"{label}: {error}") from None


def silence_request(org_id: Any, created_by: Any, *, rule_id: Any = None, entity_type: Any = None,
                    entity_id: Any = None, dsp_type: Any = None, advertiser_id: Any = None, starts_at: Any = None,
                    ends_at: Any = None, duration: Any = None, comment: Any = None,
                    request_id: str | None = None) -> SilenceRequest:
    """The SilenceRequest of the silences.add task's fields (times ISO 8601, `duration` such as `2h`); raises
    BadSilenceRequest naming the first field that is wrong."""
    whole_number(org_id, "org_id")
    whole_number(created_by, "created_by")
    texts = {"entity_type": entity_type, "entity_id": entity_id, "dsp_type": dsp_type,
             "advertiser_id": advertiser_id, "comment": comment}
    for name, value in texts.items():
        if value is not None and not isinstance(value, str):
            raise BadSilenceRequest(f"{name}: must be text, got {value!r}")
    scope = SilenceScope(parse_rule_id(rule_id) if rule_id is not None else None, entity_type, entity_id, dsp_type,
                         advertiser_id)
    return SilenceRequest(
        org_id, created_by, scope,
        ends_at=parse_time(ends_at, "ends_at") if ends_at is not None else None,
        duration=parse_length(duration, "duration") if duration is not None else None,
        starts_at=parse_time(starts_at, "starts_at") if starts_at is not None else None,
        comment=comment, request_id=request_id)


def whole_number(value: Any, label: str) -> int:
    """`value` when it is a whole number (not a boolean); else BadSilenceRequest names `label`."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadSilenceRequest(f"{label}: must be a whole number, got {value!r}")
    return value


def _checked(standing: Standing, request_org: int, user_id: int, scope: SilenceScope, what: str) -> None:
    """Raises BadSilenceRequest for an unknown organization, user or rule, SilenceRefused when the user may not."""
    if not standing.organization_exists:
        raise BadSilenceRequest(f"no organization with id {request_org}")
    if not standing.user_exists:
        raise BadSilenceRequest(f"no user with id {user_id}")
    if scope.rule_id is not None and standing.rule_org_id != request_org:
        raise BadSilenceRequest(f"no rule {scope.rule_id} in organization {request_org}")
    refused = refusal(user_id, request_org, standing.role, standing.holds_edit_grant, what, scope)
    if refused:
        raise SilenceRefused(refused)


def describe_scope(scope: SilenceScope) -> str:
    """The scope in words: `rule R, campaign c-1, DV360 advertiser adv-1`, or `every rule and entity`."""
    parts = [f"rule {scope.rule_id}" if scope.rule_id else "every rule",
             f"{scope.entity_type} {scope.entity_id}" if scope.entity_id is not None else "every entity"]
    if scope.dsp_type is not None:
        parts.append(f"DSP {scope.dsp_type}")
    if scope.advertiser_id is not None:
        parts.append(f"advertiser {scope.advertiser_id}")
    return ", ".join(parts)


def add_silence(postgres: Postgres, request: SilenceRequest, now: datetime | None = None) -> SilenceRow:
    """Creates the silence with its audit row (`silence.create`) and returns it; a request whose `request_id`
    created one already returns that one. Raises BadSilenceRequest or SilenceRefused, writing nothing."""
    now = now or now_utc()
    scope = request.scope
    problem = scope_problem(scope) or comment_problem(request.comment)
    if problem:
        raise BadSilenceRequest(problem)
    if (request.ends_at is None) == (request.duration is None):
        raise BadSilenceRequest("give either the end of the silence or its duration")
    starts_at = request.starts_at or now
    ends_at = request.ends_at or starts_at + request.duration
    problem = period_problem(starts_at, ends_at, now)
    if problem:
        raise BadSilenceRequest(f"{problem} (from {utc_iso(starts_at)} to {utc_iso(ends_at)})")
    store = SilenceStore(postgres)
    with postgres.transaction() as tx:
        earlier = store.silence_of_request(tx, request.request_id)
        if earlier is not None:
            return earlier
        _checked(store.standing(tx, request.org_id, request.created_by, scope, now), request.org_id,
                 request.created_by, scope, f"silence {describe_scope(scope)}")
        return store.insert_silence(tx, request.org_id, scope, starts_at, ends_at, request.created_by,
                                    request.comment, request.request_id)


def expire_silence(postgres: Postgres, silence_id: int, user_id: int, now: datetime | None = None) -> SilenceRow:
    """Ends the silence now (one not started yet never starts), with its audit row (`silence.expire`), and
    returns it; the user needs what creating it takes. Raises BadSilenceRequest (no such silence, ended already) or
    SilenceRefused, writing nothing."""
    now = now or now_utc()
    store = SilenceStore(postgres)
    with postgres.transaction() as tx:
        silence = store.silence_for_update(tx, silence_id)
        if silence is None:
            raise BadSilenceRequest(f"no silence with id {silence_id}")
        _checked(_standing_on(store, tx, silence, user_id, now), silence.org_id, user_id, silence.scope,
                 f"expire silence {silence_id}")
        if silence.state(now) == "ended":
            raise BadSilenceRequest(f"silence {silence_id} ended already, at {utc_iso(silence.ends_at)}")
        return store.end_silence(tx, silence, now, user_id)


def _standing_on(store: SilenceStore, tx: Transaction, silence: SilenceRow, user_id: int,
                 now: datetime) -> Standing:
    """The user's standing on an existing silence, whose rule may belong to another organization since: no reason
    to refuse ending it."""
    standing = store.standing(tx, silence.org_id, user_id, silence.scope, now)
    return Standing(standing.organization_exists, standing.user_exists, silence.org_id, standing.role,
                    standing.holds_edit_grant)


def list_silences(postgres: Postgres, org_id: int, include_ended: bool,
                  now: datetime | None = None) -> list[SilenceRow]:
    """The organization's silences not ended yet (active or scheduled), or all of them; raises BadSilenceRequest
    for an unknown organization."""
    store = SilenceStore(postgres)
    if not store.organization_exists(org_id):
        raise BadSilenceRequest(f"no organization with id {org_id}")
    return store.silences(org_id, now or now_utc(), include_ended)


def acknowledge(postgres: Postgres, results: ResultStore, rule_id: Any, entity_type: Any, entity_id: Any,
                created_by: Any, comment: Any = None, request_id: str | None = None,
                now: datetime | None = None) -> AcknowledgementRow:
    """Acknowledges the firing (rule, entity) for user `created_by`, with its audit row (`alert.acknowledge`), and
    returns it; a request whose `request_id` created one already returns that one.

    The entity must be firing: alert_states says so, or, for a rule that keeps no state of it, the rule has
    alerted on it. Raises BadSilenceRequest (a bad field, an unknown rule or user, not firing, acknowledged
    already) or SilenceRefused, writing nothing."""
    now = now or now_utc()
    rule_id = parse_rule_id(rule_id)
    whole_number(created_by, "created_by")
    for name, value in (("entity_type", entity_type), ("entity_id", entity_id)):
        if not isinstance(value, str):
            raise BadSilenceRequest(f"{name}: must be text, got {value!r}")
        if problem := text_problem(value, TEXT_LIMITS[name]):
            raise BadSilenceRequest(f"{name}: {problem}")
    if comment is not None and not isinstance(comment, str):
        raise BadSilenceRequest(f"comment: must be text, got {comment!r}")
    if problem := comment_problem(comment):
        raise BadSilenceRequest(problem)
    rule = rule_with_organization(postgres, rule_id)
    if rule is None or not rule.organization_exists:
        raise BadSilenceRequest(f"no rule with id {rule_id}")
    scope = SilenceScope(rule_id, entity_type, entity_id)
    entity = f"{entity_type} {entity_id}"
    store = SilenceStore(postgres)
    with postgres.transaction() as tx:
        earlier = store.acknowledgement_of_request(tx, request_id)
        if earlier is not None:
            return earlier
        _checked(store.standing(tx, rule.org_id, created_by, scope, now), rule.org_id, created_by, scope,
                 f"acknowledge {entity} of rule {rule_id}")
        open_one = store.open_acknowledgement(tx, rule_id, entity_type, entity_id)
        if open_one is not None:
            raise BadSilenceRequest(f"{entity} of rule {rule_id} is acknowledged already (acknowledgement "
                                    f"{open_one.id}, by user {open_one.created_by} at {utc_iso(open_one.created_at)})")
        firing = store.firing(tx, rule_id, entity_type, entity_id)
        if firing is False or (firing is None and not results.has_alerted(rule.org_id, rule_id, entity_type,
                                                                          entity_id)):
            raise BadSilenceRequest(f"{entity} is not firing for rule {rule_id}: nothing to acknowledge")
        return store.insert_acknowledgement(tx, rule.org_id, rule_id, entity_type, entity_id, created_by, comment,
                                            request_id)
