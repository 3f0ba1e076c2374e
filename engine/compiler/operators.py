"""The SQL of each JSON Logic operator over one entity row, with the interpreter's semantics exactly.

The row has one column per field, named as the field (`spend`, `prev.spend`), Float64 for numbers and String
for text, never NULL. Every subexpression gets a static type: number (Float64), string (String), bool (UInt8
0/1), null, undefined, or a literal array; numbers, strings and bools may be nullable (`/` and `%` give null
for a zero divisor, an `if` without else gives null). Coercions are chosen from those types at compile time,
so the SQL is typed arithmetic and comparisons, with no per-row parsing unless text really is read as a
number. Literals travel as query parameters (`{p0:Float64}`, `{p1:String}`, `{p2:Array(String)}`); the only
literals written into the SQL are the compiler's own. Subtrees that do not read the row are computed by the
interpreter at compile time.

Semantics (the interpreter's, i.e. jsonlogic.com's, plus two product decisions):

- `==` converts text to a number like JavaScript's Number() (" 12 " is 12, "" is 0, "0x10" is 16, "abc" NaN),
  `+` and `*` like parseFloat; `<` compares text by UTF-16 code units: bytes where that order is the same
  (against literals below U+D800), UTF-16 otherwise.
- Text made from numbers is written as JavaScript writes numbers (1 → "1", 1e21 → "1e+21").
- `substr` counts UTF-16 code units. A cut through a surrogate pair leaves half of it, held as WTF-8 bytes:
  such text is only compared for equality (and ordered against literals), otherwise the rule is refused.
- Division and remainder by zero give null (falsy) instead of ±Infinity/NaN; `%` is exact like fmod.
- `matches` [text, pattern] is an RE2 search (`.` does not match a newline, as in re2.search); the pattern must
  be a literal; a null pattern never matches; an invalid pattern is refused here and is an error at run time.
- `naming` [text, convention] is true when the text breaks the (bound) convention: engine/compiler/naming_sql.py.

Refused (NotCompilable, the rule runs on the interpreter): values whose type depends on the row (`if`, `and`,
`or` mixing numbers, text and booleans where the value, not only its truthiness, is used), arrays or objects
built from the row, `missing`/`missing_some` used as values where the answer depends on the row, the scoped
operations (`map`, `filter`, `reduce`, `all`, `none`, `some`) and `merge` over the row, `var` of a computed
name, of an object (`prev`) or of a text's length or characters, `matches` with a computed pattern, text with
unpaired surrogates in a literal, `log`, unknown operators, and SQL longer than MAX_SQL_LENGTH.
"""


from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable, Mapping

import json_logic

from engine.compiler.coercions import js_number, js_parse_float, js_string, split_nulls
from engine.compiler.comparisons import (contains_sql, loose_equals_sql, membership_sql, relation_sql,
                                         strict_equals_sql)
from engine.compiler.logic_tree import arguments_of
from engine.compiler.naming_sql import compile_naming
from engine.compiler.types import Kind, Typed, constant, typed_bool, typed_number, typed_string, valid_text
from engine.errors import LogicEvaluationError, NotCompilable
from engine.fields import FieldType
from engine.interpreter import (SCOPED_OPERATORS, UNDEFINED, compile_pattern, evaluate_javascript, is_number, to_string,
                               truthy)
from engine.sql_text import quote_string

if TYPE_CHECKING:
    from engine.compiler.compilation import Compilation


def _compile_equality(equals_sql: Callable[[Compilation, Typed, Typed], str],
                      negated: bool) -> Callable[[Compilation, list[Any]], Typed]:
    """`==` and `===` over two operands (`!=` and `!==` when `negated`)."""

    def compile_equality(compiler: Compilation, arguments: list[Any]) -> Typed:
        equal = equals_sql(compiler, compiler.argument(arguments, 0), compiler.argument(arguments, 1))
        return typed_bool(f"NOT {equal}" if negated else equal)

    return compile_equality


