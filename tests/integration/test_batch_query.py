"""A batch of rules evaluated in one statement gives exactly the rows of one statement per rule, byte for byte.

On the embedded ClickHouse, for generated batches of both sources: every kind of window, with and without the
previous period, scoped or not (rules sharing a scope and rules with scopes of their own), over generated rows
plus fixed ones that every example holds: entities missing from some windows, zero denominators (NaN- and
Infinity-prone ratios), NUL, quotes and backslashes in names, decimals and counters at their limits, campaigns
whose name, advertiser and DSP change from date to date, snapshots exactly at T and one second after it. Each
batch runs as an INSERT, compared with one engine.query.evaluation_insert per rule, and as a dry SELECT, compared
with one engine.query.evaluation per rule.
"""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from engine.batch_query import (MAX_BATCH_RULES, MAX_STATEMENT_BYTES, batch_evaluation, batch_evaluation_insert,
                                batch_member, split_batch)
from engine.compiler import compile_logic
from engine.fields import CAMPAIGN_METRICS, PACING_SNAPSHOTS, FieldType, field_types
from engine.query import entity_rows, evaluation, evaluation_insert
from engine.windows import resolve_window

# Recent enough for rule_evaluations' 90-day TTL, old enough that each window has a past.
_NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=3)
EVALUATION_TIMES = [
    _NOW + timedelta(minutes=17, seconds=41),
    _NOW.replace(hour=23, minute=59, second=59),
    # The first day of a month, early and late: month_to_date is one day long.
    (_NOW - timedelta(days=35)).replace(day=1, hour=0, minute=30),
    (_NOW - timedelta(days=35)).replace(day=1, hour=22, minute=5),
]
TIMEZONES = ["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata", "Pacific/Kiritimati", "America/St_Johns"]
WINDOWS = ["today", "yesterday", "last_1_days", "last_7_days", "last_14_days", "last_30_days", "last_45_days",
           "last_90_days", "month_to_date", "lifetime"]
SCOPES = {
    CAMPAIGN_METRICS: [None, None, {}, {"dsp_type": ["DV360", "TTD"]}, {"dsp_type": ["TTD", "DV360", "TTD"]},
                       {"dsp_type": ["META"]}, {"campaign_id": ["c1", "fixed-nul", "c3"]},
                       {"advertiser_id": ["adv-1", "a'b"], "dsp_type": ["DV360", "META"]}],
    PACING_SNAPSHOTS: [None, None, {}, {"entity_type": ["io"]}, {"entity_type": ["line_item", "campaign"]},
                       {"entity_id": ["e1", "it's \"q\"\x00"]}, {"entity_type": ["io"], "entity_id": ["e1", "e2"]}],
}
ORGS = itertools.count(1)

NAMES = ["", "Campaign 7", "a\x00b", "it's", 'say "hi"', "back\\slash", "é😀", "\u2028", "-- x", "{p0:String}"]
ADVERTISERS = ["adv-1", "adv-2", "", "a'b"]
DSPS = ["DV360", "TTD", "META"]
COUNTS = [0, 0, 1, 7, 1000, 2**63, 2**64 - 1]
SPENDS = [Decimal(text) for text in ("0", "0.0001", "12.3456", "99999999999999.9999", "-99999999999999.9999")]
AMOUNTS = SPENDS
RATES = [Decimal(text) for text in ("0", "1.25", "999999.9999", "-999999.9999")]
DAYS = [0, 1, 65535]
PACING_ENTITIES = [("campaign", "e1"), ("io", "e1"), ("io", "e2"), ("line_item", "e2"),
                   ("line_item", "it's \"q\"\x00"), ("io", "é😀")]

_CAMPAIGN_COLUMNS = ["org_id", "date", "dsp_type", "campaign_id", "campaign_name", "advertiser_id", "impressions",
                     "clicks", "conversions", "spend", "cpm", "ctr", "cvr"]
