"""One run of one rule as of T: claim it, advance it through the states of engine.run_states, or fail it.

Exactly one non-dry run exists per (rule, T), and one recheck of it (trigger `recheck`, storage/runs.py). A second
request for the same (rule, T) gets the first run's summary and writes nothing. A recheck evaluates T's window again
at a time of its own and tells the entities whose verdict flipped (`_alert_restated`). A run whose holder died (its
lease expired) is taken over and resumed from its last recorded state; before rewriting a stage it deletes whatever
that stage may have half-written, so the rows for (rule, T) are never doubled.

A run whose window's data is incomplete (engine.freshness) waits: it is recorded `waiting`, keeping its claim,
and checked again later (its lease ends at that check), until the data is complete or its max_wait has passed;
then it goes on, marked stale, or is skipped, as its `on_stale` says.

The stages that read or write for the runs they are given (outcomes, alerts, success) take the runs of a batch as
readily as one run; worker/batch_runner.py runs batches through them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from engine.compiler import CompiledLogic, compile_logic, first_variable
from engine.errors import NotCompilable, RuleError
from engine.evaluation_document import parse_document, with_stale_mark
from engine.fields import CAMPAIGN_METRICS
from engine.freshness import (RUN_STALE, SKIP_STALE, WAIT, Completeness, WaitDecision, completeness, data_end,
                              wait_decision)
from engine.model import Rule, parse_rule
from engine.rule_ids import canonical_rule_id
from engine.query import Statement, entity_rows, evaluation, evaluation_insert, read_fields
from engine.run_states import RunState, reached
from engine.silences import Hush, Quieting
from engine.storms import Storm, storm_of
from engine.timestamps import utc_iso
from engine.windows import WindowBounds, resolve_window
from storage.alert_states import AlertStateStore
from storage.clickhouse import ClickHouse
from storage.errors import DatabaseUnavailable, StorageError
from storage.freshness import FreshnessSignals, organization_signals
from storage.postgres import Postgres, Transaction
from storage.results import AlertEvent, Evaluation, ResultStore, RunScope
from storage.rule_rows import RuleRow, rule_with_organization
from storage.runs import RECHECK, Move, NothingToRecheck, RunClaim, RunMovedOn, RunRecord, RunStore, UnknownUser
from storage.silences import SilenceStore
from worker.alert_state import AlertState, Lifecycle, SimulatedStates, decide, keys_of, lifecycle_policy, \
    out_of_cooldown, state_writes
from worker.audience import Entity, Recipient, audiences
from worker.deliveries import pending_delivery_ids, record_deliveries
from worker.errors import WorkerError
from worker.interpreter_path import evaluate_batches, evaluation_key, restate
from worker.matches import RunEntities, named_entities, unnamed_entities
from worker.messages import RunNotice

log = logging.getLogger(__name__)

DEFAULT_LEASE_SECONDS = 180  # the default time limit (120 s) plus a margin past the hard limit
# A run whose process was lost this many times (killed, or stopped at the hard time limit) is failed, not retried.
MAX_RUN_ATTEMPTS = 3
# rule_evaluations has a TTL of 90 days: ClickHouse drops older rows as they are written.
EVALUATION_RETENTION = timedelta(days=90)
# A waiting run is first checked again after this many seconds (WAIT_CHECK_SECONDS), then with backoff.
DEFAULT_WAIT_CHECK_SECONDS = 60
# How long each delete of a run stopped at its time limit may wait for ClickHouse's answer; the hard limit comes
# 30 s after the soft one (worker/app.py).
TIME_LIMIT_DELETE_SECONDS = 5
# Validating a rule's documents takes about 0.3 ms, a good part of a batch's own work per rule; a process keeps the
# rules it validated, by their documents, so that a rule is parsed again only when they change. 20,000 rules (the
# most load-bench measures) take about 64 MB; past that the kept rules are dropped and parsed anew.
PARSED_RULES_KEPT = 20_000


class RuleNotFound(WorkerError):
    """No rule has the requested id."""


class RuleNotScheduled(RuleNotFound):
    """The rule is disabled: a scheduled run of it, sent before it was disabled, does nothing."""


class BadRunRequest(WorkerError):
    """The request itself is wrong (unknown user, rule without organization); nothing was written."""


class RunWaiting(WorkerError):
    """The run is waiting for its data: `summary` is its summary, `check_in` the countdown of its next check."""

    def __init__(self, summary: dict[str, Any], check_in: int) -> None:
        super().__init__(f"run {summary['run_id']} waits for its data: {summary['waiting_for']}")
        self.summary = summary
        self.check_in = check_in


@dataclass(frozen=True)
class SharedEvaluation:
    """The evaluation an earlier run of the same rule did at `at`, with its window resolved to the same dates, for a
    later run to reuse instead of evaluating again: its entity count and matched evaluations (what a dry run
    uses) and, for a run that writes, that run's `rule_evaluations` rows, which must exist as it wrote them."""

    at: datetime
    entities: int
    matched: tuple[Evaluation, ...]
    unrecovered: tuple[Evaluation, ...] = ()


