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
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from engine.model import Notify
from storage.postgres import Postgres, Transaction
from worker.audience import Entity, Recipient
from worker.channels import DeliveryFailed, post_json, send_email
from worker.messages import RunNotice, email_message, in_app_entities, post_bytes, slack_body, webhook_body
from worker.retry import RetryPolicy
from worker.settings import Settings

# How long a claimed delivery is held by its sender before another may claim it.
DELIVERY_LEASE_SECONDS = 60


def delivery_retry(config: Settings) -> RetryPolicy:
    """The retry policy of deliveries: DELIVERY_MAX_ATTEMPTS tries, backoff from DELIVERY_BACKOFF_SECONDS up to
    5 minutes (under the broker's visibility timeout, so a waiting retry is never handed out twice)."""
    return RetryPolicy(max_attempts=config.delivery_max_attempts, backoff_min=config.delivery_backoff_seconds,
                       backoff_max=max(config.delivery_backoff_seconds, 300))


@dataclass(frozen=True)
class OwedDelivery:
    """One `deliveries` row a run owes. An in-app delivery also carries the `notifications.entities` of its user's
    notification; it is written with the run and recorded as sent, the others start pending."""

    channel: str
    recipient: str
    payload: dict[str, Any]
    idempotency_key: str
    user_id: int | None = None
    notification_entities: list[dict[str, Any]] | None = None

    @property
    def sent(self) -> bool:
        """True for the in-app delivery, which is done once its row is written."""
        return self.channel == "in_app"


def owed_deliveries(notice: RunNotice, entities: Sequence[Entity],
                    recipients: dict[tuple[str, str], list[Recipient]], notify: Notify) -> list[OwedDelivery]:
    """The deliveries `notice` owes for `entities`, in the order they are written: per user by user id (in-app,
    then e-mail when the address is verified) the entities that user may see, in the order of `entities`; then per
    run (Slack, webhook, each when its URL is set) all of them. Each has a fresh idempotency key; the webhook body's
    `delivery_id` is its delivery's key. Nothing is owed for no entities."""
    if not entities:
        return []
    per_user: dict[int, tuple[Recipient, list[Entity]]] = {}
    for entity in entities:
        for recipient in recipients.get(entity.key, []):
            per_user.setdefault(recipient.user_id, (recipient, []))[1].append(entity)
    owed: list[OwedDelivery] = []
    for user_id, (recipient, own) in sorted(per_user.items()):
        if "in_app" in notify.channels:
            owed.append(OwedDelivery("in_app", str(user_id), {"entities": len(own)}, str(uuid.uuid4()),
                                     user_id=user_id, notification_entities=in_app_entities(own, notice)))
        if "email" in notify.channels and recipient.email_verified:
            owed.append(OwedDelivery("email", recipient.email, email_message(notice, own), str(uuid.uuid4()),
                                     user_id=user_id))
    if "slack" in notify.channels and notify.slack_webhook_url:
        owed.append(OwedDelivery("slack", notify.slack_webhook_url, {"body": slack_body(notice, entities)},
                                 str(uuid.uuid4())))
    if "webhook" in notify.channels and notify.webhook_url:
        key = str(uuid.uuid4())
        owed.append(OwedDelivery("webhook", notify.webhook_url, {"body": webhook_body(notice, entities, key)}, key))
    return owed


def record_deliveries(tx: Transaction, notice: RunNotice, entities: Sequence[Entity],
                      recipients: dict[tuple[str, str], list[Recipient]], notify: Notify) -> None:
    """Writes, in `tx`, the in-app notifications and the deliveries that `notice` owes for `entities`
    (`owed_deliveries`)."""
    common = {"run_id": notice.run_id, "org_id": notice.org_id, "rule_id": notice.rule_id, "kind": notice.kind}
    for owed in owed_deliveries(notice, entities, recipients, notify):
        if owed.notification_entities is not None:
            tx.execute("insert_notification", org_id=notice.org_id, user_id=owed.user_id, rule_id=notice.rule_id,
                       run_id=notice.run_id, severity=notice.severity, kind=notice.kind,
                       entities=json.dumps(owed.notification_entities), storm=notice.storm is not None,
                       entity_count=owed.payload["entities"])
        tx.execute("insert_delivery", **common, idempotency_key=owed.idempotency_key, channel=owed.channel,
                   recipient=owed.recipient, user_id=owed.user_id, payload=json.dumps(owed.payload),
                   status="sent" if owed.sent else "pending", attempts=1 if owed.sent else 0)


def pending_delivery_ids(postgres: Postgres, run_ids: Sequence[str]) -> list[int]:
    """The ids of the deliveries of the runs `run_ids` still pending, in id order (one query)."""
    return [row["id"] for row in postgres.all("pending_deliveries_of_runs", run_ids=list(run_ids))]


def signature(secret: str, body: bytes) -> str:
    """The `X-Signature` header value of a webhook body: `sha256=` and the hex HMAC-SHA256 of the body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class DeliveryOutcome:
    """What one attempt did: the delivery's status after it, and the seconds until the next try when pending."""

    status: str
    retry_in: float | None = None
    error: str | None = None


def post_request(channel: str, body: dict[str, Any], idempotency_key: str,
                 webhook_secret: str | None) -> tuple[bytes, dict[str, str]]:
    """The bytes and extra headers of a Slack or webhook post: compact UTF-8 JSON (`post_bytes`), the
    `Idempotency-Key`, and for a webhook, when a secret is set, the `X-Signature` of exactly those bytes."""
    encoded = post_bytes(body)
    headers = {"Idempotency-Key": idempotency_key}
    if channel == "webhook" and webhook_secret:
        headers["X-Signature"] = signature(webhook_secret, encoded)
    return encoded, headers


def failure_outcome(failure: DeliveryFailed, attempts_made: int, policy: RetryPolicy,
                    rng: random.Random | None = None) -> DeliveryOutcome:
    """What a failed attempt leaves: `failed` when the failure is permanent or `policy` allows no more tries after
    `attempts_made`, else `pending` with the policy's backoff before the next try."""
    error = str(failure)
    if failure.permanent or not policy.allows(attempts_made):
        return DeliveryOutcome("failed", error=error)
    return DeliveryOutcome("pending", retry_in=policy.delay(attempts_made, rng), error=error)


def _send(row: dict[str, Any], config: Settings) -> None:
    payload, key = row["payload"], str(row["idempotency_key"])
    if row["channel"] == "email":
        send_email(config.smtp_url, config.smtp_from, row["recipient"], payload["subject"], payload["text"], key)
        return
    body, headers = post_request(row["channel"], payload["body"], key, config.webhook_secret)
    post_json(row["recipient"], body, headers, config.notify_allowed_hosts)


def deliver(postgres: Postgres, delivery_id: int, config: Settings) -> DeliveryOutcome | None:
    """Makes one attempt at the delivery, if it is due and nobody else holds it (None otherwise), and records it."""
    row = postgres.one("claim_delivery", delivery_id=delivery_id, lease_seconds=DELIVERY_LEASE_SECONDS)
    if row is None:
        return None
    try:
        _send(row, config)
    except DeliveryFailed as failure:
        outcome = failure_outcome(failure, row["attempts"], delivery_retry(config))
        if outcome.status == "failed":
            postgres.execute("record_delivery_failed", delivery_id=delivery_id, error=outcome.error)
        else:
            postgres.execute("record_delivery_retry", delivery_id=delivery_id, error=outcome.error,
                             delay_seconds=outcome.retry_in)
        return outcome
    postgres.execute("record_delivery_sent", delivery_id=delivery_id)
    return DeliveryOutcome("sent")
