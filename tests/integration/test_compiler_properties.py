"""Property: for generated rules and entity rows, ClickHouse's verdict on the compiled SQL is the interpreter's.

Rules are trees of the compilable operators over the campaign fields (with `prev.`) and literals; rows mix
ordinary values with zeros, empty text, huge, tiny and negative numbers, NaN and infinities, and text that looks
like numbers. Each generated rule runs as one query over a table of fixed rows plus the rows drawn for it.
"""

from __future__ import annotations

import itertools
import math
import random
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from engine.compiler import compile_logic
from engine.compiler.compilation import Compilation
from engine.errors import NotCompilable
from engine.fields import CAMPAIGN_METRICS, FieldType, field_types
from engine.interpreter import evaluate_row, truthy

# The generated rows hold numbers and text; the Boolean `fresh` is compared across paths in test_freshness.py.
FIELDS = {name: kind for name, kind in field_types(CAMPAIGN_METRICS, with_previous=True).items()
          if kind is not FieldType.BOOLEAN}
NUMBER_FIELDS = sorted(name for name, kind in FIELDS.items() if kind is FieldType.NUMBER)
TEXT_FIELDS = sorted(name for name, kind in FIELDS.items() if kind is FieldType.STRING)
COLUMNS = sorted(FIELDS)
PLACEHOLDER = re.compile(r"\{(p[0-9]+):[^{}]+\}")

TRICKY_NUMBERS = [
    0.0, -0.0, 1.0, -1.0, 0.5, 2.0, 3.0, 7.0, 10.0, 12.0, 16.0, 100.0, 1000.0, 0.001, 0.1, 0.3, 1e-7, 5e-324,
    123456.789, -42.25, 2.0**53, 2.0**53 + 2, 2.0**63, 1e21, 1e300, -1e300, 1.7976931348623157e308,
    math.inf, -math.inf, math.nan,
]
TRICKY_TEXTS = [
    "", "0", "1", "-0", "1e3", " 5 ", "5", "12", "0.1", "-1.5", ".5", "5.", "+7", "1e400", "NaN", "Infinity",
    "-Infinity", "infinity", "0x10", "0X1f", "0b101", "0o17", "0x", "1_000", "12abc", "abc", "ABC", "a", "b",
    "US_spring", "Spring", "null", "true", "false", "é", "😀", "\uff5e", "a\nb", "\t7\n", "\u00a0 8 \u3000",
    "DV360", "TTD", "c-9", "adv-1", "{p0:String}", "it's", 'say "hi"', "back\\slash", "-- comment",
    "0x1fffffffffffff1", "x😀y", "😀😀", "é😀",
]
PATTERNS = ["^US_", "spring", "(?i)spring", "^[0-9]+$", "a.b", "^$", "", "\\d", "é", "^.$", "x|y", "^\\s*5\\s*$"]


def _number_literal() -> st.SearchStrategy:
    return st.one_of(
        st.sampled_from([number for number in TRICKY_NUMBERS if math.isfinite(number)]),
        st.integers(-20, 20),
        st.floats(allow_nan=False, allow_infinity=False, width=64),
    )


TEXT_LITERALS = st.sampled_from(TRICKY_TEXTS)
NUMBER_VARS = st.sampled_from(NUMBER_FIELDS).map(lambda name: {"var": name})
TEXT_VARS = st.sampled_from(TEXT_FIELDS).map(lambda name: {"var": name})
ABSENT_VAR = st.sampled_from(["nope", "prev.nope", "spend.x"]).flatmap(
    lambda name: st.one_of(st.just({"var": name}), _number_literal().map(lambda default: {"var": [name, default]}))
)


def _numbers(children: st.SearchStrategy) -> st.SearchStrategy:
    operands = st.lists(children, min_size=1, max_size=3)
    return st.one_of(
        operands.map(lambda items: {"+": items}),
        operands.map(lambda items: {"*": items}),
        st.tuples(children, children).map(lambda pair: {"-": list(pair)}),
        children.map(lambda item: {"-": [item]}),
        st.tuples(children, children).map(lambda pair: {"/": list(pair)}),
        st.tuples(children, st.one_of(st.sampled_from([1, 2, 3, 7, -4, 0.5, 2**53]), children)).map(
            lambda pair: {"%": list(pair)}
        ),
        operands.map(lambda items: {"min": items}),
        operands.map(lambda items: {"max": items}),
    )