def _compile_chain(or_equal: bool) -> Callable[[Compilation, list[Any]], Typed]:
    """`<` and `<=`: two operands, or the three-operand between form when the third is not undefined."""

    def compile_chain(compiler: Compilation, arguments: list[Any]) -> Typed:
        first, second, third = (compiler.argument(arguments, index) for index in range(3))
        if third.kind is Kind.UNDEFINED:
            return typed_bool(relation_sql(compiler, first, second, or_equal))

        def between(middle: str) -> str:
            bound = second if second.is_constant else replace(second, sql=middle)
            lower = relation_sql(compiler, first, bound, or_equal)
            return f"({lower} AND {relation_sql(compiler, bound, third, or_equal)})"

        return typed_bool(compiler.let(compiler.sql(second), between))

    return compile_chain


def _compile_reversed(or_equal: bool) -> Callable[[Compilation, list[Any]], Typed]:
    """`>` and `>=`: `a > b` is `b < a`; a third operand is evaluated and ignored, as in json-logic-js."""

    def compile_reversed(compiler: Compilation, arguments: list[Any]) -> Typed:
        first, second = compiler.argument(arguments, 0), compiler.argument(arguments, 1)
        return typed_bool(relation_sql(compiler, second, first, or_equal))

    return compile_reversed


def _compile_not(compiler: Compilation, arguments: list[Any]) -> Typed:
    return typed_bool(f"NOT {_truth_argument(compiler, arguments)}")


def _compile_double_not(compiler: Compilation, arguments: list[Any]) -> Typed:
    return typed_bool(_truth_argument(compiler, arguments))


def _truth_argument(compiler: Compilation, arguments: list[Any]) -> str:
    return compiler.truth(arguments[0]) if arguments else "0"


def _compile_add(compiler: Compilation, arguments: list[Any]) -> Typed:
    terms = [compiler.sql(js_parse_float(compiler, compiler.value(argument))) for argument in arguments]
    return typed_number("(" + " + ".join(["0.", *terms]) + ")")


def _compile_multiply(compiler: Compilation, arguments: list[Any]) -> Typed:
    if not arguments:
        raise NotCompilable('"*" needs at least one argument')
    if len(arguments) == 1:
        return compiler.value(arguments[0])
    factors = [compiler.sql(js_parse_float(compiler, compiler.value(argument))) for argument in arguments]
    return typed_number("(" + " * ".join(factors) + ")")


def _compile_subtract(compiler: Compilation, arguments: list[Any]) -> Typed:
    minuend = compiler.sql(js_number(compiler, compiler.argument(arguments, 0)))
    subtrahend = compiler.argument(arguments, 1)
    if subtrahend.kind is Kind.UNDEFINED:
        return typed_number(f"negate({minuend})")
    return typed_number(f"({minuend} - {compiler.sql(js_number(compiler, subtrahend))})")


def _compile_divide(compiler: Compilation, arguments: list[Any]) -> Typed:
    """Division; a zero divisor gives null (a product decision: JavaScript gives ±Infinity or NaN)."""
    dividend = compiler.sql(js_number(compiler, compiler.argument(arguments, 0)))
    divisor = js_number(compiler, compiler.argument(arguments, 1))
    if divisor.is_constant:
        if divisor.value == 0:
            return constant(None)
        return typed_number(f"({dividend} / {compiler.sql(divisor)})")
    return typed_number(
        compiler.let(compiler.sql(divisor), lambda value: f"if({value} = 0, NULL, {dividend} / {value})"), nullable=True
    )


