"""The embedded ClickHouse server: chDB's engine behind the ClickHouse HTTP interface.

`serve()` runs the real ClickHouse engine in-process (chDB, data kept in one directory) and answers
the HTTP protocol of a ClickHouse server, so clickhouse-connect with its default settings and
`curl` work against it as against `clickhouse-server`:

- `GET /?query=...`, `POST /` with the statement in the body, or the statement split between the
  `query` parameter and the body (joined by a newline, the body after an `INSERT ... FORMAT X` being
  its data); `multipart/form-data` with `query`, `param_<name>` fields and external tables.
- `GET /ping`, `GET /` and `GET /replicas_status` answer `Ok.`; another path without a statement is 404.
- URL parameters that are not part of the HTTP layer are settings for that request only; `database`
  (or `X-ClickHouse-Database`), `default_format` (or `X-ClickHouse-Format`, TabSeparated otherwise),
  `query_id`, `param_<name>` for `{name:Type}` placeholders, `session_id` with `session_timeout`,
  `session_check` and `close_session`.
- Request bodies in Content-Encoding gzip, deflate, zstd, lz4, xz, bz2 (and br when the `brotli`
  module is installed); answers compressed the same ways when Accept-Encoding asks for it and the
  setting `enable_http_compression` is on (the engine's default).
- Errors as ClickHouse sends them: the `Code: N. DB::Exception: ...` text, the header
  `X-ClickHouse-Exception-Code` and ClickHouse's HTTP status for that code.
- With a password, the user `default` must present it by HTTP basic auth, by the headers
  `X-ClickHouse-User`/`X-ClickHouse-Key` or by the `user`/`password` parameters. Without a password
  any user and password are accepted, which is why the default address is the loopback one.

Where it differs from a ClickHouse server: there are no users, roles or quotas; the whole answer is
computed before it is sent (as with `wait_end_of_query=1`), so there are no progress headers;
the `compress`/`decompress` parameters (ClickHouse's own block compression) are refused; the
engine gives each query its own id, so `query_id` names the request but not the query in
system.processes; and a request that must be read-only (GET, or a `readonly` setting) runs outside
its session, because a chDB connection cannot leave read-only mode once in it.

Each request gets a connection of its own (a session keeps one for its requests), so the
engine runs requests in parallel and a request's settings stay with it.
"""

from __future__ import annotations

import base64
import binascii
import bz2
import errno
import fcntl
import gzip
import hmac
import json
import logging
import lzma
import os
import re
import signal
import socket
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP as HTTP_POLICY
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import lz4.frame
import zstandard

try:
    import brotli
except ImportError:
    brotli = None

_log = logging.getLogger(__name__)

_LOCK_FILE_NAME = ".clickhouse-local.lock"
_KEEP_ALIVE_SECONDS = 30
_DEFAULT_SESSION_TIMEOUT = 60
_MAX_SESSION_TIMEOUT = 3600
# On SIGTERM, requests under way get this long to finish before their queries are cancelled.
_SHUTDOWN_GRACE_SECONDS = 5
# An INSERT's head (the statement before its data) is looked for in this many first bytes.
_HEAD_LIMIT = 1 << 20
# A statement that is not an INSERT with data is read whole; the engine's max_query_size is far lower.
_STATEMENT_LIMIT = 256 << 20
_READ_CHUNK = 1 << 20

# Error codes of the errors raised here rather than by the engine.
_ERROR_CODES = {
    "BAD_ARGUMENTS": 36,
    "NOT_IMPLEMENTED": 48,
    "SYNTAX_ERROR": 62,
    "UNKNOWN_SETTING": 115,
    "READONLY": 164,
    "QUERY_WITH_SAME_ID_IS_ALREADY_RUNNING": 216,
    "QUERY_IS_TOO_LARGE": 229,
    "CANNOT_DECOMPRESS": 271,
    "SESSION_NOT_FOUND": 372,
    "SESSION_IS_LOCKED": 373,
    "INVALID_SESSION_TIMEOUT": 374,
    "HTTP_LENGTH_REQUIRED": 381,
    "AUTHENTICATION_FAILED": 516,
    "STD_EXCEPTION": 1001,
}

