"""Parsing an evaluation document, and what the Python builder writes (no server: see the integration test for the
byte-for-byte comparison with ClickHouse)."""

from __future__ import annotations

from engine.evaluation_document import EvaluationDocument, document_json, holds_entity_type, parse_document
from engine.fields import CAMPAIGN_METRICS, PACING_SNAPSHOTS


def test_a_document_parses_into_values_conditions_and_entity_type():
    text = '{"delivered_amount":0,"entity_type":"line_item","prev.delivered_amount":500.5,"conditions":[true,false]}'
    assert parse_document(text) == EvaluationDocument(
        {"delivered_amount": 0, "prev.delivered_amount": 500.5}, [True, False], "line_item")


def test_a_campaign_document_has_no_entity_type_and_empty_text_is_an_empty_document():
    assert parse_document('{"spend":12.5,"conditions":[]}') == EvaluationDocument({"spend": 12.5}, [], None)
    assert parse_document("") == EvaluationDocument({}, [], None)


def test_only_pacing_documents_hold_the_entity_type():
    assert holds_entity_type(PACING_SNAPSHOTS) and not holds_entity_type(CAMPAIGN_METRICS)


def test_what_the_python_builder_writes_parses_back():
    values = {"campaign_name": 'a "b"/c\n', "spend": 1e21, "ctr": 0.25}
    document = parse_document(document_json(values, [True], None))
    assert document == EvaluationDocument({"campaign_name": 'a "b"/c\n', "spend": 1e21, "ctr": 0.25}, [True], None)
