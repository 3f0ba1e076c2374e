"""What a JSON Logic tree reads: its operands, whether it depends on the row, the fields it names."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Mapping

import json_logic

from engine.fields import FieldType
from engine.interpreter import SCOPED_OPERATORS, is_number, to_string

_DATA_OPERATORS = frozenset({"var", "missing", "missing_some"})


def top_level_conditions(logic: Any) -> list[Any]:
    """The conditions whose outcomes a run records: the operands of a top-level `and`/`or`, else the logic itself."""
    if json_logic.is_logic(logic):
        operator = next(iter(logic))
        if operator in ("and", "or"):
            return arguments_of(logic[operator])
    return [logic]


def arguments_of(values: Any) -> list[Any]:
    """The operands of an operation: its list, or its single operand as a list of one."""
    return values if isinstance(values, list) else [values]


def logic_variables(logic: Any, fields: Mapping[str, FieldType]) -> tuple[str, ...]:
    """Every field named by a literal `var`, `missing` or `missing_some` key anywhere in the logic."""
    return tuple(sorted(set(_variables_in_order(logic, fields))))


def first_variable(logic: Any, fields: Mapping[str, FieldType]) -> str | None:
    """The first field the logic names, in the order it is written (as `logic_variables` finds them); None: none."""
    return next(_variables_in_order(logic, fields), None)


def _variables_in_order(logic: Any, fields: Mapping[str, FieldType]) -> Iterator[str]:
    if isinstance(logic, list):
        for element in logic:
            yield from _variables_in_order(element, fields)
    elif json_logic.is_logic(logic):
        operator = next(iter(logic))
        arguments = arguments_of(logic[operator])
        if operator in _DATA_OPERATORS:
            for key in _literal_keys(operator, arguments):
                if to_string(key) in fields:
                    yield to_string(key)
        # The logic of a scoped operation reads the elements of its array, not the row.
        yield from _variables_in_order(arguments[:1] + arguments[2:3] if operator in SCOPED_OPERATORS else arguments,
                                       fields)


def _literal_keys(operator: str, arguments: list[Any]) -> list[Any]:
    if operator == "var":
        return arguments[:1]
    if operator == "missing_some":
        arguments = arguments[1:2]
        arguments = arguments[0] if arguments and isinstance(arguments[0], list) else arguments
    elif arguments and isinstance(arguments[0], list):
        arguments = arguments[0]
    return [key for key in arguments if isinstance(key, str) or is_number(key)]


def reads_data(node: Any) -> bool:
    """Whether the value of `node` can depend on the row (the arguments of scoped operations see their own data)."""
    if isinstance(node, list):
        return any(reads_data(element) for element in node)
    if not json_logic.is_logic(node):
        return False
    operator = next(iter(node))
    arguments = arguments_of(node[operator])
    if operator in _DATA_OPERATORS:
        return True
    if operator in SCOPED_OPERATORS:
        return reads_data(arguments[:1] + arguments[2:3])
    return reads_data(arguments)
