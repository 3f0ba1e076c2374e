"""The evaluation document of one entity: `rule_evaluations.condition_results`, kept as `alert_events.condition_details`.

A compact JSON object: each field the logic reads with its value, for pacing snapshots `entity_type` (which tells
apart entities that share an id), for a logic with `naming` checks `naming` (the diagnosis of the first check whose
name breaks its convention, null when none does), for a rule with `actions.recover_when` `recover_when` (whether it
holds), then `conditions`, the outcome of each top-level condition:

    {"delivered_amount":0,"prev.delivered_amount":1200.5,"entity_type":"line_item","conditions":[true,true]}
    {"campaign_name":"US_DV36O_Brand_Q1","dsp_type":"DV360","naming":{"token":"dsp","position":2,"value":"DV36O",
     "reason":"does not equal the campaign's dsp_type","suggest":"DV360"},"conditions":[true]}

ClickHouse builds it on the SQL path (document_sql) and Python on the interpreter path (document_json), byte for
byte the same for the same values: numbers, text and Booleans are written as ClickHouse's toJSONString writes them.
An alert of a run evaluated on stale data carries `"stale":true` before `conditions` (with_stale_mark).

A recheck's document of an entity whose verdict differs from the first run's ends with `"restated":true`
(restated_document, restated_document_sql).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engine.fields import PACING_SNAPSHOTS
from engine.interpreter import number_to_string
from engine.naming import Diagnosis
from engine.sql_text import quote_identifier, quote_string

CONDITIONS_KEY = "conditions"
ENTITY_TYPE_KEY = "entity_type"
NAMING_KEY = "naming"
RESTATED_KEY = "restated"
_RESTATED_MEMBER = f',"{RESTATED_KEY}":true}}'
STALE_KEY = "stale"
RECOVER_WHEN_KEY = "recover_when"

# toJSONString's escapes: the JSON ones, "/" and the JavaScript line terminators; other text is written as is.
_JSON_ESCAPES = {
    **{code: f"\\u{code:04X}" for code in range(0x20)},
    **{ord(character): escaped for character, escaped in
       {'"': '\\"', "\\": "\\\\", "/": "\\/", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t",
        "\u2028": "\\u2028", "\u2029": "\\u2029"}.items()},
}


@dataclass(frozen=True)
class EvaluationDocument:
    """A parsed evaluation document: the values the logic read, the condition outcomes, the entity type if held,
    the naming diagnosis and the outcome of recover_when if held."""

    values: dict[str, Any]
    conditions: list[bool]
    entity_type: str | None
    naming: dict[str, Any] | None = None
    restated: bool = False
    stale: bool = False
    recover_when: bool | None = None


def holds_entity_type(source: str) -> bool:
    """Whether the documents of rules over `source` hold `entity_type` (pacing snapshots: ids are per type)."""
    return source == PACING_SNAPSHOTS


def document_sql(variables: Sequence[str], conditions: Sequence[str], entity_type_column: str | None,
                 naming_sql: str | None = None, *, column: Callable[[str], str] = quote_identifier,
                 recover_when_sql: str | None = None) -> str:
    """A ClickHouse expression building the document of the current row.

    `variables` are the fields the logic reads, each in the column `column` names (by default the column of the
    field's own name), `conditions` UInt8 0/1 expressions, `entity_type_column` the column holding the entity's
    type (None: the document holds no type), `naming_sql` the JSON text of the naming diagnosis (None: the
    logic has no naming check) and `recover_when_sql` the UInt8 0/1 outcome of the rule's recover_when (None: the
    rule has none).
    """
    columns = {name: column(name) for name in variables}
    if entity_type_column is not None:
        # A field named entity_type keeps its place; its value is the entity's type either way.
        columns[ENTITY_TYPE_KEY] = quote_identifier(entity_type_column)
    parts = ["'{'"]
    for key, column_sql in columns.items():
        parts += [quote_string(f'"{key}":'), f"toJSONString({column_sql})", "','"]
    if naming_sql is not None:
        parts += [quote_string(f'"{NAMING_KEY}":'), naming_sql, "','"]
    if recover_when_sql is not None:
        parts += [quote_string(f'"{RECOVER_WHEN_KEY}":'), f"if({recover_when_sql}, 'true', 'false')", "','"]
    parts.append(quote_string(f'"{CONDITIONS_KEY}":['))
    if conditions:
        parts.append(", ',', ".join(f"if({condition}, 'true', 'false')" for condition in conditions))
    parts.append("']}'")
    return f"concat({', '.join(parts)})"


def document_json(values: Mapping[str, Any], conditions: Sequence[bool], entity_type: str | None,
                  has_naming: bool = False, naming: Diagnosis | None = None, recover_when: bool | None = None) -> str:
    """The document of one entity, as document_sql would build it for a row with these values.

    `values` maps each field the logic reads (in the logic's order) to its number or text, `conditions` are the
    outcomes of the top-level conditions, `entity_type` the entity's type (None: the document holds no type);
    with `has_naming` (the logic has naming checks) it holds `naming`, the diagnosis (None: the name is fine);
    `recover_when` is the outcome of the rule's recover_when (None: the rule has none, nor has the document).
    """
    written = {key: _json_value(values[key]) for key in values}
    if entity_type is not None:
        written[ENTITY_TYPE_KEY] = _json_value(entity_type)
    if has_naming:
        written[NAMING_KEY] = diagnosis_json(naming)
    if recover_when is not None:
        written[RECOVER_WHEN_KEY] = "true" if recover_when else "false"
    members = [f'"{key}":{value}' for key, value in written.items()]
    members.append(f'"{CONDITIONS_KEY}":[' + ",".join("true" if outcome else "false" for outcome in conditions) + "]")
    return "{" + ",".join(members) + "}"


def _json_value(value: Any) -> str:
    """A number, text or Boolean as ClickHouse's toJSONString writes a Float64, a String or a Bool."""
    if isinstance(value, str):
        return '"' + value.translate(_JSON_ESCAPES) + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    number = float(value)
    if math.isnan(number) or math.isinf(number):
        return "null"
    if number == 0:
        return "-0" if math.copysign(1.0, number) < 0 else "0"
    # ClickHouse lays out the shortest digits as JavaScript does, but writes no "+" in an exponent.
    return number_to_string(number).replace("e+", "e")


def diagnosis_json(diagnosis: Diagnosis | None) -> str:
    """The JSON text of a naming diagnosis (`null` for none), as diagnosis_sql builds it."""
    if diagnosis is None:
        return "null"
    return (diagnosis_head(diagnosis.token, diagnosis.position) + _json_value(diagnosis.value)
            + ',"reason":' + _json_value(diagnosis.reason) + ',"suggest":'
            + ("null" if diagnosis.suggest is None else _json_value(diagnosis.suggest)) + "}")


def diagnosis_head(token: str | None, position: int) -> str:
    """The constant start of a diagnosis's JSON text, up to its value: `{"token":"dsp","position":2,"value":`."""
    token_json = "null" if token is None else _json_value(token)
    return f'{{"token":{token_json},"position":{position},"value":'


def diagnosis_sql(head_sql: str, value_sql: str, reason_sql: str, suggest_sql: str) -> str:
    """A ClickHouse expression of a diagnosis's JSON text: `head_sql` the SQL of its diagnosis_head, `value_sql`
    and `reason_sql` String expressions, `suggest_sql` a Nullable(String) expression (NULL: no suggestion)."""
    return (f"concat({head_sql}, toJSONString({value_sql}), ',\"reason\":', toJSONString({reason_sql}), "
            f"',\"suggest\":', ifNull(toJSONString({suggest_sql}), 'null'), '}}')")


def with_stale_mark(text: str) -> str:
    """The document `text` of an alert whose run was evaluated on stale data: `"stale":true` added just before
    `conditions` (its last key); empty text stays empty."""
    if not text:
        return text
    at = text.rfind(f'"{CONDITIONS_KEY}":[')
    return text[:at] + f'"{STALE_KEY}":true,' + text[at:]


def parse_document(text: str) -> EvaluationDocument:
    """The document in `text`; empty text (an alert row written without one) is a document with nothing in it."""
    values = json.loads(text) if text else {}
    conditions = values.pop(CONDITIONS_KEY, [])
    entity_type = values.pop(ENTITY_TYPE_KEY, None)
    naming = values.pop(NAMING_KEY, None)
    restated = values.pop(RESTATED_KEY, False) is True
    stale = values.pop(STALE_KEY, False) is True
    recover_when = values.pop(RECOVER_WHEN_KEY, None)
    return EvaluationDocument(values, conditions, entity_type, naming, restated, stale, recover_when)


def restated_document(text: str) -> str:
    """The document `text` marked restated: `"restated":true` added as its last member."""
    return text[:-1] + _RESTATED_MEMBER


def restated_document_sql(document: str) -> str:
    """A ClickHouse expression of the document in the String expression `document` marked restated, as
    restated_document writes it."""
    return f"concat(substring({document}, 1, length({document}) - 1), {quote_string(_RESTATED_MEMBER)})"
