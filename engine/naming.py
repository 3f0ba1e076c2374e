"""The `naming` operator: whether a name breaks a convention, and the diagnosis of the first token that does.

`{"naming": [<text>, "<convention>"]}` is true when the text (converted like JavaScript's String()) breaks the
organization's convention of that name (engine.conventions). Before a rule is compiled or interpreted, its
conventions are bound into its logic (bind_conventions): each naming operation then carries its Convention as its
second operand and, when the convention has `equals` tokens, `{"var": "dsp_type"}` / `{"var": "advertiser_id"}`
as further operands, so that both paths read those fields like any other.

The checks, in token order (the first failure is the diagnosis): a token must not be empty; `values`: one of the
values (with `ignore_case`, ASCII letters compare without case); `pattern`: an RE2 search finds it; `date`: the
format's shape and a real calendar date (YY is 20YY); `equals`: the campaign's field exactly; `free`: any text.
The suggestion for a `values` token is the allowed value at the least edit distance (code points, after ASCII
lower-casing, so a case-only difference comes first; the earliest value on a tie), when at most half its length
(at least 1) of edits away; for `equals`, the campaign's value. Only the token's first SUGGESTION_SPAN code points
are compared: that cannot change the suggestion (see SUGGESTION_SPAN), and ClickHouse's editDistanceUTF8 refuses
texts over 64 KiB. The compiler writes the same checks in SQL (engine/compiler/naming_sql.py).
"""

from __future__ import annotations

import calendar
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import re2

from engine.conventions import MAX_TEXT_LENGTH, Convention, DateFormat, Token

NAMING_OPERATOR = "naming"
_MONTH_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")

EMPTY = "is empty"
NOT_ALLOWED = "not an allowed value"
WRONG_CASE = "wrong case"

# A token longer than this, cut to it or whole, is at least MAX_TEXT_LENGTH edits from every allowed value (at most
# MAX_TEXT_LENGTH long), more than half the value's length: it gets no suggestion either way.
SUGGESTION_SPAN = 2 * MAX_TEXT_LENGTH


@dataclass(frozen=True)
class Diagnosis:
    """Why a name breaks its convention: the token (None past the last one), its 1-based position, the text found
    there ("" for a missing token), the reason, and the likely fix (None when there is none)."""

    token: str | None
    position: int
    value: str
    reason: str
    suggest: str | None = None


def pattern_reason(pattern: str) -> str:
    """The reason a token fails its `pattern`."""
    return f"does not match {pattern}"


def date_reason(date: DateFormat) -> str:
    """The reason a token is not a date of its format."""
    return f"not a date in the form {date.text}"


def equals_reason(field: str) -> str:
    """The reason a token differs from the campaign's `field`."""
    return f"does not equal the campaign's {field}"


def too_few_reason(count: int, convention: Convention) -> str:
    """The reason a name has too few tokens."""
    return f"too few tokens: {count}, at least {convention.min_tokens}"


TOO_MANY_PREFIX = "too many tokens: "


def too_many_suffix(convention: Convention) -> str:
    """What follows the count in the reason a name has too many tokens."""
    return f", at most {convention.max_tokens}"


def too_many_reason(count: int, convention: Convention) -> str:
    """The reason a name has too many tokens."""
    return f"{TOO_MANY_PREFIX}{count}{too_many_suffix(convention)}"


def ascii_lower(text: str) -> str:
    """`text` with ASCII letters lower-cased and everything else unchanged (ClickHouse's lower())."""
    return text.translate(_ASCII_LOWER)


def diagnose(convention: Convention, name: str, cross_values: Mapping[str, str]) -> Diagnosis | None:
    """The diagnosis of `name` under `convention`, None when it follows it. `cross_values` holds the campaign's
    value of each of convention.cross_fields."""
    parts = name.split(convention.delimiter)
    count = len(parts)
    if count < convention.min_tokens:
        missing = convention.layout(convention.min_tokens)[count]
        return Diagnosis(missing.name, count + 1, "", too_few_reason(count, convention))
    if count > convention.max_tokens:
        return Diagnosis(None, convention.max_tokens + 1, parts[convention.max_tokens],
                         too_many_reason(count, convention))
    for position, (token, value) in enumerate(zip(convention.layout(count), parts), start=1):
        failure = _token_failure(token, value, cross_values)
        if failure is not None:
            return Diagnosis(token.name, position, value, *failure)
    return None


