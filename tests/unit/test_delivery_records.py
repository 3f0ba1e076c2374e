"""The deliveries a run owes whom, the bytes and headers of a post, and what a failed attempt leads to: retry or
failed, and after how long. Plain data in and out, no server."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import random
import smtplib
from datetime import UTC, datetime

import pytest

from engine.model import Notify
from worker.audience import Entity, Recipient
from worker.channels import DeliveryFailed, checked_address, http_failure, send_email, smtp_failure
from worker.deliveries import (
    delivery_retry,
    failure_outcome,
    owed_deliveries,
    post_request,
    signature,
)
from worker.messages import RunNotice
from worker.retry import RetryPolicy
from worker.settings import Settings

NOTICE = RunNotice(kind="alert", run_id="run-1", org_id=4, rule_id="rule-1", rule_name="Overspend",
                   severity="warning", evaluated_at=datetime(2026, 11, 25, 9, tzinfo=UTC))
SLACK_URL = "https://hooks.slack.com/services/T000/B000/XXXX"
WEBHOOK_URL = "https://alerts.example.com/hooks/rules"
ALL_CHANNELS = ("in_app", "email", "slack", "webhook")


def campaign(entity_id: str) -> Entity:
    return Entity("campaign", entity_id, f"Campaign {entity_id}",
                  json.dumps({"spend": 200, "conditions": [True]}), "DV360", "adv-1")


C1, C2, C3 = campaign("c1"), campaign("c2"), campaign("c3")
# User 3 may see c1 and c2, user 1 (unverified address) c1 only, user 2 c2 only; nobody may see c3.
USER_1 = Recipient(1, "one@example.com", email_verified=False)
USER_2 = Recipient(2, "two@example.com", email_verified=True)
USER_3 = Recipient(3, "three@example.com", email_verified=True)
RECIPIENTS = {C1.key: [USER_1, USER_3], C2.key: [USER_2, USER_3]}


def owed(channels=ALL_CHANNELS, entities=(C1, C2, C3), recipients=None, notice=NOTICE):
    notify = Notify(channels=channels, slack_webhook_url=SLACK_URL if "slack" in channels else None,
                    webhook_url=WEBHOOK_URL if "webhook" in channels else None)
    return owed_deliveries(notice, list(entities), RECIPIENTS if recipients is None else recipients, notify)


def listed_ids(text: str) -> list[str]:
    """The entity ids an e-mail or Slack text lists (`- campaign Campaign c1 (c1): …`)."""
    return [line.split("(")[1].split(")")[0] for line in text.splitlines() if line.startswith("- ")]


# --- what a run owes -----------------------------------------------------------------------------------------------


def test_in_app_is_one_sent_delivery_per_user_holding_the_entities_that_user_may_see():
    deliveries = owed(channels=("in_app",))

    assert [(d.channel, d.user_id, d.recipient) for d in deliveries] == [
        ("in_app", 1, "1"), ("in_app", 2, "2"), ("in_app", 3, "3")]
    seen = {d.user_id: [record["entity_id"] for record in d.notification_entities] for d in deliveries}
    assert seen == {1: ["c1"], 2: ["c2"], 3: ["c1", "c2"]}
    assert {d.user_id: d.payload for d in deliveries} == {1: {"entities": 1}, 2: {"entities": 1}, 3: {"entities": 2}}
    assert all(d.sent for d in deliveries)


def test_email_goes_only_to_verified_addresses_listing_only_that_users_entities():
    deliveries = owed(channels=("email",))

    assert [(d.user_id, d.recipient) for d in deliveries] == [(2, USER_2.email), (3, USER_3.email)]
    for delivery, own in zip(deliveries, (["c2"], ["c1", "c2"]), strict=True):
        assert listed_ids(delivery.payload["text"]) == own
        assert delivery.payload["subject"].endswith(f"{len(own)} {'entity' if len(own) == 1 else 'entities'} matched")
        assert not delivery.sent
        assert delivery.notification_entities is None


def test_slack_and_webhook_are_one_post_per_run_with_every_entity_even_those_nobody_may_see():
    for recipients in (RECIPIENTS, {}):
        deliveries = owed(channels=("slack", "webhook"), recipients=recipients)

        assert [(d.channel, d.recipient, d.user_id) for d in deliveries] == [
            ("slack", SLACK_URL, None), ("webhook", WEBHOOK_URL, None)]
        slack, webhook = deliveries
        assert listed_ids(slack.payload["body"]["text"]) == ["c1", "c2", "c3"]
        assert [record["entity_id"] for record in webhook.payload["body"]["entities"]] == ["c1", "c2", "c3"]
        assert not slack.sent and not webhook.sent


def test_the_webhook_bodys_delivery_id_is_its_deliverys_idempotency_key():
    [webhook] = owed(channels=("webhook",))

    assert webhook.payload["body"]["delivery_id"] == webhook.idempotency_key
    assert webhook.payload["body"]["event"] == NOTICE.kind


def test_every_channel_in_order_per_user_then_per_run_each_with_its_own_key():
    deliveries = owed()

    assert [(d.channel, d.user_id) for d in deliveries] == [
        ("in_app", 1), ("in_app", 2), ("email", 2), ("in_app", 3), ("email", 3), ("slack", None), ("webhook", None)]
    keys = [d.idempotency_key for d in deliveries]
    assert len(set(keys)) == len(keys)


def test_keys_are_fresh_on_every_call():
    first, second = owed(), owed()

    assert not {d.idempotency_key for d in first} & {d.idempotency_key for d in second}


def test_a_resolved_notice_owes_resolved_messages():
    resolved = dataclasses.replace(NOTICE, kind="resolved")
    by_channel = {d.channel: d for d in owed(channels=("email", "webhook"), notice=resolved)}

    assert by_channel["webhook"].payload["body"]["event"] == "resolved"
    assert by_channel["email"].payload["subject"].startswith("[resolved] ")


def test_nothing_is_owed_for_no_entities_or_to_nobody():
    assert owed(entities=()) == []
    assert owed(channels=("in_app", "email"), recipients={}) == []


def test_a_channel_not_listed_owes_nothing_even_with_its_url_set():
    notify = Notify(channels=("in_app",), slack_webhook_url=SLACK_URL, webhook_url=WEBHOOK_URL)

    assert {d.channel for d in owed_deliveries(NOTICE, [C1], RECIPIENTS, notify)} == {"in_app"}


# --- the bytes and headers of a post -------------------------------------------------------------------------------


def test_signature_is_the_hmac_sha256_of_the_body_in_hex():
    # RFC 4231, test case 2.
    assert signature("Jefe", b"what do ya want for nothing?") == (
        "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")


def test_a_signed_webhook_post_signs_exactly_the_bytes_it_sends():
    body = {"event": "alert", "rule": {"name": "Dépense élevée"}, "entities": [{"values": {"spend": 1.5}}]}
    sent, headers = post_request("webhook", body, "key-1", "s3cret")

    assert json.loads(sent) == body
    assert "Dépense élevée".encode() in sent
    assert b", " not in sent and b": " not in sent
    assert headers == {"Idempotency-Key": "key-1",
                       "X-Signature": "sha256=" + hmac.new(b"s3cret", sent, hashlib.sha256).hexdigest()}


@pytest.mark.parametrize(("channel", "secret"), [("webhook", None), ("webhook", ""), ("slack", "s3cret")])
def test_a_post_is_unsigned_without_a_secret_and_slack_never_is(channel, secret):
    sent, headers = post_request(channel, {"text": "hi"}, "key-2", secret)

    assert sent == b'{"text":"hi"}'
    assert headers == {"Idempotency-Key": "key-2"}


# --- retry or failed -----------------------------------------------------------------------------------------------

POLICY = RetryPolicy(max_attempts=4, backoff_min=10, backoff_max=50)


@pytest.mark.parametrize(("attempts_made", "shortest", "longest"), [(1, 5, 10), (2, 10, 20), (3, 20, 40)])
def test_a_failure_that_may_pass_is_pending_with_a_jittered_backoff_while_tries_remain(attempts_made, shortest,
                                                                                        longest):
    waits = []
    for seed in range(50):
        outcome = failure_outcome(DeliveryFailed("timed out"), attempts_made, POLICY, random.Random(seed))
        assert (outcome.status, outcome.error) == ("pending", "timed out")
        waits.append(outcome.retry_in)

    assert shortest <= min(waits) < max(waits) <= longest


def test_the_backoff_stops_growing_at_its_cap():
    capped = RetryPolicy(max_attempts=20, backoff_min=10, backoff_max=50)
    waits = [failure_outcome(DeliveryFailed("x"), n, capped, random.Random(n)).retry_in for n in range(4, 20)]

    assert all(25 <= wait <= 50 for wait in waits)


def test_the_same_random_source_gives_the_same_wait():
    waits = {failure_outcome(DeliveryFailed("x"), 2, POLICY, random.Random(7)).retry_in for _ in range(3)}

    assert len(waits) == 1


def test_the_last_allowed_try_fails_with_its_error():
    outcome = failure_outcome(DeliveryFailed("127.0.0.1 answered HTTP 503"), POLICY.max_attempts, POLICY)

    assert (outcome.status, outcome.retry_in, outcome.error) == ("failed", None, "127.0.0.1 answered HTTP 503")


def test_a_permanent_failure_fails_at_once():
    outcome = failure_outcome(DeliveryFailed("refused", permanent=True), 1, POLICY)

    assert (outcome.status, outcome.retry_in, outcome.error) == ("failed", None, "refused")


def test_deliveries_retry_as_configured_and_never_wait_more_than_five_minutes():
    for attempts, first_wait in ((5, 30.0), (3, 0.5), (20, 300.0)):
        config = Settings(delivery_max_attempts=attempts, delivery_backoff_seconds=first_wait)
        policy = delivery_retry(config)

        assert (policy.max_attempts, policy.backoff_min, policy.backoff_max) == (attempts, first_wait, 300)
        waits = [failure_outcome(DeliveryFailed("x"), n, policy, random.Random(n)).retry_in
                 for n in range(1, attempts)]
        assert all(wait <= 300 for wait in waits)
        assert not policy.allows(attempts)
    assert 15 <= failure_outcome(DeliveryFailed("x"), 1, delivery_retry(Settings()), random.Random(1)).retry_in <= 30


# --- which HTTP answers and SMTP errors may pass -------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_a_2xx_answer_is_no_failure(status):
    assert http_failure("hooks.example.com", status, "OK") is None


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504, 599])
def test_timeouts_too_early_too_many_and_server_errors_may_pass(status):
    failure = http_failure("hooks.example.com", status, "Reason")

    assert not failure.permanent
    assert str(failure) == f"hooks.example.com answered HTTP {status} Reason"


@pytest.mark.parametrize("status", [100, 301, 302, 307, 308, 400, 401, 403, 404, 405, 409, 410, 413, 422, 426, 451])
def test_redirects_and_other_client_errors_are_permanent(status):
    assert http_failure("hooks.example.com", status, "Reason").permanent


def test_an_answer_without_a_reason_has_no_trailing_space():
    assert str(http_failure("h.example.com", 404, "")) == "h.example.com answered HTTP 404"


def test_a_recipient_refused_with_5xx_is_permanent_and_with_4xx_may_pass():
    to = "user@example.com"
    refused = smtp_failure(smtplib.SMTPRecipientsRefused({to: (550, b"no such user")}), "mx", 25, to)
    greylisted = smtp_failure(smtplib.SMTPRecipientsRefused({to: (450, b"try later")}), "mx", 25, to)

    assert (refused.permanent, str(refused)) == (True, "SMTP mx:25 refused user@example.com: b'no such user'")
    assert (greylisted.permanent, str(greylisted)) == (False, "SMTP mx:25 refused user@example.com: b'try later'")


def test_recipients_refused_partly_for_a_while_may_pass():
    to = "a@example.com"
    error = smtplib.SMTPRecipientsRefused({to: (550, b"no"), "b@example.com": (451, b"later")})

    assert not smtp_failure(error, "mx", 25, to).permanent


@pytest.mark.parametrize(("error", "permanent", "text"), [
    (smtplib.SMTPResponseException(421, b"busy"), False, "SMTP mx:587 answered 421 busy"),
    (smtplib.SMTPResponseException(554, "rejected"), True, "SMTP mx:587 answered 554 rejected"),
    (smtplib.SMTPSenderRefused(553, b"sender refused", "rules@example.com"), True,
     "SMTP mx:587 answered 553 sender refused"),
    (smtplib.SMTPDataError(452, b"mailbox full"), False, "SMTP mx:587 answered 452 mailbox full"),
    (smtplib.SMTPAuthenticationError(535, b"bad credentials"), True, "SMTP mx:587 answered 535 bad credentials"),
])
def test_an_smtp_answer_is_permanent_from_500_on(error, permanent, text):
    failure = smtp_failure(error, "mx", 587, "to@example.com")

    assert (failure.permanent, str(failure)) == (permanent, text)


@pytest.mark.parametrize(("error", "text"), [
    (ConnectionRefusedError(111, "Connection refused"), "SMTP mx:25: [Errno 111] Connection refused"),
    (TimeoutError("timed out"), "SMTP mx:25: timed out"),
    (smtplib.SMTPServerDisconnected(), "SMTP mx:25: SMTPServerDisconnected"),
])
def test_network_errors_and_a_dropped_connection_may_pass(error, text):
    failure = smtp_failure(error, "mx", 25, "to@example.com")

    assert (failure.permanent, str(failure)) == (False, text)


def test_email_without_an_smtp_url_fails_permanently_saying_so():
    with pytest.raises(DeliveryFailed) as failure:
        send_email(None, None, "to@example.com", "subject", "text", "key")

    assert failure.value.permanent
    assert "SMTP_URL is not set" in str(failure.value)


@pytest.mark.parametrize("url", ["ftp://hooks.example.com/x", "http://127.0.0.1:9000/h", "http://10.1.2.3/h",
                                 "http://169.254.169.254/latest", "https://localhost/h"])
def test_a_url_that_may_not_be_used_is_refused_permanently_before_any_lookup(url):
    with pytest.raises(DeliveryFailed) as failure:
        checked_address(url, frozenset())

    assert failure.value.permanent