_PACING_COLUMNS = ["org_id", "snapshot_time", "entity_type", "entity_id", "booked_amount", "delivered_amount",
                   "pacing_rate", "days_elapsed", "days_remaining", "projected_spend", "margin_percent"]


def _campaign_row(org: int, day: date, campaign: str, values: dict) -> list:
    return [org, day, values["dsp_type"], campaign, values["campaign_name"], values["advertiser_id"],
            values["impressions"], values["clicks"], values["conversions"], values["spend"], 0, 0, 0]


CAMPAIGN_VALUES = st.fixed_dictionaries({
    "dsp_type": st.sampled_from(DSPS), "campaign_name": st.sampled_from(NAMES),
    "advertiser_id": st.sampled_from(ADVERTISERS), "impressions": st.sampled_from(COUNTS),
    "clicks": st.sampled_from(COUNTS), "conversions": st.sampled_from(COUNTS), "spend": st.sampled_from(SPENDS),
})
# Days before the organization's today: -1 is tomorrow (never read), 250 only lifetime reads.
AGES = st.one_of(st.integers(-1, 70), st.integers(71, 200), st.just(250))
CAMPAIGN_DATA = st.dictionaries(st.tuples(st.sampled_from(["c1", "c2", "c3", "c4"]), AGES), CAMPAIGN_VALUES,
                                max_size=40)


def _fixed_campaign_rows(org: int, today: date) -> list[list]:
    """Rows every example holds: attributes changing across dates, zero denominators, limits, long gaps."""
    rows = []
    for age, name, advertiser, dsp in [(0, "a\x00b'\"\\", "adv-1", "DV360"), (1, "yesterday's", "adv-2", "TTD"),
                                       (8, "", "a'b", "META"), (31, "old \x00", "adv-1", "TTD"),
                                       (100, "ancient", "", "DV360")]:
        rows.append(_campaign_row(org, today - timedelta(days=age), "fixed-nul", {
            "dsp_type": dsp, "campaign_name": name, "advertiser_id": advertiser, "impressions": 2**64 - 1,
            "clicks": 0, "conversions": 5, "spend": Decimal("99999999999999.9999")}))
    # 64 days apart, too: a slice of over 64 days must still count them as two dates.
    for age in (2, 15, 16, 66, 80):
        rows.append(_campaign_row(org, today - timedelta(days=age), "fixed-zero", {
            "dsp_type": "META", "campaign_name": "zero", "advertiser_id": "adv-2", "impressions": 0, "clicks": 0,
            "conversions": 0, "spend": Decimal("-0.0001")}))
    return rows


PACING_VALUES = st.fixed_dictionaries({
    "booked_amount": st.sampled_from(AMOUNTS), "delivered_amount": st.sampled_from(AMOUNTS),
    "pacing_rate": st.sampled_from(RATES), "days_elapsed": st.sampled_from(DAYS),
    "days_remaining": st.sampled_from(DAYS), "projected_spend": st.sampled_from(AMOUNTS),
    "margin_percent": st.sampled_from(RATES),
})
# A snapshot's time: (days before today, seconds after that local midnight), or an offset in seconds from T.
SNAPSHOT_TIMES = st.one_of(
    st.tuples(st.integers(0, 70), st.sampled_from([0, 1, 3599, 43200, 86399]) | st.integers(0, 86399)),
    st.sampled_from([0, 1, -1, 2]),
)
PACING_DATA = st.dictionaries(st.tuples(st.sampled_from(PACING_ENTITIES), SNAPSHOT_TIMES), PACING_VALUES,
                              max_size=40)


def _snapshot_instant(when, at: datetime, zone: ZoneInfo, today: date) -> datetime:
    if isinstance(when, int):
        return at + timedelta(seconds=when)
    age, seconds = when
    midnight = datetime.combine(today - timedelta(days=age), time(0), tzinfo=zone).astimezone(UTC)
    return midnight + timedelta(seconds=seconds)


