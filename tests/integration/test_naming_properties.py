"""Property: for generated conventions and names, ClickHouse's verdict and naming diagnosis on the compiled SQL
are the interpreter's, byte for byte (the evaluation document's `naming`)."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from engine.compiler import compile_logic
from engine.conventions import Convention, convention_problems, parse_convention
from engine.evaluation_document import diagnosis_json
from engine.fields import CAMPAIGN_METRICS, field_types
from engine.interpreter import evaluate_row, truthy
from engine.naming import bind_conventions, diagnose, naming_checks
from worker.interpreter_path import first_naming_diagnosis

FIELDS = field_types(CAMPAIGN_METRICS, with_previous=False)
DELIMITERS = ["_", "-", "|", "__", "aa", "é"]
VALUES = ["US", "EU", "UK", "DV360", "TTD", "Meta", "Brand", "Perf", "brand", "Ünï", "x😀", "Q1"]
PATTERNS = ["^Q[1-4]$", "^[A-Z]{2}$", "[0-9]", "^(?i)spring$", "^.$", "é"]
DATES = ["YYYY", "YYYYMM", "YYYY-MM", "YYYYMMDD", "YYYY-MM-DD", "YYMMDD", "DD.MM.YYYY", "MM/DD/YYYY", "MMYY"]
PIECES = ["", "US", "us", "Us", "EU", "UK", "uk", "DV360", "DV36O", "dv360", "TTD", "Meta", "meta", "Brand", "brand",
          "Brnd", "Perf", "Q1", "Q5", "q2", "202611", "202613", "2026-02", "20240229", "20230229", "2026-04-31",
          "261231", "29.02.2024", "12/31/2026", "1226", "2026", "x", "Spring", "spring", "é", "Ünï", "ünï", "x😀",
          "adv-1", "a\nb", "0000", "00000229"]

TOKENS = st.one_of(
    st.tuples(st.lists(st.sampled_from(VALUES), min_size=1, max_size=4, unique=True), st.booleans()).map(
        lambda pair: {"values": pair[0], "ignore_case": pair[1]}),
    st.sampled_from(PATTERNS).map(lambda pattern: {"pattern": pattern}),
    st.sampled_from(DATES).map(lambda date: {"date": date}),
    st.just({"free": True}),
    st.sampled_from(["dsp_type", "advertiser_id"]).map(lambda field: {"equals": field}),
)


@st.composite
def conventions(draw) -> dict[str, Any]:
    kinds = draw(st.lists(TOKENS, min_size=1, max_size=6))
    tokens = [{"name": f"t{index}", **kind, **({"optional": True} if draw(st.booleans()) else {})}
              for index, kind in enumerate(kinds)]
    document: dict[str, Any] = {"delimiter": draw(st.sampled_from(DELIMITERS)), "tokens": tokens}
    if draw(st.booleans()):
        highest = draw(st.integers(1, len(tokens)))
        document["max_tokens"] = highest
        document["min_tokens"] = draw(st.integers(1, highest))
    return document


def _variants(value: str) -> list[str]:
    return [value, value.lower(), value.upper(), value[:-1], value + "x", value[:1] + "0" + value[2:]]


@st.composite
def names(draw, convention: Convention, cross_values: dict[str, str]) -> str:
    """Mostly names that follow the convention or break it in one token; sometimes any count of any pieces."""
    if draw(st.integers(0, 4)) == 0:
        count = draw(st.integers(1, len(convention.tokens) + 2))
        return convention.delimiter.join(draw(st.lists(st.sampled_from(PIECES), min_size=count, max_size=count)))
    count = draw(st.integers(convention.min_tokens, convention.max_tokens))
    pieces = []
    for token in convention.layout(count):
        candidates = PIECES + [variant for value in token.values for variant in _variants(value)]
        if token.equals:
            candidates += _variants(cross_values[token.equals])
        good = [piece for piece in candidates
                if diagnose(Convention("one", "\x00", 1, 1, (token,)), piece, cross_values) is None]
        pieces.append(draw(st.sampled_from(good if good and draw(st.integers(0, 3)) else candidates)))
    return convention.delimiter.join(pieces)


ROWS = st.lists(st.tuples(st.sampled_from(["DV360", "TTD", "", "Meta"]), st.sampled_from(PIECES)),
                min_size=1, max_size=4)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_sql_naming_equals_the_interpreter(ch, data):
    documents = data.draw(st.lists(conventions(), min_size=1, max_size=2))
    documents = [document for document in documents if not convention_problems(document)] or [
        {"delimiter": "_", "tokens": [{"name": "t0", "free": True}]}]
    bound = {f"c{index}": parse_convention(f"c{index}", document) for index, document in enumerate(documents)}
    checks = [{"naming": [{"var": "campaign_name"}, name]} for name in bound]
    logic = bind_conventions(checks[0] if len(checks) == 1 else {"or": checks}, bound)
    rows = []
    for dsp_type, advertiser_id in data.draw(ROWS):
        cross_values = {"dsp_type": dsp_type, "advertiser_id": advertiser_id}
        convention = data.draw(st.sampled_from(list(bound.values())))
        name = data.draw(names(convention, cross_values))
        rows.append({**{field: "" for field in FIELDS if field not in ("impressions",)}, "impressions": 0.0,
                     "campaign_name": name, "dsp_type": dsp_type, "advertiser_id": advertiser_id})
    compiled = compile_logic(logic, FIELDS)
    result = ch.query(
        f"SELECT campaign_name, toUInt8({compiled.matched}), {compiled.naming} FROM (SELECT row.1 AS campaign_name,"
        " row.2 AS dsp_type, row.3 AS advertiser_id FROM (SELECT arrayJoin(arrayZip({names:Array(String)},"
        " {dsps:Array(String)}, {advertisers:Array(String)})) AS row))",
        parameters={**compiled.parameters, "names": [row["campaign_name"] for row in rows],
                    "dsps": [row["dsp_type"] for row in rows], "advertisers": [row["advertiser_id"] for row in rows]},
    ).result_rows
    assert len(result) == len(rows)
    for row, (name, matched, naming) in zip(rows, result):
        assert name == row["campaign_name"]
        expected = first_naming_diagnosis(naming_checks(logic), row)
        event("follows" if expected is None else expected.reason.split(":")[0][:20])
        assert bool(matched) == truthy(evaluate_row(logic, row)), f"{documents!r} over {row!r}"
        assert naming == diagnosis_json(expected), f"{documents!r} over {row!r}"
        assert bool(matched) == (expected is not None)
