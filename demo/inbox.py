"""The demo's local inbox: where its mail sink and webhook receiver listen, what they keep, and what
`rulesctl demo-inbox` prints of it.

`rulesctl up --demo` runs both receivers on loopback (demo/mail_sink.py, demo/webhook_receiver.py) and points the
demo rules' e-mail, Slack and webhook channels at them. Each keeps what it receives as JSON lines under
`<data dir>/demo-inbox/`, one object per message or post, each appended with a single write.
"""

from __future__ import annotations

import argparse
import hmac
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine.timestamps import utc_iso
from worker.deliveries import signature

HOST = "127.0.0.1"
MAIL_PORT = 2525
WEBHOOK_PORT = 8525
SLACK_PATH = "/slack"
WEBHOOK_PATH = "/webhook"
SMTP_URL = f"smtp://{HOST}:{MAIL_PORT}"
SENDER = "rules@demo.example"
SLACK_URL = f"http://{HOST}:{WEBHOOK_PORT}{SLACK_PATH}"
WEBHOOK_URL = f"http://{HOST}:{WEBHOOK_PORT}{WEBHOOK_PATH}"
# Known to anyone who reads this file: it only shows that the worker signs its webhook posts and how to check them.
WEBHOOK_SECRET = "demo-webhook-secret"

INBOX_DIR_NAME = "demo-inbox"
MAIL_FILE = "mail.jsonl"
POSTS_FILE = "posts.jsonl"


def receiver_arguments(module: str, description: str | None, port: int,
                       argv: list[str] | None) -> argparse.Namespace:
    """The command line of a receiver run as `python -m <module>`: --host, --port and --inbox (its directory)."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=description)
    parser.add_argument("--host", default=HOST)
    parser.add_argument("--port", type=int, default=port)
    parser.add_argument("--inbox", type=Path, required=True, help="the demo inbox directory")
    return parser.parse_args(argv)


class InboxError(Exception):
    """An inbox file that cannot be read; the message names the file and the line."""


def received_now() -> str:
    """The time stamp a receiver gives what it receives now (ISO 8601 UTC)."""
    return utc_iso(datetime.now(UTC))


def signature_check(body: str, header: str | None) -> str:
    """`valid` when `header` is the X-Signature of `body` under the demo secret, `invalid` when it is another,
    `missing` without one."""
    if header is None:
        return "missing"
    return "valid" if hmac.compare_digest(signature(WEBHOOK_SECRET, body.encode()), header) else "invalid"


def summarise(record: dict[str, Any]) -> dict[str, Any]:
    """What `rulesctl demo-inbox --json` says of one received record: for a message its time, channel, subject and
    recipients; for a webhook post its event, rule, entity count and signature check. ValueError when the record is
    not one the receivers write."""
    try:
        return _summary(record)
    except (KeyError, TypeError, AttributeError, IndexError, ValueError):
        raise ValueError("not a record of the demo inbox") from None


def _summary(record: dict[str, Any]) -> dict[str, Any]:
    channel = record["channel"]
    common = {"received_at": record["received_at"], "channel": channel}
    if channel == "email":
        return {**common, "subject": record["subject"], "recipients": list(record["recipients"]),
                "message_id": record["message_id"]}
    body = json.loads(record["body"])
    if channel == "slack":
        return {**common, "subject": body["text"].splitlines()[0].strip("*"), "recipients": [record["path"]],
                "idempotency_key": record["idempotency_key"]}
    if channel == "webhook":
        # A body lists at most some of its entities; `entity_count` counts them all (posts kept from before it
        # existed list every one).
        count = body.get("entity_count", len(body["entities"]))
        return {**common, "event": body["event"], "rule": body["rule"]["name"], "entities": count,
                "signature": signature_check(record["body"], record["signature"]),
                "idempotency_key": record["idempotency_key"]}
    raise ValueError(f"unknown channel {channel!r}")


SIGNATURE_TEXT = {"valid": "signature ok", "invalid": "signature FAILS: not the demo secret's",
                  "missing": "no X-Signature"}


def describe(summary: dict[str, Any]) -> str:
    """One line of `rulesctl demo-inbox` for a summary made by `summarise`."""
    head = f"{summary['received_at']}  {summary['channel']:<8} "
    if summary["channel"] == "webhook":
        noun = "entity" if summary["entities"] == 1 else "entities"
        return (f"{head}{summary['event']} of rule {summary['rule']!r}: {summary['entities']} {noun}, "
                f"{SIGNATURE_TEXT[summary['signature']]}")
    return f"{head}{summary['subject']}  to {', '.join(summary['recipients'])}"


class Inbox:
    """The JSON-lines files of one inbox directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def append(self, file_name: str, record: dict[str, Any]) -> None:
        """Appends `record` as one JSON line to the file `file_name`, in one write, creating what is missing."""
        line = (json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n").encode()
        self.directory.mkdir(parents=True, exist_ok=True)
        handle = os.open(self.directory / file_name, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(handle, line)
        finally:
            os.close(handle)

    def summaries(self) -> list[dict[str, Any]]:
        """The summary of everything received, oldest first; [] when nothing was. Raises InboxError naming the
        file and line of a line that is not a record the receivers write."""
        found: list[dict[str, Any]] = []
        for file_name in (MAIL_FILE, POSTS_FILE):
            path = self.directory / file_name
            try:
                text = path.read_text(encoding="utf-8")
            except FileNotFoundError:
                continue
            except (OSError, UnicodeDecodeError) as error:
                raise InboxError(f"cannot read {path}: {error}") from None
            for number, line in enumerate(text.splitlines(), start=1):
                try:
                    record = json.loads(line)
                except ValueError:
                    raise InboxError(f"{path} line {number}: not JSON") from None
                try:
                    found.append(summarise(record))
                except ValueError as error:
                    raise InboxError(f"{path} line {number}: {error}") from None
        return sorted(found, key=lambda summary: summary["received_at"])
