"""The compiler without ClickHouse: what it refuses and why, parameters, variables and conditions."""

from __future__ import annotations

import re

import pytest

from engine.compiler import Kind, compile_logic
from engine.compiler.compilation import Compilation
from engine.errors import NotCompilable, RuleError
from engine.fields import CAMPAIGN_METRICS, field_types

FIELDS = field_types(CAMPAIGN_METRICS, with_previous=True)
PLACEHOLDER = re.compile(r"\{(\w+):[^{}]+\}")

REFUSED = [
    ({"cat": [{"substr": [{"var": "campaign_name"}, 0, 1]}, "x"]}, "surrogate pair"),
    ({"<": [{"substr": [{"var": "campaign_name"}, 1]}, {"var": "campaign_id"}]}, "surrogate pair"),
    ({"==": [{"substr": [{"var": "campaign_id"}, 1]}, 5]}, "surrogate pair"),
    ({"matches": [{"substr": [{"var": "campaign_id"}, 1]}, "x"]}, "surrogate pair"),
    ({"==": [{"if": [{"var": "spend"}, 1, "one"]}, 1]}, "mixes number and string"),
    ({"===": [{"or": [{"var": "spend"}, {">": [{"var": "clicks"}, 1]}]}, True]}, "mixes bool and number"),
    ({"matches": [{"var": "campaign_name"}, {"var": "advertiser_id"}]}, "literal pattern"),
    ({"matches": [{"var": "campaign_name"}, "("]}, "invalid regular expression"),
    ({"matches": [{"var": "campaign_name"}, "a\x00"]}, "NUL"),
    ({"no_such_operator": [{"var": "spend"}]}, "not compiled"),
    ({"log": [{"var": "spend"}]}, "not compiled"),
    ({"var": [{"cat": [{"var": "dsp_type"}, "_spend"]}]}, "computed name"),
    ({"var": {"if": [{"var": "spend"}, "spend"]}}, "whole data object"),
    ({"var": "prev"}, "object"),
    ({"var": ""}, "whole data object"),
    ({"var": "campaign_name.length"}, "length or a character"),
    ({"map": [[{"var": "spend"}], {"var": ""}]}, "arrays built from the row"),
    ({"some": [{"merge": [{"var": "spend"}]}, {"var": ""}]}, "not compiled"),
    ({"==": [{"missing": ["campaign_name"]}, []]}, "depends on the row"),
    ({"==": [{"var": "campaign_name"}, "\ud800"]}, "surrogates"),
    ({"*": []}, "at least one argument"),
]


@pytest.mark.parametrize("logic, reason", REFUSED, ids=[repr(case[0]) for case in REFUSED])
def test_refusals_name_their_reason(logic, reason):
    with pytest.raises(NotCompilable, match=re.escape(reason)) as refusal:
        compile_logic(logic, FIELDS)
    assert isinstance(refusal.value, RuleError)


COMPILED = [
    {"and": [{">": [{"var": "spend"}, 1000]}, {"<": [{"var": "ctr"}, 0.001]}]},
    {">": [{"var": "spend"}, {"*": [{"var": "prev.spend"}, 1.5]}]},
    {"==": [{"var": "campaign_id"}, 123]},
    {"<": [100, {"var": "spend"}, 1000]},
    {"in": [{"var": "dsp_type"}, ["DV360", "TTD"]]},
    {"in": ["US_", {"var": "campaign_name"}]},
    {"matches": [{"var": "campaign_name"}, "^(?i)us_"]},
    {"if": [{"var": "spend"}, {"/": [{"var": "clicks"}, {"var": "spend"}]}, 0]},
    {"or": [{"var": "campaign_name"}, "unnamed"]},
    {"!": {"missing": ["campaign_name", "spend"]}},
    {"missing_some": [1, ["campaign_name", "advertiser_id"]]},
    {"%": [{"var": "days"}, 7]},
    {"cat": [{"var": "dsp_type"}, "-", {"var": "advertiser_id"}]},
    {"max": [{"var": "spend"}, {"var": "prev.spend"}]},
    {"var": ["nope", 5]},
    {"var": [{"if": [{"var": "spend"}, "spend", "prev.spend"]}, 0]},
    {"==": [{"substr": [{"var": "campaign_name"}, 0, 3]}, "US_"]},
    {"<": [{"substr": [{"var": "campaign_name"}, -2]}, "m"]},
    {"==": [{"cat": ["n=", {"var": "clicks"}]}, "n=3"]},
    {"in": [{"var": "clicks"}, {"var": "campaign_name"}]},
    {"matches": [{"var": "spend"}, "^1"]},
    {"%": [{"var": "spend"}, {"var": "days"}]},
    {"%": [{"var": "spend"}, 2.5]},
]


@pytest.mark.parametrize("logic", COMPILED, ids=repr)
def test_common_rules_compile(logic):
    compiled = compile_logic(logic, FIELDS)
    assert compiled.matched
    used = set(PLACEHOLDER.findall(" ".join((compiled.matched, *compiled.conditions))))
    assert used == set(compiled.parameters)


HOSTILE = [
    "x' OR 1=1 --",
    'quote " and \\ backslash',
    "{evil:String}",
    "} {",
    "/* comment */",
    "NUL \x00 byte",
    "`spend`",
    "new\nline\ttab",
    "\\N",
    "é 😀",
]


