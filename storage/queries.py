"""Named SQL: each `.sql` file under storage/queries (and a named-query file of its own for what is not the
service, such as the demo's) holds blocks introduced by `-- name: <query_name>`."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

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
def named_queries(path: Path) -> dict[str, str]:
    """The named queries of the SQL file at `path`, loaded once per process."""
    return parse_named_blocks(path.read_text())


def queries(dialect: str) -> dict[str, str]:
    """The named queries of `dialect` ("postgres" or "clickhouse"), loaded once per process."""
    return named_queries(QUERY_DIR / f"{dialect}.sql")
