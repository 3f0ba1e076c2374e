"""The batch statement without ClickHouse: member naming, parameters, refusals and how a batch is split."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

import pytest

from engine.batch_query import (MAX_BATCH_AGGREGATES, MAX_BATCH_RULES, MAX_PARAMETER_BYTES, MAX_STATEMENT_BYTES,
                                batch_evaluation, batch_evaluation_insert, batch_member, split_batch)
from engine.compiler import compile_logic
from engine.errors import NotCompilable
from engine.fields import CAMPAIGN_METRICS, PACING_SNAPSHOTS, field_types
from engine.windows import resolve_window

AT = datetime(2026, 11, 20, 9, 30, tzinfo=UTC)
PLACEHOLDER = re.compile(r"\{(\w+):[^{}]+\}")
SPEND_OVER = {"and": [{">": [{"var": "spend"}, 1200]}, {"==": [{"var": "campaign_name"}, "x"]}]}


def _member(position: int, logic=SPEND_OVER, window: str = "yesterday", compare_to: str | None = None,
            scope=None, source: str = CAMPAIGN_METRICS):
    return batch_member(position, str(uuid.uuid4()), source, logic, resolve_window(AT, "UTC", window, compare_to),
                        scope, compare_to is not None)


def test_a_member_reads_its_own_columns_and_parameters():
    member = _member(4)
    plain = compile_logic(SPEND_OVER, field_types(CAMPAIGN_METRICS, False))
    assert member.compiled.variables == plain.variables
    assert "`r4.spend`" in member.compiled.matched and "`spend`" not in member.compiled.matched
    assert sorted(member.compiled.parameters) == ["r4_p0", "r4_p1"]
    assert list(member.compiled.parameters.values()) == list(plain.parameters.values())


def test_members_with_equal_values_have_distinct_parameters_and_every_placeholder_is_given():
    members = [_member(0), _member(1, window="last_7_days", scope={"dsp_type": ["TTD"]}),
               _member(2, window="month_to_date", compare_to="previous_period", scope={"dsp_type": ["TTD"]})]
    for statement in (batch_evaluation(CAMPAIGN_METRICS, 7, members),
                      batch_evaluation_insert(CAMPAIGN_METRICS, 7, members, eval_time=AT, started_at=AT)):
        assert set(PLACEHOLDER.findall(statement.sql)) == set(statement.parameters)
        for member in members:
            assert member.compiled.parameters.items() <= statement.parameters.items()
            assert statement.parameters[f"r{member.position}_rule"] == member.rule_id
    # The two rules scoped alike share one scope group, hence one parameter for it.
    assert [name for name in batch_evaluation(CAMPAIGN_METRICS, 7, members).parameters if name.startswith("b_g")] \
        == ["b_g1_0"]


def test_members_over_the_same_slices_compute_each_field_once():
    spend_sql = "toFloat64(a0_0_sum_spend)"
    alike = batch_evaluation(CAMPAIGN_METRICS, 7, [_member(position) for position in range(5)]).sql
    assert alike.count(spend_sql) == 1
    # Each member still reads its own columns, each a name for the one computed.
    assert all(f"AS `r{position}.spend`" in alike for position in range(5))
    # A member over other slices gets a field of its own.
    apart = batch_evaluation(CAMPAIGN_METRICS, 7, [_member(0), _member(1, window="last_7_days")]).sql
    assert apart.count("AS `r0.spend`") == apart.count("AS `r1.spend`") == 1
    assert len(set(re.findall(r"(\S+) AS `r\d\.spend`", apart))) == 2


def test_a_batch_needs_members_with_distinct_positions_and_a_known_source():
    with pytest.raises(ValueError, match="at least one rule"):
        batch_evaluation(CAMPAIGN_METRICS, 1, [])
    with pytest.raises(ValueError, match="distinct positions"):
        batch_evaluation(CAMPAIGN_METRICS, 1, [_member(3), _member(3)])
    with pytest.raises(ValueError, match="unknown source"):
        batch_evaluation("nope", 1, [_member(0)])
    with pytest.raises(ValueError, match="not negative"):
        _member(-1)


def test_a_member_over_another_source_is_refused():
    pacing = _member(0, logic={">": [{"var": "delivered_amount"}, 0]}, window="today", source=PACING_SNAPSHOTS)
    with pytest.raises(ValueError, match="'delivered_amount', which is not a field of campaign_metrics_daily"):
        batch_evaluation(CAMPAIGN_METRICS, 1, [pacing])


def test_a_logic_the_compiler_refuses_is_refused_for_the_member_too():
    with pytest.raises(NotCompilable):
        _member(0, logic={"var": "prev"}, compare_to="previous_period")


def _statement_bytes(members) -> int:
    return len(batch_evaluation_insert(CAMPAIGN_METRICS, 1, members, eval_time=AT, started_at=AT).sql.encode())


def test_a_large_batch_is_split_into_statements_within_the_caps():
    windows = ["yesterday", "last_7_days", "last_30_days", "month_to_date"]
    wide = {"or": [{">": [{"var": name}, 1]} for name in ("spend", "clicks", "impressions", "ctr", "cpm", "days")]}
    members = [_member(position, wide, windows[position % 4], "previous_period" if position % 3 else None)
               for position in range(3 * MAX_BATCH_RULES + 7)]
    batches = split_batch(CAMPAIGN_METRICS, members)
    assert sorted(member.position for batch in batches for member in batch) == list(range(len(members)))
    assert len(batches) > 3
    for batch in batches:
        assert len(batch) <= MAX_BATCH_RULES
        assert _statement_bytes(batch) <= MAX_STATEMENT_BYTES


def test_large_scopes_split_a_batch_by_the_size_of_its_parameters():
    members = [_member(position, scope={"campaign_id": [f"campaign-{position}-{index:05}" for index in range(400)]})
               for position in range(12)]
    batches = split_batch(CAMPAIGN_METRICS, members)
    assert 1 < len(batches) < len(members)
    for batch in batches:
        parameters = batch_evaluation(CAMPAIGN_METRICS, 1, batch).parameters
        scope_bytes = sum(3 * len(value) + 12 for name, values in parameters.items() if name.startswith("b_g")
                          for value in values)
        assert scope_bytes <= MAX_PARAMETER_BYTES


def test_rules_each_with_a_scope_of_its_own_are_split_by_their_aggregates():
    every_counter = {"or": [{">": [{"var": name}, 1]} for name in ("spend", "clicks", "impressions", "conversions",
                                                                   "days", "campaign_name", "dsp_type")]}
    windows = ["yesterday", "last_7_days", "last_14_days", "last_30_days"]
    members = [_member(position, every_counter, windows[position % 4], "previous_period",
                       {"advertiser_id": [f"adv-{position}"]}) for position in range(80)]
    batches = split_batch(CAMPAIGN_METRICS, members)
    assert len(batches) > 1
    for batch in batches:
        sql = batch_evaluation(CAMPAIGN_METRICS, 1, batch).sql
        assert len(set(re.findall(r" AS (a[0-9]+_[0-9]+_\w+)", sql))) <= MAX_BATCH_AGGREGATES


def test_rules_near_the_compilers_size_limit_are_split():
    large = {"or": [{"==": [{"var": "campaign_name"}, f"name {index}"]} for index in range(600)]}
    members = [_member(position, large) for position in range(4)] + [_member(4)]
    assert len(members[0].compiled.matched) > 20_000
    batches = split_batch(CAMPAIGN_METRICS, members)
    assert len(batches) > 1
    for batch in batches:
        assert _statement_bytes(batch) <= MAX_STATEMENT_BYTES
