"""Arbitrary and hostile documents: validation and compilation never crash, they answer with a clear problem or a
valid compile (the limits and bad input the README describes)."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.compiler import compile_logic
from engine.errors import NotCompilable, RuleError
from engine.fields import field_types
from engine.interpreter import evaluate_row, truthy
from engine.model import MAX_DOCUMENT_BYTES, ValidationProblem, parse_rule, validate_document

OPERATORS = ["==", "===", "!=", "!==", ">", ">=", "<", "<=", "!", "!!", "and", "or", "if", "?:", "+", "-", "*", "/",
             "%", "min", "max", "cat", "substr", "in", "var", "missing", "missing_some", "matches", "merge", "map",
             "filter", "reduce", "all", "none", "some", "log", "method", "unknown_op"]
FIELDS = ["spend", "ctr", "impressions", "campaign_name", "dsp_type", "prev.spend", "days", "nope", "", "a.b.c"]
HOSTILE_TEXT = st.sampled_from(["x' OR 1=1 --", "{p0:String}", "\\", "\x00", "/* */", "'; DROP TABLE rules; --",
                                "é", "0", "", "1e309", "\n", "(a+)+$", "{", "}"])

json_scalars = (st.none() | st.booleans() | st.integers(min_value=-(10 ** 30), max_value=10 ** 30)
                | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12) | HOSTILE_TEXT)
arbitrary_json = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8) | HOSTILE_TEXT, children,
                                                                      max_size=4),
    max_leaves=30)


def logic_like(depth: int = 4):
    """JSON Logic-shaped values: operators (known and not) over vars, literals and sub-expressions."""
    leaf = json_scalars | st.builds(lambda name: {"var": name}, st.sampled_from(FIELDS))
    if depth == 0:
        return leaf
    inner = logic_like(depth - 1)
    operation = st.builds(lambda op, args: {op: args}, st.sampled_from(OPERATORS),
                          st.lists(inner, max_size=4) | inner)
    return leaf | operation


def single_line(problem: ValidationProblem) -> bool:
    text = str(problem)
    return bool(problem.reason) and "\n" not in text and "Traceback" not in text


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arbitrary_json)
def test_any_json_document_gets_problems_or_passes(document):
    problems = validate_document(document)
    assert isinstance(problems, list)
    assert all(isinstance(p, ValidationProblem) and single_line(p) for p in problems)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arbitrary_json, arbitrary_json)
def test_any_conditions_and_actions_get_problems_or_pass(conditions, actions):
    problems = validate_document({"conditions": conditions, "actions": actions})
    assert all(single_line(p) for p in problems)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(logic_like(), st.sampled_from(["campaign_metrics_daily", "pacing_snapshots"]), st.booleans())
def test_any_logic_is_refused_clearly_or_compiles_and_evaluates(logic, source, compare):
    conditions = {"source": source, "logic": logic, **({"compare_to": "previous_period"} if compare else {})}
    problems = validate_document({"conditions": conditions})
    assert all(single_line(p) for p in problems)
    try:
        rule = parse_rule(conditions, {})
    except RuleError as error:
        assert problems and str(error)
        return
    assert problems == []
    try:
        compiled = compile_logic(rule.conditions.logic, rule.fields)
        assert compiled.matched and set(compiled.variables) <= set(rule.fields)
    except NotCompilable as refusal:
        assert str(refusal)
    row = {name: (0.0 if kind.name != "STRING" else "") for name, kind in field_types(source, compare).items()}
    try:
        truthy(evaluate_row(rule.conditions.logic, row))
    except RuleError as error:
        assert str(error)


def nested(levels: int) -> object:
    value: object = {"var": "spend"}
    for _ in range(levels):
        value = {"!": [value]}
    return value


def test_deeply_nested_logic_is_refused_by_the_depth_limit():
    problems = validate_document({"conditions": {"logic": nested(400)}})
    assert len(problems) == 1 and "deeper than" in problems[0].reason


def test_a_deeply_nested_document_is_refused_whole():
    document: object = []
    for _ in range(100_000):
        document = [document]
    problems = validate_document({"conditions": document})
    assert len(problems) == 1 and single_line(problems[0])


def test_an_oversized_document_is_refused_by_the_size_limit():
    huge = {"conditions": {"logic": {"in": [{"var": "campaign_name"}, ["x" * 100] * (MAX_DOCUMENT_BYTES // 50)]}}}
    assert len(json.dumps(huge)) > MAX_DOCUMENT_BYTES
    problems = validate_document(huge)
    assert len(problems) == 1 and "64 KiB" in problems[0].reason
