"""One run of one rule as of T: the state machine of engine.run_states, driven against PostgreSQL and ClickHouse.

Exactly one non-dry run exists per (rule, T): the claim is an INSERT that the unique index
`rule_runs_one_per_fire_time` lets through once. A second request for the same (rule, T) gets the first run's
summary and writes nothing. A run whose holder died (its lease expired) is taken over and resumed from its last
recorded state; before rewriting a stage it deletes whatever that stage may have half-written, so the rows for
(rule, T) are never doubled.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from engine.compiler import compile_logic, logic_variables, top_level_conditions
from engine.errors import NotCompilable, RuleError
from engine.fields import CAMPAIGN_METRICS
from engine.interpreter import evaluate_row, truthy
from engine.model import Rule, parse_rule
from engine.query import (CONDITIONS_KEY, ENTITY_ID, ENTITY_TYPE, Statement, entity_rows, evaluation,
                          evaluation_insert)
from engine.timestamps import utc_iso, utc_sql
from engine.run_states import RunState, check_transition, reached
from engine.windows import WindowBounds, resolve_window
from storage.clickhouse import ClickHouse
from storage.errors import DatabaseUnavailable, StorageError
from storage.postgres import Postgres, Transaction
from worker.audience import Entity, audience
from worker.deliveries import record_deliveries
from worker.messages import RunNotice

log = logging.getLogger(__name__)

DEFAULT_LEASE_SECONDS = 180  # the default time limit (120 s) plus a margin past the hard limit
# A run whose process was lost this many times (killed, or stopped at the hard time limit) is failed, not retried.
MAX_RUN_ATTEMPTS = 3
CLICKHOUSE_FIRST_DATE = date(1970, 1, 1)
# rule_evaluations has a TTL of 90 days: ClickHouse drops older rows as they are written.
EVALUATION_RETENTION = timedelta(days=90)
_ALERT_COLUMNS = ("org_id", "alert_time", "rule_id", "rule_name", "severity", "entity_type", "entity_id",
                  "entity_name", "condition_details", "notified_users")
_INSERT_BATCH_ROWS = 100_000
_EVALUATION_COLUMNS = ("org_id", "eval_time", "rule_id", "entity_id", "matched", "condition_results",
                       "execution_time_ms")


class RuleNotFound(Exception):
    """No rule has the requested id."""


class RuleNotScheduled(RuleNotFound):
    """The rule is disabled: a scheduled run of it, sent before it was disabled, does nothing."""


class BadRunRequest(Exception):
    """The request itself is wrong (unknown user, rule without organization); nothing was written."""


@dataclass(frozen=True)
class RunRequest:
    """What to run: a rule, as of `scheduled_for` (None: now), and who or what asked."""

    rule_id: str
    scheduled_for: datetime | None = None
    dry_run: bool = False
    trigger: str = "manual"
    triggered_by: int | None = None


@dataclass
class _Run:
    """The run in hand: its `rule_runs` row and what the stages learned."""

    row: dict[str, Any]
    rule: Rule | None = None
    bounds: WindowBounds | None = None
    path: str | None = None
    matched: list[tuple[str, str]] | None = None
    started: float = field(default_factory=time.monotonic)

    @property
    def state(self) -> RunState:
        return RunState(self.row["state"])

    @property
    def id(self) -> str:
        return str(self.row["id"])


def evaluation_time(scheduled_for: datetime | None, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> datetime:
    """T: `scheduled_for` (naive means UTC) or now, in UTC, to the second."""
    moment = scheduled_for or now()
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).replace(microsecond=0)


def summary(row: Mapping[str, Any]) -> dict[str, Any]:
    """The run summary of the contract (§2) from a `rule_runs` row."""
    return {
        "run_id": str(row["id"]),
        "rule_id": str(row["rule_id"]),
        "org_id": row["org_id"],
        "status": row["status"],
        "trigger": row["trigger"],
        "dry_run": row["dry_run"],
        "scheduled_for": utc_iso(row["scheduled_for"]),
        "entities": row["entities"],
        "matched": row["matched"],
        "alerts": row["alerts"],
        "notified_users": sorted(row["notified_users"] or []),
        "duration_ms": row["duration_ms"],
        "error": row["error"],
        "path": row["path"],
    }


class RuleRunner:
    """Runs rules; one instance is shared by the runs of a process."""

    def __init__(self, postgres: Postgres, clickhouse: ClickHouse, *, allowed_hosts: frozenset[str] = frozenset(),
                 send_deliveries: Callable[[list[int]], None] | None = None,
                 lease_seconds: int = DEFAULT_LEASE_SECONDS, time_limit_seconds: int | None = None,
                 interpreter_only: bool = False) -> None:
        """`send_deliveries` hands a run's pending delivery ids to their sender (notifications.deliver); without
        it they stay pending in PostgreSQL until beat's sweeper sends them. With `time_limit_seconds`, the run's
        evaluation statement may use only what is left of that limit, so ClickHouse stops it when the run stops."""
        self._postgres = postgres
        self._clickhouse = clickhouse
        self._allowed_hosts = allowed_hosts
        self._send_deliveries = send_deliveries
        self._lease_seconds = lease_seconds
        self._time_limit_seconds = time_limit_seconds
        self._interpreter_only = interpreter_only

    def run(self, request: RunRequest) -> dict[str, Any]:
        """Runs `request` to a final state and returns its summary.

        Raises RuleNotFound (RuleNotScheduled for a scheduled run of a disabled rule) or BadRunRequest before
        writing anything when the request is wrong or moot. A repeated
        (rule, T) returns the existing run's summary without writing; a rule that fails gives a `failed` summary.
        Raises DatabaseUnavailable when a server is down mid-run: the run stays `running`, to be taken over.
        """
        at = evaluation_time(request.scheduled_for)
        too_old = not request.dry_run and at < datetime.now(UTC) - EVALUATION_RETENTION + timedelta(hours=1)
        rule_row = self._postgres.one("rule_with_organization", rule_id=request.rule_id)
        # An invalid rule fails at any T without writing evaluations, so even an old T records its failure.
        if too_old and (rule_row is None or self._is_valid(rule_row)):
            raise BadRunRequest(f"{utc_iso(at)} is older than the 90 days rule_evaluations keeps; "
                                "use a dry run to look that far back")
        if rule_row is None:
            raise RuleNotFound(f"no rule with id {request.rule_id}")
        if request.trigger == "schedule" and not rule_row["enabled"]:
            raise RuleNotScheduled(f"rule {request.rule_id} is disabled")
        if not rule_row["organization_exists"]:
            raise BadRunRequest(f"rule {request.rule_id} belongs to no existing organization")
        run = self._claim(request, rule_row, at)
        if run is None:
            return summary(self._postgres.one("run_for_fire_time", rule_id=request.rule_id, scheduled_for=at.replace(tzinfo=None)))
        if run.row["attempts"] > MAX_RUN_ATTEMPTS:
            reason = (f"given up after {MAX_RUN_ATTEMPTS} attempts: each time, the process running it was lost or "
                      "stopped at the hard time limit")
            self._transition(run, RunState.FAILED, reason, error=reason)
            return summary(run.row)
        try:
            self._advance(run, rule_row, at)
        except DatabaseUnavailable:
            # The run stays `running` as it is: once its lease expires, the retried task (or beat's sweeper) takes
            # it over and finishes it, after deleting whatever its interrupted stage wrote.
            raise
        except SoftTimeLimitExceeded:
            # ClickHouse stops the statement in flight itself (its max_execution_time is the time left).
            reason = (f"the run passed its time limit of {self._time_limit_seconds or '?'} s "
                      "(RUN_TIME_LIMIT_SECONDS) and was stopped")
            self._transition(run, RunState.FAILED, reason, error=reason)
        except (RuleError, StorageError) as error:
            self._fail(run, rule_row, at, str(error))
        except Exception as error:  # a bug: the run still ends failed, saying what stopped it
            self._fail(run, rule_row, at, f"the run stopped: {type(error).__name__}: {error}".rstrip(": "))
        return summary(run.row)

    def _is_valid(self, rule_row: Mapping[str, Any]) -> bool:
        try:
            parse_rule(rule_row["conditions"], rule_row["actions"], timezone=rule_row["timezone"],
                       allowed_hosts=self._allowed_hosts)
        except RuleError:
            return False
        return True

    def _fail(self, run: _Run, rule_row: Mapping[str, Any], at: datetime, reason: str) -> None:
        """Records `run` as failed; rows its evaluation stage wrote before the failure are deleted (best effort),
        so that a failed run leaves no evaluations its summary does not count."""
        stage = run.state
        self._transition(run, RunState.FAILED, reason, error=reason)
        if run.row["dry_run"] or stage not in (RunState.COMPILED, RunState.EVALUATED):
            return
        keys = self._scope(rule_row, at)
        try:
            self._clickhouse.command_named("delete_evaluations", **keys)
            self._delete_alerts(keys)
        except StorageError as error:
            log.warning("run %s failed and its rows could not be deleted: %s", run.id, error)

    def _claim(self, request: RunRequest, rule_row: dict[str, Any], at: datetime) -> _Run | None:
        """The run to work on: a new claim, or a dead run taken over; None when another run owns (rule, T)."""
        with self._postgres.transaction() as tx:
            if request.triggered_by is not None and tx.one("user_exists", user_id=request.triggered_by) is None:
                raise BadRunRequest(f"no user with id {request.triggered_by}")
            row = tx.one("claim_run", rule_id=request.rule_id, org_id=rule_row["org_id"], trigger=request.trigger,
                         scheduled_for=at.replace(tzinfo=None), triggered_by=request.triggered_by,
                         dry_run=request.dry_run, lease_seconds=self._lease_seconds,
                         detail=f"{request.trigger} run" + (" (dry run)" if request.dry_run else ""))
            if row is None:
                existing = tx.one("run_for_fire_time", rule_id=request.rule_id, scheduled_for=at.replace(tzinfo=None))
                if existing is None or existing["status"] != "running":
                    return None
                row = tx.one("take_over_run", run_id=existing["id"], lease_seconds=self._lease_seconds)
                return _Run(row) if row else None
            if request.trigger == "manual" and request.triggered_by is not None:
                tx.execute("record_audit", org_id=rule_row["org_id"], user_id=request.triggered_by, action="rule.run",
                           resource_type="rule", resource_id=request.rule_id,
                           details=json.dumps({"run_id": str(row["id"]), "dry_run": request.dry_run}))
        return _Run(row)

    def _advance(self, run: _Run, rule_row: dict[str, Any], at: datetime) -> None:
        """Moves `run` from its recorded state to a final one, doing each stage not yet done."""
        modules = rule_row["enabled_modules"] or []
        if run.state is RunState.CLAIMED and rule_row["module"] not in modules:
            reason = f"module {rule_row['module']!r} is not enabled for organization {rule_row['org_id']}"
            self._transition(run, RunState.SKIPPED, reason, error=reason)
            return
        run.rule = parse_rule(rule_row["conditions"], rule_row["actions"], timezone=rule_row["timezone"],
                              allowed_hosts=self._allowed_hosts)
        conditions = run.rule.conditions
        run.bounds = resolve_window(at, rule_row["timezone"], conditions.window, conditions.compare_to)
        try:
            if self._interpreter_only:
                raise NotCompilable("this runner evaluates every rule on the interpreter")
            compiled = compile_logic(conditions.logic, run.rule.fields)
            run.path, reason = "sql", "compiled to SQL"
        except NotCompilable as refusal:
            compiled, run.path, reason = None, "interpreter", f"runs on the interpreter: {refusal}"
        if run.state is RunState.CLAIMED:
            self._transition(run, RunState.COMPILED, reason, path=run.path)
        # The SQL path aggregates only the fields its logic reads; the interpreter may read any of them.
        entities = entity_rows(conditions.source, rule_row["org_id"], run.bounds, conditions.scope,
                               conditions.compare_to is not None, compiled.variables if compiled else None)
        if run.row["dry_run"]:
            entity_count, matched = self._dry_evaluation(run, entities, compiled)
            self._transition(run, RunState.EVALUATED, "evaluated without writing",
                             entities=entity_count, matched=len(matched))
            self._transition(run, RunState.SUCCEEDED, "dry run: nothing written")
            return
        if not reached(run.state, RunState.EVALUATED):
            entity_count = self._write_evaluations(run, rule_row, entities, compiled, at)
            self._transition(run, RunState.EVALUATED, "rule_evaluations written", entities=entity_count,
                             matched=len(run.matched or []))
        if not reached(run.state, RunState.ALERTED):
            self._write_alerts(run, rule_row, at)
        self._hand_over_deliveries(run)
        self._transition(run, RunState.SUCCEEDED, "done")

    def _scope(self, rule_row: Mapping[str, Any], at: datetime) -> dict[str, Any]:
        return {"org_id": rule_row["org_id"], "rule_id": rule_row["rule_id"], "eval_time": utc_sql(at)}

    def _delete_alerts(self, keys: Mapping[str, Any]) -> None:
        self._clickhouse.command_named("delete_alerts", org_id=keys["org_id"], rule_id=keys["rule_id"],
                                       alert_time=keys["eval_time"])

    def _write_evaluations(self, run: _Run, rule_row: Mapping[str, Any], entities: Statement, compiled,
                           at: datetime) -> int:
        """Writes every entity's `rule_evaluations` row once; returns the entity count, keeps the matched rows."""
        keys = self._scope(rule_row, at)
        if run.row["attempts"] > 1:
            self._clickhouse.command_named("delete_evaluations", **keys)
        started = datetime.now(UTC) - timedelta(seconds=time.monotonic() - run.started)
        if compiled is not None:
            statement = evaluation_insert(entities, compiled, run.rule.conditions.source, org_id=rule_row["org_id"], rule_id=rule_row["rule_id"],
                                          eval_time=at, started_at=started)
            self._clickhouse.command(statement.sql, statement.parameters, what="the rule's evaluation",
                                     settings=self._statement_budget(run))
        else:
            # Evaluated while the rows stream in; written after, since a chdb client can't insert mid-stream.
            evaluated = [result for batch in self._interpreted(run, entities) for result in batch]
            elapsed_ms = int((time.monotonic() - run.started) * 1000)
            for start in range(0, len(evaluated), _INSERT_BATCH_ROWS):
                self._clickhouse.insert("rule_evaluations", [
                    [rule_row["org_id"], at.replace(tzinfo=None), rule_row["rule_id"], entity_id, int(matched), results,
                     elapsed_ms] for entity_id, matched, results in evaluated[start:start + _INSERT_BATCH_ROWS]
                ], _EVALUATION_COLUMNS)
        return self._read_outcome(run, keys)

    def _statement_budget(self, run: _Run) -> dict[str, int] | None:
        """ClickHouse's max_execution_time for a statement starting now: what is left of the run's time limit."""
        if self._time_limit_seconds is None:
            return None
        left = self._time_limit_seconds - (time.monotonic() - run.started)
        return {"max_execution_time": max(1, int(left))}

    def _read_outcome(self, run: _Run, keys: Mapping[str, Any]) -> int:
        """Reads back the run's entity count and its matched rows (kept on `run`) from rule_evaluations."""
        outcome = self._clickhouse.rows("evaluation_outcome", **keys)[0]
        run.matched = [(entity_id, results) for entity_id, results in outcome["matched"]]
        return int(outcome["entities"])

    def _interpreted(self, run: _Run, entities: Statement) -> Iterator[list[tuple[str, bool, str]]]:
        """Evaluates every entity row in Python, block by block: (entity id, matched, condition_results JSON)."""
        assert run.rule is not None
        logic = run.rule.conditions.logic
        conditions = top_level_conditions(logic)
        variables = logic_variables(logic, run.rule.fields)
        with_type = run.rule.conditions.source != CAMPAIGN_METRICS
        for rows in self._clickhouse.row_batches(entities.sql, entities.parameters, what="fetching entity rows"):
            batch = []
            for row in rows:
                data = {name: row[name] for name in run.rule.fields}
                details = {name: data[name] for name in variables}
                if with_type:
                    details["entity_type"] = row[ENTITY_TYPE]
                details[CONDITIONS_KEY] = [truthy(evaluate_row(c, data)) for c in conditions]
                batch.append((row[ENTITY_ID], truthy(evaluate_row(logic, data)),
                              json.dumps(details, separators=(",", ":"))))
            yield batch

    def _dry_evaluation(self, run: _Run, entities: Statement, compiled) -> tuple[int, list[tuple[str, str]]]:
        """Evaluates without writing; returns the entity count and the matched rows."""
        if compiled is not None:
            statement = evaluation(entities, compiled, run.rule.conditions.source)
            rows = self._clickhouse.sql_rows(statement.sql, statement.parameters, what="the rule's evaluation")
            evaluated = [(r["entity_id"], bool(r["matched"]), r["condition_results"]) for r in rows]
        else:
            evaluated = [result for batch in self._interpreted(run, entities) for result in batch]
        return len(evaluated), [(entity_id, results) for entity_id, matched, results in evaluated if matched]

    def _write_alerts(self, run: _Run, rule_row: Mapping[str, Any], at: datetime) -> None:
        """Writes one `alert_events` row per matched entity out of cooldown, then, in one PostgreSQL transaction,
        the notifications and deliveries owed, the firing state (rules with notify_on_resolve) and `alerted`."""
        assert run.rule is not None and run.bounds is not None
        keys = self._scope(rule_row, at)
        if run.row["attempts"] > 1:
            self._delete_alerts(keys)
        if run.matched is None:
            self._read_outcome(run, keys)
        actions = run.rule.actions
        notifies = run.row["trigger"] != "backfill"
        matched = self._matched_entities(run, rule_row, run.matched or [])
        alerted = self._out_of_cooldown(run, rule_row, matched, at)
        # What goes to PostgreSQL (audience, notifications, deliveries, firing state) is NUL-free.
        stored = [entity.without_nul() for entity in alerted]
        resolved = self._resolved(run, rule_row, matched, at) if notifies and actions.notify_on_resolve else []
        recipients = (audience(self._postgres, rule_row["org_id"], actions.notify.roles, stored + resolved, at)
                      if notifies else {})
        users = [sorted(r.user_id for r in recipients.get(entity.key, [])) for entity in stored]
        run_columns = [rule_row["org_id"], at.replace(tzinfo=None), rule_row["rule_id"], rule_row["name"],
                       actions.severity]
        rows = [[*run_columns, entity.entity_type, entity.entity_id, entity.entity_name, entity.condition_details,
                 entity_users] for entity, entity_users in zip(alerted, users)]
        if rows:
            self._clickhouse.insert("alert_events", rows, _ALERT_COLUMNS)
        notified = sorted({user for entity_users in users for user in entity_users})
        with self._postgres.transaction() as tx:
            if notifies:
                for kind, entities in (("alert", stored), ("resolved", resolved)):
                    notice = RunNotice(kind, run.id, rule_row["org_id"], rule_row["rule_id"], rule_row["name"],
                                       actions.severity, at)
                    record_deliveries(tx, notice, entities, recipients, actions.notify)
                if actions.notify_on_resolve:
                    self._record_firing(tx, rule_row, stored, resolved, at)
            self._transition(run, RunState.ALERTED, "alert_events written", alerts=len(rows),
                             notified_users=notified, tx=tx)

    def _matched_entities(self, run: _Run, rule_row: Mapping[str, Any],
                          matched: list[tuple[str, str]]) -> list[Entity]:
        """The matched entities with their names and, for campaigns, the DSP and advertiser grants are matched on."""
        assert run.rule is not None and run.bounds is not None
        if run.rule.conditions.source != CAMPAIGN_METRICS:
            return [Entity(json.loads(results).get("entity_type", ""), entity_id, entity_id, results)
                    for entity_id, results in matched]
        identities = self._campaign_identities(run, rule_row["org_id"], [entity_id for entity_id, _ in matched])
        entities = []
        for entity_id, results in matched:
            identity = identities.get(entity_id, {})
            entities.append(Entity("campaign", entity_id, identity.get("entity_name", entity_id), results,
                                   identity.get("dsp_type", ""), identity.get("advertiser_id", "")))
        return entities

    def _campaign_identities(self, run: _Run, org_id: int, ids: list[str]) -> dict[str, dict[str, Any]]:
        """Name, DSP and advertiser of each campaign on its latest date with data in the window or the previous one.

        Most matched campaigns have data on the window's last day, so that day alone is read first; the whole
        range is read only for the campaigns it does not have.
        """
        assert run.bounds is not None
        if not ids:
            return {}
        last = run.bounds.last
        found = {row["entity_id"]: row for row in self._clickhouse.rows(
            "campaign_identities", org_id=org_id, entity_ids=ids, first=last, last=last)}
        missing = [entity_id for entity_id in ids if entity_id not in found]
        if missing:
            earliest = run.bounds.previous_first or run.bounds.first or CLICKHOUSE_FIRST_DATE
            found.update({row["entity_id"]: row for row in self._clickhouse.rows(
                "campaign_identities", org_id=org_id, entity_ids=missing, first=earliest, last=last)})
        return found

    def _out_of_cooldown(self, run: _Run, rule_row: Mapping[str, Any], matched: list[Entity],
                         at: datetime) -> list[Entity]:
        """The matched entities with no alert for this rule within the cooldown before T."""
        assert run.rule is not None
        cooldown = timedelta(minutes=run.rule.actions.cooldown_minutes)
        if not cooldown or not matched:
            return matched
        cooling = {
            (row["entity_type"], row["entity_id"])
            for row in self._clickhouse.rows("alerts_in_cooldown", org_id=rule_row["org_id"], rule_id=rule_row["rule_id"],
                                             since=utc_sql(at - cooldown), until=utc_sql(at),
                                             entity_ids=[entity.entity_id for entity in matched])
        }
        return [entity for entity in matched if entity.key not in cooling]

    def _resolved(self, run: _Run, rule_row: Mapping[str, Any], matched: list[Entity], at: datetime) -> list[Entity]:
        """The entities firing before T (alerted and matching since) that no longer match."""
        still = {entity.without_nul().key for entity in matched}
        return [Entity(row["entity_type"], row["entity_id"], row["entity_name"], row["condition_details"] or "",
                       row["dsp_type"], row["advertiser_id"])
                for row in self._postgres.all("firing_entities", rule_id=rule_row["rule_id"])
                if (row["entity_type"], row["entity_id"]) not in still and row["evaluated_at"] < at.replace(tzinfo=None)]

    def _record_firing(self, tx: Transaction, rule_row: Mapping[str, Any], alerted: list[Entity],
                       resolved: list[Entity], at: datetime) -> None:
        moment = at.replace(tzinfo=None)
        if alerted:
            tx.execute("mark_firing", rule_id=rule_row["rule_id"], org_id=rule_row["org_id"], at=moment,
                       entity_types=[e.entity_type for e in alerted], entity_ids=[e.entity_id for e in alerted],
                       names=[e.entity_name for e in alerted], dsp_types=[e.dsp_type for e in alerted],
                       advertiser_ids=[e.advertiser_id for e in alerted],
                       details=[e.condition_details for e in alerted])
        if resolved:
            tx.execute("mark_resolved", rule_id=rule_row["rule_id"], at=moment,
                       entity_types=[e.entity_type for e in resolved], entity_ids=[e.entity_id for e in resolved])

    def _hand_over_deliveries(self, run: _Run) -> None:
        """Hands the run's pending deliveries to their sender; if that fails, beat's sweeper sends them later."""
        if self._send_deliveries is None:
            return
        ids = [row["id"] for row in self._postgres.all("pending_deliveries_of_run", run_id=run.id)]
        if ids:
            self._send_deliveries(ids)

    def _transition(self, run: _Run, target: RunState, detail: str, *, path: str | None = None,
                    entities: int | None = None, matched: int | None = None, alerts: int | None = None,
                    notified_users: list[int] | None = None, error: str | None = None,
                    tx: Transaction | None = None) -> None:
        """Records `run` moving to `target` in `rule_runs` (state, transition entry, counters), in `tx` if given."""
        check_transition(run.state, target)
        run.row = (tx or self._postgres).one(
            "record_transition", run_id=run.id, state=target.value, status=target.status, detail=detail, path=path,
            entities=entities, matched=matched, alerts=alerts, notified_users=notified_users, error=error,
            lease_seconds=self._lease_seconds,
        )
