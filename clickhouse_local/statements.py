"""Just enough lexing of SQL to split an INSERT from its data and to find a statement's first keyword and FORMAT."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from clickhouse_local.errors import ClickHouseError

# An INSERT's head (the statement before its data) is looked for in this many first bytes.
_HEAD_LIMIT = 1 << 20

_SPACE = re.compile(r"[ \t\n\r\f\v]+")
_WORD = re.compile(r"[A-Za-z0-9_\x80-\xff]+")
_HEREDOC_TAG = re.compile(r"\$([A-Za-z0-9_]*)\$")
_BLOCK_COMMENT_MARK = re.compile(r"/\*|\*/")
_QUOTED = {
    "'": re.compile(r"'(?:[^'\\]+|\\.|'')*'", re.S),
    '"': re.compile(r'"(?:[^"\\]+|\\.|"")*"', re.S),
    "`": re.compile(r"`(?:[^`\\]+|\\.|``)*`", re.S),
}


def _sql_tokens(text: str) -> Iterator[tuple[str, int, int]]:
    """The significant tokens of SQL text as (kind, start, end), skipping blanks and comments.

    Kinds: word, string, quoted, open, close, semicolon, other, and unterminated (a string or comment
    still open at the end of the text, always the last token).
    """
    pos, size = 0, len(text)
    while pos < size:
        char = text[pos]
        if char in " \t\n\r\f\v":
            pos = _SPACE.match(text, pos).end()
        elif text.startswith("--", pos) or (char == "#" and text[pos + 1 : pos + 2] in (" ", "!")):
            newline = text.find("\n", pos)
            pos = size if newline < 0 else newline + 1
        elif text.startswith("/*", pos):
            depth = 0
            for mark in _BLOCK_COMMENT_MARK.finditer(text, pos):
                depth += 1 if mark.group() == "/*" else -1
                if depth == 0:
                    pos = mark.end()
                    break
            else:
                yield "unterminated", pos, size
                return
        elif char in _QUOTED:
            quoted = _QUOTED[char].match(text, pos)
            if quoted is None:
                yield "unterminated", pos, size
                return
            yield ("string" if char == "'" else "quoted"), pos, quoted.end()
            pos = quoted.end()
        elif char == "$" and (tag := _HEREDOC_TAG.match(text, pos)):
            close = text.find(tag.group(), tag.end())
            if close < 0:
                yield "unterminated", pos, size
                return
            yield "string", pos, close + len(tag.group())
            pos = close + len(tag.group())
        elif word := _WORD.match(text, pos):
            yield "word", pos, word.end()
            pos = word.end()
        else:
            kind = "open" if char in "([{" else "close" if char in ")]}" else "semicolon" if char == ";" else "other"
            yield kind, pos, pos + 1
            pos += 1


@dataclass(frozen=True)
class InsertWithData:
    """An INSERT whose data follows its statement: `head` ends before FORMAT/VALUES, data starts at `data_start`."""

    head_end: int
    input_format: str
    data_start: int


PLAIN = "plain"  # a statement read whole and given to the engine as it is
EMPTY = "empty"  # nothing but blanks and comments


def _plan_statement(text: str, complete: bool) -> InsertWithData | ClickHouseError | str | None:
    """How to run the statement that `text` starts; None when the decision needs more of it.

    `complete` says that `text` is the whole statement. An INSERT with FORMAT or VALUES (outside
    parentheses, before any SELECT) is split from its data, as ClickHouse's parser does.
    """
    tokens = _sql_tokens(text)
    size = len(text)

    def unsure(kind: str, end: int) -> bool:
        return kind == "unterminated" or (end >= size and not complete)

    first = next(tokens, None)
    if first is None:
        return EMPTY if complete else None
    kind, start, end = first
    if unsure(kind, end):
        return PLAIN if complete else None
    if kind != "word" or text[start:end].upper() != "INSERT":
        return PLAIN
    depth = 0
    for kind, start, end in tokens:
        if unsure(kind, end):
            return PLAIN if complete else None
        if kind == "open":
            depth += 1
        elif kind == "close":
            depth -= 1
        elif kind == "semicolon" and depth == 0:
            return PLAIN
        elif kind == "word" and depth == 0:
            keyword = text[start:end].upper()
            if keyword == "VALUES":
                return InsertWithData(start, "Values", end)
            if keyword in ("SELECT", "WITH", "INFILE"):
                return PLAIN
            if keyword == "FORMAT":
                return _plan_insert_data(text, complete, start, next(tokens, None))
    return PLAIN if complete else None


def _plan_insert_data(
    text: str, complete: bool, format_keyword_start: int, name: tuple[str, int, int] | None
) -> InsertWithData | ClickHouseError | str | None:
    """Where an INSERT's data starts after `FORMAT name`: past spaces, then past one line break."""
    size = len(text)
    if name is None:
        return PLAIN if complete else None
    kind, start, end = name
    if kind == "unterminated" or (end >= size and not complete):
        return PLAIN if complete else None
    if kind != "word":
        return PLAIN
    data = end
    if data < size and text[data] == ";":
        return ClickHouseError.named(
            "SYNTAX_ERROR",
            "You have excessive ';' symbol before data for INSERT. Note that there is no ';' just after "
            "format name, you need to put at least one whitespace symbol before the data",
        )
    while data < size and text[data] in " \t\f":
        data += 1
    if data < size and text[data] == "\r":
        data += 1
    if data < size and text[data] == "\n":
        data += 1
    if data >= size and not complete:
        return None
    return InsertWithData(format_keyword_start, text[start:end], data)