def _pacing_row(org: int, instant: datetime, entity: tuple[str, str], values: dict) -> list:
    return [org, instant, *entity, values["booked_amount"], values["delivered_amount"], values["pacing_rate"],
            values["days_elapsed"], values["days_remaining"], values["projected_spend"], values["margin_percent"]]


def _fixed_pacing_rows(org: int, at: datetime) -> list[list]:
    """Snapshots every example holds: exactly at T, one second after T (never read), and weeks before."""
    values = {"booked_amount": Decimal("99999999999999.9999"), "delivered_amount": Decimal("0"),
              "pacing_rate": Decimal("-999999.9999"), "days_elapsed": 65535, "days_remaining": 0,
              "projected_spend": Decimal("0.0001"), "margin_percent": Decimal("999999.9999")}
    return [_pacing_row(org, at, ("line_item", "fixed"), values),
            _pacing_row(org, at + timedelta(seconds=1), ("line_item", "fixed"), {**values, "delivered_amount": 1}),
            _pacing_row(org, at - timedelta(days=20), ("line_item", "fixed"), {**values, "booked_amount": 1}),
            _pacing_row(org, at - timedelta(days=40), ("io", "it's \"q\"\x00"), values)]


def _condition(field: str, kind: FieldType, choice: int, fields: list[str]) -> dict:
    """A condition reading `field`; number fields may be divided by another (by zero, too)."""
    variable = {"var": field}
    if kind is FieldType.STRING:
        return [{"==": [variable, ""]}, {"in": ["'", variable]}, {"!!": [variable]}, {"<": [variable, "m"]}][choice]
    other = {"var": fields[choice % len(fields)]}
    return [{">": [variable, 0]}, {"==": [variable, 0]}, {"<": [{"/": [variable, other]}, 1]},
            {"!!": [variable]}][choice]


@st.composite
def _rule(draw, source: str) -> dict:
    window = draw(st.sampled_from(WINDOWS))
    compare_to = None if window == "lifetime" else draw(st.sampled_from([None, "previous_period"]))
    fields = field_types(source, compare_to is not None)
    numbers = sorted(name for name, kind in fields.items() if kind is FieldType.NUMBER)
    read = draw(st.lists(st.sampled_from(sorted(fields)), min_size=1, max_size=6, unique=True))
    conditions = [_condition(name, fields[name], draw(st.integers(0, 3)), numbers) for name in read]
    logic = {draw(st.sampled_from(["and", "or"])): conditions}
    return {"rule_id": str(uuid.uuid4()), "window": window, "compare_to": compare_to,
            "scope": draw(st.sampled_from(SCOPES[source])), "logic": logic}


def _stored(ch, org: int, eval_time: datetime) -> list[tuple]:
    return sorted(ch.query(
        "SELECT toString(rule_id), entity_id, matched, condition_results FROM rule_evaluations "
        "WHERE org_id = {org:UInt32} AND eval_time = {at:DateTime('UTC')}",
        parameters={"org": org, "at": eval_time.strftime("%Y-%m-%d %H:%M:%S")},
    ).result_rows)