CAT_PARTS = st.one_of(TEXT_LITERALS, TEXT_VARS, NUMBER_VARS, st.booleans(), st.none())


def _texts(children: st.SearchStrategy, conditions: st.SearchStrategy) -> st.SearchStrategy:
    positions = st.one_of(st.integers(-4, 4), st.sampled_from([-1.5, 0.5, 2.7, None, "1", "-1"]), NUMBER_VARS)
    return st.one_of(
        st.tuples(st.one_of(TEXT_VARS, TEXT_LITERALS), positions).map(lambda parts: {"substr": list(parts)}),
        st.tuples(st.one_of(TEXT_VARS, TEXT_LITERALS), positions, positions).map(lambda parts: {"substr": list(parts)}),
        st.lists(CAT_PARTS, min_size=1, max_size=3).map(lambda items: {"cat": items}),
        st.tuples(conditions, children, children).map(lambda parts: {"if": list(parts)}),
    )


SCALAR_LITERALS = st.one_of(_number_literal(), TEXT_LITERALS, st.booleans(), st.none())


def _conditions(values: st.SearchStrategy, children: st.SearchStrategy) -> st.SearchStrategy:
    comparison = st.sampled_from(["==", "!=", "===", "!==", "<", "<=", ">", ">="])
    return st.one_of(
        st.tuples(comparison, values, values).map(lambda parts: {parts[0]: [parts[1], parts[2]]}),
        st.tuples(st.sampled_from(["<", "<="]), values, values, values).map(
            lambda parts: {parts[0]: list(parts[1:])}
        ),
        children.map(lambda item: {"!": [item]}),
        children.map(lambda item: {"!!": [item]}),
        st.lists(children, min_size=1, max_size=3).map(lambda items: {"and": items}),
        st.lists(children, min_size=1, max_size=3).map(lambda items: {"or": items}),
        st.tuples(values, st.lists(SCALAR_LITERALS, max_size=4)).map(lambda pair: {"in": list(pair)}),
        st.tuples(values, st.one_of(TEXT_LITERALS, TEXT_VARS)).map(lambda pair: {"in": list(pair)}),
        st.tuples(st.one_of(TEXT_VARS, TEXT_LITERALS, NUMBER_VARS, st.booleans()), st.sampled_from(PATTERNS)).map(
            lambda pair: {"matches": list(pair)}
        ),
        st.lists(st.sampled_from([*COLUMNS, "nope"]), min_size=1, max_size=3).map(lambda keys: {"missing": keys}),
        st.tuples(st.integers(0, 3), st.lists(st.sampled_from([*TEXT_FIELDS, "nope"]), max_size=3)).map(
            lambda pair: {"missing_some": list(pair)}
        ),
        st.tuples(children, children, children).map(lambda parts: {"if": list(parts)}),
        st.lists(children, min_size=1, max_size=5).map(lambda items: {"?:": items}),
        st.tuples(children, st.sampled_from([*COLUMNS, "nope"]), st.sampled_from(COLUMNS)).map(
            lambda parts: {"var": {"if": list(parts)}}
        ),
    )


def _rules() -> st.SearchStrategy:
    """Trees of up to 8 leaves: numbers, text and conditions over fields, absent names and literals."""
    leaves = st.one_of(NUMBER_VARS, TEXT_VARS, ABSENT_VAR, SCALAR_LITERALS)

    def extend(children: st.SearchStrategy) -> st.SearchStrategy:
        numbers = _numbers(st.one_of(children, NUMBER_VARS))
        conditions = _conditions(children, children)
        return st.one_of(numbers, _texts(children, conditions), conditions)

    return st.recursive(leaves, extend, max_leaves=8)


NUMBER_VALUES = st.one_of(st.sampled_from(TRICKY_NUMBERS), _number_literal().map(float))
ROWS = st.lists(
    st.fixed_dictionaries(
        {name: NUMBER_VALUES if FIELDS[name] is FieldType.NUMBER else TEXT_LITERALS for name in COLUMNS}
    ),
    min_size=1,
    max_size=6,
)


def _fixed_rows(count: int) -> list[dict[str, Any]]:
    """Rows that walk the tricky values through every column, plus pseudo-random mixes of them."""
    generator = random.Random(20240601)
    numbers, texts = itertools.cycle(TRICKY_NUMBERS), itertools.cycle(TRICKY_TEXTS)
    rows = []
    for index in range(count):
        if index < count // 2:
            rows.append({name: next(numbers) if name in NUMBER_FIELDS else next(texts) for name in COLUMNS})
        else:
            rows.append({
                name: generator.choice(TRICKY_NUMBERS if name in NUMBER_FIELDS else TRICKY_TEXTS) for name in COLUMNS
            })
    return rows


