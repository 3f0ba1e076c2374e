"""`rulesctl bench`: the engine's speed on synthetic metrics, a batch against separate runs and the interpreter.

Builds N campaigns x D days in a scratch ClickHouse database (and a scratch PostgreSQL database for the rules
and their runs), merges the table's parts as a steady-state table's are, runs R rules as one batch of real runs through the SQL path, the same R rules as R separate runs,
and the same R rules through the interpreter; times the batch's one-scan aggregation alone as the floor, reads
from the runs' transitions how long the batch and the separate runs spent in each stage, then times a naming rule
over every campaign name both ways, and drops both scratch databases at the end.
"""

from __future__ import annotations

import json
import resource
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from engine.batch_query import batch_aggregation, batch_member, split_batch
from engine.model import parse_rule
from engine.windows import resolve_window
from storage.clickhouse import ClickHouse
from storage.migrations import (drop_clickhouse_database, drop_postgres_database, ensure_clickhouse_database,
                                ensure_postgres_database, migrate_clickhouse, migrate_postgres)
from storage.postgres import Postgres
from worker.progress import ProgressBar
from worker.batch_runner import BatchRequest, BatchRunner
from worker.runner import RuleRunner, RunRequest
from worker.settings import Settings

BENCH_TIMEZONE = "UTC"
# The benchmarks' own named queries, run beside the service's (storage/queries.py).
QUERY_DIR = Path(__file__).with_name("queries")

# Thresholds are set so that each rule matches a few percent of campaigns or fewer, as alerting rules do.
RULE_TEMPLATES: tuple[dict, ...] = (
    {"window": "yesterday", "logic": {">": [{"var": "spend"}, 1200]}},
    {"window": "last_7_days", "logic": {"<": [{"var": "ctr"}, 0.002]}},
    {"window": "last_7_days", "logic": {"and": [{">": [{"var": "impressions"}, 550000]}, {"<": [{"var": "cvr"}, 0.05]}]}},
    {"window": "last_7_days", "compare_to": "previous_period",
     "logic": {">": [{"var": "cpm"}, {"*": [{"var": "prev.cpm"}, 2.2]}]}},
    {"window": "last_14_days", "logic": {"or": [{">": [{"var": "spend"}, 9000]}, {"<": [{"var": "days"}, 14]}]}},
    {"window": "yesterday", "logic": {"matches": [{"var": "campaign_name"}, "77$"]}},
    {"window": "yesterday", "logic": {"and": [{"in": [{"var": "dsp_type"}, ["DV360", "TTD"]]}, {">": [{"var": "cpm"}, 14.5]}]}},
    {"window": "last_30_days", "logic": {">": [{"var": "spend"}, 15000]}},
    {"window": "last_7_days", "compare_to": "previous_period",
     "logic": {"<": [{"var": "spend"}, {"*": [{"var": "prev.spend"}, 0.4]}]}},
    {"window": "last_14_days", "logic": {"!": {"<=": [0.001, {"var": "ctr"}, 0.01]}}},
)

# The README's example convention; the synthetic names follow it but for 4 in 100 (queries/clickhouse.sql).
NAMING_CONVENTION = {"delimiter": "_", "min_tokens": 4, "max_tokens": 6, "tokens": [
    {"name": "market", "values": ["US", "EU", "UK"]},
    {"name": "dsp", "equals": "dsp_type"},
    {"name": "objective", "values": ["Brand", "Perf"], "ignore_case": False},
    {"name": "period", "pattern": "^Q[1-4]$"},
    {"name": "month", "date": "YYYYMM", "optional": True},
    {"name": "label", "free": True}]}
NAMING_RULE = {"window": "yesterday", "schedule": "0 * * * *",
               "logic": {"naming": [{"var": "campaign_name"}, "campaign"]}}


def scratch_url(url: str, database: str) -> str:
    """`url` (PostgreSQL or ClickHouse) with its last path segment (the database) replaced by `database`."""
    parts = urlsplit(url)
    directory = parts.path.rstrip("/").rpartition("/")[0]
    return urlunsplit(parts._replace(path=f"{directory}/{database}"))


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def load_metrics(clickhouse: ClickHouse, org_id: int, entities: int, days: int, last_day) -> None:
    """Synthetic metrics of `entities` campaigns for each of the `days` days through `last_day`, with a progress bar."""
    bar = ProgressBar("loading metrics", days)
    try:
        for age in range(days, 0, -1):
            clickhouse.command_named("bench_campaign_metrics", org_id=org_id, day=last_day - timedelta(days=age - 1),
                                     campaigns=entities)
            bar.advance()
    finally:
        bar.close()


def _rules(count: int) -> list[dict]:
    return [{**RULE_TEMPLATES[i % len(RULE_TEMPLATES)], "schedule": "0 * * * *"} for i in range(count)]