def _compare_with_separate_runs(ch, source: str, org: int, at: datetime, timezone: str,
                                rules: list[dict]) -> list[tuple]:
    """Runs the rules one statement each and as a batch (insert and dry; in the statements split_batch cuts it into,
    as a worker runs it, when one would pass ClickHouse's limits), compares their rows, returns them."""
    separate_at, batch_at = at, at + timedelta(seconds=1)
    members, dry_rows = [], []
    for position, rule in enumerate(rules):
        with_previous = rule["compare_to"] is not None
        bounds = resolve_window(at, timezone, rule["window"], rule["compare_to"])
        compiled = compile_logic(rule["logic"], field_types(source, with_previous))
        entities = entity_rows(source, org, bounds, rule["scope"], with_previous, compiled.variables)
        insert = evaluation_insert(entities, compiled, source, org_id=org, rule_id=rule["rule_id"],
                                   eval_time=separate_at, started_at=separate_at)
        ch.command(insert.sql, parameters=insert.parameters)
        dry = evaluation(entities, compiled, source)
        dry_rows += [(rule["rule_id"], *row) for row in ch.query(dry.sql, parameters=dry.parameters).result_rows]
        # Positions need not be consecutive, only distinct.
        members.append(batch_member(3 * position + 1, rule["rule_id"], source, rule["logic"], bounds, rule["scope"],
                                    with_previous))
    batch_dry_rows = []
    for batch_members in split_batch(source, members):
        batch = batch_evaluation_insert(source, org, batch_members, eval_time=batch_at, started_at=batch_at)
        ch.command(batch.sql, parameters=batch.parameters)
        dry = batch_evaluation(source, org, batch_members)
        batch_dry_rows += [tuple(row) for row in ch.query(dry.sql, parameters=dry.parameters).result_rows]
    separate = _stored(ch, org, separate_at)
    assert _stored(ch, org, batch_at) == separate
    assert sorted(batch_dry_rows) == sorted(dry_rows)
    return separate


@pytest.fixture
def metrics(ch, migrated_ch_url):
    """The test database's client, with every migration applied."""
    return ch


EXAMPLES = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@EXAMPLES
@given(at=st.sampled_from(EVALUATION_TIMES), timezone=st.sampled_from(TIMEZONES), data=CAMPAIGN_DATA,
       rules=st.lists(_rule(CAMPAIGN_METRICS), min_size=1, max_size=6))
def test_a_campaign_batch_writes_the_rows_of_separate_runs(metrics, at, timezone, data, rules):
    org = next(ORGS)
    today = resolve_window(at, timezone, "today").today
    rows = _fixed_campaign_rows(org, today) + [
        _campaign_row(org, today - timedelta(days=age), campaign, values) for (campaign, age), values in data.items()
    ]
    # Another organization's rows, which no rule reads.
    rows += [[org + 1_000_000, *row[1:]] for row in rows[:3]]
    metrics.insert("campaign_metrics_daily", rows, column_names=_CAMPAIGN_COLUMNS)
    rows = _compare_with_separate_runs(metrics, CAMPAIGN_METRICS, org, at, timezone, rules)
    event(f"matched rows: {'some' if any(row[2] for row in rows) else 'none'}")


@EXAMPLES
@given(at=st.sampled_from(EVALUATION_TIMES), timezone=st.sampled_from(TIMEZONES), data=PACING_DATA,
       rules=st.lists(_rule(PACING_SNAPSHOTS), min_size=1, max_size=6))
def test_a_pacing_batch_writes_the_rows_of_separate_runs(metrics, at, timezone, data, rules):
    org = next(ORGS)
    zone, today = ZoneInfo(timezone), resolve_window(at, timezone, "today").today
    # One snapshot per entity and instant: the latest snapshot of an entity is then never a tie.
    snapshots = {(entity, _snapshot_instant(when, at, zone, today)): values for (entity, when), values in data.items()}
    rows = _fixed_pacing_rows(org, at) + [
        _pacing_row(org, instant, entity, values) for (entity, instant), values in snapshots.items()
        if entity != ("line_item", "fixed")
    ]
    rows += [[org + 1_000_000, *row[1:]] for row in rows[:2]]
    metrics.insert("pacing_snapshots", rows, column_names=_PACING_COLUMNS)
    rows = _compare_with_separate_runs(metrics, PACING_SNAPSHOTS, org, at, timezone, rules)
    event(f"matched rows: {'some' if any(row[2] for row in rows) else 'none'}")


