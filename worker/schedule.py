"""When rules fire, and the sending of their fire times: the one place that turns rules into (rule, T).

Beat keeps a Timetable of the enabled rules; `rulesctl dispatch` asks which rules fire at a minute; backfill lists
a rule's fire times over a range of dates; beat, dispatch and rules.evaluate_org send what they found through a
FireTimeSender, which first records each (rule, T) in `sent_fire_times` so that beat's sweeper can send again a
fire time whose task was lost before its run was claimed.

The fire times of valid rules are sent in batches: the rules of one organization and one source due at the same T
(and for the same trigger) go as one `rules.evaluate_batch(org_id, scheduled_for, rule_ids)`, at most
MAX_BATCH_RULES to a task. A rule whose document is not valid (an unknown or non-text source included) is sent
alone, as `rules.evaluate(rule_id, scheduled_for=T)`: its run fails with the validation message exactly as it
always has, and it never makes a batch fall back to separate runs.

Fire times come from croniter in the organization's timezone: a time that a DST change skips fires at the first
instant after the gap, a repeated hour fires once, and times before the rule was created don't count. A rule whose
row cannot be read is never an error here: a schedule or timezone that gives no fire times makes it unschedulable,
and it is sent once, as of the row's last change (`edited_at`), so that the run records why it failed; a document
that is not valid still fires on its schedule, and each run fails with the validation message.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from croniter import CroniterError, croniter

from engine.batch_query import MAX_BATCH_RULES
from engine.conventions import conventions_in_settings
from engine.errors import RuleError
from engine.model import DEFAULT_SCHEDULE, parse_rule
from engine.timestamps import utc_iso
from engine.windows import is_known_timezone
from storage.errors import StorageError
from storage.postgres import Postgres

log = logging.getLogger(__name__)

SCHEDULED = "schedule"
MANUAL = "manual"
EVALUATE = "rules.evaluate"
EVALUATE_BATCH = "rules.evaluate_batch"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class NoFireTimes(Exception):
    """A rule's schedule or timezone gives no fire time at all."""


@dataclass(frozen=True)
class ScheduledRule:
    """An enabled rule as the scheduler sees it.

    `schedule` is None when the row's schedule is not text; `problem` says why the document is not valid (None when
    it is); `version` changes whenever anything the schedule, the validation or the batch depends on changes;
    `edited_at` is the row's last change, to the second: the one fire time sent for a rule that has no other.
    `source` is the valid rule's source, which with `org_id` names its batch; None when the document is not valid.
    """

    rule_id: str
    version: str
    schedule: str | None
    timezone: str
    not_before: datetime
    edited_at: datetime
    problem: str | None = None
    org_id: int | None = None
    source: str | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any], allowed_hosts: frozenset[str] = frozenset()) -> ScheduledRule:
        """Reads a `schedulable_rules` row, whatever it holds; a rule without a schedule fires on the default one."""
        conditions = row["conditions"] if isinstance(row["conditions"], dict) else {}
        schedule = conditions.get("schedule", DEFAULT_SCHEDULE) if "logic" in conditions else DEFAULT_SCHEDULE
        timezone = row["timezone"] or "UTC"
        try:
            rule = parse_rule(row["conditions"], row["actions"], timezone=timezone, allowed_hosts=allowed_hosts,
                              conventions=conventions_in_settings(row["settings"]))
            source, problem = rule.conditions.source, None
        except RuleError as error:
            source, problem = None, str(error)
        return cls(row["rule_id"], row["version"], schedule if isinstance(schedule, str) else None, timezone,
                   _aware(row["created_at"]) or _EPOCH, _aware(row["edited_at"]) or _EPOCH, problem, row["org_id"],
                   source)

    def fire_time(self, at: datetime, trigger: str = SCHEDULED) -> FireTime:
        """The rule's fire time as of `at`: in its organization's batch of its source when the rule is valid,
        alone otherwise."""
        if self.problem is None:
            return FireTime(self.rule_id, at, trigger, self.org_id, self.source)
        return FireTime(self.rule_id, at, trigger)


