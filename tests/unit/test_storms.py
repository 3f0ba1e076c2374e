"""Storm protection without servers: when a run is a storm, the limits' validation, the first variable a logic
reads, and the incident notice each channel makes of a storm."""

from __future__ import annotations

import json

import pytest

from engine.compiler import first_variable
from engine.fields import field_types
from engine.model import parse_rule, validate_document
from engine.storms import SHARE_FLOOR, STORM_LISTED_ENTITIES, Storm, storm_of, storm_order
from tests.unit.test_messages import EVALUATED_AT, entity
from worker.messages import (
    MAX_POST_BYTES,
    RunNotice,
    email_message,
    in_app_entities,
    post_bytes,
    slack_body,
    webhook_body,
)

# --- when a run is a storm ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("entities", "matched", "storm"), [
    (5000, 101, True),    # more than max_alerts
    (5000, 100, False),   # exactly max_alerts
    (60, 31, True),       # over half, and over the floor
    (60, 30, False),      # exactly half
    (3, 2, False),        # a handful: the share does not count under the floor
    (2, 2, False),
    (40, SHARE_FLOOR, False),
    (40, SHARE_FLOOR + 1, True),
    (0, 0, False),
])
def test_a_run_is_a_storm_over_max_alerts_or_over_the_share_once_past_the_floor(entities, matched, storm):
    assert (storm_of(entities, matched, max_alerts=100, max_alert_share=0.5) is not None) is storm


def test_max_alerts_counts_even_for_a_few_matches():
    assert storm_of(3, 2, max_alerts=1, max_alert_share=1.0) == Storm(3, 2, 1, 1.0)


def test_a_share_of_one_never_storms_by_share():
    assert storm_of(500, 500, max_alerts=1000, max_alert_share=1.0) is None


@pytest.mark.parametrize(("entities", "matched", "max_share", "reason"), [
    (150, 140, 1.0, "140 of 150 entities matched, more than max_alerts (100)"),
    (5000, 60, 0.01, "60 of 5,000 entities matched, more than max_alert_share (0.01 of the entities evaluated)"),
    (5200, 5000, 0.5, "5,000 of 5,200 entities matched, more than max_alerts (100) and max_alert_share (0.5 of the "
                      "entities evaluated)"),
])
def test_the_reason_names_each_limit_passed(entities, matched, max_share, reason):
    assert storm_of(entities, matched, max_alerts=100, max_alert_share=max_share).reason == reason


# --- the limits in the rule's actions ------------------------------------------------------------------------------

LOGIC = {"logic": {">": [{"var": "spend"}, 100]}}


def test_the_limits_default_to_100_and_half():
    actions = parse_rule(LOGIC, {}).actions
    assert (actions.max_alerts, actions.max_alert_share) == (100, 0.5)


@pytest.mark.parametrize(("actions", "problem"), [
    ({"max_alerts": 0}, ("actions.max_alerts", "must be at least 1")),
    ({"max_alerts": 2.5}, ("actions.max_alerts", "must be a whole number")),
    ({"max_alerts": "10"}, ("actions.max_alerts", "must be a whole number")),
    ({"max_alert_share": 0}, ("actions.max_alert_share", "must be more than 0")),
    ({"max_alert_share": 1.5}, ("actions.max_alert_share", "must be at most 1")),
    ({"max_alert_share": "0.5"}, ("actions.max_alert_share", "must be a number")),
    ({"max_alert_share": True}, ("actions.max_alert_share", "must be a number")),
    ({"max_alert_sahre": 0.2}, ("actions.max_alert_sahre", 'unknown key "max_alert_sahre" (did you mean '
                                                           '"max_alert_share"?)')),
])
def test_bad_limits_are_refused_at_their_json_path(actions, problem):
    problems = validate_document({"conditions": LOGIC, "actions": actions})
    assert [(p.path, p.reason) for p in problems] == [problem]


@pytest.mark.parametrize(("actions", "limits"), [
    ({"max_alerts": 1, "max_alert_share": 1}, (1, 1.0)),
    ({"max_alerts": 5000, "max_alert_share": 0.05}, (5000, 0.05)),
])
def test_good_limits_are_kept(actions, limits):
    parsed = parse_rule(LOGIC, actions).actions
    assert (parsed.max_alerts, parsed.max_alert_share) == limits


# --- the variable an incident notice is ordered by -----------------------------------------------------------------

FIELDS = field_types("campaign_metrics_daily", with_previous=True)


@pytest.mark.parametrize(("logic", "variable"), [
    ({"and": [{">": [{"var": "spend"}, 1]}, {"<": [{"var": "ctr"}, 1]}]}, "spend"),
    ({"and": [{"<": [{"var": "ctr"}, {"*": [{"var": "prev.ctr"}, 0.5]}]}, {">": [{"var": "spend"}, 1]}]}, "ctr"),
    ({"!": [{"missing": ["impressions", "spend"]}]}, "impressions"),
    ({"==": [1, 1]}, None),
])
def test_the_first_variable_is_the_first_field_the_logic_names_as_written(logic, variable):
    assert first_variable(logic, FIELDS) == variable


def record(entity_id: str, **values) -> dict:
    return {"entity_id": entity_id, "values": values}


def test_numbers_are_ordered_highest_first_then_text_then_missing_values_ties_by_entity_id():
    records = [record("c1", spend=5), record("c2", spend=50.5), record("c3"), record("c4", spend=50.5),
               record("c5", spend="n/a"), record("c6", spend=float("nan"))]

    assert [r["entity_id"] for r in storm_order(records, "spend")] == ["c2", "c4", "c1", "c5", "c3", "c6"]


