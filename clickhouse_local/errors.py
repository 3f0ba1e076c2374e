"""Errors as a ClickHouse server answers them: code, name, HTTP status and the `Code: N. DB::Exception:` text."""

from __future__ import annotations

import re

# Codes of the errors this package raises itself rather than the engine.
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


class ClickHouseError(Exception):
    """An error answered the way ClickHouse answers it: code, name and `Code: N. DB::Exception:` text."""

    def __init__(self, code: int, name: str, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.name = name
        self.text = text

    @classmethod
    def named(cls, name: str, message: str) -> ClickHouseError:
        """An error raised by this package, from its ClickHouse name and message."""
        code = _ERROR_CODES[name]
        return cls(code, name, f"Code: {code}. DB::Exception: {message}. ({name})")

    @property
    def http_status(self) -> int:
        """ClickHouse's HTTP status for this error: 500 unless the error's name has another."""
        return _HTTP_STATUS_BY_ERROR.get(self.name, 500)

    def body(self, version: str) -> bytes:
        """The answer's body, as a ClickHouse server of `version` writes it."""
        return f"{self.text} (version {version})\n".encode("utf-8", "replace")


_ENGINE_ERROR_START = re.compile(r"Code: (\d+)\. DB::Exception: ")
_ENGINE_ERROR_NESTED = re.compile(
    r"Code: (\d+)\. DB::Exception: (Code: \1\. DB::Exception: .*?)(?: \(version [^)]*\))?\. \([A-Z0-9_]+\)\Z", re.S
)
_VERSION_TRAILER = re.compile(r"\s*\(version [^)]*\)\s*\Z")
_ERROR_NAME_AT_END = re.compile(r"\(([A-Z][A-Z0-9_]*)\)\Z")


def engine_error(exc: BaseException) -> ClickHouseError:
    """The ClickHouseError in a chDB exception, whose text holds `Code: N. DB::Exception: ...`."""
    raw = str(exc)
    start = _ENGINE_ERROR_START.search(raw)
    if start is None:
        return ClickHouseError.named("STD_EXCEPTION", raw.strip() or type(exc).__name__)
    text = raw[start.start():].strip()
    nested = _ENGINE_ERROR_NESTED.match(text)
    if nested:
        text = nested.group(2)
    text = _VERSION_TRAILER.sub("", text)
    name = _ERROR_NAME_AT_END.search(text)
    return ClickHouseError(int(start.group(1)), name.group(1) if name else "UNKNOWN_EXCEPTION", text)
