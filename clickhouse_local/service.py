"""Runs query requests on chDB's engine: a connection per request or per session, their settings, the statement."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from clickhouse_local.errors import ClickHouseError, engine_error
from clickhouse_local.query_request import QueryRequest
from clickhouse_local.statements import EMPTY, InsertWithData, PlainStatement, inspect_statement, split_statement

from engine.sql_text import quote_identifier, quote_string

_log = logging.getLogger(__name__)

# A statement that is not an INSERT with data is read whole; the engine's max_query_size is far lower.
_STATEMENT_LIMIT = 256 << 20
# Settings the HTTP layer reads; a session's values of them are cached with its other settings.
_HTTP_LAYER_SETTINGS = ("enable_http_compression", "http_zlib_compression_level", "session_timezone")
# First keywords of the statements that answer a result set, even an empty one.
_RESULT_KEYWORDS = frozenset({"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXISTS", "EXPLAIN", "CHECK", "KILL", "("})


# --- SQL text built here ----------------------------------------------------------------------------------------


def _set_statement(settings: dict[str, str]) -> str:
    """`SET a = 'x', b = 'y'`: ClickHouse converts a quoted value to each setting's type."""
    return "SET " + ", ".join(f"{name} = {quote_string(value)}" for name, value in settings.items())


# --- The engine -------------------------------------------------------------------------------------------------


class Engine:
    """chDB's engine at one path: an anchor connection keeps it running while the server lives."""

    def __init__(self, path: str) -> None:
        import chdb  # imported here: loading the engine takes a while and a lot of memory

        self._chdb = chdb
        self.path = path
        self._anchor = chdb.connect(path)
        facts = self._anchor.query("SELECT version(), timezone(), displayName()", "JSONCompactEachRow")
        self.version, self.timezone, self.display_name = json.loads(facts.bytes())
        formats = self._anchor.query("SELECT name FROM system.formats", "JSONCompactEachRow")
        self.format_names = {row[0].lower(): row[0] for row in map(json.loads, formats.bytes().splitlines())}
        names = ", ".join(quote_string(name) for name in _HTTP_LAYER_SETTINGS)
        defaults = self._anchor.query(
            f"SELECT name, value FROM system.settings WHERE name IN ({names})", "JSONCompactEachRow"
        )
        self.http_defaults = dict(json.loads(row) for row in defaults.bytes().splitlines())

    def connect(self) -> Any:
        """A new connection: its own current database and settings, the engine's data."""
        return self._chdb.connect(self.path)

    def cancel_running_queries(self) -> None:
        """Cancels every query the engine is running, as KILL QUERY does."""
        try:
            self._anchor.query("KILL QUERY WHERE query_id != queryID() ASYNC")
        except Exception:
            _log.warning("clickhouse-local: cancelling the running queries failed", exc_info=True)

    def close(self) -> None:
        """Closes the anchor; the engine stops when its last connection closes."""
        self._anchor.close()


@dataclass
class _Session:
    """A ClickHouse HTTP session: one engine connection, used by one request at a time."""

    session_id: str
    connection: Any
    timeout: int
    last_used: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # The session's own values of settings (value, changed), as read from system.settings.
    known_settings: dict[str, tuple[str, bool]] = field(default_factory=dict)
    unknown_settings: set[str] = field(default_factory=set)
    # The connection's current database when known. And the last request's own settings, left in effect on the
    # connection until a request with other settings comes: most clients send the same ones with every request,
    # and setting and restoring them each time would cost two statements per request.
    database: str | None = None
    request_settings: dict[str, str] = field(default_factory=dict)

    def expired(self, now: float) -> bool:
        return now - self.last_used > self.timeout

    def read_settings(self, names: list[str]) -> None:
        """Caches the session's values of `names` that are not cached yet."""
        missing = [name for name in names if name not in self.known_settings and name not in self.unknown_settings]
        if not missing:
            return
        listed = ", ".join(quote_string(name) for name in missing)
        rows = self.connection.query(
            f"SELECT name, value, changed FROM system.settings WHERE name IN ({listed})", "JSONCompactEachRow"
        )
        for name, value, changed in map(json.loads, rows.bytes().splitlines()):
            self.known_settings[name] = (value, bool(changed))
        self.unknown_settings.update(name for name in missing if name not in self.known_settings)

    def restore_statement(self, names: list[str]) -> str | None:
        """The SET statement that gives `names` back the session's own values."""
        parts = []
        for name in names:
            if name in self.known_settings:
                value, changed = self.known_settings[name]
                parts.append(f"{name} = {quote_string(value)}" if changed else f"{name} = DEFAULT")
        return "SET " + ", ".join(parts) if parts else None


