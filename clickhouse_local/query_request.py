"""What a query request asks for (settings, parameters, database, format, session), read from its URL and headers as
ClickHouse reads them, and whether its credentials let it in."""

from __future__ import annotations

import base64
import binascii
import hmac
import re
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from clickhouse_local.errors import ClickHouseError

_DEFAULT_SESSION_TIMEOUT = 60
_MAX_SESSION_TIMEOUT = 3600
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
_SETTING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def truthy(value: str | None) -> bool:
    """Whether a parameter or setting's text means on, as ClickHouse reads a boolean (1, true, yes, on)."""
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


@dataclass
class QueryRequest:
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
    def parse(cls, method: str, query_string: str, headers: Any, multipart: bool) -> QueryRequest:
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
                request.session_check = truthy(value)
            elif name == "close_session":
                request.close_session = truthy(value)
            elif name in ("compress", "decompress"):
                if truthy(value):
                    raise ClickHouseError.named(
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
                    raise ClickHouseError.named("UNKNOWN_SETTING", f"Unknown setting '{name}'")
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
                raise ClickHouseError.named(
                    "READONLY", "Cannot modify 'readonly' setting in readonly mode: method GET implies readonly"
                )
        return request

    @property
    def read_only(self) -> bool:
        """Whether the request's `readonly` setting forbids writes (a GET always does)."""
        return self.settings.get("readonly", "0").strip() not in ("0", "false", "")

    @property
    def in_session(self) -> bool:
        """Whether the request runs on its session's connection rather than on one of its own."""
        # A connection set read-only stays so, which would spoil the session for its next requests.
        return bool(self.session_id) and not self.read_only


def _text_of(latin1: str) -> str:
    """A URL parameter decoded as UTF-8 (parse_qsl was asked for Latin-1 to keep the bytes)."""
    return latin1.encode("latin-1").decode("utf-8", "replace")


def _parse_session_timeout(value: str) -> int:
    try:
        timeout = int(value)
    except ValueError:
        raise ClickHouseError.named("INVALID_SESSION_TIMEOUT", f"Invalid session timeout: '{value}'") from None
    if timeout < 0:
        raise ClickHouseError.named("INVALID_SESSION_TIMEOUT", f"Invalid session timeout: '{value}'")
    if timeout > _MAX_SESSION_TIMEOUT:
        raise ClickHouseError.named(
            "INVALID_SESSION_TIMEOUT",
            f"Session timeout '{value}' is larger than max_session_timeout: {_MAX_SESSION_TIMEOUT}",
        )
    return timeout


def authenticate(required_password: str | None, headers: Any, query_string: str) -> None:
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


def _authentication_failed(message: str) -> ClickHouseError:
    return ClickHouseError.named("AUTHENTICATION_FAILED", message)
