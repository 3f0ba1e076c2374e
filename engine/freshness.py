"""Whether a rule's window is complete, and what a run does when it is not (README "Data freshness").

Pure: the organization's DSP accounts and pipelines come in as data, the decision goes out as data.

A window is complete when every active DSP account the rule covers has synced after the end of the window's data
plus `data_delay`, and no pipeline of the covered connector types has status `failed`. The end of a window's data
is the end of its last local day; for a window that includes today (`today`, `month_to_date`, `lifetime`), whose
last day is still going on at T, it is the start of today: its days before today are complete, and today's data
has begun to arrive. A rule covers the accounts of its scope's `dsp_type` (all of
them without one; pacing snapshots name no account, so a pacing rule covers them all); the covered connector types
are the scope's DSP types, else the types of the organization's active accounts.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from engine.timestamps import utc_iso
from engine.windows import WindowBounds, start_of_local_day

ACTIVE_ACCOUNT = "active"
FAILED_PIPELINE = "failed"
ON_STALE_RUN = "run"
ON_STALE_SKIP = "skip"
DEFAULT_DATA_DELAY = "0"
DEFAULT_MAX_WAIT = "6h"
# The longest data_delay or max_wait: a run waits at most this long for its data.
MAX_WAIT_SETTING = timedelta(days=7)



@dataclass(frozen=True)
class Account:
    """A `dsp_accounts` row: `last_sync_at` aware UTC, None when it never synced."""

    id: int
    dsp_type: str
    external_id: str
    name: str | None
    status: str
    last_sync_at: datetime | None

    @property
    def label(self) -> str:
        """How messages name it: `DV360 account adv-1 (Acme DV360)`."""
        return f"{self.dsp_type} account {self.external_id}" + (f" ({self.name})" if self.name else "")


@dataclass(frozen=True)
class Pipeline:
    """A `pipelines` row: its name, connector type and status."""

    id: str
    name: str
    connector_type: str
    status: str


@dataclass(frozen=True)
class Completeness:
    """The verdict on one window: the covered accounts that are behind (not synced after `needed_after`) and the
    failed pipelines of the covered connector types; complete when there are neither."""

    needed_after: datetime
    behind: tuple[Account, ...]
    failed_pipelines: tuple[Pipeline, ...]

    @property
    def complete(self) -> bool:
        return not self.behind and not self.failed_pipelines

    @property
    def behind_keys(self) -> list[tuple[str, str]]:
        """(dsp_type, external_id) of each account behind: a campaign of one of them is not `fresh`."""
        return [(account.dsp_type, account.external_id) for account in self.behind]

    def reason(self) -> str:
        """What is missing, in words (empty when complete): which accounts are behind and since when, which
        pipelines failed."""
        parts = []
        for account in self.behind:
            since = ("has never synced" if account.last_sync_at is None
                     else f"last synced {utc_iso(account.last_sync_at)}")
            parts.append(f"{account.label} {since}")
        parts += [f"pipeline {pipeline.name!r} ({pipeline.connector_type}) has failed"
                  for pipeline in self.failed_pipelines]
        if not parts:
            return ""
        return f"data incomplete (needs a sync after {utc_iso(self.needed_after)}): " + "; ".join(parts)


def data_end(bounds: WindowBounds, timezone: str) -> datetime:
    """The end of the window's data (aware, UTC): the end of its last local day, at most the start of today."""
    return min(bounds.utc_end, start_of_local_day(bounds.today, timezone))


