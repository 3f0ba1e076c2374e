"""Real loopback receivers for outgoing notifications: an SMTP server (aiosmtpd) and an HTTP server.

Both listen on 127.0.0.1 on a free port, run in background threads of the test process, record what they receive
and are context managers that stop listening on exit. Nothing is mocked: the product under test talks to them over
real sockets, with real TLS when asked.
"""

from __future__ import annotations

import email.policy
import shutil
import socket
import ssl
import subprocess
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

HOST = "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _wait(condition: threading.Condition, current: Callable[[], int], count: int, timeout: float, what: str) -> None:
    """Waits on `condition` (held by the caller) until `current()` reaches `count`; AssertionError naming `what`."""
    if not condition.wait_for(lambda: current() >= count, timeout):
        raise AssertionError(f"timed out after {timeout:g} s waiting for {count} {what} (got {current()})")


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """Writes a self-signed certificate and its unencrypted key for `localhost` and 127.0.0.1 into `directory`.

    Returns (cert_path, key_path). The certificate names both in its subjectAltName and is valid for a few days;
    a client trusts it with `ssl.create_default_context(cafile=cert_path)` or, in a child process, with the
    environment variable SSL_CERT_FILE=cert_path.
    """
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("the openssl command line tool is not installed")
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "localhost.crt", directory / "localhost.key"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "3",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    return cert, key


def _server_context(cert: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert[0]), str(cert[1]))
    return context


def _authenticator(user: str, password: str) -> Callable[..., AuthResult]:
    expected = LoginPassword(user.encode(), password.encode())

    def check(server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any) -> AuthResult:
        return AuthResult(success=mechanism in ("PLAIN", "LOGIN") and data == expected, handled=False)

    return check


@dataclass
class ReceivedMail:
    """One message accepted by an SmtpReceiver: its envelope, the parsed message and whether TLS carried it."""

    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    tls: bool


class _MailHandler:
    """aiosmtpd handler: parses each accepted message and hands it to `record`."""

    def __init__(self, record: Callable[[ReceivedMail], None]) -> None:
        self._record = record

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content or b""
        if isinstance(raw, str):
            raw = raw.encode()
        transport = server.transport
        tls = session.ssl is not None or (transport is not None and transport.get_extra_info("ssl_object") is not None)
        self._record(ReceivedMail(
            mail_from=envelope.mail_from or "",
            rcpt_tos=list(envelope.rcpt_tos),
            message=BytesParser(policy=email.policy.default).parsebytes(raw),  # type: ignore[arg-type]
            tls=tls,
        ))
        return "250 OK"


class _Controller(Controller):
    def factory(self) -> SMTP:
        # Over SMTPS aiosmtpd cannot tell the session is encrypted, so AUTH needs auth_require_tls=False, which it
        # warns about on every connection; the receiver asks for that on purpose.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Requiring AUTH while not requiring TLS")
            return super().factory()


class SmtpReceiver:
    """An aiosmtpd SMTP server on 127.0.0.1 on a free port that accepts every message and records it.

    With `starttls_cert` (cert, key) it offers STARTTLS and refuses mail before it; with `implicit_tls_cert` it speaks
    SMTPS (TLS from the first byte). With `auth` (user, password) it offers AUTH PLAIN and LOGIN, accepts only that
    pair and refuses mail from unauthenticated sessions; with STARTTLS, AUTH is only offered once TLS is up.
    It listens as soon as it is constructed; `close()` (or leaving the `with` block) stops it.
    """

    def __init__(self, *, starttls_cert: tuple[Path, Path] | None = None,
                 implicit_tls_cert: tuple[Path, Path] | None = None,
                 auth: tuple[str, str] | None = None) -> None:
        if starttls_cert and implicit_tls_cert:
            raise ValueError("starttls_cert and implicit_tls_cert exclude each other")
        self._condition = threading.Condition()
        self._messages: list[ReceivedMail] = []
        self.port = _free_port()
        scheme = "smtps" if implicit_tls_cert else "smtp"
        credentials = f"{quote(auth[0], safe='')}:{quote(auth[1], safe='')}@" if auth else ""
        self.url = f"{scheme}://{credentials}{HOST}:{self.port}"
        options: dict[str, Any] = {}
        if starttls_cert:
            options.update(tls_context=_server_context(starttls_cert), require_starttls=True)
        if auth:
            options.update(authenticator=_authenticator(*auth), auth_required=True,
                           auth_require_tls=starttls_cert is not None)
        self._controller: Controller | None = _Controller(
            _MailHandler(self._record), hostname=HOST, port=self.port, server_hostname="localhost",
            ssl_context=_server_context(implicit_tls_cert) if implicit_tls_cert else None, **options,
        )
        self._controller.start()

    def _record(self, mail: ReceivedMail) -> None:
        with self._condition:
            self._messages.append(mail)
            self._condition.notify_all()

    @property
    def messages(self) -> list[ReceivedMail]:
        """A snapshot of the messages received so far, oldest first."""
        with self._condition:
            return list(self._messages)

    def wait_for(self, count: int, timeout: float = 30) -> list[ReceivedMail]:
        """Waits until at least `count` messages arrived and returns all of them; AssertionError after `timeout` s."""
        with self._condition:
            _wait(self._condition, lambda: len(self._messages), count, timeout,
                  f"message(s) at smtp receiver {HOST}:{self.port}")
            return list(self._messages)

    def close(self) -> None:
        """Stops the server; safe to call twice."""
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


