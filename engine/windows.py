"""A rule's metrics window as local dates of its organization, and the UTC instants that bound them.

Everything here is a pure function of its arguments: the evaluation time T, the organization's IANA timezone, the
window name and `compare_to`. Dates are the organization's local dates at T; day boundaries come from zoneinfo, so
the 23- and 25-hour days of a DST change are bounded by their real instants.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, available_timezones

from engine.errors import RuleValidationError, ValidationProblem

TODAY = "today"
YESTERDAY = "yesterday"
MONTH_TO_DATE = "month_to_date"
LIFETIME = "lifetime"
PREVIOUS_PERIOD = "previous_period"
MAX_LAST_DAYS = 365

_LAST_DAYS = re.compile(r"last_([0-9]+)_days")
_FIXED_WINDOWS = (TODAY, YESTERDAY, MONTH_TO_DATE, LIFETIME)
_EXPECTED_WINDOWS = f"today, yesterday, last_N_days (N from 1 to {MAX_LAST_DAYS}), month_to_date or lifetime"


@dataclass(frozen=True)
class Window:
    """A valid window name, parsed: `last_days` holds N for `last_N_days` and is None for the other windows."""

    name: str
    last_days: int | None = None


@dataclass(frozen=True)
class WindowBounds:
    """What a run at T reads, for one window (and its previous period when `compare_to` is set).

    Dates are the organization's local dates, both ends inclusive. `first` is None for `lifetime`: unbounded below.
    `snapshot_cutoff` is T itself, an aware UTC datetime truncated to the second: nothing after it is read.

    For `pacing_snapshots` (windowed by the local date of `snapshot_time`, stored in UTC with whole seconds), the
    window is the half-open UTC interval `[utc_start, utc_end)`: `utc_start` is the instant the first local day
    begins (None for `lifetime`), `utc_end` is min(the instant the day after the last local day begins,
    T + 1 second), so a snapshot taken exactly at T is in and none after T is. The previous period's interval is
    `[previous_utc_start, previous_utc_end)` likewise; it always ends where the window begins.
    """

    today: date
    first: date | None
    last: date
    previous_first: date | None
    previous_last: date | None
    snapshot_cutoff: datetime
    utc_start: datetime | None
    utc_end: datetime
    previous_utc_start: datetime | None
    previous_utc_end: datetime | None


def parse_window(name: object) -> Window:
    """Parses a window name; any other value raises RuleValidationError at `conditions.window` saying why."""
    if isinstance(name, str):
        if name in _FIXED_WINDOWS:
            return Window(name)
        last_days = _LAST_DAYS.fullmatch(name)
        if last_days:
            digits = last_days.group(1)
            count = int(digits)
            if not 1 <= count <= MAX_LAST_DAYS:
                raise _window_error(f'window "{name}" is out of range: N in last_N_days must be 1 to {MAX_LAST_DAYS}')
            if digits.startswith("0"):
                raise _window_error(f'window "{name}": write N without leading zeros, as in last_{count}_days')
            return Window(name, count)
    shown = f'"{name}"' if isinstance(name, str) else repr(name)
    raise _window_error(f"unknown window {shown}: expected {_EXPECTED_WINDOWS}")


def is_known_timezone(name: object) -> bool:
    """True when `name` is an IANA timezone name that zoneinfo knows on this machine."""
    return isinstance(name, str) and name in _known_timezones()


def load_timezone(name: object) -> ZoneInfo:
    """The zone named `name`; an unknown name raises RuleValidationError at `timezone`."""
    if not is_known_timezone(name):
        shown = f'"{name}"' if isinstance(name, str) else repr(name)
        raise RuleValidationError([ValidationProblem("timezone", f"unknown timezone {shown}")])
    return ZoneInfo(name)


def resolve_window(at: datetime, timezone: str, window: str | Window, compare_to: str | None = None) -> WindowBounds:
    """The local dates and UTC bounds a run at `at` (T, timezone-aware) reads for `window` in `timezone`.

    `compare_to` is None or `previous_period`: the same number of days just before the window's first day (for
    `month_to_date`, the number of days elapsed in the month including today). A bad window, compare_to or timezone
    raises RuleValidationError; a naive `at` raises ValueError.
    """
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("the evaluation time must be timezone-aware")
    parsed = window if isinstance(window, Window) else parse_window(window)
    _check_compare_to(parsed, compare_to)
    zone = load_timezone(timezone)
    cutoff = at.astimezone(UTC).replace(microsecond=0)
    today = cutoff.astimezone(zone).date()
    first, last = _window_dates(parsed, today)
    previous_first, previous_last = _previous_dates(first, last) if compare_to else (None, None)
    return WindowBounds(
        today=today,
        first=first,
        last=last,
        previous_first=previous_first,
        previous_last=previous_last,
        snapshot_cutoff=cutoff,
        utc_start=_start_of_day(first, zone) if first else None,
        utc_end=_end_of_dates(last, zone, cutoff),
        previous_utc_start=_start_of_day(previous_first, zone) if previous_first else None,
        previous_utc_end=_end_of_dates(previous_last, zone, cutoff) if previous_last else None,
    )


def start_of_local_day(day: date, timezone: str) -> datetime:
    """The UTC instant the local `day` begins in `timezone` (a known IANA name; else RuleValidationError)."""
    return _start_of_day(day, load_timezone(timezone))


def _check_compare_to(window: Window, compare_to: object) -> None:
    """Accepts None or `previous_period` (not with `lifetime`); anything else raises RuleValidationError."""
    if compare_to is None:
        return
    if compare_to != PREVIOUS_PERIOD:
        raise RuleValidationError(
            [ValidationProblem("conditions.compare_to", f'must be "{PREVIOUS_PERIOD}" or left out')]
        )
    if window.name == LIFETIME:
        raise RuleValidationError(
            [ValidationProblem("conditions.compare_to", "lifetime has no previous period to compare to")]
        )


def _window_dates(window: Window, today: date) -> tuple[date | None, date]:
    if window.name == TODAY:
        return today, today
    if window.name == YESTERDAY:
        return today - timedelta(days=1), today - timedelta(days=1)
    if window.name == MONTH_TO_DATE:
        return today.replace(day=1), today
    if window.name == LIFETIME:
        return None, today
    return today - timedelta(days=window.last_days), today - timedelta(days=1)


def _previous_dates(first: date, last: date) -> tuple[date, date]:
    length = last - first + timedelta(days=1)
    return first - length, first - timedelta(days=1)


def _start_of_day(day: date, zone: ZoneInfo) -> datetime:
    # A local midnight that a DST change skips (fold=0 reads it with the offset in force before the change) maps
    # to the instant of the change, which is when that local day begins.
    return datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)


def _end_of_dates(last: date, zone: ZoneInfo, cutoff: datetime) -> datetime:
    return min(_start_of_day(last + timedelta(days=1), zone), cutoff + timedelta(seconds=1))


def _window_error(reason: str) -> RuleValidationError:
    return RuleValidationError([ValidationProblem("conditions.window", reason)])


@lru_cache(maxsize=1)
def _known_timezones() -> frozenset[str]:
    # `localtime` is this machine's zone file, not an IANA name.
    return frozenset(available_timezones() - {"localtime"})