def test_text_values_are_ordered_ascending():
    records = [record("c1", campaign_name="b"), record("c2", campaign_name="a"), record("c3", campaign_name="c")]

    assert [r["entity_id"] for r in storm_order(records, "campaign_name")] == ["c2", "c1", "c3"]


# --- the incident notice on each channel ---------------------------------------------------------------------------

STORM = Storm(entities=5200, matched=5000, max_alerts=100, max_alert_share=0.5)


def storm_notice(kind: str = "alert") -> RunNotice:
    return RunNotice(kind, "run-1", 7, "rule-1", "Overspend", "critical", EVALUATED_AT, STORM, "spend")


def storm_campaigns(count: int) -> list:
    """Campaign i spends i, listed lowest first: a storm notice must reorder them."""
    return [entity(f"c{number}", f"Campaign {number}", {"spend": float(number), "ctr": 0.5})
            for number in range(1, count + 1)]


def test_a_storm_email_is_one_notice_with_the_count_and_the_first_20_by_the_first_variable():
    message = email_message(storm_notice(), storm_campaigns(250))
    lines = message["text"].splitlines()

    assert message["subject"] == "[critical] Overspend: storm, 250 campaigns matched"
    listed = [line for line in lines if line.startswith("- ")]
    assert listed == [f"- campaign Campaign {n} (c{n}): spend = {n}" for n in range(250, 230, -1)]
    assert "... and 230 more" in lines
    assert "The first 20 of 250 by spend (numbers highest first):" in lines
    assert any("max_alerts 100, max_alert_share 0.5" in line for line in lines)


def test_a_storm_slack_post_carries_the_runs_full_count_and_stays_short():
    text = slack_body(storm_notice(), storm_campaigns(5000))["text"]
    lines = text.splitlines()

    assert lines[0] == "*[critical] Overspend: storm, 5,000 campaigns matched*"
    assert ("This run is a storm: 5,000 of 5,200 entities matched, more than max_alerts (100) and max_alert_share "
            "(0.5 of the entities evaluated).") in lines
    assert len([line for line in lines if line.startswith("- ")]) == STORM_LISTED_ENTITIES
    assert lines[-1] == "... and 4,980 more"
    assert len(text) < 4000


def test_a_storm_webhook_body_flags_the_storm_counts_all_and_lists_20_with_every_value():
    body = webhook_body(storm_notice(), storm_campaigns(5000), "key")

    assert (body["storm"], body["entity_count"], body["ordered_by"]) == (True, 5000, "spend")
    assert [r["entity_id"] for r in body["entities"]] == [f"c{n}" for n in range(5000, 4980, -1)]
    assert body["entities"][0]["values"] == {"spend": 5000.0, "ctr": 0.5}
    assert len(post_bytes(body)) < 8 * 1024


def test_storm_in_app_entities_are_the_first_20_by_the_first_variable():
    records = in_app_entities(storm_campaigns(300), storm_notice())

    assert [r["entity_id"] for r in records] == [f"c{n}" for n in range(300, 280, -1)]


def test_a_storm_notice_of_a_few_entities_lists_them_all():
    lines = email_message(storm_notice(), storm_campaigns(3))["text"].splitlines()

    assert "All 3 by spend (numbers highest first):" in lines
    assert [line for line in lines if line.startswith("- ")] == [
        "- campaign Campaign 3 (c3): spend = 3", "- campaign Campaign 2 (c2): spend = 2",
        "- campaign Campaign 1 (c1): spend = 1"]


def test_a_storm_of_line_items_calls_them_so():
    items = [entity(f"li-{n}", f"li-{n}", {"delivered_amount": n}, entity_type="line_item") for n in range(30)]
    notice = RunNotice("alert", "run-1", 7, "rule-1", "Stalled", "warning", EVALUATED_AT, STORM, "delivered_amount")

    assert email_message(notice, items)["subject"] == "[warning] Stalled: storm, 30 line items matched"


def test_a_resolved_notice_of_a_run_that_is_a_storm_is_not_an_incident_notice():
    resolved = RunNotice("resolved", "run-1", 7, "rule-1", "Overspend", "critical", EVALUATED_AT)

    assert email_message(resolved, storm_campaigns(3))["subject"] == "[resolved] Overspend: 3 entities no longer match"


# --- bounded bodies, storm or not ----------------------------------------------------------------------------------


def test_a_webhook_body_drops_the_entities_that_would_pass_its_size_limit():
    huge = [entity(f"c{n}", "N" * 20_000, {"spend": n}) for n in range(1, 11)]
    notice = RunNotice("alert", "run-1", 7, "rule-1", "Overspend", "critical", EVALUATED_AT)
    body = webhook_body(notice, huge, "key")

    assert len(post_bytes(body)) <= MAX_POST_BYTES
    assert body["entity_count"] == 10
    assert [r["entity_id"] for r in body["entities"]] == ["c1", "c2", "c3"]
    assert json.loads(post_bytes(body)) == body


def test_a_long_line_of_an_email_or_slack_text_is_cut():
    notice = RunNotice("alert", "run-1", 7, "rule-1", "Overspend", "critical", EVALUATED_AT)
    [line] = [line for line in slack_body(notice, [entity("c1", "N" * 5000)])["text"].splitlines()
              if line.startswith("- ")]

    assert len(line) == 500 and line.endswith("…")
