"""The HTTP server of the embedded ClickHouse: `serve()`, the listening socket and one handler per connection."""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from clickhouse_local.bodies import RequestBody, compressed, content_type, decoded, parse_multipart, response_encoding
from clickhouse_local.errors import ClickHouseError
from clickhouse_local.query_request import QueryRequest, authenticate, truthy
from clickhouse_local.service import Engine, Outcome, Service

_log = logging.getLogger(__name__)

_LOCK_FILE_NAME = ".clickhouse-local.lock"
_KEEP_ALIVE_SECONDS = 30
# On SIGTERM, requests under way get this long to finish before their queries are cancelled.
_SHUTDOWN_GRACE_SECONDS = 5
_NOT_FOUND_TEXT = (
    "There is no handle {path}\n\n"
    "Use / or /ping for health checks.\n"
    "Or /replicas_status for more sophisticated health checks.\n\n"
    "Send queries with the POST method or GET /?query=...\n"
)


# --- HTTP -------------------------------------------------------------------------------------------------------


class _RequestHandler(BaseHTTPRequestHandler):
    """One client connection; its requests are answered one after another (keep-alive)."""

    protocol_version = "HTTP/1.1"
    server_version = "clickhouse-local"
    sys_version = ""
    timeout = _KEEP_ALIVE_SECONDS
    server: _HttpServer

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; without this, Nagle's algorithm and the client's
        # delayed ACK hold the body back for about 40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def version_string(self) -> str:
        return self.server_version

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_OPTIONS(self) -> None:
        self._answer(204, b"", {})

    def do_PUT(self) -> None:
        self._refuse_method()

    def do_DELETE(self) -> None:
        self._refuse_method()

    def do_PATCH(self) -> None:
        self._refuse_method()

    def log_request(self, code: Any = "-", size: Any = "-") -> None:
        pass  # _dispatch logs one line per request

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        _log.debug("%s %s", self.address_string(), format % args)

    def _refuse_method(self) -> None:
        body = RequestBody(self.rfile, self.headers)
        self._fail(ClickHouseError.named("NOT_IMPLEMENTED", f"HTTP method {self.command} is not supported"), body, "")

    def _dispatch(self) -> None:
        started = time.monotonic()
        self.server.mark_busy(self.connection, True)
        try:
            url = urlsplit(self.path)
            status = self._route(url.path, url.query)
        finally:
            self.server.mark_busy(self.connection, False)
            if self.server.stopping:
                self.close_connection = True
        _log.debug("%s %s -> %s in %.1f ms", self.command, url.path, status, (time.monotonic() - started) * 1000)

    def _route(self, path: str, query_string: str) -> int:
        health_check = path in ("/ping", "/replicas_status") or (path == "/" and not query_string)
        if self.command in ("GET", "HEAD") and health_check:
            RequestBody(self.rfile, self.headers).drain()
            return self._answer(200, b"Ok.\n", {"Content-Type": "text/html; charset=UTF-8"})
        if self.command == "POST" or query_string:
            return self._serve_query(query_string)
        RequestBody(self.rfile, self.headers).drain()
        not_found = _NOT_FOUND_TEXT.format(path=path).encode()
        return self._answer(404, not_found, {"Content-Type": "text/plain; charset=UTF-8"})

    def _serve_query(self, query_string: str) -> int:
        service = self.server.service
        query_id = ""
        try:
            body = RequestBody(self.rfile, self.headers)
        except ClickHouseError as error:
            self.close_connection = True
            return self._fail(error, None, query_id)
        try:
            if self.command == "POST" and not body.has_length:
                self.close_connection = True
                raise ClickHouseError.named(
                    "HTTP_LENGTH_REQUIRED",
                    "The Transfer-Encoding is not chunked and there is no Content-Length header for POST request",
                )
            authenticate(service.password, self.headers, query_string)
            multipart = self.headers.get_content_type() == "multipart/form-data"
            request = QueryRequest.parse(self.command, query_string, self.headers, multipart)
            query_id = request.query_id
            payload = decoded(body.chunks(), self.headers.get("Content-Encoding", ""))
            form = None
            if multipart:
                form = parse_multipart(self.headers["Content-Type"], b"".join(payload))
                statement: Iterator[bytes] = iter(
                    [request.url_query]
                    + [data for name, file_name, data in form if name == "query" and file_name is None]
                )
                for name, file_name, data in form:
                    if file_name is None and name.startswith("param_"):
                        request.query_parameters[name[len("param_") :]] = data.decode("utf-8", "replace")
            else:
                statement = self._statement(request.url_query, payload)
            outcome = service.execute(request, statement, form)
        except ClickHouseError as error:
            if error.name == "READONLY" and self.command == "GET":
                error.text = error.text.replace(
                    " (READONLY)", " For queries over HTTP, method GET implies readonly. You should use method POST "
                    "for modifying queries. (READONLY)",
                )
            return self._fail(error, body, query_id)
        except (ConnectionError, TimeoutError):
            self.close_connection = True
            raise
        except Exception as exc:
            _log.exception("clickhouse-local: a request failed")
            return self._fail(ClickHouseError.named("STD_EXCEPTION", f"{type(exc).__name__}: {exc}"), body, query_id)
        return self._send_outcome(outcome, query_id)

    @staticmethod
    def _statement(url_query: bytes, payload: Iterator[bytes]) -> Iterator[bytes]:
        # As ClickHouse does: the URL's part of the statement, a line break, then the body.
        if url_query:
            yield url_query + b"\n"
        yield from payload

    def _send_outcome(self, outcome: Outcome, query_id: str) -> int:
        engine = self.server.service.engine
        headers = {
            "X-ClickHouse-Query-Id": query_id,
            "X-ClickHouse-Timezone": outcome.http_settings.get("session_timezone") or engine.timezone,
            "X-ClickHouse-Summary": json.dumps(outcome.summary, separators=(",", ":")),
        }
        body = outcome.body
        if outcome.output_format is not None:
            headers["X-ClickHouse-Format"] = outcome.output_format
            headers["Content-Type"] = content_type(outcome.output_format)
        else:
            headers["Content-Type"] = "text/plain; charset=UTF-8"
        encoding = response_encoding(self.headers.get("Accept-Encoding", ""))
        if body and encoding and truthy(outcome.http_settings.get("enable_http_compression")):
            try:
                level = int(outcome.http_settings.get("http_zlib_compression_level") or 3)
            except ValueError:
                level = 3
            body = compressed(body, encoding, level)
            headers["Content-Encoding"] = encoding
        return self._answer(200, body, headers)

    def _fail(self, error: ClickHouseError, body: RequestBody | None, query_id: str) -> int:
        if body is not None and not self.close_connection:
            try:
                # The client sends its whole body before it reads the answer, so the rest is read and dropped.
                body.drain()
            except (ClickHouseError, ConnectionError, TimeoutError, OSError):
                self.close_connection = True
        headers = {"X-ClickHouse-Exception-Code": str(error.code), "Content-Type": "text/plain; charset=UTF-8"}
        if query_id:
            headers["X-ClickHouse-Query-Id"] = query_id
        if error.name == "REQUIRED_PASSWORD":
            headers["WWW-Authenticate"] = 'Basic realm="ClickHouse server HTTP API"'
        return self._answer(error.http_status, error.body(self.server.service.engine.version), headers)

    def _answer(self, status: int, body: bytes, headers: dict[str, str]) -> int:
        self.send_response(status)
        self.send_header("X-ClickHouse-Server-Display-Name", self.server.service.engine.display_name)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection or self.server.stopping:
            self.close_connection = True
            self.send_header("Connection", "close")
        else:
            self.send_header("Connection", "Keep-Alive")
            self.send_header("Keep-Alive", f"timeout={_KEEP_ALIVE_SECONDS}")
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
        return status


