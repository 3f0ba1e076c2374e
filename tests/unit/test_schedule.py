"""worker/schedule.py without servers: fire times, broken rows, and the Timetable against a tick-by-tick reading."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter

from worker.schedule import (MANUAL, MAX_BATCH_RULES, FireTime, NoFireTimes, ScheduledRule, Timetable, batches,
                             fire_time_at, fire_times_between, latest_fire_time, next_fire_time)

CREATED = datetime(2026, 1, 1, tzinfo=UTC)
EDITED = datetime(2026, 2, 3, 4, 5, 6, tzinfo=UTC)
GOOD_ACTIONS = {"severity": "warning"}


def row(rule_id: str = "r1", schedule: object = "* * * * *", timezone: str | None = "UTC", *,
        conditions: object = None, actions: object = None, version: str = "v1",
        created_at: datetime | None = CREATED, org_id: int = 1, settings: object = None) -> dict:
    """A `schedulable_rules` row; `conditions` replaces the whole document when given."""
    if conditions is None:
        conditions = {"logic": {">": [{"var": "spend"}, 1]}, "schedule": schedule}
    return {"rule_id": rule_id, "org_id": org_id, "version": version, "conditions": conditions,
            "actions": GOOD_ACTIONS if actions is None else actions, "timezone": timezone,
            "created_at": created_at.replace(tzinfo=None) if created_at else None,
            "edited_at": EDITED.replace(tzinfo=None), "settings": {} if settings is None else settings}


def rule(*args, **kwargs) -> ScheduledRule:
    return ScheduledRule.from_row(row(*args, **kwargs))


def deep_logic(levels: int) -> dict:
    logic: object = {"var": "spend"}
    for _ in range(levels):
        logic = {"!": [logic]}
    return logic


# --- fire times ---------------------------------------------------------------------------------------------------


def test_the_latest_fire_time_is_at_or_before_now_and_never_before_the_rule_existed():
    hourly = rule(schedule="0 * * * *")
    assert latest_fire_time(hourly, datetime(2026, 3, 1, 10, 0, 0, tzinfo=UTC)) == datetime(2026, 3, 1, 10, tzinfo=UTC)
    assert latest_fire_time(hourly, datetime(2026, 3, 1, 10, 59, 59, tzinfo=UTC)) == datetime(2026, 3, 1, 10,
                                                                                              tzinfo=UTC)
    young = ScheduledRule.from_row(row(schedule="0 * * * *", created_at=datetime(2026, 3, 1, 10, 20, tzinfo=UTC)))
    assert latest_fire_time(young, datetime(2026, 3, 1, 10, 30, tzinfo=UTC)) is None
    assert latest_fire_time(young, datetime(2026, 3, 1, 11, 0, tzinfo=UTC)) == datetime(2026, 3, 1, 11, tzinfo=UTC)
    assert next_fire_time(hourly, datetime(2026, 3, 1, 10, 0, 0, tzinfo=UTC)) == datetime(2026, 3, 1, 11, tzinfo=UTC)


def test_fire_times_are_in_the_organizations_timezone_across_dst():
    paris = rule(schedule="30 2 * * *", timezone="Europe/Paris")
    # 2026-03-29: 02:00 becomes 03:00 in Paris; the skipped 02:30 fires at the first instant after the gap.
    assert next_fire_time(paris, datetime(2026, 3, 28, 23, 0, tzinfo=UTC)) == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
    # 2026-10-25: 03:00 becomes 02:00 again; 02:30 comes twice and fires once, at the first 02:30 (CEST).
    table = Timetable()
    start = datetime(2026, 10, 24, 23, 0, tzinfo=UTC)
    table.update({paris.rule_id}, [paris], start)
    fired = []
    for minute in range(0, 5 * 60):
        fires = table.due(start + timedelta(minutes=minute))
        table.sent(fires)
        fired += [fire.scheduled_for for fire in fires]
    assert fired == [datetime(2026, 10, 24, 0, 30, tzinfo=UTC), datetime(2026, 10, 25, 0, 30, tzinfo=UTC)]


def test_backfill_fire_times_cover_the_local_dates_of_the_range():
    moments = list(fire_times_between("0 9 * * *", "Asia/Kolkata", date(2026, 11, 1), date(2026, 11, 3)))
    assert moments == [datetime(2026, 11, day, 3, 30, tzinfo=UTC) for day in (1, 2, 3)]


# --- broken rows --------------------------------------------------------------------------------------------------

BROKEN_ROWS = {
    "a bad cron": (row(schedule="61 * * * *"), False),
    "an unknown timezone": (row(timezone="Mars/Olympus"), False),
    "a schedule that is not text": (row(schedule=5), False),
    "conditions that are not an object": (row(conditions="spend > 1"), True),
    "logic 400 levels deep": (row(conditions={"logic": deep_logic(400)}), True),
    "a window of the wrong type": (row(conditions={"logic": {"var": "spend"}, "window": 7}), True),
    "an unknown window": (row(conditions={"logic": {"var": "spend"}, "window": "last_fortnight"}), True),
    "actions of the wrong type": (row(actions=["notify"]), True),
}


@pytest.mark.parametrize("name", sorted(BROKEN_ROWS))
def test_any_broken_row_is_read_and_says_what_is_wrong(name):
    broken_row, fires = BROKEN_ROWS[name]
    broken = ScheduledRule.from_row(broken_row)
    assert broken.problem
    now = datetime(2026, 3, 1, 10, 0, 30, tzinfo=UTC)
    if fires:
        assert latest_fire_time(broken, now) is not None
        assert fire_time_at(broken, now) == FireTime("r1", datetime(2026, 3, 1, 10, 0, tzinfo=UTC))
    else:
        with pytest.raises(NoFireTimes):
            next_fire_time(broken, now)
        assert fire_time_at(broken, now) == FireTime("r1", EDITED)


def test_a_valid_rule_has_no_problem_and_a_bare_logic_document_fires_on_the_default_schedule():
    assert rule().problem is None
    bare = ScheduledRule.from_row(row(conditions={">": [{"var": "spend"}, 1]}))
    assert (bare.problem, bare.schedule) == (None, "0 * * * *")


def test_a_naming_rule_is_valid_with_its_organizations_convention_and_broken_without_it():
    convention = {"delimiter": "_", "tokens": [{"name": "market", "values": ["US", "EU"]}]}
    conditions = {"logic": {"naming": [{"var": "campaign_name"}, "campaign"]}, "schedule": "* * * * *"}
    with_it = ScheduledRule.from_row(row(conditions=conditions,
                                         settings={"naming_conventions": {"campaign": convention}}))
    without_it = ScheduledRule.from_row(row(conditions=conditions))
    assert (with_it.problem, with_it.source) == (None, "campaign_metrics_daily")
    assert "campaign" in without_it.problem and without_it.source is None


def test_a_valid_cron_that_never_fires_sends_nothing_and_is_logged_once(caplog):
    never = rule("never", schedule="0 0 31 2 *")
    assert never.problem is None
    with pytest.raises(NoFireTimes):
        next_fire_time(never, CREATED)
    table = Timetable()
    with caplog.at_level(logging.WARNING, logger="worker.schedule"):
        table.update({"never"}, [never], CREATED)
        for minute in range(3):
            assert table.due(CREATED + timedelta(minutes=minute)) == []
    assert [record.getMessage().split(":")[0] for record in caplog.records] == ["rule never never fires"]
    assert fire_time_at(never, CREATED) is None


def test_a_manual_fire_time_says_so_in_its_task_arguments():
    at = datetime(2026, 3, 1, 10, 0, 7, tzinfo=UTC)
    assert FireTime("r1", at).task_kwargs() == {"scheduled_for": "2026-03-01T10:00:07Z"}
    assert FireTime("r1", at, MANUAL).task_kwargs() == {"scheduled_for": "2026-03-01T10:00:07Z", "trigger": "manual"}


# --- the Timetable ------------------------------------------------------------------------------------------------


def test_broken_rules_never_stop_the_others_and_are_logged_once_per_version(caplog):
    table = Timetable()
    rules = [rule("good")] + [ScheduledRule.from_row({**broken_row, "rule_id": name})
                              for name, (broken_row, _) in BROKEN_ROWS.items()]
    now = datetime(2026, 3, 1, 10, 0, 30, tzinfo=UTC)
    with caplog.at_level(logging.WARNING, logger="worker.schedule"):
        table.update({r.rule_id for r in rules}, rules, now)
        first = table.due(now)
        table.sent(first)
        for minute in range(1, 4):
            later = now + timedelta(minutes=minute)
            table.update({r.rule_id for r in rules}, [], later)
            table.sent(table.due(later))
    lines = [record.getMessage() for record in caplog.records]
    assert sorted(name for name in BROKEN_ROWS if any(f"rule {name} " in line for line in lines)) == sorted(
        BROKEN_ROWS)
    assert len(lines) == len(BROKEN_ROWS)
    by_rule = {fire.rule_id: fire.scheduled_for for fire in first}
    assert by_rule["good"] == datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
    for name, (_, fires) in BROKEN_ROWS.items():
        assert by_rule[name] == (datetime(2026, 3, 1, 10, 0, tzinfo=UTC) if fires else EDITED), name

    # An edited row is logged again and, with no fire times, sent once more as of its new edit.
    edited = ScheduledRule.from_row({**row("a bad cron", schedule="62 * * * *"), "version": "v2",
                                     "edited_at": datetime(2026, 3, 1, 10, 4, 1)})
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="worker.schedule"):
        table.update({r.rule_id for r in rules}, [edited], now + timedelta(minutes=4))
    assert len(caplog.records) == 1 and "a bad cron" in caplog.records[0].getMessage()
    assert [fire for fire in table.due(now + timedelta(minutes=4, seconds=1)) if fire.rule_id == "a bad cron"] == [
        FireTime("a bad cron", datetime(2026, 3, 1, 10, 4, 1, tzinfo=UTC))]


def test_a_fire_time_the_broker_refused_is_due_again_on_the_next_tick():
    table = Timetable()
    every = rule("every")
    now = datetime(2026, 3, 1, 10, 0, 1, tzinfo=UTC)
    table.update({"every"}, [every], now)
    [fire] = table.due(now)
    table.unsent([fire], now)
    assert table.due(now + timedelta(seconds=5)) == [fire]
    table.sent([fire])
    assert table.due(now + timedelta(seconds=10)) == []
    assert table.next_due() == datetime(2026, 3, 1, 10, 1, tzinfo=UTC)


def test_after_downtime_only_the_latest_missed_fire_time_is_due_and_a_dropped_rule_is_forgotten():
    table = Timetable()
    now = datetime(2026, 3, 1, 10, 0, 1, tzinfo=UTC)
    table.update({"every"}, [rule("every")], now)
    table.sent(table.due(now))
    later = now + timedelta(minutes=7, seconds=30)
    assert table.due(later) == [FireTime("every", datetime(2026, 3, 1, 10, 7, tzinfo=UTC))]
    table.update(set(), [], later)
    assert (len(table), table.due(later + timedelta(minutes=5)), table.next_due()) == (0, [], None)


ZONES_AND_DAYS = [("Europe/Paris", datetime(2026, 3, 28, 22, tzinfo=UTC)),
                  ("Europe/Paris", datetime(2026, 10, 24, 22, tzinfo=UTC)),
                  ("America/New_York", datetime(2026, 3, 8, 4, tzinfo=UTC)),
                  ("America/New_York", datetime(2026, 11, 1, 3, tzinfo=UTC)),
                  ("Asia/Kolkata", datetime(2026, 3, 1, tzinfo=UTC))]
CRONS = ["* * * * *", "*/15 * * * *", "0 * * * *", "30 2 * * *", "0 2 * * *", "15 1 * * *", "59 1 * * *",
         "0 3 * * 0"]


def former_latest_fire_time(rule: ScheduledRule, now: datetime) -> datetime | None:
    """The former beat's reading of a rule on every tick, with a croniter of its own: the reference."""
    local_now = now.astimezone(ZoneInfo(rule.timezone)).replace(microsecond=0)
    fired = croniter(rule.schedule, local_now + timedelta(seconds=1)).get_prev(datetime).astimezone(UTC)
    return fired if fired >= rule.not_before.replace(second=0, microsecond=0) else None


