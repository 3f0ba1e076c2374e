"""The Celery app `worker.app:app`, configured from the settings: `celery -A worker.app worker|beat|flower`."""

from __future__ import annotations

from celery import Celery
from kombu import Exchange, Queue

from worker.queues import NOTIFICATIONS_QUEUE, RULES_QUEUE
from worker.settings import ConfigurationError, settings

try:
    _config = settings()
except ConfigurationError as error:
    raise SystemExit(f"rules: {error}") from None

# Past the hard time limit a task's process is killed; the broker must not hand the task out again before that.
VISIBILITY_TIMEOUT_SECONDS = 2 * _config.run_lease_seconds

app = Celery("rules", include=["worker.tasks"])
app.conf.update(
    broker_url=_config.redis_url,
    result_backend=_config.redis_url,
    result_expires=24 * 3600,
    broker_connection_retry_on_startup=True,
    broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT_SECONDS},
    task_queues=tuple(Queue(name, Exchange(name), routing_key=name) for name in (RULES_QUEUE, NOTIFICATIONS_QUEUE)),
    task_default_queue=RULES_QUEUE,
    task_routes={"notifications.deliver": {"queue": NOTIFICATIONS_QUEUE}},
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    task_soft_time_limit=_config.run_time_limit_seconds,
    task_time_limit=_config.run_time_limit_seconds + 30,
    task_track_started=True,
    task_send_sent_event=True,
    worker_send_task_events=True,
    worker_prefetch_multiplier=1,
    worker_cancel_long_running_tasks_on_connection_loss=True,
    # With REMAP_SIGTERM=SIGQUIT in the worker's environment, SIGTERM lets the task in hand finish for this long,
    # then stops it unacknowledged, so the broker hands it out again.
    worker_soft_shutdown_timeout=_config.worker_shutdown_seconds,
    beat_scheduler="worker.beat:RuleScheduler",
    timezone="UTC",
    enable_utc=True,
)
