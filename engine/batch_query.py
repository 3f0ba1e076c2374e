"""The ClickHouse SQL of a batch: the rules of one organization and one source, evaluated as of one T in one scan.

Each rule's rows are exactly those its own statement of engine.query writes. The batch reads the union of its
rules' windows and previous periods once, cut into disjoint slices at every boundary of them (local dates for
`campaign_metrics_daily`, half-open UTC intervals of `snapshot_time` for `pacing_snapshots`; the earliest slice is
unbounded below when a rule reads `lifetime`). One GROUP BY entity keeps partial aggregates per (slice, scope
group), a scope group being the rules with the same `scope`, whose condition is folded into the aggregates'
conditions. Each rule's fields are then assembled from its slices:

- sums add (exact UInt64 and Decimal sums first, then `toFloat64`, as one rule's statement does), and the ratios
  are recomputed from them;
- `days` adds the dates with data of each slice (a bitmap of days for slices of up to 64 days, else uniqExact;
  the slices are disjoint, so the sum is exact);
- the latest name, advertiser, DSP or snapshot is that of the latest slice with data, kept only where a rule
  reads it; a campaign's text attributes of short slices come from a second scan of those slices' dates alone,
  joined by campaign, so that the main scan reads only numbers.

Each rule's logic is compiled against its own assembled columns (`batch_member`), and one arrayJoin over the
rules' (rule, present, matched, condition_results) tuples gives one row per rule and entity that has rows in that
rule's window or previous period within its scope.

What limits a batch: the statement's text (ClickHouse parses at most `max_query_size`, 256 KiB by default, and
that setting cannot be raised from inside the statement; each rule adds its compiled logic, its document and its
assembled columns, about 1-3 KiB for a typical rule and up to some 70 KiB for the largest logic the compiler
accepts), its parameters (they travel in the request's URL: the embedded server reads a request line of at most
64 KiB, ClickHouse's server 1 MiB; scope lists are the large ones) and its aggregate columns (every entity holds
one state per aggregate in memory during the GROUP BY, 8 to some 40 bytes each). The AST limits
(`max_ast_elements`) are raised in the statement's own SETTINGS, since the text size already bounds them.
`split_batch` cuts a batch into statements within all of these.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable

from engine.compiler import CompiledLogic, compile_logic
from engine.evaluation_document import document_sql, holds_entity_type
from engine.fields import CAMPAIGN_METRICS, FRESH, PACING_SNAPSHOTS, PREVIOUS_PREFIX, field_types
from engine.query import ENTITY_ID, ENTITY_TYPE, Statement, fresh_sql, read_fields
from engine.sql_text import quote_identifier
from engine.timestamps import utc_sql, utc_sql_milliseconds
from engine.windows import WindowBounds

__all__ = ["MAX_BATCH_AGGREGATES", "MAX_BATCH_RULES", "MAX_PARAMETER_BYTES", "MAX_STATEMENT_BYTES", "BatchMember",
           "batch_aggregation", "batch_evaluation", "batch_evaluation_insert", "batch_member", "split_batch"]

# 100 rules like the load bench's (about 400 bytes of statement each) make some 40 KiB, well within the text cap.
# More would gain little (the scan is shared already; each rule's logic and rows are its own work, and ClickHouse's
# analysis of a statement grows faster than its rules) while one faulty rule sends every rule of its batch back to
# separate runs. Fewer cost more: each batch pays its claims, reads and transitions (README, Performance).
MAX_BATCH_RULES = 100
# ClickHouse's default max_query_size.
MAX_STATEMENT_BYTES = 256 * 1024
# URL-encoded, with room left in the embedded server's 64 KiB request line for the settings and the rest.
MAX_PARAMETER_BYTES = 48 * 1024
# 256 states of 8 to some 40 bytes are 2 to 10 KiB per entity, 0.2 to 1 GB at 100,000 entities; the bench's 10
# rules need 21.
MAX_BATCH_AGGREGATES = 256

_AST_LIMIT = 8 * MAX_STATEMENT_BYTES
_INSERT_BLOCK_ROWS = 262144
_BITMAP_DAYS = 64
_DAY = timedelta(days=1)

_COUNTERS = ("impressions", "clicks", "conversions", "spend")
_CAMPAIGN_ATTRIBUTES = ("campaign_name", "advertiser_id", "dsp_type")
# Ratio field: (numerator, denominator, scale), as engine.query computes it.
_RATIOS = {"cpm": ("spend", "impressions", " * 1000"), "ctr": ("clicks", "impressions", ""),
           "cvr": ("conversions", "clicks", "")}
_PACING_NUMBERS = ("booked_amount", "delivered_amount", "pacing_rate", "days_elapsed", "days_remaining",
                   "projected_spend", "margin_percent")
_PRESENT = "__present"

_Interval = tuple[Any, Any]  # [start, end); a start of None is unbounded below


@dataclass(frozen=True)
class BatchMember:
    """One rule of a batch: its id (a UUID as text), its logic compiled by `batch_member` for its `position`, its
    window and scope, whether it compares to the previous period, and the accounts behind (its `fresh`)."""

    position: int
    rule_id: str
    compiled: CompiledLogic
    bounds: WindowBounds
    scope: Mapping[str, Sequence[str]] | None
    with_previous: bool
    behind: tuple[tuple[str, str], ...] = ()
    recover: CompiledLogic | None = None  # its recover_when, if any, compiled likewise


def batch_member(position: int, rule_id: str, source: str, logic: Any, bounds: WindowBounds,
                 scope: Mapping[str, Sequence[str]] | None, with_previous: bool,
                 behind: Sequence[tuple[str, str]] = (), recover_when: Any = None) -> BatchMember:
    """The member at `position` (a number no other member of its batch has) of a rule over `source`.

    Its logic (and its recover_when, if any) is compiled as compile_logic would over that source's fields, but
    reading the member's own columns and naming its parameters after its position. Raises NotCompilable as
    compile_logic does (also when only these longer names take a logic past the compiler's size limit): such a
    rule runs alone.
    """
    if position < 0:
        raise ValueError(f"a member position is not negative, got {position}")
    fields = field_types(source, with_previous)
    compiled = compile_logic(logic, fields, column=_member_column(position), parameter_prefix=f"r{position}_p")
    recover = None if recover_when is None else compile_logic(
        recover_when, fields, column=_member_column(position), parameter_prefix=f"r{position}_w")
    return BatchMember(position, rule_id, compiled, bounds, scope, with_previous, tuple(behind), recover)


def batch_evaluation(source: str, org_id: int, members: Sequence[BatchMember]) -> Statement:
    """SELECT of `rule_id` (the member's rule id as text, lowercase), `entity_id`, `matched` (0/1) and
    `condition_results`: for every member, the rows engine.query.evaluation gives for that rule alone."""
    plan = _Plan(source, org_id, members)
    sql = (f"SELECT toString(rule_id) AS rule_id, entity_id, matched, condition_results FROM ({plan.sql}) "
           f"SETTINGS {_settings()}")
    return Statement(sql, plan.parameters)


def batch_evaluation_insert(source: str, org_id: int, members: Sequence[BatchMember], *, eval_time: datetime,
                            started_at: datetime) -> Statement:
    """INSERT ... SELECT writing, for every member, the `rule_evaluations` rows that
    engine.query.evaluation_insert writes for that rule alone, with `eval_time`.

    `execution_time_ms` is the time from `started_at` (the batch's start) until ClickHouse evaluates the rows.
    """
    plan = _Plan(source, org_id, members)
    sql = (
        "INSERT INTO rule_evaluations (org_id, eval_time, rule_id, entity_id, matched, condition_results, "
        "execution_time_ms) SELECT {b_org:UInt32}, {b_eval_time:DateTime('UTC')}, rule_id, entity_id, matched, "
        "condition_results, toUInt32(greatest(0, dateDiff('millisecond', {b_started:DateTime64(3, 'UTC')}, "
        f"now64(3, 'UTC')))) FROM ({plan.sql}) SETTINGS {_settings()}, "
        f"min_insert_block_size_rows = {_INSERT_BLOCK_ROWS}, max_insert_block_size = {_INSERT_BLOCK_ROWS}"
    )
    parameters = {**plan.parameters, "b_eval_time": utc_sql(eval_time),
                  "b_started": utc_sql_milliseconds(started_at)}
    return Statement(sql, parameters)


def batch_aggregation(source: str, org_id: int, members: Sequence[BatchMember]) -> Statement:
    """SELECT of `entities`: how many entities the batch's one scan groups, with every partial aggregate its
    members read computed and discarded (`ignore`); no rule's logic, nothing written: the floor of its cost."""
    plan = _Plan(source, org_id, members)
    sql = f"SELECT count() AS entities FROM ({plan._grouped()}) WHERE NOT ignore(*) SETTINGS {_settings()}"
    return Statement(sql, plan.parameters)


def split_batch(source: str, members: Sequence[BatchMember]) -> list[list[BatchMember]]:
    """`members` in batches of at most MAX_BATCH_RULES whose statements each stay within MAX_STATEMENT_BYTES of
    text, MAX_PARAMETER_BYTES of parameters and MAX_BATCH_AGGREGATES aggregates; a member too large by itself is a
    batch of its own. Members with the same scope and window are kept together, where they share the most."""
    ordered = sorted(members, key=lambda member: (_scope_key(member.scope), _sides(source, member)[0][1],
                                                  member.position))
    batches: list[list[BatchMember]] = []
    for start in range(0, len(ordered), MAX_BATCH_RULES):
        batches += _fitting(source, ordered[start:start + MAX_BATCH_RULES])
    return batches


def _fitting(source: str, members: list[BatchMember]) -> list[list[BatchMember]]:
    if len(members) <= 1:
        return [members] if members else []
    # The organization changes only a parameter's value.
    plan = _Plan(source, 0, members)
    # The insert's text is the SELECT's and a fixed wrapper (under 1 KiB).
    if (len(plan.sql.encode()) + 1024 <= MAX_STATEMENT_BYTES and plan.aggregate_count <= MAX_BATCH_AGGREGATES
            and _parameter_bytes(plan.parameters) <= MAX_PARAMETER_BYTES):
        return [members]
    half = len(members) // 2
    return _fitting(source, members[:half]) + _fitting(source, members[half:])


def _parameter_bytes(parameters: Mapping[str, Any]) -> int:
    """An upper bound of the parameters' size in a URL: every byte percent-encoded, and room for each value's
    quotes and separators."""
    total = 0
    for name, value in parameters.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        total += len(name) + 8 + sum(3 * len(str(element).encode()) + 12 for element in values)
    return total


def _settings() -> str:
    # A campaign without rows on the joined side gets the empty text its own aggregate gives, whatever the
    # server's join_use_nulls.
    return f"max_ast_elements = {_AST_LIMIT}, max_expanded_ast_elements = {_AST_LIMIT}, join_use_nulls = 0"


def _member_column(position: int) -> Callable[[str], str]:
    """The backquoted column holding a field of the member at `position`."""
    return lambda field: quote_identifier(f"r{position}.{field}")


def _scope_key(scope: Mapping[str, Sequence[str]] | None) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """A scope in a canonical form: equal keys filter the same rows (IN ignores order and repeats)."""
    return tuple(sorted((column, tuple(sorted(set(values)))) for column, values in (scope or {}).items()))


def _sides(source: str, member: BatchMember) -> tuple[_Interval, _Interval | None]:
    """The member's window and previous period (None without compare_to) as half-open intervals of the source's
    time column: local dates for daily metrics, UTC instants for snapshots."""
    bounds = member.bounds
    if member.with_previous and bounds.previous_last is None:
        raise ValueError(f"rule {member.rule_id} compares to a previous period its bounds do not have")
    if source == CAMPAIGN_METRICS:
        window = (bounds.first, bounds.last + _DAY)
        previous = (bounds.previous_first, bounds.previous_last + _DAY) if member.with_previous else None
    elif source == PACING_SNAPSHOTS:
        window = (bounds.utc_start, bounds.utc_end)
        previous = (bounds.previous_utc_start, bounds.previous_utc_end) if member.with_previous else None
    else:
        raise ValueError(f"unknown source {source!r}")
    return window, previous


class _Slicing:
    """Disjoint slices of the time column cut at every start and end of `intervals`, in time order."""

    def __init__(self, intervals: Sequence[_Interval]) -> None:
        self.points = sorted({point for interval in intervals for point in interval if point is not None})
        unbounded = any(start is None for start, _ in intervals)
        self.slices: list[_Interval] = ([(None, self.points[0])] if unbounded else []) + list(
            zip(self.points, self.points[1:]))
        self.runs = _union(intervals)

    def within(self, interval: _Interval) -> tuple[int, ...]:
        """The numbers of the slices that make up `interval`."""
        start, end = interval
        return tuple(number for number, (first, last) in enumerate(self.slices)
                     if (start is None or (first is not None and first >= start)) and last <= end)


def _union(intervals: Sequence[_Interval]) -> list[_Interval]:
    """The union of `intervals` as disjoint intervals in time order."""
    runs: list[list[Any]] = []
    for start, end in sorted(intervals, key=lambda interval: (interval[0] is not None, interval[0] or 0)):
        if runs and (start is None or start <= runs[-1][1]):
            runs[-1][1] = max(runs[-1][1], end)
        else:
            runs.append([start, end])
    return [(start, end) for start, end in runs]


class _Plan:
    """The SELECT of (rule_id UUID, entity_id, matched, condition_results) for a batch, and its parameters."""

    def __init__(self, source: str, org_id: int, members: Sequence[BatchMember]) -> None:
        if not members:
            raise ValueError("a batch has at least one rule")
        positions = [member.position for member in members]
        if len(set(positions)) != len(positions):
            raise ValueError(f"the members of a batch have distinct positions, got {sorted(positions)}")
        if source == CAMPAIGN_METRICS:
            self._time, self._time_type, self._table = "date", "Date", "campaign_metrics_daily"
        elif source == PACING_SNAPSHOTS:
            self._time, self._time_type, self._table = "snapshot_time", "DateTime('UTC')", "pacing_snapshots"
        else:
            raise ValueError(f"unknown source {source!r}")
        self.source = source
        self.parameters: dict[str, Any] = {"b_org": org_id}
        sides = [_sides(source, member) for member in members]
        self._slicing = _Slicing([interval for window, previous in sides for interval in (window, previous)
                                  if interval is not None])
        self._point_names = {point: f"b_t{index}" for index, point in enumerate(self._slicing.points)}
        for point, name in self._point_names.items():
            self.parameters[name] = point if source == CAMPAIGN_METRICS else utc_sql(point)
        groups: dict[tuple, int] = {}
        for member in members:
            groups.setdefault(_scope_key(member.scope), len(groups))
        self._groups = groups
        # Per scope group, the SQL of its row condition (None: every row).
        self._scope_filters: list[str | None] = []
        for group, scope in enumerate(groups):
            filters = []
            for index, (column, values) in enumerate(scope):
                name = f"b_g{group}_{index}"
                self.parameters[name] = list(values)
                filters.append(f"{quote_identifier(column)} IN {{{name}:Array(String)}}")
            self._scope_filters.append(" AND ".join(filters) or None)
        self._aggregates: dict[tuple[str, str, int, int], str] = {}
        # Members over the same slices read the same field SQL: each distinct one is computed once, and each member's
        # column is a name for it (ClickHouse's analysis of a statement grows faster than its size).
        distinct: dict[str, str] = {}

        def computed(sql: str) -> str:
            return distinct.setdefault(sql, f"__c{len(distinct)}")

        columns, tuples = [], []
        for member, (window, previous) in zip(members, sides):
            group = self._groups[_scope_key(member.scope)]
            assembled = _Assembly(self, group, self._slicing.within(window),
                                  self._slicing.within(previous) if previous else ())
            column = _member_column(member.position)
            known = field_types(source, member.with_previous)
            for field in read_fields(member.compiled, member.recover):
                if field not in known:
                    raise ValueError(f"rule {member.rule_id} reads {field!r}, which is not a field of {source}")
                if field == FRESH:
                    sql = fresh_sql(self.parameters, f"r{member.position}_behind", member.behind,
                                    assembled.field("dsp_type"), assembled.field("advertiser_id"))
                else:
                    sql = assembled.field(field)
                columns.append(f"{computed(sql)} AS {column(field)}")
            columns.append(f"{computed(assembled.present())} AS {column(_PRESENT)}")
            tuples.append(self._outcome(member, column))
            rule_parameter = f"r{member.position}_rule"
            self.parameters[rule_parameter] = member.rule_id
            self.parameters.update(member.compiled.parameters)
            if member.recover is not None:
                self.parameters.update(member.recover.parameters)
        self.aggregate_count = len(self._aggregates)
        keys = f"{quote_identifier(ENTITY_ID)}, {quote_identifier(ENTITY_TYPE)}"
        evaluated = (
            f"SELECT {quote_identifier(ENTITY_ID)} AS entity_id, arrayJoin(arrayFilter(__member -> "
            f"tupleElement(__member, 2), [{', '.join(tuples)}])) AS __evaluation "
            f"FROM (SELECT {keys}, {', '.join(columns)} FROM (SELECT {keys}, "
            f"{', '.join(f'{sql} AS {name}' for sql, name in distinct.items())} FROM ({self._grouped()})))"
        )
        self.sql = (
            "SELECT tupleElement(__evaluation, 1) AS rule_id, entity_id, tupleElement(__evaluation, 3) AS matched, "
            f"tupleElement(__evaluation, 4) AS condition_results FROM ({evaluated})"
        )

    def _outcome(self, member: BatchMember, column: Callable[[str], str]) -> str:
        compiled = member.compiled
        entity_type = ENTITY_TYPE if holds_entity_type(self.source) else None
        document = document_sql(compiled.variables, compiled.conditions, entity_type, compiled.naming, column=column,
                                recover_when_sql=None if member.recover is None else member.recover.matched)
        return (f"tuple({{r{member.position}_rule:UUID}}, {column(_PRESENT)}, toUInt8({compiled.matched}), "
                f"{document})")

    def aggregate(self, kind: str, name: str, slice_number: int, group: int) -> str:
        """The column of one partial aggregate over the rows of a slice within a scope group."""
        key = (kind, name, slice_number, group)
        if key not in self._aggregates:
            self._aggregates[key] = f"a{slice_number}_{group}_{kind}" + (f"_{name}" if name else "")
        return self._aggregates[key]

    def _grouped(self) -> str:
        """One row per entity: its key and every partial aggregate the members asked for.

        The latest name, advertiser or DSP of a few short slices (typically yesterday's) comes from a scan of
        their dates alone, joined by campaign: the text columns are the costliest to read, and the main scan then
        reads only numbers. Both sides read the same rows' slices, so the values are those of one scan.
        """
        aggregates = dict(self._aggregates)
        if self.source == CAMPAIGN_METRICS:
            keys = [f"m_campaign_id AS {quote_identifier(ENTITY_ID)}", f"'campaign' AS {quote_identifier(ENTITY_TYPE)}"]
            group_by = "m_campaign_id"
        else:
            keys = [f"m_entity_id AS {quote_identifier(ENTITY_ID)}", f"m_entity_type AS {quote_identifier(ENTITY_TYPE)}"]
            group_by = "m_entity_type, m_entity_id"
        apart = self._attributes_apart()
        for key in apart:
            del aggregates[key]
        main = self._select_grouped(keys, aggregates, self._slicing.runs, group_by)
        if not apart:
            return main
        entity_id = quote_identifier(ENTITY_ID)
        slices = sorted({key[2] for key in apart})
        attributes = self._select_grouped([f"m_campaign_id AS {entity_id}"], apart,
                                          _union([self._slicing.slices[number] for number in slices]), group_by)
        return f"SELECT * FROM ({main}) AS __numbers ANY LEFT JOIN ({attributes}) AS __latest USING ({entity_id})"

    def _attributes_apart(self) -> dict[tuple[str, str, int, int], str]:
        """The campaign attributes' latest-value aggregates worth a scan of their own: those whose slices cover at
        most a quarter of the days read (none else)."""
        if self.source != CAMPAIGN_METRICS:
            return {}
        latest = {key: name for key, name in self._aggregates.items() if key[0] == "latest"}
        slices = [self._slicing.slices[number] for number in {key[2] for key in latest}]
        if not latest or any(first is None for first, _ in slices):
            return {}
        if any(start is None for start, _ in self._slicing.runs):
            return latest  # the rest of the rows reach back without bound
        apart = sum((last - first).days for first, last in slices)
        read = sum((end - start).days for start, end in self._slicing.runs)
        return latest if 4 * apart <= read else {}

    def _select_grouped(self, keys: list[str], aggregates: Mapping[tuple[str, str, int, int], str],
                        runs: Sequence[_Interval], group_by: str) -> str:
        columns = keys + [f"{self._aggregate_sql(*key)} AS {name}" for key, name in aggregates.items()]
        return f"SELECT {', '.join(columns)} FROM ({self._rows(runs)}) GROUP BY {group_by}"

    def _aggregate_sql(self, kind: str, name: str, slice_number: int, group: int) -> str:
        conditions = []
        if len(self._slicing.slices) > 1:
            conditions.append(f"m_slice = {slice_number}")
        if self._scope_filters[group] is not None:
            conditions.append(f"m_scope{group}")
        condition = " AND ".join(conditions) or None

        def over(function: str, arguments: str) -> str:
            if condition is None:
                return f"{function}({arguments})"
            return f"{function}If({arguments}{', ' if arguments else ''}{condition})"

        if kind == "count":
            return over("count", "")
        if kind == "sum":
            return over("sum", f"m_{name}")
        if kind == "latest":
            return over("argMax", f"m_{name}, m_{self._time}")
        if kind == "last_time":
            return over("max", f"m_{self._time}")
        if kind == "days":
            first, last = self._slicing.slices[slice_number]
            if first is not None and (last - first).days <= _BITMAP_DAYS:
                # The dates of one slice are at most 64 consecutive days: their day numbers modulo 64 differ.
                return f"bitCount({over('groupBitOr', 'm_day_bit')})"
            return over("uniqExact", "m_date")
        raise ValueError(f"unknown aggregate {kind!r}")

    def _rows(self, runs: Sequence[_Interval]) -> str:
        """The rows read: the batch's organization, the disjoint intervals `runs` (made of whole slices); each
        with its slice and, per scoped group, whether it is in that group's scope."""
        time = self._time
        if self.source == CAMPAIGN_METRICS:
            raw = [f"{name} AS m_{name}" for name in ("date", "campaign_id", *_COUNTERS)]
            raw += [f"toString({name}) AS m_{name}" for name in _CAMPAIGN_ATTRIBUTES]
            raw.append(f"bitShiftLeft(toUInt64(1), toUInt16(date) % {_BITMAP_DAYS}) AS m_day_bit")
        else:
            raw = [f"{name} AS m_{name}" for name in ("snapshot_time", "entity_id", *_PACING_NUMBERS)]
            raw.append("toString(entity_type) AS m_entity_type")
        if len(self._slicing.slices) > 1:
            branches = [f"{time} < {self._point(end)}, {number}"
                        for number, (_, end) in enumerate(self._slicing.slices[:-1])]
            raw.append(f"multiIf({', '.join(branches)}, {len(self._slicing.slices) - 1}) AS m_slice")
        scoped = []
        for group, scope_filter in enumerate(self._scope_filters):
            if scope_filter is not None:
                raw.append(f"({scope_filter}) AS m_scope{group}")
                scoped.append(f"m_scope{group}")
        ranges = []
        for start, end in runs:
            bounded = f"{time} < {self._point(end)}"
            ranges.append(bounded if start is None else f"({time} >= {self._point(start)} AND {bounded})")
        filters = ["org_id = {b_org:UInt32}", f"({' OR '.join(ranges)})"]
        if len(scoped) == len(self._scope_filters):
            # Every rule is scoped: a row outside all their scopes is read by none.
            filters.append(f"({' OR '.join(scoped)})")
        return f"SELECT {', '.join(raw)} FROM {self._table} WHERE {' AND '.join(filters)}"

    def _point(self, point: Any) -> str:
        return f"{{{self._point_names[point]}:{self._time_type}}}"


class _Assembly:
    """The SQL of one member's fields from the partial aggregates of its scope group and slices."""

    def __init__(self, plan: _Plan, group: int, window: tuple[int, ...], previous: tuple[int, ...]) -> None:
        self._plan, self._group = plan, group
        self._window, self._previous = window, previous

    def _column(self, kind: str, name: str, slice_number: int) -> str:
        return self._plan.aggregate(kind, name, slice_number, self._group)

    def _sum(self, kind: str, name: str, slices: tuple[int, ...]) -> str:
        return " + ".join(self._column(kind, name, number) for number in slices)

    def _has_rows(self, slices: tuple[int, ...]) -> str:
        return f"({self._sum('count', '', slices)}) > 0"

    def _latest(self, kind: str, name: str, slices: tuple[int, ...]) -> str:
        """The value of the latest slice with rows among `slices` (the first slice's, empty, when none has)."""
        latest_first = sorted(slices, reverse=True)
        branches = [f"{self._column('count', '', number)} > 0, {self._column(kind, name, number)}"
                    for number in latest_first[:-1]]
        last = self._column(kind, name, latest_first[-1])
        return f"multiIf({', '.join(branches)}, {last})" if branches else last

    def present(self) -> str:
        """UInt8: whether the entity has rows in the member's window or previous period, within its scope."""
        return self._has_rows(self._window + self._previous)

    def field(self, field: str) -> str:
        """The SQL of `field` (`prev.` for the previous period), typed as engine.query types it."""
        is_previous = field.startswith(PREVIOUS_PREFIX)
        name = field[len(PREVIOUS_PREFIX):] if is_previous else field
        slices = self._previous if is_previous else self._window
        if self._plan.source == CAMPAIGN_METRICS:
            return self._campaign_field(name, is_previous, slices)
        return self._pacing_field(name, slices)

    def _campaign_field(self, name: str, is_previous: bool, slices: tuple[int, ...]) -> str:
        entity_id = quote_identifier(ENTITY_ID)
        if name == "campaign_id":
            return f"if({self._has_rows(slices)}, {entity_id}, '')" if is_previous else entity_id
        if name in _CAMPAIGN_ATTRIBUTES:
            # The window's latest date with data, else (with compare_to) the previous period's.
            return self._latest("latest", name, slices if is_previous else self._previous + self._window)
        if name in _COUNTERS:
            return self._total(name, slices)
        if name in _RATIOS:
            numerator, denominator, scale = _RATIOS[name]
            total = self._total(denominator, slices)
            return f"if({total} = 0, 0, {self._total(numerator, slices)}{scale} / {total})"
        if name == "days":
            return f"toFloat64({self._sum('days', '', slices)})"
        raise ValueError(f"unknown field {name!r}")

    def _total(self, counter: str, slices: tuple[int, ...]) -> str:
        return f"toFloat64({self._sum('sum', counter, slices)})"

    def _pacing_field(self, name: str, slices: tuple[int, ...]) -> str:
        # The identity is the entity's own on both sides, also on a side without a snapshot (README, Fields).
        if name == "entity_type":
            return quote_identifier(ENTITY_TYPE)
        if name == "entity_id":
            return quote_identifier(ENTITY_ID)
        if name in _PACING_NUMBERS:
            return f"toFloat64({self._latest('latest', name, slices)})"
        if name == "snapshot_time":
            latest = self._latest("last_time", "", slices)
            return f"if({self._has_rows(slices)}, formatDateTime({latest}, '%Y-%m-%d %H:%i:%S', 'UTC'), '')"
        raise ValueError(f"unknown field {name!r}")