@dataclass(frozen=True)
class RunRequest:
    """What to run: a rule, as of `scheduled_for` (None: now), and who or what asked. With `shared`, the run
    reuses that evaluation (copying its rows when it writes) and does every other stage as usual. With `simulated`
    (a backfill), the alert lifecycle reads and keeps its states there, never in the live ones."""

    rule_id: str
    scheduled_for: datetime | None = None
    dry_run: bool = False
    trigger: str = "manual"
    triggered_by: int | None = None
    shared: SharedEvaluation | None = None
    simulated: SimulatedStates | None = None


@dataclass
class RunInHand:
    """The run in hand: its `rule_runs` record, its rule, and what the stages learned."""

    record: RunRecord
    rule_row: RuleRow
    scope: RunScope
    rule: Rule | None = None
    bounds: WindowBounds | None = None
    compiled: CompiledLogic | None = None
    recover: CompiledLogic | None = None  # the rule's recover_when, compiled with the logic when it has one
    matched: list[Evaluation] | None = None
    unrecovered: list[Evaluation] = field(default_factory=list)
    shared: SharedEvaluation | None = None
    # The organization's accounts and pipelines (read once for a batch), the verdict on the window's data, and
    # whether the run goes on without it; `check_in` is set while the run waits.
    signals: FreshnessSignals | None = None
    verdict: Completeness | None = None
    stale: bool = False
    check_in: int | None = None
    # A backfill's states, kept in memory instead of the live ones.
    simulated: SimulatedStates | None = None
    started: float = field(default_factory=time.monotonic)
    # How the run is evaluated (in a batch of N, or alone and why), said by its next transition.
    note: str | None = None

    @property
    def state(self) -> RunState:
        return self.record.state


def run_claim(request: RunRequest, rule_row: RuleRow, at: datetime) -> RunClaim:
    """What the claim of `request` for its rule `rule_row` at T `at` writes."""
    return RunClaim(rule_id=rule_row.rule_id, org_id=rule_row.org_id, scheduled_for=at, trigger=request.trigger,
                    dry_run=request.dry_run, triggered_by=request.triggered_by)


def run_in_hand(request: RunRequest, rule_row: RuleRow, record: RunRecord) -> RunInHand:
    """The claimed run `record` of `request` for its rule `rule_row`, to work on."""
    return RunInHand(record, rule_row, RunScope(rule_row.org_id, rule_row.rule_id, record.eval_time),
                     shared=request.shared, simulated=request.simulated)


def bad_request_answer(rule_id: str, error: Exception) -> dict[str, Any]:
    """What rules.evaluate and rules.evaluate_batch answer for a rule whose request is wrong (nothing written)."""
    return {"rule_id": rule_id, "status": "failed", "error": str(error)}


def evaluation_time(scheduled_for: datetime | None, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> datetime:
    """T: `scheduled_for` (naive means UTC) or now, in UTC, to the second."""
    moment = scheduled_for or now()
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).replace(microsecond=0)


def _storm(rule: Rule, entities: int, matched: int) -> Storm | None:
    """The storm a run of `rule` that evaluated `entities` and matched `matched` of them is, if it is one."""
    return storm_of(entities, matched, rule.actions.max_alerts, rule.actions.max_alert_share)


def summary(row: Mapping[str, Any]) -> dict[str, Any]:
    """The run summary (see the README) of a row read by any `SELECT *` of rule_runs."""
    return RunRecord.from_row(row).summary()


def _user_ids(recipients: Mapping[tuple[str, str], Sequence[Recipient]]) -> dict[tuple[str, str], list[int]]:
    """The sorted user ids of the recipients of each entity key that has any."""
    return {key: sorted(recipient.user_id for recipient in entity_recipients)
            for key, entity_recipients in recipients.items()}


def _noted(run: RunInHand, detail: str) -> str:
    """`detail` with the run's note, if it has one (the note is then spent)."""
    if run.note:
        detail, run.note = f"{detail} ({run.note})", None
    return detail


def _written_or_told(matched: Sequence[Entity], alerting: Sequence[Entity], lifecycle: Lifecycle) -> list[Entity]:
    """The `matched` entities a run alerts on or whose state it changes, in their order."""
    keys = {entity.key for entity in alerting} | {entity.key for entity, _, _ in lifecycle.changes}
    return [entity for entity in matched if entity.key in keys]


def _recovering_rule_ids(runs: Sequence[RunInHand]) -> list[str]:
    """The rule ids of the runs whose rule has a recover_when."""
    return [run.scope.rule_id for run in runs if run.rule.recover_when is not None]


