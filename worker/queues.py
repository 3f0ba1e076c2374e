"""The Celery queues: rule runs and notification deliveries apart, so that a slow channel never delays a run."""

RULES_QUEUE = "rules"
NOTIFICATIONS_QUEUE = "notifications"
