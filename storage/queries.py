"""Named SQL: a `.sql` file holds blocks introduced by `-- name: <query_name>`, loaded once and run by name.

The service's statements are in storage/queries (postgres.sql, clickhouse.sql). A tool outside the service keeps its
own in a file of its own and gives its path to `Postgres` or `ClickHouse` as `extra_queries`; those then run its
statements by name beside the service's, with the same error translation.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from types import MappingProxyType

QUERY_DIR = Path(__file__).with_name("queries")
_NAME_LINE = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


def parse_named_blocks(text: str) -> dict[str, str]:
    """Splits SQL text into {name: statement}; comment lines inside a block are kept, blank edges trimmed."""
    blocks: dict[str, str] = {}
    matches = list(_NAME_LINE.finditer(text))
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        name = match.group(1)
        if name in blocks:
            raise ValueError(f"query {name!r} is defined twice")
        blocks[name] = text[match.end():end].strip().rstrip(";")
    return blocks


@cache
def _named_queries_of(path: Path) -> Mapping[str, str]:
    return MappingProxyType(parse_named_blocks(path.read_text()))


@cache
def queries(dialect: str, extra: Path | None = None) -> Mapping[str, str]:
    """The named queries of `dialect` ("postgres" or "clickhouse"), each file read once per process.

    With `extra`, the path of a named-query file outside storage/queries, its queries come too; a name it shares
    with the service's file is refused (ValueError), so a tool can never replace a statement of the service.
    """
    own = _named_queries_of(QUERY_DIR / f"{dialect}.sql")
    if extra is None:
        return own
    added = _named_queries_of(Path(extra).resolve())
    shared = sorted(own.keys() & added.keys())
    if shared:
        raise ValueError(f"{extra}: {', '.join(shared)} already defined in storage/queries/{dialect}.sql")
    return MappingProxyType({**own, **added})
