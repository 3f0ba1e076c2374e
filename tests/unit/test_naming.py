"""Naming conventions without I/O: their validation, where tokens stand, the diagnosis and its suggestion, rules
that use them, and how every channel shows the diagnosis."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from engine.conventions import MAX_TEXT_LENGTH, conventions_in_settings, parse_convention
from engine.errors import RuleValidationError, ValidationProblem
from engine.evaluation_document import diagnosis_json, document_json, parse_document
from engine.interpreter import evaluate_row
from engine.model import parse_rule, validate_document
from engine.naming import SUGGESTION_SPAN, Diagnosis, diagnose, edit_distance, suggestion
from worker.audience import Entity
from worker.messages import RunNotice, email_message, in_app_entities, slack_body, webhook_body
from benchmarks.bench import NAMING_CONVENTION as CAMPAIGN

CONVENTION = parse_convention("campaign", CAMPAIGN)
RULE = {"window": "yesterday", "logic": {"naming": [{"var": "campaign_name"}, "campaign"]}}


def _single(token: dict) -> object:
    return parse_convention("one", {"delimiter": "_", "tokens": [{"name": "t", **token}]})


def test_the_default_count_runs_from_the_required_tokens_to_all_of_them():
    convention = parse_convention("c", {"delimiter": "_", "tokens": CAMPAIGN["tokens"]})
    assert (convention.min_tokens, convention.max_tokens) == (5, 6)
    assert (CONVENTION.min_tokens, CONVENTION.max_tokens) == (4, 6)


def test_fewer_tokens_leave_out_the_optional_ones_last_first_then_the_last_tokens():
    assert [token.name for token in CONVENTION.layout(6)] == ["market", "dsp", "objective", "period", "month", "label"]
    assert [token.name for token in CONVENTION.layout(5)] == ["market", "dsp", "objective", "period", "label"]
    assert [token.name for token in CONVENTION.layout(4)] == ["market", "dsp", "objective", "period"]
    two_optional = parse_convention("c", {"delimiter": "-", "tokens": [
        {"name": "a", "free": True}, {"name": "b", "free": True, "optional": True},
        {"name": "c", "free": True, "optional": True}, {"name": "d", "free": True}]})
    assert [token.name for token in two_optional.layout(3)] == ["a", "b", "d"]
    assert [token.name for token in two_optional.layout(2)] == ["a", "d"]


@pytest.mark.parametrize("name, expected", [
    ("US_DV360_Brand_Q1", None),
    ("US_DV360_Brand_Q1_202602_x", None),
    ("US_DV36O_Brand_Q1", Diagnosis("dsp", 2, "DV36O", "does not equal the campaign's dsp_type", "DV360")),
    ("Us_DV360_Brand_Q1", Diagnosis("market", 1, "Us", "wrong case", "US")),
    ("US_DV360_Prf_Q1", Diagnosis("objective", 3, "Prf", "not an allowed value", "Perf")),
    ("US_DV360_Zzzzzz_Q1", Diagnosis("objective", 3, "Zzzzzz", "not an allowed value", None)),
    ("US_DV360_Brand_Q12", Diagnosis("period", 4, "Q12", "does not match ^Q[1-4]$")),
    ("US_DV360_Brand_Q1_202600_x", Diagnosis("month", 5, "202600", "not a date in the form YYYYMM")),
    ("US_DV360_Brand_Q1__", Diagnosis("month", 5, "", "is empty")),
    ("US_DV360", Diagnosis("objective", 3, "", "too few tokens: 2, at least 4")),
    ("US_DV360_Brand_Q1_202602_x_y_z", Diagnosis(None, 7, "y", "too many tokens: 8, at most 6")),
])
def test_the_diagnosis_names_the_first_failing_token(name, expected):
    assert diagnose(CONVENTION, name, {"dsp_type": "DV360"}) == expected


def test_an_empty_dsp_type_gives_no_suggestion():
    assert diagnose(CONVENTION, "US_DV360_Brand_Q1", {"dsp_type": ""}).suggest is None


@pytest.mark.parametrize("date, good, bad", [
    ("YYYY", ["2026", "0000"], ["26", "2026x", "20266"]),
    ("YYYY-MM", ["2026-12"], ["2026-13", "2026-00", "202612"]),
    ("YYYYMMDD", ["20240229", "20261231"], ["20230229", "20260431", "20260100"]),
    ("YYYY-MM-DD", ["2000-02-29"], ["1900-02-29", "2026-1-01", "2026-01-01\n"]),
    ("YYMMDD", ["240229"], ["230229"]),
    ("DD.MM.YYYY", ["31.12.2026"], ["31-12-2026", "32.12.2026"]),
    ("MM/DD/YYYY", ["02/29/2024"], ["29/02/2024"]),
])
def test_date_tokens_are_real_days_of_their_format(date, good, bad):
    convention = _single({"date": date})
    assert [name for name in good if diagnose(convention, name, {}) is not None] == []
    assert [name for name in bad if diagnose(convention, name, {}) is None] == []


def test_ignore_case_compares_ascii_letters_only():
    convention = _single({"values": ["Brand", "Été"], "ignore_case": True})
    assert diagnose(convention, "BRAND", {}) is None
    assert diagnose(convention, "ÉTé", {}) is None
    assert diagnose(convention, "été", {}) == Diagnosis("t", 1, "été", "not an allowed value", "Été")


def test_the_suggestion_prefers_case_only_differences_then_the_least_edits():
    assert suggestion("dv360", ("DV36", "DV360", "Dv360")) == "DV360"
    assert suggestion("Perff", ("Brand", "Perf")) == "Perf"
    assert suggestion("abcdef", ("Perf",)) is None
    assert suggestion("x", ("US",)) is None and suggestion("U", ("US",)) == "US"
    assert edit_distance("kitten", "sitting") == 3 and edit_distance("é😀", "e😀") == 1


def test_a_token_far_longer_than_every_allowed_value_gets_no_suggestion_and_keeps_its_whole_text():
    longest = "A" * MAX_TEXT_LENGTH
    assert suggestion("a" * MAX_TEXT_LENGTH + "B" * 127, (longest,)) == longest
    assert suggestion("a" * MAX_TEXT_LENGTH + "B" * 128, (longest,)) is None
    # Cut to its first SUGGESTION_SPAN code points, a longer token is still too far from the longest value.
    assert 2 * edit_distance("A" * SUGGESTION_SPAN, longest) > MAX_TEXT_LENGTH
    hostile = "A" * 70_000
    assert suggestion(hostile, (longest, "US")) is None
    assert diagnose(_single({"values": [longest]}), hostile, {}) == Diagnosis(
        "t", 1, hostile, "not an allowed value")


def test_the_interpreter_answers_whether_the_name_breaks_the_convention():
    rule = parse_rule(RULE, {}, conventions={"campaign": CAMPAIGN})
    assert evaluate_row(rule.logic, {"campaign_name": "US_DV360_Brand_Q1", "dsp_type": "DV360"}) is False
    assert evaluate_row(rule.logic, {"campaign_name": "US_TTD_Brand_Q1", "dsp_type": "DV360"}) is True


def _problems(conditions, conventions) -> list[ValidationProblem]:
    with pytest.raises(RuleValidationError) as raised:
        parse_rule(conditions, {}, conventions=conventions)
    return raised.value.problems


def test_a_rule_naming_a_convention_the_organization_lacks_is_invalid():
    logic = {"and": [{">": [{"var": "spend"}, 1]}, {"naming": [{"var": "campaign_name"}, "campain"]}]}
    assert _problems({"logic": logic}, {"campaign": CAMPAIGN}) == [ValidationProblem(
        "conditions.logic.and[1]", 'the organization has no naming convention "campain" (did you mean "campaign"?)')]
    assert _problems(logic, {}) == [ValidationProblem(
        "conditions.and[1]", 'the organization has no naming convention "campain"')]


def test_naming_takes_a_literal_convention_name_outside_iterations():
    computed = {"naming": [{"var": "campaign_name"}, {"var": "campaign_id"}]}
    inside_map = {"some": [["a"], {"naming": [{"var": ""}, "campaign"]}]}
    assert _problems({"logic": computed}, {"campaign": CAMPAIGN}) == [ValidationProblem(
        "conditions.logic", 'naming takes two arguments: [text, "<convention name>"], the name literal')]
    assert _problems({"logic": inside_map}, {"campaign": CAMPAIGN}) == [ValidationProblem(
        "conditions.logic.some[1]", "naming reads the campaign itself, so it cannot be used inside map, filter, "
                                    "reduce, all, none or some")]


def test_without_the_organization_only_the_shape_is_checked():
    assert validate_document({"conditions": RULE}) == []
    assert conventions_in_settings({"naming_conventions": {"campaign": CAMPAIGN}}) == {"campaign": CAMPAIGN}
    assert conventions_in_settings({"naming_conventions": []}) == {} and conventions_in_settings(None) == {}


def test_the_document_holds_the_diagnosis_before_the_conditions():
    diagnosis = Diagnosis("dsp", 2, "DV36O", "not an allowed value", "DV360")
    text = document_json({"campaign_name": "US_DV36O"}, [True], None, True, diagnosis)
    assert text == ('{"campaign_name":"US_DV36O","naming":{"token":"dsp","position":2,"value":"DV36O",'
                    '"reason":"not an allowed value","suggest":"DV360"},"conditions":[true]}')
    assert document_json({}, [False], None, True, None) == '{"naming":null,"conditions":[false]}'
    assert parse_document(text).naming == json.loads(diagnosis_json(diagnosis))
    assert parse_document(text).values == {"campaign_name": "US_DV36O"}


def test_every_channel_shows_the_diagnosis():
    diagnosis = Diagnosis("dsp", 2, "DV36O", "not an allowed value", "DV360")
    details = document_json({"campaign_name": "US_DV36O_Brand_Q1"}, [True], None, True, diagnosis)
    entity = Entity("campaign", "c-9", "US_DV36O_Brand_Q1", details)
    notice = RunNotice("alert", "run-1", 1, "rule-1", "Taxonomy", "warning", datetime(2026, 11, 25, 9, tzinfo=UTC))
    words = 'naming: token "dsp" (position 2) is "DV36O": not an allowed value; did you mean "DV360"?'

    assert words in email_message(notice, [entity])["text"]
    assert words in slack_body(notice, [entity])["text"]
    assert webhook_body(notice, [entity], "d-1")["entities"][0]["naming"] == json.loads(diagnosis_json(diagnosis))
    assert in_app_entities([entity])[0]["naming"]["suggest"] == "DV360"


def test_the_demo_campaigns_break_the_demo_convention_in_every_way():
    from demo.data import NAMING_CONVENTION, demo_campaigns

    convention = parse_convention("campaign", NAMING_CONVENTION)
    reasons = {}
    for campaign in demo_campaigns():
        diagnosis = diagnose(convention, campaign["name"], {"dsp_type": campaign["dsp_type"]})
        if diagnosis is not None:
            reasons[campaign["campaign_id"]] = (diagnosis.reason, diagnosis.suggest)
    assert reasons == {
        "dv360-1002": ("too few tokens: 1, at least 5", None),
        "dv360-1005": ("not an allowed value", "Retargeting"),
        "dv360-1009": ("too few tokens: 1, at least 5", None),
        "ttd-1102": ("wrong case", "NWM"),
        "ttd-1106": ("does not equal the campaign's dsp_type", "TTD"),
        "ttd-1110": ("does not match ^Q[1-4]$", None),
        "meta-1202": ("not a date in the form YYYYMM", None),
        "meta-1207": ("not an allowed value", None),
        "meta-1210": ("too many tokens: 7, at most 6", None),
    }
