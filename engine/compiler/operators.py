"""Compiles JSON Logic to ClickHouse SQL over one entity row, with the interpreter's semantics exactly.

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

Refused (NotCompilable, the rule runs on the interpreter): values whose type depends on the row (`if`, `and`,
`or` mixing numbers, text and booleans where the value, not only its truthiness, is used), arrays or objects
built from the row, `missing`/`missing_some` used as values where the answer depends on the row, the scoped
operations (`map`, `filter`, `reduce`, `all`, `none`, `some`) and `merge` over the row, `var` of a computed
name, of an object (`prev`) or of a text's length or characters, `matches` with a computed pattern, text with
unpaired surrogates in a literal, `log`, unknown operators, and SQL longer than MAX_SQL_LENGTH.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, Callable, Mapping

import json_logic

from engine.errors import LogicEvaluationError, NotCompilable
from engine.fields import FieldType
from engine.interpreter import (
    JS_WHITESPACE,
    UNDEFINED,
    compile_pattern,
    evaluate_javascript,
    is_number,
    js_less,
    js_less_or_equal,
    loose_equals,
    parse_float,
    strict_equals,
    to_number,
    to_string,
    truthy,
)

MAX_SQL_LENGTH = 64 * 1024
# SQL cheap enough to write twice: a column, a parameter, a number, a name.
_PARAMETER_NAME = re.compile(r"\{(p[0-9]+):")
_SIMPLE_SQL = re.compile(r"`[^`\\]*`|\{p[0-9]+:[A-Za-z0-9()]+\}|-?[0-9.]+|[A-Za-z_][A-Za-z0-9_]*")
_SCOPED_OPERATORS = frozenset({"filter", "map", "reduce", "all", "none", "some"})
_DATA_OPERATORS = frozenset({"var", "missing", "missing_some"})


class Kind(str, Enum):
    """The static JavaScript type of a compiled subexpression."""

    NUMBER = "number"
    STRING = "string"
    BOOL = "bool"
    NULL = "null"
    UNDEFINED = "undefined"
    ARRAY = "array"


_NOT_CONSTANT = object()


@dataclass(frozen=True)
class Typed:
    """A compiled subexpression: its SQL (None for a constant not yet written), static kind and nullability."""

    kind: Kind
    sql: str | None = None
    nullable: bool = False
    value: Any = _NOT_CONSTANT
    # Text from `substr` may begin or end with half of a UTF-16 surrogate pair, held as its WTF-8 bytes:
    # it compares equal only to the same units, like in JavaScript, but nothing else may read it as text.
    lone_surrogates: bool = False

    @property
    def is_constant(self) -> bool:
        return self.value is not _NOT_CONSTANT


@dataclass(frozen=True)
class CompiledLogic:
    """A rule's logic as ClickHouse SQL over one entity row."""

    matched: str
    conditions: tuple[str, ...]
    variables: tuple[str, ...]
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CompiledValue:
    """The value of a logic as one SQL expression of a static kind (for diagnostics and tests)."""

    sql: str
    kind: Kind
    nullable: bool
    parameters: dict[str, Any]


def compile_logic(logic: Any, fields: Mapping[str, FieldType]) -> CompiledLogic:
    """Compiles `logic` over a row with `fields`.

    `matched` is the JSON Logic truthiness of the whole logic as UInt8 0/1; `conditions` the truthiness of each
    element of a top-level `and`/`or` (else of the whole logic); `variables` the sorted field names the logic
    reads; `parameters` the values of the `{name:Type}` query parameters the SQL references.
    Raises NotCompilable when the SQL could not agree with the interpreter for every row.
    """
    compiler = _Compiler(fields)
    matched = compiler.truth(logic)
    conditions = tuple(compiler.truth(condition) for condition in top_level_conditions(logic))
    _check_size(matched, *conditions)
    return CompiledLogic(matched, conditions, logic_variables(logic, fields),
                         _referenced(compiler.parameters, matched, *conditions))


def compile_value(logic: Any, fields: Mapping[str, FieldType]) -> CompiledValue:
    """The value of `logic` (not only its truthiness) as one SQL expression; NotCompilable as compile_logic."""
    compiler = _Compiler(fields)
    typed = compiler.value(logic)
    if typed.kind in (Kind.ARRAY, Kind.UNDEFINED):
        raise NotCompilable(f"a {typed.kind.value} value has no SQL form")
    sql = compiler.sql(typed)
    _check_size(sql)
    return CompiledValue(sql, typed.kind, typed.nullable or typed.kind is Kind.NULL,
                         _referenced(compiler.parameters, sql))


def _referenced(parameters: dict[str, Any], *expressions: str) -> dict[str, Any]:
    # A subexpression folded away after compiling (e.g. a comparison that is constant for every row) leaves its
    # parameters behind; only those the final SQL names are passed to ClickHouse.
    named = {match.group(1) for expression in expressions for match in _PARAMETER_NAME.finditer(expression)}
    return {name: value for name, value in parameters.items() if name in named}


def top_level_conditions(logic: Any) -> list[Any]:
    """The conditions whose outcomes a run records: the operands of a top-level `and`/`or`, else the logic itself."""
    if json_logic.is_logic(logic):
        operator = next(iter(logic))
        if operator in ("and", "or"):
            return _arguments(logic[operator])
    return [logic]


def _check_size(*expressions: str) -> None:
    if sum(map(len, expressions)) > MAX_SQL_LENGTH:
        raise NotCompilable(f"the SQL for this logic would exceed {MAX_SQL_LENGTH} characters")


def _arguments(values: Any) -> list[Any]:
    return values if isinstance(values, list) else [values]


