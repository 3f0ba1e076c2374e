"""The service's configuration: the environment variables the README lists, read once and validated."""

from __future__ import annotations

import os
from functools import lru_cache
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from worker.errors import WorkerError


class ConfigurationError(WorkerError):
    """A setting has a bad value; the message is one line naming the variable."""


class Settings(BaseModel):
    """Validated settings. Field names are the lower-case environment variable names."""

    model_config = ConfigDict(frozen=True)

    database_url: str = "postgresql://postgres@127.0.0.1:5432/rules"
    redis_url: str = "redis://127.0.0.1:6379/0"
    clickhouse_url: str = "http://default@127.0.0.1:8123/rules"
    smtp_url: str | None = None
    smtp_from: str | None = None
    webhook_secret: str | None = None
    notify_allowed_hosts: frozenset[str] = Field(default_factory=frozenset)
    run_time_limit_seconds: int = Field(default=120, ge=5, le=3600)
    worker_shutdown_seconds: float = Field(default=5, ge=0, le=600)
    delivery_max_attempts: int = Field(default=5, ge=1, le=20)
    delivery_backoff_seconds: float = Field(default=30, gt=0, le=300)
    wait_check_seconds: int = Field(default=60, ge=1, le=3600)

    @property
    def run_lease_seconds(self) -> int:
        """How long a run's claim holds: past the hard time limit (soft limit + 30 s), so a live run never loses it."""
        return self.run_time_limit_seconds + 60

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError("must be a postgresql:// URL")
        if not parts.path.strip("/"):
            raise ValueError("must name a database, as in postgresql://user@host:5432/rules")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must be a redis:// or rediss:// URL")
        return value

    @field_validator("clickhouse_url")
    @classmethod
    def _clickhouse_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme in ("http", "https"):
            if not parts.hostname:
                raise ValueError("must name a host, as in http://default@127.0.0.1:8123/rules")
            try:
                parts.port
            except ValueError:
                raise ValueError("has a port that is not a number") from None
            if not parts.path.strip("/"):
                raise ValueError("must name a database, as in http://default@127.0.0.1:8123/rules")
        elif parts.scheme != "chdb":
            raise ValueError("must be an http(s):// or chdb:// URL")
        return value

    @field_validator("smtp_url")
    @classmethod
    def _smtp_url(cls, value: str | None) -> str | None:
        if value and urlsplit(value).scheme not in ("smtp", "smtps"):
            raise ValueError("must be an smtp:// or smtps:// URL")
        return value or None

    @field_validator("notify_allowed_hosts", mode="before")
    @classmethod
    def _host_list(cls, value: object) -> object:
        if isinstance(value, str):
            return frozenset(h.strip().lower() for h in value.split(",") if h.strip())
        return value


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    """Reads and validates the settings from `environ` (default: the process environment).

    Raises ConfigurationError with one line naming the first bad variable.
    """
    environ = os.environ if environ is None else environ
    values = {name: environ[name.upper()] for name in Settings.model_fields if name.upper() in environ}
    try:
        return Settings(**values)
    except ValidationError as error:
        first = error.errors()[0]
        variable = str(first["loc"][0]).upper() if first["loc"] else "configuration"
        reason = first["msg"].removeprefix("Value error, ")
        raise ConfigurationError(f"{variable}: {reason}") from None


@lru_cache(maxsize=1)
def settings() -> Settings:
    """The process's settings, read once on first use."""
    return load_settings()
