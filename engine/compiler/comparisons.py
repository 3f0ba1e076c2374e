"""Comparisons in SQL with JavaScript's semantics: loose and strict equality, order, membership in arrays and text."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from engine.compiler.coercions import js_number, js_string, split_nulls, to_primitive
from engine.compiler.types import Kind, Typed, refuse_cut_text, valid_text
from engine.interpreter import is_number, js_less, js_less_or_equal, loose_equals, strict_equals, to_number

if TYPE_CHECKING:
    from engine.compiler.compilation import Compilation


def loose_equals_sql(compiler: Compilation, left: Typed, right: Typed) -> str:
    """SQL UInt8 0/1: JavaScript `left == right`."""
    return split_nulls(compiler, [left, right], lambda a, b: _loose_equals_present(compiler, a, b))


def _loose_equals_present(compiler: Compilation, left: Typed, right: Typed) -> str:
    if left.is_constant and right.is_constant:
        return "1" if loose_equals(left.value, right.value) else "0"
    nullish = (Kind.NULL, Kind.UNDEFINED)
    if left.kind in nullish or right.kind in nullish:
        return "0"
    if left.kind is Kind.BOOL and right.kind is Kind.BOOL:
        return f"({compiler.sql(left)} = {compiler.sql(right)})"
    if left.kind is Kind.BOOL:
        left = js_number(compiler, left)
    if right.kind is Kind.BOOL:
        right = js_number(compiler, right)
    left, right = to_primitive(left), to_primitive(right)
    if left.is_constant and right.is_constant:
        return "1" if loose_equals(left.value, right.value) else "0"
    if left.kind is not right.kind:
        left, right = js_number(compiler, left), js_number(compiler, right)
    return f"({compiler.sql(left)} = {compiler.sql(right)})"


def strict_equals_sql(compiler: Compilation, left: Typed, right: Typed) -> str:
    """SQL UInt8 0/1: JavaScript `left === right`."""
    return split_nulls(compiler, [left, right], lambda a, b: _strict_equals_present(compiler, a, b))


def _strict_equals_present(compiler: Compilation, left: Typed, right: Typed) -> str:
    if left.is_constant and right.is_constant:
        return "1" if strict_equals(left.value, right.value) else "0"
    if left.kind is not right.kind or left.kind in (Kind.NULL, Kind.UNDEFINED, Kind.ARRAY):
        return "0"
    return f"({compiler.sql(left)} = {compiler.sql(right)})"


def relation_sql(compiler: Compilation, left: Typed, right: Typed, or_equal: bool) -> str:
    """JavaScript `left < right` (or `<=`) as SQL."""
    return split_nulls(
        compiler,
        [to_primitive(left), to_primitive(right)],
        lambda a, b: _relation_present(compiler, a, b, or_equal),
    )


def _relation_present(compiler: Compilation, left: Typed, right: Typed, or_equal: bool) -> str:
    if left.is_constant and right.is_constant:
        compare = js_less_or_equal if or_equal else js_less
        return "1" if compare(left.value, right.value) else "0"
    operator = "<=" if or_equal else "<"
    if left.kind is Kind.STRING and right.kind is Kind.STRING:
        return _text_order(compiler, left, right, operator)
    return f"({compiler.sql(js_number(compiler, left))} {operator} {compiler.sql(js_number(compiler, right))})"


def _text_order(compiler: Compilation, left: Typed, right: Typed, operator: str) -> str:
    """Text order by UTF-16 code units. UTF-8 bytes order the same unless one side has a character at or
    above U+E000 and the other one above U+FFFF, which cannot happen against text below U+D800."""
    left_sql, right_sql = compiler.sql(left), compiler.sql(right)
    if _below_surrogates(left) or _below_surrogates(right):
        return f"({left_sql} {operator} {right_sql})"
    refuse_cut_text(left, "ordering")
    refuse_cut_text(right, "ordering")
    return (
        f"(convertCharset({left_sql}, 'UTF-8', 'UTF-16BE') {operator} convertCharset({right_sql}, 'UTF-8', 'UTF-16BE'))"
    )


def _below_surrogates(typed: Typed) -> bool:
    return typed.is_constant and all(character < "\ud800" for character in typed.value)


def membership_sql(compiler: Compilation, needle: Typed, elements: list[Any]) -> str:
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
    texts = sorted({valid_text(element) for element in elements if isinstance(element, str)})
    if not texts:
        return "0"
    return f"({compiler.sql(needle)} IN {compiler.parameter('Array(String)', texts)})"


def contains_sql(compiler: Compilation, needle: Typed, haystack: Typed) -> str:
    """JavaScript `haystack.indexOf(String(needle)) !== -1` for text; empty or null text contains nothing."""
    if haystack.is_constant:
        if not haystack.value:
            return "0"
        text = js_string(compiler, needle, "in")
        return f"(position({compiler.sql(haystack)}, {compiler.sql(text)}) > 0)"
    if haystack.kind is Kind.NULL:
        return "0"
    text = compiler.sql(js_string(compiler, needle, "in"))
    refuse_cut_text(haystack, "in")
    return compiler.let(compiler.sql(haystack), lambda value: f"(notEmpty({value}) AND position({value}, {text}) > 0)")

