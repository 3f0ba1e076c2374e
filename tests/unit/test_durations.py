"""Durations of rule documents (`conditions.recheck_after`) and their validation, without servers."""

from __future__ import annotations

from datetime import timedelta

import pytest

from engine.durations import parse_duration
from engine.model import parse_rule, validate_document

SPEND = {">": [{"var": "spend"}, 100]}


@pytest.mark.parametrize(("text", "expected"), [
    ("24h", timedelta(hours=24)), ("90m", timedelta(minutes=90)), ("1d12h", timedelta(days=1, hours=12)),
    ("2d3h4m5s", timedelta(days=2, hours=3, minutes=4, seconds=5)), ("30s", timedelta(seconds=30)),
    ("0m", timedelta(0)), ("1w", timedelta(weeks=1)), ("1w2d", timedelta(days=9)),
])
def test_a_duration_is_parts_of_weeks_days_hours_minutes_and_seconds(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "24", "h", "1h1d", "1.5h", "24 h", "-1h", "1d1w", "1h1h", "24H"])
def test_anything_else_is_refused_saying_how_to_write_one(text):
    with pytest.raises(ValueError, match='is not a duration: write a number and a unit, w, d, h, m or s'):
        parse_duration(text)


def test_a_duration_past_what_a_timedelta_holds_is_refused_as_too_long():
    with pytest.raises(ValueError, match="too long a duration"):
        parse_duration("9" * 20 + "d")


def test_recheck_after_becomes_the_rules_recheck_delay():
    assert parse_rule({"logic": SPEND, "recheck_after": "1d12h"}, {}).conditions.recheck_delay == timedelta(hours=36)
    assert parse_rule({"logic": SPEND}, {}).conditions.recheck_delay is None


@pytest.mark.parametrize(("value", "reason"), [
    ("24", '"24" is not a duration'), ("30s", '"30s" must be between 1m and 30d'),
    ("31d", '"31d" must be between 1m and 30d'), (24, "must be a string"),
])
def test_a_bad_recheck_after_is_a_problem_at_its_path(value, reason):
    [problem] = validate_document({"conditions": {"logic": SPEND, "recheck_after": value}})
    assert problem.path == "conditions.recheck_after"
    assert reason in problem.reason
