"""The classic JSON Logic suite through the SQL compiler, evaluated by ClickHouse over a one-row input.

A case is in scope when its data is absent, null, or an object whose values are numbers or text, or objects of
numbers or text (one level, read as dotted fields `pie.filling`): exactly the rows the engine has. Its fields
are the data's keys, typed by their values; a name the data lacks is no field of the row, and `var` of it
gives its default, as in JavaScript. Every case in scope either compiles and gives the suite's truthiness and
value (where the compiler has a value for it: not for arrays), or is refused with NotCompilable. Each case
also runs "lifted": every number and text literal in an operand position becomes a column of the row, so that
the SQL, not constant folding, computes the answer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.compiler import Kind, compile_logic
from engine.compiler.compilation import Compilation
from engine.errors import NotCompilable
from engine.fields import FieldType
from engine.interpreter import SCOPED_OPERATORS, is_number, truthy
from tests.unit.test_interpreter_conformance import same_js_value

SUITE = Path(__file__).resolve().parent.parent / "data" / "compatible.json"
# Operators whose operands stay as written: names read from the data, and logic run over array elements.
_UNLIFTED_OPERATORS = {"var", "missing", "missing_some"} | SCOPED_OPERATORS


def _row_of(data: Any) -> dict[str, Any] | None:
    """The case's data as a flat row of numbers and text, or None when the case is out of scope."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        return None
    row: dict[str, Any] = {}
    for name, value in data.items():
        if isinstance(value, dict):
            for inner, inner_value in value.items():
                row[f"{name}.{inner}"] = inner_value
        else:
            row[name] = value
    if all(is_number(value) or isinstance(value, str) for value in row.values()):
        return row
    return None


def _scalar_cases() -> list[tuple[str, Any, dict[str, Any], Any]]:
    """(description, rule, row, expected result) of every case in scope."""
    cases = [case for case in json.loads(SUITE.read_text()) if isinstance(case, dict)]
    return [
        (case["description"], case["rule"], _row_of(case.get("data")), case["result"])
        for case in cases
        if _row_of(case.get("data")) is not None
    ]


SCALAR_CASES = _scalar_cases()


def _lift(rule: Any, row: dict[str, Any]) -> Any:
    """`rule` with each number and text operand replaced by a `var` of a new column of `row` holding it."""
    if isinstance(rule, dict) and len(rule) == 1:
        operator, values = next(iter(rule.items()))
        if operator in _UNLIFTED_OPERATORS:
            return rule
        if isinstance(values, list):
            return {operator: [_lift_operand(value, row) for value in values]}
        return {operator: _lift_operand(values, row)}
    return rule


def _lift_operand(value: Any, row: dict[str, Any]) -> Any:
    if isinstance(value, str) or is_number(value):
        name = f"lifted_{len(row)}"
        row[name] = value
        return {"var": name}
    return _lift(value, row)


def _fields(row: dict[str, Any]) -> dict[str, FieldType]:
    return {name: FieldType.NUMBER if is_number(value) else FieldType.STRING for name, value in row.items()}


def _row_sql(row: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A one-row SELECT with the row's values as typed parameters."""
    columns, parameters = [], {}
    for index, (name, value) in enumerate(row.items()):
        sql_type = "Float64" if is_number(value) else "String"
        parameters[f"row{index}"] = float(value) if is_number(value) else value
        columns.append(f"{{row{index}:{sql_type}}} AS `{name}`")
    return "SELECT " + (", ".join(columns) or "1 AS `no columns`"), parameters


def _sql_value(value: Any, kind: Kind) -> Any:
    if kind is Kind.BOOL and value is not None:
        return bool(value)
    return value


def _run(ch, rule: Any, row: dict[str, Any]) -> tuple[bool, Any, bool] | None:
    """(matched, value, value_compiled) from ClickHouse, or None when the compiler refuses the rule."""
    fields = _fields(row)
    try:
        compiled = compile_logic(rule, fields)
    except NotCompilable:
        return None
    row_sql, row_parameters = _row_sql(row)
    # The value goes through the same compilation compile_logic runs; arrays and undefined have no SQL form.
    compilation = Compilation(fields)
    try:
        value = compilation.value(rule)
        value_sql = compilation.sql(value)
    except NotCompilable:
        value, value_sql = None, "NULL"
    parameters = {**row_parameters, **compiled.parameters, **(compilation.parameters if value else {})}
    sql = f"SELECT {compiled.matched}, {value_sql} FROM ({row_sql})"
    matched, result = ch.query(sql, parameters=parameters).result_rows[0]
    return bool(matched), (_sql_value(result, value.kind) if value else None), value is not None


def _disagreement(ch, rule: Any, row: dict[str, Any], expected: Any) -> tuple[bool, str | None]:
    """(compiled, what differs from the suite or None)."""
    outcome = _run(ch, rule, row)
    if outcome is None:
        return False, None
    matched, value, value_compiled = outcome
    if matched != truthy(expected):
        return True, f"{rule!r} over {row!r}: matched {matched}, expected truthiness of {expected!r}"
    if value_compiled and not same_js_value(value, expected):
        return True, f"{rule!r} over {row!r}: value {value!r}, expected {expected!r}"
    return True, None


def test_every_compiled_classic_case_agrees_with_the_suite(ch):
    """One query per case and variant on the test database; the failures name every case that disagrees."""
    compiled = lifted_compiled = 0
    failures = []
    for description, rule, row, expected in SCALAR_CASES:
        was_compiled, failure = _disagreement(ch, rule, dict(row), expected)
        compiled += was_compiled
        failures += [f"{description}: {failure}"] if failure else []
        lifted_row = dict(row)
        was_compiled, failure = _disagreement(ch, _lift(rule, lifted_row), lifted_row, expected)
        lifted_compiled += was_compiled
        failures += [f"{description} (lifted): {failure}"] if failure else []
    print(
        f"\nclassic scalar cases: {len(SCALAR_CASES)}, compiled: {compiled},"
        f" compiled with literals as columns: {lifted_compiled}"
    )
    assert not failures, "\n".join(failures)
    assert compiled >= 0.95 * len(SCALAR_CASES)
    assert lifted_compiled >= 0.9 * len(SCALAR_CASES)
