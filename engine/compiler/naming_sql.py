"""The `naming` operator in SQL: the verdict and the diagnosis of engine/naming.py, check for check.

The name is split with splitByString; for each token count the convention allows, the tokens at their positions
are known at compile time (Convention.layout), so each count gets its own checks. Everything taken from the
convention (delimiter, values, patterns, token names, reasons) travels as a query parameter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from engine.compiler.coercions import js_string
from engine.compiler.types import Kind, Typed, typed_bool
from engine.conventions import Convention, Token
from engine.errors import NotCompilable
from engine.evaluation_document import diagnosis_head, diagnosis_json, diagnosis_sql
from engine.naming import (EMPTY, NOT_ALLOWED, SUGGESTION_SPAN, TOO_MANY_PREFIX, WRONG_CASE, Diagnosis, NamingCheck,
                           ascii_lower, date_reason, equals_reason, naming_checks, pattern_reason, too_few_reason,
                           too_many_suffix)

if TYPE_CHECKING:
    from engine.compiler.compilation import Compilation


def compile_naming(compiler: Compilation, arguments: list[Any]) -> Typed:
    """`naming` bound to its convention: 1 when the text breaks it."""
    check = _bound_check(arguments)
    return typed_bool(_over_tokens(compiler, check, lambda parts, count, cross: _breaks(
        compiler, check.convention, parts, count, cross)))


def naming_document_sql(compiler: Compilation, logic: Any) -> str | None:
    """The SQL of the document's `naming` value (engine/evaluation_document.py): the JSON text of the diagnosis of
    the first naming check of `logic` whose name breaks its convention, 'null' when none does; None without
    naming checks."""
    checks = naming_checks(logic)
    if not checks:
        return None
    diagnoses = [_over_tokens(compiler, check, lambda parts, count, cross, check=check: _diagnosis(
        compiler, check.convention, parts, count, cross)) for check in checks]

    def first_broken(bound: list[str]) -> str:
        if len(bound) == 1:
            return bound[0]
        pairs = ", ".join(f"{diagnosis} != 'null', {diagnosis}" for diagnosis in bound[:-1])
        return f"multiIf({pairs}, {bound[-1]})"

    return compiler.let_all(diagnoses, first_broken)


def _bound_check(arguments: list[Any]) -> NamingCheck:
    if len(arguments) < 2 or not isinstance(arguments[1], Convention):
        raise NotCompilable("naming is compiled only with its convention bound (engine.naming.bind_conventions)")
    return NamingCheck(arguments[0], arguments[1], tuple(arguments[2:]))


def _over_tokens(compiler: Compilation, check: NamingCheck,
                 body: Callable[[str, str, dict[str, str]], str]) -> str:
    """`body(parts, count, cross)` over the split text: its array of tokens, their count, and the SQL of each
    cross field."""
    text = compiler.sql(js_string(compiler, compiler.value(check.text), "naming"))
    cross = {}
    for field, node in zip(check.convention.cross_fields, check.cross):
        typed = compiler.value(node)
        if typed.kind is not Kind.STRING or typed.nullable:
            raise NotCompilable(f"naming compares with {field}, which this source does not have as text")
        cross[field] = compiler.sql(typed)
    delimiter = compiler.parameter("String", check.convention.delimiter)
    return compiler.let(f"splitByString({delimiter}, {text})",
                        lambda parts: compiler.let(f"length({parts})", lambda count: body(parts, count, cross)))


def _breaks(compiler: Compilation, convention: Convention, parts: str, count: str, cross: dict[str, str]) -> str:
    branches = []
    for allowed in range(convention.min_tokens, convention.max_tokens + 1):
        failures = [_token_fails(compiler, token, f"{parts}[{position}]", cross)
                    for position, token in enumerate(convention.layout(allowed), start=1)]
        branches.append(f"{count} = {allowed}, ({' OR '.join(failures)})")
    return f"toUInt8(multiIf({', '.join(branches)}, 1))"


def _token_fails(compiler: Compilation, token: Token, value: str, cross: dict[str, str]) -> str:
    """SQL 0/1: the token's text `value` fails its check."""
    return f"(empty({value}) OR {_kind_fails(compiler, token, value, cross)})"


def _kind_fails(compiler: Compilation, token: Token, value: str, cross: dict[str, str]) -> str:
    if token.kind == "values":
        if token.ignore_case:
            lowered = compiler.parameter("Array(String)", [ascii_lower(option) for option in token.values])
            return f"NOT has({lowered}, lower({value}))"
        return f"NOT has({compiler.parameter('Array(String)', list(token.values))}, {value})"
    if token.kind == "pattern":
        return f"NOT match({value}, {compiler.parameter('String', '(?-s)' + token.pattern)})"
    if token.kind == "date":
        return f"NOT {_date_sql(compiler, token, value)}"
    if token.kind == "equals":
        return f"{value} != {cross[token.equals]}"
    return "0"


