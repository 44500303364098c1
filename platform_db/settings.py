"""Connection settings read from the environment (no I/O at import time)."""

from __future__ import annotations

import os

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError


class ConfigurationError(ValueError):
    """A setting from the environment is missing or malformed."""


SYNC_DRIVER = "postgresql+psycopg"
ASYNC_DRIVER = "postgresql+asyncpg"


def parse_database_url(raw: str, *, name: str = "DATABASE_URL") -> URL:
    """Parse a PostgreSQL URL; errors never echo the password."""
    try:
        url = make_url(raw)
    except ArgumentError:
        raise ConfigurationError(f"{name} is not a database URL") from None
    if url.get_backend_name() != "postgresql":
        raise ConfigurationError(
            f"{name} must be a postgresql:// URL, not {url.get_backend_name()}://"
        )
    if not url.database:
        raise ConfigurationError(f"{name} names no database: {redact(url)}")
    if not url.host and "host" not in url.query:
        raise ConfigurationError(f"{name} names no host: {redact(url)}")
    return url


def with_driver(url: URL | str, driver: str) -> URL:
    """The same URL with the given driver (`postgresql+psycopg` or `postgresql+asyncpg`)."""
    parsed = make_url(url) if isinstance(url, str) else url
    return parsed.set(drivername=driver)


def redact(url: URL | str) -> str:
    """The URL as text with its password hidden, for logs, errors and CLI output."""
    parsed = make_url(url) if isinstance(url, str) else url
    return parsed.render_as_string(hide_password=True)


def database_url_from_env(name: str = "DATABASE_URL") -> URL | None:
    raw = os.environ.get(name, "").strip()
    return parse_database_url(raw, name=name) if raw else None