def _compile_remainder(compiler: Compilation, arguments: list[Any]) -> Typed:
    """JavaScript `%` (truncated, sign of the dividend); a zero divisor gives null like division."""
    dividend = compiler.sql(js_number(compiler, compiler.argument(arguments, 0)))
    divisor = js_number(compiler, compiler.argument(arguments, 1))
    if divisor.is_constant and divisor.value == 0:
        return constant(None)

    def remainder(dividend_value: str, divisor_value: str) -> str:
        exact = _remainder_sql(compiler, dividend_value, divisor_value)
        return exact if divisor.is_constant else f"if({divisor_value} = 0, NULL, {exact})"

    sql = compiler.let_all([dividend, compiler.sql(divisor)], lambda bound: remainder(*bound))
    return typed_number(sql, nullable=not divisor.is_constant)


def _remainder_sql(compiler: Compilation, dividend: str, divisor: str) -> str:
    """fmod(dividend, divisor) exactly (ClickHouse's float modulo is not). With x = mx·2^ex and d = md·2^ed
    (integer significands): |x| < |d| when ex < ed, else fmod = ((mx mod md)·(2^(ex-ed) mod md) mod md)·2^ed."""

    def magnitude(dividend_significand: str, dividend_exponent: str, modulus: str, divisor_exponent: str) -> str:
        shift = f"toUInt32(greatest({dividend_exponent} - {divisor_exponent}, 0))"
        power, bit = "__jl_power", "__jl_bit"
        # 2^shift mod modulus by square-and-multiply over the 12 bits of shift: (result, 2^(2^bit) mod modulus).
        power_of_two = (
            f"arrayFold(({power}, {bit}) -> (modulo({power}.1 * if(bitTest({shift}, {bit}), {power}.2, toUInt128(1)),"
            f" {modulus}), modulo({power}.2 * {power}.2, {modulus})), range(12),"
            f" (toUInt128(1), modulo(toUInt128(2), {modulus}))).1"
        )
        scaled = f"toFloat64(modulo(modulo(toUInt128({dividend_significand}), {modulus}) * {power_of_two}, {modulus}))"
        return f"if({dividend_exponent} < {divisor_exponent}, abs({dividend}), {scaled} * exp2({divisor_exponent}))"

    def signed(dividend_parts: list[str], divisor_parts: list[str]) -> str:
        dividend_significand, dividend_exponent = dividend_parts
        divisor_significand, divisor_exponent = divisor_parts
        result = compiler.let(
            f"toUInt128(greatest({divisor_significand}, 1))",
            lambda modulus: compiler.let(
                magnitude(dividend_significand, dividend_exponent, modulus, divisor_exponent),
                lambda value: f"if({dividend} < 0, negate({value}), {value})",
            ),
        )
        return (
            f"multiIf(NOT isFinite({dividend}) OR isNaN({divisor}), nan, isInfinite({divisor}), {dividend}, {result})"
        )

    return _with_float_parts(
        compiler, dividend, lambda mine: _with_float_parts(compiler, divisor, lambda theirs: signed(mine, theirs))
    )


def _with_float_parts(compiler: Compilation, number: str, body: Callable[[list[str]], str]) -> str:
    """`body([significand, exponent])` for |number| (finite) = significand·2^exponent, integer significand."""

    def parts(bits: str) -> str:
        biased = f"toInt32(bitShiftRight({bits}, 52))"
        fraction = f"bitAnd({bits}, 4503599627370495)"
        significand = f"if({biased} = 0, {fraction}, bitOr({fraction}, 4503599627370496))"
        exponent = f"if({biased} = 0, -1074, {biased} - 1075)"
        return compiler.let_all([significand, exponent], body)

    return compiler.let(f"reinterpretAsUInt64(abs({number}))", parts)


def _compile_extreme(function: str) -> Callable[[Compilation, list[Any]], Typed]:
    """`min`/`max`: NaN when any operand is NaN (ClickHouse's least/greatest skip NaN), else least/greatest."""

    def compile_extreme(compiler: Compilation, arguments: list[Any]) -> Typed:
        operands = [compiler.sql(js_number(compiler, compiler.value(argument))) for argument in arguments]

        def extreme(values: list[str]) -> str:
            any_nan = " OR ".join(f"isNaN({value})" for value in values)
            chosen = values[0] if len(values) == 1 else f"{function}({', '.join(values)})"
            return f"if({any_nan}, nan, {chosen})"

        return typed_number(compiler.let_all(operands, extreme))

    return compile_extreme


