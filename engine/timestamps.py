"""How instants are written as text (ISO 8601 UTC for people and task arguments, SQL text for ClickHouse) and read
from people's text."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_iso(moment: datetime) -> str:
    """`YYYY-MM-DDTHH:MM:SSZ` of an instant; a naive datetime is taken as UTC."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def utc_sql(moment: datetime) -> str:
    """`YYYY-MM-DD HH:MM:SS` of an instant in UTC, as DateTime('UTC') parameters take it; naive means UTC."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def utc_sql_milliseconds(moment: datetime) -> str:
    """`YYYY-MM-DD HH:MM:SS.mmm` of an instant in UTC (truncated to the millisecond), as DateTime64(3, 'UTC')
    parameters take it; naive means UTC."""
    return utc_sql(moment) + moment.strftime(".%f")[:4]


def parse_instant(text: str) -> datetime:
    """The instant an ISO 8601 time writes (without an offset: UTC), aware and in UTC; raises ValueError when
    `text` is not one."""
    try:
        moment = datetime.fromisoformat(text)
    except TypeError:
        raise ValueError(f"not an ISO 8601 time: {text!r}") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)
