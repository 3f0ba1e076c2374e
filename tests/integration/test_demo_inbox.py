"""The demo's local inbox: its mail sink and webhook receiver as real processes on free loopback ports, fed by the
service's own senders (worker/channels.py) over real SMTP and HTTP, and `rulesctl demo-inbox` reading what they kept.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from demo.inbox import INBOX_DIR_NAME, WEBHOOK_SECRET
from tests.conftest import RULESCTL, free_port, stop_process
from worker.channels import DeliveryFailed, post_json, send_email
from worker.deliveries import signature
from worker.service import http_answers, smtp_answers

HOST = "127.0.0.1"


@dataclass
class LocalInbox:
    data_dir: Path
    smtp_port: int
    http_port: int

    @property
    def allowed(self) -> frozenset[str]:
        return frozenset({f"{HOST}:{self.http_port}"})

    def url(self, path: str) -> str:
        return f"http://{HOST}:{self.http_port}{path}"


def _ready(check, process: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 30
    while not check():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start: {process.communicate()[0]}")
        time.sleep(0.1)


def start_receiver(module: str, port: int, inbox_dir: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", module, "--port", str(port), "--inbox", str(inbox_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture
def local_inbox(tmp_path):
    data_dir = tmp_path / "data"
    smtp_port, http_port = free_port(), free_port()
    sink = start_receiver("demo.mail_sink", smtp_port, data_dir / INBOX_DIR_NAME)
    receiver = start_receiver("demo.webhook_receiver", http_port, data_dir / INBOX_DIR_NAME)
    try:
        _ready(lambda: smtp_answers(HOST, smtp_port), sink, "the mail sink")
        _ready(lambda: http_answers(f"http://{HOST}:{http_port}/"), receiver, "the webhook receiver")
        yield LocalInbox(data_dir, smtp_port, http_port)
    finally:
        stop_process(sink)
        stop_process(receiver)


def demo_inbox(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([RULESCTL, "demo-inbox", "--data-dir", str(data_dir), *args], capture_output=True,
                          text=True, timeout=60)


def webhook_body(rule: str, entities: int, event: str = "alert") -> bytes:
    return json.dumps({"event": event, "delivery_id": "d-1", "rule": {"id": "r", "name": rule, "severity": "critical"},
                       "entities": [{"entity_id": f"c-{i}"} for i in range(entities)]},
                      ensure_ascii=False).encode()


def test_received_mail_and_posts_are_listed_with_their_signature_check(local_inbox):
    smtp_url = f"smtp://{HOST}:{local_inbox.smtp_port}"
    send_email(smtp_url, "rules@demo.example", "owner@demo.example", "[critical] Overspend: 2 entities matched",
               "two campaigns\n", "m-1")
    send_email(smtp_url, "rules@demo.example", "buyer@demo.example", "[warning] CTR: 1 entity matched",
               "one campaign\n", "m-2")
    post_json(local_inbox.url("/slack"), json.dumps({"text": "*[critical] Overspend: 2 entities matched*\n- c-1"}).encode(),
              {"Idempotency-Key": "s-1"}, local_inbox.allowed)
    signed = webhook_body("Overspend – “yesterday”", 2)
    post_json(local_inbox.url("/webhook"), signed,
              {"Idempotency-Key": "w-1", "X-Signature": signature(WEBHOOK_SECRET, signed)}, local_inbox.allowed)
    forged = webhook_body("Forged", 3)
    post_json(local_inbox.url("/webhook"), forged,
              {"Idempotency-Key": "w-2", "X-Signature": signature("another secret", forged)}, local_inbox.allowed)
    post_json(local_inbox.url("/webhook"), webhook_body("Unsigned", 1, event="resolved"), {"Idempotency-Key": "w-3"},
              local_inbox.allowed)

    listed = demo_inbox(local_inbox.data_dir, "--json")
    table = demo_inbox(local_inbox.data_dir)

    assert listed.returncode == 0, listed.stderr
    summaries = [json.loads(line) for line in listed.stdout.splitlines()]
    by_channel: dict[str, list[dict]] = {}
    for summary in summaries:
        by_channel.setdefault(summary["channel"], []).append(summary)
        assert summary["received_at"].endswith("Z")
    assert [(s["subject"], s["recipients"], s["message_id"]) for s in by_channel["email"]] == [
        ("[critical] Overspend: 2 entities matched", ["owner@demo.example"], "<m-1@rules>"),
        ("[warning] CTR: 1 entity matched", ["buyer@demo.example"], "<m-2@rules>")]
    assert [(s["subject"], s["idempotency_key"]) for s in by_channel["slack"]] == [
        ("[critical] Overspend: 2 entities matched", "s-1")]
    assert [(s["event"], s["rule"], s["entities"], s["signature"], s["idempotency_key"])
            for s in by_channel["webhook"]] == [
        ("alert", "Overspend – “yesterday”", 2, "valid", "w-1"),
        ("alert", "Forged", 3, "invalid", "w-2"),
        ("resolved", "Unsigned", 1, "missing", "w-3")]

    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert len(lines) == 6, table.stdout
    [good] = [line for line in lines if "Overspend – “yesterday”" in line]
    [bad] = [line for line in lines if "'Forged'" in line]
    [unsigned] = [line for line in lines if "'Unsigned'" in line]
    assert "webhook" in good and "2 entities" in good and "signature ok" in good
    assert "3 entities" in bad and "signature FAILS" in bad
    assert "1 entity," in unsigned and "no X-Signature" in unsigned
    [mail] = [line for line in lines if "owner@demo.example" in line]
    assert "email" in mail and "[critical] Overspend: 2 entities matched" in mail


def test_a_post_it_cannot_show_is_refused_and_not_kept(local_inbox):
    refusals = []
    for path, body in [("/webhook", b"not json"), ("/webhook", b'{"event": "alert"}'), ("/slack", b"[1, 2]"),
                       ("/elsewhere", webhook_body("Overspend", 1))]:
        with pytest.raises(DeliveryFailed) as failure:
            post_json(local_inbox.url(path), body, {}, local_inbox.allowed)
        refusals.append(str(failure.value))

    assert [reason.rsplit("HTTP ", 1)[1].split()[0] for reason in refusals] == ["400", "400", "400", "404"]
    empty = demo_inbox(local_inbox.data_dir)
    assert empty.returncode == 0 and "nothing received yet" in empty.stdout


def test_an_empty_inbox_says_so_and_how_to_start_the_demo(tmp_path):
    text = demo_inbox(tmp_path)
    as_json = demo_inbox(tmp_path, "--json")

    assert text.returncode == 0, text.stderr
    [line] = text.stdout.splitlines()
    assert "nothing received yet" in line and "rulesctl up --demo" in line
    assert as_json.returncode == 0 and as_json.stdout == ""
    assert "nothing received yet" in as_json.stderr


def test_an_unreadable_inbox_line_is_one_line_naming_it(local_inbox):
    send_email(f"smtp://{HOST}:{local_inbox.smtp_port}", None, "owner@demo.example", "kept", "text\n", "m-3")
    posts = local_inbox.data_dir / INBOX_DIR_NAME / "posts.jsonl"
    posts.write_text('{"channel": "webhook"}\n')

    process = demo_inbox(local_inbox.data_dir)

    assert process.returncode == 1 and process.stdout == ""
    [line] = process.stderr.splitlines()
    assert line.startswith("rulesctl: ") and f"{posts} line 1" in line, line


def test_a_receiver_whose_port_is_taken_exits_with_one_line(tmp_path):
    with socket.socket() as holder:
        holder.bind((HOST, 0))
        holder.listen()
        port = holder.getsockname()[1]
        for module in ("demo.mail_sink", "demo.webhook_receiver"):
            process = start_receiver(module, port, tmp_path)
            output, _ = process.communicate(timeout=30)

            assert process.returncode == 1, output
            [line] = output.splitlines()
            assert f"cannot listen on {HOST}:{port}" in line, line
