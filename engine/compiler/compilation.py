"""The compile step: a rule's logic and its conditions as SQL over one entity row, with their parameters."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import json_logic

from engine.compiler.logic_tree import arguments_of, logic_variables, reads_data, top_level_conditions
from engine.compiler.naming_sql import naming_document_sql
from engine.compiler.operators import TRUTH_OPERATORS, VALUE_OPERATORS
from engine.compiler.types import Kind, Typed, constant, valid_text
from engine.errors import LogicEvaluationError, NotCompilable
from engine.fields import FieldType
from engine.interpreter import UNDEFINED, evaluate_javascript, is_number, to_number, truthy
from engine.sql_text import quote_identifier

MAX_SQL_LENGTH = 64 * 1024
_PARAMETER_NAME = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*):")
# SQL cheap enough to write twice: a column, a parameter, a number, a name.
_SIMPLE_SQL = re.compile(r"`[^`\\]*`|\{[A-Za-z_][A-Za-z0-9_]*:[A-Za-z0-9()]+\}|-?[0-9.]+|[A-Za-z_][A-Za-z0-9_]*")
_PARAMETER_PREFIX = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class CompiledLogic:
    """A rule's logic as ClickHouse SQL over one entity row."""

    matched: str
    conditions: tuple[str, ...]
    variables: tuple[str, ...]
    parameters: dict[str, Any] = field(default_factory=dict)
    naming: str | None = None  # the document's naming diagnosis (engine/compiler/naming_sql.py); None: no check


def compile_logic(logic: Any, fields: Mapping[str, FieldType], *, column: Callable[[str], str] = quote_identifier,
                  parameter_prefix: str = "p") -> CompiledLogic:
    """Compiles `logic` over a row with `fields`.

    `matched` is the JSON Logic truthiness of the whole logic as UInt8 0/1; `conditions` the truthiness of each
    element of a top-level `and`/`or` (else of the whole logic); `variables` the sorted field names the logic
    reads; `parameters` the values of the `{name:Type}` query parameters the SQL references; `naming` the JSON
    text of the naming diagnosis when the logic has (bound) naming checks.
    By default a field is read from the column of its own name and the parameters are named p0, p1, …; `column`
    (a field name to the backquoted identifier of its column) and `parameter_prefix` (an identifier) name them
    otherwise, for SQL that evaluates several rules side by side.
    Raises NotCompilable when the SQL could not agree with the interpreter for every row.
    """
    compiler = Compilation(fields, column=column, parameter_prefix=parameter_prefix)
    matched = compiler.truth(logic)
    conditions = tuple(compiler.truth(condition) for condition in top_level_conditions(logic))
    naming = naming_document_sql(compiler, logic)
    expressions = (matched, *conditions, *([naming] if naming else []))
    _check_size(*expressions)
    return CompiledLogic(matched, conditions, logic_variables(logic, fields),
                         _referenced(compiler.parameters, *expressions), naming)


def _referenced(parameters: dict[str, Any], *expressions: str) -> dict[str, Any]:
    # A subexpression folded away after compiling (e.g. a comparison that is constant for every row) leaves its
    # parameters behind; only those the final SQL names are passed to ClickHouse.
    named = {match.group(1) for expression in expressions for match in _PARAMETER_NAME.finditer(expression)}
    return {name: value for name, value in parameters.items() if name in named}


def _check_size(*expressions: str) -> None:
    if sum(map(len, expressions)) > MAX_SQL_LENGTH:
        raise NotCompilable(f"the SQL for this logic would exceed {MAX_SQL_LENGTH} characters")