def _compile_cat(compiler: Compilation, arguments: list[Any]) -> Typed:
    parts = [compiler.sql(js_string(compiler, compiler.value(argument), "cat")) for argument in arguments]
    if len(parts) == 1:
        return typed_string(parts[0])
    return typed_string(f"concat({', '.join(parts)})")


def _compile_substr(compiler: Compilation, arguments: list[Any]) -> Typed:
    """json-logic-js `substr`: String.prototype.substr over UTF-16 code units, where a negative length drops
    that many units from the end."""
    source, start, length = (compiler.argument(arguments, index) for index in range(3))
    astral = quote_string("[\\x{10000}-\\x{10FFFF}]")

    def cut(text: str, size: str, offset: str) -> str:
        def between(first: str, last: str) -> str:
            code_points = f"substringUTF8({text}, toInt64({first}) + 1, toInt64({last} - {first}))"
            units = (
                f"substring(convertCharset({text}, 'UTF-8', 'UTF-16BE'), toInt64(2 * {first}) + 1,"
                f" toInt64(2 * ({last} - {first})))"
            )
            return f"if(match({text}, {astral}), {_from_utf16_sql(compiler, units)}, {code_points})"

        first_sql = f"if({offset} < 0, greatest({size} + {offset}, 0), least({offset}, {size}))"
        return compiler.let(
            first_sql,
            lambda first: compiler.let(_substr_end(compiler, length, first, size), lambda last: between(first, last)),
        )

    text_sql = compiler.sql(js_string(compiler, source, "substr"))
    sql = compiler.let(
        text_sql,
        lambda text: compiler.let_all(
            [f"toFloat64(lengthUTF8({text}) + countMatches({text}, {astral}))", _to_integer(compiler, start)],
            lambda bound: cut(text, *bound),
        ),
    )
    return Typed(Kind.STRING, sql, lone_surrogates=True)


def _to_integer(compiler: Compilation, typed: Typed) -> str:
    """ECMAScript ToIntegerOrInfinity as a Float64 SQL expression."""
    number = compiler.sql(js_number(compiler, typed))
    return compiler.let(number, lambda value: f"if(isNaN({value}), 0., trunc({value}))")


def _substr_end(compiler: Compilation, length: Typed, first: str, size: str) -> str:
    """The end (in code units) of json-logic-js's `substr(source, start, length)`."""
    if length.kind is Kind.UNDEFINED:
        return size

    def end(number: str) -> str:
        count = f"if(isNaN({number}), 0., trunc({number}))"
        plain_end = f"least({first} + greatest({count}, 0), {size})"
        if length.kind in (Kind.STRING, Kind.ARRAY):
            # A negative length in text is concatenated to the remaining length, which is never a number: "".
            return f"if({number} < 0, {first}, {plain_end})"
        remaining = f"({size} - {first})"
        dropped_end = f"{first} + least(greatest(trunc({remaining} + {number}), 0), {remaining})"
        return f"if({number} < 0, {dropped_end}, {plain_end})"

    return compiler.let(compiler.sql(js_number(compiler, length)), end)