@dataclass(frozen=True)
class FireTime:
    """One (rule, T) to send, by beat or dispatch (`schedule`) or for a user (`manual`).

    A fire time is (rule, T, trigger), as `sent_fire_times` and the claim know it. `org_id` and `source`, given for
    a valid rule only, say which batch it joins; without them it is sent alone, as rules.evaluate.
    """

    rule_id: str
    scheduled_for: datetime
    trigger: str = SCHEDULED
    org_id: int | None = field(default=None, compare=False)
    source: str | None = field(default=None, compare=False)

    @property
    def task_name(self) -> str:
        """The task this fire time is sent in: rules.evaluate_batch, or rules.evaluate when it goes alone."""
        return EVALUATE_BATCH if self.source is not None else EVALUATE

    def task_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of rules.evaluate for this fire time sent alone."""
        kwargs: dict[str, Any] = {"scheduled_for": utc_iso(self.scheduled_for)}
        if self.trigger != SCHEDULED:
            kwargs["trigger"] = self.trigger
        return kwargs


@dataclass(frozen=True)
class Batch:
    """The fire times of one organization and one source at one T, for one trigger: one rules.evaluate_batch."""

    org_id: int
    source: str
    scheduled_for: datetime
    trigger: str
    fires: tuple[FireTime, ...]

    def task_args(self) -> tuple[int, str, list[str]]:
        """(org_id, scheduled_for as UTC ISO 8601, rule ids): the positional arguments of rules.evaluate_batch."""
        return self.org_id, utc_iso(self.scheduled_for), [fire.rule_id for fire in self.fires]

    def task_kwargs(self) -> dict[str, Any]:
        """Nothing for a scheduled batch; `trigger` for any other."""
        return {} if self.trigger == SCHEDULED else {"trigger": self.trigger}

    def __str__(self) -> str:
        """The batch as beat's log names it: organization, source, T, trigger and rule ids."""
        return (f"organization {self.org_id}, {self.source}, as of {utc_iso(self.scheduled_for)}, {self.trigger}, "
                f"rules {', '.join(fire.rule_id for fire in self.fires)}")


def batches(fires: Iterable[FireTime]) -> tuple[list[Batch], list[FireTime]]:
    """`fires` grouped as they are sent: ([batches, each of at most MAX_BATCH_RULES rules in rule id order],
    [fire times sent alone]); batches come in the order their first fire time came."""
    groups: dict[tuple[int, str, datetime, str], list[FireTime]] = {}
    alone = []
    for fire in fires:
        if fire.source is None or fire.org_id is None:
            alone.append(fire)
        else:
            groups.setdefault((fire.org_id, fire.source, fire.scheduled_for, fire.trigger), []).append(fire)
    grouped = []
    for (org_id, source, scheduled_for, trigger), members in groups.items():
        members.sort(key=lambda fire: fire.rule_id)
        # The batch statement's own cap (engine/batch_query.py): one faulty rule sends its whole batch back to
        # separate runs, so a larger batch costs more then; a statement holds only so many rules' logic and
        # columns; and a batch's rules all finish when its last one does, in one worker process. A task of more
        # rules would only run several statements in a row in that process while another one waits idle.
        for start in range(0, len(members), MAX_BATCH_RULES):
            grouped.append(Batch(org_id, source, scheduled_for, trigger,
                                 tuple(members[start:start + MAX_BATCH_RULES])))
    return grouped, alone


def _aware(moment: datetime | None) -> datetime | None:
    return moment.replace(tzinfo=UTC) if moment is not None and moment.tzinfo is None else moment


def _zone(rule: ScheduledRule) -> ZoneInfo:
    if not is_known_timezone(rule.timezone):
        raise NoFireTimes(f"unknown timezone {rule.timezone!r}")
    return ZoneInfo(rule.timezone)