def _token_failure(token: Token, value: str, cross_values: Mapping[str, str]) -> tuple[str, str | None] | None:
    if not value:
        return EMPTY, None
    if token.kind == "values":
        if token.ignore_case:
            allowed = ascii_lower(value) in (ascii_lower(option) for option in token.values)
        else:
            allowed = value in token.values
        if allowed:
            return None
        suggest = suggestion(value, token.values)
        case_only = suggest is not None and ascii_lower(suggest) == ascii_lower(value)
        return (WRONG_CASE if case_only else NOT_ALLOWED), suggest
    if token.kind == "pattern":
        return None if _pattern(token.pattern).search(value.encode("utf-8", "surrogatepass")) else (
            pattern_reason(token.pattern), None)
    if token.kind == "date":
        return None if is_date(value, token.date) else (date_reason(token.date), None)
    if token.kind == "equals":
        expected = cross_values[token.equals]
        return None if value == expected else (equals_reason(token.equals), expected or None)
    return None


def suggestion(value: str, options: tuple[str, ...]) -> str | None:
    """The allowed value closest to `value` (see the module docstring), or None when none is close."""
    lowered = ascii_lower(value[:SUGGESTION_SPAN])
    distances = [edit_distance(lowered, ascii_lower(option)) for option in options]
    best = min(distances)
    candidate = options[distances.index(best)]
    return candidate if 2 * best <= max(len(candidate), 2) else None


def edit_distance(first: str, second: str) -> int:
    """The Levenshtein distance between two texts, in code points (ClickHouse's editDistanceUTF8)."""
    previous = list(range(len(second) + 1))
    for row, character in enumerate(first, start=1):
        current = [row]
        for column, other in enumerate(second, start=1):
            current.append(min(previous[column] + 1, current[column - 1] + 1,
                               previous[column - 1] + (character != other)))
        previous = current
    return previous[-1]


def is_date(text: str, date: DateFormat) -> bool:
    """Whether `text` has the shape of `date` and names a real day (a month, a year: any)."""
    if not _pattern(date.shape).search(text.encode("utf-8", "surrogatepass")):
        return False
    offset, width = date.year
    year = int(text[offset:offset + width]) + (2000 if width == 2 else 0)
    if date.month is None:
        return True
    month = int(text[date.month[0]:date.month[0] + 2])
    if not 1 <= month <= 12:
        return False
    if date.day is None:
        return True
    day = int(text[date.day[0]:date.day[0] + 2])
    return 1 <= day <= _MONTH_DAYS[month - 1] + (month == 2 and calendar.isleap(year))


@functools.lru_cache(maxsize=512)
def _pattern(pattern: str) -> Any:
    options = re2.Options()
    options.log_errors = False
    return re2.compile(pattern.encode("utf-8", "surrogatepass"), options)


def bind_conventions(logic: Any, conventions: Mapping[str, Convention]) -> Any:
    """`logic` with each naming operation bound to its convention (see the module docstring); a naming operation
    whose convention is not in `conventions` is left as it is (validation refuses such a rule)."""
    if isinstance(logic, list):
        return [bind_conventions(element, conventions) for element in logic]
    if not (isinstance(logic, dict) and len(logic) == 1):
        return logic
    operator, arguments = next(iter(logic.items()))
    if (operator == NAMING_OPERATOR and isinstance(arguments, list) and len(arguments) == 2
            and isinstance(arguments[1], str) and arguments[1] in conventions):
        convention = conventions[arguments[1]]
        return {operator: [bind_conventions(arguments[0], conventions), convention,
                           *({"var": field} for field in convention.cross_fields)]}
    return {operator: bind_conventions(arguments, conventions)}


@dataclass(frozen=True)
class NamingCheck:
    """One bound naming operation: the logic of its text, its convention, the logic of each cross field."""

    text: Any
    convention: Convention
    cross: tuple[Any, ...]


def naming_checks(logic: Any) -> list[NamingCheck]:
    """The bound naming operations of `logic`, in the order they are written (the document records the first
    one whose name breaks its convention)."""
    found: list[NamingCheck] = []

    def visit(node: Any) -> None:
        if isinstance(node, list):
            for element in node:
                visit(element)
        elif isinstance(node, dict) and len(node) == 1:
            operator, arguments = next(iter(node.items()))
            if operator == NAMING_OPERATOR and isinstance(arguments, list) and len(arguments) > 1 and isinstance(
                    arguments[1], Convention):
                found.append(NamingCheck(arguments[0], arguments[1], tuple(arguments[2:])))
            visit(arguments)

    visit(logic)
    return found