def _from_utf16_sql(compiler: Compilation, units_sql: str) -> str:
    """UTF-16BE code units as text; a half surrogate pair at either end is written as its WTF-8 bytes."""

    def assemble(units: str, count: str, head: str, tail: str) -> str:
        lone_head = f"toUInt8({count} > 0 AND bitAnd({head}, 64512) = 56320)"
        lone_tail = f"toUInt8({count} > 0 AND bitAnd({tail}, 64512) = 55296)"

        def join(head_cut: str, tail_cut: str) -> str:
            middle = f"substring({units}, 1 + 2 * {head_cut}, 2 * ({count} - {head_cut} - {tail_cut}))"
            return (
                f"concat(if({head_cut} = 1, {_wtf8_sql(head)}, ''), convertCharset({middle}, 'UTF-16BE', 'UTF-8'),"
                f" if({tail_cut} = 1, {_wtf8_sql(tail)}, ''))"
            )

        return compiler.let_all([lone_head, lone_tail], lambda cuts: join(*cuts))

    def with_units(units: str) -> str:
        count = f"intDiv(length({units}), 2)"
        return compiler.let(
            count,
            lambda count: compiler.let_all(
                [
                    f"reinterpretAsUInt16(reverse(substring({units}, 1, 2)))",
                    f"reinterpretAsUInt16(reverse(substring({units}, 2 * {count} - 1, 2)))",
                ],
                lambda ends: assemble(units, count, *ends),
            ),
        )

    return compiler.let(units_sql, with_units)


def _wtf8_sql(unit: str) -> str:
    return (
        f"char(224 + bitShiftRight({unit}, 12), 128 + bitAnd(bitShiftRight({unit}, 6), 63), 128 + bitAnd({unit}, 63))"
    )


def _compile_in(compiler: Compilation, arguments: list[Any]) -> Typed:
    needle, haystack = compiler.argument(arguments, 0), compiler.argument(arguments, 1)
    if haystack.kind is Kind.ARRAY:
        return typed_bool(split_nulls(compiler, [needle], lambda item: membership_sql(compiler, item, haystack.value)))
    if haystack.kind is Kind.STRING:
        return typed_bool(split_nulls(compiler, [haystack], lambda text: contains_sql(compiler, needle, text)))
    if haystack.kind in (Kind.NUMBER, Kind.BOOL, Kind.NULL, Kind.UNDEFINED):
        return constant(False)
    raise NotCompilable(f"in over a {haystack.kind.value} value")


def _compile_matches(compiler: Compilation, arguments: list[Any]) -> Typed:
    """`matches` [text, pattern]: RE2 search; ClickHouse lets `.` match a newline unless told `(?-s)`."""
    text, pattern = compiler.argument(arguments, 0), compiler.argument(arguments, 1)
    if not pattern.is_constant:
        raise NotCompilable("matches is compiled only with a literal pattern")
    if pattern.value is None or pattern.value is UNDEFINED:
        return constant(False)
    source = to_string(pattern.value)
    if "\x00" in source:
        raise NotCompilable("ClickHouse regular expressions cannot contain NUL")
    try:
        compile_pattern(source)
    except LogicEvaluationError as error:
        raise NotCompilable(str(error)) from None
    text_sql = compiler.sql(js_string(compiler, text, "matches"))
    return typed_bool(f"match({text_sql}, {compiler.parameter('String', valid_text('(?-s)' + source))})")


def _compile_var(compiler: Compilation, arguments: list[Any]) -> Typed:
    chosen_name = _var_of_choice(arguments)
    if chosen_name is not None:
        return compiler.value(chosen_name)
    name = compiler.argument(arguments, 0)
    if not name.is_constant:
        raise NotCompilable("var with a computed name")
    if name.value is None or name.value is UNDEFINED or name.value == "":
        raise NotCompilable("var of the whole data object")
    path = to_string(name.value)
    if path in compiler.fields:
        return Typed(_FIELD_KINDS[compiler.fields[path]], compiler.column(path))
    _refuse_object_path(compiler.fields, path)
    return compiler.argument(arguments, 1) if len(arguments) > 1 else constant(None)


_FIELD_KINDS = {FieldType.NUMBER: Kind.NUMBER, FieldType.STRING: Kind.STRING, FieldType.BOOLEAN: Kind.BOOL}


