"""Who may hear of an entity (the README's Notifications), resolved in PostgreSQL with one query per run."""

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
        if not any("\x00" in text for text in texts) and "\\u0000" not in self.condition_details:
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


def audience(postgres: Postgres | Transaction, org_id: int, roles: Sequence[str], entities: Sequence[Entity],
             at: datetime) -> dict[tuple[str, str], list[Recipient]]:
    """The recipients of each entity, keyed by (entity_type, entity_id), sorted by user id.

    A recipient is a member of `org_id` whose role is in `roles` and who is an owner or admin, or holds a grant of
    `org_id` not expired at `at` on the entity, or (for a campaign) on the DSP account whose dsp_type and
    external_id are the campaign's dsp_type and advertiser_id. Entities nobody may see are absent.
    """
    if not entities or not roles:
        return {}
    rows = postgres.all(
        "audience", org_id=org_id, roles=list(roles), at=at.replace(tzinfo=None),
        entity_types=[e.entity_type for e in entities], entity_ids=[e.entity_id for e in entities],
        dsp_types=[e.dsp_type for e in entities], advertiser_ids=[e.advertiser_id for e in entities])
    recipients: dict[tuple[str, str], list[Recipient]] = defaultdict(list)
    for row in rows:
        recipients[(row["entity_type"], row["entity_id"])].append(
            Recipient(row["user_id"], row["email"], bool(row["email_verified"])))
    return dict(recipients)
