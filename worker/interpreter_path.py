"""The interpreter path of a run: each entity row evaluated in Python by engine.interpreter, block by block,
giving what the SQL path's evaluation gives for the same row (`matched` and the `condition_results` document)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from engine.compiler import logic_variables, top_level_conditions
from engine.evaluation_document import document_json, holds_entity_type
from engine.interpreter import evaluate_row, truthy
from engine.model import Rule
from engine.query import ENTITY_ID, ENTITY_TYPE
from storage.results import Evaluation


def evaluate_batches(rule: Rule, batches: Iterable[Iterable[Mapping[str, Any]]]) -> Iterator[list[Evaluation]]:
    """Evaluates the entity rows of engine.query.entity_rows (every field of the rule's source) batch by batch."""
    logic = rule.conditions.logic
    conditions = top_level_conditions(logic)
    variables = logic_variables(logic, rule.fields)
    with_type = holds_entity_type(rule.conditions.source)
    for rows in batches:
        batch = []
        for row in rows:
            data = {name: row[name] for name in rule.fields}
            document = document_json({name: data[name] for name in variables},
                                     [truthy(evaluate_row(condition, data)) for condition in conditions],
                                     row[ENTITY_TYPE] if with_type else None)
            batch.append(Evaluation(row[ENTITY_ID], truthy(evaluate_row(logic, data)), document))
        yield batch