class RuleRunner:
    """Runs rules; one instance is shared by the runs of a process."""

    def __init__(self, postgres: Postgres, clickhouse: ClickHouse, *, allowed_hosts: frozenset[str] = frozenset(),
                 send_deliveries: Callable[[list[int]], None] | None = None,
                 lease_seconds: int = DEFAULT_LEASE_SECONDS, time_limit_seconds: int | None = None,
                 interpreter_only: bool = False, wait_check_seconds: int = DEFAULT_WAIT_CHECK_SECONDS,
                 send_check: Callable[[RunRecord, int], None] | None = None) -> None:
        """`send_deliveries` hands the pending delivery ids of runs to their sender (notifications.deliver); without
        it they stay pending in PostgreSQL until beat's sweeper sends them. With `time_limit_seconds`, the run's
        evaluation statement may use only what is left of that limit, so ClickHouse stops it when the run stops.
        A waiting run is first checked again after `wait_check_seconds`; `send_check` sends the next check of a
        waiting run that left a batch (rules.evaluate after a countdown); without it beat's sweeper sends it."""
        self._postgres = postgres
        self._runs = RunStore(postgres, lease_seconds=lease_seconds)
        self._results = ResultStore(clickhouse)
        self._alert_state = AlertState(self._results, AlertStateStore(postgres))
        self._silences = SilenceStore(postgres)
        self._allowed_hosts = allowed_hosts
        self._send_deliveries = send_deliveries
        self._parsed_rules: dict[bytes, Rule] = {}
        self._time_limit_seconds = time_limit_seconds
        self._interpreter_only = interpreter_only
        self._wait_check_seconds = wait_check_seconds
        self._send_check = send_check

    def run(self, request: RunRequest) -> dict[str, Any]:
        """Runs `request` to a final state and returns its summary.

        Raises RuleNotFound (RuleNotScheduled for a scheduled run of a disabled rule) or BadRunRequest before
        writing anything when the request is wrong or moot. A repeated (rule, T) returns the existing run's summary
        without writing; a rule that fails gives a `failed` summary. Raises RunWaiting when the run now waits for
        its data, and DatabaseUnavailable when a server is down mid-run: the run stays `running`, to be taken over.
        """
        at = evaluation_time(request.scheduled_for)
        try:
            rule_id = canonical_rule_id(request.rule_id)
        except ValueError as error:
            raise BadRunRequest(str(error)) from None
        rule_row = self._runnable_rule(request, at, rule_with_organization(self._postgres, rule_id))
        run = self._claim(request, rule_row, at)
        if run is None:
            return self._owner_summary(request, at)
        self._finish(run)
        if run.state is RunState.WAITING:
            raise RunWaiting(run.record.summary(), run.check_in)
        return run.record.summary()

    def _owner_summary(self, request: RunRequest, at: datetime) -> dict[str, Any]:
        """The summary of the run that owns the rule and T of `request` (its recheck, for a recheck) when the claim
        got none."""
        return self._runs.for_fire_time(request.rule_id, at, recheck=request.trigger == RECHECK).summary()

    def _finish(self, run: RunInHand) -> None:
        """Takes a claimed `run` from its recorded state to a final one (or leaves it `running` when a server is
        down: DatabaseUnavailable is raised)."""
        if run.record.attempts > MAX_RUN_ATTEMPTS:
            reason = (f"given up after {MAX_RUN_ATTEMPTS} attempts: each time, the process running it was lost or "
                      "stopped at the hard time limit")
            self._transition(run, RunState.FAILED, reason, error=reason)
            return
        try:
            with self._failing_on_error([run]):
                self._advance(run)
        except RunMovedOn:
            # A later fire time superseded the run while it was checked: it is final as that left it.
            run.record = self._runs.by_id(run.record.id)

    @contextmanager
    def _failing_on_error(self, runs: Sequence[RunInHand]) -> Iterator[None]:
        """Records each of `runs` as failed when the block raises, saying why; lets DatabaseUnavailable and
        RunMovedOn through."""
        try:
            yield
        except (DatabaseUnavailable, RunMovedOn):
            # The runs stay `running` as they are: once their leases expire, the retried task (or beat's sweeper)
            # takes each over and finishes it, after deleting whatever its interrupted stage wrote. A run that moved
            # on (superseded) is final already.
            raise
        except SoftTimeLimitExceeded:
            # ClickHouse stops the statement in flight itself (its max_execution_time is the time left); the
            # client has moved to a new session meanwhile (storage/clickhouse.py), so the deletes can run. They
            # must end before the hard limit: once ClickHouse leaves one unanswered, the others are not tried.
            reason = (f"the run passed its time limit of {self._time_limit_seconds or '?'} s "
                      "(RUN_TIME_LIMIT_SECONDS) and was stopped")
            answering = True
            with self._results.answering_within(TIME_LIMIT_DELETE_SECONDS):
                for run in runs:
                    answering = self._fail(run, reason, delete_rows=answering)
        except (RuleError, StorageError) as error:
            for run in runs:
                self._fail(run, str(error))
        except Exception as error:  # a bug: the runs still end failed, saying what stopped them
            for run in runs:
                self._fail(run, f"the run stopped: {type(error).__name__}: {error}".rstrip(": "))

    def has_run(self, rule_id: str, at: datetime) -> bool:
        """True when (rule, T) already has a non-dry run: a new request for it would only return that run."""
        return self._runs.for_fire_time(rule_id, evaluation_time(at)) is not None

    def _runnable_rule(self, request: RunRequest, at: datetime, rule_row: RuleRow | None) -> RuleRow:
        """`rule_row`, the rule of `request` as read (None: no rule has its id), if it is to run; raises
        RuleNotFound, RuleNotScheduled or BadRunRequest when there is none to run."""
        too_old = not request.dry_run and at < datetime.now(UTC) - EVALUATION_RETENTION + timedelta(hours=1)
        # An invalid rule fails at any T without writing evaluations, so even an old T records its failure.
        if too_old and (rule_row is None or self._is_valid(rule_row)):
            raise BadRunRequest(f"{utc_iso(at)} is older than the 90 days rule_evaluations keeps; "
                                "use a dry run to look that far back")
        if rule_row is None:
            raise RuleNotFound(f"no rule with id {request.rule_id}")
        if request.trigger == RECHECK and request.dry_run:
            raise BadRunRequest("a recheck writes what it finds; it is never a dry run")
        if request.trigger in ("schedule", RECHECK) and not rule_row.enabled:
            raise RuleNotScheduled(f"rule {request.rule_id} is disabled")
        if not rule_row.organization_exists:
            raise BadRunRequest(f"rule {request.rule_id} belongs to no existing organization")
        return rule_row

    def _is_valid(self, rule_row: RuleRow) -> bool:
        try:
            self._parsed(rule_row)
        except RuleError:
            return False
        return True

    def _parsed(self, rule_row: RuleRow) -> Rule:
        """The rule's documents validated with its organization's timezone and naming conventions; raises RuleError.
        The same documents, timezone and conventions give the Rule validated before (an invalid rule is checked
        each time)."""
        documents = json.dumps([rule_row.conditions, rule_row.actions, rule_row.timezone,
                                rule_row.naming_conventions], default=str)
        key = hashlib.blake2b(documents.encode(), digest_size=16).digest()
        rule = self._parsed_rules.get(key)
        if rule is None:
            rule = parse_rule(rule_row.conditions, rule_row.actions, timezone=rule_row.timezone,
                              allowed_hosts=self._allowed_hosts, conventions=rule_row.naming_conventions)
            if len(self._parsed_rules) >= PARSED_RULES_KEPT:
                self._parsed_rules.clear()
            self._parsed_rules[key] = rule
        return rule

    def _read_rule(self, run: RunInHand) -> None:
        """Sets `run.rule` and `run.bounds` (its window as of T); raises RuleError, setting neither, when the rule is
        not valid."""
        rule = self._parsed(run.rule_row)
        conditions = rule.conditions
        run.bounds = resolve_window(run.record.fire_time, run.rule_row.timezone, conditions.window,
                                    conditions.compare_to)
        run.rule = rule

    def _claim(self, request: RunRequest, rule_row: RuleRow, at: datetime) -> RunInHand | None:
        """The run to work on: a new claim, or a dead run taken over; None when another run owns (rule, T)."""
        try:
            record = self._runs.claim(run_claim(request, rule_row, at))
        except (UnknownUser, NothingToRecheck) as error:
            raise BadRunRequest(str(error)) from None
        return None if record is None else run_in_hand(request, rule_row, record)

    def _advance(self, run: RunInHand) -> None:
        """Moves `run` from its recorded state to a final one, doing each stage not yet done."""
        rule_row = run.rule_row
        if run.state in (RunState.CLAIMED, RunState.WAITING) and rule_row.module not in rule_row.enabled_modules:
            reason = f"module {rule_row.module!r} is not enabled for organization {rule_row.org_id}"
            self._transition(run, RunState.SKIPPED, reason, error=reason)
            return
        if run.state in (RunState.CLAIMED, RunState.WAITING):
            self._read_rule(run)
            if not self._goes_on(run):
                return
        entities = self._compile(run)
        if run.record.dry_run:
            self._evaluate_dry(run, entities)
            return
        if not reached(run.state, RunState.EVALUATED):
            self._evaluate(run, entities)
        if not reached(run.state, RunState.ALERTED):
            if run.record.trigger == RECHECK:
                self._alert_restated(run)
            else:
                self._alert([run])
        self._succeed([run])

    def _verdict(self, run: RunInHand) -> Completeness:
        """The verdict on the run's window (engine.freshness), read once per run; `run.rule` must be read."""
        if run.verdict is None:
            conditions = run.rule.conditions
            if run.signals is None:
                run.signals = organization_signals(self._postgres, run.rule_row.org_id)
            dsp_types = (conditions.scope or {}).get("dsp_type") if conditions.source == CAMPAIGN_METRICS else None
            run.verdict = completeness(run.signals.accounts, run.signals.pipelines, dsp_types,
                                       data_end(run.bounds, run.rule_row.timezone),
                                       conditions.data_delay_time)
        return run.verdict

    def _decision(self, run: RunInHand) -> WaitDecision:
        """Whether the run goes on, waits or, past its max_wait, goes on stale or is skipped. A backfill or a
        recheck never waits: an incomplete window is at once as its on_stale says."""
        conditions = run.rule.conditions
        now = datetime.now(UTC)
        waiting_since = run.record.waiting_since
        waited = now - waiting_since.replace(tzinfo=UTC) if waiting_since is not None else timedelta(0)
        max_wait = timedelta(0) if run.record.trigger in ("backfill", RECHECK) else conditions.max_wait_time
        return wait_decision(self._verdict(run), run.scope.at, max_wait, conditions.on_stale, now, waited,
                             self._wait_check_seconds)

    def _goes_on(self, run: RunInHand) -> bool:
        """Decides about the run's data before it is compiled: True when it goes on (complete, stale, or a dry
        run, which never waits); otherwise records it `waiting` (its lease ending at the next check, `check_in`
        set) or `skipped`, and returns False."""
        if run.record.dry_run:
            run.stale = not self._verdict(run).complete
            return True
        decision = self._decision(run)
        reason = run.verdict.reason()
        if decision.action == WAIT:
            # The next check comes a second after the lease ends, so that it finds the run free to take.
            run.check_in = decision.check_in + 1
            detail = (f"{reason}; checked again in {decision.check_in} s, waiting until "
                      f"{utc_iso(decision.deadline)} at most")
            self._transition(run, RunState.WAITING, detail, waiting_for=reason, lease_seconds=decision.check_in)
            return False
        if decision.action == SKIP_STALE:
            skipped = f"skipped (on_stale is skip): still {reason}"
            self._transition(run, RunState.SKIPPED, skipped, error=skipped, waiting_for=reason)
            return False
        run.stale = decision.action == RUN_STALE
        return True

    def _freshness_columns(self, run: RunInHand) -> dict[str, Any]:
        """What the run's `compiled` transition records of its data: whether it is stale and what was missing."""
        if not run.stale:
            return {}
        return {"stale": True, "waiting_for": run.verdict.reason()}

    def _succeed(self, runs: Sequence[RunInHand]) -> None:
        """Hands over the alerted runs' deliveries and records them as succeeded, in one PostgreSQL transaction,
        with the recheck each scheduled run of a rule with `recheck_after` is due."""
        self._hand_over_deliveries(runs)
        with self._postgres.transaction() as tx:
            for run in runs:
                delay = run.rule.conditions.recheck_delay
                if delay is not None and run.record.trigger == "schedule":
                    self._runs.schedule_recheck(tx, run.record, run.record.fire_time + delay)
            self._transitions(tx, [(run, RunState.SUCCEEDED, "done", {}) for run in runs])

    def _compile(self, run: RunInHand) -> Statement:
        """Validates the rule, resolves its window and compiles its logic (or chooses the interpreter), recording
        `compiled` if not yet done; returns the statement of the entity rows to evaluate."""
        rule_row = run.rule_row
        self._read_rule(run)
        conditions = run.rule.conditions
        try:
            if self._interpreter_only:
                raise NotCompilable("this runner evaluates every rule on the interpreter")
            run.compiled = compile_logic(run.rule.logic, run.rule.fields)
            if run.rule.recover_when is not None:
                run.recover = compile_logic(run.rule.recover_when, run.rule.fields, parameter_prefix="w")
            path, reason = "sql", "compiled to SQL"
        except NotCompilable as refusal:
            run.compiled = run.recover = None
            path, reason = "interpreter", f"runs on the interpreter: {refusal}"
        if run.state in (RunState.CLAIMED, RunState.WAITING):
            if run.stale and not run.record.dry_run:
                reason += "; evaluated on stale data"
            self._transition(run, RunState.COMPILED, reason, path=path, **self._freshness_columns(run))
        # The SQL path aggregates only the fields its logic reads; the interpreter may read any of them.
        return entity_rows(conditions.source, rule_row.org_id, run.bounds, conditions.scope,
                           conditions.compare_to is not None,
                           read_fields(run.compiled, run.recover) if run.compiled else None,
                           behind=self._verdict(run).behind_keys)

    def _evaluate_dry(self, run: RunInHand, entities: Statement) -> None:
        """Evaluates every entity without writing (or takes the shared evaluation's), and records the run as
        succeeded with its counts and what the alert lifecycle, silences, acknowledgements and storm protection
        would have done."""
        scope = run.scope
        quieting = self._silences.quieting(scope.org_id, scope.at, [scope.rule_id])
        if run.shared is not None:
            counts = {"entities": run.shared.entities, "matched": len(run.shared.matched)}
            matched, unrecovered = list(run.shared.matched), list(run.shared.unrecovered)
        else:
            if run.compiled is not None:
                evaluated = self._results.evaluate(evaluation(entities, run.compiled, run.rule.conditions.source,
                                                              run.recover))
            else:
                evaluated = self._interpreted(run, entities)
            matched = [result for result in evaluated if result.matched]
            unrecovered = ([result for result in evaluated if not result.matched
                            and parse_document(result.condition_results).recover_when is False]
                           if run.rule.recover_when is not None else [])
            counts = {"entities": len(evaluated), "matched": len(matched)}
        if quieting.concerns(scope.rule_id):
            source = run.rule.conditions.source
            [named] = named_entities(self._results, scope.org_id,
                                     [RunEntities(source, run.bounds, unnamed_entities(source, matched))])
            hush = self._hush(quieting, run, named)
            counts.update(silenced=hush.silenced, acknowledged=hush.acknowledged)
        storm = _storm(run.rule, counts["entities"], counts["matched"])
        detail = "evaluated without writing"
        if run.stale:
            detail += f"; a run would wait: {run.verdict.reason()}"
        if storm:
            detail += f"; it would have been a storm: {storm.reason}"
        self._transition(run, RunState.EVALUATED, detail, storm=storm is not None, **counts)
        self._transition(run, RunState.SUCCEEDED, "dry run: nothing written",
                         lifecycle=self._simulated_lifecycle(run, matched, unrecovered))

    def _simulated_lifecycle(self, run: RunInHand, matched: Sequence[Evaluation],
                             unrecovered: Sequence[Evaluation]) -> dict[str, int]:
        """What the alert lifecycle of a dry run would do: its counts per state and `would_alert`, the firing
        entities out of cooldown. A backfill's runs go on from its simulated states and alerts; any other dry run
        reads the live ones and changes nothing."""
        scope, actions = run.scope, run.rule.actions
        source = run.rule.conditions.source
        if run.simulated is not None:
            run.simulated.evaluated(scope.at, matched, unrecovered)
        keeper = run.simulated or self._alert_state.states
        policy = lifecycle_policy(run.rule)
        lifecycle = decide(keeper.not_normal([scope.rule_id])[scope.rule_id], unnamed_entities(source, matched),
                           keys_of(unnamed_entities(source, unrecovered)), scope.at, policy)
        if run.simulated is None:
            [alerting] = self._alert_state.alerting(scope.org_id, scope.at, [
                (scope.rule_id, actions.cooldown_minutes, lifecycle.firing)])
        else:
            alerting = out_of_cooldown(lifecycle.firing,
                                       run.simulated.cooling(scope.rule_id, scope.at, actions.cooldown_minutes))
            run.simulated.alerted(scope.rule_id, scope.at, alerting)
            run.simulated.write(None, scope.org_id, scope.at,
                                state_writes(scope.rule_id, run.record.id, policy, lifecycle, alerting))
        return {**lifecycle.counts, "would_alert": len(alerting)}

    def _evaluate(self, run: RunInHand, entities: Statement) -> None:
        """Writes every entity's `rule_evaluations` row once (a copy of the shared evaluation's rows, if any), keeps
        the matched ones, and records `evaluated`."""
        if run.record.attempts > 1:
            self._results.delete_evaluations(run.scope)
        if run.shared is not None:
            self._results.copy_evaluations(RunScope(run.scope.org_id, run.scope.rule_id, run.shared.at), run.scope,
                                           int((time.monotonic() - run.started) * 1000))
        elif run.compiled is not None:
            started = datetime.now(UTC) - timedelta(seconds=time.monotonic() - run.started)
            restating = run.record.fire_time if run.record.trigger == RECHECK else None
            statement = evaluation_insert(entities, run.compiled, run.rule.conditions.source,
                                          org_id=run.scope.org_id, rule_id=run.scope.rule_id, eval_time=run.scope.at,
                                          started_at=started, recover=run.recover, restating=restating)
            self._results.evaluate_into_table(statement, seconds_left=self._seconds_left(run))
        else:
            # Written after the rows have streamed in, since a chdb client can't insert mid-stream.
            evaluated = self._interpreted(run, entities)
            if run.record.trigger == RECHECK:
                first = self._results.outcome(RunScope(run.scope.org_id, run.scope.rule_id, run.record.fire_time))
                evaluated = restate(evaluated, {evaluation_key(evaluation) for evaluation in first.matched})
            self._results.insert_evaluations(run.scope, evaluated, int((time.monotonic() - run.started) * 1000))
        self._record_evaluated([run])

    def _record_evaluated(self, runs: Sequence[RunInHand]) -> None:
        """Reads the outcome of the runs' `rule_evaluations` rows (one organization and T) in one query, keeps
        their matches and records each `evaluated`, in one PostgreSQL transaction."""
        first = runs[0].scope
        outcomes = self._results.outcomes(first.org_id, first.at, [run.scope.rule_id for run in runs],
                                          _recovering_rule_ids(runs))
        for run in runs:
            outcome = outcomes[run.scope.rule_id]
            run.matched, run.unrecovered = outcome.matched, outcome.unrecovered
        with self._postgres.transaction() as tx:
            self._transitions(tx, [(run, RunState.EVALUATED, "rule_evaluations written",
                                    {"entities": outcomes[run.scope.rule_id].entities, "matched": len(run.matched)})
                                   for run in runs])

    def _interpreted(self, run: RunInHand, entities: Statement) -> list[Evaluation]:
        """Every entity evaluated in Python while its rows stream in from ClickHouse."""
        return [result for batch in evaluate_batches(run.rule, self._results.entity_row_batches(entities))
                for result in batch]

    def _seconds_left(self, run: RunInHand) -> int | None:
        """What is left of the run's time limit, for a statement starting now (at least 1 s); None: no limit."""
        if self._time_limit_seconds is None:
            return None
        return max(1, int(self._time_limit_seconds - (time.monotonic() - run.started)))

    def _alert(self, runs: Sequence[RunInHand]) -> None:
        """For runs of one organization, T and trigger: moves each rule's entities one step through the alert
        lifecycle (worker/alert_state.py), writes one `alert_events` row per firing matched entity out of cooldown
        (one insert), then, in one PostgreSQL transaction, the states that changed with their history, the
        notifications and deliveries owed (none for the entities a silence or an acknowledgement covers), the end of
        acknowledgements whose entity resolved, and each run's `alerted`. A run that is a storm (engine/storms.py)
        still writes every alert, but owes each recipient one incident notice. The matches, names, states,
        cooldowns, silences and audiences of all the runs are each read in one query; each run's rows are those it
        would write alone."""
        first = runs[0]
        org_id, at = first.scope.org_id, first.scope.at
        notifies = first.record.trigger != "backfill"
        for run in runs:
            if run.record.attempts > 1:
                self._results.delete_alerts(run.scope)
        unread = [run for run in runs if run.matched is None]
        if unread:
            outcomes = self._results.outcomes(org_id, at, [run.scope.rule_id for run in unread],
                                              _recovering_rule_ids(unread))
            for run in unread:
                outcome = outcomes[run.scope.rule_id]
                run.matched, run.unrecovered = outcome.matched, outcome.unrecovered
        storms = [_storm(run.rule, run.record.entities, len(run.matched)) for run in runs]
        # The alerts of a run on stale data say so in their condition_details.
        found = [[replace(entity, condition_details=with_stale_mark(entity.condition_details)) for entity in entities]
                 if run.record.stale else entities
                 for run, entities in ((run, unnamed_entities(run.rule.conditions.source, run.matched))
                                       for run in runs)]
        keeper = first.simulated or self._alert_state.states
        if first.simulated is not None:
            first.simulated.evaluated(at, first.matched, first.unrecovered)
        stored = keeper.not_normal([run.scope.rule_id for run in runs])
        policies = [lifecycle_policy(run.rule) for run in runs]
        lifecycles = [decide(stored[run.scope.rule_id], entities,
                             keys_of(unnamed_entities(run.rule.conditions.source, run.unrecovered)), at, policy)
                      for run, entities, policy in zip(runs, found, policies)]
        alerting = self._alert_state.alerting(org_id, at, [
            (run.scope.rule_id, run.rule.actions.cooldown_minutes, lifecycle.firing)
            for run, lifecycle in zip(runs, lifecycles)])
        quieting = self._silences.quieting(org_id, at, [run.scope.rule_id for run in runs])
        # Only the entities a run writes or tells of are named (a silence may cover any matched one by its DSP or
        # advertiser): those staying firing in their cooldown, most of a steady state, are not.
        names = [{entity.key: entity for entity in entities} for entities in named_entities(self._results, org_id, [
            RunEntities(run.rule.conditions.source, run.bounds, entities if quieting.concerns(run.scope.rule_id)
                        else _written_or_told(entities, run_alerting, lifecycle))
            for run, entities, run_alerting, lifecycle in zip(runs, found, alerting, lifecycles)])]
        matched = [[run_names.get(entity.key, entity) for entity in entities]
                   for run_names, entities in zip(names, found)]
        lifecycles = [lifecycle.named(run_names) for run_names, lifecycle in zip(names, lifecycles)]
        alerted = [[run_names.get(entity.key, entity) for entity in entities]
                   for run_names, entities in zip(names, alerting)]
        # What goes to PostgreSQL (audience, notifications, deliveries, states) is NUL-free.
        stored_alerted = [[entity.without_nul() for entity in entities] for entities in alerted]
        resolved = [lifecycle.resolved if notifies and run.rule.actions.notify_on_resolve else []
                    for run, lifecycle in zip(runs, lifecycles)]
        # An acknowledgement lasts while its entity is not normal: matched, or firing or recovering still.
        hushes = [self._hush(quieting, run, run_matched, run_resolved,
                             ongoing={(state.entity_type, state.entity_id) for state in stored[run.scope.rule_id]}
                             - keys_of(lifecycle.resolved))
                  for run, run_matched, run_resolved, lifecycle in zip(runs, matched, resolved, lifecycles)]
        # Silenced and acknowledged entities keep their alerts and states; only their notices are withheld.
        told = [(hush.told(run_stored), hush.told(run_resolved))
                for hush, run_stored, run_resolved in zip(hushes, stored_alerted, resolved)]
        recipients = (audiences(self._postgres, org_id, [
            (run.rule.actions.notify.roles, told_alerted + told_resolved)
            for run, (told_alerted, told_resolved) in zip(runs, told)], at)
            if notifies else [{} for _ in runs])
        users = [[user_ids.get(entity.key, []) for entity in run_stored]
                 for user_ids, run_stored in zip(map(_user_ids, recipients), stored_alerted)]
        self._results.insert_alerts_of_runs([
            (run.scope, run.rule_row.name, run.rule.actions.severity,
             [AlertEvent(entity.entity_type, entity.entity_id, entity.entity_name, entity.condition_details,
                         entity_users) for entity, entity_users in zip(run_alerted, run_users)])
            for run, run_alerted, run_users in zip(runs, alerted, users)])
        writes = [write for run, policy, lifecycle, run_stored in zip(runs, policies, lifecycles, stored_alerted)
                  for write in state_writes(run.scope.rule_id, run.record.id, policy, lifecycle, run_stored)]
        moves: list[tuple[RunInHand, RunState, str, dict[str, Any]]] = []
        with self._postgres.transaction() as tx:
            keeper.write(tx, org_id, at, writes)
            for run, run_storm, run_alerted, run_resolved, run_told, hush, run_recipients, run_users, lifecycle in zip(
                    runs, storms, alerted, resolved, told, hushes, recipients, users, lifecycles):
                scope, actions = run.scope, run.rule.actions
                if notifies:
                    for kind, entities in zip(("alert", "resolved"), run_told):
                        storm = run_storm if kind == "alert" else None
                        notice = RunNotice(kind, run.record.id, scope.org_id, scope.rule_id, run.rule_row.name,
                                           actions.severity, scope.at, storm,
                                           first_variable(run.rule.conditions.logic, run.rule.fields),
                                           stale=run.record.stale)
                        record_deliveries(tx, notice, entities, run_recipients, actions.notify)
                    self._silences.end_acknowledgements(tx, hush.ending, scope.at, run.record.id)
                notified = sorted({user for entity_users in run_users for user in entity_users})
                detail = "alert_events written" + (f"; a storm: {run_storm.reason}" if run_storm else "")
                moves.append((run, RunState.ALERTED, detail, {
                    "alerts": len(run_alerted), "silenced": hush.silenced, "acknowledged": hush.acknowledged,
                    "notified_users": notified, "storm": run_storm is not None, "lifecycle": lifecycle.counts}))
            self._transitions(tx, moves)

    @staticmethod
    def _hush(quieting: Quieting, run: RunInHand, matched: Iterable[Entity], resolved: Sequence[Entity] = (),
              ongoing: Collection[tuple[str, str]] = frozenset()) -> Hush:
        """What `quieting` does to the run, given its matched and resolving entities and the keys of the others
        that stay firing or recovering."""
        # Silences and acknowledgements hold entities as PostgreSQL stores them (NUL-free), so they are compared so.
        return quieting.hush(run.scope.rule_id, (entity.without_nul() for entity in matched), resolved, ongoing)

    def _alert_restated(self, run: RunInHand) -> None:
        """The alert stage of a recheck: its restated entities (read in one query) are named and told, in one
        notice of kind "restated", to the audience of each; the ones that match now and are out of cooldown get an
        `alert_events` row as of the recheck's time. No firing state changes. Records `alerted`."""
        scope, actions = run.scope, run.rule.actions
        if run.record.attempts > 1:
            self._results.delete_alerts(scope)
        restated = self._results.restated(scope)
        source = run.rule.conditions.source
        [entities] = named_entities(self._results, scope.org_id,
                                    [RunEntities(source, run.bounds, unnamed_entities(source, restated))])
        matching_now = [entity for entity, evaluation in zip(entities, restated) if evaluation.matched]
        alerted = self._alert_state.alerting(scope.org_id, scope.at,
                                             [(scope.rule_id, actions.cooldown_minutes, matching_now)])[0]
        stored = [entity.without_nul() for entity in entities]
        no_longer = [entity for entity, evaluation in zip(stored, restated) if not evaluation.matched]
        # Silences withhold a recheck's notices as they do a run's; its acknowledgements neither end nor begin.
        hush = self._hush(self._silences.quieting(scope.org_id, scope.at, [scope.rule_id]), run, matching_now,
                          no_longer)
        told = hush.told(stored)
        recipients = audiences(self._postgres, scope.org_id, [(actions.notify.roles, told)], scope.at)[0]

        user_ids = _user_ids(recipients)

        def users_of(entity: Entity) -> list[int]:
            return user_ids.get(entity.without_nul().key, [])

        self._results.insert_alerts(scope, run.rule_row.name, actions.severity, [
            AlertEvent(entity.entity_type, entity.entity_id, entity.entity_name, entity.condition_details,
                       users_of(entity)) for entity in alerted])
        notice = RunNotice("restated", run.record.id, scope.org_id, scope.rule_id, run.rule_row.name,
                           actions.severity, scope.at, scheduled_for=run.record.fire_time,
                           matching_now=frozenset(entity.without_nul().key for entity in matching_now))
        notified = sorted({user for entity in told for user in users_of(entity)})
        with self._postgres.transaction() as tx:
            record_deliveries(tx, notice, told, recipients, actions.notify)
            self._transition(run, RunState.ALERTED, f"{len(restated)} entities restated; alert_events written",
                             alerts=len(alerted), silenced=hush.silenced, acknowledged=hush.acknowledged,
                             notified_users=notified, restated=len(restated), tx=tx)

    def _hand_over_deliveries(self, runs: Sequence[RunInHand]) -> None:
        """Hands the runs' pending deliveries (read in one query) to their sender; if that fails, beat's sweeper
        sends them later."""
        if self._send_deliveries is None:
            return
        ids = pending_delivery_ids(self._postgres, [run.record.id for run in runs])
        if ids:
            self._send_deliveries(ids)

    def _fail(self, run: RunInHand, reason: str, *, delete_rows: bool = True) -> bool:
        """Records `run` as failed; unless `delete_rows` is False, rows its evaluation stage wrote before the failure
        are deleted (best effort), so that a failed run leaves no evaluations its summary does not count. Returns
        False when ClickHouse did not answer a delete (DatabaseUnavailable)."""
        stage = run.state
        self._transition(run, RunState.FAILED, reason, error=reason)
        if run.record.dry_run or stage not in (RunState.COMPILED, RunState.EVALUATED):
            return True
        if not delete_rows:
            log.warning("run %s failed and its rows were not deleted: ClickHouse did not answer", run.record.id)
            return False
        try:
            self._results.delete_evaluations(run.scope)
            self._results.delete_alerts(run.scope)
        except StorageError as error:
            log.warning("run %s failed and its rows could not be deleted: %s", run.record.id, error)
            return not isinstance(error, DatabaseUnavailable)
        return True

    def _transition(self, run: RunInHand, target: RunState, detail: str, **changes: Any) -> None:
        """Records `run` moving to `target` (storage.runs.RunStore.transition takes the counters and `tx`)."""
        run.record = self._runs.transition(run.record, target, _noted(run, detail), **changes)

    def _transitions(self, tx: Transaction,
                     moves: Sequence[tuple[RunInHand, RunState, str, Mapping[str, Any]]]) -> None:
        """`_transition` in `tx` of each (run, target, detail, changes) of `moves`, all in one round trip."""
        records = self._runs.transitions(tx, [Move(run.record, target, _noted(run, detail), changes)
                                              for run, target, detail, changes in moves])
        for (run, *_), record in zip(moves, records):
            run.record = record
