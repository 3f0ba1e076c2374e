"""What a run reads and writes in ClickHouse: its entity rows, `rule_evaluations`, `alert_events`, campaign names.

Every statement is limited to one run's organization; the rows of a run are those of (org, rule, T), which is
also what a stage deletes before it is written again.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

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


@dataclass(frozen=True)
class Evaluation:
    """One entity's evaluation: whether it matched and its `condition_results` document (JSON text)."""

    entity_id: str
    matched: bool
    condition_results: str


@dataclass(frozen=True)
class Outcome:
    """What a run's `rule_evaluations` rows say: how many entities, and the matched ones ordered by entity id."""

    entities: int
    matched: list[Evaluation]


@dataclass(frozen=True)
class CampaignIdentity:
    """A campaign's name, DSP and advertiser, as of its latest date with data."""

    entity_name: str
    dsp_type: str
    advertiser_id: str


@dataclass(frozen=True)
class AlertEvent:
    """One `alert_events` row of a run, less what the run itself gives (org, T, rule, name, severity)."""

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
        row = self._clickhouse.rows("evaluation_outcome", **_keys(scope, "eval_time"))[0]
        return Outcome(int(row["entities"]),
                       [Evaluation(entity_id, True, results) for entity_id, results in row["matched"]])

    def delete_evaluations(self, scope: RunScope) -> None:
        """Deletes the run's `rule_evaluations` rows, whatever an earlier attempt wrote of them."""
        self._clickhouse.command_named("delete_evaluations", **_keys(scope, "eval_time"))

    def delete_alerts(self, scope: RunScope) -> None:
        """Deletes the run's `alert_events` rows, whatever an earlier attempt wrote of them."""
        self._clickhouse.command_named("delete_alerts", **_keys(scope, "alert_time"))

    def insert_alerts(self, scope: RunScope, rule_name: str, severity: str, alerts: Sequence[AlertEvent]) -> None:
        """Writes one `alert_events` row per alert (none: nothing is sent to ClickHouse)."""
        if not alerts:
            return
        alert_time = scope.at.replace(tzinfo=None)
        self._clickhouse.insert("alert_events", [
            [scope.org_id, alert_time, scope.rule_id, rule_name, severity, alert.entity_type, alert.entity_id,
             alert.entity_name, alert.condition_details, alert.notified_users] for alert in alerts
        ], _ALERT_COLUMNS)

    def alerted_since(self, scope: RunScope, since: datetime, entity_ids: Sequence[str]) -> set[tuple[str, str]]:
        """The (entity_type, entity_id) among `entity_ids` with an alert of the rule from `since` until before T."""
        return {
            (row["entity_type"], row["entity_id"])
            for row in self._clickhouse.rows("alerts_in_cooldown", org_id=scope.org_id, rule_id=scope.rule_id,
                                             since=utc_sql(since), until=utc_sql(scope.at),
                                             entity_ids=list(entity_ids))
        }

    def campaign_identities(self, org_id: int, ids: Sequence[str], last: date,
                            earliest: date | None) -> dict[str, CampaignIdentity]:
        """Name, DSP and advertiser of each campaign in `ids` on its latest date with data from `earliest` (None:
        any date) to `last`; campaigns without data there are absent.

        Most campaigns a run asks about have data on `last`, so that day alone is read first; the whole range is
        read only for the campaigns it does not have.
        """
        if not ids:
            return {}
        found = self._identities(org_id, ids, last, last)
        missing = [entity_id for entity_id in ids if entity_id not in found]
        if missing:
            found.update(self._identities(org_id, missing, earliest or CLICKHOUSE_FIRST_DATE, last))
        return found

    def _identities(self, org_id: int, ids: Sequence[str], first: date, last: date) -> dict[str, CampaignIdentity]:
        return {row["entity_id"]: CampaignIdentity(row["entity_name"], row["dsp_type"], row["advertiser_id"])
                for row in self._clickhouse.rows("campaign_identities", org_id=org_id, entity_ids=list(ids),
                                                 first=first, last=last)}
