"""The interpreter path of a run: each entity row evaluated in Python by engine.interpreter, block by block,
giving what the SQL path's evaluation gives for the same row (`matched` and the `condition_results` document)."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping
from typing import Any

from engine.compiler import logic_variables, top_level_conditions
from engine.evaluation_document import document_json, holds_entity_type, parse_document, restated_document
from engine.interpreter import evaluate_javascript, evaluate_row, nest_row, to_string, truthy
from engine.model import Rule
from engine.naming import Diagnosis, NamingCheck, diagnose, naming_checks
from engine.query import ENTITY_ID, ENTITY_TYPE
from storage.results import Evaluation


def evaluate_batches(rule: Rule, batches: Iterable[Iterable[Mapping[str, Any]]]) -> Iterator[list[Evaluation]]:
    """Evaluates the entity rows of engine.query.entity_rows (every field of the rule's source) batch by batch, the
    rule's recover_when too when it has one."""
    logic = rule.logic
    conditions = top_level_conditions(logic)
    variables = logic_variables(logic, rule.fields)
    with_type = holds_entity_type(rule.conditions.source)
    checks = naming_checks(logic)
    for rows in batches:
        batch = []
        for row in rows:
            data = {name: row[name] for name in rule.fields}
            recovered = None if rule.recover_when is None else truthy(evaluate_row(rule.recover_when, data))
            document = document_json({name: data[name] for name in variables},
                                     [truthy(evaluate_row(condition, data)) for condition in conditions],
                                     row[ENTITY_TYPE] if with_type else None,
                                     bool(checks), first_naming_diagnosis(checks, data), recovered)
            batch.append(Evaluation(row[ENTITY_ID], truthy(evaluate_row(logic, data)), document))
        yield batch


def first_naming_diagnosis(checks: list[NamingCheck], row: Mapping[str, Any]) -> Diagnosis | None:
    """The diagnosis of the first of `checks` whose name, in `row`, breaks its convention (the document's
    `naming`), or None."""
    data = nest_row(dict(row))
    for check in checks:
        cross_values = {field: to_string(evaluate_javascript(node, data))
                        for field, node in zip(check.convention.cross_fields, check.cross)}
        diagnosis = diagnose(check.convention, to_string(evaluate_javascript(check.text, data)), cross_values)
        if diagnosis is not None:
            return diagnosis
    return None


def evaluation_key(evaluation: Evaluation) -> tuple[str, str]:
    """The entity of an evaluation as a recheck compares it: (its type in the document, or "", its id)."""
    return parse_document(evaluation.condition_results).entity_type or "", evaluation.entity_id


def restate(evaluations: Iterable[Evaluation], matched_before: Collection[tuple[str, str]]) -> list[Evaluation]:
    """A recheck's evaluations, each document marked restated whose verdict differs from the first run's:
    `matched_before` holds the evaluation_key of each entity the first run matched (the SQL path's
    engine.query.evaluation_insert with `restating` does the same in ClickHouse)."""
    return [Evaluation(evaluation.entity_id, evaluation.matched, restated_document(evaluation.condition_results))
            if evaluation.matched != (evaluation_key(evaluation) in matched_before) else evaluation
            for evaluation in evaluations]
