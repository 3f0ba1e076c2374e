"""ClickHouse SQL text for names and for text the project itself writes (never values from a rule)."""

from __future__ import annotations


def quote_identifier(name: str) -> str:
    """A backquoted ClickHouse identifier that names exactly `name`; field names may hold a dot (`prev.spend`)."""
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def quote_string(text: str) -> str:
    """A single-quoted ClickHouse string literal whose value is exactly `text`."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
