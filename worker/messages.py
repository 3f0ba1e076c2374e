"""What each channel says about a run's alerts or resolved entities: plain data in, message bodies out, no I/O.

The webhook body (also documented in the README):

    {"event": "alert" | "resolved", "delivery_id": "<uuid, the same on every retry>", "run_id": "<uuid>",
     "org_id": 1, "rule": {"id": "<uuid>", "name": "...", "severity": "warning"},
     "evaluated_at": "2026-11-25T09:00:00Z",
     "entities": [{"entity_type": "campaign", "entity_id": "c-9", "entity_name": "...",
                   "values": {"spend": 1234.5, ...}, "conditions": [true, false]}]}

An entity whose name broke a naming convention also carries `"naming"`, the diagnosis of its evaluation document
(`{"token": "dsp", "position": 2, "value": "DV36O", "reason": "not an allowed value", "suggest": "DV360"}`);
e-mail and Slack write it in words after the values, in-app notifications carry it like the webhook.

A recheck's notice (kind "restated") lists the entities that match now after restated data, then those that no
longer match: its webhook body has `"event": "restated"`, `"scheduled_for"` (the fire time whose window was
evaluated again; `evaluated_at` is the recheck's own time) and each entity's `"matched"` (true: it matches now).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from engine.evaluation_document import parse_document
from engine.timestamps import utc_iso
from worker.audience import Entity

# An e-mail or Slack message lists this many entities and says how many more there are.
MAX_LISTED_ENTITIES = 50


@dataclass(frozen=True)
class RunNotice:
    """What every message of one run and kind shares. A recheck's notice (kind "restated") also has the fire
    time whose window it evaluated again and the (entity_type, entity_id) of the entities that match now."""

    kind: str  # "alert", "resolved" or "restated"
    run_id: str
    org_id: int
    rule_id: str
    rule_name: str
    severity: str
    evaluated_at: datetime
    scheduled_for: datetime | None = None
    matching_now: frozenset[tuple[str, str]] = field(default_factory=frozenset)

    @property
    def time_text(self) -> str:
        return utc_iso(self.evaluated_at)

    @property
    def restated(self) -> bool:
        return self.kind == "restated"


def entity_record(entity: Entity) -> dict[str, Any]:
    """An entity as messages carry it: identity, the values the logic read, the top-level condition outcomes."""
    document = parse_document(entity.condition_details)
    record = {"entity_type": entity.entity_type, "entity_id": entity.entity_id, "entity_name": entity.entity_name,
              "values": document.values, "conditions": document.conditions}
    if document.naming is not None:
        record["naming"] = document.naming
    return record


def naming_text(diagnosis: dict[str, Any]) -> str:
    """A naming diagnosis in words: `naming: token "dsp" (position 2) is "DV36O": not an allowed value; did you
    mean "DV360"?`."""
    token = "past the last token" if diagnosis.get("token") is None else f"token {_quoted(diagnosis['token'])}"
    text = (f"naming: {token} (position {diagnosis.get('position')}) is {_quoted(diagnosis.get('value'))}: "
            f"{diagnosis.get('reason')}")
    suggest = diagnosis.get("suggest")
    return text + (f"; did you mean {_quoted(suggest)}?" if suggest is not None else "")


def _quoted(text: Any) -> str:
    return json.dumps(text, ensure_ascii=False)


def _counted(count: int, singular: str, plural: str) -> str:
    return f"{count} {'entity' if count == 1 else 'entities'} {singular if count == 1 else plural}"


def _headline(notice: RunNotice, count: int, matching_now: int = 0) -> str:
    noun = "entity" if count == 1 else "entities"
    if notice.restated:
        parts = [_counted(matching_now, "matches now after restated data", "match now after restated data")
                 if matching_now else "",
                 _counted(count - matching_now, "no longer matches", "no longer match") if count - matching_now else ""]
        return f"[restated] {notice.rule_name}: " + ", ".join(part for part in parts if part)
    if notice.kind == "resolved":
        return f"[resolved] {notice.rule_name}: {count} {noun} no longer match"
    return f"[{notice.severity}] {notice.rule_name}: {count} {noun} matched"


def _value_text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.6g}" if abs(value) < 1e6 else f"{value:,.2f}"
    return str(value)


def _entity_line(record: dict[str, Any]) -> str:
    name = record["entity_name"]
    label = name if name == record["entity_id"] else f"{name} ({record['entity_id']})"
    values = ", ".join(f"{field} = {_value_text(value)}" for field, value in record["values"].items())
    line = f"- {record['entity_type']} {label}" + (f": {values}" if values else "")
    return line + (f"; {naming_text(record['naming'])}" if "naming" in record else "")


def _listing(records: Sequence[dict[str, Any]]) -> list[str]:
    lines = [_entity_line(record) for record in records[:MAX_LISTED_ENTITIES]]
    if len(records) > MAX_LISTED_ENTITIES:
        lines.append(f"... and {len(records) - MAX_LISTED_ENTITIES} more")
    return lines


def _records(notice: RunNotice, entities: Sequence[Entity]) -> list[dict[str, Any]]:
    """The entities as messages carry them; a recheck's with `matched`, those that match now first."""
    if not notice.restated:
        return [entity_record(entity) for entity in entities]
    records = [{**entity_record(entity), "matched": entity.key in notice.matching_now} for entity in entities]
    return sorted(records, key=lambda record: not record["matched"])


