"""The evaluation document ClickHouse builds (SQL path) and the one Python builds (interpreter path) are the same
bytes for the same values, and both parse back to those values."""

from __future__ import annotations

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.evaluation_document import document_json, document_sql, parse_document

TRICKY_NUMBERS = [0.0, -0.0, 1.0, -1.0, 100.0, 0.1, 0.30000000000000004, 1e15, 1e20, 1e21, 1.5e21, 1e-6, 1.2e-6,
                  1e-7, -1.5e-9, 5e-324, 1.7976931348623157e308, 12345678901234567890.0, 2.0**53, math.nan,
                  math.inf, -math.inf]
TRICKY_TEXT = ["", "line_item", "a/b", 'say "hi"', "back\\slash", "\x00\x01\x1f\x7f", "\b\f\n\r\t", "é ü 漢字",
               "\u2028\u2029", "\ufeff", "😀", "</script>"]
# Text that can travel to ClickHouse and back: any character but a lone surrogate.
VALID_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)


def _sql_document(ch, values: dict, conditions: list[bool], entity_type: str | None) -> str:
    """The document ClickHouse builds over one row holding `values` (and the entity type) as columns."""
    columns, parameters = [], {}
    for index, (name, value) in enumerate([*values.items(), *([("__type", entity_type)] if entity_type else [])]):
        sql_type = "String" if isinstance(value, str) else "Float64"
        parameters[f"v{index}"] = value
        columns.append(f"{{v{index}:{sql_type}}} AS `{name}`")
    conditions_sql = ["1" if outcome else "0" for outcome in conditions]
    document = document_sql(list(values), conditions_sql, "__type" if entity_type else None)
    row = "SELECT " + (", ".join(columns) or "1 AS `no columns`")
    return ch.query(f"SELECT {document} FROM ({row})", parameters=parameters).result_rows[0][0]


def test_tricky_values_are_written_as_clickhouse_writes_them(ch):
    values = {f"n{index}": number for index, number in enumerate(TRICKY_NUMBERS)}
    values.update({f"prev.t{index}": text for index, text in enumerate(TRICKY_TEXT)})
    for entity_type in (None, "line_item"):
        for conditions in ([], [True], [True, False, False]):
            assert document_json(values, conditions, entity_type) == _sql_document(ch, values, conditions, entity_type)


def test_a_field_named_entity_type_keeps_its_place(ch):
    values = {"delivered_amount": 0.0, "entity_type": "line_item", "prev.delivered_amount": 500.0}
    built = document_json(values, [True, True], "line_item")
    assert built == '{"delivered_amount":0,"entity_type":"line_item","prev.delivered_amount":500,"conditions":[true,true]}'
    assert built == _sql_document(ch, values, [True, True], "line_item")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(numbers=st.lists(st.floats(width=64), max_size=8), texts=st.lists(VALID_TEXT, max_size=8),
       conditions=st.lists(st.booleans(), max_size=5), entity_type=st.none() | VALID_TEXT.filter(bool))
def test_any_values_give_the_same_bytes_and_parse_back(ch, numbers, texts, conditions, entity_type):
    values = {**{f"n{index}": number for index, number in enumerate(numbers)},
              **{f"t{index}": text for index, text in enumerate(texts)}}
    built = document_json(values, conditions, entity_type)
    assert built == _sql_document(ch, values, conditions, entity_type)
    document = parse_document(built)
    assert (document.conditions, document.entity_type) == (conditions, entity_type)
    assert list(document.values) == list(values)
    for name, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            assert document.values[name] is None
        elif isinstance(value, float):
            # Shortest round-trip digits: an integral number may come back as a JSON integer of the same value.
            assert float(document.values[name]) == value
        else:
            assert document.values[name] == value
