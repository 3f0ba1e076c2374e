"""The runs of rules in `rule_runs`: the claim of (rule, T), the take-over of a dead run, each transition.

Exactly one non-dry run exists per (rule, T, trigger), where the triggers schedule, manual and backfill share the
first run of (rule, T) and `recheck` is the one recheck of it: the claim is an INSERT that the unique index
`rule_runs_one_per_fire_time` lets through once. A run holds a lease, renewed at each transition; a run whose
lease expired may be taken over, by one claimant only, and goes on from its recorded state. A waiting run's lease
ends when it is due to be checked again; a later fire time of the same rule, claimed, supersedes it.

A recheck has an evaluation time of its own (`evaluated_at`, the moment of its claim), which its ClickHouse rows
carry, while its window is that of T. No other run of the rule evaluates at that second: never a whole minute,
where fire times fall, nor the evaluation time of another run of the rule.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from engine.rule_ids import canonical_rule_id
from engine.run_states import RunState, check_transition
from engine.timestamps import utc_iso
from storage.postgres import Postgres, Transaction


RECHECK = "recheck"
# A recheck claimed within this many seconds of other runs of its rule takes the first second left free.
_RECHECK_SECONDS_TRIED = 120


class UnknownUser(LookupError):
    """The run names a triggering user who does not exist; nothing was written."""


class NothingToRecheck(LookupError):
    """A recheck was asked for a (rule, T) that has no succeeded run; nothing was written."""


class RunMovedOn(Exception):
    """The run left the state its holder last recorded (a later fire time superseded it); nothing was written."""


# What a transition may set besides its state, the lifecycle counts and the lease.
_TRANSITION_CHANGES = ("path", "entities", "matched", "alerts", "silenced", "acknowledged", "notified_users", "storm",
                       "error", "restated", "stale", "waiting_for")


def _moved(run: RunRecord, row: Mapping[str, Any] | None) -> RunRecord:
    """The run as the transition's row records it; RunMovedOn when there is no row."""
    if row is None:
        raise RunMovedOn(f"run {run.id} is no longer {run.state.value}")
    return RunRecord.from_row(row)


@dataclass(frozen=True)
class RunRecord:
    """One `rule_runs` row: the run's state, its counters and how it ended."""

    id: str
    rule_id: str
    org_id: int
    trigger: str
    scheduled_for: datetime  # naive, UTC
    triggered_by: int | None
    dry_run: bool
    state: RunState
    status: str
    attempts: int
    entities: int
    matched: int
    alerts: int
    silenced: int
    acknowledged: int
    notified_users: tuple[int, ...]
    storm: bool
    path: str | None
    error: str | None
    duration_ms: int | None
    evaluated_at: datetime | None = None  # naive, UTC; a recheck's own evaluation time
    restated: int = 0
    stale: bool = False
    waiting_for: str | None = None
    waiting_since: datetime | None = None  # naive, UTC
    lifecycle: dict[str, int] | None = None

    @property
    def fire_time(self) -> datetime:
        """T, aware and in UTC: the instant the run's window is resolved at."""
        return self.scheduled_for.replace(tzinfo=UTC)

    @property
    def eval_time(self) -> datetime:
        """The instant (aware, UTC) the run's rule_evaluations and alert_events rows carry: T, or a recheck's own."""
        return (self.evaluated_at or self.scheduled_for).replace(tzinfo=UTC)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> RunRecord:
        """The record of a row read by any `SELECT *` or `RETURNING *` of rule_runs."""
        return cls(
            id=str(row["id"]), rule_id=str(row["rule_id"]), org_id=row["org_id"], trigger=row["trigger"],
            scheduled_for=row["scheduled_for"], triggered_by=row["triggered_by"], dry_run=row["dry_run"],
            state=RunState(row["state"]),
            status=row["status"], attempts=row["attempts"], entities=row["entities"], matched=row["matched"],
            alerts=row["alerts"], silenced=row["silenced"], acknowledged=row["acknowledged"],
            notified_users=tuple(row["notified_users"] or ()), storm=row["storm"], path=row["path"],
            error=row["error"], duration_ms=row["duration_ms"], evaluated_at=row["evaluated_at"],
            restated=row["restated"], stale=row["stale"], waiting_for=row["waiting_for"],
            waiting_since=row["waiting_since"], lifecycle=row["lifecycle"],
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
            "evaluated_at": utc_iso(self.eval_time),
            "entities": self.entities,
            "matched": self.matched,
            "alerts": self.alerts,
            "silenced": self.silenced,
            "acknowledged": self.acknowledged,
            "restated": self.restated,
            "notified_users": sorted(self.notified_users),
            "storm": self.storm,
            "duration_ms": self.duration_ms,
            "error": self.error,
            "path": self.path,
            "stale": self.stale,
            "waiting_for": self.waiting_for,
            "lifecycle": self.lifecycle,
        }