class _Sessions:
    """The open sessions by id; an idle one is closed after its timeout."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._sessions: dict[str, _Session] = {}
        self._lock = threading.Lock()

    def acquire(self, session_id: str, timeout: int, check: bool) -> _Session:
        """The session `session_id`, locked for the caller; created unless `check`."""
        with self._lock:
            self._close_expired()
            session = self._sessions.get(session_id)
            if session is None:
                if check:
                    raise ClickHouseError.named("SESSION_NOT_FOUND", f"Session {session_id} not found")
                session = _Session(session_id, self._engine.connect(), timeout)
                self._sessions[session_id] = session
            if not session.lock.acquire(blocking=False):
                raise ClickHouseError.named(
                    "SESSION_IS_LOCKED", f"Session {session_id} is locked by a concurrent client"
                )
            session.timeout = timeout
            return session

    def release(self, session: _Session, close: bool) -> None:
        """Unlocks the session; `close` ends it."""
        session.last_used = time.monotonic()
        if close:
            with self._lock:
                if self._sessions.get(session.session_id) is session:
                    del self._sessions[session.session_id]
            session.connection.close()
        session.lock.release()

    def close_all(self) -> None:
        with self._lock:
            sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            session.connection.close()

    def _close_expired(self) -> None:
        now = time.monotonic()
        for session in list(self._sessions.values()):
            if session.expired(now) and session.lock.acquire(blocking=False):
                del self._sessions[session.session_id]
                session.connection.close()
                session.lock.release()


@dataclass
class _Lease:
    """A request's use of a connection: `http_settings` are the HTTP layer's settings as the request sees them."""

    connection: Any
    http_settings: dict[str, str]
    session: _Session | None = None
    changed_settings: bool = False  # a SET statement ran in the request

    def ran(self, statement: PlainStatement | None) -> None:
        """Notes the statement run; a SET may have changed the session's own settings, a USE its database."""
        if self.session is None or statement is None:
            return
        if statement.first_keyword == "SET":
            self.session.known_settings.clear()
            self.session.unknown_settings.clear()
            self.changed_settings = True
        elif statement.first_keyword == "USE":
            self.session.database = None


@dataclass
class Outcome:
    """The answer of a query request, computed whole before it is sent."""

    body: bytes
    output_format: str | None  # set when the statement answered a result set
    summary: dict[str, str]
    http_settings: dict[str, str]


