"""The demo's webhook receiver: a real HTTP server (the standard library's) on loopback that takes Slack-style posts
on /slack and signed webhook posts on /webhook and keeps them in the demo inbox. `rulesctl up --demo` runs it as
`python -m demo.webhook_receiver`; it prints one line per post.

A post is kept with its exact body and its X-Signature and Idempotency-Key headers and answered 200. One that is
not UTF-8 JSON of the channel's shape (`{"text": …}` for Slack; `event`, `rule.name` and `entities` for a webhook)
is answered 400 saying why, and is not kept. GET answers 200, so that a readiness check can ask.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from demo.inbox import (POSTS_FILE, SLACK_PATH, WEBHOOK_PATH, WEBHOOK_PORT, Inbox, describe, receiver_arguments,
                        received_now, summarise)

CHANNELS = {SLACK_PATH: "slack", WEBHOOK_PATH: "webhook"}
MAX_BODY_BYTES = 1 << 20
# Posts are handled on threads of their own; their lines must not interleave in the log.
_print_lock = threading.Lock()


def body_problem(channel: str, body: bytes) -> str | None:
    """Why `body` is not a post of `channel` the inbox can show, or None."""
    try:
        document = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return "the body is not UTF-8 JSON"
    if not isinstance(document, dict):
        return "the body is not a JSON object"
    if channel == "slack":
        return None if isinstance(document.get("text"), str) and document["text"] else 'a Slack post needs "text"'
    rule = document.get("rule")
    if not (isinstance(document.get("event"), str) and isinstance(rule, dict) and isinstance(rule.get("name"), str)
            and isinstance(document.get("entities"), list)):
        return 'a webhook post needs "event", "rule": {"name": …} and "entities": […]'
    return None


def _content_length(header: str | None) -> int:
    try:
        return int(header or 0)
    except ValueError:
        return -1


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        self._answer(200, f"demo inbox: POST to {SLACK_PATH} or {WEBHOOK_PATH}")

    def do_POST(self) -> None:
        channel = CHANNELS.get(self.path)
        length = _content_length(self.headers.get("Content-Length"))
        if channel is None:
            self._answer(404, f"no such inbox: POST to {SLACK_PATH} or {WEBHOOK_PATH}")
            return
        if not 0 < length <= MAX_BODY_BYTES:
            self._answer(400, f"a post needs a body of 1 to {MAX_BODY_BYTES} bytes with its Content-Length")
            return
        body = self.rfile.read(length)
        problem = body_problem(channel, body)
        if problem:
            self._answer(400, problem)
            return
        record = {"received_at": received_now(), "channel": channel, "path": self.path, "body": body.decode(),
                  "signature": self.headers.get("X-Signature"), "idempotency_key": self.headers.get("Idempotency-Key")}
        self.server.inbox.append(POSTS_FILE, record)
        with _print_lock:
            print(f"received {describe(summarise(record))}", flush=True)
        self._answer(200, "ok")

    def _answer(self, status: int, text: str) -> None:
        answer = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # each kept post gets its own line; the access log would repeat it


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], inbox: Inbox) -> None:
        super().__init__(address, _Handler)
        self.inbox = inbox


def _stop(signum: int, _frame: object) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    """Runs the receiver until SIGTERM or SIGINT; exit 1 with one line when its port cannot be had."""
    args = receiver_arguments("demo.webhook_receiver", __doc__, WEBHOOK_PORT, argv)
    try:
        server = _Server((args.host, args.port), Inbox(args.inbox))
    except OSError as error:
        print(f"webhook receiver: cannot listen on {args.host}:{args.port}: {error.strerror or error}",
              file=sys.stderr)
        return 1
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _stop)
    print(f"accepting posts at http://{args.host}:{args.port}{SLACK_PATH} and {WEBHOOK_PATH}; they are kept in "
          f"{args.inbox}", flush=True)
    with server:
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
