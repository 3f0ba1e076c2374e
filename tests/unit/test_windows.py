"""Windows as local dates and UTC bounds. Every expected value below was worked out by hand from the tz rules."""

from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from engine.errors import RuleValidationError
from engine.windows import Window, parse_window, resolve_window


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def reasons(error: pytest.ExceptionInfo) -> list[str]:
    return [str(problem) for problem in error.value.problems]


# --- window names ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "parsed"),
    [
        ("today", Window("today")),
        ("yesterday", Window("yesterday")),
        ("month_to_date", Window("month_to_date")),
        ("lifetime", Window("lifetime")),
        ("last_1_days", Window("last_1_days", 1)),
        ("last_7_days", Window("last_7_days", 7)),
        ("last_365_days", Window("last_365_days", 365)),
    ],
)
def test_valid_window_names_parse(name, parsed):
    assert parse_window(name) == parsed


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("last_0_days", 'conditions.window: window "last_0_days" is out of range: N in last_N_days must be 1 to 365'),
        (
            "last_366_days",
            'conditions.window: window "last_366_days" is out of range: N in last_N_days must be 1 to 365',
        ),
        ("last_07_days", 'conditions.window: window "last_07_days": write N without leading zeros, as in last_7_days'),
        (
            "last_x_days",
            'conditions.window: unknown window "last_x_days": expected today, yesterday, '
            "last_N_days (N from 1 to 365), month_to_date or lifetime",
        ),
        (
            "last_-1_days",
            'conditions.window: unknown window "last_-1_days": expected today, yesterday, '
            "last_N_days (N from 1 to 365), month_to_date or lifetime",
        ),
        (
            "last_7_day",
            'conditions.window: unknown window "last_7_day": expected today, yesterday, '
            "last_N_days (N from 1 to 365), month_to_date or lifetime",
        ),
        (
            "Yesterday",
            'conditions.window: unknown window "Yesterday": expected today, yesterday, '
            "last_N_days (N from 1 to 365), month_to_date or lifetime",
        ),
        (
            7,
            "conditions.window: unknown window 7: expected today, yesterday, "
            "last_N_days (N from 1 to 365), month_to_date or lifetime",
        ),
    ],
)
def test_bad_window_names_are_refused_with_a_clear_message(name, message):
    with pytest.raises(RuleValidationError) as error:
        parse_window(name)
    assert reasons(error) == [message]


def test_lifetime_has_no_previous_period():
    with pytest.raises(RuleValidationError) as error:
        resolve_window(utc("2024-05-15T12:00:00"), "UTC", "lifetime", "previous_period")
    assert reasons(error) == ["conditions.compare_to: lifetime has no previous period to compare to"]


def test_compare_to_takes_only_previous_period():
    with pytest.raises(RuleValidationError) as error:
        resolve_window(utc("2024-05-15T12:00:00"), "UTC", "yesterday", "previous_week")
    assert reasons(error) == ['conditions.compare_to: must be "previous_period" or left out']


def test_unknown_timezone_is_refused():
    with pytest.raises(RuleValidationError) as error:
        resolve_window(utc("2024-05-15T12:00:00"), "Mars/Olympus_Mons", "today")
    assert reasons(error) == ['timezone: unknown timezone "Mars/Olympus_Mons"']


def test_naive_evaluation_time_is_refused():
    with pytest.raises(ValueError, match="timezone-aware"):
        resolve_window(datetime(2024, 5, 15, 12), "UTC", "today")


# --- snapshot cutoff ------------------------------------------------------------------------------------------------


def test_snapshot_cutoff_is_t_in_utc_to_the_second():
    at = datetime(2024, 5, 15, 14, 0, 5, 750_000, tzinfo=timezone(timedelta(hours=2)))
    bounds = resolve_window(at, "UTC", "today")
    assert bounds.snapshot_cutoff == datetime(2024, 5, 15, 12, 0, 5, tzinfo=UTC)
    assert bounds.snapshot_cutoff.tzinfo is UTC
    assert bounds.utc_end == datetime(2024, 5, 15, 12, 0, 6, tzinfo=UTC)


# --- DST days -------------------------------------------------------------------------------------------------------


