"""The demo's mail sink: a real SMTP server (aiosmtpd) on loopback that accepts every message and keeps it in the
demo inbox. `rulesctl up --demo` runs it as `python -m demo.mail_sink`; it prints one line per message."""

from __future__ import annotations

import asyncio
import email.policy
import signal
import sys
from email.message import EmailMessage
from email.parser import BytesParser

from aiosmtpd.smtp import SMTP, Envelope, Session

from demo.inbox import MAIL_FILE, MAIL_PORT, Inbox, describe, receiver_arguments, received_now, summarise


def mail_record(envelope: Envelope) -> dict:
    """The inbox record of one accepted message: envelope sender and recipients, subject, Message-ID and text."""
    raw = envelope.original_content or envelope.content or b""
    message = BytesParser(policy=email.policy.default).parsebytes(raw if isinstance(raw, bytes) else raw.encode())
    assert isinstance(message, EmailMessage)
    body = message.get_body(("plain",))
    return {"received_at": received_now(), "channel": "email", "mail_from": envelope.mail_from or "",
            "recipients": list(envelope.rcpt_tos), "subject": str(message.get("Subject", "")),
            "message_id": str(message.get("Message-ID", "")), "text": body.get_content() if body else ""}


class MailSink:
    """aiosmtpd handler: keeps each message in the inbox and prints a line about it."""

    def __init__(self, inbox: Inbox) -> None:
        self._inbox = inbox

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        record = mail_record(envelope)
        self._inbox.append(MAIL_FILE, record)
        print(f"received {describe(summarise(record))}", flush=True)
        return "250 OK: kept in the demo inbox"


async def serve(host: str, port: int, inbox: Inbox) -> None:
    """Accepts mail on host:port until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(MailSink(inbox), hostname="demo-inbox"), host, port)
    stopped = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopped.set)
    print(f"accepting mail at smtp://{host}:{port}; it is kept in {inbox.directory}", flush=True)
    async with server:
        await stopped.wait()


def main(argv: list[str] | None = None) -> int:
    """Runs the mail sink; exit 1 with one line when its port cannot be had."""
    args = receiver_arguments("demo.mail_sink", __doc__, MAIL_PORT, argv)
    try:
        asyncio.run(serve(args.host, args.port, Inbox(args.inbox)))
    except OSError as error:
        print(f"mail sink: cannot listen on {args.host}:{args.port}: {error.strerror or error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