def _var_of_choice(arguments: list[Any]) -> Any:
    """`{"var": [{"if": [c, "a", "b"]}, d]}` as `{"if": [c, {"var": ["a", d]}, {"var": ["b", d]}]}` (the same
    value: var reads the name the `if` chose), or None for any other var."""
    if not (arguments and json_logic.is_logic(arguments[0]) and next(iter(arguments[0])) in ("if", "?:")):
        return None
    operator = next(iter(arguments[0]))
    branches = arguments_of(arguments[0][operator])
    chosen = [
        branch if position % 2 == 0 and position < len(branches) - 1 else {"var": [branch, *arguments[1:2]]}
        for position, branch in enumerate(branches)
    ]
    if len(branches) % 2 == 0:
        chosen.append({"var": [None, *arguments[1:2]]})
    return {"if": chosen}


def _refuse_object_path(fields: Mapping[str, FieldType], path: str) -> None:
    """Refuses a path naming an object (`prev`) or a character or the length of text (`campaign_id.0`);
    any other path outside the fields reads nothing."""
    if any(name.startswith(path + ".") for name in fields):
        raise NotCompilable(f"var {path!r} names an object")
    keys = path.split(".")
    for end in range(1, len(keys)):
        if fields.get(".".join(keys[:end])) is FieldType.STRING and _is_text_property(keys[end]):
            raise NotCompilable(f"var {path!r} reads the length or a character of text")


def _is_text_property(key: str) -> bool:
    return key == "length" or key == "0" or (key.isdigit() and key.isascii() and not key.startswith("0"))


def _missing_states(compiler: Compilation, keys: list[Any]) -> list[str]:
    """Per key, SQL 0/1 (or a literal) for "var of the key is null or empty text"."""
    states = []
    for key in keys:
        if not (isinstance(key, str) or is_number(key)) or key == "":
            raise NotCompilable("missing with a key that is not a literal name")
        path = to_string(key)
        if path in compiler.fields:
            is_text = compiler.fields[path] is FieldType.STRING
            states.append(f"empty({compiler.column(path)})" if is_text else "0")
        elif any(name.startswith(path + ".") for name in compiler.fields):
            states.append("0")
        else:
            _refuse_object_path(compiler.fields, path)
            states.append("1")
    return states


def _missing_keys(compiler: Compilation, arguments: list[Any]) -> list[Any]:
    values = [compiler.value(argument) for argument in arguments]
    if not all(value.is_constant for value in values):
        raise NotCompilable("missing with computed keys")
    keys = [value.value for value in values]
    return keys[0] if keys and isinstance(keys[0], list) else keys


def _truth_missing(compiler: Compilation, arguments: list[Any]) -> str:
    states = _missing_states(compiler, _missing_keys(compiler, arguments))
    return "(" + " OR ".join(states) + ")" if states else "0"


def _compile_missing(compiler: Compilation, arguments: list[Any]) -> Typed:
    keys = _missing_keys(compiler, arguments)
    states = _missing_states(compiler, keys)
    if any(state not in ("0", "1") for state in states):
        raise NotCompilable("missing used as a value depends on the row")
    return constant([key for key, state in zip(keys, states) if state == "1"])


def _truth_missing_some(compiler: Compilation, arguments: list[Any]) -> str:
    need, options = compiler.argument(arguments, 0), compiler.argument(arguments, 1)
    if not (need.is_constant and options.is_constant and isinstance(options.value, list)):
        raise NotCompilable("missing_some with computed arguments")
    keys = options.value[0] if options.value and isinstance(options.value[0], list) else options.value
    states = _missing_states(compiler, keys)
    if not states:
        return "0"
    missing_count = "(" + " + ".join(f"toInt64({state})" for state in states) + ")"
    present = f"toFloat64({len(options.value)} - {missing_count})"
    return f"(NOT ({present} >= {compiler.sql(js_number(compiler, need))}) AND {missing_count} > 0)"


def _compile_missing_some(compiler: Compilation, arguments: list[Any]) -> Typed:
    raise NotCompilable("missing_some used as a value depends on the row")


