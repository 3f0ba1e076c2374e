"""The static types of compiled subexpressions: their kinds, and typed SQL or constants."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from engine.errors import NotCompilable
from engine.interpreter import UNDEFINED, is_number


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


def constant(value: Any) -> Typed:
    """A constant of the kind of `value` (a JSON value or UNDEFINED), not yet written as SQL."""
    return Typed(kind_of_value(value), value=value)


def kind_of_value(value: Any) -> Kind:
    """The kind of a JSON value; NotCompilable for an object, which has no SQL form."""
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


def typed_bool(sql: str) -> Typed:
    """A non-null bool held by UInt8 0/1 `sql`."""
    return Typed(Kind.BOOL, sql)


def typed_number(sql: str, nullable: bool = False) -> Typed:
    """A number held by Float64 `sql` (Nullable(Float64) when `nullable`)."""
    return Typed(Kind.NUMBER, sql, nullable)


def typed_string(sql: str) -> Typed:
    """A non-null text held by String `sql`."""
    return Typed(Kind.STRING, sql)


def valid_text(text: str) -> str:
    """`text` unchanged when it can travel as UTF-8; NotCompilable when it holds an unpaired surrogate."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise NotCompilable("text with unpaired UTF-16 surrogates has no SQL form") from None
    return text


def refuse_cut_text(typed: Typed, purpose: str) -> None:
    """NotCompilable when `typed` may hold half a surrogate pair, which only equality may read."""
    if typed.lone_surrogates:
        raise NotCompilable(f"{purpose} of text from substr, which may end inside a UTF-16 surrogate pair")
