"""worker.backfill without databases: which fire times share one evaluation (window_key, a pure function of the rule,
the timezone and T) and the per-day table."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from engine.model import parse_rule
from worker.backfill import BackfillResult, format_days, window_key

NEW_YORK = "America/New_York"


def _rule(**conditions):
    return parse_rule({"logic": {">": [{"var": "spend"}, 1]}, **conditions}, {}, timezone=NEW_YORK)


def _pacing_rule(window):
    return parse_rule({"source": "pacing_snapshots", "window": window, "logic": {"<": [{"var": "pacing_rate"}, 1]}},
                      {}, timezone=NEW_YORK)


# 2026-03-08 is a 23-hour day in New York (05:00 UTC to 04:00 UTC the next day).
FIRST_OF_DAY = datetime(2026, 3, 8, 5, 0, tzinfo=UTC)
LAST_OF_DAY = datetime(2026, 3, 9, 3, 55, tzinfo=UTC)
NEXT_DAY = datetime(2026, 3, 9, 4, 0, tzinfo=UTC)


@pytest.mark.parametrize("rule", [_rule(window="today"), _rule(window="yesterday"), _rule(window="lifetime"),
                                  _rule(window="last_30_days", compare_to="previous_period"),
                                  _rule(window="month_to_date", compare_to="previous_period"),
                                  _pacing_rule("yesterday")])
def test_the_fire_times_of_one_local_day_share_and_the_next_day_does_not(rule):
    assert window_key(rule, NEW_YORK, FIRST_OF_DAY) == window_key(rule, NEW_YORK, LAST_OF_DAY)
    assert window_key(rule, NEW_YORK, LAST_OF_DAY) != window_key(rule, NEW_YORK, NEXT_DAY)


@pytest.mark.parametrize("window", ["today", "month_to_date", "lifetime"])
def test_pacing_windows_that_include_today_end_at_t_and_never_share(window):
    rule = _pacing_rule(window)

    assert window_key(rule, NEW_YORK, FIRST_OF_DAY) != window_key(rule, NEW_YORK, LAST_OF_DAY)


def _summary(at: str, status: str = "succeeded", matched: int = 0, alerts: int = 0, error: str | None = None,
             silenced: int = 0, acknowledged: int = 0, storm: bool = False):
    return {"scheduled_for": at, "status": status, "matched": matched, "alerts": alerts, "error": error,
            "silenced": silenced, "acknowledged": acknowledged, "storm": storm}


def test_the_day_table_groups_fire_times_by_local_day_with_range_failures_and_errors():
    # 23:30 UTC on the 1st is already the 2nd in Berlin.
    result = BackfillResult([_summary("2026-06-01T10:00:00Z", matched=2, alerts=2),
                             _summary("2026-06-01T23:30:00Z", matched=1, alerts=1),
                             _summary("2026-06-02T05:00:00Z", "failed", error="ClickHouse was down"),
                             _summary("2026-06-02T06:00:00Z", "failed", error="ClickHouse was down"),
                             _summary("2026-06-02T07:00:00Z", matched=1, silenced=1)], evaluated=3)

    assert format_days(result, "Europe/Berlin").splitlines() == [
        "local day  fire times   matched  alerts failed",
        "2026-06-01          1         2       2      0",
        "2026-06-02          4       0-1       1      2",
        "  2 × ClickHouse was down",
        "  notices withheld: 1 silenced, 0 acknowledged",
        "5 fire times (3 evaluated), 4 matches, 3 alerts, 2 failed",
    ]


def test_the_day_table_counts_the_fire_times_that_were_storms():
    result = BackfillResult([_summary("2026-06-01T10:00:00Z", matched=300, storm=True),
                             _summary("2026-06-01T11:00:00Z", matched=2),
                             _summary("2026-06-02T10:00:00Z", matched=250, storm=True)], evaluated=3)

    assert format_days(result, "UTC").splitlines() == [
        "local day  fire times   matched  alerts failed",
        "2026-06-01          2     2-300       0      0",
        "  1 × a storm (more matches than max_alerts or max_alert_share allow)",
        "2026-06-02          1       250       0      0",
        "  1 × a storm (more matches than max_alerts or max_alert_share allow)",
        "3 fire times (3 evaluated), 552 matches, 0 alerts, 0 failed, 2 storms",
    ]