def completeness(accounts: Sequence[Account], pipelines: Sequence[Pipeline], dsp_types: Collection[str] | None,
                 end: datetime, data_delay: timedelta) -> Completeness:
    """The verdict on a window whose data ends at `end`, for a rule covering `dsp_types` (None: every type).

    An account is covered when it is active and of a covered type; it is behind unless its `last_sync_at` is
    after `end + data_delay`. A pipeline counts when its connector type is one of `dsp_types`, or, for None, the
    type of an active account of the organization. An organization without (covered) accounts has nothing to wait
    for: its windows are complete unless such a pipeline failed.
    """
    needed_after = end + data_delay
    active = [account for account in accounts if account.status == ACTIVE_ACCOUNT]
    covered = [account for account in active if dsp_types is None or account.dsp_type in dsp_types]
    connector_types = set(dsp_types) if dsp_types is not None else {account.dsp_type for account in active}
    behind = tuple(account for account in covered
                   if account.last_sync_at is None or account.last_sync_at <= needed_after)
    failed = tuple(pipeline for pipeline in pipelines
                   if pipeline.status == FAILED_PIPELINE and pipeline.connector_type in connector_types)
    return Completeness(needed_after, behind, failed)


@dataclass(frozen=True)
class WaitDecision:
    """What a run does about its window: `go` (complete), `wait` (check again in `check_in` seconds), `run_stale`
    or `skip_stale` (still incomplete at `deadline`, T + max_wait)."""

    action: str
    deadline: datetime
    check_in: int = 0


GO = "go"
WAIT = "wait"
RUN_STALE = "run_stale"
SKIP_STALE = "skip_stale"


def wait_decision(verdict: Completeness, at: datetime, max_wait: timedelta, on_stale: str, now: datetime,
                  waited: timedelta, first_check: int) -> WaitDecision:
    """The decision for a run at T = `at` as of `now`, having waited `waited` so far.

    A run on an incomplete window waits until `at + max_wait`; it checks again after `first_check` seconds, then
    after as long as it has waited so far (exponential backoff), at most 30 minutes and never past the deadline
    (plus one second). Past the deadline `on_stale` decides: `run` or `skip`.
    """
    deadline = at + max_wait
    if verdict.complete:
        return WaitDecision(GO, deadline)
    left = (deadline - now).total_seconds()
    if left <= 0:
        return WaitDecision(RUN_STALE if on_stale == ON_STALE_RUN else SKIP_STALE, deadline)
    check_in = min(max(first_check, int(waited.total_seconds())), 30 * 60, int(left) + 1)
    return WaitDecision(WAIT, deadline, max(1, check_in))


def duration_text(seconds: float) -> str:
    """A lag in words, to the minute: `0m`, `45m`, `3h 5m`, `2d 4h`."""
    minutes = max(0, int(seconds // 60))
    days, hours, minutes = minutes // 1440, minutes % 1440 // 60, minutes % 60
    if days:
        return f"{days}d {hours}h"
    return f"{hours}h {minutes}m" if hours else f"{minutes}m"


def freshness_report(org_id: int, accounts: Sequence[Account], pipelines: Sequence[Pipeline],
                     now: datetime) -> list[dict[str, object]]:
    """What `rulesctl freshness` shows of one organization: one entry per account, by source (DSP type) and
    external id, with its last sync, how far behind `now` it is (`behind_seconds` None: never synced) and the
    pipelines of its type; then one entry per connector type that has pipelines but no account (`account` None)."""
    by_type: dict[str, list[Pipeline]] = {}
    for pipeline in pipelines:
        by_type.setdefault(pipeline.connector_type, []).append(pipeline)

    def entry(source: str, account: Account | None) -> dict[str, object]:
        synced = account.last_sync_at if account else None
        behind = max(0.0, (now - synced).total_seconds()) if synced is not None else None
        return {"org_id": org_id, "source": source,
                "account": None if account is None else {
                    "id": account.id, "external_id": account.external_id, "name": account.name,
                    "status": account.status},
                "last_sync_at": utc_iso(synced) if synced is not None else None,
                "behind_seconds": None if behind is None else int(behind),
                "behind": ("never synced" if account else "-") if behind is None else duration_text(behind),
                "pipelines": [{"name": p.name, "status": p.status} for p in by_type.get(source, [])]}

    entries = [entry(account.dsp_type, account)
               for account in sorted(accounts, key=lambda a: (a.dsp_type, a.external_id))]
    covered = {account.dsp_type for account in accounts}
    entries += [entry(source, None) for source in sorted(by_type) if source not in covered]
    return entries