def _insert_rules(postgres: Postgres, org_id: int, rules: list[dict], label: str) -> list[str]:
    with postgres.transaction() as tx:
        return [tx.one("insert_rule", org_id=org_id, name=f"bench {label} {i}", module="alerts",
                       conditions=json.dumps(conditions), actions=json.dumps({"cooldown_minutes": 0}),
                       created_by=None)["id"] for i, conditions in enumerate(rules)]


def _warm_up(runner: RuleRunner, rule_id: str, at: datetime) -> None:
    """One untimed run an hour before `at`: a worker pays its first-insert set-up once in its life, not once per
    run, so the figures are the steady state."""
    runner.run(RunRequest(rule_id, at - timedelta(hours=1), trigger="manual"))


@dataclass(frozen=True)
class Timed:
    """Runs timed together: their seconds, the entities they evaluated and matched, and their run ids."""

    seconds: float
    evaluations: int
    matched: int
    run_ids: tuple[str, ...]


def _timed(seconds: float, summaries: list[dict]) -> Timed:
    """The figures of succeeded runs; a run that did not succeed stops the bench."""
    for summary in summaries:
        if summary["status"] != "succeeded":
            raise RuntimeError(f"bench rule {summary['rule_id']} {summary['status']}: {summary['error']}")
    return Timed(seconds, sum(summary["entities"] for summary in summaries),
                 sum(summary["matched"] for summary in summaries), tuple(summary["run_id"] for summary in summaries))


def _timed_runs(runner: RuleRunner, rule_ids: list[str], at: datetime, label: str) -> Timed:
    """Runs each rule alone at `at`, after a warm-up."""
    _warm_up(runner, rule_ids[0], at)
    bar = ProgressBar(label, len(rule_ids))
    seconds, summaries = 0.0, []
    try:
        for rule_id in rule_ids:
            started = time.perf_counter()
            summaries.append(runner.run(RunRequest(rule_id, at, trigger="manual")))
            seconds += time.perf_counter() - started
            bar.advance()
    finally:
        bar.close()
    return _timed(seconds, summaries)


def _timed_batch(runner: BatchRunner, org_id: int, rule_ids: list[str], at: datetime) -> Timed:
    """Runs the rules as one batch at `at`, after a warm-up."""
    _warm_up(runner, rule_ids[0], at)
    started = time.perf_counter()
    summaries = runner.run_batch(BatchRequest(org_id, at, tuple(rule_ids), trigger="manual"))
    return _timed(time.perf_counter() - started, summaries)


# Each stage of a run, between the transitions that bound it: `evaluate` is the statement writing its
# rule_evaluations rows and their read-back; `alert` names the matched campaigns, moves their lifecycle, looks up
# cooldowns and audiences and writes the alert_events rows; `alert_write` is the PostgreSQL transaction of the
# firing states, their history, the notifications and the runs' `alerted`.
STAGES = {"evaluate": ("compiled", "evaluated"), "alert": ("evaluated", "alerted"),
          "alert_write": ("alerted", "succeeded")}


def _stage_seconds(postgres: Postgres, run_ids: Sequence[str]) -> dict[str, float]:
    """The seconds the runs spent in each of STAGES, read from their recorded transitions; runs that went through
    a stage together (a batch's) count its time once."""
    rows = postgres.all("bench_run_stages", run_ids=list(run_ids))
    return {stage: round(sum((end - start).total_seconds() for start, end in
                             {(row[first], row[last]) for row in rows if row[first] and row[last]}), 3)
            for stage, (first, last) in STAGES.items()}


def _bare_query_seconds(clickhouse: ClickHouse, rules: list[dict], org_id: int, at: datetime) -> float:
    """The time of the batch's one-scan aggregation alone (each statement split_batch makes): every partial
    aggregate the rules read, for every entity, without their logic or any write."""
    by_source: dict[str, list] = {}
    for position, conditions in enumerate(rules):
        rule = parse_rule(conditions, {})
        bounds = resolve_window(at, BENCH_TIMEZONE, rule.conditions.window, rule.conditions.compare_to)
        by_source.setdefault(rule.conditions.source, []).append(batch_member(
            position, str(uuid.uuid4()), rule.conditions.source, rule.conditions.logic, bounds,
            rule.conditions.scope, rule.conditions.compare_to is not None))
    seconds = 0.0
    for source, members in by_source.items():
        for part in split_batch(source, members):
            statement = batch_aggregation(source, org_id, part)
            started = time.perf_counter()
            clickhouse.sql_rows(statement.sql, statement.parameters, what="the bare aggregation")
            seconds += time.perf_counter() - started
    return seconds


