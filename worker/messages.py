"""What each channel says about a run's alerts or resolved entities: plain data in, message bodies out, no I/O.

The webhook body (also documented in the README):

    {"event": "alert" | "resolved" | "restated", "delivery_id": "<uuid, the same on every retry>", "run_id": "<uuid>",
     "org_id": 1, "rule": {"id": "<uuid>", "name": "...", "severity": "warning"},
     "evaluated_at": "2026-11-25T09:00:00Z", "storm": false, "entity_count": 1, "ordered_by": null,
     "entities": [{"entity_type": "campaign", "entity_id": "c-9", "entity_name": "...",
                   "values": {"spend": 1234.5, ...}, "conditions": [true, false]}]}

`entity_count` is the number of entities the notice is about; `entities` lists at most MAX_LISTED_ENTITIES of them
(STORM_LISTED_ENTITIES in a storm, ordered by the rule's first variable, `ordered_by`), and fewer when they would
take the body past MAX_POST_BYTES. E-mail and Slack list as many, each line cut at MAX_LINE_CHARS.

A run evaluated on stale data (its window's data was still incomplete after its max_wait) says so: the webhook
body (after `evaluated_at`) and each entity of it and of in-app notifications carry `"stale": true`, e-mail and
Slack say "evaluated on stale data".

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
from engine.storms import STORM_LISTED_ENTITIES, Storm, storm_order
from engine.timestamps import utc_iso
from worker.audience import Entity

# An e-mail, Slack or webhook message lists this many entities and says how many there are in all.
MAX_LISTED_ENTITIES = 50
# Each listed line of an e-mail or Slack text is cut at this many characters.
MAX_LINE_CHARS = 500
# A webhook body lists only the entities that keep it within this size. (A Slack text, at most 50 lines of at
# most 500 characters, stays within the 40,000 characters Slack takes.)
MAX_POST_BYTES = 64 * 1024
STALE_TEXT = "evaluated on stale data"


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
    # A storm's alert notice is one incident notice: the first entities by `ordered_by`, with the full count.
    storm: Storm | None = None
    ordered_by: str | None = None
    scheduled_for: datetime | None = None
    matching_now: frozenset[tuple[str, str]] = field(default_factory=frozenset)
    stale: bool = False

    @property
    def time_text(self) -> str:
        """When the run evaluated, and whether on stale data: `2026-11-25T09:00:00Z (evaluated on stale data)`."""
        return utc_iso(self.evaluated_at) + (f" ({STALE_TEXT})" if self.stale else "")

    @property
    def restated(self) -> bool:
        return self.kind == "restated"


def post_bytes(body: dict[str, Any]) -> bytes:
    """The bytes a Slack or webhook post carries for `body`: compact UTF-8 JSON."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


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


def _counted(count: int, singular: str, plural: str) -> str:
    return f"{count} {'entity' if count == 1 else 'entities'} {singular if count == 1 else plural}"


def _headline(notice: RunNotice, records: Sequence[dict[str, Any]]) -> str:
    count = len(records)
    noun = "entity" if count == 1 else "entities"
    if notice.restated:
        matching_now = sum(1 for record in records if record["matched"])
        parts = [_counted(matching_now, "matches now after restated data", "match now after restated data")
                 if matching_now else "",
                 _counted(count - matching_now, "no longer matches", "no longer match") if count - matching_now else ""]
        return f"[restated] {notice.rule_name}: " + ", ".join(part for part in parts if part)
    if notice.kind == "resolved":
        return f"[resolved] {notice.rule_name}: {count} {noun} no longer match"
    if notice.storm is not None:
        return f"[{notice.severity}] {notice.rule_name}: storm, {count:,} {_storm_noun(records)} matched"
    return f"[{notice.severity}] {notice.rule_name}: {count} {noun} matched"


def _storm_noun(records: Sequence[dict[str, Any]]) -> str:
    """What a storm notice calls its entities: `campaigns` when they are all campaigns, else `entities`."""
    types = {record["entity_type"] for record in records}
    one = types.pop().replace("_", " ") if len(types) == 1 else "entity"
    if len(records) == 1:
        return one
    return "entities" if one == "entity" else f"{one}s"


def _value_text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.6g}" if abs(value) < 1e6 else f"{value:,.2f}"
    return str(value)


def _entity_line(record: dict[str, Any]) -> str:
    name = record["entity_name"]
    label = name if name == record["entity_id"] else f"{name} ({record['entity_id']})"
    values = ", ".join(f"{field} = {_value_text(value)}" for field, value in record["values"].items())
    line = f"- {record['entity_type']} {label}" + (f": {values}" if values else "")
    line += f"; {naming_text(record['naming'])}" if "naming" in record else ""
    return line if len(line) <= MAX_LINE_CHARS else line[:MAX_LINE_CHARS - 1] + "…"