@pytest.mark.parametrize("text", HOSTILE, ids=repr)
def test_literal_text_travels_only_as_a_parameter(text):
    logic = {
        "or": [
            {"==": [{"var": "campaign_name"}, text]},
            {"in": [{"var": "campaign_id"}, [text, "other"]]},
            {"in": [text, {"var": "advertiser_id"}]},
            {"<": [{"var": "dsp_type"}, text]},
            {"==": [{"cat": [{"var": "dsp_type"}, text]}, "x"]},
        ]
    }
    compiled = compile_logic(logic, FIELDS)
    for sql in (compiled.matched, *compiled.conditions):
        assert text not in sql
        assert "--" not in sql and "/*" not in sql
    values = [value for value in compiled.parameters.values()]
    assert text in values
    assert [text, "other"] in values or ["other", text] in values


def test_literal_pattern_travels_only_as_a_parameter():
    pattern = "it's (a|b)\\d{2}"
    compiled = compile_logic({"matches": [{"var": "campaign_name"}, pattern]}, FIELDS)
    assert pattern not in compiled.matched
    assert "(?-s)" + pattern in compiled.parameters.values()


def test_literal_numbers_travel_as_float_parameters():
    compiled = compile_logic({">": [{"var": "spend"}, 1e308]}, FIELDS)
    assert "1e308" not in compiled.matched and "1e+308" not in compiled.matched
    assert list(compiled.parameters.values()) == [1e308]
    assert ":Float64}" in compiled.matched


def test_equal_literals_share_one_parameter():
    compiled = compile_logic({"and": [{">": [{"var": "spend"}, 10]}, {">": [{"var": "clicks"}, 10.0]}]}, FIELDS)
    assert compiled.parameters == {"p0": 10.0}


def test_variables_are_the_sorted_unique_fields_read():
    logic = {
        "and": [
            {">": [{"var": "spend"}, {"var": "prev.spend"}]},
            {"<": [{"var": ["spend"]}, 10]},
            {"!": {"missing": ["campaign_name", "nope"]}},
            {"var": ["nope", 1]},
            {"missing_some": [1, ["advertiser_id"]]},
        ]
    }
    assert compile_logic(logic, FIELDS).variables == (
        "advertiser_id",
        "campaign_name",
        "prev.spend",
        "spend",
    )


def test_columns_are_backquoted_field_names():
    compiled = compile_logic({">": [{"var": "prev.spend"}, {"var": "spend"}]}, FIELDS)
    assert "`prev.spend`" in compiled.matched and "`spend`" in compiled.matched


def test_conditions_are_the_elements_of_a_top_level_and():
    logic = {"and": [{">": [{"var": "spend"}, 1]}, {"or": [{"var": "clicks"}, {"var": "days"}]}, True]}
    compiled = compile_logic(logic, FIELDS)
    assert len(compiled.conditions) == 3
    assert compiled.conditions[2] == "1"


def test_conditions_are_the_elements_of_a_top_level_or():
    compiled = compile_logic({"or": [{"var": "spend"}, {"var": "clicks"}]}, FIELDS)
    assert len(compiled.conditions) == 2


def test_any_other_logic_is_one_condition():
    logic = {"!": {"and": [{"var": "spend"}, {"var": "clicks"}]}}
    compiled = compile_logic(logic, FIELDS)
    assert compiled.conditions == (compiled.matched,)


def test_literal_subtrees_are_folded():
    compiled = compile_logic({"and": [{">": [2, 1]}, {"var": "spend"}]}, FIELDS)
    assert compiled.conditions[0] == "1"


def test_values_keep_their_static_kind():
    def compiled_value(logic):
        return Compilation(FIELDS).value(logic)

    assert compiled_value({"var": "spend"}).kind is Kind.NUMBER
    assert compiled_value({"cat": [{"var": "dsp_type"}, "x"]}).kind is Kind.STRING
    assert compiled_value({">": [{"var": "spend"}, 1]}).kind is Kind.BOOL
    divided = compiled_value({"/": [{"var": "spend"}, {"var": "clicks"}]})
    assert divided.kind is Kind.NUMBER and divided.nullable
    assert not compiled_value({"/": [{"var": "spend"}, 4]}).nullable


def test_operands_used_several_times_are_bound_once():
    nested = {"var": "campaign_id"}
    for _ in range(6):
        nested = {"%": [nested, 7]}
    compiled = compile_logic(nested, FIELDS)
    assert len(compiled.matched) < 40_000
    assert "arrayMap(__jl" in compiled.matched


def test_oversized_sql_is_refused():
    nested = {"var": "campaign_id"}
    for _ in range(20):
        nested = {"cat": [{"%": [nested, 7]}, "x"]}
    with pytest.raises(NotCompilable, match="exceed"):
        compile_logic(nested, FIELDS)


def test_only_parameters_the_sql_names_are_passed():
    # `clicks < clicks < null` is false for every row, so the whole comparison folds away and its literal with it.
    folded = {"!": [{"===": [{"var": "clicks"}, {"<": [{"var": "clicks"}, {"var": "clicks"}, {"var": "nope"}]}]}]}
    kept = {">": [{"var": "spend"}, 5]}

    assert compile_logic(folded, FIELDS).parameters == {}
    compiled = compile_logic(kept, FIELDS)
    assert set(PLACEHOLDER.findall(compiled.matched)) == set(compiled.parameters) == {"p0"}