@pytest.mark.parametrize("zone,start", ZONES_AND_DAYS)
def test_the_timetable_sends_what_a_tick_by_tick_reading_of_every_rule_sends(zone, start):
    """The former beat computed every rule's latest fire time on every tick; the Timetable computes a cron only when
    a rule is due. Over six hours around a DST change, ticking every 20 s, both send the same (rule, T), but for
    one thing: when a repeated hour ends, the tick-by-tick reading sent that hour's fire time a second time, late
    (croniter reads the ambiguous wall time the other way then); the Timetable fires a repeated hour once."""
    # The same crons in a second timezone too: a parsed cron is shared by every rule that has it.
    rules = [ScheduledRule.from_row({**row(f"{where}{i}", cron, where_zone), "created_at": (start - timedelta(days=1))
                                     .replace(tzinfo=None)})
             for where, where_zone in (("r", zone), ("k", "Asia/Kolkata")) for i, cron in enumerate(CRONS)]
    table = Timetable()
    table.update({r.rule_id for r in rules}, rules, start)
    reference_sent: dict[str, datetime] = {}
    by_reference, by_table = [], []
    for step in range(6 * 180):
        now = start + timedelta(seconds=20 * step)
        for scheduled in rules:
            due = former_latest_fire_time(scheduled, now)
            if due is not None and reference_sent.get(scheduled.rule_id) != due:
                reference_sent[scheduled.rule_id] = due
                by_reference.append((scheduled.rule_id, due))
        fires = table.due(now)
        table.sent(fires)
        by_table += [(fire.rule_id, fire.scheduled_for) for fire in fires]
    assert set(by_table) <= set(by_reference) and len(by_table) == len(set(by_table))
    local = ZoneInfo(zone)
    wall_times = {(rule_id, moment.astimezone(local).replace(tzinfo=None)) for rule_id, moment in by_table}
    for rule_id, moment in set(by_reference) - set(by_table):
        assert rule_id.startswith("r"), (rule_id, moment)
        assert (rule_id, moment.astimezone(local).replace(tzinfo=None)) in wall_times, (rule_id, moment)
    assert len(by_table) > 2 * 5 * 60  # the every-minute rules alone fire some 300 times each