def _listed(notice: RunNotice, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records a message of `notice` lists: at most MAX_LISTED_ENTITIES in the order given, or in a storm the
    first STORM_LISTED_ENTITIES by the rule's first variable."""
    if notice.storm is None:
        return records[:MAX_LISTED_ENTITIES]
    return list(storm_order(records, notice.ordered_by)[:STORM_LISTED_ENTITIES])


def _listing(notice: RunNotice, records: list[dict[str, Any]]) -> list[str]:
    """The listed lines of an e-mail or Slack text, and how many more there are; a storm's lines show only the
    value of the variable they are ordered by."""
    listed = _listed(notice, records)
    if notice.storm is not None:
        listed = [{**record, "values": {name: value for name, value in record["values"].items()
                                        if name == notice.ordered_by}} for record in listed]
    lines = [_entity_line(record) for record in listed]
    if len(records) > len(listed):
        lines.append(f"... and {len(records) - len(listed):,} more")
    return lines


def _storm_lines(notice: RunNotice, records: Sequence[dict[str, Any]]) -> list[str]:
    """What a storm notice says before its listing."""
    storm, count = notice.storm, len(records)
    order = (f"by {notice.ordered_by} (numbers highest first)" if notice.ordered_by else "by entity id")
    return [f"This run is a storm: it matched more entities than the rule allows at once (max_alerts "
            f"{storm.max_alerts:,}, max_alert_share {storm.max_alert_share:g}), which usually means broken data "
            f"rather than {count:,} problems. Every alert is recorded in alert_events.",
            f"The first {STORM_LISTED_ENTITIES} of {count:,} {order}:" if count > STORM_LISTED_ENTITIES
            else f"All {count} {order}:"]


def _records(notice: RunNotice, entities: Sequence[Entity]) -> list[dict[str, Any]]:
    """The entities as messages carry them; a recheck's with `matched`, those that match now first."""
    if not notice.restated:
        return [entity_record(entity) for entity in entities]
    records = [{**entity_record(entity), "matched": entity.key in notice.matching_now} for entity in entities]
    return sorted(records, key=lambda record: not record["matched"])


def _restated_sections(notice: RunNotice, records: Sequence[dict[str, Any]]) -> list[str]:
    """A recheck's listing: one heading per verdict, each with its entities."""
    lines: list[str] = []
    for heading, matched in (("Matches now after restated data:", True), ("No longer matches:", False)):
        group = [record for record in records if record["matched"] is matched]
        if group:
            lines += [*([""] if lines else []), heading, *_listing(notice, group)]
    return lines


def _when(notice: RunNotice) -> str:
    if notice.restated and notice.scheduled_for is not None:
        return f"{notice.time_text} (a recheck of the run as of {utc_iso(notice.scheduled_for)}, over its window)"
    return notice.time_text


def email_message(notice: RunNotice, entities: Sequence[Entity]) -> dict[str, str]:
    """The subject and plain-text body of one user's e-mail for this run (one incident notice in a storm)."""
    records = _records(notice, entities)
    if notice.restated:
        listing = _restated_sections(notice, records)
    else:
        intro = (_storm_lines(notice, records) if notice.storm is not None
                 else ["These entities matched the rule and may need a look:" if notice.kind == "alert"
                       else "These entities matched the rule before and no longer do:"])
        listing = [*intro, *_listing(notice, records)]
    body = [f"Rule: {notice.rule_name} ({notice.rule_id})", f"Severity: {notice.severity}",
            f"Evaluated at: {_when(notice)}", "", *listing, "", f"Run {notice.run_id}"]
    return {"subject": _headline(notice, records), "text": "\n".join(body) + "\n"}


def slack_body(notice: RunNotice, entities: Sequence[Entity]) -> dict[str, Any]:
    """The JSON body of the run's Slack incoming-webhook post (one incident notice in a storm, saying its counts)."""
    records = _records(notice, entities)
    lines = [f"*{_headline(notice, records)}*", f"Evaluated at {_when(notice)}"]
    if notice.storm is not None:
        lines += [f"This run is a storm: {notice.storm.reason}.", *_storm_lines(notice, records)[1:]]
    listing = _restated_sections(notice, records) if notice.restated else _listing(notice, records)
    return {"text": "\n".join([*lines, *listing])}


def webhook_body(notice: RunNotice, entities: Sequence[Entity], delivery_id: str) -> dict[str, Any]:
    """The JSON body of the run's webhook post (the format in this module's docstring): at most MAX_POST_BYTES."""
    body = {"event": notice.kind, "delivery_id": delivery_id, "run_id": notice.run_id, "org_id": notice.org_id,
            "rule": {"id": notice.rule_id, "name": notice.rule_name, "severity": notice.severity},
            "evaluated_at": utc_iso(notice.evaluated_at), **({"stale": True} if notice.stale else {}),
            "storm": notice.storm is not None, "entity_count": len(entities),
            "ordered_by": notice.ordered_by if notice.storm is not None else None, "entities": []}
    if notice.restated and notice.scheduled_for is not None:
        body["scheduled_for"] = utc_iso(notice.scheduled_for)
    budget = MAX_POST_BYTES - len(post_bytes(body))
    for record in _listed(notice, _records(notice, entities)):
        budget -= len(post_bytes(record)) + 1  # the record and its comma
        if budget < 0:
            break
        body["entities"].append(record)
    return body


def in_app_entities(entities: Sequence[Entity], notice: RunNotice | None = None) -> list[dict[str, Any]]:
    """The `notifications.entities` of one user's in-app notification: every entity as a record (a recheck's carry
    `matched`), or for a storm's `notice` the first STORM_LISTED_ENTITIES by the rule's first variable."""
    if notice is None:
        return [entity_record(entity) for entity in entities]
    records = _records(notice, entities)
    return records if notice.storm is None else _listed(notice, records)