def logic_variables(logic: Any, fields: Mapping[str, FieldType]) -> tuple[str, ...]:
    """Every field named by a literal `var`, `missing` or `missing_some` key anywhere in the logic."""
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, list):
            for element in node:
                visit(element)
        elif json_logic.is_logic(node):
            operator = next(iter(node))
            arguments = _arguments(node[operator])
            if operator in _DATA_OPERATORS:
                for key in _literal_keys(operator, arguments):
                    if to_string(key) in fields:
                        names.add(to_string(key))
            # The logic of a scoped operation reads the elements of its array, not the row.
            visit(arguments[:1] + arguments[2:3] if operator in _SCOPED_OPERATORS else arguments)

    visit(logic)
    return tuple(sorted(names))


def _literal_keys(operator: str, arguments: list[Any]) -> list[Any]:
    if operator == "var":
        return arguments[:1]
    if operator == "missing_some":
        arguments = arguments[1:2]
        arguments = arguments[0] if arguments and isinstance(arguments[0], list) else arguments
    elif arguments and isinstance(arguments[0], list):
        arguments = arguments[0]
    return [key for key in arguments if isinstance(key, str) or is_number(key)]


def _reads_data(node: Any) -> bool:
    """Whether the value of `node` can depend on the row (the arguments of scoped operations see their own data)."""
    if isinstance(node, list):
        return any(_reads_data(element) for element in node)
    if not json_logic.is_logic(node):
        return False
    operator = next(iter(node))
    arguments = _arguments(node[operator])
    if operator in _DATA_OPERATORS:
        return True
    if operator in _SCOPED_OPERATORS:
        return _reads_data(arguments[:1] + arguments[2:3])
    return _reads_data(arguments)


def _constant(value: Any) -> Typed:
    return Typed(_kind_of(value), value=value)


def _kind_of(value: Any) -> Kind:
    if value is None:
        return Kind.NULL
    if value is UNDEFINED:
        return Kind.UNDEFINED
    if isinstance(value, bool):
        return Kind.BOOL
    if is_number(value):
        return Kind.NUMBER
    if isinstance(value, str):
        return Kind.STRING
    if isinstance(value, list):
        return Kind.ARRAY
    raise NotCompilable("objects have no SQL form")


def _bool(sql: str) -> Typed:
    return Typed(Kind.BOOL, sql)


def _number(sql: str, nullable: bool = False) -> Typed:
    return Typed(Kind.NUMBER, sql, nullable)


def _string(sql: str) -> Typed:
    return Typed(Kind.STRING, sql)


def _sql_text(text: str) -> str:
    """A SQL string literal for text the compiler itself wrote (never text from a rule)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _quote_column(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


class _Compiler:
    """One compilation: the fields, and the query parameters collected so far."""

    def __init__(self, fields: Mapping[str, FieldType]) -> None:
        self.fields = fields
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
            name = f"p{len(self._parameter_names)}"
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
            return self.parameter("String", _valid_text(value))
        raise NotCompilable(f"a {typed.kind.value} value has no SQL form")

    def value(self, node: Any) -> Typed:
        """The compiled value of `node`."""
        if not _reads_data(node):
            return _constant(_fold(node))
        if isinstance(node, list):
            raise NotCompilable("arrays built from the row have no SQL form")
        operator = next(iter(node))
        compile_operation = _VALUE_OPERATORS.get(operator)
        if compile_operation is None:
            raise NotCompilable(f"operator {operator!r} is not compiled to SQL")
        return compile_operation(self, _arguments(node[operator]))

    def truth(self, node: Any) -> str:
        """SQL UInt8 0/1: the JSON Logic truthiness of `node`."""
        if isinstance(node, list) and _reads_data(node):
            for element in node:
                self.kind_of(element)
            return "1"
        if _reads_data(node) and json_logic.is_logic(node):
            operator = next(iter(node))
            compile_truth = _TRUTH_OPERATORS.get(operator)
            if compile_truth is not None:
                return compile_truth(self, _arguments(node[operator]))
        return self.truth_of(self.value(node))

    def kind_of(self, node: Any) -> Typed:
        """`node` compiled only to learn its static type (or that it cannot compile); its SQL is not used."""
        return _Compiler(self.fields).value(node)

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
            return _constant(UNDEFINED)
        return self.value(arguments[index])


def _parameter_key(value: Any) -> str:
    if isinstance(value, float):
        return value.hex()
    return repr(value)


def _valid_text(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise NotCompilable("text with unpaired UTF-16 surrogates has no SQL form") from None
    return text


def _fold(node: Any) -> Any:
    """The value of a logic that does not read the row, computed by the interpreter."""
    try:
        return evaluate_javascript(node, None)
    except LogicEvaluationError as error:
        raise NotCompilable(str(error)) from None


# Coercions between static kinds.


def _when_not_null(compiler: _Compiler, typed: Typed, null_sql: str, build: Callable[[Typed], str]) -> str:
    """`build` over a nullable value's non-null case, `null_sql` where it is null."""
    if not typed.nullable:
        return build(typed)

    def either(value: str) -> str:
        present = replace(typed, sql=f"assumeNotNull({value})", nullable=False)
        return f"if(isNull({value}), {null_sql}, {build(present)})"

    return compiler.let(compiler.sql(typed), either)


def _split_nulls(compiler: _Compiler, operands: list[Typed], build: Callable[..., str]) -> str:
    """`build(*operands)` with every nullable operand split into its null case (a null constant) and the rest."""
    for index, operand in enumerate(operands):
        if operand.nullable and not operand.is_constant:

            def either(value: str, index: int = index, operand: Typed = operand) -> str:
                as_null = operands[:index] + [_constant(None)] + operands[index + 1 :]
                not_null = replace(operand, sql=f"assumeNotNull({value})", nullable=False)
                as_value = operands[:index] + [not_null] + operands[index + 1 :]
                when_null = _split_nulls(compiler, as_null, build)
                return f"if(isNull({value}), {when_null}, {_split_nulls(compiler, as_value, build)})"

            return compiler.let(compiler.sql(operand), either)
    return build(*operands)