@dataclass(frozen=True)
class ScratchStores:
    """Migrated scratch databases beside the configured ones: their URLs and open clients."""

    name: str
    pg_url: str
    ch_url: str
    postgres: Postgres
    clickhouse: ClickHouse


@contextmanager
def scratch_stores(config: Settings, prefix: str) -> Iterator[ScratchStores]:
    """A PostgreSQL and a ClickHouse database named `<prefix>_<random>`, migrated, dropped when the block ends."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    pg_url, ch_url = scratch_url(config.database_url, name), scratch_url(config.clickhouse_url, name)
    ensure_postgres_database(pg_url)
    postgres = Postgres(pg_url, extra_queries=QUERY_DIR / "postgres.sql")
    clickhouse = None
    try:
        migrate_postgres(pg_url)
        ensure_clickhouse_database(ch_url)
        migrate_clickhouse(ch_url)
        clickhouse = ClickHouse(ch_url, extra_queries=QUERY_DIR / "clickhouse.sql")
        yield ScratchStores(name, pg_url, ch_url, postgres, clickhouse)
    finally:
        postgres.close()
        if clickhouse is not None:
            clickhouse.close()
        drop_postgres_database(pg_url)
        drop_clickhouse_database(ch_url)


def run_bench(config: Settings, entities: int, days: int, rule_count: int) -> dict:
    """Runs the benchmark on scratch databases beside the configured ones.

    Returns the figures the README's Performance section describes, with the sizes it ran on.
    """
    with scratch_stores(config, "rules_bench") as stores:
        postgres, clickhouse, suffix = stores.postgres, stores.clickhouse, stores.name
        at = datetime.now(UTC).replace(microsecond=0)
        with postgres.transaction() as tx:
            org_id = tx.one("insert_organization", name="bench", slug=f"bench-{suffix}", timezone=BENCH_TIMEZONE,
                            currency="USD", enabled_modules=json.dumps(["alerts"]))["id"]
            tx.execute("bench_naming_conventions", org_id=org_id,
                       conventions=json.dumps({"campaign": NAMING_CONVENTION}))
        load_metrics(clickhouse, org_id, entities, days, at.date())
        clickhouse.command_named("bench_merge_metrics")
        rules = _rules(rule_count)
        batch_ids = _insert_rules(postgres, org_id, rules, "batch")
        separate_ids = _insert_rules(postgres, org_id, rules, "separate")
        interpreter_ids = _insert_rules(postgres, org_id, rules, "interpreter")
        bare_s = _bare_query_seconds(clickhouse, rules, org_id, at)
        runner = BatchRunner(postgres, clickhouse)
        batch = _timed_batch(runner, org_id, batch_ids, at)
        separate = _timed_runs(runner, separate_ids, at, "separate runs")
        interpreter = _timed_runs(RuleRunner(postgres, clickhouse, interpreter_only=True), interpreter_ids, at,
                                  "interpreter")
        naming_sql_ids = _insert_rules(postgres, org_id, [NAMING_RULE], "naming sql")
        naming_interpreter_ids = _insert_rules(postgres, org_id, [NAMING_RULE], "naming interpreter")
        naming = _timed_runs(RuleRunner(postgres, clickhouse), naming_sql_ids, at, "naming, sql path")
        naming_interpreter = _timed_runs(RuleRunner(postgres, clickhouse, interpreter_only=True),
                                         naming_interpreter_ids, at, "naming, interpreter")
        stages = {"batch": _stage_seconds(postgres, batch.run_ids),
                  "separate": _stage_seconds(postgres, separate.run_ids)}
    sql_rate, separate_rate, interpreter_rate = (timed.evaluations / timed.seconds if timed.seconds else 0.0
                                                 for timed in (batch, separate, interpreter))
    return {
        "entities": entities,
        "days": days,
        "rules": rule_count,
        "evaluations": batch.evaluations,
        "matched": batch.matched,
        "sql_evals_per_s": round(sql_rate),
        "separate_evals_per_s": round(separate_rate),
        "interpreter_evals_per_s": round(interpreter_rate),
        "speedup": round(sql_rate / interpreter_rate, 1) if interpreter_rate else None,
        "bare_query_s": round(bare_s, 3),
        "engine_s": round(batch.seconds, 3),
        "separate_s": round(separate.seconds, 3),
        "interpreter_s": round(interpreter.seconds, 3),
        "stages_s": stages,
        "naming_names": naming.evaluations,
        "naming_sql_s": round(naming.seconds, 3),
        "naming_interpreter_s": round(naming_interpreter.seconds, 3),
        "naming_sql_names_per_s": round(naming.evaluations / naming.seconds) if naming.seconds else 0,
        "peak_rss_mb": _peak_rss_mb(),
        "clickhouse": urlsplit(config.clickhouse_url).scheme,
    }
