"""The rules of one organization due at one T, run together: one statement per source, one alert stage.

Each rule keeps its own run (claim, `rule_runs` row, transitions, summary, exactly-once and take-over: see
worker/runner.py). The rules left after the claims are evaluated by one engine.batch_query statement per source
(cut by `split_batch`), and their alert stage reads and writes for all of them at once. A rule leaves the batch and
runs alone when it fails validation, is skipped, compiles only for the interpreter, is a take-over of a dead
run or must wait for its data (its next check is sent as rules.evaluate, alone); when a batch statement fails,
each of its rules runs alone from where it is, so that only a faulty rule fails.
Every run's transitions say which it was.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from engine.batch_query import BatchMember, batch_evaluation_insert, batch_member, split_batch
from engine.errors import NotCompilable, RuleError
from engine.freshness import RUN_STALE
from engine.rule_ids import canonical_rule_id
from engine.run_states import RunState
from storage.errors import DatabaseUnavailable, StorageError
from storage.freshness import organization_signals
from storage.rule_rows import RuleRow, rules_with_organization
from storage.runs import RECHECK
from worker.runner import (BadRunRequest, RuleNotFound, RuleRunner, RunRequest, RunInHand, bad_request_answer,
                           evaluation_time, run_claim, run_in_hand)

log = logging.getLogger(__name__)

# The share of what is left of the time limit a batch statement may use; the rest is kept for running its rules
# alone should it fail.
BATCH_TIME_SHARE = 0.5


@dataclass(frozen=True)
class BatchRequest:
    """The rules `rule_ids` of organization `org_id` due at `scheduled_for` (None: now), sent by `trigger`."""

    org_id: int
    scheduled_for: datetime | None
    rule_ids: tuple[str, ...]
    trigger: str = "schedule"


class BatchRunner(RuleRunner):
    """A RuleRunner that also runs batches; one instance is shared by the runs of a process."""

    def run_batch(self, request: BatchRequest) -> list[dict[str, Any] | None]:
        """Runs every rule of `request` to a final state and returns one summary per rule, in their order.

        A rule gets what `run` would give it alone: None for a deleted rule or a scheduled run of a disabled one,
        {"rule_id", "status": "failed", "error"} for a bad request, the existing run's summary when another run
        owns (rule, T). Raises DatabaseUnavailable when a server is down: the runs claimed stay `running`, to be
        taken over.
        """
        at = evaluation_time(request.scheduled_for)
        answers = self._claimed(request, at)
        claimed = [answer for answer in answers if isinstance(answer, RunInHand)]
        if claimed:
            signals = organization_signals(self._postgres, request.org_id)
            for run in claimed:
                if run.rule_row.org_id == request.org_id:
                    run.signals = signals
        alone: list[RunInHand] = []
        members_by_source: dict[str, list[tuple[BatchMember, RunInHand]]] = defaultdict(list)
        for position, run in enumerate(claimed):
            member, alone_because = self._batch_member(request.org_id, position, run)
            if member is None:
                run.note = f"alone: {alone_because}"
                alone.append(run)
            else:
                members_by_source[run.rule.conditions.source].append((member, run))
        for source, pairs in members_by_source.items():
            run_of = {member.position: run for member, run in pairs}
            for members in split_batch(source, [member for member, _ in pairs]):
                runs = [run_of[member.position] for member in members]
                if len(runs) == 1:
                    runs[0].note = f"alone: the only rule of the batch over {source}"
                    alone.append(runs[0])
                else:
                    self._renew_leases(claimed)
                    self._run_together(source, members, runs)
        for run in alone:
            self._renew_leases(claimed)
            self._finish(run)
            if run.state is RunState.WAITING:
                self._hand_over_check(run)
        return [answer.record.summary() if isinstance(answer, RunInHand) else answer for answer in answers]

    def _claimed(self, request: BatchRequest, at: datetime) -> list[dict[str, Any] | RunInHand | None]:
        """For each rule of `request`, in their order: its run claimed (or taken over), or what `run_batch`
        answers for it when it has none to work on. The rules are read in one query and claimed in one
        transaction."""
        answers: list[dict[str, Any] | RunInHand | None] = []
        readable: list[tuple[int, RunRequest]] = []
        for rule_id in request.rule_ids:
            try:
                readable.append((len(answers), RunRequest(canonical_rule_id(rule_id), at, trigger=request.trigger)))
                answers.append(None)
            except ValueError as error:
                answers.append(bad_request_answer(rule_id, error))
        rule_rows = rules_with_organization(self._postgres, [single.rule_id for _, single in readable])
        runnable: list[tuple[int, RunRequest, RuleRow]] = []
        for position, single in readable:
            try:
                runnable.append((position, single, self._runnable_rule(single, at, rule_rows.get(single.rule_id))))
            except RuleNotFound as error:
                log.info("%s; nothing to do", error)
            except BadRunRequest as error:
                answers[position] = bad_request_answer(request.rule_ids[position], error)
        if request.trigger == RECHECK:
            # Each recheck is claimed at a second of its own.
            for position, single, rule_row in runnable:
                try:
                    run = self._claim(single, rule_row, at)
                except BadRunRequest as error:
                    answers[position] = bad_request_answer(request.rule_ids[position], error)
                    continue
                answers[position] = run or self._owner_summary(single, at)
        elif runnable:
            records = self._runs.claim_all([run_claim(single, rule_row, at) for _, single, rule_row in runnable])
            for (position, single, rule_row), record in zip(runnable, records):
                answers[position] = (run_in_hand(single, rule_row, record) if record is not None
                                     else self._owner_summary(single, at))
        return answers

    def _hand_over_check(self, run: RunInHand) -> None:
        """Sends the waiting run's next check (rules.evaluate of its rule and T, after its countdown); if that
        fails, or without a sender, beat's sweeper sends it once the check is overdue."""
        if self._send_check is None:
            return
        try:
            self._send_check(run.record, run.check_in)
        except Exception as error:
            log.warning("could not send the next check of waiting run %s; beat will: %s", run.record.id, error)

    def _renew_leases(self, runs: list[RunInHand]) -> None:
        """Renews the leases of the runs not finished yet, so that none expires while the others are worked on."""
        self._runs.renew_leases([run.record.id for run in runs if run.record.status == "running"])

    def _batch_member(self, org_id: int, position: int, run: RunInHand) -> tuple[BatchMember | None, str]:
        """The run as a member of the batch, or None and why it runs alone."""
        rule_row = run.rule_row
        if run.record.attempts > 1 or run.state is not RunState.CLAIMED:
            return None, "the take-over of a run whose process was lost"
        if run.record.trigger == RECHECK:
            return None, "a recheck, which evaluates at a time of its own"
        if rule_row.org_id != org_id:
            return None, f"the rule belongs to organization {rule_row.org_id}"
        if rule_row.module not in rule_row.enabled_modules:
            return None, "its module is not enabled"
        if self._interpreter_only:
            return None, "this runner evaluates every rule on the interpreter"
        try:
            self._read_rule(run)
        except RuleError:
            return None, "the rule is not valid"
        if not self._verdict(run).complete:
            if self._decision(run).action != RUN_STALE:
                return None, "its window's data is incomplete"
            run.stale = True
        conditions = run.rule.conditions
        try:
            return batch_member(position, str(rule_row.rule_id), conditions.source, run.rule.logic, run.bounds,
                                conditions.scope, conditions.compare_to is not None,
                                run.verdict.behind_keys, run.rule.recover_when), ""
        except NotCompilable as refusal:
            return None, f"it runs on the interpreter: {refusal}"

    def _run_together(self, source: str, members: list[BatchMember], runs: list[RunInHand]) -> None:
        """Evaluates `runs` (of one source) in one statement, then alerts them together; if the statement fails,
        each run goes on alone from `compiled`."""
        started = min(run.started for run in runs)
        for run in runs:
            run.note = f"in a batch of {len(runs)} rules"
        with self._postgres.transaction() as tx:
            self._transitions(tx, [(run, RunState.COMPILED,
                                    "compiled to SQL" + ("; evaluated on stale data" if run.stale else ""),
                                    {"path": "sql", **self._freshness_columns(run)}) for run in runs])
        first = runs[0].scope
        statement = batch_evaluation_insert(
            source, first.org_id, members, eval_time=first.at,
            started_at=datetime.now(UTC) - timedelta(seconds=time.monotonic() - started))
        seconds_left = self._seconds_left(min(runs, key=lambda run: run.started))
        budget = None if seconds_left is None else max(1, int(seconds_left * BATCH_TIME_SHARE))
        try:
            self._results.evaluate_into_table(statement, seconds_left=budget)
        except DatabaseUnavailable:
            raise
        except StorageError as error:
            log.warning("a batch of %d rules of organization %s failed; each runs alone: %s", len(runs),
                        first.org_id, error)
            self._run_each_alone(runs, f"alone: the batch's statement failed: {error}")
            return
        with self._failing_on_error(runs):
            self._record_evaluated(runs)
            self._alert(runs)
            self._succeed(runs)

    def _run_each_alone(self, runs: list[RunInHand], note: str) -> None:
        """Deletes whatever the failed statement wrote of the runs, then finishes each run alone."""
        with self._failing_on_error(runs):
            for run in runs:
                self._results.delete_evaluations(run.scope)
        for run in runs:
            if run.record.status == "running":
                run.note = note
                self._finish(run)
