"""`silences` and `acknowledgements`: the rows, the one read a run's alert stage makes of them, and the writes of
the commands and tasks that create, expire and end them (audited in `audit_logs`)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from engine.silences import OpenAcknowledgement, Quieting, SilenceScope
from engine.timestamps import utc_iso
from storage.postgres import Postgres, Transaction


def _naive(moment: datetime) -> datetime:
    """An instant as the naive UTC timestamp the tables store (a naive one is UTC already)."""
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def _iso(moment: datetime | None) -> str | None:
    return utc_iso(moment) if moment is not None else None


@dataclass(frozen=True)
class SilenceRow:
    """One `silences` row; times naive, UTC."""

    id: int
    org_id: int
    scope: SilenceScope
    starts_at: datetime
    ends_at: datetime
    created_by: int | None
    comment: str | None
    created_at: datetime

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> SilenceRow:
        """The silence of a row read by any `SELECT *` or `RETURNING *` of silences."""
        return cls(row["id"], row["org_id"],
                   SilenceScope(str(row["rule_id"]) if row["rule_id"] else None, row["entity_type"],
                                row["entity_id"], row["dsp_type"], row["advertiser_id"]),
                   row["starts_at"], row["ends_at"], row["created_by"], row["comment"], row["created_at"])

    def state(self, now: datetime) -> str:
        """`active`, `scheduled` (starts later) or `ended` (an expired one that never started included), at `now`
        (aware)."""
        moment = _naive(now)
        if self.ends_at <= moment or self.ends_at == self.starts_at:
            return "ended"
        return "active" if self.starts_at <= moment else "scheduled"

    def to_dict(self, now: datetime | None = None) -> dict[str, Any]:
        """The silence as JSON-able data (times ISO 8601 UTC), with its `state` at `now` when given."""
        scope = self.scope
        found = {"id": self.id, "org_id": self.org_id, "rule_id": scope.rule_id, "entity_type": scope.entity_type,
                 "entity_id": scope.entity_id, "dsp_type": scope.dsp_type, "advertiser_id": scope.advertiser_id,
                 "starts_at": utc_iso(self.starts_at), "ends_at": utc_iso(self.ends_at), "created_by": self.created_by,
                 "comment": self.comment, "created_at": utc_iso(self.created_at)}
        return found if now is None else {**found, "state": self.state(now)}


@dataclass(frozen=True)
class AcknowledgementRow:
    """One `acknowledgements` row; times naive, UTC."""

    id: int
    org_id: int
    rule_id: str
    entity_type: str
    entity_id: str
    created_by: int | None
    comment: str | None
    created_at: datetime
    ended_at: datetime | None
    ended_by_run: str | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> AcknowledgementRow:
        """The acknowledgement of a row read by any `SELECT *` or `RETURNING *` of acknowledgements."""
        return cls(row["id"], row["org_id"], str(row["rule_id"]), row["entity_type"], row["entity_id"],
                   row["created_by"], row["comment"], row["created_at"], row["ended_at"],
                   str(row["ended_by_run"]) if row["ended_by_run"] else None)

    def to_dict(self) -> dict[str, Any]:
        """The acknowledgement as JSON-able data (times ISO 8601 UTC)."""
        return {"id": self.id, "org_id": self.org_id, "rule_id": self.rule_id, "entity_type": self.entity_type,
                "entity_id": self.entity_id, "created_by": self.created_by, "comment": self.comment,
                "created_at": utc_iso(self.created_at), "ended_at": _iso(self.ended_at),
                "ended_by_run": self.ended_by_run}


@dataclass(frozen=True)
class Standing:
    """What the organization says of a user asking to silence or acknowledge: whether the organization, the user
    and the rule exist (the rule's organization, if any), the user's role there (None: not a member), and whether
    they hold an unexpired `edit` grant there on the rule or on the entity."""

    organization_exists: bool
    user_exists: bool
    rule_org_id: int | None
    role: str | None
    holds_edit_grant: bool


class SilenceStore:
    """Reads and writes silences and acknowledgements."""

    def __init__(self, postgres: Postgres) -> None:
        self._postgres = postgres

    def quieting(self, org_id: int, at: datetime, rule_ids: Sequence[str]) -> Quieting:
        """The silences of the organization in force at T (aware) for any of `rule_ids`, and the acknowledgements
        of those rules open at T, in one read."""
        if not rule_ids:
            return Quieting()
        rows = self._postgres.all("silences_and_acknowledgements_at", org_id=org_id, at=_naive(at),
                                  rule_ids=list(rule_ids))
        return Quieting(
            tuple(SilenceScope(row["rule_id"], row["entity_type"], row["entity_id"], row["dsp_type"],
                               row["advertiser_id"]) for row in rows if row["kind"] == "silence"),
            tuple(OpenAcknowledgement(row["id"], row["rule_id"], row["entity_type"], row["entity_id"])
                  for row in rows if row["kind"] == "acknowledgement"))

    def standing(self, tx: Transaction, org_id: int, user_id: int, scope: SilenceScope, at: datetime) -> Standing:
        """The user's standing in the organization for `scope`, grants read as of `at` (aware)."""
        row = tx.one("silencer_standing", org_id=org_id, user_id=user_id, rule_id=scope.rule_id,
                     entity_type=scope.entity_type, entity_id=scope.entity_id, at=_naive(at))
        return Standing(row["organization_exists"], row["user_exists"], row["rule_org_id"], row["role"],
                        row["holds_edit_grant"])

    def silence_of_request(self, tx: Transaction, request_id: str | None) -> SilenceRow | None:
        """The silence a task with this id created already, if any."""
        row = tx.one("silence_of_request", request_id=request_id) if request_id else None
        return SilenceRow.from_row(row) if row else None

    def insert_silence(self, tx: Transaction, org_id: int, scope: SilenceScope, starts_at: datetime,
                       ends_at: datetime, created_by: int, comment: str | None, request_id: str | None) -> SilenceRow:
        """Writes a silence in `tx` with its `silence.create` audit row, and returns it."""
        row = SilenceRow.from_row(tx.one(
            "insert_silence", org_id=org_id, rule_id=scope.rule_id, entity_type=scope.entity_type,
            entity_id=scope.entity_id, dsp_type=scope.dsp_type, advertiser_id=scope.advertiser_id,
            starts_at=_naive(starts_at), ends_at=_naive(ends_at), created_by=created_by, comment=comment,
            request_id=request_id))
        self._audit(tx, org_id, created_by, "silence.create", "silence", row.id, row.to_dict())
        return row

    def silence_for_update(self, tx: Transaction, silence_id: int) -> SilenceRow | None:
        """The silence, locked until `tx` ends; None when there is none with that id."""
        row = tx.one("silence_for_update", silence_id=silence_id)
        return SilenceRow.from_row(row) if row else None

    def end_silence(self, tx: Transaction, silence: SilenceRow, at: datetime, user_id: int) -> SilenceRow:
        """Ends the silence at `at` (aware; one not started yet ends when it starts), in `tx`, with its
        `silence.expire` audit row; returns it as it is now."""
        row = SilenceRow.from_row(tx.one("end_silence", silence_id=silence.id, at=_naive(at)))
        self._audit(tx, silence.org_id, user_id, "silence.expire", "silence", silence.id,
                    {"ends_at": utc_iso(row.ends_at), "was_ending_at": utc_iso(silence.ends_at)})
        return row

    def silences(self, org_id: int, at: datetime, include_ended: bool) -> list[SilenceRow]:
        """The organization's silences not ended at `at` (aware), or all of them, by start then id."""
        return [SilenceRow.from_row(row) for row in self._postgres.all(
            "silences_of_organization", org_id=org_id, at=_naive(at), include_ended=include_ended)]

    def organization_exists(self, org_id: int) -> bool:
        """True when an organization has this id."""
        return self._postgres.one("organization_exists", org_id=org_id) is not None

    def firing(self, tx: Transaction, rule_id: str, entity_type: str, entity_id: str) -> bool | None:
        """Whether alert_states says (rule, entity) is firing; None when it keeps no state for it."""
        row = tx.one("alert_state_of_entity", rule_id=rule_id, entity_type=entity_type,
                                 entity_id=entity_id)
        return row["firing"] if row else None

    def acknowledgement_of_request(self, tx: Transaction, request_id: str | None) -> AcknowledgementRow | None:
        """The acknowledgement a task with this id created already, if any."""
        row = tx.one("acknowledgement_of_request", request_id=request_id) if request_id else None
        return AcknowledgementRow.from_row(row) if row else None

    def open_acknowledgement(self, tx: Transaction, rule_id: str, entity_type: str,
                             entity_id: str) -> AcknowledgementRow | None:
        """The acknowledgement of (rule, entity) not ended yet, if any."""
        row = tx.one("open_acknowledgement", rule_id=rule_id, entity_type=entity_type, entity_id=entity_id)
        return AcknowledgementRow.from_row(row) if row else None

    def insert_acknowledgement(self, tx: Transaction, org_id: int, rule_id: str, entity_type: str, entity_id: str,
                               created_by: int, comment: str | None, request_id: str | None) -> AcknowledgementRow:
        """Writes an acknowledgement in `tx` with its `alert.acknowledge` audit row, and returns it."""
        row = AcknowledgementRow.from_row(tx.one(
            "insert_acknowledgement", org_id=org_id, rule_id=rule_id, entity_type=entity_type, entity_id=entity_id,
            created_by=created_by, comment=comment, request_id=request_id))
        self._audit(tx, org_id, created_by, "alert.acknowledge", "acknowledgement", row.id, row.to_dict())
        return row

    def end_acknowledgements(self, tx: Transaction, acknowledgement_ids: Sequence[int], at: datetime,
                             run_id: str) -> None:
        """Ends, in `tx`, those of the acknowledgements still open, as of the run's T (aware)."""
        if acknowledgement_ids:
            tx.execute("end_acknowledgements", ids=list(acknowledgement_ids), at=_naive(at), run_id=run_id)

    @staticmethod
    def _audit(tx: Transaction, org_id: int, user_id: int, action: str, resource_type: str, resource_id: int,
               details: dict[str, Any]) -> None:
        tx.execute("record_audit", org_id=org_id, user_id=user_id, action=action, resource_type=resource_type,
                   resource_id=str(resource_id), details=json.dumps(details))