def test_new_york_spring_forward_day_has_23_hours():
    # 2024-03-10: 02:00 EST (-5) jumps to 03:00 EDT (-4). Midnight is EST, the next midnight EDT.
    bounds = resolve_window(utc("2024-03-11T12:00:00"), "America/New_York", "yesterday")
    assert (bounds.first, bounds.last) == (date(2024, 3, 10), date(2024, 3, 10))
    assert bounds.utc_start == utc("2024-03-10T05:00:00")
    assert bounds.utc_end == utc("2024-03-11T04:00:00")
    assert bounds.utc_end - bounds.utc_start == timedelta(hours=23)


def test_new_york_today_just_before_the_spring_forward_jump():
    bounds = resolve_window(utc("2024-03-10T06:59:59"), "America/New_York", "today")  # 01:59:59 EST
    assert bounds.today == date(2024, 3, 10)
    assert bounds.utc_start == utc("2024-03-10T05:00:00")
    assert bounds.utc_end == utc("2024-03-10T07:00:00")


def test_new_york_fall_back_day_has_25_hours():
    # 2024-11-03: 02:00 EDT (-4) falls back to 01:00 EST (-5).
    bounds = resolve_window(utc("2024-11-04T15:00:00"), "America/New_York", "yesterday")
    assert (bounds.first, bounds.last) == (date(2024, 11, 3), date(2024, 11, 3))
    assert bounds.utc_start == utc("2024-11-03T04:00:00")
    assert bounds.utc_end == utc("2024-11-04T05:00:00")
    assert bounds.utc_end - bounds.utc_start == timedelta(hours=25)


def test_new_york_the_repeated_hour_of_fall_back_is_still_today():
    # 06:30 UTC is the second 01:30 of 2024-11-03 (EST).
    bounds = resolve_window(utc("2024-11-03T06:30:00"), "America/New_York", "today", "previous_period")
    assert bounds.today == date(2024, 11, 3)
    assert bounds.utc_start == utc("2024-11-03T04:00:00")
    assert bounds.utc_end == utc("2024-11-03T06:30:01")
    assert (bounds.previous_first, bounds.previous_last) == (date(2024, 11, 2), date(2024, 11, 2))
    assert bounds.previous_utc_start == utc("2024-11-02T04:00:00")
    assert bounds.previous_utc_end == utc("2024-11-03T04:00:00")


def test_berlin_spring_forward_day_has_23_hours():
    # 2024-03-31: 02:00 CET (+1) jumps to 03:00 CEST (+2).
    bounds = resolve_window(utc("2024-04-01T10:00:00"), "Europe/Berlin", "yesterday")
    assert bounds.last == date(2024, 3, 31)
    assert bounds.utc_start == utc("2024-03-30T23:00:00")
    assert bounds.utc_end == utc("2024-03-31T22:00:00")
    assert bounds.utc_end - bounds.utc_start == timedelta(hours=23)


def test_berlin_fall_back_day_has_25_hours():
    # 2024-10-27: 03:00 CEST (+2) falls back to 02:00 CET (+1).
    bounds = resolve_window(utc("2024-10-28T09:00:00"), "Europe/Berlin", "yesterday")
    assert bounds.last == date(2024, 10, 27)
    assert bounds.utc_start == utc("2024-10-26T22:00:00")
    assert bounds.utc_end == utc("2024-10-27T23:00:00")
    assert bounds.utc_end - bounds.utc_start == timedelta(hours=25)


def test_berlin_week_across_fall_back_spans_one_extra_hour():
    bounds = resolve_window(utc("2024-10-30T09:00:00"), "Europe/Berlin", "last_7_days")
    assert (bounds.first, bounds.last) == (date(2024, 10, 23), date(2024, 10, 29))
    assert bounds.utc_start == utc("2024-10-22T22:00:00")
    assert bounds.utc_end == utc("2024-10-29T23:00:00")
    assert bounds.utc_end - bounds.utc_start == timedelta(days=7, hours=1)


# --- month and year boundaries --------------------------------------------------------------------------------------