@dataclass(frozen=True)
class Move:
    """One transition of a run to record: `run` as last recorded, its `target` state, the entry's `detail` and the
    keyword arguments of RunStore.transition that it sets (`changes`)."""

    run: RunRecord
    target: RunState
    detail: str
    changes: Mapping[str, Any]


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

        A manual run by a user writes `audit_logs` in the claim's transaction, and a new non-dry run ends the
        rule's runs still waiting for earlier fire times (skipped, "superseded by the run for T"). Raises
        UnknownUser, writing nothing, when `triggered_by` names no user. A recheck (trigger `recheck`) is claimed
        by `claim_recheck`'s rules.
        """
        if claim.trigger == RECHECK:
            return self._claim_recheck(claim)
        return self.claim_all([claim])[0]

    def claim_all(self, claims: Sequence[RunClaim]) -> list[RunRecord | None]:
        """What `claim` answers for each of `claims` (at least one), in their order, claimed in one transaction
        whose new claims take one statement whatever their number. The claims share T, trigger (not a recheck),
        dry_run and triggered_by; a rule named twice (in any spelling of its id) is claimed once, its later answers
        None. Rows are locked in rule order (new claims, then take-overs), so that two such transactions never wait
        on each other in a cycle."""
        first = claims[0]
        shared = (first.scheduled_for, first.trigger, first.dry_run, first.triggered_by)
        if first.trigger == RECHECK or any((claim.scheduled_for, claim.trigger, claim.dry_run, claim.triggered_by)
                                           != shared for claim in claims):
            raise ValueError("claims claimed together share T, trigger (not a recheck), dry_run and triggered_by")
        scheduled_for = first.scheduled_for.replace(tzinfo=None)
        rule_ids = [canonical_rule_id(claim.rule_id) for claim in claims]
        org_of = {rule_id: claim.org_id for rule_id, claim in reversed(list(zip(rule_ids, claims)))}
        with self._postgres.transaction() as tx:
            if first.triggered_by is not None and tx.one("user_exists", user_id=first.triggered_by) is None:
                raise UnknownUser(f"no user with id {first.triggered_by}")
            rows = tx.all("claim_runs", rule_ids=list(org_of), org_ids=list(org_of.values()), trigger=first.trigger,
                          scheduled_for=scheduled_for, triggered_by=first.triggered_by, dry_run=first.dry_run,
                          lease_seconds=self._lease_seconds,
                          detail=f"{first.trigger} run" + (" (dry run)" if first.dry_run else ""))
            claimed = {str(row["rule_id"]): RunRecord.from_row(row) for row in rows}
            if claimed and not first.dry_run:
                tx.execute("supersede_waiting_runs", rule_ids=list(claimed), scheduled_for=scheduled_for,
                           reason=f"superseded by the run for {utc_iso(scheduled_for)}")
            if first.trigger == "manual" and first.triggered_by is not None:
                for record in claimed.values():
                    tx.execute("record_audit", org_id=record.org_id, user_id=first.triggered_by, action="rule.run",
                               resource_type="rule", resource_id=record.rule_id,
                               details=json.dumps({"run_id": record.id, "dry_run": first.dry_run}))
            for rule_id in sorted(set(org_of) - set(claimed)):
                claimed[rule_id] = self._taken_over(tx, rule_id, scheduled_for, recheck=False)
        answers: list[RunRecord | None] = []
        answered: set[str] = set()
        for rule_id in rule_ids:
            answers.append(None if rule_id in answered else claimed[rule_id])
            answered.add(rule_id)
        return answers

    def _claim_recheck(self, claim: RunClaim) -> RunRecord | None:
        """The recheck of (rule, T), new or taken over, or None when another claimant owns it.

        The first run of (rule, T) must have succeeded (NothingToRecheck otherwise, nothing written). The new
        recheck evaluates at the first second from now that is not a whole minute and that no other run of the
        rule evaluates at; its claim ends the first run's wait for it (`recheck_due_at`).
        """
        scheduled_for = claim.scheduled_for.replace(tzinfo=None)
        now = datetime.now(UTC).replace(microsecond=0, tzinfo=None)
        with self._postgres.transaction() as tx:
            first = tx.one("run_for_fire_time", rule_id=claim.rule_id, scheduled_for=scheduled_for, recheck=False)
            if first is None or first["status"] != "succeeded":
                state = "has no run" if first is None else f"has a {first['status']} run"
                raise NothingToRecheck(f"rule {claim.rule_id} {state} as of {utc_iso(scheduled_for)}: "
                                       "there is nothing to recheck")
            for offset in range(_RECHECK_SECONDS_TRIED):
                evaluated_at = now + timedelta(seconds=offset)
                if evaluated_at.second == 0:
                    continue
                row = tx.one("claim_recheck", rule_id=claim.rule_id, org_id=claim.org_id,
                             scheduled_for=scheduled_for, evaluated_at=evaluated_at,
                             lease_seconds=self._lease_seconds, detail="recheck run")
                if row is not None:
                    tx.execute("recheck_claimed", rule_id=claim.rule_id, scheduled_for=scheduled_for)
                    return RunRecord.from_row(row)
                if tx.one("run_for_fire_time", rule_id=claim.rule_id, scheduled_for=scheduled_for,
                          recheck=True) is not None:
                    return self._taken_over(tx, claim.rule_id, scheduled_for, recheck=True)
        raise RuntimeError(f"rule {claim.rule_id} has runs evaluated at every second of the next "
                           f"{_RECHECK_SECONDS_TRIED} s; its recheck is left for later")

    def _taken_over(self, tx: Transaction, rule_id: str, scheduled_for: datetime, *,
                    recheck: bool) -> RunRecord | None:
        """The existing run of (rule, T) (its recheck when `recheck`) taken over in `tx` if its lease expired;
        None when it is finished or held under a live lease."""
        existing = tx.one("run_for_fire_time", rule_id=rule_id, scheduled_for=scheduled_for, recheck=recheck)
        if existing is None or existing["status"] not in ("running", "waiting"):
            return None
        row = tx.one("take_over_run", run_id=existing["id"], lease_seconds=self._lease_seconds)
        return RunRecord.from_row(row) if row else None

    def for_fire_time(self, rule_id: str, scheduled_for: datetime, *, recheck: bool = False) -> RunRecord | None:
        """The non-dry run of (rule, T) (its recheck, with `recheck`), T aware and in UTC; None if there is none."""
        row = self._postgres.one("run_for_fire_time", rule_id=rule_id, scheduled_for=scheduled_for.replace(tzinfo=None),
                                 recheck=recheck)
        return RunRecord.from_row(row) if row else None

    def schedule_recheck(self, tx: Transaction, run: RunRecord, due_at: datetime) -> None:
        """Records in `tx` that the run's recheck is due at `due_at` (aware, UTC), for beat to send
        (worker/rechecks.py)."""
        tx.execute("schedule_recheck", run_id=run.id, due_at=due_at.astimezone(UTC).replace(tzinfo=None))

    def transition(self, run: RunRecord, target: RunState, detail: str, *, path: str | None = None,
                   entities: int | None = None, matched: int | None = None, alerts: int | None = None,
                   silenced: int | None = None, acknowledged: int | None = None,
                   notified_users: list[int] | None = None, storm: bool | None = None, error: str | None = None,
                   restated: int | None = None, stale: bool | None = None, waiting_for: str | None = None,
                   lifecycle: dict[str, int] | None = None, lease_seconds: int | None = None,
                   tx: Transaction | None = None) -> RunRecord:
        """Records `run` moving to `target` (in `tx` if given): the state, a transition entry with `detail`, the
        counters and freshness given (the others keep their value), the lease renewed while running or waiting
        (for `lease_seconds` if given: a waiting run's lease ends at its next check), the duration once final.

        Raises IllegalTransition, writing nothing, when engine.run_states does not allow the move, and RunMovedOn
        when the stored run is no longer in `run.state` (superseded meanwhile).
        """
        params = self._transition_params(
            run, target, detail, path=path, entities=entities, matched=matched, alerts=alerts, silenced=silenced,
            acknowledged=acknowledged, notified_users=notified_users, storm=storm, error=error, restated=restated,
            stale=stale, waiting_for=waiting_for, lifecycle=lifecycle, lease_seconds=lease_seconds)
        return _moved(run, (tx or self._postgres).one("record_transition", **params))

    def transitions(self, tx: Transaction, moves: Sequence[Move]) -> list[RunRecord]:
        """`transition` of each of `moves` in `tx`, all sent in one round trip; the runs as recorded, in their
        order. Raises as `transition` does (for the first move refused), and then `tx` must be rolled back."""
        params = [self._transition_params(move.run, move.target, move.detail, **move.changes) for move in moves]
        return [_moved(move.run, row) for move, row in zip(moves, tx.first_rows("record_transition", params))]

    def _transition_params(self, run: RunRecord, target: RunState, detail: str, *,
                           lifecycle: dict[str, int] | None = None, lease_seconds: int | None = None,
                           **changes: Any) -> dict[str, Any]:
        check_transition(run.state, target)
        if unknown := set(changes) - set(_TRANSITION_CHANGES):
            raise TypeError(f"a transition sets no {', '.join(sorted(unknown))}")
        return {"run_id": run.id, "from_state": run.state.value, "state": target.value, "status": target.status,
                "detail": detail, **dict.fromkeys(_TRANSITION_CHANGES), **changes,
                "lifecycle": None if lifecycle is None else json.dumps(lifecycle),
                "lease_seconds": self._lease_seconds if lease_seconds is None else lease_seconds}

    def by_id(self, run_id: str) -> RunRecord:
        """The run `run_id`, as stored now."""
        return RunRecord.from_row(self._postgres.one("run_by_id", run_id=run_id))

    def renew_leases(self, run_ids: list[str]) -> None:
        """Renews the lease of each of the runs that is still running, in one statement."""
        if run_ids:
            self._postgres.execute("renew_leases", run_ids=run_ids, lease_seconds=self._lease_seconds)