def _sections(notice: RunNotice, records: Sequence[dict[str, Any]]) -> list[str]:
    """The listing of a message: under one intro, or for a recheck under one heading per verdict."""
    if not notice.restated:
        intro = ("These entities matched the rule and may need a look:" if notice.kind == "alert"
                 else "These entities matched the rule before and no longer do:")
        return [intro, *_listing(records)]
    lines: list[str] = []
    for heading, matched in (("Matches now after restated data:", True), ("No longer matches:", False)):
        group = [record for record in records if record["matched"] is matched]
        if group:
            lines += [*([""] if lines else []), heading, *_listing(group)]
    return lines


def _when(notice: RunNotice) -> str:
    if notice.restated and notice.scheduled_for is not None:
        return f"{notice.time_text} (a recheck of the run as of {utc_iso(notice.scheduled_for)}, over its window)"
    return notice.time_text


def _headline_of(notice: RunNotice, records: Sequence[dict[str, Any]]) -> str:
    return _headline(notice, len(records), sum(1 for record in records if record.get("matched")))


def email_message(notice: RunNotice, entities: Sequence[Entity]) -> dict[str, str]:
    """The subject and plain-text body of one user's e-mail for this run."""
    records = _records(notice, entities)
    body = [f"Rule: {notice.rule_name} ({notice.rule_id})", f"Severity: {notice.severity}",
            f"Evaluated at: {_when(notice)}", "", *_sections(notice, records), "",
            f"Run {notice.run_id}"]
    return {"subject": _headline_of(notice, records), "text": "\n".join(body) + "\n"}


def slack_body(notice: RunNotice, entities: Sequence[Entity]) -> dict[str, Any]:
    """The JSON body of the run's Slack incoming-webhook post."""
    records = _records(notice, entities)
    sections = _sections(notice, records) if notice.restated else _listing(records)
    lines = [f"*{_headline_of(notice, records)}*", f"Evaluated at {_when(notice)}", *sections]
    return {"text": "\n".join(lines)}


def webhook_body(notice: RunNotice, entities: Sequence[Entity], delivery_id: str) -> dict[str, Any]:
    """The JSON body of the run's webhook post (the format in this module's docstring)."""
    body = {"event": notice.kind, "delivery_id": delivery_id, "run_id": notice.run_id, "org_id": notice.org_id,
            "rule": {"id": notice.rule_id, "name": notice.rule_name, "severity": notice.severity},
            "evaluated_at": notice.time_text}
    if notice.restated and notice.scheduled_for is not None:
        body["scheduled_for"] = utc_iso(notice.scheduled_for)
    return {**body, "entities": _records(notice, entities)}


def in_app_entities(entities: Sequence[Entity], notice: RunNotice | None = None) -> list[dict[str, Any]]:
    """The `notifications.entities` of one user's in-app notification (of `notice`: a recheck's carry `matched`)."""
    return [entity_record(entity) for entity in entities] if notice is None else _records(notice, entities)
