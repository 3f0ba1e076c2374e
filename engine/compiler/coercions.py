"""Coercions between static kinds in SQL, as JavaScript converts values: Number(), parseFloat(), String()."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Callable

from engine.compiler.types import Kind, Typed, constant, refuse_cut_text, typed_number, typed_string
from engine.interpreter import DECIMAL_PATTERN, JS_WHITESPACE, UNDEFINED, parse_float, to_number, to_string
from engine.sql_text import quote_string

if TYPE_CHECKING:
    from engine.compiler.compilation import Compilation


def when_not_null(compiler: Compilation, typed: Typed, null_sql: str, build: Callable[[Typed], str]) -> str:
    """`build` over a nullable value's non-null case, `null_sql` where it is null."""
    if not typed.nullable:
        return build(typed)

    def either(value: str) -> str:
        present = replace(typed, sql=f"assumeNotNull({value})", nullable=False)
        return f"if(isNull({value}), {null_sql}, {build(present)})"

    return compiler.let(compiler.sql(typed), either)


def split_nulls(compiler: Compilation, operands: list[Typed], build: Callable[..., str]) -> str:
    """`build(*operands)` with every nullable operand split into its null case (a null constant) and the rest."""
    for index, operand in enumerate(operands):
        if operand.nullable and not operand.is_constant:

            def either(value: str, index: int = index, operand: Typed = operand) -> str:
                as_null = operands[:index] + [constant(None)] + operands[index + 1 :]
                not_null = replace(operand, sql=f"assumeNotNull({value})", nullable=False)
                as_value = operands[:index] + [not_null] + operands[index + 1 :]
                when_null = split_nulls(compiler, as_null, build)
                return f"if(isNull({value}), {when_null}, {split_nulls(compiler, as_value, build)})"

            return compiler.let(compiler.sql(operand), either)
    return build(*operands)


def js_number(compiler: Compilation, typed: Typed) -> Typed:
    """JavaScript Number(value) as a non-null Float64."""
    if typed.is_constant:
        return constant(to_number(typed.value))
    if typed.kind is Kind.NUMBER:
        return typed if not typed.nullable else typed_number(f"ifNull({typed.sql}, 0.)")
    refuse_cut_text(typed, "a number")
    converters = {
        Kind.BOOL: lambda operand: f"toFloat64({operand.sql})",
        Kind.STRING: lambda operand: _string_to_number_sql(compiler, operand.sql),
    }
    return typed_number(when_not_null(compiler, typed, "0", converters[typed.kind]))


def js_parse_float(compiler: Compilation, typed: Typed) -> Typed:
    """JavaScript parseFloat(value) as a non-null Float64."""
    if typed.is_constant:
        return constant(parse_float(typed.value))
    if typed.kind is Kind.NUMBER and not typed.nullable:
        return typed
    refuse_cut_text(typed, "a number")
    converters = {
        Kind.NUMBER: lambda operand: operand.sql,
        Kind.BOOL: lambda operand: "nan",
        Kind.STRING: lambda operand: _parse_float_sql(compiler, operand.sql),
    }
    return typed_number(when_not_null(compiler, typed, "nan", converters[typed.kind]))


def js_string(compiler: Compilation, typed: Typed, purpose: str) -> Typed:
    """JavaScript String(value) as a non-null String; `cat` joins like Array.prototype.join, writing null and
    undefined as ""."""
    joined = purpose == "cat"
    if typed.is_constant:
        value = typed.value
        return constant("" if joined and value in (None, UNDEFINED) else to_string(value))
    null_text = "" if joined else "null"
    refuse_cut_text(typed, purpose)
    converters = {
        Kind.NUMBER: lambda operand: _number_text_sql(compiler, operand.sql),
        Kind.STRING: lambda operand: operand.sql,
        Kind.BOOL: lambda operand: f"if({operand.sql}, 'true', 'false')",
    }
    return typed_string(when_not_null(compiler, typed, quote_string(null_text), converters[typed.kind]))


def _number_text_sql(compiler: Compilation, number_sql: str) -> str:
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


def _shortest_integer_sql(compiler: Compilation, magnitude: str) -> str:
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


def _javascript_layout_sql(compiler: Compilation, text_sql: str) -> str:
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


def to_primitive(typed: Typed) -> Typed:
    """Arrays compare as their text (JavaScript ToPrimitive)."""
    if typed.kind is Kind.ARRAY:
        return constant(to_string(typed.value))
    return typed


_WHITESPACE_CLASS = "[" + JS_WHITESPACE.replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r") + "]"


def _string_to_number_sql(compiler: Compilation, text_sql: str) -> str:
    """JavaScript Number(text) in SQL: trimmed decimal, Infinity, 0x/0o/0b integers, "" → 0, else NaN."""
    blanks = quote_string("^" + _WHITESPACE_CLASS + "+|" + _WHITESPACE_CLASS + "+$")
    digit = "__jl_digit"

    def convert(trimmed: str, digits: str) -> str:
        hex_bits = f"bin(unhex(if(modulo(length({digits}), 2) = 1, concat('0', {digits}), {digits})))"
        octal_bits = (
            f"arrayStringConcat(arrayMap({digit} -> ['000','001','010','011','100','101','110','111']"
            f"[toUInt8OrZero({digit}) + 1], splitByString('', {digits})))"
        )
        return (
            f"multiIf({trimmed} = '', 0., "
            f"match({trimmed}, {quote_string('^' + DECIMAL_PATTERN + '$')}), "
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


def _bits_to_number_sql(compiler: Compilation, bits_sql: str) -> str:
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


def _parse_float_sql(compiler: Compilation, text_sql: str) -> str:
    """JavaScript parseFloat(text) in SQL: the longest decimal prefix after leading whitespace, else NaN."""
    pattern = quote_string("^" + _WHITESPACE_CLASS + "*(" + DECIMAL_PATTERN + ")")
    return compiler.let(
        f"extract({text_sql}, {pattern})",
        lambda prefix: (
            f"multiIf({prefix} = '', nan, endsWith({prefix}, 'Infinity'),"
            f" if(startsWith({prefix}, '-'), -inf, inf), toFloat64OrZero({prefix}))"
        ),
    )

