"""The interpreter path's evaluation of entity rows, and the condition_results document, without servers."""

from __future__ import annotations

import json

from engine.evaluation_document import parse_document
from engine.fields import FieldType
from engine.model import parse_rule
from engine.query import ENTITY_ID, ENTITY_TYPE
from storage.results import Evaluation
from worker.interpreter_path import evaluate_batches


def entity_row(rule, entity_id: str, entity_type: str = "", **values) -> dict:
    """A row as engine.query.entity_rows gives it: every field of the rule's source, these values set."""
    row = {name: "" if kind is FieldType.STRING else 0.0 for name, kind in rule.fields.items()}
    return {**row, **values, ENTITY_ID: entity_id, ENTITY_TYPE: entity_type}


def test_campaign_rows_are_evaluated_per_batch_with_each_top_level_condition():
    rule = parse_rule({"logic": {"and": [{">": [{"var": "spend"}, 100]}, {"<": [{"var": "ctr"}, 0.01]}]}}, {})
    batches = [[entity_row(rule, "c-1", spend=150.0, ctr=0.005), entity_row(rule, "c-2", spend=50.0, ctr=0.005)],
               [entity_row(rule, "c-3", spend=500.0, ctr=0.2)]]
    assert list(evaluate_batches(rule, batches)) == [
        [Evaluation("c-1", True, '{"ctr":0.005,"spend":150,"conditions":[true,true]}'),
         Evaluation("c-2", False, '{"ctr":0.005,"spend":50,"conditions":[false,true]}')],
        [Evaluation("c-3", False, '{"ctr":0.2,"spend":500,"conditions":[true,false]}')],
    ]


def test_pacing_rows_carry_their_entity_type_which_the_document_gives_back():
    rule = parse_rule({"source": "pacing_snapshots", "logic": {"==": [{"var": "delivered_amount"}, 0]}}, {})
    rows = [entity_row(rule, "li-1", "line_item", delivered_amount=0.0),
            entity_row(rule, "li-1", "insertion_order", delivered_amount=3.0)]
    [evaluated] = list(evaluate_batches(rule, [rows]))
    assert [(e.entity_id, e.matched, json.loads(e.condition_results)) for e in evaluated] == [
        ("li-1", True, {"delivered_amount": 0.0, "entity_type": "line_item", "conditions": [True]}),
        ("li-1", False, {"delivered_amount": 3.0, "entity_type": "insertion_order", "conditions": [False]}),
    ]
    assert [parse_document(e.condition_results).entity_type for e in evaluated] == ["line_item", "insertion_order"]


def test_a_campaign_document_has_no_entity_type():
    rule = parse_rule({"logic": {">": [{"var": "spend"}, 0]}}, {})
    [[evaluated]] = list(evaluate_batches(rule, [[entity_row(rule, "c-1", spend=1.0)]]))
    assert parse_document(evaluated.condition_results).entity_type is None


def test_a_recheck_marks_restated_the_evaluations_whose_verdict_differs_from_the_first_runs():
    from worker.interpreter_path import restate

    evaluations = [Evaluation("c-1", False, '{"spend":40,"conditions":[false]}'),
                   Evaluation("c-2", True, '{"spend":130,"conditions":[true]}'),
                   Evaluation("c-3", True, '{"spend":200,"conditions":[true]}'),
                   Evaluation("x-1", True, '{"entity_type":"line_item","conditions":[true]}')]
    # The first run matched c-1, c-3 and the campaign x-1 (not the line item of that id).
    restated = restate(evaluations, {("", "c-1"), ("", "c-3"), ("campaign", "x-1")})
    assert [(e.entity_id, parse_document(e.condition_results).restated) for e in restated] == [
        ("c-1", True), ("c-2", True), ("c-3", False), ("x-1", True)]
    assert restated[0].condition_results == '{"spend":40,"conditions":[false],"restated":true}'
    assert parse_document(restated[1].condition_results).values == {"spend": 130}