@dataclass(frozen=True)
class PlainStatement:
    """What the HTTP layer needs to know of a statement run as it is."""

    first_keyword: str
    output_format: str | None  # the format of a trailing FORMAT clause


def inspect_statement(text: str, format_names: dict[str, str]) -> PlainStatement:
    """The first keyword and FORMAT clause of one statement; a second statement is refused as by ClickHouse."""
    first_keyword = ""
    output_format = None
    depth = 0
    end_of_statement = None
    after_format_keyword = False
    for kind, start, end in _sql_tokens(text):
        if kind == "unterminated":
            break  # the engine reports the error
        if end_of_statement is not None:
            if kind == "semicolon":
                continue
            line = text.count("\n", 0, start) + 1
            column = start - (text.rfind("\n", 0, start) + 1) + 1
            raise ClickHouseError.named(
                "SYNTAX_ERROR",
                f"Syntax error (Multi-statements are not allowed): failed at position {start + 1} "
                f"(line {line}, col {column}): {text[start : start + 40]}",
            )
        token = text[start:end]
        if not first_keyword:
            first_keyword = token.upper()
        if kind == "open":
            depth += 1
        elif kind == "close":
            depth -= 1
        elif kind == "semicolon" and depth == 0:
            end_of_statement = start
        if kind == "word" and depth == 0:
            if after_format_keyword and token.lower() in format_names:
                output_format = format_names[token.lower()]
            after_format_keyword = token.upper() == "FORMAT"
        else:
            after_format_keyword = False
    return PlainStatement(first_keyword, output_format)


def split_statement(stream: Iterator[bytes]) -> tuple[InsertWithData | ClickHouseError | str, bytearray]:
    """Reads the start of a statement from `stream` until it is known how to run it.

    Returns the plan and the bytes read; the rest of the statement is still in `stream`.
    """
    buffer = bytearray()
    complete = False
    wanted = 64 << 10
    while True:
        while not complete and len(buffer) < wanted:
            chunk = next(stream, None)
            if chunk is None:
                complete = True
            else:
                buffer += chunk
        probe_complete = complete and len(buffer) <= _HEAD_LIMIT
        plan = _plan_statement(bytes(buffer[:_HEAD_LIMIT]).decode("latin-1"), probe_complete)
        if plan is not None:
            return plan, buffer
        if len(buffer) >= _HEAD_LIMIT:
            return PLAIN, buffer
        wanted *= 2
