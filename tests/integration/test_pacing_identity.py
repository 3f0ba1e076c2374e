"""A pacing entity keeps its identity on a side of `compare_to` where it has no snapshot (README, Fields).

On the real PostgreSQL and the real embedded ClickHouse, through both evaluation paths: SQL (the logic compiled
and evaluated by ClickHouse) and the interpreter (the same entity rows evaluated in Python). The organization is
in UTC and T is noon about ten days ago, so the window `yesterday` and its previous period are whole UTC days.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from engine.windows import resolve_window
from tests.integration.runs_support import ch_text
from worker.runner import RuleRunner, RunRequest

T = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0) - timedelta(days=10)
STOPPED_DELIVERING = {"and": [
    {"==": [{"var": "entity_type"}, "line_item"]},
    {"==": [{"var": "delivered_amount"}, 0]},
    {">": [{"var": "prev.delivered_amount"}, 0]},
]}
IDENTITY_FIELDS = {"and": [
    {"==": [{"var": "entity_id"}, {"var": "prev.entity_id"}]},
    {"==": [{"var": "entity_type"}, {"var": "prev.entity_type"}]},
    {"!=": [{"var": "snapshot_time"}, "-"]},
    {"!=": [{"var": "prev.snapshot_time"}, "-"]},
    {">=": [{"var": "booked_amount"}, 0]},
    {">=": [{"var": "prev.booked_amount"}, 0]},
]}


def _run(env, rule_id: str, path: str) -> dict:
    runner = env.runner if path == "sql" else RuleRunner(env.postgres, env.clickhouse, interpreter_only=True)
    result = runner.run(RunRequest(rule_id=rule_id, scheduled_for=T))
    assert (result["status"], result["path"]) == ("succeeded", path)
    return result


def _pacing_data(env, org: int) -> tuple[str, str]:
    """Snapshots on both sides of `yesterday` with `compare_to`; returns (previous, current) snapshot times."""
    bounds = resolve_window(T, "UTC", "yesterday", "previous_period")
    before, now = ch_text(bounds.previous_utc_start + timedelta(hours=6)), ch_text(bounds.utc_start + timedelta(hours=6))
    env.snapshots(
        # Stopped delivering: a snapshot in the previous period only.
        {"org_id": org, "snapshot_time": before, "entity_type": "line_item", "entity_id": "li-stopped",
         "booked_amount": "900", "delivered_amount": "500"},
        # Still delivering, on both sides.
        {"org_id": org, "snapshot_time": before, "entity_type": "line_item", "entity_id": "li-live",
         "delivered_amount": "300"},
        {"org_id": org, "snapshot_time": now, "entity_type": "line_item", "entity_id": "li-live",
         "delivered_amount": "400"},
        # Never delivered: 0 on the previous side too.
        {"org_id": org, "snapshot_time": before, "entity_type": "line_item", "entity_id": "li-idle",
         "delivered_amount": "0"},
        # New in the window, nothing before.
        {"org_id": org, "snapshot_time": now, "entity_type": "line_item", "entity_id": "li-new",
         "delivered_amount": "0"},
        # Stopped too, but not a line item; it shares its id with a line item that is still delivering.
        {"org_id": org, "snapshot_time": before, "entity_type": "campaign", "entity_id": "li-live",
         "delivered_amount": "200"},
    )
    return before, now


@pytest.mark.parametrize("path", ["sql", "interpreter"])
def test_a_line_item_that_stopped_delivering_fires_with_its_identity(env, path):
    org = env.org(timezone="UTC")
    rule = env.rule(org, {"source": "pacing_snapshots", "window": "yesterday", "compare_to": "previous_period",
                          "logic": STOPPED_DELIVERING}, {"severity": "warning"}, name="Stopped delivering")
    _pacing_data(env, org)

    result = _run(env, rule, path)

    assert (result["entities"], result["matched"], result["alerts"]) == (5, 1, 1)
    by_key = {(row["results"]["entity_type"], row["entity_id"]): row for row in env.evaluations(rule)}
    assert sorted(by_key) == [("campaign", "li-live"), ("line_item", "li-idle"), ("line_item", "li-live"),
                              ("line_item", "li-new"), ("line_item", "li-stopped")]
    assert [key for key, row in sorted(by_key.items()) if row["matched"]] == [("line_item", "li-stopped")]
    assert by_key[("line_item", "li-stopped")]["results"] == {
        "delivered_amount": 0.0, "entity_type": "line_item", "prev.delivered_amount": 500.0,
        "conditions": [True, True, True]}
    assert by_key[("campaign", "li-live")]["results"] == {
        "delivered_amount": 0.0, "entity_type": "campaign", "prev.delivered_amount": 200.0,
        "conditions": [False, True, True]}
    [alert] = env.alerts(rule)
    assert (alert["entity_type"], alert["entity_id"], alert["entity_name"]) == ("line_item", "li-stopped", "li-stopped")
    assert alert["details"] == by_key[("line_item", "li-stopped")]["results"]


@pytest.mark.parametrize("path", ["sql", "interpreter"])
def test_only_snapshot_time_and_numbers_are_empty_on_the_side_without_a_snapshot(env, path):
    org = env.org(timezone="UTC")
    rule = env.rule(org, {"source": "pacing_snapshots", "window": "yesterday", "compare_to": "previous_period",
                          "logic": IDENTITY_FIELDS}, {"severity": "info"})
    before, now = _pacing_data(env, org)

    result = _run(env, rule, path)

    assert (result["entities"], result["matched"]) == (5, 5)
    by_key = {(row["results"]["entity_type"], row["entity_id"]): row["results"] for row in env.evaluations(rule)}
    assert by_key[("line_item", "li-stopped")] == {
        "booked_amount": 0.0, "entity_id": "li-stopped", "entity_type": "line_item", "prev.booked_amount": 900.0,
        "prev.entity_id": "li-stopped", "prev.entity_type": "line_item", "prev.snapshot_time": before,
        "snapshot_time": "", "conditions": [True] * 6}
    assert by_key[("line_item", "li-new")] == {
        "booked_amount": 0.0, "entity_id": "li-new", "entity_type": "line_item", "prev.booked_amount": 0.0,
        "prev.entity_id": "li-new", "prev.entity_type": "line_item", "prev.snapshot_time": "",
        "snapshot_time": now, "conditions": [True] * 6}
