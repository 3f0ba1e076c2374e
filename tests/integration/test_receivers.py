"""The loopback receivers themselves, driven with the standard library only (smtplib, ssl, urllib)."""

from __future__ import annotations

import os
import smtplib
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.integration.receivers import HttpReceiver, SmtpReceiver, self_signed_certificate


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


def trusting(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certificate[0]))


def mail(subject: str = "Spend alert") -> EmailMessage:
    message = EmailMessage()
    message["From"] = "rules@example.com"
    message["To"] = "ops@example.com"
    message["Subject"] = subject
    message.set_content("Campaign 42 spent 120 % of its budget — “ünïcode” included.")
    return message


def test_plain_smtp_records_envelope_and_parsed_message():
    with SmtpReceiver() as receiver:
        assert receiver.url == f"smtp://127.0.0.1:{receiver.port}"
        with smtplib.SMTP("127.0.0.1", receiver.port, timeout=10) as client:
            client.send_message(mail(), to_addrs=["ops@example.com", "cc@example.com"])
        [received] = receiver.wait_for(1)
    assert received.mail_from == "rules@example.com"
    assert received.rcpt_tos == ["ops@example.com", "cc@example.com"]
    assert received.message["Subject"] == "Spend alert"
    assert "“ünïcode”" in received.message.get_content()
    assert received.tls is False


def test_starttls_is_required_and_then_encrypts(certificate):
    with SmtpReceiver(starttls_cert=certificate) as receiver:
        with smtplib.SMTP("127.0.0.1", receiver.port, timeout=10) as client:
            client.ehlo()
            assert client.has_extn("starttls")
            with pytest.raises(smtplib.SMTPSenderRefused):
                client.send_message(mail())
        with smtplib.SMTP("localhost", receiver.port, timeout=10) as client:
            client.starttls(context=trusting(certificate))
            client.send_message(mail("over starttls"))
        [received] = receiver.wait_for(1)
    assert received.tls is True
    assert received.message["Subject"] == "over starttls"


def test_implicit_tls_with_auth(certificate):
    with SmtpReceiver(implicit_tls_cert=certificate, auth=("alerts", "s3cret/pw")) as receiver:
        assert receiver.url == f"smtps://alerts:s3cret%2Fpw@127.0.0.1:{receiver.port}"
        with smtplib.SMTP_SSL("127.0.0.1", receiver.port, timeout=10, context=trusting(certificate)) as client:
            with pytest.raises(smtplib.SMTPSenderRefused):
                client.send_message(mail())
            with pytest.raises(smtplib.SMTPAuthenticationError):
                client.login("alerts", "wrong")
            client.login("alerts", "s3cret/pw")
            client.send_message(mail("authenticated"))
        [received] = receiver.wait_for(1)
    assert received.tls is True
    assert received.message["Subject"] == "authenticated"


def test_starttls_with_auth_offers_auth_only_after_tls(certificate):
    with SmtpReceiver(starttls_cert=certificate, auth=("alerts", "pw")) as receiver:
        with smtplib.SMTP("127.0.0.1", receiver.port, timeout=10) as client:
            client.ehlo()
            assert not client.has_extn("auth")
            client.starttls(context=trusting(certificate))
            client.ehlo()
            assert {"PLAIN", "LOGIN"} <= set(client.esmtp_features["auth"].split())
            client.login("alerts", "pw")
            client.send_message(mail())
        assert [m.tls for m in receiver.wait_for(1)] == [True]


def test_certificate_is_trusted_through_ssl_cert_file(certificate):
    """A child process with SSL_CERT_FILE and default verification (hostname included) accepts the receiver."""
    with SmtpReceiver(implicit_tls_cert=certificate) as receiver:
        script = ("import smtplib, sys\n"
                  "for host in ('localhost', '127.0.0.1'):\n"
                  "    with smtplib.SMTP_SSL(host, int(sys.argv[1]), timeout=10) as c:\n"
                  "        c.sendmail('a@example.com', ['b@example.com'], 'Subject: ' + host + '\\r\\n\\r\\nhi')\n")
        subprocess.run([sys.executable, "-c", script, str(receiver.port)], check=True, timeout=60,
                       env={**os.environ, "SSL_CERT_FILE": str(certificate[0])})
        subjects = [m.message["Subject"] for m in receiver.wait_for(2)]
    assert subjects == ["localhost", "127.0.0.1"]


def test_untrusted_client_is_refused(certificate):
    with SmtpReceiver(implicit_tls_cert=certificate) as receiver:
        with pytest.raises(ssl.SSLCertVerificationError):
            smtplib.SMTP_SSL("127.0.0.1", receiver.port, timeout=10, context=ssl.create_default_context()).close()
        assert receiver.messages == []


def test_smtp_wait_for_times_out_naming_what():
    with SmtpReceiver() as receiver:
        with pytest.raises(AssertionError, match=r"1 message\(s\).*got 0"):
            receiver.wait_for(1, timeout=0.2)


def post(url: str, body: bytes = b'{"alert": 1}', timeout: float = 10) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", "X-Signature": "abc"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_http_scripted_statuses_then_200():
    with HttpReceiver() as receiver:
        receiver.answer("/hook", [500, 500])
        assert receiver.url("hook") == f"http://127.0.0.1:{receiver.port}/hook"
        answers = [post(receiver.url("/hook")) for _ in range(3)]
        assert answers == [(500, b"error 500"), (500, b"error 500"), (200, b"ok")]
        assert post(receiver.url("/other")) == (200, b"ok")
        requests = receiver.wait_for(3, path="/hook")
    assert [r.body for r in requests] == [b'{"alert": 1}'] * 3
    assert requests[0].headers["content-type"] == "application/json"
    assert requests[0].headers["x-signature"] == "abc"
    assert requests[0].at <= requests[1].at <= requests[2].at
    assert [r.path for r in receiver.requests()] == ["/hook"] * 3 + ["/other"]


def test_http_hanging_path_times_out_while_others_answer():
    receiver = HttpReceiver()
    try:
        receiver.hang("/slow")
        started = time.monotonic()
        with pytest.raises((TimeoutError, urllib.error.URLError)):
            post(receiver.url("/slow"), timeout=1)
        assert 0.9 <= time.monotonic() - started < 5
        assert post(receiver.url("/fast")) == (200, b"ok")
        assert [r.body for r in receiver.wait_for(1, path="/slow")] == [b'{"alert": 1}']
    finally:
        started = time.monotonic()
        receiver.close()
    assert time.monotonic() - started < 2
    with pytest.raises(urllib.error.URLError):
        post(receiver.url("/fast"), timeout=2)


def test_http_wait_for_times_out_naming_what():
    with HttpReceiver() as receiver:
        with pytest.raises(AssertionError, match=r"2 POST\(s\) to http://127\.0\.0\.1:\d+/hook \(got 0\)"):
            receiver.wait_for(2, path="hook", timeout=0.2)


def test_http_chunked_body_is_recorded_whole():
    with HttpReceiver() as receiver:
        request = urllib.request.Request(receiver.url("/hook"), data=iter([b'{"a":', b" 1}"]), method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
        [received] = receiver.wait_for(1)
    assert received.headers["transfer-encoding"] == "chunked"
    assert received.body == b'{"a": 1}'