def _date_sql(compiler: Compilation, token: Token, value: str) -> str:
    """SQL 0/1: `value` has the shape of the token's date format and names a real day."""
    date = token.date
    shape = f"match({value}, {compiler.parameter('String', date.shape)})"
    if date.month is None:
        return shape

    def field(offset_width: tuple[int, int]) -> str:
        offset, width = offset_width
        return f"toUInt32OrZero(substring({value}, {offset + 1}, {width}))"

    year = field(date.year) + (" + 2000" if date.year[1] == 2 else "")
    month = field(date.month)
    checks = [shape, f"{month} BETWEEN 1 AND 12"]
    if date.day is not None:
        day = field(date.day)
        leap = f"(({year}) % 4 = 0 AND ({year}) % 100 != 0 OR ({year}) % 400 = 0)"
        days = f"multiIf({month} = 2, if({leap}, 29, 28), {month} IN (4, 6, 9, 11), 30, 31)"
        checks.append(f"{day} BETWEEN 1 AND {days}")
    return f"({' AND '.join(checks)})"


def _diagnosis(compiler: Compilation, convention: Convention, parts: str, count: str, cross: dict[str, str]) -> str:
    """SQL String: the JSON text of the diagnosis (engine.naming.diagnose), 'null' when the name is fine."""

    def constant(diagnosis: Diagnosis) -> str:
        return compiler.parameter("String", diagnosis_json(diagnosis))

    branches = []
    for found in range(1, convention.min_tokens):
        missing = convention.layout(convention.min_tokens)[found]
        branches.append(f"{count} = {found}, "
                        f"{constant(Diagnosis(missing.name, found + 1, '', too_few_reason(found, convention)))}")
    too_many = diagnosis_sql(
        compiler.parameter("String", diagnosis_head(None, convention.max_tokens + 1)),
        f"{parts}[{convention.max_tokens + 1}]",
        f"concat({compiler.parameter('String', TOO_MANY_PREFIX)}, toString({count}), "
        f"{compiler.parameter('String', too_many_suffix(convention))})",
        "NULL")
    branches.append(f"{count} > {convention.max_tokens}, {too_many}")
    for allowed in range(convention.min_tokens, convention.max_tokens + 1):
        pairs = []
        for position, token in enumerate(convention.layout(allowed), start=1):
            value = f"{parts}[{position}]"
            empty = constant(Diagnosis(token.name, position, "", EMPTY))
            failed = empty if token.kind == "free" else (
                f"if(empty({value}), {empty}, {_kind_diagnosis(compiler, token, position, value, cross)})")
            pairs.append(f"{_token_fails(compiler, token, value, cross)}, {failed}")
        branches.append(f"{count} = {allowed}, multiIf({', '.join(pairs)}, 'null')")
    return f"multiIf({', '.join(branches)}, 'null')"


def _kind_diagnosis(compiler: Compilation, token: Token, position: int, value: str, cross: dict[str, str]) -> str:
    """SQL String: the diagnosis of a non-empty token that fails its check."""
    head = compiler.parameter("String", diagnosis_head(token.name, position))
    if token.kind == "values":
        values = compiler.parameter("Array(String)", list(token.values))
        lowered = compiler.parameter("Array(String)", [ascii_lower(option) for option in token.values])
        return compiler.let(f"lower(substringUTF8({value}, 1, {SUGGESTION_SPAN}))", lambda compared: compiler.let(
            f"arrayMap(__jl_option -> editDistanceUTF8({compared}, __jl_option), {lowered})",
            lambda distances: compiler.let(f"arrayMin({distances})", lambda best: compiler.let(
                f"arrayElement({values}, indexOf({distances}, {best}))",
                lambda candidate: diagnosis_sql(
                    head, value,
                    f"if({best} = 0, {compiler.parameter('String', WRONG_CASE)}, "
                    f"{compiler.parameter('String', NOT_ALLOWED)})",
                    f"if(2 * {best} <= greatest(lengthUTF8({candidate}), 2), {candidate}, NULL)")))))
    if token.kind == "equals":
        expected = cross[token.equals]
        return diagnosis_sql(head, value, compiler.parameter("String", equals_reason(token.equals)),
                             f"if(empty({expected}), NULL, {expected})")
    reason = pattern_reason(token.pattern) if token.kind == "pattern" else date_reason(token.date)
    return diagnosis_sql(head, value, compiler.parameter("String", reason), "NULL")
