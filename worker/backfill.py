"""`rulesctl backfill`: replays a rule at each of its schedule's fire times in a date range."""

from __future__ import annotations

from datetime import date

from worker.progress import ProgressBar
from worker.runner import RuleRunner, RunRequest
from worker.schedule import fire_times_between


def backfill(runner: RuleRunner, rule_id: str, schedule: str, timezone: str, first_day: date, last_day: date,
             write: bool) -> list[dict]:
    """Runs the rule at each fire time (dry runs unless `write`), with a progress bar; returns the summaries."""
    moments = list(fire_times_between(schedule, timezone, first_day, last_day))
    bar = ProgressBar("backfill", len(moments))
    summaries = []
    try:
        for moment in moments:
            summaries.append(runner.run(RunRequest(rule_id, moment, dry_run=not write, trigger="backfill")))
            bar.advance()
    finally:
        bar.close()
    return summaries


def format_table(summaries: list[dict]) -> str:
    """The per-fire-time table: time, status, entities, matched, alerts, error."""
    lines = [f"{'fire time (UTC)':<21} {'status':<10} {'entities':>8} {'matched':>8} {'alerts':>7}  error"]
    for s in summaries:
        lines.append(f"{s['scheduled_for']:<21} {s['status']:<10} {s['entities']:>8} {s['matched']:>8} "
                     f"{s['alerts']:>7}  {s['error'] or ''}")
    lines.append(f"{len(summaries)} fire times, {sum(s['matched'] for s in summaries)} matches, "
                 f"{sum(s['alerts'] for s in summaries)} alerts")
    return "\n".join(lines)