def test_rules_edited_again_and_again_leave_one_live_entry_each():
    table = Timetable()
    now = datetime(2026, 3, 1, 10, 0, 1, tzinfo=UTC)
    yearly = [ScheduledRule.from_row(row(f"y{n}", "0 0 1 1 *", version=f"v{n}")) for n in range(10)]
    for edit in range(500):
        table.update({r.rule_id for r in yearly}, [ScheduledRule.from_row(row(r.rule_id, "0 0 1 1 *",
                                                                             version=f"{edit}"))
                                                   for r in yearly], now)
        table.sent(table.due(now))
    assert len(table._queue) <= 2 * len(yearly) + 1024
    assert table.next_due() == datetime(2027, 1, 1, tzinfo=UTC)


# --- batches ------------------------------------------------------------------------------------------------------

PACING = {"source": "pacing_snapshots", "logic": {"<": [{"var": "pacing_rate"}, 0.5]}, "schedule": "* * * * *"}


def test_a_valid_rule_knows_its_batch_and_a_rule_that_is_not_valid_has_none():
    assert (rule().org_id, rule().source) == (1, "campaign_metrics_daily")
    assert ScheduledRule.from_row(row(conditions={">": [{"var": "spend"}, 1]}, org_id=7)).source == (
        "campaign_metrics_daily")
    assert ScheduledRule.from_row(row(conditions=PACING)).source == "pacing_snapshots"
    for source in ("clicks_hourly", 5, None, ["pacing_snapshots"]):
        unknown = ScheduledRule.from_row(row(conditions={**PACING, "source": source}))
        assert (unknown.source, unknown.problem is not None) == (None, True), source
        assert "conditions.source" in unknown.problem, unknown.problem
    at = datetime(2026, 3, 1, 10, tzinfo=UTC)
    assert rule().fire_time(at).task_name == "rules.evaluate_batch"
    broken = ScheduledRule.from_row(row(conditions={**PACING, "source": "clicks_hourly"}))
    assert (broken.fire_time(at), broken.fire_time(at).task_name) == (FireTime("r1", at), "rules.evaluate")
    assert (broken.fire_time(at).org_id, broken.fire_time(at).source) == (None, None)


