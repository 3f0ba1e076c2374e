"""The completeness of a window and what a run does about it (engine.freshness), without servers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from engine.durations import parse_duration
from engine.errors import RuleValidationError
from engine.evaluation_document import parse_document, with_stale_mark
from engine.freshness import (RUN_STALE, SKIP_STALE, WAIT, Account, Pipeline, completeness, data_end, duration_text,
                              freshness_report, wait_decision)
from engine.model import parse_rule, validate_document
from engine.run_states import IllegalTransition, RunState, check_transition
from engine.windows import resolve_window
from worker.audience import Entity
from worker.messages import RunNotice, email_message, slack_body, webhook_body

T = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
# yesterday in New York ends at 2026-11-25 05:00 UTC.
YESTERDAY_END = datetime(2026, 11, 25, 5, 0, tzinfo=UTC)


def account(external_id: str, synced: datetime | None, dsp_type: str = "DV360", status: str = "active") -> Account:
    return Account(hash(external_id) % 1000, dsp_type, external_id, f"Account {external_id}", status, synced)


def pipeline(connector_type: str, status: str) -> Pipeline:
    return Pipeline(f"p-{connector_type}-{status}", f"{connector_type} import", connector_type, status)


def test_the_data_of_a_past_day_ends_with_that_local_day():
    assert data_end(resolve_window(T, "America/New_York", "yesterday"), "America/New_York") == YESTERDAY_END
    assert data_end(resolve_window(T, "America/New_York", "last_7_days"), "America/New_York") == YESTERDAY_END
    assert data_end(resolve_window(T, "Asia/Tokyo", "yesterday"), "Asia/Tokyo") == \
        datetime(2026, 11, 24, 15, 0, tzinfo=UTC)


def test_the_data_of_a_window_that_includes_today_ends_where_today_begins():
    for window in ("today", "month_to_date", "lifetime"):
        assert data_end(resolve_window(T, "America/New_York", window), "America/New_York") == YESTERDAY_END


def test_a_window_is_complete_when_every_covered_account_synced_after_its_end_plus_the_delay():
    accounts = [account("a", YESTERDAY_END + timedelta(hours=2, seconds=1)),
                account("b", YESTERDAY_END + timedelta(hours=3))]
    verdict = completeness(accounts, [], None, YESTERDAY_END, timedelta(hours=2))
    assert verdict.complete and verdict.reason() == "" and verdict.behind_keys == []


def test_an_account_synced_exactly_at_the_end_plus_delay_or_never_is_behind():
    accounts = [account("on-the-dot", YESTERDAY_END + timedelta(hours=2)), account("never", None),
                account("fine", YESTERDAY_END + timedelta(hours=5))]
    verdict = completeness(accounts, [], None, YESTERDAY_END, timedelta(hours=2))
    assert not verdict.complete
    assert verdict.behind_keys == [("DV360", "on-the-dot"), ("DV360", "never")]
    assert verdict.reason() == (
        "data incomplete (needs a sync after 2026-11-25T07:00:00Z): DV360 account on-the-dot (Account on-the-dot) "
        "last synced 2026-11-25T07:00:00Z; DV360 account never (Account never) has never synced")


def test_only_active_accounts_of_the_scopes_dsp_types_are_covered():
    stale = YESTERDAY_END - timedelta(days=1)
    accounts = [account("ttd", stale, "TTD"), account("paused", stale, status="paused"),
                account("dv", YESTERDAY_END + timedelta(minutes=1))]
    assert completeness(accounts, [], ["DV360"], YESTERDAY_END, timedelta(0)).complete
    assert completeness(accounts, [], None, YESTERDAY_END, timedelta(0)).behind_keys == [("TTD", "ttd")]


def test_a_failed_pipeline_of_a_covered_connector_type_makes_the_window_incomplete():
    fresh = [account("dv", YESTERDAY_END + timedelta(hours=1))]
    failed_meta, failed_dv = pipeline("META", "failed"), pipeline("DV360", "failed")
    assert completeness(fresh, [failed_meta, pipeline("DV360", "paused")], None, YESTERDAY_END, timedelta(0)).complete
    verdict = completeness(fresh, [failed_meta, failed_dv], None, YESTERDAY_END, timedelta(0))
    assert verdict.failed_pipelines == (failed_dv,) and verdict.behind == ()
    assert verdict.reason().endswith("pipeline 'DV360 import' (DV360) has failed")
    # A scoped rule counts the pipelines of its types even without an account of them.
    assert not completeness([], [failed_meta], ["META"], YESTERDAY_END, timedelta(0)).complete


def test_an_organization_without_accounts_has_nothing_to_wait_for():
    assert completeness([], [], None, YESTERDAY_END, timedelta(hours=2)).complete
    assert completeness([], [pipeline("CRM", "failed")], None, YESTERDAY_END, timedelta(0)).complete


@pytest.mark.parametrize("text, expected", [("0", timedelta(0)), ("45s", timedelta(seconds=45)),
                                            ("15m", timedelta(minutes=15)), ("2h", timedelta(hours=2)),
                                            ("7d", timedelta(days=7))])
def test_durations_are_a_number_and_a_unit(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "2", "2x", "1.5h", "-1h", "h", " 2h"])
def test_other_durations_are_refused(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def incomplete():
    return completeness([account("late", None)], [], None, YESTERDAY_END, timedelta(0))


def test_a_complete_window_goes_on_at_once():
    verdict = completeness([], [], None, YESTERDAY_END, timedelta(0))
    assert wait_decision(verdict, T, timedelta(hours=6), "run", T, timedelta(0), 60).action == "go"


def test_an_incomplete_window_waits_with_backoff_and_never_past_its_deadline():
    first = wait_decision(incomplete(), T, timedelta(hours=6), "run", T, timedelta(0), 60)
    assert (first.action, first.check_in, first.deadline) == (WAIT, 60, T + timedelta(hours=6))
    later = wait_decision(incomplete(), T, timedelta(hours=6), "run", T + timedelta(minutes=5),
                          timedelta(minutes=5), 60)
    assert later.check_in == 300
    capped = wait_decision(incomplete(), T, timedelta(hours=6), "run", T + timedelta(hours=2), timedelta(hours=2), 60)
    assert capped.check_in == 30 * 60
    near_the_end = wait_decision(incomplete(), T, timedelta(hours=6), "run", T + timedelta(hours=6, seconds=-10),
                                 timedelta(hours=5), 60)
    assert near_the_end.check_in == 11


def test_past_its_deadline_a_run_goes_on_stale_or_is_skipped_as_on_stale_says():
    late = T + timedelta(hours=6)
    assert wait_decision(incomplete(), T, timedelta(hours=6), "run", late, timedelta(hours=6), 60).action == RUN_STALE
    assert wait_decision(incomplete(), T, timedelta(hours=6), "skip", late, timedelta(hours=6), 60).action == SKIP_STALE
    # max_wait 0: no waiting at all.
    assert wait_decision(incomplete(), T, timedelta(0), "skip", T, timedelta(0), 60).action == SKIP_STALE


def test_the_rule_document_takes_data_delay_max_wait_and_on_stale_with_defaults():
    rule = parse_rule({"logic": {"==": [{"var": "fresh"}, True]}}, {})
    assert (rule.conditions.data_delay, rule.conditions.max_wait, rule.conditions.on_stale) == ("0", "6h", "run")
    problems = validate_document({"conditions": {"logic": {">": [{"var": "spend"}, 1]}, "data_delay": "2 hours",
                                                 "max_wait": "9d", "on_stale": "wait"}})
    assert sorted(problem.path for problem in problems) == ["conditions.data_delay", "conditions.max_wait",
                                                            "conditions.on_stale"]
    assert "must be at most 7 days" in {problem.path: problem.reason for problem in problems}[
        "conditions.max_wait"]
    assert (rule.conditions.data_delay_time, rule.conditions.max_wait_time) == (timedelta(0), timedelta(hours=6))


def test_fresh_is_a_field_of_campaigns_only():
    with pytest.raises(RuleValidationError, match='unknown variable "fresh"'):
        parse_rule({"source": "pacing_snapshots", "logic": {"var": "fresh"}}, {})
    with pytest.raises(RuleValidationError, match='unknown variable "prev.fresh"'):
        parse_rule({"compare_to": "previous_period", "logic": {"var": "prev.fresh"}}, {})


def test_waiting_is_a_state_between_claimed_and_compiled():
    check_transition(RunState.CLAIMED, RunState.WAITING)
    for target in (RunState.WAITING, RunState.COMPILED, RunState.SKIPPED, RunState.FAILED):
        check_transition(RunState.WAITING, target)
    for target in (RunState.EVALUATED, RunState.SUCCEEDED):
        with pytest.raises(IllegalTransition):
            check_transition(RunState.WAITING, target)
    with pytest.raises(IllegalTransition):
        check_transition(RunState.COMPILED, RunState.WAITING)
    assert (RunState.WAITING.status, RunState.CLAIMED.status) == ("waiting", "running")


@pytest.mark.parametrize("seconds, text", [(0, "0m"), (59, "0m"), (45 * 60, "45m"), (3 * 3600 + 300, "3h 5m"),
                                           (2 * 86400 + 4 * 3600 + 59, "2d 4h"), (-30, "0m")])
def test_a_lag_is_written_to_the_minute(seconds, text):
    assert duration_text(seconds) == text


def test_the_freshness_report_lists_accounts_by_source_then_pipeline_types_without_accounts():
    accounts = [account("b", T - timedelta(hours=26), "TTD"), account("a", None)]
    entries = freshness_report(3, accounts, [pipeline("TTD", "active"), pipeline("CRM", "failed")], T)
    assert [(entry["source"], entry["account"] and entry["account"]["external_id"], entry["behind"])
            for entry in entries] == [("DV360", "a", "never synced"), ("TTD", "b", "1d 2h"), ("CRM", None, "-")]
    assert entries[1]["pipelines"] == [{"name": "TTD import", "status": "active"}]
    assert (entries[1]["behind_seconds"], entries[1]["last_sync_at"]) == (26 * 3600, "2026-11-24T07:00:00Z")


def test_the_stale_mark_goes_just_before_conditions_and_is_read_back():
    document = '{"spend":1200.5,"campaign_name":"a \\"conditions\\":[ b","conditions":[true]}'
    marked = with_stale_mark(document)
    assert marked == '{"spend":1200.5,"campaign_name":"a \\"conditions\\":[ b","stale":true,"conditions":[true]}'
    parsed = parse_document(marked)
    assert (parsed.stale, parsed.values, parsed.conditions) == (True, {"spend": 1200.5, "campaign_name":
                                                                       'a "conditions":[ b'}, [True])
    assert parse_document(document).stale is False and with_stale_mark("") == ""


def test_messages_of_a_stale_run_say_so():
    entity = Entity("campaign", "c1", "Spring Sale", with_stale_mark('{"spend":150.5,"conditions":[true]}'))
    stale = RunNotice("alert", "run-1", 1, "rule-1", "Overspend", "warning", T, stale=True)
    fresh = RunNotice("alert", "run-1", 1, "rule-1", "Overspend", "warning", T)
    assert "Evaluated at: 2026-11-25T09:00:00Z (evaluated on stale data)" in email_message(stale, [entity])["text"]
    assert "Evaluated at 2026-11-25T09:00:00Z (evaluated on stale data)" in slack_body(stale, [entity])["text"]
    body = webhook_body(stale, [entity], "key-1")
    assert (body["evaluated_at"], body["stale"], body["entities"][0]["stale"]) == ("2026-11-25T09:00:00Z", True, True)
    assert body["entities"][0]["values"] == {"spend": 150.5}
    assert "stale" not in webhook_body(fresh, [], "key-2")
    assert "stale" not in email_message(fresh, [])["text"]