@dataclass
class Received:
    """One POST an HttpReceiver got: the request path as sent, its headers (lower-cased names), body and arrival time
    (time.monotonic())."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    server: _Server

    def do_POST(self) -> None:
        receiver = self.server.receiver
        body = self._read_body()
        headers = {name.lower(): value for name, value in self.headers.items()}
        status = receiver._record(Received(self.path, headers, body, time.monotonic()))
        if status is None:
            receiver._released.wait()
            self.close_connection = True
            return
        answer = b"ok" if 200 <= status < 300 else f"error {status}".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    receiver: HttpReceiver


def _normalise(path: str) -> str:
    return path if path.startswith("/") else f"/{path}"


class HttpReceiver:
    """An HTTP server on 127.0.0.1 on a free port that records every POST and answers as scripted.

    By default every POST gets 200 with body `ok`. `answer(path, statuses)` makes the next requests to `path` get
    those statuses in order (non-2xx bodies are `error <status>`), then 200 again; `hang(path)` makes every later
    request to `path` get no answer at all until the receiver is closed. Paths are matched exactly, query included,
    and a missing leading slash is added. Requests are recorded before they are answered (or left hanging).
    It listens as soon as it is constructed; `close()` (or leaving the `with` block) releases hanging requests
    without an answer and stops it.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._received: list[Received] = []
        self._scripts: dict[str, deque[int]] = {}
        self._hanging: set[str] = set()
        self._released = threading.Event()
        self._server = _Server((HOST, 0), _Handler)
        self._server.receiver = self
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"http-receiver-{self.port}", daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        """The URL of `path` on this receiver, e.g. http://127.0.0.1:PORT/hook."""
        return f"http://{HOST}:{self.port}{_normalise(path)}"

    def answer(self, path: str, statuses: list[int]) -> None:
        """Makes the next len(statuses) requests to `path` get these statuses, in order, then 200 again."""
        with self._condition:
            self._scripts.setdefault(_normalise(path), deque()).extend(statuses)

    def hang(self, path: str) -> None:
        """Makes every later request to `path` be recorded and then never answered (until close())."""
        with self._condition:
            self._hanging.add(_normalise(path))

    def _record(self, request: Received) -> int | None:
        with self._condition:
            self._received.append(request)
            self._condition.notify_all()
            if request.path in self._hanging:
                return None
            script = self._scripts.get(request.path)
            return script.popleft() if script else 200

    def requests(self, path: str | None = None) -> list[Received]:
        """A snapshot of the POSTs received so far, oldest first, only those to `path` if given."""
        with self._condition:
            return self._select(path)

    def _select(self, path: str | None) -> list[Received]:
        wanted = None if path is None else _normalise(path)
        return [request for request in self._received if wanted is None or request.path == wanted]

    def wait_for(self, count: int, path: str | None = None, timeout: float = 30) -> list[Received]:
        """Waits until at least `count` POSTs (to `path` if given) arrived and returns them; AssertionError after
        `timeout` s."""
        where = self.url(path) if path is not None else f"http://{HOST}:{self.port}"
        with self._condition:
            _wait(self._condition, lambda: len(self._select(path)), count, timeout, f"POST(s) to {where}")
            return self._select(path)

    def close(self) -> None:
        """Releases hanging requests (closing them unanswered) and stops the server; safe to call twice."""
        self._released.set()
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()