class Compilation:
    """One compilation: the fields, and the query parameters collected so far.

    compile_logic asks it for the `truth` of the logic and of each condition; `value` and `sql` give the SQL of a
    logic's value itself, which the conformance tests compare with the interpreter's.
    """

    def __init__(self, fields: Mapping[str, FieldType], *, column: Callable[[str], str] = quote_identifier,
                 parameter_prefix: str = "p") -> None:
        if not _PARAMETER_PREFIX.fullmatch(parameter_prefix):
            raise ValueError(f"parameter prefix {parameter_prefix!r} is not an identifier")
        self.fields = fields
        self.column = column
        self.parameter_prefix = parameter_prefix
        self.parameters: dict[str, Any] = {}
        self._parameter_names: dict[tuple[str, str], str] = {}

    def let(self, sql: str, body: Callable[[str], str]) -> str:
        """`body` over `sql` computed once: a complex `sql` is bound to a lambda parameter, so that using it
        several times neither repeats the work nor grows the query exponentially with nesting (ClickHouse
        expands aliases into the query tree, lambda parameters it does not). The parameter is named after
        what it holds, so equal subexpressions of `matched` and `conditions` are equal text."""
        if _SIMPLE_SQL.fullmatch(sql):
            return body(sql)
        name = "__jl_" + hashlib.sha256(sql.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        return f"arrayMap({name} -> {body(name)}, [{sql}])[1]"

    def let_all(self, expressions: list[str], body: Callable[[list[str]], str]) -> str:
        """`let` over several expressions."""
        if not expressions:
            return body([])
        first, *rest = expressions
        return self.let(first, lambda bound: self.let_all(rest, lambda others: body([bound, *others])))

    def parameter(self, sql_type: str, value: Any) -> str:
        """A `{name:Type}` placeholder carrying `value`, reused for equal values of the same type."""
        key = (sql_type, _parameter_key(value))
        name = self._parameter_names.get(key)
        if name is None:
            name = f"{self.parameter_prefix}{len(self._parameter_names)}"
            self._parameter_names[key] = name
            self.parameters[name] = value
        return f"{{{name}:{sql_type}}}"

    def sql(self, typed: Typed) -> str:
        """The SQL of `typed`, writing a constant as a parameter or a typed literal."""
        if typed.sql is not None:
            return typed.sql
        value = typed.value
        if value is None:
            return "NULL"
        if isinstance(value, bool):
            return "1" if value else "0"
        if is_number(value):
            return self.parameter("Float64", to_number(value))
        if isinstance(value, str):
            return self.parameter("String", valid_text(value))
        raise NotCompilable(f"a {typed.kind.value} value has no SQL form")

    def value(self, node: Any) -> Typed:
        """The compiled value of `node`."""
        if not reads_data(node):
            return constant(_fold(node))
        if isinstance(node, list):
            raise NotCompilable("arrays built from the row have no SQL form")
        operator = next(iter(node))
        compile_operation = VALUE_OPERATORS.get(operator)
        if compile_operation is None:
            raise NotCompilable(f"operator {operator!r} is not compiled to SQL")
        return compile_operation(self, arguments_of(node[operator]))

    def truth(self, node: Any) -> str:
        """SQL UInt8 0/1: the JSON Logic truthiness of `node`."""
        if isinstance(node, list) and reads_data(node):
            for element in node:
                self.kind_of(element)
            return "1"
        if reads_data(node) and json_logic.is_logic(node):
            operator = next(iter(node))
            compile_truth = TRUTH_OPERATORS.get(operator)
            if compile_truth is not None:
                return compile_truth(self, arguments_of(node[operator]))
        return self.truth_of(self.value(node))

    def kind_of(self, node: Any) -> Typed:
        """`node` compiled only to learn its static type (or that it cannot compile); its SQL is not used."""
        return Compilation(self.fields).value(node)

    def truth_of(self, typed: Typed) -> str:
        """SQL UInt8 0/1: the truthiness of a compiled value."""
        if typed.is_constant:
            return "1" if truthy(typed.value) else "0"
        sql = typed.sql
        if typed.kind is Kind.NUMBER:
            sql = f"(abs({sql}) > 0)"
        elif typed.kind is Kind.STRING:
            sql = f"notEmpty({sql})"
        return f"ifNull({sql}, 0)" if typed.nullable else sql

    def argument(self, arguments: list[Any], index: int) -> Typed:
        """The compiled argument at `index`, or `undefined` when the rule gives fewer."""
        if index >= len(arguments):
            return constant(UNDEFINED)
        return self.value(arguments[index])


def _parameter_key(value: Any) -> str:
    if isinstance(value, float):
        return value.hex()
    return repr(value)


def _fold(node: Any) -> Any:
    """The value of a logic that does not read the row, computed by the interpreter."""
    try:
        return evaluate_javascript(node, None)
    except LogicEvaluationError as error:
        raise NotCompilable(str(error)) from None
