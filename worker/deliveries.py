"""Deliveries: what a run owes whom (written in the run's transaction), and sending one of them.

Each delivery is a `deliveries` row. In-app notifications are written with the run and recorded as sent; e-mail,
Slack and webhook deliveries start `pending` and are sent by `notifications.deliver`, which claims the row first, so
that two tasks for one delivery never both send it, and a delivery recorded as sent is never sent again. A send
that fails is tried again after a capped, jittered exponential backoff, up to the policy's attempts, then the
delivery is `failed` with the last error. Every attempt carries the delivery's idempotency key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from engine.model import Notify
from storage.postgres import Postgres, Transaction
from worker.audience import Entity, Recipient
from worker.channels import DeliveryFailed, post_json, send_email
from worker.messages import RunNotice, email_message, in_app_entities, slack_body, webhook_body
from worker.retry import RetryPolicy
from worker.settings import Settings

# How long a claimed delivery is held by its sender before another may claim it.
DELIVERY_LEASE_SECONDS = 60


def delivery_retry(config: Settings) -> RetryPolicy:
    """The retry policy of deliveries: DELIVERY_MAX_ATTEMPTS tries, backoff from DELIVERY_BACKOFF_SECONDS up to
    5 minutes (under the broker's visibility timeout, so a waiting retry is never handed out twice)."""
    return RetryPolicy(max_attempts=config.delivery_max_attempts, backoff_min=config.delivery_backoff_seconds,
                       backoff_max=max(config.delivery_backoff_seconds, 300))


def record_deliveries(tx: Transaction, notice: RunNotice, entities: Sequence[Entity],
                      recipients: dict[tuple[str, str], list[Recipient]], notify: Notify) -> None:
    """Writes, in `tx`, the in-app notifications and the deliveries that `notice` owes for `entities`: per user
    (in-app, e-mail to verified addresses) the entities that user may see, per run (Slack, webhook) all of them."""
    if not entities:
        return
    per_user: dict[int, tuple[Recipient, list[Entity]]] = {}
    for entity in entities:
        for recipient in recipients.get(entity.key, []):
            per_user.setdefault(recipient.user_id, (recipient, []))[1].append(entity)
    common = {"run_id": notice.run_id, "org_id": notice.org_id, "rule_id": notice.rule_id, "kind": notice.kind}

    def add(channel: str, recipient: str, payload: dict[str, Any], *, user_id: int | None = None,
            key: str | None = None, sent: bool = False) -> None:
        tx.execute("insert_delivery", **common, idempotency_key=key or str(uuid.uuid4()), channel=channel,
                   recipient=recipient, user_id=user_id, payload=json.dumps(payload),
                   status="sent" if sent else "pending", attempts=1 if sent else 0)

    for user_id, (recipient, own) in sorted(per_user.items()):
        if "in_app" in notify.channels:
            tx.execute("insert_notification", org_id=notice.org_id, user_id=user_id, rule_id=notice.rule_id,
                       run_id=notice.run_id, severity=notice.severity, kind=notice.kind,
                       entities=json.dumps(in_app_entities(own)))
            add("in_app", str(user_id), {"entities": len(own)}, user_id=user_id, sent=True)
        if "email" in notify.channels and recipient.email_verified:
            add("email", recipient.email, email_message(notice, own), user_id=user_id)
    if "slack" in notify.channels and notify.slack_webhook_url:
        add("slack", notify.slack_webhook_url, {"body": slack_body(notice, entities)})
    if "webhook" in notify.channels and notify.webhook_url:
        key = str(uuid.uuid4())
        add("webhook", notify.webhook_url, {"body": webhook_body(notice, entities, key)}, key=key)


def pending_delivery_ids(postgres: Postgres, run_id: str) -> list[int]:
    """The ids of the run's deliveries still pending, in id order."""
    return [row["id"] for row in postgres.all("pending_deliveries_of_run", run_id=run_id)]


def signature(secret: str, body: bytes) -> str:
    """The `X-Signature` header value of a webhook body: `sha256=` and the hex HMAC-SHA256 of the body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class DeliveryOutcome:
    """What one attempt did: the delivery's status after it, and the seconds until the next try when pending."""

    status: str
    retry_in: float | None = None
    error: str | None = None


def _send(row: dict[str, Any], config: Settings) -> None:
    payload, key = row["payload"], str(row["idempotency_key"])
    if row["channel"] == "email":
        send_email(config.smtp_url, config.smtp_from, row["recipient"], payload["subject"], payload["text"], key)
        return
    body = json.dumps(payload["body"], separators=(",", ":"), ensure_ascii=False).encode()
    headers = {"Idempotency-Key": key}
    if row["channel"] == "webhook" and config.webhook_secret:
        headers["X-Signature"] = signature(config.webhook_secret, body)
    post_json(row["recipient"], body, headers, config.notify_allowed_hosts)


def deliver(postgres: Postgres, delivery_id: int, config: Settings) -> DeliveryOutcome | None:
    """Makes one attempt at the delivery, if it is due and nobody else holds it (None otherwise), and records it."""
    row = postgres.one("claim_delivery", delivery_id=delivery_id, lease_seconds=DELIVERY_LEASE_SECONDS)
    if row is None:
        return None
    policy = delivery_retry(config)
    try:
        _send(row, config)
    except DeliveryFailed as failure:
        error = str(failure)
        if failure.permanent or not policy.allows(row["attempts"]):
            postgres.execute("record_delivery_failed", delivery_id=delivery_id, error=error)
            return DeliveryOutcome("failed", error=error)
        delay = policy.delay(row["attempts"])
        postgres.execute("record_delivery_retry", delivery_id=delivery_id, error=error, delay_seconds=delay)
        return DeliveryOutcome("pending", retry_in=delay, error=error)
    postgres.execute("record_delivery_sent", delivery_id=delivery_id)
    return DeliveryOutcome("sent")
