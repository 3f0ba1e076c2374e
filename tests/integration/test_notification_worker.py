"""Deliveries through the real processes: a rule worker, the notification worker (threads, as `rulesctl up` runs
it), Redis, a real SMTP server and HTTP receivers on loopback. A receiver that fails twice is retried to one
success; a receiver that hangs holds up neither runs nor other deliveries.
"""

from __future__ import annotations

import json

import pytest

from tests.integration.celery_support import iso, services_on, wait_until
from tests.integration.receivers import HttpReceiver, SmtpReceiver
from tests.integration.test_notifications import SPEND_OVER_100, T, make_team

SETTINGS = {"NOTIFY_ALLOWED_HOSTS": "127.0.0.1", "WEBHOOK_SECRET": "worker-secret", "DELIVERY_BACKOFF_SECONDS": "1"}


def deliveries(services, rule_id: str) -> list[dict]:
    return services.pg("SELECT d.* FROM deliveries d JOIN rule_runs r ON r.id = d.run_id WHERE r.rule_id = %s "
                       "ORDER BY d.channel, d.recipient", (rule_id,))


@pytest.mark.slow
def test_every_channel_is_delivered_once_and_a_failing_receiver_after_three_attempts(pg_url, migrated_ch_url,
                                                                                     tmp_path):
    with SmtpReceiver() as smtp, HttpReceiver() as http, services_on(
            pg_url, migrated_ch_url, 9, tmp_path, env={**SETTINGS, "SMTP_URL": smtp.url}) as services:
        data = services.data()
        team = make_team(data)
        http.answer("/hook", [500, 500])
        rule = data.rule(team.org, SPEND_OVER_100, {"notify": {
            "channels": ["in_app", "email", "slack", "webhook"], "roles": ["owner", "admin"],
            "slack_webhook_url": http.url("/slack"), "webhook_url": http.url("/hook")}})
        services.start_worker(queues="rules")
        services.start_notifier()

        summary = services.send("rules.evaluate", rule, scheduled_for=iso(T)).get(timeout=60)
        wait_until(lambda: all(d["status"] == "sent" for d in deliveries(services, rule)), 60,
                   "every delivery to be sent")
        hooks = http.wait_for(3, "/hook")
        mails = smtp.wait_for(2)

        rows = {(d["channel"], d["recipient"]): d for d in deliveries(services, rule)}
        assert summary["notified_users"] == sorted([team.owner, team.admin])
        assert sorted((channel, row["attempts"]) for (channel, _), row in rows.items()) == [
            ("email", 1), ("email", 1), ("in_app", 1), ("in_app", 1), ("slack", 1), ("webhook", 3)]
        webhook = rows[("webhook", http.url("/hook"))]
        assert webhook["last_error"] is None and webhook["sent_at"] is not None
        assert len(http.requests("/hook")) == 3 and len(http.requests("/slack")) == 1
        assert {h.headers["idempotency-key"] for h in hooks} == {str(webhook["idempotency_key"])}
        assert len({h.body for h in hooks}) == 1
        assert json.loads(hooks[0].body)["delivery_id"] == str(webhook["idempotency_key"])
        assert sorted(m.rcpt_tos[0] for m in mails) == sorted(
            [f"owner-{team.org}@example.com", f"admin-{team.org}@example.com"])
        assert len(services.pg("SELECT 1 FROM notifications WHERE run_id = %s", (summary["run_id"],))) == 2


@pytest.mark.slow
def test_a_hanging_receiver_delays_neither_runs_nor_other_deliveries(pg_url, migrated_ch_url, tmp_path):
    with HttpReceiver() as http, services_on(pg_url, migrated_ch_url, 9, tmp_path, env=SETTINGS) as services:
        data = services.data()
        team = make_team(data)
        http.hang("/stuck")
        stuck = data.rule(team.org, SPEND_OVER_100, {"notify": {"channels": ["webhook"],
                                                                "webhook_url": http.url("/stuck")}})
        other = data.rule(team.org, SPEND_OVER_100, {"notify": {"channels": ["slack"],
                                                                "slack_webhook_url": http.url("/fine")}})
        services.start_worker(queues="rules")
        services.start_notifier()

        services.send("rules.evaluate", stuck, scheduled_for=iso(T)).get(timeout=60)
        http.wait_for(1, "/stuck")
        other_summary = services.send("rules.evaluate", other, scheduled_for=iso(T)).get(timeout=30)
        http.wait_for(1, "/fine", timeout=8)

        [held] = deliveries(services, stuck)
        [sent] = deliveries(services, other)
        assert other_summary["status"] == "succeeded"
        assert (held["status"], held["attempts"]) == ("sending", 1)
        assert (sent["status"], sent["attempts"]) == ("sent", 1)