def test_tokyo_just_after_local_new_year_is_still_december_31_in_utc():
    at = utc("2024-12-31T15:00:30")  # 2025-01-01 00:00:30 JST
    assert resolve_window(at, "Asia/Tokyo", "today").today == date(2025, 1, 1)

    yesterday = resolve_window(at, "Asia/Tokyo", "yesterday")
    assert (yesterday.first, yesterday.last) == (date(2024, 12, 31), date(2024, 12, 31))
    assert yesterday.utc_start == utc("2024-12-30T15:00:00")
    assert yesterday.utc_end == utc("2024-12-31T15:00:00")

    month = resolve_window(at, "Asia/Tokyo", "month_to_date", "previous_period")
    assert (month.first, month.last) == (date(2025, 1, 1), date(2025, 1, 1))
    assert (month.previous_first, month.previous_last) == (date(2024, 12, 31), date(2024, 12, 31))
    assert month.utc_start == utc("2024-12-31T15:00:00")
    assert month.utc_end == utc("2024-12-31T15:00:31")

    week = resolve_window(at, "Asia/Tokyo", "last_7_days", "previous_period")
    assert (week.first, week.last) == (date(2024, 12, 25), date(2024, 12, 31))
    assert (week.previous_first, week.previous_last) == (date(2024, 12, 18), date(2024, 12, 24))


def test_los_angeles_late_december_31_is_already_january_1_in_utc():
    at = utc("2025-01-01T07:30:00")  # 2024-12-31 23:30 PST
    month = resolve_window(at, "America/Los_Angeles", "month_to_date", "previous_period")
    assert month.today == date(2024, 12, 31)
    assert (month.first, month.last) == (date(2024, 12, 1), date(2024, 12, 31))
    assert month.utc_start == utc("2024-12-01T08:00:00")
    assert month.utc_end == utc("2025-01-01T07:30:01")
    # 31 days before December 1; October 31 is still PDT (-7), DST ended on 2024-11-03.
    assert (month.previous_first, month.previous_last) == (date(2024, 10, 31), date(2024, 11, 30))
    assert month.previous_utc_start == utc("2024-10-31T07:00:00")
    assert month.previous_utc_end == utc("2024-12-01T08:00:00")

    yesterday = resolve_window(at, "America/Los_Angeles", "yesterday")
    assert yesterday.last == date(2024, 12, 30)


# --- far ahead of and far behind UTC --------------------------------------------------------------------------------


def test_kiritimati_and_pago_pago_are_two_dates_apart_at_the_same_instant():
    at = utc("2024-06-15T10:30:00")
    ahead = resolve_window(at, "Pacific/Kiritimati", "yesterday")  # +14: 2024-06-16 00:30
    assert ahead.today == date(2024, 6, 16)
    assert ahead.last == date(2024, 6, 15)
    assert ahead.utc_start == utc("2024-06-14T10:00:00")
    assert ahead.utc_end == utc("2024-06-15T10:00:00")

    behind = resolve_window(at, "Pacific/Pago_Pago", "yesterday")  # -11: 2024-06-14 23:30
    assert behind.today == date(2024, 6, 14)
    assert behind.last == date(2024, 6, 13)
    assert behind.utc_start == utc("2024-06-13T11:00:00")
    assert behind.utc_end == utc("2024-06-14T11:00:00")


def test_kiritimati_local_midnight_starts_the_new_day():
    assert resolve_window(utc("2024-06-15T09:59:59"), "Pacific/Kiritimati", "today").today == date(2024, 6, 15)
    assert resolve_window(utc("2024-06-15T10:00:00"), "Pacific/Kiritimati", "today").today == date(2024, 6, 16)


def test_pago_pago_local_midnight_starts_the_new_day():
    assert resolve_window(utc("2024-06-15T10:59:59"), "Pacific/Pago_Pago", "today").today == date(2024, 6, 14)
    assert resolve_window(utc("2024-06-15T11:00:00"), "Pacific/Pago_Pago", "today").today == date(2024, 6, 15)


# --- leap day -------------------------------------------------------------------------------------------------------


def test_leap_day_is_yesterday_on_march_1():
    bounds = resolve_window(utc("2024-03-01T12:00:00"), "UTC", "last_30_days", "previous_period")
    assert (bounds.first, bounds.last) == (date(2024, 1, 31), date(2024, 2, 29))
    assert (bounds.previous_first, bounds.previous_last) == (date(2024, 1, 1), date(2024, 1, 30))
    assert resolve_window(utc("2024-03-01T12:00:00"), "UTC", "yesterday").last == date(2024, 2, 29)


