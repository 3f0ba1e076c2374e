"""PostgreSQL access: a connection pool and the named queries of storage/queries/postgres.sql (and of an extra file)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row, tuple_row
from psycopg_pool import ConnectionPool, PoolTimeout

from storage.errors import DatabaseUnavailable, QueryFailed, first_line
from storage.queries import queries


def describe_postgres(url: str) -> str:
    """`host:port/database` of a PostgreSQL URL, for messages (never the password)."""
    try:
        parts = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "PostgreSQL (unparsable DATABASE_URL)"
    host = parts.get("host") or "localhost"
    return f"PostgreSQL at {host}:{parts.get('port') or 5432}/{parts.get('dbname', '')}"


@contextmanager
def translated_errors(url: str, what: str) -> Iterator[None]:
    """Turns psycopg errors raised inside the block into StorageError subclasses naming server and action."""
    try:
        yield
    except (psycopg.OperationalError, PoolTimeout) as error:
        reason = first_line(error)
        if isinstance(error, psycopg.errors.QueryCanceled):
            raise QueryFailed(f"{describe_postgres(url)}: {what} was cancelled: {reason}") from error
        raise DatabaseUnavailable(f"{describe_postgres(url)}: {what} failed: {reason}") from error
    except psycopg.Error as error:
        reason = first_line(error)
        raise QueryFailed(f"{describe_postgres(url)}: {what} failed: {reason}") from error


class Transaction:
    """Runs named queries on one connection inside one transaction."""

    def __init__(self, connection: psycopg.Connection, url: str, named: Mapping[str, str]) -> None:
        self._connection = connection
        self._url = url
        self._named = named

    def _run(self, name: str, params: Mapping[str, Any], /, row_factory: Any = None) -> psycopg.Cursor:
        with translated_errors(self._url, f"query {name}"):
            cursor = self._connection.cursor(row_factory=row_factory)  # None: the connection's (dict rows)
            return cursor.execute(self._named[name], params, prepare=True)

    def execute(self, name: str, /, **params: Any) -> int:
        """Runs query `name`; returns the number of rows it touched."""
        return self._run(name, params).rowcount

    def one(self, name: str, /, **params: Any) -> dict[str, Any] | None:
        """Runs query `name`; returns its first row as a dict, or None."""
        return self._run(name, params).fetchone()

    def all(self, name: str, /, **params: Any) -> list[dict[str, Any]]:
        """Runs query `name`; returns every row as a dict."""
        return self._run(name, params).fetchall()

    def row_tuples(self, name: str, /, **params: Any) -> list[tuple[Any, ...]]:
        """Runs query `name`; returns every row as a tuple in the query's column order (for large answers: no dict
        per row)."""
        return self._run(name, params, row_factory=tuple_row).fetchall()

    def first_rows(self, name: str, each_params: Sequence[Mapping[str, Any]], /) -> list[dict[str, Any] | None]:
        """Runs query `name` once per element of `each_params`, every one sent before any answer is awaited (one
        round trip); returns the first row of each as a dict (None for one that returned none), in their order."""
        with translated_errors(self._url, f"query {name}"):
            with self._connection.pipeline():
                cursors = [self._connection.cursor().execute(self._named[name], params, prepare=True)
                           for params in each_params]
            return [cursor.fetchone() for cursor in cursors]


class Postgres:
    """A pool of connections to one PostgreSQL database; opened lazily, safe to share between threads.

    It runs the named queries of storage/queries/postgres.sql and, with `extra_queries` (the path of a named-query
    file of a tool outside the service), that file's too.
    """

    def __init__(self, url: str, *, max_size: int = 4, timeout: float = 10.0,
                 extra_queries: Path | None = None) -> None:
        self.url = url
        self._named = queries("postgres", extra_queries)
        self._pool = ConnectionPool(
            url,
            min_size=0,
            max_size=max_size,
            timeout=timeout,
            open=False,
            kwargs={"row_factory": dict_row, "connect_timeout": 5},
            check=ConnectionPool.check_connection,
        )
        self._opened = False

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """One transaction: committed when the block ends, rolled back if it raises."""
        if not self._opened:
            self._open()
        with translated_errors(self.url, "the transaction"), self._pool.connection() as connection:
            with connection.transaction():
                yield Transaction(connection, self.url, self._named)

    def _open(self) -> None:
        # One direct connection first: the pool would only retry quietly and time out without saying why.
        with translated_errors(self.url, "connecting"):
            psycopg.connect(self.url, connect_timeout=5).close()
        self._pool.open()
        self._opened = True

    def execute(self, name: str, /, **params: Any) -> int:
        """Runs query `name` in a transaction of its own; returns the rows touched."""
        with self.transaction() as tx:
            return tx.execute(name, **params)

    def one(self, name: str, /, **params: Any) -> dict[str, Any] | None:
        """Runs query `name` in a transaction of its own; returns the first row or None."""
        with self.transaction() as tx:
            return tx.one(name, **params)

    def all(self, name: str, /, **params: Any) -> list[dict[str, Any]]:
        """Runs query `name` in a transaction of its own; returns all rows."""
        with self.transaction() as tx:
            return tx.all(name, **params)

    def row_tuples(self, name: str, /, **params: Any) -> list[tuple[Any, ...]]:
        """Runs query `name` in a transaction of its own; returns all rows as tuples (Transaction.row_tuples)."""
        with self.transaction() as tx:
            return tx.row_tuples(name, **params)

    def close(self) -> None:
        """Closes every pooled connection."""
        if self._opened:
            self._pool.close()
            self._opened = False