def _compile_scoped(operator: str) -> Callable[[Compilation, list[Any]], Typed]:
    """`map`, `filter`, `reduce`, `all`, `none`, `some`: compiled only when their array (and the initial value of
    `reduce`) does not depend on the row, by running them in the interpreter at compile time."""

    def compile_scoped(compiler: Compilation, arguments: list[Any]) -> Typed:
        items = compiler.argument(arguments, 0)
        with_initial = operator == "reduce" and len(arguments) > 2
        initial = compiler.argument(arguments, 2) if with_initial else constant(None)
        if not (items.is_constant and initial.is_constant):
            raise NotCompilable(f"{operator} over values from the row")
        scoped_values = [{"var": "items"}, *arguments[1:2], *([{"var": "initial"}] if with_initial else [])]
        try:
            data = {"items": items.value, "initial": initial.value}
            return constant(evaluate_javascript({operator: scoped_values}, data))
        except LogicEvaluationError as error:
            raise NotCompilable(str(error)) from None

    return compile_scoped


def _truth_merge(compiler: Compilation, arguments: list[Any]) -> str:
    """A merge is truthy unless every argument is an empty array (each non-array adds one element)."""
    kinds = [compiler.kind_of(argument) for argument in arguments]
    return "1" if any(kind.kind is not Kind.ARRAY or kind.value for kind in kinds) else "0"


# Operators whose operands are evaluated lazily, compiled by value and by truthiness.


def _unify(branches: list[Typed], operator: str) -> tuple[Kind, bool]:
    """The common static type of values one of which is the result, or NotCompilable."""
    kinds = {branch.kind for branch in branches} - {Kind.NULL}
    if kinds & {Kind.ARRAY, Kind.UNDEFINED}:
        raise NotCompilable(f"{operator} yielding an array or undefined as a value")
    if len(kinds) > 1:
        raise NotCompilable(f"{operator} mixes {' and '.join(sorted(kind.value for kind in kinds))} values")
    nullable = any(branch.nullable or branch.kind is Kind.NULL for branch in branches)
    return (kinds.pop() if kinds else Kind.NULL), nullable


def _choice(compiler: Compilation, pairs: list[tuple[str, Typed]], otherwise: Typed, operator: str) -> Typed:
    """The value of the first pair whose SQL condition holds, else `otherwise`."""
    if not pairs:
        return otherwise
    kind, nullable = _unify([value for _, value in pairs] + [otherwise], operator)
    if kind is Kind.NULL:
        return constant(None)
    parts = [part for condition, value in pairs for part in (condition, compiler.sql(value))]
    cut = any(value.lone_surrogates for _, value in pairs) or otherwise.lone_surrogates
    return Typed(kind, f"multiIf({', '.join(parts)}, {compiler.sql(otherwise)})", nullable, lone_surrogates=cut)


def _if_branches(compiler: Compilation, arguments: list[Any]) -> tuple[list[tuple[str, Any]], Any]:
    """The (condition SQL, consequent node) pairs of an `if` that can be taken, and the node taken otherwise;
    literal conditions are decided at compile time."""
    pairs = []
    index = 0
    while index < len(arguments) - 1:
        condition = compiler.truth(arguments[index])
        if condition == "1":
            return pairs, arguments[index + 1]
        if condition != "0":
            pairs.append((condition, arguments[index + 1]))
        index += 2
    return pairs, (arguments[index] if index == len(arguments) - 1 else None)


def _compile_if(compiler: Compilation, arguments: list[Any]) -> Typed:
    pairs, otherwise = _if_branches(compiler, arguments)
    typed_pairs = [(condition, compiler.value(node)) for condition, node in pairs]
    return _choice(compiler, typed_pairs, compiler.value(otherwise), "if")