def test_every_window_and_scope_in_one_batch(metrics):
    """One batch holding every window with and without its previous period, each under two scopes (cut in two or
    more statements on the dates where the windows' boundaries make its text pass ClickHouse's limit)."""
    org, at, timezone = next(ORGS), EVALUATION_TIMES[0], "Europe/Paris"
    today = resolve_window(at, timezone, "today").today
    rows = _fixed_campaign_rows(org, today)
    for age in range(0, 70, 3):
        for index, campaign in enumerate(["c1", "c2", "c3"]):
            rows.append(_campaign_row(org, today - timedelta(days=age + index), campaign, {
                "dsp_type": DSPS[(age + index) % 3], "campaign_name": NAMES[(age * 7 + index) % len(NAMES)],
                "advertiser_id": ADVERTISERS[age % 4], "impressions": COUNTS[age % 7], "clicks": COUNTS[index],
                "conversions": age, "spend": SPENDS[(age + index) % 5]}))
    metrics.insert("campaign_metrics_daily", rows, column_names=_CAMPAIGN_COLUMNS)
    every_field = sorted(field_types(CAMPAIGN_METRICS, True))
    rules = []
    for window, compare_to, scope in itertools.product(WINDOWS, [None, "previous_period"],
                                                        [None, {"dsp_type": ["DV360", "TTD"]}]):
        if window == "lifetime" and compare_to:
            continue
        fields = [name for name in every_field if compare_to or not name.startswith("prev.")]
        rules.append({"rule_id": str(uuid.uuid4()), "window": window, "compare_to": compare_to, "scope": scope,
                      "logic": {"or": [{"!!": [{"var": name}]} for name in fields]}})
    rows = _compare_with_separate_runs(metrics, CAMPAIGN_METRICS, org, at, timezone, rules)
    assert {row[0] for row in rows} == {rule["rule_id"] for rule in rules}, "every rule has entities"


def test_the_text_attributes_of_a_short_slice_read_apart_give_the_rows_of_separate_runs(metrics):
    """Yesterday's name, DSP and advertiser, read by a scan of yesterday alone beside a 30-day aggregation, are
    those of separate runs: for campaigns renamed over the month, without data yesterday, or with data only then."""
    org, at, timezone = next(ORGS), EVALUATION_TIMES[0], "UTC"
    today = resolve_window(at, timezone, "today").today
    rows = _fixed_campaign_rows(org, today)
    for age in range(1, 31):
        for index, campaign in enumerate(["renamed", "quiet-yesterday", "only-yesterday"]):
            if (campaign == "quiet-yesterday" and age == 1) or (campaign == "only-yesterday" and age > 1):
                continue
            rows.append(_campaign_row(org, today - timedelta(days=age), campaign, {
                "dsp_type": DSPS[(age + index) % 3], "campaign_name": NAMES[(age + index) % len(NAMES)],
                "advertiser_id": ADVERTISERS[age % 4], "impressions": COUNTS[age % 7], "clicks": COUNTS[index],
                "conversions": age, "spend": SPENDS[(age + index) % 5]}))
    metrics.insert("campaign_metrics_daily", rows, column_names=_CAMPAIGN_COLUMNS)
    texts = {"or": [{"!!": [{"var": name}]} for name in ("campaign_name", "dsp_type", "advertiser_id")]}
    rules = [{"rule_id": str(uuid.uuid4()), "window": "yesterday", "compare_to": None, "scope": scope,
              "logic": texts} for scope in (None, {"dsp_type": ["DV360", "TTD"]})]
    rules.append({"rule_id": str(uuid.uuid4()), "window": "last_30_days", "compare_to": None, "scope": None,
                  "logic": {">": [{"var": "spend"}, 0]}})
    members = [batch_member(position, rule["rule_id"], CAMPAIGN_METRICS, rule["logic"],
                            resolve_window(at, timezone, rule["window"], None), rule["scope"], False)
               for position, rule in enumerate(rules)]
    assert "JOIN" in batch_evaluation(CAMPAIGN_METRICS, org, members).sql, "yesterday's texts are read apart"
    rows = _compare_with_separate_runs(metrics, CAMPAIGN_METRICS, org, at, timezone, rules)
    yesterday = {row[1] for row in rows if row[0] == rules[0]["rule_id"]}
    assert {"renamed", "only-yesterday"} <= yesterday and "quiet-yesterday" not in yesterday