# Parsed crons by expression: making a croniter costs more than stepping it, and few expressions are in use. Each
# is moved to its start before every use (set_current), so one object serves every rule and timezone.
_CRONS: dict[str, croniter] = {}
_MAX_CRONS = 4096


def _times(rule: ScheduledRule, start: datetime) -> croniter:
    if rule.schedule is None:
        raise NoFireTimes("its schedule is not text")
    times = _CRONS.get(rule.schedule)
    if times is None:
        try:
            times = croniter(rule.schedule, start)
        except (CroniterError, ValueError, TypeError) as error:
            raise NoFireTimes(f"schedule {rule.schedule!r}: {error}") from None
        if len(_CRONS) >= _MAX_CRONS:
            _CRONS.clear()
        _CRONS[rule.schedule] = times
    times.set_current(start, force=True)
    return times


def _step(rule: ScheduledRule, start: datetime, forward: bool) -> datetime:
    times = _times(rule, start)
    try:
        return times.get_next(datetime) if forward else times.get_prev(datetime)
    except (CroniterError, ValueError, OverflowError) as error:
        raise NoFireTimes(f"schedule {rule.schedule!r}: {error}") from None


def latest_fire_time(rule: ScheduledRule, now: datetime) -> datetime | None:
    """The last instant at or before `now` (aware) when the rule's cron fires in its timezone, in UTC, or None.

    Times before the rule existed do not count. At a DST change croniter works in local wall time: a time that
    the clocks skip fires at the first instant after the gap, and a repeated hour fires once. Raises NoFireTimes
    when the schedule or timezone gives no fire time.
    """
    local_now = now.astimezone(_zone(rule)).replace(microsecond=0)
    fired = _step(rule, local_now + timedelta(seconds=1), forward=False).astimezone(UTC)
    not_before = rule.not_before.replace(second=0, microsecond=0)
    return fired if fired >= not_before else None


def next_fire_time(rule: ScheduledRule, now: datetime) -> datetime:
    """The first instant after `now` (aware) when the rule's cron fires in its timezone, in UTC.

    Raises NoFireTimes when the schedule or timezone gives no fire time."""
    return _step(rule, now.astimezone(_zone(rule)), forward=True).astimezone(UTC)


def fire_times_between(schedule: str, timezone: str, first_day: date, last_day: date) -> Iterator[datetime]:
    """Every time `schedule` fires on the local dates first_day..last_day of `timezone`, in UTC, in order."""
    zone = ZoneInfo(timezone)
    start = datetime.combine(first_day, time(0), tzinfo=zone) - timedelta(seconds=1)
    end = datetime.combine(last_day + timedelta(days=1), time(0), tzinfo=zone)
    times = croniter(schedule, start)
    while (moment := times.get_next(datetime)) < end:
        yield moment.astimezone(UTC)


def fire_time_at(rule: ScheduledRule, at: datetime) -> FireTime | None:
    """The fire time `rulesctl dispatch --at` sends for `rule`: its cron's, when it fires at the minute of `at`;
    for a rule with no fire times and a document that is not valid, its one failed run as of `edited_at`."""
    try:
        due = latest_fire_time(rule, at)
    except NoFireTimes as error:
        return _fire_time_without_schedule(rule, error)
    return rule.fire_time(due) if due == at.replace(second=0, microsecond=0) else None


def _fire_time_without_schedule(rule: ScheduledRule, error: NoFireTimes) -> FireTime | None:
    """The one fire time of a rule with no fire times: as of its last change when its document is not valid, so
    that its run fails saying why; none for a valid document whose cron never comes (logged here)."""
    if rule.problem:
        return rule.fire_time(rule.edited_at)
    log.warning("rule %s never fires: %s", rule.rule_id, error)
    return None


def report_problem(rule: ScheduledRule, now: datetime) -> None:
    """Logs one line naming `rule` and why its document is not valid, if it is not; silent for a valid one."""
    if not rule.problem:
        return
    try:
        next_fire_time(rule, now)
    except NoFireTimes as error:
        log.warning("rule %s has no fire times and is not scheduled (%s); its one failed run is as of %s: %s",
                    rule.rule_id, error, utc_iso(rule.edited_at), rule.problem)
        return
    log.warning("rule %s is not valid; each of its fire times gives a failed run: %s", rule.rule_id, rule.problem)


