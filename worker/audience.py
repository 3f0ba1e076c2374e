"""Who may hear of an entity (the README's Notifications), resolved in PostgreSQL with one query per run or batch."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from storage.postgres import Postgres, Transaction


@dataclass(frozen=True)
class Entity:
    """An alerted or resolved entity, with what a DSP-account grant is matched on (campaigns only)."""

    entity_type: str
    entity_id: str
    entity_name: str
    condition_details: str
    dsp_type: str = ""
    advertiser_id: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return self.entity_type, self.entity_id

    def without_nul(self) -> Entity:
        """This entity as PostgreSQL can store it: NUL characters, which PostgreSQL text and JSON refuse and
        ClickHouse strings may hold, become U+FFFD."""
        texts = (self.entity_type, self.entity_id, self.entity_name, self.dsp_type, self.advertiser_id)
        if "\x00" not in "".join(texts) and "\\u0000" not in self.condition_details:
            return self
        details = json.dumps(_without_nul(json.loads(self.condition_details))) if self.condition_details else ""
        return Entity(*(_without_nul(text) for text in texts[:3]), details, *(_without_nul(t) for t in texts[3:]))


def _without_nul(value):
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, list):
        return [_without_nul(item) for item in value]
    if isinstance(value, dict):
        return {_without_nul(key): _without_nul(item) for key, item in value.items()}
    return value


@dataclass(frozen=True)
class Recipient:
    """A member of the rule's organization who may see an entity."""

    user_id: int
    email: str
    email_verified: bool
    role: str = ""


def audience(postgres: Postgres | Transaction, org_id: int, roles: Sequence[str], entities: Sequence[Entity],
             at: datetime) -> dict[tuple[str, str], list[Recipient]]:
    """The recipients of each entity, keyed by (entity_type, entity_id), sorted by user id.

    A recipient is a member of `org_id` whose role is in `roles` and who is an owner or admin, or holds a grant of
    `org_id` not expired at `at` on the entity, or (for a campaign) on the DSP account whose dsp_type and
    external_id are the campaign's dsp_type and advertiser_id. Entities nobody may see are absent.
    """
    return audiences(postgres, org_id, [(roles, entities)], at)[0]


def audiences(postgres: Postgres | Transaction, org_id: int, runs: Sequence[tuple[Sequence[str], Sequence[Entity]]],
              at: datetime) -> list[dict[tuple[str, str], list[Recipient]]]:
    """For each (roles, entities) of one organization's runs as of `at`, what `audience` gives, in one query."""
    everyone_roles = sorted({role for roles, entities in runs if entities for role in roles})
    # An entity several runs alerted on is asked about once; the entities travel as one JSON text, which costs
    # far less to send than four text arrays.
    everyone = list(dict.fromkeys((entity.entity_type, entity.entity_id, entity.dsp_type, entity.advertiser_id)
                                  for roles, entities in runs if roles for entity in entities))
    if not everyone or not everyone_roles:
        return [{} for _ in runs]
    rows = postgres.all("audience", org_id=org_id, roles=everyone_roles, at=at.replace(tzinfo=None),
                        entities=json.dumps(everyone))
    recipients: dict[tuple[str, str, str, str], list[Recipient]] = defaultdict(list)
    for row in rows:
        recipients[(row["entity_type"], row["entity_id"], row["dsp_type"], row["advertiser_id"])].append(
            Recipient(row["user_id"], row["email"], bool(row["email_verified"]), row["role"]))
    found = []
    for roles, entities in runs:
        wanted = set(roles)
        of_run: dict[tuple[str, str], list[Recipient]] = {}
        for entity in entities:
            allowed = [recipient for recipient in
                       recipients.get((entity.entity_type, entity.entity_id, entity.dsp_type, entity.advertiser_id), [])
                       if recipient.role in wanted]
            if allowed:
                of_run[entity.key] = allowed
        found.append(of_run)
    return found
