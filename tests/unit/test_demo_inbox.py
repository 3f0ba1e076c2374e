"""What the demo inbox says of a received record (demo/inbox.py), without a server."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from demo.inbox import WEBHOOK_SECRET, describe, signature_check, summarise

BODY = json.dumps({"event": "alert", "rule": {"name": "Overspend"}, "entities": [{"entity_id": "c-1"}]},
                  ensure_ascii=False)


def header(secret: str, body: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body.encode(), hashlib.sha256).hexdigest()


def post(body: str = BODY, signature: str | None = None, channel: str = "webhook") -> dict:
    return {"received_at": "2026-11-25T09:00:03Z", "channel": channel, "path": f"/{channel}", "body": body,
            "signature": signature, "idempotency_key": "k-1"}


def test_the_signature_check_is_hmac_sha256_of_the_exact_body_under_the_demo_secret():
    assert signature_check(BODY, header(WEBHOOK_SECRET, BODY)) == "valid"
    assert signature_check(BODY + " ", header(WEBHOOK_SECRET, BODY)) == "invalid"
    assert signature_check(BODY, header("another secret", BODY)) == "invalid"
    assert signature_check(BODY, "sha256=") == "invalid"
    assert signature_check(BODY, None) == "missing"


def test_a_webhook_post_is_summarised_with_event_rule_entity_count_and_check():
    good = summarise(post(signature=header(WEBHOOK_SECRET, BODY)))
    bad = summarise(post(signature=header("another secret", BODY)))

    assert good == {"received_at": "2026-11-25T09:00:03Z", "channel": "webhook", "event": "alert",
                    "rule": "Overspend", "entities": 1, "signature": "valid", "idempotency_key": "k-1"}
    assert bad["signature"] == "invalid"
    assert describe(good).endswith("alert of rule 'Overspend': 1 entity, signature ok")
    assert "signature FAILS" in describe(bad)


def test_messages_are_summarised_with_subject_and_recipients():
    slack = summarise(post(json.dumps({"text": "*[critical] Overspend: 2 entities matched*\n- c-1"}), channel="slack"))
    mail = summarise({"received_at": "2026-11-25T09:00:01Z", "channel": "email", "mail_from": "rules@demo.example",
                      "recipients": ["owner@demo.example"], "subject": "[critical] Overspend: 2 entities matched",
                      "message_id": "<k-2@rules>", "text": "..."})

    assert slack["subject"] == "[critical] Overspend: 2 entities matched" and slack["recipients"] == ["/slack"]
    assert describe(mail) == ("2026-11-25T09:00:01Z  email    [critical] Overspend: 2 entities matched  "
                              "to owner@demo.example")


@pytest.mark.parametrize("record", [{}, [], {"channel": "email", "received_at": "t"}, post(body="[]"), post(body="{"),
                                    post(body='{"text": ""}', channel="slack"), {**post(), "channel": "fax"}])
def test_a_record_the_receivers_do_not_write_is_refused(record):
    with pytest.raises(ValueError, match="not a record of the demo inbox"):
        summarise(record)


def test_a_webhook_post_listing_some_of_its_entities_is_counted_by_its_entity_count():
    body = json.dumps({"event": "alert", "rule": {"name": "Overspend"}, "storm": True, "entity_count": 150,
                       "entities": [{"entity_id": f"c-{n}"} for n in range(20)]})

    assert summarise(post(body))["entities"] == 150
