"""What each channel says about a run's alerts or resolved entities: plain data in, message bodies out, no I/O.

The webhook body (also documented in the README):

    {"event": "alert" | "resolved", "delivery_id": "<uuid, the same on every retry>", "run_id": "<uuid>",
     "org_id": 1, "rule": {"id": "<uuid>", "name": "...", "severity": "warning"},
     "evaluated_at": "2026-11-25T09:00:00Z",
     "entities": [{"entity_type": "campaign", "entity_id": "c-9", "entity_name": "...",
                   "values": {"spend": 1234.5, ...}, "conditions": [true, false]}]}

A run evaluated on stale data (its window's data was still incomplete after its max_wait) says so: the webhook
body (after `evaluated_at`) and each entity of it and of in-app notifications carry `"stale": true`, e-mail and
Slack say "evaluated on stale data".

An entity whose name broke a naming convention also carries `"naming"`, the diagnosis of its evaluation document
(`{"token": "dsp", "position": 2, "value": "DV36O", "reason": "not an allowed value", "suggest": "DV360"}`);
e-mail and Slack write it in words after the values, in-app notifications carry it like the webhook.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from engine.evaluation_document import parse_document
from engine.timestamps import utc_iso
from worker.audience import Entity

# An e-mail or Slack message lists this many entities and says how many more there are.
MAX_LISTED_ENTITIES = 50
STALE_TEXT = "evaluated on stale data"


@dataclass(frozen=True)
class RunNotice:
    """What every message of one run and kind shares."""

    kind: str  # "alert" or "resolved"
    run_id: str
    org_id: int
    rule_id: str
    rule_name: str
    severity: str
    evaluated_at: datetime
    stale: bool = False

    @property
    def time_text(self) -> str:
        """When the run evaluated, and whether on stale data: `2026-11-25T09:00:00Z (evaluated on stale data)`."""
        return utc_iso(self.evaluated_at) + (f" ({STALE_TEXT})" if self.stale else "")


def entity_record(entity: Entity) -> dict[str, Any]:
    """An entity as messages carry it: identity, the values the logic read, the top-level condition outcomes."""
    document = parse_document(entity.condition_details)
    record = {"entity_type": entity.entity_type, "entity_id": entity.entity_id, "entity_name": entity.entity_name,
              "values": document.values, "conditions": document.conditions}
    if document.naming is not None:
        record["naming"] = document.naming
    if document.stale:
        record["stale"] = True
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


def _headline(notice: RunNotice, count: int) -> str:
    noun = "entity" if count == 1 else "entities"
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


def email_message(notice: RunNotice, entities: Sequence[Entity]) -> dict[str, str]:
    """The subject and plain-text body of one user's e-mail for this run."""
    records = [entity_record(entity) for entity in entities]
    intro = ("These entities matched the rule and may need a look:" if notice.kind == "alert"
             else "These entities matched the rule before and no longer do:")
    body = [f"Rule: {notice.rule_name} ({notice.rule_id})", f"Severity: {notice.severity}",
            f"Evaluated at: {notice.time_text}", "", intro, *_listing(records), "",
            f"Run {notice.run_id}"]
    return {"subject": _headline(notice, len(records)), "text": "\n".join(body) + "\n"}


def slack_body(notice: RunNotice, entities: Sequence[Entity]) -> dict[str, Any]:
    """The JSON body of the run's Slack incoming-webhook post."""
    records = [entity_record(entity) for entity in entities]
    lines = [f"*{_headline(notice, len(records))}*", f"Evaluated at {notice.time_text}", *_listing(records)]
    return {"text": "\n".join(lines)}


def webhook_body(notice: RunNotice, entities: Sequence[Entity], delivery_id: str) -> dict[str, Any]:
    """The JSON body of the run's webhook post (the format in this module's docstring)."""
    return {"event": notice.kind, "delivery_id": delivery_id, "run_id": notice.run_id, "org_id": notice.org_id,
            "rule": {"id": notice.rule_id, "name": notice.rule_name, "severity": notice.severity},
            "evaluated_at": utc_iso(notice.evaluated_at), **({"stale": True} if notice.stale else {}),
            "entities": [entity_record(entity) for entity in entities]}


def in_app_entities(entities: Sequence[Entity]) -> list[dict[str, Any]]:
    """The `notifications.entities` of one user's in-app notification."""
    return [entity_record(entity) for entity in entities]
