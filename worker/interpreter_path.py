"""The interpreter path of a run: each entity row evaluated in Python by engine.interpreter, block by block,
giving what the SQL path's evaluation gives for the same row (`matched` and the `condition_results` document)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from engine.compiler import logic_variables, top_level_conditions
from engine.fields import CAMPAIGN_METRICS
from engine.interpreter import evaluate_row, truthy
from engine.model import Rule
from engine.query import CONDITIONS_KEY, ENTITY_ID, ENTITY_TYPE
from storage.results import Evaluation


def condition_results(values: Mapping[str, Any], entity_type: str | None, outcomes: list[bool]) -> str:
    """The `condition_results` document: every variable the logic reads, the entity's type (pacing snapshots
    only; None leaves it out) and the outcome of each top-level condition, as compact JSON."""
    document = dict(values)
    if entity_type is not None:
        document["entity_type"] = entity_type
    document[CONDITIONS_KEY] = outcomes
    return json.dumps(document, separators=(",", ":"))


def evaluate_batches(rule: Rule, batches: Iterable[Iterable[Mapping[str, Any]]]) -> Iterator[list[Evaluation]]:
    """Evaluates the entity rows of engine.query.entity_rows (every field of the rule's source) batch by batch."""
    logic = rule.conditions.logic
    conditions = top_level_conditions(logic)
    variables = logic_variables(logic, rule.fields)
    with_type = rule.conditions.source != CAMPAIGN_METRICS
    for rows in batches:
        batch = []
        for row in rows:
            data = {name: row[name] for name in rule.fields}
            document = condition_results({name: data[name] for name in variables},
                                         row[ENTITY_TYPE] if with_type else None,
                                         [truthy(evaluate_row(condition, data)) for condition in conditions])
            batch.append(Evaluation(row[ENTITY_ID], truthy(evaluate_row(logic, data)), document))
        yield batch