def test_fire_times_are_grouped_by_organization_source_time_and_trigger():
    t1, t2 = datetime(2026, 3, 1, 10, tzinfo=UTC), datetime(2026, 3, 1, 10, 1, tzinfo=UTC)
    fires = [FireTime("b", t1, org_id=1, source="campaign_metrics_daily"),
             FireTime("p", t1, org_id=1, source="pacing_snapshots"),
             FireTime("a", t1, org_id=1, source="campaign_metrics_daily"),
             FireTime("x", t1, org_id=2, source="campaign_metrics_daily"),
             FireTime("c", t2, org_id=1, source="campaign_metrics_daily"),
             FireTime("m", t1, MANUAL, org_id=1, source="campaign_metrics_daily"),
             FireTime("broken", t1),
             FireTime("d", t1, org_id=1, source="campaign_metrics_daily")]
    grouped, alone = batches(fires)
    assert [(b.org_id, b.source, b.scheduled_for, b.trigger, [f.rule_id for f in b.fires]) for b in grouped] == [
        (1, "campaign_metrics_daily", t1, "schedule", ["a", "b", "d"]),
        (1, "pacing_snapshots", t1, "schedule", ["p"]),
        (2, "campaign_metrics_daily", t1, "schedule", ["x"]),
        (1, "campaign_metrics_daily", t2, "schedule", ["c"]),
        (1, "campaign_metrics_daily", t1, "manual", ["m"])]
    assert alone == [FireTime("broken", t1)]
    assert sorted([f.rule_id for b in grouped for f in b.fires] + ["broken"]) == sorted(f.rule_id for f in fires)
    assert (grouped[0].task_args(), grouped[0].task_kwargs()) == ((1, "2026-03-01T10:00:00Z", ["a", "b", "d"]), {})
    assert (grouped[-1].task_args(), grouped[-1].task_kwargs()) == ((1, "2026-03-01T10:00:00Z", ["m"]),
                                                                    {"trigger": "manual"})


