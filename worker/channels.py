"""Sending one message: e-mail over SMTP, JSON posts to Slack and webhooks. Each failure says why and whether a
retry could help (`DeliveryFailed.permanent`)."""

from __future__ import annotations

import http.client
import smtplib
import socket
import ssl
from email.message import EmailMessage
from email.utils import formatdate
from urllib.parse import unquote, urlsplit

from engine.model import is_allowed_host, is_non_public_ip, split_url, url_problem
from worker.errors import WorkerError

# Seconds allowed for connecting to a receiver and for each read from it.
SEND_TIMEOUT_SECONDS = 10
USER_AGENT = "adops-rules/0.1"


class DeliveryFailed(WorkerError):
    """A send did not go through; `permanent` when trying again cannot help (refused URL, 4xx, SMTP 5xx)."""

    def __init__(self, reason: str, *, permanent: bool = False) -> None:
        super().__init__(reason)
        self.permanent = permanent


def send_email(smtp_url: str | None, sender: str | None, to: str, subject: str, text: str, message_id: str) -> None:
    """Sends one plain-text message through `smtp_url` (smtp:// upgrades with STARTTLS when the server offers it,
    smtps:// is TLS from the start; user and password from the URL). The Message-ID is `<message_id@rules>`, the
    same on every retry, so a receiving system can drop a repeat."""
    if not smtp_url:
        raise DeliveryFailed("SMTP_URL is not set, so e-mail cannot be sent", permanent=True)
    parts = urlsplit(smtp_url)
    host, implicit_tls = parts.hostname or "localhost", parts.scheme == "smtps"
    port = parts.port or (465 if implicit_tls else 25)
    message = EmailMessage()
    message["From"] = sender or f"rules@{socket.getfqdn()}"
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = f"<{message_id}@rules>"
    message.set_content(text)
    context = ssl.create_default_context()
    try:
        client = (smtplib.SMTP_SSL(host, port, timeout=SEND_TIMEOUT_SECONDS, context=context) if implicit_tls
                  else smtplib.SMTP(host, port, timeout=SEND_TIMEOUT_SECONDS))
        with client:
            client.ehlo()
            if not implicit_tls and client.has_extn("starttls"):
                client.starttls(context=context)
                client.ehlo()
            if parts.username:
                client.login(unquote(parts.username), unquote(parts.password or ""))
            client.send_message(message)
    except (OSError, smtplib.SMTPException) as error:
        raise smtp_failure(error, host, port, to) from None


def smtp_failure(error: OSError | smtplib.SMTPException, host: str, port: int, to: str) -> DeliveryFailed:
    """What an SMTP or network error while sending to `to` through host:port means: permanent when the server
    answered 5xx (for refused recipients, when every refusal is 5xx), retryable otherwise."""
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _text in error.recipients.values()]
        return DeliveryFailed(f"SMTP {host}:{port} refused {to}: {error.recipients[to][1]!r}",
                              permanent=all(code >= 500 for code in codes))
    if isinstance(error, smtplib.SMTPResponseException):
        reason = error.smtp_error.decode(errors="replace") if isinstance(error.smtp_error, bytes) else error.smtp_error
        return DeliveryFailed(f"SMTP {host}:{port} answered {error.smtp_code} {reason}",
                              permanent=error.smtp_code >= 500)
    return DeliveryFailed(f"SMTP {host}:{port}: {str(error) or type(error).__name__}")


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """An HTTP connection to an address checked beforehand, whatever the name resolves to by now."""

    def __init__(self, host: str, port: int, address: str) -> None:
        super().__init__(host, port, timeout=SEND_TIMEOUT_SECONDS)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """An HTTPS connection to an address checked beforehand; the certificate is verified for the host name."""

    def __init__(self, host: str, port: int, address: str) -> None:
        self._tls = ssl.create_default_context()
        super().__init__(host, port, timeout=SEND_TIMEOUT_SECONDS, context=self._tls)
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)


def checked_address(url: str, allowed_hosts: frozenset[str]) -> str:
    """The address to connect to for `url`: its host resolved now, refused (permanently) when the URL is not
    allowed or any address it resolves to is loopback, private, link-local or otherwise not public, unless the
    host is in `allowed_hosts`."""
    problem = url_problem(url, allowed_hosts)
    if problem:
        raise DeliveryFailed(problem, permanent=True)
    _scheme, host, port = split_url(url)
    assert host is not None
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise DeliveryFailed(f"cannot resolve {host}: {error.strerror}") from None
    addresses = [info[4][0] for info in infos]
    if not is_allowed_host(host, port, allowed_hosts):
        refused = [address for address in addresses if is_non_public_ip(address)]
        if refused:
            raise DeliveryFailed(f'{host} resolves to {refused[0]}, which is not a public address; allow it with '
                                 "NOTIFY_ALLOWED_HOSTS", permanent=True)
    return addresses[0]


def post_json(url: str, body: bytes, headers: dict[str, str], allowed_hosts: frozenset[str]) -> None:
    """POSTs `body` as JSON to `url` after `checked_address`; a 2xx answer is success. Redirects are not
    followed; network errors may be retried, and answers as `http_failure` says."""
    address = checked_address(url, allowed_hosts)
    scheme, host, port = split_url(url)
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    connection_type = _PinnedHTTPSConnection if scheme == "https" else _PinnedHTTPConnection
    connection = connection_type(host, port, address)
    try:
        connection.request("POST", target, body=body, headers={
            "Content-Type": "application/json", "User-Agent": USER_AGENT, **headers})
        response = connection.getresponse()
        response.read(65536)
    except (OSError, http.client.HTTPException) as error:
        raise DeliveryFailed(f"POST to {host}: {str(error) or type(error).__name__}") from None
    finally:
        connection.close()
    failure = http_failure(host, response.status, response.reason)
    if failure is not None:
        raise failure


def http_failure(host: str, status: int, reason: str) -> DeliveryFailed | None:
    """What an HTTP answer from `host` means: None for 2xx; a failure that may be retried for 408, 425, 429 and
    5xx; a permanent failure for any other status (redirects included)."""
    if 200 <= status < 300:
        return None
    retryable = status in (408, 425, 429) or status >= 500
    return DeliveryFailed(f"{host} answered HTTP {status} {reason}".rstrip(), permanent=not retryable)