def _to_number(compiler: _Compiler, typed: Typed) -> Typed:
    """JavaScript Number(value) as a non-null Float64."""
    if typed.is_constant:
        return _constant(to_number(typed.value))
    if typed.kind is Kind.NUMBER:
        return typed if not typed.nullable else _number(f"ifNull({typed.sql}, 0.)")
    _refuse_cut_text(typed, "a number")
    converters = {
        Kind.BOOL: lambda operand: f"toFloat64({operand.sql})",
        Kind.STRING: lambda operand: _string_to_number_sql(compiler, operand.sql),
    }
    return _number(_when_not_null(compiler, typed, "0", converters[typed.kind]))


def _parse_float(compiler: _Compiler, typed: Typed) -> Typed:
    """JavaScript parseFloat(value) as a non-null Float64."""
    if typed.is_constant:
        return _constant(parse_float(typed.value))
    if typed.kind is Kind.NUMBER and not typed.nullable:
        return typed
    _refuse_cut_text(typed, "a number")
    converters = {
        Kind.NUMBER: lambda operand: operand.sql,
        Kind.BOOL: lambda operand: "nan",
        Kind.STRING: lambda operand: _parse_float_sql(compiler, operand.sql),
    }
    return _number(_when_not_null(compiler, typed, "nan", converters[typed.kind]))


def _to_text(compiler: _Compiler, typed: Typed, purpose: str) -> Typed:
    """JavaScript String(value) as a non-null String; `cat` joins like Array.prototype.join, writing null and
    undefined as ""."""
    joined = purpose == "cat"
    if typed.is_constant:
        value = typed.value
        return _constant("" if joined and value in (None, UNDEFINED) else to_string(value))
    null_text = "" if joined else "null"
    _refuse_cut_text(typed, purpose)
    converters = {
        Kind.NUMBER: lambda operand: _number_text_sql(compiler, operand.sql),
        Kind.STRING: lambda operand: operand.sql,
        Kind.BOOL: lambda operand: f"if({operand.sql}, 'true', 'false')",
    }
    return _string(_when_not_null(compiler, typed, _sql_text(null_text), converters[typed.kind]))


def _number_text_sql(compiler: _Compiler, number_sql: str) -> str:
    """JavaScript String(number) in SQL. ClickHouse writes a Float64 with the same shortest round-trip digits
    as JavaScript, laid out differently, so the digits are laid out again; only integers in [2^53, 2^63),
    which ClickHouse writes exactly instead, get their shortest digits computed here."""

    def positive(magnitude: str) -> str:
        exact_integer = (
            f"{magnitude} >= 9007199254740992 AND {magnitude} < 9223372036854775808"
            f" AND {magnitude} = trunc({magnitude})"
        )
        layout = _javascript_layout_sql(compiler, f"toString({magnitude})")
        return f"multiIf({exact_integer}, toString({_shortest_integer_sql(compiler, magnitude)}), {layout})"

    def text(number: str) -> str:
        magnitude = compiler.let(f"abs({number})", positive)
        return (
            f"multiIf(isNaN({number}), 'NaN', {number} = 0, '0',"
            f" concat(if({number} < 0, '-', ''), if(isInfinite({number}), 'Infinity', {magnitude})))"
        )

    return compiler.let(number_sql, text)


def _shortest_integer_sql(compiler: _Compiler, magnitude: str) -> str:
    """For an integral Float64 in [2^53, 2^63): the integer with the fewest significant digits that rounds to
    it, the closest of those, an even last digit on a tie (ECMAScript Number::toString)."""

    def shortest(integer: str) -> str:
        candidates = []
        for power in range(19, 0, -1):
            scale = f"toUInt64({10**power})"
            if 10**power > 2048:
                # Doubles here are at most 2048 apart, so only the multiple nearest to the integer can round to it.
                candidates.append(f"intDiv({integer} + {10**power // 2}, {scale}) * {scale}")
                continue
            below = f"intDiv({integer}, {scale}) * {scale}"
            above = f"({below} + {scale})"
            below_first = (
                f"{integer} - {below} < {above} - {integer} OR"
                f" ({integer} - {below} = {above} - {integer} AND modulo(intDiv({integer}, {scale}), 2) = 0)"
            )
            candidates.append(f"if({below_first}, {below}, {above})")
            candidates.append(f"if({below_first}, {above}, {below})")
        candidates.append(integer)
        return f"arrayFirst(__jl_candidate -> toFloat64(__jl_candidate) = {magnitude}, [{', '.join(candidates)}])"

    return compiler.let(f"toUInt64(if({magnitude} < 9223372036854775808, {magnitude}, 0))", shortest)


