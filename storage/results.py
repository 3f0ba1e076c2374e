"""What a run reads and writes in ClickHouse: its entity rows, `rule_evaluations`, `alert_events`, campaign names.

Every statement is limited to one run's organization; the rows of a run are those of (org, rule, T), which is
also what a stage deletes before it is written again.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, NamedTuple

from engine.query import Statement
from engine.timestamps import utc_sql
from storage.clickhouse import ClickHouse

_EVALUATION_COLUMNS = ("org_id", "eval_time", "rule_id", "entity_id", "matched", "condition_results",
                       "execution_time_ms")
_ALERT_COLUMNS = ("org_id", "alert_time", "rule_id", "rule_name", "severity", "entity_type", "entity_id",
                  "entity_name", "condition_details", "notified_users")
_INSERT_BATCH_ROWS = 100_000
CLICKHOUSE_FIRST_DATE = date(1970, 1, 1)


@dataclass(frozen=True)
class RunScope:
    """The rows of one run: its organization, its rule and its evaluation time T (aware, UTC)."""

    org_id: int
    rule_id: str
    at: datetime


class Evaluation(NamedTuple):
    """One entity's evaluation: whether it matched and its `condition_results` document (JSON text). A tuple: a run
    reads one per matched entity."""

    entity_id: str
    matched: bool
    condition_results: str


@dataclass(frozen=True)
class Outcome:
    """What a run's `rule_evaluations` rows say: how many entities, the matched ones ordered by entity id, and the
    unmatched ones whose recover_when does not hold (README, Alert lifecycle)."""

    entities: int
    matched: list[Evaluation]
    unrecovered: list[Evaluation] = field(default_factory=list)


@dataclass(frozen=True)
class CampaignIdentity:
    """A campaign's name, DSP and advertiser, as of its latest date with data."""

    entity_name: str
    dsp_type: str
    advertiser_id: str


class AlertEvent(NamedTuple):
    """One `alert_events` row of a run, less what the run itself gives (org, T, rule, name, severity). A tuple: a
    run writes one per alert, its columns taken straight from it."""

    entity_type: str
    entity_id: str
    entity_name: str
    condition_details: str
    notified_users: list[int]


def _keys(scope: RunScope, time_column: str) -> dict[str, Any]:
    return {"org_id": scope.org_id, "rule_id": scope.rule_id, time_column: utc_sql(scope.at)}