class _HttpServer(ThreadingHTTPServer):
    """The listening socket and its connections' threads; stops by finishing the requests under way."""

    daemon_threads = False  # joined on close, so the engine outlives every request
    block_on_close = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], service: Service | None) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.service = service
        self.stopping = False
        self._connections: dict[socket.socket, bool] = {}  # socket -> busy with a request
        self._connections_lock = threading.Lock()
        super().__init__(address, _RequestHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections[request] = False
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.pop(request, None)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        _log.debug("connection from %s ended with an error", client_address, exc_info=True)

    def mark_busy(self, connection: socket.socket, busy: bool) -> None:
        with self._connections_lock:
            if connection in self._connections:
                self._connections[connection] = busy

    def close_gracefully(self, grace_seconds: float) -> None:
        """Stops accepting and closes idle connections; requests under way get `grace_seconds` to finish.

        After that their queries are cancelled, and their connections closed soon after. Returns when
        every connection's thread has ended.
        """
        self.shutdown()
        self.stopping = True
        deadline = time.monotonic() + grace_seconds
        cancelled = False
        while True:
            with self._connections_lock:
                idle = [conn for conn, busy in self._connections.items() if not busy]
                busy = [conn for conn, busy in self._connections.items() if busy]
            overdue = time.monotonic() > deadline
            if overdue and busy and not cancelled:
                self.service.engine.cancel_running_queries()
                cancelled = True
                deadline = time.monotonic() + 2  # time to send the cancelled queries' answers
                overdue = False
            for conn in idle + (busy if overdue else []):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            if not busy or overdue:
                break
            time.sleep(0.05)
        self.server_close()


# --- Serving ----------------------------------------------------------------------------------------------------


def _lock_path(path: str) -> Any:
    """Holds an exclusive lock on `path` for this process; exits with one line if another server holds it."""
    try:
        lock_file = open(os.path.join(path, _LOCK_FILE_NAME), "a+")  # noqa: SIM115 - held until the server stops
    except OSError as exc:
        raise SystemExit(f"clickhouse-local: cannot open the lock file in {path}: {exc.strerror}") from None
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        lock_file.seek(0)
        holder = lock_file.read().strip()
        lock_file.close()
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            who = f" (pid {holder})" if holder else ""
            raise SystemExit(f"clickhouse-local: {path} is already in use by another clickhouse-local{who}") from None
        raise SystemExit(f"clickhouse-local: cannot lock {path}: {exc.strerror}") from None
    lock_file.seek(0)
    lock_file.truncate()
    lock_file.write(f"{os.getpid()}\n")
    lock_file.flush()
    return lock_file


def serve(path: str, host: str = "127.0.0.1", port: int = 8123, password: str | None = None) -> None:
    """Serves the ClickHouse engine with its data in `path` over the ClickHouse HTTP interface.

    Blocks until SIGINT or SIGTERM (when called from the main thread), then finishes the requests
    under way, closes the engine and returns. With `password`, the user `default` must present it;
    without, any credentials are accepted. Exits (SystemExit, one line) when `path` is used by
    another server, the address cannot be listened on, or the engine cannot open `path`.
    """
    path = os.path.abspath(path)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise SystemExit(f"clickhouse-local: cannot create {path}: {exc.strerror}") from None
    lock_file = _lock_path(path)
    try:
        try:
            server = _HttpServer((host, port), None)
        except OSError as exc:
            reason = "the address is already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            raise SystemExit(f"clickhouse-local: cannot listen on {host}:{port}: {reason}") from None
        try:
            try:
                engine = Engine(path)
            except Exception as exc:
                reason = " ".join(str(exc).split())
                raise SystemExit(f"clickhouse-local: cannot open the engine at {path}: {reason}") from None
            server.service = Service(engine, password)
            _run_until_signalled(server, path)
        finally:
            server.server_close()
    finally:
        lock_file.close()


def _run_until_signalled(server: _HttpServer, path: str) -> None:
    """Runs `server` until SIGINT/SIGTERM, then stops it and closes its engine."""
    stop = threading.Event()
    previous_handlers = {}
    if threading.current_thread() is threading.main_thread():
        for signal_number in (signal.SIGINT, signal.SIGTERM):
            previous_handlers[signal_number] = signal.signal(signal_number, lambda *_: stop.set())
    accept_loop = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="clickhouse-local")
    accept_loop.start()
    host, port = server.server_address[:2]
    shown_host = f"[{host}]" if ":" in host else host
    sys.stderr.write(f"clickhouse-local: serving {path} on http://{shown_host}:{port}\n")
    sys.stderr.flush()
    try:
        while not stop.wait(0.5):
            if not accept_loop.is_alive():
                break
    finally:
        server.close_gracefully(_SHUTDOWN_GRACE_SECONDS)
        accept_loop.join()
        server.service.close()
        for signal_number, handler in previous_handlers.items():
            signal.signal(signal_number, handler)
        _log.debug("clickhouse-local: stopped serving %s", path)
