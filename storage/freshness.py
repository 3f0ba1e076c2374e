"""What says how fresh an organization's data is: its `dsp_accounts` (status, last_sync_at) and `pipelines`
(connector_type, status), read as engine.freshness takes them."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC

from engine.freshness import Account, Pipeline
from storage.postgres import Postgres


@dataclass(frozen=True)
class FreshnessSignals:
    """One organization's DSP accounts and pipelines."""

    accounts: tuple[Account, ...] = ()
    pipelines: tuple[Pipeline, ...] = ()


@dataclass
class _Collected:
    accounts: list[Account] = field(default_factory=list)
    pipelines: list[Pipeline] = field(default_factory=list)


def freshness_signals(postgres: Postgres, org_id: int | None = None) -> dict[int, FreshnessSignals]:
    """The accounts and pipelines of organization `org_id` (of every organization when None), by organization
    id, in two queries; an organization with neither is left out. Rows whose organization is NULL are ignored."""
    collected: dict[int, _Collected] = defaultdict(_Collected)
    for row in postgres.all("dsp_accounts_of_organizations", org_id=org_id):
        if row["org_id"] is None:
            continue
        synced = row["last_sync_at"]
        collected[row["org_id"]].accounts.append(Account(
            row["id"], row["dsp_type"], row["external_id"], row["name"], row["status"] or "",
            synced.replace(tzinfo=UTC) if synced is not None else None))
    for row in postgres.all("pipelines_of_organizations", org_id=org_id):
        if row["org_id"] is None:
            continue
        collected[row["org_id"]].pipelines.append(
            Pipeline(row["id"], row["name"], row["connector_type"], row["status"] or ""))
    return {org: FreshnessSignals(tuple(found.accounts), tuple(found.pipelines))
            for org, found in sorted(collected.items())}


def organization_signals(postgres: Postgres, org_id: int) -> FreshnessSignals:
    """The accounts and pipelines of one organization (none when it has neither)."""
    return freshness_signals(postgres, org_id).get(org_id, FreshnessSignals())