def _javascript_layout_sql(compiler: _Compiler, text_sql: str) -> str:
    """ClickHouse's text of a positive finite number laid out as ECMAScript Number::toString does."""

    def layout(digits: str, point: str, count: str) -> str:
        after = f"({point} - 1)"
        scientific = (
            f"concat(substring({digits}, 1, 1), if({count} = 1, '', concat('.', substring({digits}, 2))), 'e',"
            f" if({after} >= 0, '+', '-'), toString(abs({after})))"
        )
        return (
            f"multiIf({count} <= {point} AND {point} <= 21,"
            f" concat({digits}, repeat('0', toUInt32(greatest({point} - {count}, 0)))),"
            f" 0 < {point} AND {point} <= 21, concat(substring({digits}, 1, toUInt32(greatest({point}, 0))), '.',"
            f" substring({digits}, toUInt32(greatest({point}, 0)) + 1)),"
            f" -6 < {point} AND {point} <= 0, concat('0.', repeat('0', toUInt32(greatest(-{point}, 0))), {digits}),"
            f" {scientific})"
        )

    def with_digits(text: str, whole: str, raw: str) -> str:
        significant = f"trimLeft({raw}, '0')"
        exponent = f"if(position({text}, 'e') > 0, toInt32OrZero(splitByChar('e', {text})[2]), 0)"
        point = f"toInt32(length({whole})) + {exponent} - toInt32(length({raw}) - length({significant}))"
        return compiler.let_all(
            [f"trimRight({significant}, '0')", point],
            lambda bound: compiler.let(f"toInt32(length({bound[0]}))", lambda count: layout(*bound, count)),
        )

    def with_mantissa(text: str, mantissa: str) -> str:
        whole = f"splitByChar('.', {mantissa})[1]"
        fraction = f"if(position({mantissa}, '.') > 0, splitByChar('.', {mantissa})[2], '')"
        return compiler.let_all([whole, f"concat({whole}, {fraction})"], lambda bound: with_digits(text, *bound))

    def split(text: str) -> str:
        return compiler.let(f"splitByChar('e', {text})[1]", lambda mantissa: with_mantissa(text, mantissa))

    return compiler.let(text_sql, split)


def _refuse_cut_text(typed: Typed, purpose: str) -> None:
    if typed.lone_surrogates:
        raise NotCompilable(f"{purpose} of text from substr, which may end inside a UTF-16 surrogate pair")


def _to_primitive(typed: Typed) -> Typed:
    """Arrays compare as their text (JavaScript ToPrimitive)."""
    if typed.kind is Kind.ARRAY:
        return _constant(to_string(typed.value))
    return typed


_WHITESPACE_CLASS = "[" + JS_WHITESPACE.replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r") + "]"
_DECIMAL_PATTERN = r"[+-]?(?:Infinity|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)"


def _string_to_number_sql(compiler: _Compiler, text_sql: str) -> str:
    """JavaScript Number(text) in SQL: trimmed decimal, Infinity, 0x/0o/0b integers, "" → 0, else NaN."""
    blanks = _sql_text("^" + _WHITESPACE_CLASS + "+|" + _WHITESPACE_CLASS + "+$")
    digit = "__jl_digit"

    def convert(trimmed: str, digits: str) -> str:
        hex_bits = f"bin(unhex(if(modulo(length({digits}), 2) = 1, concat('0', {digits}), {digits})))"
        octal_bits = (
            f"arrayStringConcat(arrayMap({digit} -> ['000','001','010','011','100','101','110','111']"
            f"[toUInt8OrZero({digit}) + 1], splitByString('', {digits})))"
        )
        return (
            f"multiIf({trimmed} = '', 0., "
            f"match({trimmed}, {_sql_text('^' + _DECIMAL_PATTERN + '$')}), "
            f"if(endsWith({trimmed}, 'Infinity'), if(startsWith({trimmed}, '-'), -inf, inf), "
            f"toFloat64OrZero({trimmed})), "
            f"match({trimmed}, '^0[xX][0-9a-fA-F]+$'), {_bits_to_number_sql(compiler, hex_bits)}, "
            f"match({trimmed}, '^0[oO][0-7]+$'), {_bits_to_number_sql(compiler, octal_bits)}, "
            f"match({trimmed}, '^0[bB][01]+$'), {_bits_to_number_sql(compiler, digits)}, "
            "nan)"
        )

    return compiler.let(
        f"replaceRegexpAll({text_sql}, {blanks}, '')",
        lambda trimmed: compiler.let(f"substring({trimmed}, 3)", lambda digits: convert(trimmed, digits)),
    )


def _bits_to_number_sql(compiler: _Compiler, bits_sql: str) -> str:
    """An unsigned binary numeral (any length) rounded to the nearest Float64, ties to even, like JavaScript."""

    def convert(bits: str, top: str) -> str:
        sticky = f"toUInt64(position(substring({bits}, 65), '1') > 0)"
        # Rounding the top 64 bits with a sticky bit for the rest is exact rounding of the whole numeral.
        return (
            f"if(length({bits}) <= 64, toFloat64({top}),"
            f" toFloat64(bitOr({top}, {sticky})) * exp2(length({bits}) - 64))"
        )

    return compiler.let(
        f"trimLeft({bits_sql}, '0')",
        lambda bits: compiler.let(
            f"reinterpretAsUInt64(reverse(unbin(substring({bits}, 1, 64))))", lambda top: convert(bits, top)
        ),
    )


def _parse_float_sql(compiler: _Compiler, text_sql: str) -> str:
    """JavaScript parseFloat(text) in SQL: the longest decimal prefix after leading whitespace, else NaN."""
    pattern = _sql_text("^" + _WHITESPACE_CLASS + "*(" + _DECIMAL_PATTERN + ")")
    return compiler.let(
        f"extract({text_sql}, {pattern})",
        lambda prefix: (
            f"multiIf({prefix} = '', nan, endsWith({prefix}, 'Infinity'),"
            f" if(startsWith({prefix}, '-'), -inf, inf), toFloat64OrZero({prefix}))"
        ),
    )


# Comparisons.


def _loose_equals(compiler: _Compiler, left: Typed, right: Typed) -> str:
    return _split_nulls(compiler, [left, right], lambda a, b: _loose_equals_present(compiler, a, b))


