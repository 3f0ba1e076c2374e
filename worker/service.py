"""The service as one foreground command: embedded ClickHouse when needed, migrations, then the processes; with
`--demo`, also the demo data set and the local inbox its rules notify."""

from __future__ import annotations

import ipaddress
import os
import smtplib
import socket
import sys
import urllib.request
from pathlib import Path

from demo import inbox
from demo.data import load_demo_data, point_demo_channels
from storage.clickhouse import ClickHouseTarget, parse_clickhouse_url
from storage.migrations import migrate_all
from worker.errors import CommandFailed
from worker.queues import NOTIFICATIONS_QUEUE, RULES_QUEUE
from worker.settings import Settings
from worker.supervisor import AlreadyRunning, InstanceLock, ProcessSpec, Supervisor


def http_answers(url: str) -> bool:
    """True when a GET of `url` answers 200 within a second."""
    try:
        with urllib.request.urlopen(url, timeout=1) as answer:
            return answer.status == 200
    except OSError:
        return False


def clickhouse_answers(target: ClickHouseTarget) -> bool:
    """True when something at the target's host and port answers the ClickHouse /ping."""
    scheme = "https" if target.secure else "http"
    return http_answers(f"{scheme}://{target.host}:{target.port}/ping")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def embedded_clickhouse_spec(target: ClickHouseTarget, data_dir: Path) -> ProcessSpec:
    """The process serving the embedded ClickHouse where CLICKHOUSE_URL points."""
    argv = [sys.executable, "-m", "worker.cli", "clickhouse-local", "--path", str(data_dir / "clickhouse"),
            "--host", target.host or "127.0.0.1", "--port", str(target.port)]
    if target.password:
        argv += ["--password", target.password]
    return ProcessSpec("clickhouse", argv, ready=lambda: clickhouse_answers(target))


FLOWER_PORT = 5555
# SIGTERM (a deploy, Ctrl-C in `up`) gives a worker a soft shutdown: the task in hand gets WORKER_SHUTDOWN_SECONDS
# to finish, then it is stopped unacknowledged and requeued.
WORKER_ENV = {"REMAP_SIGTERM": "SIGQUIT"}


def celery_specs() -> list[ProcessSpec]:
    """The rule worker (two processes), the notification worker (threads), beat and Flower, as `celery -A worker.app`."""
    celery = [sys.executable, "-m", "celery", "-A", "worker.app"]
    return [
        ProcessSpec("worker", [*celery, "worker", "--loglevel", "INFO", "--queues", RULES_QUEUE, "--concurrency", "2",
                               "--hostname", "worker@%h"], env=WORKER_ENV),
        ProcessSpec("notifier", [*celery, "worker", "--loglevel", "INFO", "--queues", NOTIFICATIONS_QUEUE,
                                 "--pool", "threads", "--concurrency", "8", "--hostname", "notifier@%h"], env=WORKER_ENV),
        ProcessSpec("beat", [*celery, "beat", "--loglevel", "INFO"]),
        ProcessSpec("flower", [*celery, "flower", f"--port={FLOWER_PORT}", "--address=127.0.0.1"],
                    ready=lambda: http_answers(f"http://127.0.0.1:{FLOWER_PORT}/healthcheck")),
    ]


def smtp_answers(host: str, port: int) -> bool:
    """True when an SMTP server at host:port greets and answers NOOP."""
    try:
        with smtplib.SMTP(host, port, timeout=2) as client:
            return client.noop()[0] == 250
    except (OSError, smtplib.SMTPException):
        return False


def demo_inbox_specs(data_dir: Path) -> list[ProcessSpec]:
    """The demo's mail sink and webhook receiver on loopback, keeping what they receive in the data directory."""
    where = ["--inbox", str(data_dir / inbox.INBOX_DIR_NAME)]
    return [
        ProcessSpec("mail-sink", [sys.executable, "-m", "demo.mail_sink", "--port", str(inbox.MAIL_PORT), *where],
                    ready=lambda: smtp_answers(inbox.HOST, inbox.MAIL_PORT)),
        ProcessSpec("webhooks", [sys.executable, "-m", "demo.webhook_receiver", "--port", str(inbox.WEBHOOK_PORT),
                                 *where],
                    ready=lambda: http_answers(f"http://{inbox.HOST}:{inbox.WEBHOOK_PORT}/")),
    ]


def demo_environment(env: dict[str, str]) -> dict[str, str]:
    """`env` with e-mail going to the demo's mail sink, webhook posts signed with the demo secret, and the demo
    receiver allowed as a destination of Slack and webhook posts."""
    allowed = [host for host in env.get("NOTIFY_ALLOWED_HOSTS", "").split(",") if host.strip()]
    return {**env, "SMTP_URL": inbox.SMTP_URL, "SMTP_FROM": inbox.SENDER, "WEBHOOK_SECRET": inbox.WEBHOOK_SECRET,
            "NOTIFY_ALLOWED_HOSTS": ",".join([*allowed, f"{inbox.HOST}:{inbox.WEBHOOK_PORT}"])}


def _check_demo_ports_free() -> None:
    for what, port in (("mail sink", inbox.MAIL_PORT), ("webhook receiver", inbox.WEBHOOK_PORT)):
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((inbox.HOST, port))
            except OSError:
                raise CommandFailed(f"port {port} on {inbox.HOST}, where the demo's {what} listens, is in use; "
                                    "stop what holds it and run `rulesctl up --demo` again") from None


def run_service(config: Settings, data_dir: Path, *, demo: bool) -> int:
    """Runs the service in the foreground until Ctrl-C or a process dies; stops every process it started."""
    target = parse_clickhouse_url(config.clickhouse_url)
    if target.is_embedded:
        raise CommandFailed(
            "CLICKHOUSE_URL: rulesctl up runs several processes, and a chdb:// database opens in one process only; "
            "use the default http://default@127.0.0.1:8123/rules to get the embedded server"
        )
    lock = InstanceLock(data_dir)
    try:
        lock.acquire()
    except AlreadyRunning as error:
        raise CommandFailed(str(error)) from None
    supervisor = Supervisor()
    # Flower listens on loopback only; its HTTP API (task lists for scripts) needs no login there.
    env = dict(os.environ, PYTHONUNBUFFERED="1", FLOWER_UNAUTHENTICATED_API="true")
    try:
        if demo:
            _check_demo_ports_free()
        if _is_loopback(target.host or "") and not clickhouse_answers(target):
            supervisor.start(embedded_clickhouse_spec(target, data_dir), env)
        for line in migrate_all(config.database_url, config.clickhouse_url):
            supervisor.log("migrate", line)
        if demo:
            for spec in demo_inbox_specs(data_dir):
                supervisor.start(spec, env)
            supervisor.log("demo-data", load_demo_data(config))
            supervisor.log("demo-data", point_demo_channels(config, inbox.SLACK_URL, inbox.WEBHOOK_URL))
            env = demo_environment(env)
        for spec in celery_specs():
            supervisor.start(spec, env)
        supervisor.log("rulesctl", f"the service is up; Flower at http://127.0.0.1:{FLOWER_PORT}; press Ctrl-C to stop it")
        if demo:
            supervisor.log("rulesctl", "what the demo rules send arrives in the local inbox: `rulesctl demo-inbox` "
                                       "lists it")
        supervisor.log("rulesctl", f"stopping: {supervisor.wait()}")
    finally:
        supervisor.stop_all()
        lock.release()
    return 0