# ClickHouse's HTTP status for an error, by error name; any other error is 500.
_HTTP_STATUS_BY_ERROR = {
    "REQUIRED_PASSWORD": 401,
    **dict.fromkeys(
        ("UNKNOWN_USER", "WRONG_PASSWORD", "AUTHENTICATION_FAILED", "SET_NON_GRANTED_ROLE", "ACCESS_DENIED"), 403
    ),
    **dict.fromkeys(
        (
            "BAD_ARGUMENTS", "CANNOT_COMPILE_REGEXP", "CANNOT_PARSE_TEXT", "CANNOT_PARSE_ESCAPE_SEQUENCE",
            "CANNOT_PARSE_QUOTED_STRING", "CANNOT_PARSE_DATE", "CANNOT_PARSE_DATETIME", "CANNOT_PARSE_NUMBER",
            "CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING", "CANNOT_PARSE_IPV4", "CANNOT_PARSE_IPV6",
            "CANNOT_PARSE_INPUT_ASSERTION_FAILED", "CANNOT_PARSE_UUID", "DUPLICATE_COLUMN", "ILLEGAL_COLUMN",
            "UNKNOWN_ELEMENT_IN_AST", "UNKNOWN_TYPE_OF_AST_NODE", "THERE_IS_NO_COLUMN", "TOO_DEEP_AST",
            "TOO_BIG_AST", "UNEXPECTED_AST_STRUCTURE", "SYNTAX_ERROR", "INCORRECT_DATA", "TYPE_MISMATCH",
            "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE",
        ),
        400,
    ),
    **dict.fromkeys(
        (
            "UNKNOWN_TABLE", "UNKNOWN_FUNCTION", "UNKNOWN_IDENTIFIER", "UNKNOWN_TYPE", "UNKNOWN_STORAGE",
            "UNKNOWN_DATABASE", "UNKNOWN_SETTING", "UNKNOWN_DIRECTION_OF_SORTING", "UNKNOWN_AGGREGATE_FUNCTION",
            "UNKNOWN_FORMAT", "UNKNOWN_DATABASE_ENGINE", "UNKNOWN_TYPE_OF_QUERY", "UNKNOWN_ROLE",
        ),
        404,
    ),
    "QUERY_IS_TOO_LARGE": 413,
    "NOT_IMPLEMENTED": 501,
    "SOCKET_TIMEOUT": 503,
    "CANNOT_OPEN_FILE": 503,
    "CANNOT_SCHEDULE_TASK": 503,
    "HTTP_LENGTH_REQUIRED": 411,
    "TIMEOUT_EXCEEDED": 408,
    "UNSUPPORTED_MEDIA_TYPE": 415,
}

# URL parameters the HTTP layer consumes itself; every other one (but param_*) is a setting.
_TRANSPORT_PARAMETERS = frozenset(
    {
        "query", "database", "default_format", "user", "password", "quota_key", "query_id", "compress",
        "decompress", "stacktrace", "buffer_size", "wait_end_of_query", "session_id", "session_timeout",
        "session_check", "client_protocol_version", "close_session", "role",
    }
)
# With multipart/form-data these suffixes name external tables' formats, types and structures.
_EXTERNAL_TABLE_SUFFIXES = ("_format", "_types", "_structure")
# Settings the HTTP layer reads; a session's values of them are cached with its other settings.
_HTTP_LAYER_SETTINGS = ("enable_http_compression", "http_zlib_compression_level", "session_timezone")
# First keywords of the statements that answer a result set, even an empty one.
_RESULT_KEYWORDS = frozenset({"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXISTS", "EXPLAIN", "CHECK", "KILL", "("})
# Preference of response encodings, as ClickHouse chooses from Accept-Encoding.
_RESPONSE_ENCODINGS = ("zstd", "br", "lz4", "gzip", "deflate", "xz", "bz2")
_BINARY_FORMATS = frozenset(
    {
        "native", "rowbinary", "rowbinarywithnames", "rowbinarywithnamesandtypes", "rowbinarywithdefaults",
        "parquet", "arrow", "arrowstream", "orc", "avro", "protobuf", "protobufsingle", "protobuflist",
        "capnproto", "msgpack", "npy", "bsoneachrow", "rawblob",
    }
)
_SETTING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_NOT_FOUND_TEXT = (
    "There is no handle {path}\n\n"
    "Use / or /ping for health checks.\n"
    "Or /replicas_status for more sophisticated health checks.\n\n"
    "Send queries with the POST method or GET /?query=...\n"
)


