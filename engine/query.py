"""The ClickHouse SQL of one rule run: entity rows over the window, and the evaluation built on them.

Everything here builds text and parameters; nothing runs. Values from a rule travel only as server-side
parameters (`{name:Type}`); identifiers are the fixed field names of engine.fields.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from engine.compiler import CompiledLogic
from engine.evaluation_document import ENTITY_TYPE_KEY, document_sql, holds_entity_type, restated_document_sql
from engine.fields import CAMPAIGN_METRICS, FRESH, PACING_SNAPSHOTS, PREVIOUS_PREFIX
from engine.sql_text import quote_identifier, quote_string
from engine.timestamps import utc_sql, utc_sql_milliseconds
from engine.windows import WindowBounds

ENTITY_ID = "__entity_id"
ENTITY_TYPE = "__entity_type"

_CAMPAIGN_COUNTERS = ("impressions", "clicks", "conversions", "spend")
_CAMPAIGN_ATTRIBUTES = ("campaign_name", "advertiser_id", "dsp_type")
_PACING_NUMBERS = ("booked_amount", "delivered_amount", "pacing_rate", "days_elapsed", "days_remaining",
                   "projected_spend", "margin_percent")


@dataclass(frozen=True)
class Statement:
    """SQL text and the server-side parameters it references."""

    sql: str
    parameters: dict[str, Any]


def entity_rows(source: str, org_id: int, bounds: WindowBounds, scope: Mapping[str, Sequence[str]] | None,
                with_previous: bool, fields: Collection[str] | None = None,
                behind: Sequence[tuple[str, str]] = ()) -> Statement:
    """One row per entity of the rule's organization with data in the window (or the previous period).

    Columns: `__entity_id`, `__entity_type`, then each field of engine.fields named in `fields` (None: every one,
    with `prev.<field>` too when `with_previous`) under its own name, numbers as Float64, text as String and
    Booleans as Bool. Leaving out the fields a rule does not read spares ClickHouse their aggregation. A
    campaign is `fresh` unless its (dsp_type, advertiser_id) is one of `behind`, the accounts behind.
    """
    parameters: dict[str, Any] = {"r_org": org_id}
    filters = ["org_id = {r_org:UInt32}"]
    for index, (column, values) in enumerate(sorted((scope or {}).items())):
        parameters[f"r_scope{index}"] = list(values)
        filters.append(f"{quote_identifier(column)} IN {{r_scope{index}:Array(String)}}")
    if source == CAMPAIGN_METRICS:
        builder = _campaign_rows
    elif source == PACING_SNAPSHOTS:
        builder = _pacing_rows
    else:
        raise ValueError(f"unknown source {source!r}")
    key_columns, all_fields, inner, group_by = builder(parameters, filters, bounds, with_previous)
    if source == CAMPAIGN_METRICS and (fields is None or FRESH in fields):
        all_fields[FRESH] = fresh_sql(parameters, "r_behind", behind, all_fields["dsp_type"],
                                      all_fields["advertiser_id"])
    wanted = all_fields if fields is None else {name: all_fields[name] for name in fields if name in all_fields}
    columns = [*key_columns, *(f"{expression} AS {quote_identifier(name)}" for name, expression in wanted.items())]
    return Statement(f"SELECT {', '.join(columns)} FROM ({inner}) GROUP BY {group_by}", parameters)


def fresh_sql(parameters: dict[str, Any], name: str, behind: Sequence[tuple[str, str]], dsp_type_sql: str,
              advertiser_id_sql: str) -> str:
    """The Bool SQL of `fresh`: the campaign's account, (`dsp_type_sql`, `advertiser_id_sql`), is not one of
    `behind`, which travel as the parameters `<name>_types` and `<name>_ids` (added to `parameters`)."""
    parameters[f"{name}_types"] = [dsp_type for dsp_type, _ in behind]
    parameters[f"{name}_ids"] = [account for _, account in behind]
    return (f"toBool(NOT has(arrayZip({{{name}_types:Array(String)}}, {{{name}_ids:Array(String)}}), "
            f"tuple({dsp_type_sql}, {advertiser_id_sql})))")


def _sides(with_previous: bool) -> list[tuple[str, str | None]]:
    """(field-name prefix, condition selecting that side's rows): the window, then the previous period.

    Without a previous period every row read is in the window, so the window's condition is None and its fields
    are plain aggregates rather than their -If forms, which ClickHouse computes faster.
    """
    if not with_previous:
        return [("", None)]
    return [("", "in_window"), (PREVIOUS_PREFIX, "NOT in_window")]


def _aggregate(function: str, arguments: str, side: str | None) -> str:
    """`function(arguments)` over the rows of one side: its -If form unless the side is every row."""
    return f"{function}({arguments})" if side is None else f"{function}If({arguments}, {side})"


def _campaign_rows(parameters: dict[str, Any], filters: list[str], bounds: WindowBounds,
                   with_previous: bool) -> tuple[list[str], dict[str, str], str, str]:
    parameters["r_last"] = bounds.last
    filters.append("date <= {r_last:Date}")
    earliest = bounds.previous_first if with_previous else bounds.first
    if earliest is not None:
        parameters["r_earliest"] = earliest
        filters.append("date >= {r_earliest:Date}")
    # Raw columns are renamed (m_*) so that no output alias can shadow the column it is computed from, and each
    # field is a self-contained expression (ClickHouse computes a repeated aggregate once).
    fields: dict[str, str] = {}
    for prefix, side in _sides(with_previous):
        def total(counter: str) -> str:
            return f"toFloat64({_aggregate('sum', f'm_{counter}', side)})"

        def ratio(numerator: str, denominator: str, scale: str = "") -> str:
            return f"if({total(denominator)} = 0, 0, {total(numerator)}{scale} / {total(denominator)})"

        fields[prefix + "campaign_id"] = f"if(countIf({side}) > 0, m_campaign_id, '')" if prefix else "m_campaign_id"
        for attribute in _CAMPAIGN_ATTRIBUTES:
            # The latest date with data on this side; for the window, else the previous period's.
            latest = _aggregate("argMax", f"m_{attribute}, m_date", side)
            fields[prefix + attribute] = (
                f"if(countIf(in_window) > 0, {latest}, argMax(m_{attribute}, m_date))" if side == "in_window"
                else latest
            )
        for counter in _CAMPAIGN_COUNTERS:
            fields[prefix + counter] = total(counter)
        fields[prefix + "cpm"] = ratio("spend", "impressions", " * 1000")
        fields[prefix + "ctr"] = ratio("clicks", "impressions")
        fields[prefix + "cvr"] = ratio("conversions", "clicks")
        fields[prefix + "days"] = f"toFloat64({_aggregate('uniqExact', 'm_date', side)})"
    raw = ", ".join(f"{name} AS m_{name}" for name in ("date", "campaign_id", *_CAMPAIGN_COUNTERS))
    raw += ", " + ", ".join(f"toString({name}) AS m_{name}" for name in _CAMPAIGN_ATTRIBUTES)
    if with_previous:
        parameters["r_first"] = bounds.first
        raw += ", date >= {r_first:Date} AS in_window"
    inner = f"SELECT {raw} FROM campaign_metrics_daily WHERE {' AND '.join(filters)}"
    keys = [f"m_campaign_id AS {quote_identifier(ENTITY_ID)}", f"'campaign' AS {quote_identifier(ENTITY_TYPE)}"]
    return keys, fields, inner, "m_campaign_id"


def _pacing_rows(parameters: dict[str, Any], filters: list[str], bounds: WindowBounds,
                 with_previous: bool) -> tuple[list[str], dict[str, str], str, str]:
    parameters["r_end"] = utc_sql(bounds.utc_end)
    filters.append("snapshot_time < {r_end:DateTime('UTC')}")
    earliest = bounds.previous_utc_start if with_previous else bounds.utc_start
    if earliest is not None:
        parameters["r_earliest"] = utc_sql(earliest)
        filters.append("snapshot_time >= {r_earliest:DateTime('UTC')}")
    fields: dict[str, str] = {}
    for prefix, side in _sides(with_previous):
        def when_present(value: str, empty: str) -> str:
            return value if side is None else f"if(countIf({side}) > 0, {value}, {empty})"

        # The identity is the entity's own on both sides, also on a side without a snapshot (README, Fields).
        fields[prefix + "entity_type"] = "m_entity_type"
        fields[prefix + "entity_id"] = "m_entity_id"
        for number in _PACING_NUMBERS:
            fields[prefix + number] = f"toFloat64({_aggregate('argMax', f'm_{number}, m_snapshot_time', side)})"
        latest = _aggregate("max", "m_snapshot_time", side)
        fields[prefix + "snapshot_time"] = when_present(f"formatDateTime({latest}, '%Y-%m-%d %H:%i:%S', 'UTC')", "''")
    raw = ", ".join(f"{name} AS m_{name}" for name in ("snapshot_time", "entity_id", *_PACING_NUMBERS))
    raw += ", toString(entity_type) AS m_entity_type"
    if with_previous:
        parameters["r_start"] = utc_sql(bounds.utc_start)
        raw += ", snapshot_time >= {r_start:DateTime('UTC')} AS in_window"
    inner = f"SELECT {raw} FROM pacing_snapshots WHERE {' AND '.join(filters)}"
    keys = [f"m_entity_id AS {quote_identifier(ENTITY_ID)}", f"m_entity_type AS {quote_identifier(ENTITY_TYPE)}"]
    return keys, fields, inner, "m_entity_type, m_entity_id"


def read_fields(compiled: CompiledLogic, recover: CompiledLogic | None) -> tuple[str, ...]:
    """The fields a rule's evaluation reads: those of its logic, then those only its recover_when reads."""
    extra = () if recover is None else tuple(name for name in recover.variables if name not in compiled.variables)
    return (*compiled.variables, *extra)


def evaluation(entities: Statement, compiled: CompiledLogic, source: str,
               recover: CompiledLogic | None = None) -> Statement:
    """SELECT of `__entity_id`, `matched` (0/1) and `condition_results` (JSON text) for every entity; `recover` is
    the rule's recover_when compiled (with its own parameter prefix), whose outcome the document then holds."""
    document = document_sql(compiled.variables, compiled.conditions, ENTITY_TYPE if holds_entity_type(source) else None,
                            compiled.naming, recover_when_sql=None if recover is None else recover.matched)
    sql = (
        f"SELECT {quote_identifier(ENTITY_ID)} AS entity_id, toUInt8({compiled.matched}) AS matched, "
        f"{document} AS condition_results FROM ({entities.sql})"
    )
    return Statement(sql, {**entities.parameters, **compiled.parameters, **(recover.parameters if recover else {})})


def evaluation_insert(entities: Statement, compiled: CompiledLogic, source: str, *,
                      org_id: int, rule_id: str, eval_time: datetime, started_at: datetime,
                      recover: CompiledLogic | None = None, restating: datetime | None = None) -> Statement:
    """INSERT ... SELECT writing one `rule_evaluations` row per entity, evaluated by ClickHouse itself.

    `execution_time_ms` is the time from `started_at` (the run's start) until ClickHouse evaluates the rows.
    With `restating` (a recheck: the eval_time of the first run's rows), the document of each entity whose
    verdict differs from the first run's is marked restated; an entity the first run did not evaluate did not match.
    """
    inner = evaluation(entities, compiled, source, recover)
    if restating is not None:
        inner = Statement(_restated_rows(inner.sql), {**inner.parameters, "r_first_eval_time": utc_sql(restating)})
    sql = (
        "INSERT INTO rule_evaluations (org_id, eval_time, rule_id, entity_id, matched, condition_results, "
        "execution_time_ms) SELECT {r_org:UInt32}, {r_eval_time:DateTime('UTC')}, {r_rule:UUID}, entity_id, matched, "
        "condition_results, toUInt32(greatest(0, dateDiff('millisecond', {r_started:DateTime64(3, 'UTC')}, "
        f"now64(3, 'UTC')))) FROM ({inner.sql})"
    )
    parameters = {**inner.parameters, "r_eval_time": utc_sql(eval_time), "r_rule": rule_id,
                  "r_started": utc_sql_milliseconds(started_at)}
    return Statement(sql, parameters)


def _restated_rows(evaluation_sql: str) -> str:
    """The rows of `evaluation_sql` joined with the first run's rows of the rule (eval_time {r_first_eval_time}),
    each entity by its id and type, documents marked restated where the verdicts differ."""
    entity_type = f"JSONExtractString(condition_results, {quote_string(ENTITY_TYPE_KEY)})"
    document = "recheck.condition_results"
    return (
        f"SELECT recheck.entity_id AS entity_id, recheck.matched AS matched, "
        f"if(recheck.matched != ifNull(first_run.matched, 0), {restated_document_sql(document)}, {document}) "
        f"AS condition_results "
        f"FROM (SELECT entity_id, matched, condition_results, {entity_type} AS entity_type "
        f"FROM ({evaluation_sql})) AS recheck "
        f"LEFT JOIN (SELECT entity_id, matched, {entity_type} AS entity_type FROM rule_evaluations "
        "WHERE org_id = {r_org:UInt32} AND eval_time = {r_first_eval_time:DateTime('UTC')} "
        "AND rule_id = {r_rule:UUID}) AS first_run "
        "ON recheck.entity_id = first_run.entity_id AND recheck.entity_type = first_run.entity_type"
    )
