"""ClickHouse access through clickhouse-connect, whatever the URL: an http(s) server or chDB in-process."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError, OperationalError
from urllib3 import Timeout

from storage.errors import DatabaseUnavailable, QueryFailed, first_line
from storage.queries import queries

# clickhouse-connect logs a failure before raising it; the error translated here already says everything.
logging.getLogger("clickhouse_connect").setLevel(logging.CRITICAL)


@dataclass(frozen=True)
class ClickHouseTarget:
    """Where a CLICKHOUSE_URL points: a server (host, port) or a chDB data directory, and the database."""

    database: str
    host: str | None = None
    port: int | None = None
    username: str = "default"
    password: str = ""
    secure: bool = False
    chdb_path: str | None = None

    @property
    def is_embedded(self) -> bool:
        """True for chdb:// URLs, opened in this process."""
        return self.host is None

    def describe(self) -> str:
        """`ClickHouse at host:port/database` for messages (never the password)."""
        where = f"chDB at {self.chdb_path or ':memory:'}" if self.is_embedded else f"ClickHouse at {self.host}:{self.port}"
        return f"{where}/{self.database}"


def parse_clickhouse_url(url: str) -> ClickHouseTarget:
    """Reads `http(s)://user:password@host:port/database` or `chdb:///dir/database` (`chdb://memory/database`)."""
    parts = urlsplit(url)
    if parts.scheme == "chdb":
        segments = [s for s in parts.path.split("/") if s]
        if parts.netloc in ("memory", ":memory:"):
            return ClickHouseTarget(database=segments[0] if segments else "default")
        if not segments:
            raise ValueError("a chdb:// URL needs a directory and a database, as in chdb:///var/lib/rules/rules")
        directory = "/" + "/".join(segments[:-1]) if len(segments) > 1 else "/"
        return ClickHouseTarget(database=segments[-1], chdb_path=directory)
    secure = parts.scheme == "https"
    return ClickHouseTarget(
        database=parts.path.strip("/") or "default",
        host=parts.hostname or "127.0.0.1",
        port=parts.port or (8443 if secure else 8123),
        username=unquote(parts.username) if parts.username else "default",
        password=unquote(parts.password) if parts.password else "",
        secure=secure,
    )


@contextmanager
def translated_errors(target: ClickHouseTarget, what: str) -> Iterator[None]:
    """Turns clickhouse-connect errors raised inside the block into StorageError subclasses."""
    try:
        yield
    except OperationalError as error:
        raise DatabaseUnavailable(f"{target.describe()}: {what} failed: {_network_reason(error)}") from error
    except ClickHouseError as error:
        raise QueryFailed(f"{target.describe()}: {what} failed: {first_line(error)}") from error



def _network_reason(error: Exception) -> str:
    # urllib3 nests the useful part ("[Errno 111] Connection refused") deep inside a long message.
    found = re.search(r"\[Errno -?\d+\] ([^\"')]+)", str(error))
    return found.group(1).strip().lower() if found else first_line(error)


# How long opening a client may take: connecting, and the server's first answer (its version and settings). A
# server that accepts connections but does not answer (hung, stopped) fails within this, not at a query's timeout.
CONNECT_TIMEOUT_SECONDS = 5
# How long a query may wait for its answer, once the client is open.
SEND_RECEIVE_TIMEOUT_SECONDS = 300


def connect(target: ClickHouseTarget, database: str | None = None, **settings: Any) -> Client:
    """A clickhouse-connect client for `target` (default settings, compression on), bound to `database`.

    Raises DatabaseUnavailable when the server does not answer within CONNECT_TIMEOUT_SECONDS."""
    database = database or target.database
    with translated_errors(target, "connecting"):
        if target.is_embedded:
            path = target.chdb_path
            return clickhouse_connect.get_client(interface="chdb", path=path, database=database, settings=settings)
        client = clickhouse_connect.get_client(
            host=target.host,
            port=target.port,
            username=target.username,
            password=target.password,
            secure=target.secure,
            database=database,
            settings=settings,
            connect_timeout=CONNECT_TIMEOUT_SECONDS,
            send_receive_timeout=CONNECT_TIMEOUT_SECONDS,
        )
        client.timeout = Timeout(connect=CONNECT_TIMEOUT_SECONDS, read=SEND_RECEIVE_TIMEOUT_SECONDS)
        return client


