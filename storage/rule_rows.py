"""A rule as a run reads it: its `rules` row with what its organization says about it (read on every run, so a
change of the organization's settings takes effect on the next run)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from engine.conventions import conventions_in_settings
from storage.postgres import Postgres


@dataclass(frozen=True)
class RuleRow:
    """A `rules` row and its organization's timezone, modules and naming conventions, as stored: `conditions`,
    `actions` and the conventions are the JSON documents unvalidated (a row written by SQL may hold anything),
    validated by engine.model at run time."""

    rule_id: str
    org_id: int | None  # rules.org_id may be NULL
    name: str
    module: str
    enabled: bool  # NULL reads as disabled
    conditions: Any
    actions: Any
    timezone: str | None  # None when the organization does not exist
    enabled_modules: tuple[str, ...]  # none unless the organization's enabled_modules is a JSON array
    organization_exists: bool
    naming_conventions: dict[str, Any]  # settings.naming_conventions by name; none unless both are JSON objects


def rule_with_organization(postgres: Postgres, rule_id: str) -> RuleRow | None:
    """The rule `rule_id` with its organization's settings, or None when no rule has that id."""
    return next(iter(rules_with_organization(postgres, [rule_id]).values()), None)


def rules_with_organization(postgres: Postgres, rule_ids: Sequence[str]) -> dict[str, RuleRow]:
    """The rules of `rule_ids` that exist, each with its organization's settings, read in one query; keyed by
    their ids in canonical form."""
    rows = postgres.all("rules_with_organization", rule_ids=list(rule_ids))
    return {row["rule_id"]: _rule_row(row) for row in rows}


def _rule_row(row: dict[str, Any]) -> RuleRow:
    return RuleRow(rule_id=row["rule_id"], org_id=row["org_id"], name=row["name"], module=row["module"],
                   enabled=bool(row["enabled"]), conditions=row["conditions"], actions=row["actions"],
                   timezone=row["timezone"], enabled_modules=_modules(row["enabled_modules"]),
                   organization_exists=row["organization_exists"],
                   naming_conventions=conventions_in_settings(row["settings"]))


def _modules(stored: Any) -> tuple[str, ...]:
    return tuple(module for module in stored if isinstance(module, str)) if isinstance(stored, list) else ()