def load_rules(postgres: Postgres, allowed_hosts: frozenset[str], rule_ids: list[str] | None = None,
               org_id: int | None = None) -> list[ScheduledRule]:
    """The enabled rules (only `rule_ids` of them, only those of `org_id`, if given) read from PostgreSQL, whatever
    their rows hold."""
    rows = postgres.all("schedulable_rules", rule_ids=rule_ids, org_id=org_id)
    return [ScheduledRule.from_row(row, allowed_hosts) for row in rows]


class Timetable:
    """The enabled rules, each keyed by the next instant it must be looked at: a tick touches only the rules due.

    A rule is looked at when it is new or changed, and at each of its fire times; then, and only then, its cron is
    computed: the latest fire time at or before now is sent unless it was sent already (after downtime, that is the
    latest missed one only), and the rule waits for its next fire time. An unschedulable rule is looked at once per
    version, for its one failed run.
    """

    def __init__(self) -> None:
        self._rules: dict[str, ScheduledRule] = {}
        self._sent: dict[str, tuple[datetime, str]] = {}
        self._queue: list[tuple[datetime, int, str]] = []
        self._stamps: dict[str, int] = {}
        self._counter = itertools.count()

    def __len__(self) -> int:
        return len(self._rules)

    def changed(self, versions: dict[str, str]) -> list[str]:
        """The ids of `versions` ({rule id: version} of the enabled rules) that are new or changed."""
        return [rule_id for rule_id, version in versions.items()
                if rule_id not in self._rules or self._rules[rule_id].version != version]

    def update(self, enabled: set[str], changed: Iterable[ScheduledRule], now: datetime) -> None:
        """Keeps the rules of `enabled` (ids), replaces or adds those of `changed`, drops the others; a changed rule
        is looked at on the next tick, and a document that is not valid is logged once."""
        for rule_id in [rule_id for rule_id in self._rules if rule_id not in enabled]:
            del self._rules[rule_id], self._stamps[rule_id]
            self._sent.pop(rule_id, None)
        for rule in changed:
            self._rules[rule.rule_id] = rule
            report_problem(rule, now)
            self._look_at(rule.rule_id, now)

    def due(self, now: datetime) -> list[FireTime]:
        """The fire times to send at `now`: each rule due is taken off the queue and put back at its next fire time."""
        fires = []
        while self._queue and self._queue[0][0] <= now:
            _, stamp, rule_id = heapq.heappop(self._queue)
            if self._stamps.get(rule_id) != stamp:
                continue  # dropped, changed or requeued since
            rule = self._rules[rule_id]
            fire = self._fire_time(rule, now)
            if fire is not None and self._is_new(rule, fire):
                fires.append(fire)
        return fires

    def sent(self, fires: Iterable[FireTime]) -> None:
        """Records fire times as sent: none of them is returned by `due` again."""
        for fire in fires:
            if fire.rule_id in self._rules:
                self._sent[fire.rule_id] = (fire.scheduled_for, self._rules[fire.rule_id].version)

    def _is_new(self, rule: ScheduledRule, fire: FireTime) -> bool:
        """True unless `fire` was sent already. Under one version of the rule fire times only move forward: in a
        repeated hour croniter reads the wall time as its first pass again, which was sent then."""
        last, version = self._sent.get(rule.rule_id, (None, None))
        if last is None:
            return True
        return fire.scheduled_for > last if version == rule.version else fire.scheduled_for != last

    def unsent(self, fires: Iterable[FireTime], now: datetime) -> None:
        """Fire times that could not be sent: their rules are due again on the next tick."""
        for fire in fires:
            if fire.rule_id in self._rules:
                self._look_at(fire.rule_id, now)

    def next_due(self) -> datetime | None:
        """The earliest instant a rule must be looked at, or None when no rule waits."""
        while self._queue and self._stamps.get(self._queue[0][2]) != self._queue[0][1]:
            heapq.heappop(self._queue)
        return self._queue[0][0] if self._queue else None

    def _look_at(self, rule_id: str, when: datetime) -> None:
        stamp = next(self._counter)
        self._stamps[rule_id] = stamp
        heapq.heappush(self._queue, (when, stamp, rule_id))
        if len(self._queue) > 2 * len(self._stamps) + 1024:
            # Entries of changed or dropped rules are skipped when they come up; far-off ones are cleared here.
            self._queue = [entry for entry in self._queue if self._stamps.get(entry[2]) == entry[1]]
            heapq.heapify(self._queue)

    def _fire_time(self, rule: ScheduledRule, now: datetime) -> FireTime | None:
        """The rule's fire time to send at `now` (None: none), after queueing its next look."""
        try:
            due = latest_fire_time(rule, now)
            self._look_at(rule.rule_id, next_fire_time(rule, now))
        except NoFireTimes as error:
            return _fire_time_without_schedule(rule, error)
        return rule.fire_time(due) if due is not None else None


