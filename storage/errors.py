"""The storage layer's own exceptions: driver errors are translated into these at the boundary."""


class StorageError(Exception):
    """Base of every storage failure; the message says which server, which database and what failed."""


class DatabaseUnavailable(StorageError):
    """A server could not be reached or refused the connection; worth retrying later."""


class QueryFailed(StorageError):
    """A server ran a statement and answered with an error; retrying the same statement will not help."""


class MigrationFailed(StorageError):
    """A migration file failed; the files before it stay applied."""


def first_line(error: BaseException) -> str:
    """The first non-blank line of an error's text, or its class name: driver messages can run to pages."""
    for line in str(error).strip().splitlines():
        if line.strip():
            return line.strip()
    return type(error).__name__