def _loose_equals_present(compiler: _Compiler, left: Typed, right: Typed) -> str:
    if left.is_constant and right.is_constant:
        return "1" if loose_equals(left.value, right.value) else "0"
    nullish = (Kind.NULL, Kind.UNDEFINED)
    if left.kind in nullish or right.kind in nullish:
        return "0"
    if left.kind is Kind.BOOL and right.kind is Kind.BOOL:
        return f"({compiler.sql(left)} = {compiler.sql(right)})"
    if left.kind is Kind.BOOL:
        left = _to_number(compiler, left)
    if right.kind is Kind.BOOL:
        right = _to_number(compiler, right)
    left, right = _to_primitive(left), _to_primitive(right)
    if left.is_constant and right.is_constant:
        return "1" if loose_equals(left.value, right.value) else "0"
    if left.kind is not right.kind:
        left, right = _to_number(compiler, left), _to_number(compiler, right)
    return f"({compiler.sql(left)} = {compiler.sql(right)})"


def _strict_equals(compiler: _Compiler, left: Typed, right: Typed) -> str:
    return _split_nulls(compiler, [left, right], lambda a, b: _strict_equals_present(compiler, a, b))


def _strict_equals_present(compiler: _Compiler, left: Typed, right: Typed) -> str:
    if left.is_constant and right.is_constant:
        return "1" if strict_equals(left.value, right.value) else "0"
    if left.kind is not right.kind or left.kind in (Kind.NULL, Kind.UNDEFINED, Kind.ARRAY):
        return "0"
    return f"({compiler.sql(left)} = {compiler.sql(right)})"


def _relation(compiler: _Compiler, left: Typed, right: Typed, or_equal: bool) -> str:
    """JavaScript `left < right` (or `<=`) as SQL."""
    return _split_nulls(
        compiler,
        [_to_primitive(left), _to_primitive(right)],
        lambda a, b: _relation_present(compiler, a, b, or_equal),
    )


def _relation_present(compiler: _Compiler, left: Typed, right: Typed, or_equal: bool) -> str:
    if left.is_constant and right.is_constant:
        compare = js_less_or_equal if or_equal else js_less
        return "1" if compare(left.value, right.value) else "0"
    operator = "<=" if or_equal else "<"
    if left.kind is Kind.STRING and right.kind is Kind.STRING:
        return _text_order(compiler, left, right, operator)
    return f"({compiler.sql(_to_number(compiler, left))} {operator} {compiler.sql(_to_number(compiler, right))})"


def _text_order(compiler: _Compiler, left: Typed, right: Typed, operator: str) -> str:
    """Text order by UTF-16 code units. UTF-8 bytes order the same unless one side has a character at or
    above U+E000 and the other one above U+FFFF, which cannot happen against text below U+D800."""
    left_sql, right_sql = compiler.sql(left), compiler.sql(right)
    if _below_surrogates(left) or _below_surrogates(right):
        return f"({left_sql} {operator} {right_sql})"
    _refuse_cut_text(left, "ordering")
    _refuse_cut_text(right, "ordering")
    return (
        f"(convertCharset({left_sql}, 'UTF-8', 'UTF-16BE') {operator} convertCharset({right_sql}, 'UTF-8', 'UTF-16BE'))"
    )


def _below_surrogates(typed: Typed) -> bool:
    return typed.is_constant and all(character < "\ud800" for character in typed.value)


# Operators: each compiles the rule's (unevaluated) arguments of one operator.


def _compile_loose_equals(compiler: _Compiler, arguments: list[Any]) -> Typed:
    return _bool(_loose_equals(compiler, compiler.argument(arguments, 0), compiler.argument(arguments, 1)))


def _compile_loose_not_equals(compiler: _Compiler, arguments: list[Any]) -> Typed:
    return _bool(f"NOT {_loose_equals(compiler, compiler.argument(arguments, 0), compiler.argument(arguments, 1))}")


def _compile_strict_equals(compiler: _Compiler, arguments: list[Any]) -> Typed:
    return _bool(_strict_equals(compiler, compiler.argument(arguments, 0), compiler.argument(arguments, 1)))


def _compile_strict_not_equals(compiler: _Compiler, arguments: list[Any]) -> Typed:
    return _bool(f"NOT {_strict_equals(compiler, compiler.argument(arguments, 0), compiler.argument(arguments, 1))}")


def _compile_chain(or_equal: bool) -> Callable[[_Compiler, list[Any]], Typed]:
    """`<` and `<=`: two operands, or the three-operand between form when the third is not undefined."""

    def compile_chain(compiler: _Compiler, arguments: list[Any]) -> Typed:
        first, second, third = (compiler.argument(arguments, index) for index in range(3))
        if third.kind is Kind.UNDEFINED:
            return _bool(_relation(compiler, first, second, or_equal))

        def between(middle: str) -> str:
            bound = second if second.is_constant else replace(second, sql=middle)
            return f"({_relation(compiler, first, bound, or_equal)} AND {_relation(compiler, bound, third, or_equal)})"

        return _bool(compiler.let(compiler.sql(second), between))

    return compile_chain


def _compile_reversed(or_equal: bool) -> Callable[[_Compiler, list[Any]], Typed]:
    """`>` and `>=`: `a > b` is `b < a`; a third operand is evaluated and ignored, as in json-logic-js."""

    def compile_reversed(compiler: _Compiler, arguments: list[Any]) -> Typed:
        first, second = compiler.argument(arguments, 0), compiler.argument(arguments, 1)
        return _bool(_relation(compiler, second, first, or_equal))

    return compile_reversed


def _compile_not(compiler: _Compiler, arguments: list[Any]) -> Typed:
    return _bool(f"NOT {_truth_argument(compiler, arguments)}")


def _compile_double_not(compiler: _Compiler, arguments: list[Any]) -> Typed:
    return _bool(_truth_argument(compiler, arguments))


def _truth_argument(compiler: _Compiler, arguments: list[Any]) -> str:
    return compiler.truth(arguments[0]) if arguments else "0"


def _compile_add(compiler: _Compiler, arguments: list[Any]) -> Typed:
    terms = [compiler.sql(_parse_float(compiler, compiler.value(argument))) for argument in arguments]
    return _number("(" + " + ".join(["0.", *terms]) + ")")


