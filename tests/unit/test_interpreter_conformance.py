"""The interpreter against the classic JSON Logic suite and against json-logic-js where qubit differs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import json_logic
import pytest

from engine.errors import LogicEvaluationError
from engine.interpreter import evaluate, evaluate_row, is_number, number_to_string, truthy

SUITE = Path(__file__).resolve().parent.parent / "data" / "compatible.json"


def same_js_value(actual: Any, expected: Any) -> bool:
    """Equality as JavaScript values: booleans are not numbers, floats exact, NaN equals NaN."""
    if isinstance(expected, bool) or isinstance(actual, bool):
        return isinstance(expected, bool) and isinstance(actual, bool) and actual == expected
    if is_number(expected) and is_number(actual):
        return actual == expected or (math.isnan(actual) and math.isnan(expected))
    if isinstance(expected, list) and isinstance(actual, list):
        return len(actual) == len(expected) and all(map(same_js_value, actual, expected))
    if isinstance(expected, dict) and isinstance(actual, dict):
        return actual.keys() == expected.keys() and all(same_js_value(actual[k], expected[k]) for k in expected)
    return type(actual) is type(expected) and actual == expected


CLASSIC_CASES = [
    pytest.param(case["rule"], case.get("data"), case["result"], id=case["description"])
    for case in json.loads(SUITE.read_text())
    if isinstance(case, dict)
]


@pytest.mark.parametrize("rule, data, expected", CLASSIC_CASES)
def test_classic_suite(rule, data, expected):
    assert same_js_value(evaluate(rule, data), expected)


# Cases where json-logic-qubit 0.9.1 answers differently from json-logic-js (the expected values are JavaScript's).
JS_CASES = [
    ({"==": [1.0, "1"]}, None, True),
    ({"==": ["", 0]}, None, True),
    ({"==": [None, False]}, None, False),
    ({"==": [None, 0]}, None, False),
    ({"==": [" 12 ", 12]}, None, True),
    ({"==": ["1e3", 1000]}, None, True),
    ({"==": ["0x10", 16]}, None, True),
    ({"==": ["0b101", 5]}, None, True),
    ({"==": ["abc", {"+": ["abc"]}]}, None, False),
    ({"==": [True, "1"]}, None, True),
    ({"==": [[1], 1]}, None, True),
    ({"==": [[], False]}, None, True),
    ({"===": [[1], [1]]}, None, False),
    ({"==": [{"var": "a"}, {"var": "a"}]}, {"a": [1]}, True),
    ({"<": [None, 1]}, None, True),
    ({"<=": [None, 0]}, None, True),
    ({">=": ["abc", 1]}, None, False),
    ({"<": ["abc", 1]}, None, False),
    ({"<": ["10", "9"]}, None, True),
    ({"<": ["10", 9]}, None, False),
    ({"<": ["\uff5e", "😀"]}, None, False),
    ({"<": [1, 2, None]}, None, False),
    ({">": [3, 2, 10]}, None, True),
    ({"+": ["1", "2"]}, None, 3),
    ({"+": [" 12abc"]}, None, 12),
    ({"+": ["abc"]}, None, math.nan),
    ({"+": []}, None, 0),
    ({"+": [None]}, None, math.nan),
    ({"*": ["2"]}, None, "2"),
    ({"*": ["3", "4x"]}, None, 12),
    ({"-": ["5"]}, None, -5),
    ({"-": [None, 1]}, None, -1),
    ({"-": ["", 1]}, None, -1),
    ({"-": ["0x10", 1]}, None, 15),
    ({"%": [-7, 2]}, None, -1),
    ({"%": [5.5, 2]}, None, 1.5),
    ({"%": [5, {"+": ["Infinity"]}]}, None, 5),
    ({"%": [1e17, 3]}, None, 1),
    ({"min": []}, None, math.inf),
    ({"max": []}, None, -math.inf),
    ({"min": [1, "abc"]}, None, math.nan),
    ({"max": ["3", 2]}, None, 3),
    ({"cat": [1.0, True, None, 0.1, 1e21, [1, [2, 3]], 1e-7]}, None, "1true0.11e+211,2,31e-7"),
    ({"substr": ["😀abc", 1]}, None, "\ude00abc"),
    ({"substr": [12345, 1, 2]}, None, "23"),
    ({"substr": ["abc", 1, "-1"]}, None, ""),
    ({"substr": ["abc", None]}, None, "abc"),
    ({"substr": ["abc", 1, None]}, None, ""),
    ({"substr": ["abcdef", -100, 2]}, None, "ab"),
    ({"substr": ["abcdef", 1, [-1]]}, None, ""),
    ({"in": ["b", "abc"]}, None, True),
    ({"in": [1, "a1"]}, None, True),
    ({"in": [None, "xnullx"]}, None, True),
    ({"in": ["", ""]}, None, False),
    ({"in": ["a", None]}, None, False),
    ({"in": [True, [1]]}, None, False),
    ({"in": [1, [1.0]]}, None, True),
    ({"in": [{"+": ["x"]}, [{"+": ["x"]}]]}, None, False),
    ({"var": "a.0"}, {"a": ["x"]}, "x"),
    ({"var": "a.01"}, {"a": ["x", "y"]}, None),
    ({"var": "a.-1"}, {"a": ["x"]}, None),
    ({"var": "a.length"}, {"a": "hello"}, 5),
    ({"var": ["x", 7]}, {"x": None}, None),
    ({"var": ""}, 0, 0),
    ({"!!": [{"+": ["abc"]}]}, None, False),
    ({"!!": [{}]}, None, True),
    ({"and": []}, None, None),
    ({"==": [{"and": []}, None]}, None, True),
    ({"===": [{"and": []}, None]}, None, False),
    ({"?:": [True, 1]}, None, 1),
    ({"reduce": [[1, 2], {"+": [{"var": "current"}, {"var": "accumulator"}]}, {"var": "start"}]}, {"start": 10}, 13),
    ({"missing_some": [1, ["a", "b"]]}, {"a": ""}, ["a", "b"]),
]


@pytest.mark.parametrize("rule, data, expected", JS_CASES, ids=[json.dumps(case[0]) for case in JS_CASES])
def test_javascript_semantics(rule, data, expected):
    assert same_js_value(evaluate(rule, data), expected)


DIVISION_BY_ZERO = [{"/": [1, 0]}, {"/": [0, 0]}, {"/": [-1, "0"]}, {"/": [1, None]}, {"%": [5, 0]}, {"%": [5, ""]}]


@pytest.mark.parametrize("rule", DIVISION_BY_ZERO, ids=json.dumps)
def test_division_and_remainder_by_zero_give_null(rule):
    assert evaluate(rule, None) is None
    assert not truthy(evaluate(rule, None))


NUMBER_TEXTS = [
    (1.0, "1"), (-1.5e-7, "-1.5e-7"), (1e21, "1e+21"), (1e20, "100000000000000000000"), (0.000001, "0.000001"),
    (1e-7, "1e-7"), (123456789012345680000, "123456789012345680000"), (2.0**60, "1152921504606847000"),
    (1.7976931348623157e308, "1.7976931348623157e+308"), (5e-324, "5e-324"), (-0.0, "0"), (math.nan, "NaN"),
    (-math.inf, "-Infinity"), (0.1 + 0.2, "0.30000000000000004"), (10**400, "Infinity"), (123.456, "123.456"),
]


@pytest.mark.parametrize("number, text", NUMBER_TEXTS, ids=[text for _, text in NUMBER_TEXTS])
def test_numbers_are_written_as_javascript_writes_them(number, text):
    assert number_to_string(number) == text


MATCHES = [
    (["abc", "b"], True),
    (["abc", "^b"], False),
    (["a\nb", "a.b"], False),
    (["ab\n", "ab$"], False),
    ([1.5, "^1\\.5$"], True),
    ([None, "^null$"], True),
    ([True, "^true$"], True),
    (["x", None], False),
    (["US_spring", "(?i)SPRING"], True),
    (["é", "^.$"], True),
]


@pytest.mark.parametrize("arguments, expected", MATCHES, ids=json.dumps)
def test_matches_searches_with_re2(arguments, expected):
    assert evaluate({"matches": arguments}, None) is expected


BAD_LOGIC = [
    ({"no_such_operator": [1]}, "unknown operator"),
    ({"method": ["abc", "upper"]}, "unknown operator"),
    ({"count": [1, 2]}, "unknown operator"),
    ({"*": []}, "at least one argument"),
    ({"matches": ["x", "("]}, "invalid regular expression"),
    ({"and": [True, {"log": 1}, {"x.y": []}]}, "unknown operator"),
]


@pytest.mark.parametrize("logic, message", BAD_LOGIC, ids=json.dumps)
def test_bad_logic_raises_logic_evaluation_error(logic, message):
    with pytest.raises(LogicEvaluationError, match=message):
        evaluate(logic, {})


def test_deep_logic_raises_logic_evaluation_error():
    logic: Any = True
    for _ in range(5000):
        logic = {"!": [logic]}
    with pytest.raises(LogicEvaluationError):
        evaluate(logic, {})


def test_our_operations_do_not_leak_into_the_library():
    evaluate({"matches": ["a", "a"]}, None)
    assert "matches" not in json_logic.operations
    with pytest.raises(ValueError):
        json_logic.jsonLogic({"matches": ["a", "a"]})


@pytest.mark.parametrize(
    "value, expected",
    [(0, False), (-0.0, False), (math.nan, False), ("", False), (None, False), ([], False), (False, False),
     ("0", True), ([0], True), ({}, True), (-1, True), ("false", True), (math.inf, True)],
    ids=repr,
)
def test_truthy(value, expected):
    assert truthy(value) is expected


ROW = {"spend": 1500.0, "prev.spend": 1000.0, "campaign_name": "US_spring", "prev.campaign_name": ""}


def test_evaluate_row_reads_dotted_names():
    assert evaluate_row({"-": [{"var": "spend"}, {"var": "prev.spend"}]}, ROW) == 500.0
    assert evaluate_row({"var": "prev"}, ROW) == {"spend": 1000.0, "campaign_name": ""}
    assert evaluate_row({"missing": ["prev.campaign_name", "spend", "nope"]}, ROW) == ["prev.campaign_name", "nope"]
    assert evaluate_row({"var": ["prev.nope", 3]}, ROW) == 3


def test_evaluate_row_leaves_the_row_alone():
    row = dict(ROW)
    evaluate_row({"var": "prev.spend"}, row)
    assert row == ROW
