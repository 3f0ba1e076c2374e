"""The connections a process needs, made from the settings in one place."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from engine.timestamps import utc_iso
from storage.clickhouse import ClickHouse
from storage.postgres import Postgres
from storage.runs import RunRecord
from worker.batch_runner import BatchRunner
from worker.runner import RuleRunner
from worker.settings import settings

log = logging.getLogger(__name__)


def send_deliveries(delivery_ids: list[int]) -> None:
    """Queues notifications.deliver for each delivery; when the broker is down, beat's sweeper sends them later."""
    from worker.app import app  # the Celery app reads the settings; only processes that deliver need it

    try:
        for delivery_id in delivery_ids:
            app.send_task("notifications.deliver", args=(delivery_id,), ignore_result=True)
    except Exception as error:
        log.warning("could not queue %d deliveries now; beat will send them: %s", len(delivery_ids), error)


def send_check(run: RunRecord, countdown: int) -> None:
    """Queues the next check of a waiting run: rules.evaluate of its rule and T after `countdown` seconds."""
    from worker.app import app

    app.send_task("rules.evaluate", args=(run.rule_id,), countdown=countdown,
                  kwargs={"scheduled_for": utc_iso(run.scheduled_for), "triggered_by": run.triggered_by,
                          "trigger": run.trigger})


@contextmanager
def open_postgres() -> Iterator[Postgres]:
    """The configured PostgreSQL pool alone, closed when the block ends."""
    postgres = Postgres(settings().database_url)
    try:
        yield postgres
    finally:
        postgres.close()


def _clickhouse() -> ClickHouse:
    """A client for the configured ClickHouse, its queries limited to the run time limit."""
    config = settings()
    return ClickHouse(config.clickhouse_url, max_execution_time=config.run_time_limit_seconds)


def _runner(postgres: Postgres, clickhouse: ClickHouse) -> BatchRunner:
    config = settings()
    return BatchRunner(postgres, clickhouse, allowed_hosts=config.notify_allowed_hosts,
                       send_deliveries=send_deliveries, lease_seconds=config.run_lease_seconds,
                       time_limit_seconds=config.run_time_limit_seconds,
                       wait_check_seconds=config.wait_check_seconds, send_check=send_check)


@contextmanager
def open_stores() -> Iterator[tuple[Postgres, ClickHouse]]:
    """The configured PostgreSQL pool and ClickHouse client (queries limited to the run time limit), closed after."""
    with open_postgres() as postgres:
        clickhouse = _clickhouse()
        try:
            yield postgres, clickhouse
        finally:
            clickhouse.close()


@contextmanager
def open_runner() -> Iterator[RuleRunner]:
    """A RuleRunner on the configured PostgreSQL and ClickHouse, closed when the block ends."""
    with open_stores() as (postgres, clickhouse):
        yield _runner(postgres, clickhouse)


_shared_runner: BatchRunner | None = None


def shared_runner() -> BatchRunner:
    """The process's runner of single rules and of batches, made on first use (in a worker, after the fork) and
    kept for its life.

    Making it opens the ClickHouse client, which fails with DatabaseUnavailable within a short connect timeout when
    the server does not answer (rules.evaluate then retries before anything is claimed); PostgreSQL connects on the
    first query."""
    global _shared_runner
    if _shared_runner is None:
        _shared_runner = _runner(shared_postgres(), shared_clickhouse())
    return _shared_runner


_shared_clickhouse: ClickHouse | None = None


def shared_clickhouse() -> ClickHouse:
    """The process's ClickHouse client (the runner's, and what other tasks read), made on first use and kept."""
    global _shared_clickhouse
    if _shared_clickhouse is None:
        _shared_clickhouse = _clickhouse()
    return _shared_clickhouse


def shared_batch_runner() -> BatchRunner:
    """The process's runner of batches: the same object as shared_runner(), made the same way."""
    return shared_runner()


_shared_postgres: Postgres | None = None
_shared_postgres_lock = threading.Lock()


def shared_postgres() -> Postgres:
    """The process's PostgreSQL pool (shared by its runs, its deliveries and a thread pool's threads)."""
    global _shared_postgres
    with _shared_postgres_lock:
        if _shared_postgres is None:
            _shared_postgres = Postgres(settings().database_url)
        return _shared_postgres