def _compile_multiply(compiler: _Compiler, arguments: list[Any]) -> Typed:
    if not arguments:
        raise NotCompilable('"*" needs at least one argument')
    if len(arguments) == 1:
        return compiler.value(arguments[0])
    factors = [compiler.sql(_parse_float(compiler, compiler.value(argument))) for argument in arguments]
    return _number("(" + " * ".join(factors) + ")")


def _compile_subtract(compiler: _Compiler, arguments: list[Any]) -> Typed:
    minuend = compiler.sql(_to_number(compiler, compiler.argument(arguments, 0)))
    subtrahend = compiler.argument(arguments, 1)
    if subtrahend.kind is Kind.UNDEFINED:
        return _number(f"negate({minuend})")
    return _number(f"({minuend} - {compiler.sql(_to_number(compiler, subtrahend))})")


def _compile_divide(compiler: _Compiler, arguments: list[Any]) -> Typed:
    """Division; a zero divisor gives null (a product decision: JavaScript gives ±Infinity or NaN)."""
    dividend = compiler.sql(_to_number(compiler, compiler.argument(arguments, 0)))
    divisor = _to_number(compiler, compiler.argument(arguments, 1))
    if divisor.is_constant:
        if divisor.value == 0:
            return _constant(None)
        return _number(f"({dividend} / {compiler.sql(divisor)})")
    return _number(
        compiler.let(compiler.sql(divisor), lambda value: f"if({value} = 0, NULL, {dividend} / {value})"), nullable=True
    )


def _compile_remainder(compiler: _Compiler, arguments: list[Any]) -> Typed:
    """JavaScript `%` (truncated, sign of the dividend); a zero divisor gives null like division."""
    dividend = compiler.sql(_to_number(compiler, compiler.argument(arguments, 0)))
    divisor = _to_number(compiler, compiler.argument(arguments, 1))
    if divisor.is_constant and divisor.value == 0:
        return _constant(None)

    def remainder(dividend_value: str, divisor_value: str) -> str:
        exact = _remainder_sql(compiler, dividend_value, divisor_value)
        return exact if divisor.is_constant else f"if({divisor_value} = 0, NULL, {exact})"

    sql = compiler.let_all([dividend, compiler.sql(divisor)], lambda bound: remainder(*bound))
    return _number(sql, nullable=not divisor.is_constant)


def _remainder_sql(compiler: _Compiler, dividend: str, divisor: str) -> str:
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


def _with_float_parts(compiler: _Compiler, number: str, body: Callable[[list[str]], str]) -> str:
    """`body([significand, exponent])` for |number| (finite) = significand·2^exponent, integer significand."""

    def parts(bits: str) -> str:
        biased = f"toInt32(bitShiftRight({bits}, 52))"
        fraction = f"bitAnd({bits}, 4503599627370495)"
        significand = f"if({biased} = 0, {fraction}, bitOr({fraction}, 4503599627370496))"
        exponent = f"if({biased} = 0, -1074, {biased} - 1075)"
        return compiler.let_all([significand, exponent], body)

    return compiler.let(f"reinterpretAsUInt64(abs({number}))", parts)


def _compile_extreme(function: str) -> Callable[[_Compiler, list[Any]], Typed]:
    """`min`/`max`: NaN when any operand is NaN (ClickHouse's least/greatest skip NaN), else least/greatest."""

    def compile_extreme(compiler: _Compiler, arguments: list[Any]) -> Typed:
        operands = [compiler.sql(_to_number(compiler, compiler.value(argument))) for argument in arguments]

        def extreme(values: list[str]) -> str:
            any_nan = " OR ".join(f"isNaN({value})" for value in values)
            chosen = values[0] if len(values) == 1 else f"{function}({', '.join(values)})"
            return f"if({any_nan}, nan, {chosen})"

        return _number(compiler.let_all(operands, extreme))

    return compile_extreme


def _compile_cat(compiler: _Compiler, arguments: list[Any]) -> Typed:
    parts = [compiler.sql(_to_text(compiler, compiler.value(argument), "cat")) for argument in arguments]
    if len(parts) == 1:
        return _string(parts[0])
    return _string(f"concat({', '.join(parts)})")


def _compile_substr(compiler: _Compiler, arguments: list[Any]) -> Typed:
    """json-logic-js `substr`: String.prototype.substr over UTF-16 code units, where a negative length drops
    that many units from the end."""
    source, start, length = (compiler.argument(arguments, index) for index in range(3))
    astral = _sql_text("[\\x{10000}-\\x{10FFFF}]")

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

    text_sql = compiler.sql(_to_text(compiler, source, "substr"))
    sql = compiler.let(
        text_sql,
        lambda text: compiler.let_all(
            [f"toFloat64(lengthUTF8({text}) + countMatches({text}, {astral}))", _to_integer(compiler, start)],
            lambda bound: cut(text, *bound),
        ),
    )
    return Typed(Kind.STRING, sql, lone_surrogates=True)


def _to_integer(compiler: _Compiler, typed: Typed) -> str:
    """ECMAScript ToIntegerOrInfinity as a Float64 SQL expression."""
    number = compiler.sql(_to_number(compiler, typed))
    return compiler.let(number, lambda value: f"if(isNaN({value}), 0., trunc({value}))")


def _substr_end(compiler: _Compiler, length: Typed, first: str, size: str) -> str:
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

    return compiler.let(compiler.sql(_to_number(compiler, length)), end)


def _from_utf16_sql(compiler: _Compiler, units_sql: str) -> str:
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


