"""`rulesctl backfill`: replays a rule at each of its schedule's fire times in a date range.

Fire times whose windows resolve to the same dates read the same rows, so they are evaluated once: the first of
them that succeeds is evaluated, and each later one reuses that evaluation (worker.runner.SharedEvaluation) while
keeping its own run, its own `rule_evaluations` rows with its own eval_time and its own alert stage. Every fire time
of a daily-metrics rule on one local day shares, for any window. A pacing-snapshot window that includes today
ends at T itself, so those fire times never share; one that ends before today (`yesterday`) shares like a daily one.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from datetime import date, datetime
from itertools import groupby
from zoneinfo import ZoneInfo

from engine.fields import CAMPAIGN_METRICS
from engine.model import Rule
from engine.windows import resolve_window
from worker.progress import ProgressBar
from worker.alert_state import SimulatedStates
from worker.runner import RuleRunner, RunRequest, SharedEvaluation, evaluation_time
from worker.schedule import fire_times_between


@dataclass(frozen=True)
class BackfillResult:
    """Every fire time's run summary, in order, and how many evaluations were run for them: the others reused an
    earlier fire time's, or (with `--write`) returned a run that already existed."""

    summaries: list[dict]
    evaluated: int


def window_key(rule: Rule, timezone: str, at: datetime) -> Hashable:
    """What the rule's evaluation at `at` reads of its source: fire times with equal keys read the same rows."""
    conditions = rule.conditions
    bounds = resolve_window(at, timezone, conditions.window, conditions.compare_to)
    if conditions.source == CAMPAIGN_METRICS:
        return bounds.first, bounds.last, bounds.previous_first, bounds.previous_last
    return bounds.utc_start, bounds.utc_end, bounds.previous_utc_start, bounds.previous_utc_end


def backfill(runner: RuleRunner, rule_id: str, rule: Rule, timezone: str, first_day: date, last_day: date,
             write: bool) -> BackfillResult:
    """Runs the rule at each fire time (dry runs unless `write`), with a progress bar, evaluating once per window.

    A fire time's evaluation is shared only when its run succeeded now: with `write`, a fire time that already had
    a run (which a new request only returns) is not evaluated again, so it shares nothing.
    """
    moments = list(fire_times_between(rule.conditions.schedule, timezone, first_day, last_day))
    bar = ProgressBar("backfill", len(moments))
    shared_by_window: dict[Hashable, SharedEvaluation] = {}
    simulated = SimulatedStates()
    summaries = []
    evaluated = 0
    try:
        for moment in moments:
            key = window_key(rule, timezone, moment)
            shared = shared_by_window.get(key)
            fresh = shared is None and not (write and runner.has_run(rule_id, moment))
            summary = runner.run(RunRequest(rule_id, moment, dry_run=not write, trigger="backfill", shared=shared,
                                            simulated=simulated))
            if fresh:
                evaluated += 1
                if summary["status"] == "succeeded":
                    shared_by_window[key] = SharedEvaluation(moment, summary["entities"],
                                                             *simulated.found_at(evaluation_time(moment)))
            summaries.append(summary)
            bar.advance()
    finally:
        bar.close()
    return BackfillResult(summaries, evaluated)


def format_days(result: BackfillResult, timezone: str) -> str:
    """The per-day table (local day, fire times, matched range, alerts, failures) with, below each day, how many of
    its fire times were (or would have been) storms, its errors and, when there are any, the matches silences and
    acknowledgements withheld that day; then the simulated alert lifecycle (when the runs report it) and a total
    line."""
    zone = ZoneInfo(timezone)
    lines = [f"{'local day':<10} {'fire times':>10} {'matched':>9} {'alerts':>7} {'failed':>6}"]

    def local_day(summary: dict) -> date:
        return datetime.fromisoformat(summary["scheduled_for"].replace("Z", "+00:00")).astimezone(zone).date()

    for day, group in groupby(result.summaries, key=local_day):
        runs = list(group)
        matched = sorted(s["matched"] for s in runs)
        shown = str(matched[0]) if matched[0] == matched[-1] else f"{matched[0]}-{matched[-1]}"
        failed = sum(1 for s in runs if s["status"] == "failed")
        lines.append(f"{day.isoformat():<10} {len(runs):>10} {shown:>9} {sum(s['alerts'] for s in runs):>7} "
                     f"{failed:>6}")
        storms = sum(1 for s in runs if s["storm"])
        if storms:
            lines.append(f"  {storms} × a storm (more matches than max_alerts or max_alert_share allow)")
        errors: dict[str, int] = {}
        for s in runs:
            if s["error"]:
                errors[s["error"]] = errors.get(s["error"], 0) + 1
        lines.extend(f"  {count} × {error}" for error, count in errors.items())
        silenced, acknowledged = sum(s["silenced"] for s in runs), sum(s["acknowledged"] for s in runs)
        if silenced or acknowledged:
            lines.append(f"  notices withheld: {silenced} silenced, {acknowledged} acknowledged")
    summaries = result.summaries
    lines.extend(_lifecycle_line(summaries))
    storms = sum(1 for s in summaries if s["storm"])
    lines.append(f"{len(summaries)} fire times ({result.evaluated} evaluated), "
                 f"{sum(s['matched'] for s in summaries)} matches, {sum(s['alerts'] for s in summaries)} alerts, "
                 f"{sum(1 for s in summaries if s['status'] == 'failed')} failed"
                 + (f", {storms} storms" if storms else ""))
    return "\n".join(lines)


def _lifecycle_line(summaries: list[dict]) -> list[str]:
    """`lifecycle: …`: how many entities the fire times resolved (and, dry, would have alerted on), and how many
    were pending, firing and recovering after the last fire time that reported its lifecycle; none reported: no
    line."""
    reported = [s["lifecycle"] for s in summaries if s.get("lifecycle")]
    if not reported:
        return []
    last = reported[-1]
    line = (f"lifecycle: {sum(counts['resolved'] for counts in reported)} resolved; after the last fire time "
            f"{last['pending']} pending, {last['firing']} firing, {last['recovering']} recovering")
    if all("would_alert" in counts for counts in reported):
        line += f"; {sum(counts['would_alert'] for counts in reported)} would alert"
    return [line]