def test_month_to_date_on_the_leap_day_has_29_days():
    bounds = resolve_window(utc("2024-02-29T12:00:00"), "UTC", "month_to_date", "previous_period")
    assert (bounds.first, bounds.last) == (date(2024, 2, 1), date(2024, 2, 29))
    assert (bounds.previous_first, bounds.previous_last) == (date(2024, 1, 3), date(2024, 1, 31))


def test_leap_day_evening_in_utc_is_march_1_in_berlin():
    bounds = resolve_window(utc("2024-02-29T23:00:00"), "Europe/Berlin", "yesterday")  # 2024-03-01 00:00 CET
    assert bounds.today == date(2024, 3, 1)
    assert bounds.last == date(2024, 2, 29)
    assert bounds.utc_start == utc("2024-02-28T23:00:00")
    assert bounds.utc_end == utc("2024-02-29T23:00:00")


def test_month_to_date_on_march_1_of_a_common_year():
    bounds = resolve_window(utc("2023-03-01T12:00:00"), "UTC", "month_to_date", "previous_period")
    assert (bounds.first, bounds.last) == (date(2023, 3, 1), date(2023, 3, 1))
    assert (bounds.previous_first, bounds.previous_last) == (date(2023, 2, 28), date(2023, 2, 28))


# --- previous period of each window ---------------------------------------------------------------------------------

AT = utc("2024-05-15T12:00:00")


@pytest.mark.parametrize(
    ("window", "first", "last", "previous_first", "previous_last"),
    [
        ("today", date(2024, 5, 15), date(2024, 5, 15), date(2024, 5, 14), date(2024, 5, 14)),
        ("yesterday", date(2024, 5, 14), date(2024, 5, 14), date(2024, 5, 13), date(2024, 5, 13)),
        ("last_1_days", date(2024, 5, 14), date(2024, 5, 14), date(2024, 5, 13), date(2024, 5, 13)),
        ("last_7_days", date(2024, 5, 8), date(2024, 5, 14), date(2024, 5, 1), date(2024, 5, 7)),
        # 2024-05-15 minus 365 days lands on 2023-05-16 because 2024-02-29 lies between.
        ("last_365_days", date(2023, 5, 16), date(2024, 5, 14), date(2022, 5, 16), date(2023, 5, 15)),
        ("month_to_date", date(2024, 5, 1), date(2024, 5, 15), date(2024, 4, 16), date(2024, 4, 30)),
    ],
)
def test_previous_period_of_each_window(window, first, last, previous_first, previous_last):
    bounds = resolve_window(AT, "UTC", window, "previous_period")
    assert bounds.today == date(2024, 5, 15)
    assert (bounds.first, bounds.last) == (first, last)
    assert (bounds.previous_first, bounds.previous_last) == (previous_first, previous_last)


def test_previous_period_utc_bounds_end_where_the_window_begins():
    bounds = resolve_window(AT, "UTC", "last_7_days", "previous_period")
    assert bounds.utc_start == utc("2024-05-08T00:00:00")
    assert bounds.utc_end == utc("2024-05-15T00:00:00")
    assert bounds.previous_utc_start == utc("2024-05-01T00:00:00")
    assert bounds.previous_utc_end == utc("2024-05-08T00:00:00")


def test_without_compare_to_there_is_no_previous_period():
    bounds = resolve_window(AT, "UTC", "last_7_days")
    assert (bounds.previous_first, bounds.previous_last) == (None, None)
    assert (bounds.previous_utc_start, bounds.previous_utc_end) == (None, None)


def test_lifetime_is_unbounded_below_and_ends_at_t():
    bounds = resolve_window(AT, "America/New_York", "lifetime")
    assert (bounds.first, bounds.last) == (None, date(2024, 5, 15))
    assert bounds.utc_start is None
    assert bounds.utc_end == utc("2024-05-15T12:00:01")


def test_today_ends_at_t_and_yesterday_at_local_midnight_even_when_t_is_midnight():
    midnight = utc("2024-05-15T00:00:00")
    assert resolve_window(midnight, "UTC", "today").utc_end == utc("2024-05-15T00:00:01")
    assert resolve_window(midnight, "UTC", "yesterday").utc_end == utc("2024-05-15T00:00:00")