class _ClickHouseError(Exception):
    """An error answered the way ClickHouse answers it: code, name and `Code: N. DB::Exception:` text."""

    def __init__(self, code: int, name: str, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.name = name
        self.text = text

    @classmethod
    def named(cls, name: str, message: str) -> _ClickHouseError:
        """An error of this module, from its ClickHouse name and message."""
        code = _ERROR_CODES[name]
        return cls(code, name, f"Code: {code}. DB::Exception: {message}. ({name})")

    @property
    def http_status(self) -> int:
        return _HTTP_STATUS_BY_ERROR.get(self.name, 500)

    def body(self, version: str) -> bytes:
        return f"{self.text} (version {version})\n".encode("utf-8", "replace")


_ENGINE_ERROR_START = re.compile(r"Code: (\d+)\. DB::Exception: ")
_ENGINE_ERROR_NESTED = re.compile(
    r"Code: (\d+)\. DB::Exception: (Code: \1\. DB::Exception: .*?)(?: \(version [^)]*\))?\. \([A-Z0-9_]+\)\Z", re.S
)
_VERSION_TRAILER = re.compile(r"\s*\(version [^)]*\)\s*\Z")
_ERROR_NAME_AT_END = re.compile(r"\(([A-Z][A-Z0-9_]*)\)\Z")


def _engine_error(exc: BaseException) -> _ClickHouseError:
    """The ClickHouseError in a chDB exception, whose text holds `Code: N. DB::Exception: ...`."""
    raw = str(exc)
    start = _ENGINE_ERROR_START.search(raw)
    if start is None:
        return _ClickHouseError.named("STD_EXCEPTION", raw.strip() or type(exc).__name__)
    text = raw[start.start():].strip()
    nested = _ENGINE_ERROR_NESTED.match(text)
    if nested:
        text = nested.group(2)
    text = _VERSION_TRAILER.sub("", text)
    name = _ERROR_NAME_AT_END.search(text)
    return _ClickHouseError(int(start.group(1)), name.group(1) if name else "UNKNOWN_EXCEPTION", text)


# --- Statements: just enough lexing to find an INSERT's data and a result's FORMAT -------------------------------

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
class _InsertWithData:
    """An INSERT whose data follows its statement: `head` ends before FORMAT/VALUES, data starts at `data_start`."""

    head_end: int
    input_format: str
    data_start: int


_PLAIN = "plain"  # a statement read whole and given to the engine as it is
_EMPTY = "empty"  # nothing but blanks and comments


def _plan_statement(text: str, complete: bool) -> _InsertWithData | _ClickHouseError | str | None:
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
        return _EMPTY if complete else None
    kind, start, end = first
    if unsure(kind, end):
        return _PLAIN if complete else None
    if kind != "word" or text[start:end].upper() != "INSERT":
        return _PLAIN
    depth = 0
    for kind, start, end in tokens:
        if unsure(kind, end):
            return _PLAIN if complete else None
        if kind == "open":
            depth += 1
        elif kind == "close":
            depth -= 1
        elif kind == "semicolon" and depth == 0:
            return _PLAIN
        elif kind == "word" and depth == 0:
            keyword = text[start:end].upper()
            if keyword == "VALUES":
                return _InsertWithData(start, "Values", end)
            if keyword in ("SELECT", "WITH", "INFILE"):
                return _PLAIN
            if keyword == "FORMAT":
                return _plan_insert_data(text, complete, start, next(tokens, None))
    return _PLAIN if complete else None


def _plan_insert_data(
    text: str, complete: bool, format_keyword_start: int, name: tuple[str, int, int] | None
) -> _InsertWithData | _ClickHouseError | str | None:
    """Where an INSERT's data starts after `FORMAT name`: past spaces, then past one line break."""
    size = len(text)
    if name is None:
        return _PLAIN if complete else None
    kind, start, end = name
    if kind == "unterminated" or (end >= size and not complete):
        return _PLAIN if complete else None
    if kind != "word":
        return _PLAIN
    data = end
    if data < size and text[data] == ";":
        return _ClickHouseError.named(
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
    return _InsertWithData(format_keyword_start, text[start:end], data)


@dataclass(frozen=True)
class _PlainStatement:
    """What the HTTP layer needs to know of a statement run as it is."""

    first_keyword: str
    output_format: str | None  # the format of a trailing FORMAT clause


def _inspect_statement(text: str, format_names: dict[str, str]) -> _PlainStatement:
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
            raise _ClickHouseError.named(
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
    return _PlainStatement(first_keyword, output_format)


def _split_statement(stream: Iterator[bytes]) -> tuple[_InsertWithData | _ClickHouseError | str, bytearray]:
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
            return _PLAIN, buffer
        wanted *= 2


# --- Bodies: transfer coding, content encoding ------------------------------------------------------------------


class _RequestBody:
    """The raw bytes of a request body, framed by Content-Length or the chunked transfer coding."""

    def __init__(self, rfile: Any, headers: Any) -> None:
        self._rfile = rfile
        self._chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
        self.has_length = self._chunked or headers.get("Content-Length") is not None
        self._remaining = 0
        if not self._chunked and headers.get("Content-Length") is not None:
            try:
                self._remaining = int(headers["Content-Length"])
            except ValueError:
                raise _ClickHouseError.named("BAD_ARGUMENTS", "Invalid Content-Length header") from None
            if self._remaining < 0:
                raise _ClickHouseError.named("BAD_ARGUMENTS", "Invalid Content-Length header")
        self.exhausted = not self._chunked and self._remaining == 0
        self._chunk_left = 0

    def chunks(self) -> Iterator[bytes]:
        """The body's bytes as they arrive, in pieces of at most 1 MiB."""
        while not self.exhausted:
            piece = self._read_chunked() if self._chunked else self._read_sized()
            if piece:
                yield piece

    def drain(self) -> None:
        """Reads and drops what is left, so the connection can carry the next request."""
        for _ in self.chunks():
            pass

    def _read_exact(self, size: int) -> bytes:
        data = self._rfile.read(size)
        if len(data) < size:
            raise ConnectionError("the client closed the connection in the middle of the request body")
        return data

    def _read_sized(self) -> bytes:
        piece = self._read_exact(min(self._remaining, _READ_CHUNK))
        self._remaining -= len(piece)
        self.exhausted = self._remaining == 0
        return piece

    def _read_chunked(self) -> bytes:
        if self._chunk_left == 0:
            line = self._rfile.readline(1 << 16)
            if not line:
                raise ConnectionError("the client closed the connection in the middle of the request body")
            try:
                self._chunk_left = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _ClickHouseError.named("BAD_ARGUMENTS", "Invalid chunk size in the request body") from None
            if self._chunk_left == 0:
                while self._rfile.readline(1 << 16) not in (b"\r\n", b"\n", b""):
                    pass  # trailer fields
                self.exhausted = True
                return b""
        piece = self._read_exact(min(self._chunk_left, _READ_CHUNK))
        self._chunk_left -= len(piece)
        if self._chunk_left == 0:
            self._read_exact(2)  # the CRLF after the chunk
        return piece


class _BrotliFrame:
    """brotli's decompressor with the eof/unused_data shape of the standard library's decompressors."""

    unused_data = b""

    def __init__(self) -> None:
        self._decompressor = brotli.Decompressor()

    def decompress(self, data: bytes) -> bytes:
        return self._decompressor.process(data)

    @property
    def eof(self) -> bool:
        return self._decompressor.is_finished()


_REQUEST_DECODERS: dict[str, Callable[[], Any]] = {
    "gzip": lambda: zlib.decompressobj(16 + zlib.MAX_WBITS),
    "x-gzip": lambda: zlib.decompressobj(16 + zlib.MAX_WBITS),
    "deflate": zlib.decompressobj,
    "zstd": lambda: zstandard.ZstdDecompressor().decompressobj(),
    "lz4": lz4.frame.LZ4FrameDecompressor,
    "xz": lzma.LZMADecompressor,
    "bz2": bz2.BZ2Decompressor,
}
if brotli is not None:
    _REQUEST_DECODERS["br"] = _BrotliFrame
# What the decompressors raise on bad input (lz4 raises RuntimeError).
_DECOMPRESSION_ERRORS = (zlib.error, lzma.LZMAError, zstandard.ZstdError, OSError, EOFError, RuntimeError, ValueError)


def _decoded(chunks: Iterator[bytes], encoding: str) -> Iterator[bytes]:
    """The chunks decompressed by Content-Encoding `encoding`, which may hold several frames one after another."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        yield from chunks
        return
    new_frame = _REQUEST_DECODERS.get(encoding)
    if new_frame is None:
        raise _ClickHouseError.named(
            "NOT_IMPLEMENTED", f"Unknown HTTP Content-Encoding of the request body: {encoding}"
        )
    frame = None
    for chunk in chunks:
        while chunk:
            try:
                if frame is None:
                    frame = new_frame()
                output = frame.decompress(chunk)
            except _DECOMPRESSION_ERRORS as exc:
                raise _ClickHouseError.named(
                    "CANNOT_DECOMPRESS", f"Cannot decompress the request body ({encoding}): {exc}"
                ) from None
            if frame.eof:
                chunk, frame = frame.unused_data, None
            else:
                chunk = b""
            if output:
                yield output
    if frame is not None:
        raise _ClickHouseError.named(
            "CANNOT_DECOMPRESS", f"Cannot decompress the request body ({encoding}): it ends in the middle of a frame"
        )


def _response_encoding(accept_encoding: str) -> str | None:
    """The encoding ClickHouse would pick from an Accept-Encoding header, among those available here."""
    offered = set()
    for item in accept_encoding.lower().split(","):
        name, _, parameters = item.strip().partition(";")
        quality = parameters.strip().removeprefix("q=") if parameters.strip().startswith("q=") else "1"
        try:
            if float(quality) > 0:
                offered.add(name.strip())
        except ValueError:
            offered.add(name.strip())
    for encoding in _RESPONSE_ENCODINGS:
        if encoding in offered and (encoding != "br" or brotli is not None):
            return encoding
    return None


def _compressed(body: bytes, encoding: str, level: int) -> bytes:
    """`body` as one frame of `encoding`; `level` is the setting http_zlib_compression_level."""
    if encoding == "zstd":
        return zstandard.ZstdCompressor(level=min(max(level, 1), 22)).compress(body)
    if encoding == "lz4":
        return lz4.frame.compress(body)
    if encoding == "gzip":
        return gzip.compress(body, compresslevel=min(max(level, 0), 9), mtime=0)
    if encoding == "deflate":
        return zlib.compress(body, min(max(level, 0), 9))
    if encoding == "xz":
        return lzma.compress(body, preset=min(max(level, 0), 9))
    if encoding == "bz2":
        return bz2.compress(body, min(max(level, 1), 9))
    return brotli.compress(body, quality=min(max(level, 0), 11))


def _content_type(output_format: str) -> str:
    """The Content-Type ClickHouse gives an answer in `output_format`."""
    name = output_format.lower()
    if name.startswith(("tabseparated", "tsv")):
        return "text/tab-separated-values; charset=UTF-8"
    if name.startswith("csv"):
        return f"text/csv; charset=UTF-8; header={'present' if 'withnames' in name else 'absent'}"
    if name in ("jsoneachrow", "jsonlines", "ndjson", "jsonstringseachrow"):
        return "application/x-ndjson; charset=UTF-8"
    if name.startswith("json") and "eachrow" not in name:
        return "application/json; charset=UTF-8"
    if name == "xml":
        return "application/xml; charset=UTF-8"
    if name in _BINARY_FORMATS:
        return "application/octet-stream"
    return "text/plain; charset=UTF-8"


def _parse_multipart(content_type_header: str, body: bytes) -> list[tuple[str, str | None, bytes]]:
    """The parts of a multipart/form-data body as (field name, file name or None, bytes)."""
    message = BytesParser(policy=HTTP_POLICY).parsebytes(
        b"Content-Type: " + content_type_header.encode("latin-1") + b"\r\n\r\n" + body
    )
    if not message.is_multipart():
        raise _ClickHouseError.named("BAD_ARGUMENTS", "Cannot parse the multipart/form-data request body")
    parts = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name:
            parts.append((str(name), part.get_filename(), part.get_payload(decode=True) or b""))
    return parts


# --- SQL text built here ----------------------------------------------------------------------------------------


def _quote_identifier(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def _quote_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _set_statement(settings: dict[str, str]) -> str:
    """`SET a = 'x', b = 'y'`: ClickHouse converts a quoted value to each setting's type."""
    return "SET " + ", ".join(f"{name} = {_quote_string(value)}" for name, value in settings.items())


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


# --- The request ------------------------------------------------------------------------------------------------


@dataclass
class _QueryRequest:
    """What a query request asks for, from its URL parameters and headers."""

    method: str
    url_query: bytes = b""
    settings: dict[str, str] = field(default_factory=dict)
    query_parameters: dict[str, str] = field(default_factory=dict)
    database: str = ""
    default_format: str = "TabSeparated"
    query_id: str = ""
    session_id: str = ""
    session_timeout: int = _DEFAULT_SESSION_TIMEOUT
    session_check: bool = False
    close_session: bool = False
    external_tables: dict[str, dict[str, str]] = field(default_factory=dict)

    @classmethod
    def parse(cls, method: str, query_string: str, headers: Any, multipart: bool) -> _QueryRequest:
        """Sorts the URL parameters into settings, query parameters and the HTTP layer's own, as ClickHouse does."""
        request = cls(method=method)
        database = headers.get("X-ClickHouse-Database", "")
        default_format = headers.get("X-ClickHouse-Format", "")
        query_id = None
        for raw_name, raw_value in parse_qsl(query_string, keep_blank_values=True, encoding="latin-1"):
            name, value = _text_of(raw_name), _text_of(raw_value)
            if not name:
                continue
            if name == "query":
                request.url_query = raw_value.encode("latin-1")
            elif name == "database":
                database = database or value
            elif name == "default_format":
                default_format = default_format or value
            elif name == "query_id":
                query_id = value
            elif name == "session_id":
                request.session_id = value
            elif name == "session_timeout":
                request.session_timeout = _parse_session_timeout(value)
            elif name == "session_check":
                request.session_check = _truthy(value)
            elif name == "close_session":
                request.close_session = _truthy(value)
            elif name in ("compress", "decompress"):
                if _truthy(value):
                    raise _ClickHouseError.named(
                        "NOT_IMPLEMENTED",
                        f"The parameter {name}=1 (ClickHouse's own block compression) is not supported by "
                        "clickhouse-local; use the Content-Encoding and Accept-Encoding headers",
                    )
            elif name in _TRANSPORT_PARAMETERS:
                pass
            elif name.startswith("param_"):
                request.query_parameters[name[len("param_") :]] = value
            elif multipart and name.endswith(_EXTERNAL_TABLE_SUFFIXES):
                table, _, attribute = name.rpartition("_")
                request.external_tables.setdefault(table, {})[attribute] = value
            else:
                if not _SETTING_NAME.match(name):
                    raise _ClickHouseError.named("UNKNOWN_SETTING", f"Unknown setting '{name}'")
                request.settings.pop(name, None)  # the last value counts and is applied last
                request.settings[name] = value
        request.database = database
        request.default_format = default_format or "TabSeparated"
        request.query_id = query_id if query_id is not None else headers.get("X-ClickHouse-Query-Id", "")
        request.query_id = request.query_id or str(uuid.uuid4())
        if method == "GET":
            readonly = request.settings.get("readonly")
            if readonly is None:
                request.settings["readonly"] = "2"
            elif readonly.strip() in ("0", "false"):
                raise _ClickHouseError.named(
                    "READONLY", "Cannot modify 'readonly' setting in readonly mode: method GET implies readonly"
                )
        return request

    @property
    def read_only(self) -> bool:
        return self.settings.get("readonly", "0").strip() not in ("0", "false", "")

    @property
    def in_session(self) -> bool:
        # A connection set read-only stays so, which would spoil the session for its next requests.
        return bool(self.session_id) and not self.read_only


def _text_of(latin1: str) -> str:
    """A URL parameter decoded as UTF-8 (parse_qsl was asked for Latin-1 to keep the bytes)."""
    return latin1.encode("latin-1").decode("utf-8", "replace")


def _parse_session_timeout(value: str) -> int:
    try:
        timeout = int(value)
    except ValueError:
        raise _ClickHouseError.named("INVALID_SESSION_TIMEOUT", f"Invalid session timeout: '{value}'") from None
    if timeout < 0:
        raise _ClickHouseError.named("INVALID_SESSION_TIMEOUT", f"Invalid session timeout: '{value}'")
    if timeout > _MAX_SESSION_TIMEOUT:
        raise _ClickHouseError.named(
            "INVALID_SESSION_TIMEOUT",
            f"Session timeout '{value}' is larger than max_session_timeout: {_MAX_SESSION_TIMEOUT}",
        )
    return timeout


def _authenticate(required_password: str | None, headers: Any, query_string: str) -> None:
    """Checks the credentials of a request as ClickHouse does, for the one user `default`.

    Without a required password every request is let in.
    """
    if required_password is None:
        return
    parameters = dict(parse_qsl(query_string, keep_blank_values=True))
    header_user = headers.get("X-ClickHouse-User", "")
    header_key = headers.get("X-ClickHouse-Key", "")
    authorization = headers.get("Authorization")
    in_parameters = "user" in parameters or "password" in parameters
    if header_user or header_key:
        if authorization:
            raise _authentication_failed(
                "Invalid authentication: it is not allowed to use X-ClickHouse HTTP headers and Authorization HTTP "
                "header simultaneously"
            )
        if in_parameters:
            raise _authentication_failed(
                "Invalid authentication: it is not allowed to use X-ClickHouse HTTP headers and authentication via "
                "parameters simultaneously"
            )
        user, password = header_user or "default", header_key
    elif authorization:
        if in_parameters:
            raise _authentication_failed(
                "Invalid authentication: it is not allowed to use Authorization HTTP header and authentication via "
                "parameters simultaneously"
            )
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() != "basic":
            raise _authentication_failed(
                f"Invalid authentication: '{scheme}' HTTP Authorization scheme is not supported"
            )
        try:
            user, _, password = base64.b64decode(credentials.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise _authentication_failed("Invalid authentication: the Basic credentials cannot be decoded") from None
    else:
        user, password = parameters.get("user", "default"), parameters.get("password", "")
    if user != "default" or not hmac.compare_digest(password.encode(), required_password.encode()):
        raise _authentication_failed(
            f"{user}: Authentication failed: password is incorrect, or there is no user with such name"
        )


def _authentication_failed(message: str) -> _ClickHouseError:
    return _ClickHouseError.named("AUTHENTICATION_FAILED", message)


# --- The engine -------------------------------------------------------------------------------------------------


class _Engine:
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
        names = ", ".join(_quote_string(name) for name in _HTTP_LAYER_SETTINGS)
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
        listed = ", ".join(_quote_string(name) for name in missing)
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
                parts.append(f"{name} = {_quote_string(value)}" if changed else f"{name} = DEFAULT")
        return "SET " + ", ".join(parts) if parts else None


class _Sessions:
    """The open sessions by id; an idle one is closed after its timeout."""

    def __init__(self, engine: _Engine) -> None:
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
                    raise _ClickHouseError.named("SESSION_NOT_FOUND", f"Session {session_id} not found")
                session = _Session(session_id, self._engine.connect(), timeout)
                self._sessions[session_id] = session
            if not session.lock.acquire(blocking=False):
                raise _ClickHouseError.named(
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

    def ran(self, statement: _PlainStatement | None) -> None:
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
class _Outcome:
    """The answer of a query request, computed whole before it is sent."""

    body: bytes
    output_format: str | None  # set when the statement answered a result set
    summary: dict[str, str]
    http_settings: dict[str, str]


class _Service:
    """Runs query requests on the engine: connections, sessions, settings, statements."""

    def __init__(self, engine: _Engine, password: str | None) -> None:
        self.engine = engine
        self.password = password
        self.sessions = _Sessions(engine)
        self._running_query_ids: set[str] = set()
        self._running_lock = threading.Lock()

    def close(self) -> None:
        self.sessions.close_all()
        self.engine.close()

    def execute(self, request: _QueryRequest, statement: Iterator[bytes], form: list | None) -> _Outcome:
        """Runs the statement streamed by `statement` (the URL's part, then the body) for `request`."""
        with self._running(request.query_id), self._lease(request) as lease:
            with self._external_tables(lease.connection, request, form or []):
                plan, head = _split_statement(statement)
                if isinstance(plan, _ClickHouseError):
                    raise plan
                if plan == _EMPTY:
                    raise _ClickHouseError.named("SYNTAX_ERROR", "Empty query")
                if isinstance(plan, _InsertWithData):
                    return self._insert(lease, plan, head, statement)
                return self._plain(lease, request, head, statement)

    def _plain(self, lease: _Lease, request: _QueryRequest, text: bytearray, rest: Iterator[bytes]) -> _Outcome:
        for chunk in rest:
            text += chunk
            if len(text) > _STATEMENT_LIMIT:
                raise _ClickHouseError.named(
                    "QUERY_IS_TOO_LARGE", f"The statement is larger than {_STATEMENT_LIMIT} bytes"
                )
        statement = _inspect_statement(bytes(text).decode("latin-1"), self.engine.format_names)
        try:
            result = lease.connection.query(bytes(text), request.default_format, params=request.query_parameters)
        except Exception as exc:
            raise _engine_error(exc) from None
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
        return _Outcome(body, output_format, summary, lease.http_settings)

    def _insert(self, lease: _Lease, plan: _InsertWithData, head: bytearray, rest: Iterator[bytes]) -> _Outcome:
        try:
            inserter = lease.connection.send_insert(bytes(head[: plan.head_end]), plan.input_format)
        except Exception as exc:
            raise _engine_error(exc) from None
        try:
            if len(head) > plan.data_start:
                inserter.append(bytes(head[plan.data_start :]))
            for chunk in rest:
                inserter.append(chunk)
            result = inserter.finish()
        except (_ClickHouseError, ConnectionError, TimeoutError):
            self._cancel(inserter)
            raise
        except Exception as exc:
            self._cancel(inserter)
            raise _engine_error(exc) from None
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
        return _Outcome(b"", None, summary, lease.http_settings)

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
                raise _ClickHouseError.named(
                    "QUERY_WITH_SAME_ID_IS_ALREADY_RUNNING", f"Query with id = {query_id} is already running"
                )
            self._running_query_ids.add(query_id)
        try:
            yield
        finally:
            with self._running_lock:
                self._running_query_ids.discard(query_id)

    @contextmanager
    def _lease(self, request: _QueryRequest) -> Iterator[_Lease]:
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
    def _session_lease(self, request: _QueryRequest) -> Iterator[_Lease]:
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
                except _ClickHouseError:
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
                    except _ClickHouseError:
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
            raise _engine_error(exc) from None

    @staticmethod
    def _use_database(connection: Any, database: str) -> None:
        if database:
            _Service._run_setup(connection, f"USE {_quote_identifier(database)}")

    @staticmethod
    def _run_setup(connection: Any, statement: str | None, action: Callable[[], None] | None = None) -> None:
        try:
            if statement:
                connection.query(statement)
            if action:
                action()
        except Exception as exc:
            raise _engine_error(exc) from None

    @contextmanager
    def _external_tables(self, connection: Any, request: _QueryRequest, form: list) -> Iterator[None]:
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
                    raise _ClickHouseError.named(
                        "BAD_ARGUMENTS",
                        f"Neither structure nor types have been provided for external table {name}. "
                        f"Use fields {name}_structure or {name}_types to do so",
                    )
                table = _quote_identifier(name)
                self._run_setup(connection, f"CREATE TEMPORARY TABLE {table} ({structure}) ENGINE = Memory")
                created.append(table)
                if data:
                    try:
                        input_format = attributes.get("format", "TabSeparated")
                        inserter = connection.send_insert(f"INSERT INTO {table}", input_format)
                        inserter.append(data)
                        inserter.finish()
                    except Exception as exc:
                        raise _engine_error(exc) from None
            yield
        finally:
            for table in created:
                try:
                    connection.query(f"DROP TEMPORARY TABLE IF EXISTS {table}")
                except Exception:
                    _log.debug("dropping external table %s failed", table, exc_info=True)


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
        body = _RequestBody(self.rfile, self.headers)
        self._fail(_ClickHouseError.named("NOT_IMPLEMENTED", f"HTTP method {self.command} is not supported"), body, "")

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
            _RequestBody(self.rfile, self.headers).drain()
            return self._answer(200, b"Ok.\n", {"Content-Type": "text/html; charset=UTF-8"})
        if self.command == "POST" or query_string:
            return self._serve_query(query_string)
        _RequestBody(self.rfile, self.headers).drain()
        not_found = _NOT_FOUND_TEXT.format(path=path).encode()
        return self._answer(404, not_found, {"Content-Type": "text/plain; charset=UTF-8"})

    def _serve_query(self, query_string: str) -> int:
        service = self.server.service
        query_id = ""
        try:
            body = _RequestBody(self.rfile, self.headers)
        except _ClickHouseError as error:
            self.close_connection = True
            return self._fail(error, None, query_id)
        try:
            if self.command == "POST" and not body.has_length:
                self.close_connection = True
                raise _ClickHouseError.named(
                    "HTTP_LENGTH_REQUIRED",
                    "The Transfer-Encoding is not chunked and there is no Content-Length header for POST request",
                )
            _authenticate(service.password, self.headers, query_string)
            multipart = self.headers.get_content_type() == "multipart/form-data"
            request = _QueryRequest.parse(self.command, query_string, self.headers, multipart)
            query_id = request.query_id
            payload = _decoded(body.chunks(), self.headers.get("Content-Encoding", ""))
            form = None
            if multipart:
                form = _parse_multipart(self.headers["Content-Type"], b"".join(payload))
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
        except _ClickHouseError as error:
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
            return self._fail(_ClickHouseError.named("STD_EXCEPTION", f"{type(exc).__name__}: {exc}"), body, query_id)
        return self._send_outcome(outcome, query_id)

    @staticmethod
    def _statement(url_query: bytes, payload: Iterator[bytes]) -> Iterator[bytes]:
        # As ClickHouse does: the URL's part of the statement, a line break, then the body.
        if url_query:
            yield url_query + b"\n"
        yield from payload

    def _send_outcome(self, outcome: _Outcome, query_id: str) -> int:
        engine = self.server.service.engine
        headers = {
            "X-ClickHouse-Query-Id": query_id,
            "X-ClickHouse-Timezone": outcome.http_settings.get("session_timezone") or engine.timezone,
            "X-ClickHouse-Summary": json.dumps(outcome.summary, separators=(",", ":")),
        }
        body = outcome.body
        if outcome.output_format is not None:
            headers["X-ClickHouse-Format"] = outcome.output_format
            headers["Content-Type"] = _content_type(outcome.output_format)
        else:
            headers["Content-Type"] = "text/plain; charset=UTF-8"
        encoding = _response_encoding(self.headers.get("Accept-Encoding", ""))
        if body and encoding and _truthy(outcome.http_settings.get("enable_http_compression")):
            try:
                level = int(outcome.http_settings.get("http_zlib_compression_level") or 3)
            except ValueError:
                level = 3
            body = _compressed(body, encoding, level)
            headers["Content-Encoding"] = encoding
        return self._answer(200, body, headers)

    def _fail(self, error: _ClickHouseError, body: _RequestBody | None, query_id: str) -> int:
        if body is not None and not self.close_connection:
            try:
                # The client sends its whole body before it reads the answer, so the rest is read and dropped.
                body.drain()
            except (_ClickHouseError, ConnectionError, TimeoutError, OSError):
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

    def __init__(self, address: tuple[str, int], service: _Service | None) -> None:
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
                engine = _Engine(path)
            except Exception as exc:
                reason = " ".join(str(exc).split())
                raise SystemExit(f"clickhouse-local: cannot open the engine at {path}: {reason}") from None
            server.service = _Service(engine, password)
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