def _truth_if(compiler: Compilation, arguments: list[Any]) -> str:
    pairs, otherwise = _if_branches(compiler, arguments)
    if not pairs:
        return compiler.truth(otherwise)
    parts = [part for condition, node in pairs for part in (condition, compiler.truth(node))]
    return f"multiIf({', '.join(parts)}, {compiler.truth(otherwise)})"


def _short_circuit(compiler: Compilation, arguments: list[Any], stop_when: bool) -> list[tuple[Typed, str]]:
    """The operands of `and` (stop_when=False) or `or` (True) that can decide the result, with their truth;
    a literal operand that cannot stop evaluation is dropped unless it is the last."""
    operands = []
    for position, argument in enumerate(arguments):
        typed = compiler.value(argument)
        truth = compiler.truth_of(typed)
        is_last = position == len(arguments) - 1
        if typed.is_constant and not is_last:
            if truthy(typed.value) == stop_when:
                operands.append((typed, truth))
                break
            continue
        operands.append((typed, truth))
    return operands


def _compile_and_or(stop_when: bool, operator: str) -> Callable[[Compilation, list[Any]], Typed]:
    """`and` returns the first falsy operand or the last; `or` the first truthy or the last."""

    def compile_and_or(compiler: Compilation, arguments: list[Any]) -> Typed:
        if not arguments:
            return constant(UNDEFINED)
        operands = _short_circuit(compiler, arguments, stop_when)
        *deciding, (last, _) = operands
        pairs = [(truth if stop_when else f"NOT {truth}", typed) for typed, truth in deciding]
        return _choice(compiler, pairs, last, operator)

    return compile_and_or


def _truth_and_or(stop_when: bool) -> Callable[[Compilation, list[Any]], str]:
    def truth_and_or(compiler: Compilation, arguments: list[Any]) -> str:
        truths = [compiler.truth(argument) for argument in arguments]
        if not truths:
            return "0"
        if str(int(stop_when)) in truths:
            return str(int(stop_when))
        truths = [truth for truth in truths if truth != str(int(not stop_when))] or [str(int(not stop_when))]
        joiner = " OR " if stop_when else " AND "
        return "(" + joiner.join(truths) + ")"

    return truth_and_or


VALUE_OPERATORS: dict[str, Callable[[Compilation, list[Any]], Typed]] = {
    "==": _compile_equality(loose_equals_sql, negated=False),
    "!=": _compile_equality(loose_equals_sql, negated=True),
    "===": _compile_equality(strict_equals_sql, negated=False),
    "!==": _compile_equality(strict_equals_sql, negated=True),
    "<": _compile_chain(or_equal=False),
    "<=": _compile_chain(or_equal=True),
    ">": _compile_reversed(or_equal=False),
    ">=": _compile_reversed(or_equal=True),
    "!": _compile_not,
    "!!": _compile_double_not,
    "and": _compile_and_or(stop_when=False, operator="and"),
    "or": _compile_and_or(stop_when=True, operator="or"),
    "if": _compile_if,
    "?:": _compile_if,
    "+": _compile_add,
    "-": _compile_subtract,
    "*": _compile_multiply,
    "/": _compile_divide,
    "%": _compile_remainder,
    "min": _compile_extreme("least"),
    "max": _compile_extreme("greatest"),
    "cat": _compile_cat,
    "substr": _compile_substr,
    "in": _compile_in,
    "matches": _compile_matches,
    "naming": compile_naming,
    "var": _compile_var,
    "missing": _compile_missing,
    "missing_some": _compile_missing_some,
    **{operator: _compile_scoped(operator) for operator in sorted(SCOPED_OPERATORS)},
}

TRUTH_OPERATORS: dict[str, Callable[[Compilation, list[Any]], str]] = {
    "and": _truth_and_or(stop_when=False),
    "or": _truth_and_or(stop_when=True),
    "if": _truth_if,
    "?:": _truth_if,
    "missing": _truth_missing,
    "missing_some": _truth_missing_some,
    "merge": _truth_merge,
}