def _compile_in(compiler: _Compiler, arguments: list[Any]) -> Typed:
    needle, haystack = compiler.argument(arguments, 0), compiler.argument(arguments, 1)
    if haystack.kind is Kind.ARRAY:
        return _bool(_split_nulls(compiler, [needle], lambda item: _membership(compiler, item, haystack.value)))
    if haystack.kind is Kind.STRING:
        return _bool(_split_nulls(compiler, [haystack], lambda text: _contains(compiler, needle, text)))
    if haystack.kind in (Kind.NUMBER, Kind.BOOL, Kind.NULL, Kind.UNDEFINED):
        return _constant(False)
    raise NotCompilable(f"in over a {haystack.kind.value} value")


def _membership(compiler: _Compiler, needle: Typed, elements: list[Any]) -> str:
    """JavaScript `elements.indexOf(needle) !== -1`: strict equality with each element."""
    if needle.is_constant:
        return "1" if any(strict_equals(needle.value, element) for element in elements) else "0"
    if needle.kind is Kind.BOOL:
        flags = {element for element in elements if isinstance(element, bool)}
        if len(flags) == 2:
            return "1"
        return f"({compiler.sql(needle)} = {1 if True in flags else 0})" if flags else "0"
    if needle.kind is Kind.NUMBER:
        # ClickHouse sets tell -0 from 0 and find NaN; JavaScript does neither.
        numbers = {to_number(element) + 0.0 for element in elements if is_number(element)}
        numbers = sorted(number for number in numbers if not math.isnan(number))
        if not numbers:
            return "0"
        return f"(({compiler.sql(needle)} + 0.) IN {compiler.parameter('Array(Float64)', numbers)})"
    texts = sorted({_valid_text(element) for element in elements if isinstance(element, str)})
    if not texts:
        return "0"
    return f"({compiler.sql(needle)} IN {compiler.parameter('Array(String)', texts)})"


def _contains(compiler: _Compiler, needle: Typed, haystack: Typed) -> str:
    """JavaScript `haystack.indexOf(String(needle)) !== -1` for text; empty or null text contains nothing."""
    if haystack.is_constant:
        if not haystack.value:
            return "0"
        text = _to_text(compiler, needle, "in")
        return f"(position({compiler.sql(haystack)}, {compiler.sql(text)}) > 0)"
    if haystack.kind is Kind.NULL:
        return "0"
    text = compiler.sql(_to_text(compiler, needle, "in"))
    _refuse_cut_text(haystack, "in")
    return compiler.let(compiler.sql(haystack), lambda value: f"(notEmpty({value}) AND position({value}, {text}) > 0)")


def _compile_matches(compiler: _Compiler, arguments: list[Any]) -> Typed:
    """`matches` [text, pattern]: RE2 search; ClickHouse lets `.` match a newline unless told `(?-s)`."""
    text, pattern = compiler.argument(arguments, 0), compiler.argument(arguments, 1)
    if not pattern.is_constant:
        raise NotCompilable("matches is compiled only with a literal pattern")
    if pattern.value is None or pattern.value is UNDEFINED:
        return _constant(False)
    source = to_string(pattern.value)
    if "\x00" in source:
        raise NotCompilable("ClickHouse regular expressions cannot contain NUL")
    try:
        compile_pattern(source)
    except LogicEvaluationError as error:
        raise NotCompilable(str(error)) from None
    text_sql = compiler.sql(_to_text(compiler, text, "matches"))
    return _bool(f"match({text_sql}, {compiler.parameter('String', _valid_text('(?-s)' + source))})")


def _compile_var(compiler: _Compiler, arguments: list[Any]) -> Typed:
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
        return Typed(_FIELD_KINDS[compiler.fields[path]], _quote_column(path))
    _refuse_object_path(compiler.fields, path)
    return compiler.argument(arguments, 1) if len(arguments) > 1 else _constant(None)


_FIELD_KINDS = {FieldType.NUMBER: Kind.NUMBER, FieldType.STRING: Kind.STRING}


def _var_of_choice(arguments: list[Any]) -> Any:
    """`{"var": [{"if": [c, "a", "b"]}, d]}` as `{"if": [c, {"var": ["a", d]}, {"var": ["b", d]}]}` (the same
    value: var reads the name the `if` chose), or None for any other var."""
    if not (arguments and json_logic.is_logic(arguments[0]) and next(iter(arguments[0])) in ("if", "?:")):
        return None
    operator = next(iter(arguments[0]))
    branches = _arguments(arguments[0][operator])
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


def _missing_states(compiler: _Compiler, keys: list[Any]) -> list[str]:
    """Per key, SQL 0/1 (or a literal) for "var of the key is null or empty text"."""
    states = []
    for key in keys:
        if not (isinstance(key, str) or is_number(key)) or key == "":
            raise NotCompilable("missing with a key that is not a literal name")
        path = to_string(key)
        if path in compiler.fields:
            is_text = compiler.fields[path] is FieldType.STRING
            states.append(f"empty({_quote_column(path)})" if is_text else "0")
        elif any(name.startswith(path + ".") for name in compiler.fields):
            states.append("0")
        else:
            _refuse_object_path(compiler.fields, path)
            states.append("1")
    return states


def _missing_keys(compiler: _Compiler, arguments: list[Any]) -> list[Any]:
    values = [compiler.value(argument) for argument in arguments]
    if not all(value.is_constant for value in values):
        raise NotCompilable("missing with computed keys")
    keys = [value.value for value in values]
    return keys[0] if keys and isinstance(keys[0], list) else keys


def _truth_missing(compiler: _Compiler, arguments: list[Any]) -> str:
    states = _missing_states(compiler, _missing_keys(compiler, arguments))
    return "(" + " OR ".join(states) + ")" if states else "0"


def _compile_missing(compiler: _Compiler, arguments: list[Any]) -> Typed:
    keys = _missing_keys(compiler, arguments)
    states = _missing_states(compiler, keys)
    if any(state not in ("0", "1") for state in states):
        raise NotCompilable("missing used as a value depends on the row")
    return _constant([key for key, state in zip(keys, states) if state == "1"])