class ResultStore:
    """A run's ClickHouse reads and writes; holds the client without using it until a method is called."""

    def __init__(self, clickhouse: ClickHouse) -> None:
        self._clickhouse = clickhouse

    def answering_within(self, seconds: float) -> AbstractContextManager[None]:
        """Inside the block, ClickHouse requests fail with DatabaseUnavailable when unanswered after `seconds`."""
        return self._clickhouse.answering_within(seconds)

    def entity_row_batches(self, entities: Statement) -> Iterator[list[dict[str, Any]]]:
        """The rows of engine.query.entity_rows, block by block: each a field name -> value mapping."""
        return self._clickhouse.row_batches(entities.sql, entities.parameters, what="fetching entity rows")

    def evaluate(self, evaluation: Statement) -> list[Evaluation]:
        """Runs engine.query.evaluation and returns every entity's evaluation, writing nothing."""
        rows = self._clickhouse.sql_rows(evaluation.sql, evaluation.parameters, what="the rule's evaluation")
        return [Evaluation(row["entity_id"], bool(row["matched"]), row["condition_results"]) for row in rows]

    def evaluate_into_table(self, evaluation_insert: Statement, *, seconds_left: int | None) -> None:
        """Runs engine.query.evaluation_insert, which writes the run's `rule_evaluations` inside ClickHouse;
        with `seconds_left`, ClickHouse stops the statement after that many seconds (max_execution_time)."""
        budget = {"max_execution_time": seconds_left} if seconds_left is not None else None
        self._clickhouse.command(evaluation_insert.sql, evaluation_insert.parameters, what="the rule's evaluation",
                                 settings=budget)

    def insert_evaluations(self, scope: RunScope, evaluations: Sequence[Evaluation], execution_time_ms: int) -> None:
        """Writes one `rule_evaluations` row per evaluation, in inserts of at most 100,000 rows."""
        eval_time = scope.at.replace(tzinfo=None)
        for start in range(0, len(evaluations), _INSERT_BATCH_ROWS):
            self._clickhouse.insert("rule_evaluations", [
                [scope.org_id, eval_time, scope.rule_id, evaluation.entity_id, int(evaluation.matched),
                 evaluation.condition_results, execution_time_ms]
                for evaluation in evaluations[start:start + _INSERT_BATCH_ROWS]
            ], _EVALUATION_COLUMNS)

    def copy_evaluations(self, source: RunScope, target: RunScope, execution_time_ms: int) -> None:
        """Writes the `rule_evaluations` rows of `source` again as the rows of `target` (same organization and rule,
        another T), with `execution_time_ms`, in one INSERT … SELECT inside ClickHouse."""
        self._clickhouse.command_named("copy_evaluations", **_keys(source, "eval_time"),
                                       target_eval_time=utc_sql(target.at), execution_time_ms=execution_time_ms)

    def outcome(self, scope: RunScope) -> Outcome:
        """The entity count and the matched entities of the run's `rule_evaluations` rows, in one read."""
        return self.outcomes(scope.org_id, scope.at, [scope.rule_id])[scope.rule_id]

    def outcomes(self, org_id: int, at: datetime, rule_ids: Sequence[str],
                 recovering_rule_ids: Sequence[str] = ()) -> dict[str, Outcome]:
        """The outcome of each rule's run of (org, T), keyed by rule id, in one read of all their rows; only the
        rules of `recovering_rule_ids` (those with a recover_when) are looked at for unrecovered entities."""
        found = {str(row["rule_id"]): Outcome(int(row["entities"]),
                                              [Evaluation(entity_id, True, results)
                                               for entity_id, results in row["matched"]],
                                              [Evaluation(entity_id, False, results)
                                               for entity_id, results in row["unrecovered"]])
                 for row in self._clickhouse.rows("evaluation_outcomes", org_id=org_id, eval_time=utc_sql(at),
                                                  rule_ids=[str(rule_id) for rule_id in rule_ids],
                                                  recovering_rule_ids=[str(rule_id) for rule_id in recovering_rule_ids])}
        return {rule_id: found.get(str(rule_id), Outcome(0, [])) for rule_id in rule_ids}

    def restated(self, scope: RunScope) -> list[Evaluation]:
        """The run's `rule_evaluations` rows marked restated (a recheck's), those that match first, in one read."""
        return [Evaluation(row["entity_id"], bool(row["matched"]), row["condition_results"])
                for row in self._clickhouse.rows("restated_evaluations", **_keys(scope, "eval_time"))]

    def delete_evaluations(self, scope: RunScope) -> None:
        """Deletes the run's `rule_evaluations` rows, whatever an earlier attempt wrote of them."""
        self._clickhouse.command_named("delete_evaluations", **_keys(scope, "eval_time"))

    def delete_alerts(self, scope: RunScope) -> None:
        """Deletes the run's `alert_events` rows, whatever an earlier attempt wrote of them."""
        self._clickhouse.command_named("delete_alerts", **_keys(scope, "alert_time"))

    def insert_alerts(self, scope: RunScope, rule_name: str, severity: str, alerts: Sequence[AlertEvent]) -> None:
        """Writes one `alert_events` row per alert (none: nothing is sent to ClickHouse)."""
        self.insert_alerts_of_runs([(scope, rule_name, severity, alerts)])

    def insert_alerts_of_runs(self, runs: Sequence[tuple[RunScope, str, str, Sequence[AlertEvent]]]) -> None:
        """Writes, in one insert, one `alert_events` row per alert of each (scope, rule name, severity, alerts)
        (no alert at all: nothing is sent to ClickHouse)."""
        # Column by column: a run's own values are repeated, not copied into a row per alert.
        columns: list[list[Any]] = [[] for _ in _ALERT_COLUMNS]
        for scope, rule_name, severity, alerts in runs:
            count = len(alerts)
            for column, value in zip(columns, (scope.org_id, scope.at.replace(tzinfo=None), scope.rule_id, rule_name,
                                               severity)):
                column += [value] * count
            for column, values in zip(columns[5:], zip(*alerts)):
                column += values
        if columns[0]:
            self._clickhouse.insert("alert_events", columns, _ALERT_COLUMNS, column_oriented=True)

    def alerted_since(self, scope: RunScope, since: datetime, entity_ids: Sequence[str]) -> set[tuple[str, str]]:
        """The (entity_type, entity_id) among `entity_ids` with an alert of the rule from `since` until before T."""
        return self.alerted_since_by_rule(scope.org_id, scope.at, {scope.rule_id: since}, entity_ids)[scope.rule_id]

    def alerted_since_by_rule(self, org_id: int, at: datetime, since_by_rule: Mapping[str, datetime],
                              entity_ids: Sequence[str]) -> dict[str, set[tuple[str, str]]]:
        """For each rule of `since_by_rule`, the (entity_type, entity_id) among `entity_ids` with an alert of that
        rule from its `since` until before T (org, T), in one read."""
        cooling: dict[str, set[tuple[str, str]]] = {rule_id: set() for rule_id in since_by_rule}
        if not since_by_rule or not entity_ids:
            return cooling
        rule_ids = list(since_by_rule)
        for rule_number, pairs in self._clickhouse.row_tuples(
                "alerts_in_cooldown", org_id=org_id, rule_ids=[str(rule_id) for rule_id in rule_ids],
                since=utc_sql(min(since_by_rule.values())), until=utc_sql(at),
                sinces=[utc_sql(since_by_rule[rule_id]) for rule_id in rule_ids], entity_ids=list(entity_ids)):
            cooling[rule_ids[rule_number - 1]] = {tuple(pair) for pair in pairs}
        return cooling

    def has_alerted(self, org_id: int, rule_id: str, entity_type: str, entity_id: str) -> bool:
        """True when the rule has an `alert_events` row for the entity, at any time."""
        rows = self._clickhouse.rows("alerts_of_entity", org_id=org_id, rule_id=rule_id, entity_type=entity_type,
                                     entity_id=entity_id)
        return bool(rows and int(rows[0]["alerts"]))

    def campaign_identities(self, org_id: int, ids: Sequence[str], last: date,
                            earliest: date | None) -> dict[str, CampaignIdentity]:
        """Name, DSP and advertiser of each campaign in `ids` on its latest date with data from `earliest` (None:
        any date) to `last`; campaigns without data there are absent."""
        return self.campaign_identities_in_ranges(org_id, ids, [(earliest, last)])[(earliest, last)]

    def campaign_identities_in_ranges(self, org_id: int, ids: Sequence[str],
                                      ranges: Sequence[tuple[date | None, date]]
                                      ) -> dict[tuple[date | None, date], dict[str, CampaignIdentity]]:
        """For each (earliest, last) range (earliest None: any date), what campaign_identities gives for it.

        A campaign's latest date with data up to a range's last day is the range's own when it is not before the
        range's first day, and the campaign has no data in the range when it is. Most campaigns asked about have
        data on a last day, so the last days alone are read first (one read for all the ranges); the ranges' whole
        union is read only for the campaigns and ranges that leaves open.
        """
        distinct = list(dict.fromkeys(ranges))
        found: dict[tuple[date | None, date], dict[str, CampaignIdentity]] = {key: {} for key in distinct}
        if not ids or not distinct:
            return found
        open_ids = {key: set(ids) for key in distinct}
        lasts = sorted({last for _, last in distinct})
        for first in (min(lasts), min(earliest or CLICKHOUSE_FIRST_DATE for earliest, _ in distinct)):
            asked = sorted(set().union(*open_ids.values()))
            if not asked:
                break
            seen_by_last: dict[date, dict[str, tuple[date, CampaignIdentity]]] = {last: {} for last in lasts}
            for last_number, entity_id, latest, entity_name, dsp_type, advertiser_id in self._clickhouse.row_tuples(
                    "campaign_identities", org_id=org_id, entity_ids=asked, lasts=lasts, first=first, last=lasts[-1]):
                seen_by_last[lasts[last_number - 1]][entity_id] = (
                    latest, CampaignIdentity(entity_name, dsp_type, advertiser_id))
            for key in distinct:
                earliest, last = key
                range_first = earliest or CLICKHOUSE_FIRST_DATE
                seen, still_open = seen_by_last[last], open_ids[key]
                found[key].update((entity_id, identity) for entity_id, (latest, identity) in seen.items()
                                  if latest >= range_first and entity_id in still_open)
                # A campaign seen has its answer; one not seen has no data from `first` to the last day, which
                # answers the ranges that start there or later.
                open_ids[key] = set() if first <= range_first else still_open.difference(seen)
        return found
