"""`rulesctl`: the command line of the rules engine."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from storage.errors import StorageError
from worker.settings import ConfigurationError


class UsageError(Exception):
    """A bad argument: printed as one line, exit 2."""


class CommandFailed(Exception):
    """The command could not do its job: printed as one line, exit 1."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse would print the whole usage; one line is the contract
        raise UsageError(message)


def _cmd_migrate(args: argparse.Namespace) -> int:
    from storage.migrations import migrate_all
    from worker.settings import settings

    config = settings()
    for line in migrate_all(config.database_url, config.clickhouse_url):
        print(line)
    return 0


def _cmd_clickhouse_local(args: argparse.Namespace) -> int:
    from storage.chlocal import serve

    serve(args.path, host=args.host, port=args.port, password=args.password)
    return 0


def _build_parser() -> _Parser:
    parser = _Parser(prog="rulesctl", description="The rules engine for ad-operations data.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on failure")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")

    migrate = commands.add_parser("migrate", help="create the databases if missing and apply pending migrations")
    migrate.set_defaults(handler=_cmd_migrate)

    local = commands.add_parser("clickhouse-local", help="serve the embedded ClickHouse (chDB) over HTTP")
    local.add_argument("--path", default="./data/clickhouse", help="data directory (default ./data/clickhouse)")
    local.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    local.add_argument("--port", type=int, default=8123, help="port to listen on (default 8123)")
    local.add_argument("--password", default=None, help="require this password for every request")
    local.set_defaults(handler=_cmd_clickhouse_local)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one rulesctl command; returns its exit code (0 ok, 1 failed, 2 bad usage)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        args = _build_parser().parse_args(argv)
        handler: Callable[[argparse.Namespace], int] = args.handler
        return handler(args)
    except UsageError as error:
        print(f"rulesctl: {error}", file=sys.stderr)
        return 2
    except (CommandFailed, ConfigurationError, StorageError) as error:
        if debug:
            raise
        print(f"rulesctl: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