class Service:
    """Runs query requests on the engine: connections, sessions, settings, statements."""

    def __init__(self, engine: Engine, password: str | None) -> None:
        self.engine = engine
        self.password = password
        self.sessions = _Sessions(engine)
        self._running_query_ids: set[str] = set()
        self._running_lock = threading.Lock()

    def close(self) -> None:
        """Closes every session and then the engine."""
        self.sessions.close_all()
        self.engine.close()

    def execute(self, request: QueryRequest, statement: Iterator[bytes], form: list | None) -> Outcome:
        """Runs the statement streamed by `statement` (the URL's part, then the body) for `request`."""
        with self._running(request.query_id), self._lease(request) as lease:
            with self._external_tables(lease.connection, request, form or []):
                plan, head = split_statement(statement)
                if isinstance(plan, ClickHouseError):
                    raise plan
                if plan == EMPTY:
                    raise ClickHouseError.named("SYNTAX_ERROR", "Empty query")
                if isinstance(plan, InsertWithData):
                    return self._insert(lease, plan, head, statement)
                return self._plain(lease, request, head, statement)

    def _plain(self, lease: _Lease, request: QueryRequest, text: bytearray, rest: Iterator[bytes]) -> Outcome:
        for chunk in rest:
            text += chunk
            if len(text) > _STATEMENT_LIMIT:
                raise ClickHouseError.named(
                    "QUERY_IS_TOO_LARGE", f"The statement is larger than {_STATEMENT_LIMIT} bytes"
                )
        statement = inspect_statement(bytes(text).decode("latin-1"), self.engine.format_names)
        try:
            result = lease.connection.query(bytes(text), request.default_format, params=request.query_parameters)
        except Exception as exc:
            raise engine_error(exc) from None
        finally:
            lease.ran(statement)
        body = result.bytes() or b""
        answered = bool(body) or statement.first_keyword in _RESULT_KEYWORDS
        summary = {
            "read_rows": str(result.storage_rows_read()),
            "read_bytes": str(result.storage_bytes_read()),
            "written_rows": str(result.rows_written()),
            "written_bytes": str(result.bytes_written()),
            "total_rows_to_read": "0",
            "result_rows": str(result.rows_read() if answered else 0),
            "result_bytes": str(len(body)),
            "elapsed_ns": str(int(result.elapsed() * 1e9)),
        }
        output_format = (statement.output_format or request.default_format) if answered else None
        return Outcome(body, output_format, summary, lease.http_settings)

    def _insert(self, lease: _Lease, plan: InsertWithData, head: bytearray, rest: Iterator[bytes]) -> Outcome:
        try:
            inserter = lease.connection.send_insert(bytes(head[: plan.head_end]), plan.input_format)
        except Exception as exc:
            raise engine_error(exc) from None
        try:
            if len(head) > plan.data_start:
                inserter.append(bytes(head[plan.data_start :]))
            for chunk in rest:
                inserter.append(chunk)
            result = inserter.finish()
        except (ClickHouseError, ConnectionError, TimeoutError):
            self._cancel(inserter)
            raise
        except Exception as exc:
            self._cancel(inserter)
            raise engine_error(exc) from None
        summary = {
            "read_rows": str(result.rows_written),
            "read_bytes": str(result.bytes_written),
            "written_rows": str(result.rows_written),
            "written_bytes": str(result.bytes_written),
            "total_rows_to_read": "0",
            "result_rows": str(result.rows_written),
            "result_bytes": str(result.bytes_written),
            "elapsed_ns": str(int(result.elapsed * 1e9)),
        }
        return Outcome(b"", None, summary, lease.http_settings)

    @staticmethod
    def _cancel(inserter: Any) -> None:
        try:
            inserter.cancel()
        except Exception:
            _log.debug("cancelling a failed insert failed too", exc_info=True)

    @contextmanager
    def _running(self, query_id: str) -> Iterator[None]:
        with self._running_lock:
            if query_id in self._running_query_ids:
                raise ClickHouseError.named(
                    "QUERY_WITH_SAME_ID_IS_ALREADY_RUNNING", f"Query with id = {query_id} is already running"
                )
            self._running_query_ids.add(query_id)
        try:
            yield
        finally:
            with self._running_lock:
                self._running_query_ids.discard(query_id)

    @contextmanager
    def _lease(self, request: QueryRequest) -> Iterator[_Lease]:
        if request.in_session:
            with self._session_lease(request) as lease:
                yield lease
            return
        connection = self.engine.connect()
        try:
            self._use_database(connection, request.database)
            self._run_setup(connection, _set_statement(request.settings) if request.settings else None)
            yield _Lease(connection, {**self.engine.http_defaults, **request.settings})
        finally:
            connection.close()

    @contextmanager
    def _session_lease(self, request: QueryRequest) -> Iterator[_Lease]:
        session = self.sessions.acquire(request.session_id, request.session_timeout, request.session_check)
        close = request.close_session
        try:
            connection = session.connection
            if request.database and request.database != session.database:
                self._use_database(connection, request.database)
                session.database = request.database
            if session.request_settings != request.settings:
                try:
                    self._put_back_settings(session, session.restore_statement(list(session.request_settings)))
                except ClickHouseError:
                    close = True
                    raise
            names = [*request.settings, *_HTTP_LAYER_SETTINGS]
            self._run_setup(connection, None, lambda: session.read_settings(names))
            own = {
                name: session.known_settings[name][0]
                for name in _HTTP_LAYER_SETTINGS
                if name in session.known_settings
            }
            if not request.settings:
                yield _Lease(connection, {**self.engine.http_defaults, **own}, session)
                return
            # Built before the statement runs: a SET in it makes the session forget its cached settings.
            restore = session.restore_statement(list(request.settings))
            if session.request_settings != request.settings:
                self._run_setup(connection, _set_statement(request.settings))
                session.request_settings = dict(request.settings)
            lease = _Lease(connection, {**self.engine.http_defaults, **own, **request.settings}, session)
            try:
                yield lease
            finally:
                # A statement that set the session's own settings gets the request's put back at once.
                if lease.changed_settings:
                    try:
                        self._put_back_settings(session, restore)
                    except ClickHouseError:
                        close = True
        finally:
            self.sessions.release(session, close)

    @staticmethod
    def _put_back_settings(session: _Session, restore: str | None) -> None:
        """Runs `restore`, giving the last request's settings back the session's own values.

        If that fails, the session must be closed: its settings would leak into its next requests.
        """
        session.request_settings = {}
        try:
            if restore:
                session.connection.query(restore)
        except Exception as exc:
            _log.warning("closing session %s: its settings could not be restored", session.session_id, exc_info=True)
            raise engine_error(exc) from None

    @staticmethod
    def _use_database(connection: Any, database: str) -> None:
        if database:
            Service._run_setup(connection, f"USE {quote_identifier(database)}")

    @staticmethod
    def _run_setup(connection: Any, statement: str | None, action: Callable[[], None] | None = None) -> None:
        try:
            if statement:
                connection.query(statement)
            if action:
                action()
        except Exception as exc:
            raise engine_error(exc) from None

    @contextmanager
    def _external_tables(self, connection: Any, request: QueryRequest, form: list) -> Iterator[None]:
        """Creates the temporary tables of a multipart request's files for the time of its statement."""
        created = []
        try:
            for name, file_name, data in form:
                if file_name is None:
                    continue
                attributes = request.external_tables.get(name, {})
                if "structure" in attributes:
                    structure = attributes["structure"]
                elif "types" in attributes:
                    types = [item.strip() for item in attributes["types"].split(",") if item.strip()]
                    structure = ", ".join(f"_{index} {type_name}" for index, type_name in enumerate(types, 1))
                else:
                    raise ClickHouseError.named(
                        "BAD_ARGUMENTS",
                        f"Neither structure nor types have been provided for external table {name}. "
                        f"Use fields {name}_structure or {name}_types to do so",
                    )
                table = quote_identifier(name)
                self._run_setup(connection, f"CREATE TEMPORARY TABLE {table} ({structure}) ENGINE = Memory")
                created.append(table)
                if data:
                    try:
                        input_format = attributes.get("format", "TabSeparated")
                        inserter = connection.send_insert(f"INSERT INTO {table}", input_format)
                        inserter.append(data)
                        inserter.finish()
                    except Exception as exc:
                        raise engine_error(exc) from None
            yield
        finally:
            for table in created:
                try:
                    connection.query(f"DROP TEMPORARY TABLE IF EXISTS {table}")
                except Exception:
                    _log.debug("dropping external table %s failed", table, exc_info=True)