FIXED_ROWS = _fixed_rows(50)


@pytest.fixture
def entities(ch):
    """A table of entity rows in the test database, with the fixed rows as batch 0."""
    columns = ", ".join(
        f"`{name}` {'Float64' if FIELDS[name] is FieldType.NUMBER else 'String'}" for name in COLUMNS
    )
    ch.command(f"CREATE TABLE entities (batch UInt32, row UInt32, {columns}) ENGINE = Memory")
    table = _Table(ch)
    table.insert(FIXED_ROWS)
    return table


class _Table:
    """The `entities` table and, per batch, the rows inserted into it (the interpreter's input)."""

    def __init__(self, client) -> None:
        self.client = client
        self.batches = 0
        self.rows: list[list[dict[str, Any]]] = []

    def insert(self, rows: list[dict[str, Any]]) -> int:
        """Adds a batch of rows; returns its number."""
        batch = self.batches
        self.batches += 1
        self.rows.append(rows)
        data = [[batch, index, *(row[name] for name in COLUMNS)] for index, row in enumerate(rows)]
        self.client.insert("entities", data, column_names=["batch", "row", *COLUMNS])
        return batch


def _interpreted(logic: Any, row: dict[str, Any]) -> bool:
    return truthy(evaluate_row(logic, row))


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(rule=_rules(), drawn_rows=ROWS)
def test_sql_verdict_equals_the_interpreter(entities, rule, drawn_rows):
    try:
        compiled = compile_logic(rule, FIELDS)
    except NotCompilable as refusal:
        event(f"refused: {str(refusal)[:40]}")
        return
    event("compiled")
    expressions = " ".join((compiled.matched, *compiled.conditions))
    assert set(PLACEHOLDER.findall(expressions)) == set(compiled.parameters)
    batch = entities.insert(drawn_rows)
    conditions = "".join(f", {condition}" for condition in compiled.conditions)
    result = entities.client.query(
        f"SELECT batch, row, {compiled.matched}{conditions} FROM entities WHERE batch IN (0, {batch})",
        parameters=compiled.parameters,
    )
    for batch_number, index, matched, *condition_results in result.result_rows:
        row = entities.rows[batch_number][index]
        assert bool(matched) == _interpreted(rule, row), f"{rule!r} over {row!r}"
        for condition, outcome in zip(_top_conditions(rule), condition_results):
            assert bool(outcome) == _interpreted(condition, row), f"condition {condition!r} over {row!r}"


def _top_conditions(rule: Any) -> list[Any]:
    if isinstance(rule, dict) and len(rule) == 1 and next(iter(rule)) in ("and", "or"):
        values = next(iter(rule.values()))
        return values if isinstance(values, list) else [values]
    return [rule]


ANY_FLOAT = st.one_of(
    st.floats(width=64),
    st.integers(2**53, 2**63).map(float),
    st.integers(-(10**6), 10**6).map(lambda number: number / 1000),
    st.sampled_from(TRICKY_NUMBERS),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pairs=st.lists(st.tuples(ANY_FLOAT, ANY_FLOAT), min_size=1, max_size=200))
def test_number_text_and_remainder_are_exact(ch, pairs):
    """Numbers as JavaScript writes them, and JavaScript's `%`, for numbers of every magnitude."""
    fields = {"x": FieldType.NUMBER, "d": FieldType.NUMBER}
    logic = {"cat": [{"var": "x"}, " ", {"%": [{"var": "x"}, {"var": "d"}]}]}
    compilation = Compilation(fields)
    value_sql = compilation.sql(compilation.value(logic))
    rows = ch.query(
        f"SELECT x, d, {value_sql} FROM (SELECT pair.1 AS x, pair.2 AS d"
        " FROM (SELECT arrayJoin(arrayZip({xs:Array(Float64)}, {ds:Array(Float64)})) AS pair))",
        parameters={**compilation.parameters, "xs": [x for x, _ in pairs], "ds": [d for _, d in pairs]},
    ).result_rows
    for x, d, text in rows:
        assert text == evaluate_row(logic, {"x": x, "d": d}), f"x={x!r} d={d!r}"