SendTask = Callable[[str, tuple, dict[str, Any]], str]


class FireTimeSender:
    """Sends fire times, after recording them in `sent_fire_times` in one statement: one rules.evaluate_batch per
    batch, one rules.evaluate per fire time sent alone (see `batches`).

    `send_task(name, args, kwargs)` sends one task and returns its id. When PostgreSQL is down the fire times are
    sent unrecorded: the record only lets the sweeper send again what a broker or worker failure lost. Each batch
    sent is logged with its task id and rule ids, and each fire time as `sent rule <id> for <T>`, whichever task
    carried it.
    """

    def __init__(self, postgres: Postgres, send_task: SendTask) -> None:
        self._postgres = postgres
        self._send_task = send_task

    def send(self, fires: list[FireTime]) -> tuple[list[tuple[FireTime, str]], list[FireTime]]:
        """Records and sends `fires`; returns ([(fire time, id of the task that carries it)] sent, [fire times the
        broker refused]). The rules of one batch share its task id."""
        if not fires:
            return [], []
        self.record(fires)
        grouped, alone = batches(fires)
        sent: list[tuple[FireTime, str]] = []
        unsent: list[FireTime] = []
        tasks: list[tuple[Batch | None, str, tuple, dict[str, Any], tuple[FireTime, ...]]] = [
            (batch, EVALUATE_BATCH, batch.task_args(), batch.task_kwargs(), batch.fires) for batch in grouped]
        tasks += [(None, EVALUATE, (fire.rule_id,), fire.task_kwargs(), (fire,)) for fire in alone]
        for batch, name, args, kwargs, carried in tasks:
            try:
                task_id = self._send_task(name, args, kwargs)
            except Exception as error:  # the broker is down: the caller tries again
                for fire in carried:
                    log.warning("could not send rule %s at %s: %s", fire.rule_id, utc_iso(fire.scheduled_for), error)
                unsent += carried
                continue
            if batch is not None:
                log.info("%s %s sent: %s", name, task_id, batch)
            for fire in carried:
                log.info("sent rule %s for %s", fire.rule_id, utc_iso(fire.scheduled_for))
            sent += [(fire, task_id) for fire in carried]
        return sent, unsent

    def record(self, fires: list[FireTime]) -> None:
        """Writes `fires` to `sent_fire_times` (a pair recorded already keeps its row); logs when it cannot."""
        try:
            self._postgres.execute(
                "record_sent_fire_times", rule_ids=[fire.rule_id for fire in fires],
                scheduled_fors=[fire.scheduled_for.astimezone(UTC).replace(tzinfo=None) for fire in fires],
                triggers=[fire.trigger for fire in fires])
        except StorageError as error:
            log.warning("sending %d fire times without recording them: %s", len(fires), error)