def test_days_in_a_slice_longer_than_64_days(metrics):
    """A lone last_90_days rule reads one slice of 90 days (180 with its previous period), where dates 64 days
    apart must count as two."""
    org, at, timezone = next(ORGS), EVALUATION_TIMES[0], "UTC"
    today = resolve_window(at, timezone, "today").today
    metrics.insert("campaign_metrics_daily", _fixed_campaign_rows(org, today), column_names=_CAMPAIGN_COLUMNS)
    rules = [{"rule_id": str(uuid.uuid4()), "window": window, "compare_to": compare_to, "scope": None,
              "logic": {"<": [{"var": "days"}, 100]}} for window, compare_to in [("last_90_days", None),
                                                                               ("lifetime", None)]]
    for rule in rules:
        rows = _compare_with_separate_runs(metrics, CAMPAIGN_METRICS, org, at, timezone, [rule])
        assert '"days":5' in dict((row[1], row[3]) for row in rows)["fixed-zero"]


def test_batches_at_their_caps_run_and_write_the_rows_of_separate_runs(metrics):
    """More rules than one batch takes, with logic large enough that statements near the size cap are built."""
    org, at, timezone = next(ORGS), EVALUATION_TIMES[0], "Asia/Kolkata"
    today = resolve_window(at, timezone, "today").today
    # A META campaign today, so that every window and scope below has an entity on the first day of a month too.
    meta_today = _campaign_row(org, today, "meta-today", {
        "dsp_type": "META", "campaign_name": "m", "advertiser_id": "adv-1", "impressions": 1, "clicks": 1,
        "conversions": 0, "spend": Decimal("1")})
    metrics.insert("campaign_metrics_daily", _fixed_campaign_rows(org, today) + [meta_today],
                   column_names=_CAMPAIGN_COLUMNS)
    fields = sorted(field_types(CAMPAIGN_METRICS, True))
    windows = ["yesterday", "last_7_days", "last_30_days", "month_to_date", "lifetime"]
    members = []
    for position in range(MAX_BATCH_RULES + 30):
        window = windows[position % 5]
        compare_to = "previous_period" if position % 2 and window != "lifetime" else None
        logic = {"or": [{"==": [{"var": name}, f"value {position} {index}"]} for index, name in enumerate(fields)
                        if compare_to or not name.startswith("prev.")]}
        bounds = resolve_window(at, timezone, window, compare_to)
        member = batch_member(position, str(uuid.uuid4()), CAMPAIGN_METRICS, logic, bounds,
                              [None, {"dsp_type": ["META"]}][position % 2], compare_to is not None)
        members.append(member)
        compiled = compile_logic(logic, field_types(CAMPAIGN_METRICS, compare_to is not None))
        entities = entity_rows(CAMPAIGN_METRICS, org, bounds, member.scope, member.with_previous, compiled.variables)
        insert = evaluation_insert(entities, compiled, CAMPAIGN_METRICS, org_id=org, rule_id=member.rule_id,
                                   eval_time=at, started_at=at)
        metrics.command(insert.sql, parameters=insert.parameters)
    batches = split_batch(CAMPAIGN_METRICS, members)
    statements = [batch_evaluation_insert(CAMPAIGN_METRICS, org, batch, eval_time=at + timedelta(seconds=1),
                                          started_at=at) for batch in batches]
    assert max(len(statement.sql.encode()) for statement in statements) > MAX_STATEMENT_BYTES // 2
    for statement in statements:
        metrics.command(statement.sql, parameters=statement.parameters)
    separate = _stored(metrics, org, at)
    assert len({row[0] for row in separate}) == len(members)
    assert _stored(metrics, org, at + timedelta(seconds=1)) == separate