class ClickHouse:
    """Runs the named queries of storage/queries/clickhouse.sql, and engine-built SQL, on one database.

    With `extra_queries` (the path of a named-query file of a tool outside the service), that file's named queries
    run too. `settings` are ClickHouse settings for every statement of this client.
    """

    def __init__(self, url: str, *, extra_queries: Path | None = None, **settings: Any) -> None:
        self.target = parse_clickhouse_url(url)
        self._named = queries("clickhouse", extra_queries)
        self._client = connect(self.target, **settings)
        self._column_types: dict[tuple[str, tuple[str, ...]], list[str]] = {}

    def rows(self, name: str, /, **parameters: Any) -> list[dict[str, Any]]:
        """Runs named query `name` with server-side parameters; returns rows as dicts."""
        return self.sql_rows(self._named[name], parameters, what=f"query {name}")

    def row_tuples(self, name: str, /, **parameters: Any) -> list[tuple[Any, ...]]:
        """Runs named query `name` with server-side parameters; returns rows as tuples in the query's column order
        (for large answers: no dict per row)."""
        with translated_errors(self.target, f"query {name}"):
            return [tuple(row) for row in self._client.query(self._named[name], parameters=parameters).result_rows]

    def command_named(self, name: str, /, **parameters: Any) -> Any:
        """Runs named statement `name` (no rows back) with server-side parameters."""
        return self.command(self._named[name], parameters, what=f"statement {name}")

    def sql_rows(self, sql: str, parameters: dict[str, Any], *, what: str = "query") -> list[dict[str, Any]]:
        """Runs SQL built by the engine with server-side parameters; returns rows as dicts."""
        with self._request(what):
            result = self._client.query(sql, parameters=parameters)
            return list(result.named_results())

    def row_batches(self, sql: str, parameters: dict[str, Any], *, what: str = "query") -> Iterator[list[dict[str, Any]]]:
        """Runs SQL and yields its rows block by block as dicts, so a large answer never sits in memory whole."""
        with self._request(what):
            with self._client.query_row_block_stream(sql, parameters=parameters) as stream:
                names = stream.source.column_names
                for block in stream:
                    yield [dict(zip(names, row)) for row in block]

    def command(self, sql: str, parameters: dict[str, Any] | None = None, *, what: str = "statement",
                settings: dict[str, Any] | None = None) -> Any:
        """Runs a statement that returns no rows (DDL, INSERT ... SELECT), with extra query `settings` if given."""
        with self._request(what):
            return self._client.command(sql, parameters=parameters, settings=settings)

    def insert(self, table: str, rows: Sequence[Sequence[Any]], columns: Sequence[str], *,
               column_oriented: bool = False) -> None:
        """Inserts rows into `table` of this database; with `column_oriented`, `rows` holds one sequence per column
        (in the order of `columns`) instead of one per row.

        The columns' types are asked of the server on the first insert into (table, columns) and remembered for the
        life of this client, which saves a round trip on every later insert; migrations run before clients open.
        """
        key = (table, tuple(columns))
        with self._request(f"insert into {table}"):
            if key not in self._column_types:
                context = self._client.create_insert_context(table, list(columns))
                self._column_types[key] = [column_type.name for column_type in context.column_types]
            self._client.insert(table, rows, column_names=list(columns), column_type_names=self._column_types[key],
                                column_oriented=column_oriented)

    @contextmanager
    def answering_within(self, seconds: float) -> Iterator[None]:
        """Inside the block, a request whose answer takes over `seconds` fails with DatabaseUnavailable instead of
        waiting up to SEND_RECEIVE_TIMEOUT_SECONDS (a chDB client in-process has no timeout to shorten)."""
        if self.target.is_embedded:
            yield
            return
        usual = self._client.timeout
        self._client.timeout = Timeout(connect=CONNECT_TIMEOUT_SECONDS, read=seconds)
        try:
            yield
        finally:
            self._client.timeout = usual

    @contextmanager
    def _request(self, what: str) -> Iterator[None]:
        """translated_errors for one request of this client. A request given up before the server answered (a
        network failure, a read timeout, the run's time limit) moves the client to a new session: the server goes on
        with the abandoned statement, and until it ends, every other request in its session is refused
        (SESSION_IS_LOCKED)."""
        try:
            with translated_errors(self.target, what):
                yield
        except QueryFailed:
            raise
        except BaseException:
            self._renew_session()
            raise

    def _renew_session(self) -> None:
        """Gives the client a session id of its own, never used before (a chDB client in-process has none)."""
        if self._client.get_client_setting("session_id") is not None:
            self._client.set_client_setting("session_id", str(uuid.uuid4()))

    def close(self) -> None:
        """Releases the client."""
        self._client.close()