def test_a_large_organization_is_several_batches_of_at_most_the_cap():
    at = datetime(2026, 3, 1, 10, tzinfo=UTC)
    count = 2 * MAX_BATCH_RULES + 7
    fires = [FireTime(f"r{n:04d}", at, org_id=1, source="campaign_metrics_daily") for n in reversed(range(count))]
    grouped, alone = batches(fires)
    assert ([len(b.fires) for b in grouped], alone) == ([MAX_BATCH_RULES, MAX_BATCH_RULES, 7], [])
    assert [f.rule_id for b in grouped for f in b.fires] == [f"r{n:04d}" for n in range(count)]
    assert batches(fires[:MAX_BATCH_RULES])[0][0].fires == tuple(sorted(fires[:MAX_BATCH_RULES],
                                                                        key=lambda f: f.rule_id))
    assert batches([]) == ([], [])


def test_beats_fire_times_of_two_organizations_and_both_sources_make_one_batch_each_and_broken_rules_go_alone():
    table = Timetable()
    now = datetime(2026, 3, 1, 10, 0, 30, tzinfo=UTC)
    rules = [ScheduledRule.from_row(row(f"o{org}-{kind}{n}", org_id=org, conditions=conditions))
             for org in (1, 2) for kind, conditions in (("m", None), ("p", PACING)) for n in range(3)]
    rules += [ScheduledRule.from_row({**broken_row, "rule_id": f"o1-{name}"}) for name, (broken_row, _) in
              BROKEN_ROWS.items()]
    rules.append(ScheduledRule.from_row(row("o1-unknown source", conditions={**PACING, "source": "clicks"})))
    rules.append(ScheduledRule.from_row(row("o1-hourly", schedule="0 * * * *")))
    table.update({r.rule_id for r in rules}, rules, now)
    grouped, alone = batches(table.due(now))
    minute = datetime(2026, 3, 1, 10, tzinfo=UTC)
    assert sorted((b.org_id, b.source, b.scheduled_for, tuple(f.rule_id for f in b.fires)) for b in grouped) == [
        (1, "campaign_metrics_daily", minute, ("o1-hourly", "o1-m0", "o1-m1", "o1-m2")),
        (1, "pacing_snapshots", minute, ("o1-p0", "o1-p1", "o1-p2")),
        (2, "campaign_metrics_daily", minute, ("o2-m0", "o2-m1", "o2-m2")),
        (2, "pacing_snapshots", minute, ("o2-p0", "o2-p1", "o2-p2"))]
    assert sorted(fire.rule_id for fire in alone) == sorted(
        [f"o1-{name}" for name in BROKEN_ROWS] + ["o1-unknown source"])
    assert {fire.scheduled_for for fire in alone if fire.rule_id == "o1-unknown source"} == {minute}
