"""The runs of rules in `rule_runs`: the claim of (rule, T), the take-over of a dead run, each transition.

Exactly one non-dry run exists per (rule, T): the claim is an INSERT that the unique index
`rule_runs_one_per_fire_time` lets through once. A run holds a lease, renewed at each transition; a run whose
lease expired may be taken over, by one claimant only, and goes on from its recorded state.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from engine.run_states import RunState, check_transition
from engine.timestamps import utc_iso
from storage.postgres import Postgres, Transaction


class UnknownUser(LookupError):
    """The run names a triggering user who does not exist; nothing was written."""


@dataclass(frozen=True)
class RunRecord:
    """One `rule_runs` row: the run's state, its counters and how it ended."""

    id: str
    rule_id: str
    org_id: int
    trigger: str
    scheduled_for: datetime  # naive, UTC
    dry_run: bool
    state: RunState
    status: str
    attempts: int
    entities: int
    matched: int
    alerts: int
    notified_users: tuple[int, ...]
    path: str | None
    error: str | None
    duration_ms: int | None
    lifecycle: dict[str, int] | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> RunRecord:
        """The record of a row read by any `SELECT *` or `RETURNING *` of rule_runs."""
        return cls(
            id=str(row["id"]), rule_id=str(row["rule_id"]), org_id=row["org_id"], trigger=row["trigger"],
            scheduled_for=row["scheduled_for"], dry_run=row["dry_run"], state=RunState(row["state"]),
            status=row["status"], attempts=row["attempts"], entities=row["entities"], matched=row["matched"],
            alerts=row["alerts"], notified_users=tuple(row["notified_users"] or ()), path=row["path"],
            error=row["error"], duration_ms=row["duration_ms"], lifecycle=row.get("lifecycle"),
        )

    def summary(self) -> dict[str, Any]:
        """The run summary that `rules.evaluate` returns and `rulesctl run --json` prints (see the README)."""
        return {
            "run_id": self.id,
            "rule_id": self.rule_id,
            "org_id": self.org_id,
            "status": self.status,
            "trigger": self.trigger,
            "dry_run": self.dry_run,
            "scheduled_for": utc_iso(self.scheduled_for),
            "entities": self.entities,
            "matched": self.matched,
            "alerts": self.alerts,
            "notified_users": sorted(self.notified_users),
            "duration_ms": self.duration_ms,
            "error": self.error,
            "path": self.path,
            "lifecycle": self.lifecycle,
        }


@dataclass(frozen=True)
class RunClaim:
    """What a claim writes: the rule and its organization, the fire time T (aware, UTC) and who asked."""

    rule_id: str
    org_id: int
    scheduled_for: datetime
    trigger: str
    dry_run: bool
    triggered_by: int | None


class RunStore:
    """Claims, takes over and advances runs in `rule_runs`; every run it writes holds a lease of `lease_seconds`."""

    def __init__(self, postgres: Postgres, *, lease_seconds: int) -> None:
        self._postgres = postgres
        self._lease_seconds = lease_seconds

    def claim(self, claim: RunClaim) -> RunRecord | None:
        """A new run for (rule, T), or the run of (rule, T) taken over because its lease expired; None when
        another run owns (rule, T): finished, or running under a live lease.

        A manual run by a user writes `audit_logs` in the claim's transaction. Raises UnknownUser, writing
        nothing, when `triggered_by` names no user.
        """
        scheduled_for = claim.scheduled_for.replace(tzinfo=None)
        with self._postgres.transaction() as tx:
            if claim.triggered_by is not None and tx.one("user_exists", user_id=claim.triggered_by) is None:
                raise UnknownUser(f"no user with id {claim.triggered_by}")
            row = tx.one("claim_run", rule_id=claim.rule_id, org_id=claim.org_id, trigger=claim.trigger,
                         scheduled_for=scheduled_for, triggered_by=claim.triggered_by, dry_run=claim.dry_run,
                         lease_seconds=self._lease_seconds,
                         detail=f"{claim.trigger} run" + (" (dry run)" if claim.dry_run else ""))
            if row is None:
                existing = tx.one("run_for_fire_time", rule_id=claim.rule_id, scheduled_for=scheduled_for)
                if existing is None or existing["status"] != "running":
                    return None
                row = tx.one("take_over_run", run_id=existing["id"], lease_seconds=self._lease_seconds)
                return RunRecord.from_row(row) if row else None
            if claim.trigger == "manual" and claim.triggered_by is not None:
                tx.execute("record_audit", org_id=claim.org_id, user_id=claim.triggered_by, action="rule.run",
                           resource_type="rule", resource_id=claim.rule_id,
                           details=json.dumps({"run_id": str(row["id"]), "dry_run": claim.dry_run}))
        return RunRecord.from_row(row)

    def for_fire_time(self, rule_id: str, scheduled_for: datetime) -> RunRecord | None:
        """The non-dry run of (rule, T), T aware and in UTC; None if there is none."""
        row = self._postgres.one("run_for_fire_time", rule_id=rule_id, scheduled_for=scheduled_for.replace(tzinfo=None))
        return RunRecord.from_row(row) if row else None

    def transition(self, run: RunRecord, target: RunState, detail: str, *, path: str | None = None,
                   entities: int | None = None, matched: int | None = None, alerts: int | None = None,
                   notified_users: list[int] | None = None, error: str | None = None,
                   lifecycle: dict[str, int] | None = None, tx: Transaction | None = None) -> RunRecord:
        """Records `run` moving to `target` (in `tx` if given): the state, a transition entry with `detail`, the
        counters given (the others keep their value), the lease renewed while running, the duration once final.

        Raises IllegalTransition, writing nothing, when engine.run_states does not allow the move.
        """
        check_transition(run.state, target)
        row = (tx or self._postgres).one(
            "record_transition", run_id=run.id, state=target.value, status=target.status, detail=detail, path=path,
            entities=entities, matched=matched, alerts=alerts, notified_users=notified_users, error=error,
            lifecycle=None if lifecycle is None else json.dumps(lifecycle), lease_seconds=self._lease_seconds,
        )
        return RunRecord.from_row(row)

    def renew_leases(self, run_ids: list[str]) -> None:
        """Renews the lease of each of the runs that is still running, in one statement."""
        if run_ids:
            self._postgres.execute("renew_leases", run_ids=run_ids, lease_seconds=self._lease_seconds)