def _truth_missing_some(compiler: _Compiler, arguments: list[Any]) -> str:
    need, options = compiler.argument(arguments, 0), compiler.argument(arguments, 1)
    if not (need.is_constant and options.is_constant and isinstance(options.value, list)):
        raise NotCompilable("missing_some with computed arguments")
    keys = options.value[0] if options.value and isinstance(options.value[0], list) else options.value
    states = _missing_states(compiler, keys)
    if not states:
        return "0"
    missing_count = "(" + " + ".join(f"toInt64({state})" for state in states) + ")"
    present = f"toFloat64({len(options.value)} - {missing_count})"
    return f"(NOT ({present} >= {compiler.sql(_to_number(compiler, need))}) AND {missing_count} > 0)"


def _compile_missing_some(compiler: _Compiler, arguments: list[Any]) -> Typed:
    raise NotCompilable("missing_some used as a value depends on the row")


def _compile_scoped(operator: str) -> Callable[[_Compiler, list[Any]], Typed]:
    """`map`, `filter`, `reduce`, `all`, `none`, `some`: compiled only when their array (and the initial value of
    `reduce`) does not depend on the row, by running them in the interpreter at compile time."""

    def compile_scoped(compiler: _Compiler, arguments: list[Any]) -> Typed:
        items = compiler.argument(arguments, 0)
        with_initial = operator == "reduce" and len(arguments) > 2
        initial = compiler.argument(arguments, 2) if with_initial else _constant(None)
        if not (items.is_constant and initial.is_constant):
            raise NotCompilable(f"{operator} over values from the row")
        scoped_values = [{"var": "items"}, *arguments[1:2], *([{"var": "initial"}] if with_initial else [])]
        try:
            data = {"items": items.value, "initial": initial.value}
            return _constant(evaluate_javascript({operator: scoped_values}, data))
        except LogicEvaluationError as error:
            raise NotCompilable(str(error)) from None

    return compile_scoped


def _truth_merge(compiler: _Compiler, arguments: list[Any]) -> str:
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


def _choice(compiler: _Compiler, pairs: list[tuple[str, Typed]], otherwise: Typed, operator: str) -> Typed:
    """The value of the first pair whose SQL condition holds, else `otherwise`."""
    if not pairs:
        return otherwise
    kind, nullable = _unify([value for _, value in pairs] + [otherwise], operator)
    if kind is Kind.NULL:
        return _constant(None)
    parts = [part for condition, value in pairs for part in (condition, compiler.sql(value))]
    cut = any(value.lone_surrogates for _, value in pairs) or otherwise.lone_surrogates
    return Typed(kind, f"multiIf({', '.join(parts)}, {compiler.sql(otherwise)})", nullable, lone_surrogates=cut)


def _if_branches(compiler: _Compiler, arguments: list[Any]) -> tuple[list[tuple[str, Any]], Any]:
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


def _compile_if(compiler: _Compiler, arguments: list[Any]) -> Typed:
    pairs, otherwise = _if_branches(compiler, arguments)
    typed_pairs = [(condition, compiler.value(node)) for condition, node in pairs]
    return _choice(compiler, typed_pairs, compiler.value(otherwise), "if")


def _truth_if(compiler: _Compiler, arguments: list[Any]) -> str:
    pairs, otherwise = _if_branches(compiler, arguments)
    if not pairs:
        return compiler.truth(otherwise)
    parts = [part for condition, node in pairs for part in (condition, compiler.truth(node))]
    return f"multiIf({', '.join(parts)}, {compiler.truth(otherwise)})"


def _short_circuit(compiler: _Compiler, arguments: list[Any], stop_when: bool) -> list[tuple[Typed, str]]:
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


def _compile_and_or(stop_when: bool, operator: str) -> Callable[[_Compiler, list[Any]], Typed]:
    """`and` returns the first falsy operand or the last; `or` the first truthy or the last."""

    def compile_and_or(compiler: _Compiler, arguments: list[Any]) -> Typed:
        if not arguments:
            return _constant(UNDEFINED)
        operands = _short_circuit(compiler, arguments, stop_when)
        *deciding, (last, _) = operands
        pairs = [(truth if stop_when else f"NOT {truth}", typed) for typed, truth in deciding]
        return _choice(compiler, pairs, last, operator)

    return compile_and_or


def _truth_and_or(stop_when: bool) -> Callable[[_Compiler, list[Any]], str]:
    def truth_and_or(compiler: _Compiler, arguments: list[Any]) -> str:
        truths = [compiler.truth(argument) for argument in arguments]
        if not truths:
            return "0"
        if str(int(stop_when)) in truths:
            return str(int(stop_when))
        truths = [truth for truth in truths if truth != str(int(not stop_when))] or [str(int(not stop_when))]
        joiner = " OR " if stop_when else " AND "
        return "(" + joiner.join(truths) + ")"

    return truth_and_or


_VALUE_OPERATORS: dict[str, Callable[[_Compiler, list[Any]], Typed]] = {
    "==": _compile_loose_equals,
    "!=": _compile_loose_not_equals,
    "===": _compile_strict_equals,
    "!==": _compile_strict_not_equals,
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
    "var": _compile_var,
    "missing": _compile_missing,
    "missing_some": _compile_missing_some,
    **{operator: _compile_scoped(operator) for operator in sorted(_SCOPED_OPERATORS)},
}

_TRUTH_OPERATORS: dict[str, Callable[[_Compiler, list[Any]], str]] = {
    "and": _truth_and_or(stop_when=False),
    "or": _truth_and_or(stop_when=True),
    "if": _truth_if,
    "?:": _truth_if,
    "missing": _truth_missing,
    "missing_some": _truth_missing_some,
    "merge": _truth_merge,
}
