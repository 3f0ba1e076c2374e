"""What each channel says about a run: the e-mail's subject and body, the Slack text, the webhook body and the
in-app entities, built from plain data with no server."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from worker.audience import Entity
from worker.messages import (
    MAX_LISTED_ENTITIES,
    RunNotice,
    email_message,
    entity_record,
    in_app_entities,
    slack_body,
    webhook_body,
)

# 11:30 at UTC+02:30 is 09:00 UTC: messages state the instant in UTC.
EVALUATED_AT = datetime(2026, 11, 25, 11, 30, tzinfo=timezone(timedelta(hours=2, minutes=30)))
EVALUATED_TEXT = "2026-11-25T09:00:00Z"


def notice(kind: str = "alert", severity: str = "critical", rule_name: str = "Overspend") -> RunNotice:
    return RunNotice(kind=kind, run_id="0b2e7c1a-run", org_id=7, rule_id="9d4e0f3b-rule", rule_name=rule_name,
                     severity=severity, evaluated_at=EVALUATED_AT)


def entity(entity_id: str, name: str | None = None, values: dict | None = None, conditions=(True,),
           entity_type: str = "campaign") -> Entity:
    """An entity whose condition details hold `values`, the condition outcomes and its type, as a run stores them."""
    details = {"entity_type": entity_type, **(values or {}), "conditions": list(conditions)}
    return Entity(entity_type, entity_id, entity_id if name is None else name, json.dumps(details))


def campaigns(count: int) -> list[Entity]:
    return [entity(f"c{number}", f"Campaign {number}", {"spend": number}) for number in range(1, count + 1)]


def listed_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("- ")]


# --- one entity as messages carry it -------------------------------------------------------------------------------


def test_an_entity_record_splits_its_details_into_values_and_condition_outcomes():
    record = entity_record(entity("c-9", "Spring Sale", {"spend": 1234.5, "ctr": 0.0008}, conditions=(True, False)))

    assert record == {"entity_type": "campaign", "entity_id": "c-9", "entity_name": "Spring Sale",
                      "values": {"spend": 1234.5, "ctr": 0.0008}, "conditions": [True, False]}
    assert list(record["values"]) == ["spend", "ctr"]


def test_an_entity_without_details_has_no_values_and_no_conditions():
    record = entity_record(Entity("line_item", "li-1", "Line 1", ""))

    assert (record["values"], record["conditions"]) == ({}, [])


# --- e-mail --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "count", "subject"), [
    ("alert", 1, "[critical] Overspend: 1 entity matched"),
    ("alert", 3, "[critical] Overspend: 3 entities matched"),
    ("resolved", 1, "[resolved] Overspend: 1 entity no longer match"),
    ("resolved", 2, "[resolved] Overspend: 2 entities no longer match"),
])
def test_the_subject_names_severity_or_resolution_the_rule_and_the_count(kind, count, subject):
    assert email_message(notice(kind), campaigns(count))["subject"] == subject


def test_the_subject_shows_the_rules_severity():
    assert email_message(notice(severity="info", rule_name="Pacing"), campaigns(2))["subject"] == (
        "[info] Pacing: 2 entities matched")


def test_an_alert_email_body_names_the_rule_the_time_in_utc_each_entity_and_the_run():
    entities = [entity("c1", "Spring Sale", {"spend": 150.5, "impressions": 1000}),
                entity("li-2", "li-2", {"delivered_amount": 0}, entity_type="line_item")]
    message = email_message(notice(), entities)

    assert message["text"].endswith("\n")
    assert message["text"].splitlines() == [
        "Rule: Overspend (9d4e0f3b-rule)",
        "Severity: critical",
        f"Evaluated at: {EVALUATED_TEXT}",
        "",
        "These entities matched the rule and may need a look:",
        "- campaign Spring Sale (c1): spend = 150.5, impressions = 1000",
        "- line_item li-2: delivered_amount = 0",
        "",
        "Run 0b2e7c1a-run",
    ]


def test_a_resolved_email_says_the_entities_no_longer_match():
    lines = email_message(notice("resolved"), campaigns(1))["text"].splitlines()

    assert "These entities matched the rule before and no longer do:" in lines
    assert "These entities matched the rule and may need a look:" not in lines


def test_an_entity_whose_logic_read_no_values_is_listed_without_a_colon():
    [line] = listed_lines(email_message(notice(), [entity("c1", "Quiet")])["text"])

    assert line == "- campaign Quiet (c1)"


@pytest.mark.parametrize(("value", "text"), [
    (150.5, "150.5"),
    (0.0008, "0.0008"),
    (1234.5678, "1,234.57"),  # six significant digits below a million
    (999999.4, "999,999"),
    (2500000.0, "2,500,000.00"),  # two decimals from a million on
    (-3000000.125, "-3,000,000.12"),
    (1000, "1000"),  # integers as they are
    (True, "True"),
    ("DV360", "DV360"),
])
def test_values_are_written_for_people(value, text):
    [line] = listed_lines(email_message(notice(), [entity("c1", "C", {"spend": value})])["text"])

    assert line == f"- campaign C (c1): spend = {text}"


def test_the_email_lists_entities_in_the_order_given():
    entities = [entity(entity_id) for entity_id in ("c3", "c1", "c2")]

    assert listed_lines(email_message(notice(), entities)["text"]) == [
        "- campaign c3", "- campaign c1", "- campaign c2"]


def test_a_long_email_lists_the_first_entities_then_says_how_many_more_while_the_subject_counts_all():
    extra = 7
    entities = campaigns(MAX_LISTED_ENTITIES + extra)
    message = email_message(notice(), entities)
    lines = message["text"].splitlines()
    listed = listed_lines(message["text"])

    assert message["subject"] == f"[critical] Overspend: {MAX_LISTED_ENTITIES + extra} entities matched"
    assert listed == [f"- campaign {e.entity_name} ({e.entity_id}): spend = {json.loads(e.condition_details)['spend']}"
                      for e in entities[:MAX_LISTED_ENTITIES]]
    assert lines[lines.index(listed[-1]) + 1] == f"... and {extra} more"


def test_exactly_the_listed_maximum_has_no_more_line():
    text = email_message(notice(), campaigns(MAX_LISTED_ENTITIES))["text"]

    assert len(listed_lines(text)) == MAX_LISTED_ENTITIES
    assert "more" not in text


# --- Slack ---------------------------------------------------------------------------------------------------------


def test_the_slack_text_is_the_bold_headline_the_time_and_the_listing():
    body = slack_body(notice(severity="warning"), [entity("c1", "Spring Sale", {"spend": 150.5}), entity("c2")])

    assert list(body) == ["text"]
    assert body["text"].splitlines() == [
        "*[warning] Overspend: 2 entities matched*",
        f"Evaluated at {EVALUATED_TEXT}",
        "- campaign Spring Sale (c1): spend = 150.5",
        "- campaign c2",
    ]


def test_a_resolved_slack_text_says_so():
    assert slack_body(notice("resolved"), campaigns(1))["text"].splitlines()[0] == (
        "*[resolved] Overspend: 1 entity no longer match*")


def test_a_long_slack_text_is_cut_like_the_email():
    lines = slack_body(notice(), campaigns(MAX_LISTED_ENTITIES + 1))["text"].splitlines()

    assert len(listed_lines("\n".join(lines))) == MAX_LISTED_ENTITIES
    assert lines[-1] == "... and 1 more"


# --- webhook -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["alert", "resolved"])
def test_the_webhook_body_has_exactly_the_documented_keys(kind):
    entities = [entity("c-9", "Spring Sale", {"spend": 1234.5, "ctr": 0.0008}, conditions=(True, True))]
    body = webhook_body(notice(kind), entities, "6f1c-delivery")

    assert body == {
        "event": kind, "delivery_id": "6f1c-delivery", "run_id": "0b2e7c1a-run", "org_id": 7,
        "rule": {"id": "9d4e0f3b-rule", "name": "Overspend", "severity": "critical"},
        "evaluated_at": EVALUATED_TEXT, "storm": False, "entity_count": 1, "ordered_by": None,
        "entities": [{"entity_type": "campaign", "entity_id": "c-9", "entity_name": "Spring Sale",
                      "values": {"spend": 1234.5, "ctr": 0.0008}, "conditions": [True, True]}]}
    assert json.loads(json.dumps(body)) == body


def test_the_webhook_body_lists_the_first_entities_in_order_and_counts_all():
    entities = campaigns(MAX_LISTED_ENTITIES + 5)[::-1]
    body = webhook_body(notice(), entities, "key")

    assert [record["entity_id"] for record in body["entities"]] == [
        e.entity_id for e in entities[:MAX_LISTED_ENTITIES]]
    assert body["entity_count"] == MAX_LISTED_ENTITIES + 5


# --- in-app --------------------------------------------------------------------------------------------------------


def test_in_app_entities_are_every_entity_as_a_record():
    entities = campaigns(MAX_LISTED_ENTITIES + 2)
    records = in_app_entities(entities)

    assert [(r["entity_id"], r["entity_name"], r["values"]) for r in records] == [
        (e.entity_id, e.entity_name, {"spend": number}) for number, e in enumerate(entities, start=1)]
    assert all(record["conditions"] == [True] for record in records)


def test_utc_is_stated_for_an_instant_given_in_utc_too():
    at_utc = RunNotice("alert", "r", 1, "id", "R", "info", EVALUATED_AT.astimezone(UTC))

    assert webhook_body(at_utc, [], "k")["evaluated_at"] == EVALUATED_TEXT


# --- a recheck's notice --------------------------------------------------------------------------------------------


def restated_notice(*matching_now: str) -> RunNotice:
    return RunNotice("restated", "0b2e7c1a-run", 7, "9d4e0f3b-rule", "Overspend", "warning",
                     EVALUATED_AT + timedelta(days=1, seconds=7), scheduled_for=EVALUATED_AT,
                     matching_now=frozenset(("campaign", entity_id) for entity_id in matching_now))


def test_a_recheck_email_lists_what_matches_now_then_what_no_longer_matches():
    message = email_message(restated_notice("c2", "c3"), campaigns(3))

    assert message["subject"] == (
        "[restated] Overspend: 2 entities match now after restated data, 1 entity no longer matches")
    text = message["text"]
    assert "Evaluated at: 2026-11-26T09:00:07Z (a recheck of the run as of 2026-11-25T09:00:00Z, over its window)" in text
    assert text.index("Matches now after restated data:") < text.index("- campaign Campaign 2 (c2)") \
        < text.index("- campaign Campaign 3 (c3)") < text.index("No longer matches:") \
        < text.index("- campaign Campaign 1 (c1)")


def test_a_recheck_that_only_lost_matches_says_so_alone():
    assert email_message(restated_notice(), campaigns(2))["subject"] == "[restated] Overspend: 2 entities no longer match"
    assert "Matches now" not in slack_body(restated_notice(), campaigns(2))["text"]


def test_a_recheck_webhook_body_names_its_fire_time_and_each_entitys_verdict_now():
    body = webhook_body(restated_notice("c2"), campaigns(2), "key")

    assert (body["event"], body["evaluated_at"], body["scheduled_for"]) == (
        "restated", "2026-11-26T09:00:07Z", EVALUATED_TEXT)
    assert [(record["entity_id"], record["matched"]) for record in body["entities"]] == [("c2", True), ("c1", False)]
    assert [(r["entity_id"], r["matched"]) for r in in_app_entities(campaigns(2), restated_notice("c2"))] == [
        ("c2", True), ("c1", False)]
    assert "scheduled_for" not in webhook_body(notice(), campaigns(1), "key")
