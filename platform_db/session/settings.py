"""Connection settings read from the environment (no I/O at import time)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError


class ConfigurationError(ValueError):
    """A setting from the environment is missing or malformed."""


SYNC_DRIVER = "postgresql+psycopg"
ASYNC_DRIVER = "postgresql+asyncpg"


def parse_database_url(raw: str, *, name: str = "DATABASE_URL") -> URL:
    """Parse a PostgreSQL URL; errors never echo the password (nor any part of it)."""
    try:
        url = make_url(raw)
    except ArgumentError:
        raise ConfigurationError(f"{name} is not a database URL") from None
    except ValueError:
        # make_url's own message quotes the text it took for the port, which can be a
        # piece of the password when that holds an unescaped ':' or '@'.
        raise ConfigurationError(
            f"{name} has a port that is not a number (a password with ':', '@' or '/' "
            "must be percent-encoded: %3A, %40, %2F)"
        ) from None
    check_url_host(url, name=name)
    if url.get_backend_name() != "postgresql":
        raise ConfigurationError(
            f"{name} must be a postgresql:// URL, not {url.get_backend_name()}://"
        )
    if url.port is not None and not 1 <= url.port <= 65535:
        raise ConfigurationError(f"{name} has port {url.port}, outside 1-65535")
    if not url.database:
        raise ConfigurationError(f"{name} names no database: {redact(url)}")
    if not url.host and "host" not in url.query:
        raise ConfigurationError(f"{name} names no host: {redact(url)}")
    return url


def check_url_host(url: URL, *, name: str = "the database URL") -> None:
    """Refuse a URL whose host holds an '@': its password had an unescaped '@'.

    `postgresql://u:p@ss@host/db` parses as password `p` and host `ss@host`, so every
    message that names the host (the driver's "failed to resolve host", a redacted URL)
    would show the rest of the password. The message says nothing about the URL's text.
    """
    if url.host and "@" in url.host:
        raise ConfigurationError(
            f"{name} has an '@' after its user and password: a password containing '@' "
            "must be percent-encoded (write %40 for '@')"
        )


def with_driver(url: URL | str, driver: str) -> URL:
    """The same URL with the given driver (`postgresql+psycopg` or `postgresql+asyncpg`)."""
    parsed = make_url(url) if isinstance(url, str) else url
    return parsed.set(drivername=driver)


_SECRET_QUERY_KEYS = frozenset({"password", "passfile", "sslpassword"})


def redact(url: URL | str) -> str:
    """The URL as text with its password hidden, for logs, errors and CLI output.

    Safe for any input: text that does not parse, and a host holding an '@' (an
    unescaped '@' in the password), show no part of what came before the last '@'.
    """
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except (ArgumentError, ValueError):
        return "<a database URL that does not parse>"
    if parsed.host and "@" in parsed.host:
        parsed = parsed.set(username="***", password=None, host=parsed.host.rsplit("@", 1)[1])
    if _SECRET_QUERY_KEYS & set(parsed.query):
        parsed = parsed.update_query_dict(
            {key: "***" for key in _SECRET_QUERY_KEYS & set(parsed.query)}
        )
    return parsed.render_as_string(hide_password=True)


def database_url_from_env(name: str = "DATABASE_URL") -> URL | None:
    raw = os.environ.get(name, "").strip()
    return parse_database_url(raw, name=name) if raw else None


# --- Named pools -----------------------------------------------------------------------

POOL_NAMES = ("main", "analytics", "background")


@dataclass(frozen=True, slots=True)
class PoolSettings:
    """How one named pool connects. Sizes are connections; timeouts are milliseconds."""

    name: str
    url: URL
    min_size: int
    max_size: int
    acquire_timeout_ms: int
    statement_timeout_ms: int
    lock_timeout_ms: int
    idle_in_transaction_timeout_ms: int
    work_mem: str | None = None
    read_only: bool = False
    recycle_s: int = 1800
    ping_after_ms: int = 500
    connect_timeout_ms: int = 5_000

    @property
    def application_name(self) -> str:
        return f"platform-db:{self.name}"


@dataclass(frozen=True, slots=True)
class ReplicaSettings:
    """How the analytics pool uses POSTGRES_REPLICA_URL (milliseconds).

    `fallback` (POSTGRES_REPLICA_FALLBACK, on): the replica is checked every
    `check_interval_ms`, and analytics read from the primary while it cannot be reached
    or is not a replica, and, with `max_lag_ms` set, while it is further behind than
    that. Off: analytics always read from the replica, and fail while it is down.
    `read_your_writes_ms`: for this long after a session of the service commits a write,
    analytics sessions of the same tenant and user read from the primary (0: never).
    See platform_db.session.replica.
    """

    max_lag_ms: int | None = None
    check_interval_ms: int = 1_000
    read_your_writes_ms: int = 2_000
    fallback: bool = True


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything platform-db reads from the environment, validated."""

    database_url: URL
    replica_url: URL | None
    main: PoolSettings
    analytics: PoolSettings
    background: PoolSettings
    replica: ReplicaSettings = ReplicaSettings()

    def pool(self, name: str) -> PoolSettings:
        if name not in POOL_NAMES:
            raise ConfigurationError(f"unknown pool {name!r}; pools are {', '.join(POOL_NAMES)}")
        pool: PoolSettings = getattr(self, name)
        return pool

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read and validate the settings; every problem is reported at once, without secrets.

        Variables (defaults in brackets; timeouts in milliseconds):
          DATABASE_URL (required), POSTGRES_REPLICA_URL (optional, analytics pool)
          POSTGRES_REPLICA_FALLBACK [on], POSTGRES_REPLICA_MAX_LAG_MS [unset: no lag limit],
          POSTGRES_REPLICA_CHECK_INTERVAL_MS [1000], POSTGRES_REPLICA_READ_YOUR_WRITES_MS [2000]
          POSTGRES_POOL_MIN [5], POSTGRES_POOL_MAX [20], POSTGRES_POOL_ACQUIRE_TIMEOUT [5000],
          POSTGRES_POOL_PING_AFTER [500] (ping connections idle longer; 0: at every checkout)
          POSTGRES_CONNECT_TIMEOUT [5000] (give up opening a connection after this long)
          POSTGRES_STATEMENT_TIMEOUT [30000], POSTGRES_LOCK_TIMEOUT [10000],
          POSTGRES_IDLE_IN_TRANSACTION_TIMEOUT [60000], POSTGRES_WORK_MEM [unset]
          POSTGRES_ANALYTICS_POOL_MIN [2], POSTGRES_ANALYTICS_POOL_MAX [10],
          POSTGRES_ANALYTICS_STATEMENT_TIMEOUT [300000], POSTGRES_ANALYTICS_WORK_MEM [64MB], ...
          POSTGRES_BACKGROUND_POOL_MIN [1], POSTGRES_BACKGROUND_POOL_MAX [5],
          POSTGRES_BACKGROUND_STATEMENT_TIMEOUT [600000], ...
        Every POSTGRES_<X> of the main pool exists as POSTGRES_ANALYTICS_<X> and
        POSTGRES_BACKGROUND_<X>.
        """
        source = os.environ if env is None else env
        reader = _Reader(source)
        url = reader.url("DATABASE_URL", required=True)
        replica = reader.url("POSTGRES_REPLICA_URL", required=False)
        pools = {
            name: reader.pool(name, prefix, url if name != "analytics" else (replica or url))
            for name, prefix in (
                ("main", "POSTGRES_"),
                ("analytics", "POSTGRES_ANALYTICS_"),
                ("background", "POSTGRES_BACKGROUND_"),
            )
        }
        replica_settings = reader.replica()
        if reader.errors:
            raise ConfigurationError("invalid settings:\n  " + "\n  ".join(reader.errors))
        assert url is not None
        return cls(
            url,
            replica,
            pools["main"],
            pools["analytics"],
            pools["background"],
            replica_settings,
        )


# What a pool gets when its POSTGRES_* variables are unset: a PoolSettings built by
# keyword, so no two numbers can trade places. The URL stands in until the real one is read.
_NO_URL = make_url("postgresql://invalid/invalid")
_POOL_DEFAULTS: dict[str, PoolSettings] = {
    "main": PoolSettings(
        name="main",
        url=_NO_URL,
        min_size=5,
        max_size=20,
        acquire_timeout_ms=5_000,
        statement_timeout_ms=30_000,
        lock_timeout_ms=10_000,
        idle_in_transaction_timeout_ms=60_000,
    ),
    "analytics": PoolSettings(
        name="analytics",
        url=_NO_URL,
        min_size=2,
        max_size=10,
        acquire_timeout_ms=10_000,
        statement_timeout_ms=300_000,
        lock_timeout_ms=10_000,
        idle_in_transaction_timeout_ms=300_000,
        work_mem="64MB",
        read_only=True,
    ),
    "background": PoolSettings(
        name="background",
        url=_NO_URL,
        min_size=1,
        max_size=5,
        acquire_timeout_ms=30_000,
        statement_timeout_ms=600_000,
        lock_timeout_ms=30_000,
        idle_in_transaction_timeout_ms=600_000,
    ),
}
_MEMORY = re.compile(r"^\d+\s*(kB|MB|GB)$")
MAX_POOL_SIZE = 1000


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.errors: list[str] = []

    def raw(self, name: str) -> str | None:
        value = self.env.get(name, "").strip()
        return value or None

    def url(self, name: str, *, required: bool) -> URL | None:
        raw = self.raw(name)
        if raw is None:
            if required:
                self.errors.append(f"{name} is not set")
            return None
        try:
            return parse_database_url(raw, name=name)
        except ConfigurationError as exc:
            self.errors.append(str(exc))
            return None

    def integer(self, name: str, default: int, *, minimum: int, maximum: int) -> int:
        raw = self.raw(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            self.errors.append(f"{name} must be a whole number, got {raw!r}")
            return default
        if not minimum <= value <= maximum:
            self.errors.append(f"{name} must be between {minimum} and {maximum}, got {value}")
        return value

    def replica(self) -> ReplicaSettings:
        default, day = ReplicaSettings(), 86_400_000
        max_lag = None
        if self.raw("POSTGRES_REPLICA_MAX_LAG_MS") is not None:
            max_lag = self.integer("POSTGRES_REPLICA_MAX_LAG_MS", 0, minimum=0, maximum=day)
        return ReplicaSettings(
            max_lag_ms=max_lag,
            check_interval_ms=self.integer(
                "POSTGRES_REPLICA_CHECK_INTERVAL_MS",
                default.check_interval_ms,
                minimum=10,
                maximum=day,
            ),
            read_your_writes_ms=self.integer(
                "POSTGRES_REPLICA_READ_YOUR_WRITES_MS",
                default.read_your_writes_ms,
                minimum=0,
                maximum=day,
            ),
            fallback=self.switch("POSTGRES_REPLICA_FALLBACK", default.fallback),
        )

    def switch(self, name: str, default: bool) -> bool:
        raw = self.raw(name)
        if raw is None:
            return default
        value = raw.lower()
        if value in ("on", "true", "yes", "1"):
            return True
        if value in ("off", "false", "no", "0"):
            return False
        self.errors.append(f"{name} must be on or off, got {raw!r}")
        return default

    def pool(self, name: str, prefix: str, url: URL | None) -> PoolSettings:
        default = _POOL_DEFAULTS[name]
        day = 86_400_000
        min_size = self.integer(
            f"{prefix}POOL_MIN", default.min_size, minimum=0, maximum=MAX_POOL_SIZE
        )
        max_size = self.integer(
            f"{prefix}POOL_MAX", default.max_size, minimum=1, maximum=MAX_POOL_SIZE
        )
        if max_size < min_size:
            self.errors.append(
                f"{prefix}POOL_MAX ({max_size}) is below {prefix}POOL_MIN ({min_size})"
            )
        mem = self.raw(f"{prefix}WORK_MEM") or default.work_mem
        if mem is not None and not _MEMORY.match(mem):
            self.errors.append(f"{prefix}WORK_MEM must look like 64MB or 512kB, got {mem!r}")
        return PoolSettings(
            name=name,
            url=url if url is not None else default.url,
            min_size=min_size,
            max_size=max_size,
            acquire_timeout_ms=self.integer(
                f"{prefix}POOL_ACQUIRE_TIMEOUT", default.acquire_timeout_ms, minimum=1, maximum=day
            ),
            statement_timeout_ms=self.integer(
                f"{prefix}STATEMENT_TIMEOUT", default.statement_timeout_ms, minimum=0, maximum=day
            ),
            lock_timeout_ms=self.integer(
                f"{prefix}LOCK_TIMEOUT", default.lock_timeout_ms, minimum=0, maximum=day
            ),
            idle_in_transaction_timeout_ms=self.integer(
                f"{prefix}IDLE_IN_TRANSACTION_TIMEOUT",
                default.idle_in_transaction_timeout_ms,
                minimum=0,
                maximum=day,
            ),
            work_mem=mem.replace(" ", "") if mem else None,
            read_only=default.read_only,
            ping_after_ms=self.integer(
                f"{prefix}POOL_PING_AFTER", default.ping_after_ms, minimum=0, maximum=day
            ),
            # Never 0: libpq and asyncpg would then wait for as long as the OS lets them.
            connect_timeout_ms=self.integer(
                f"{prefix}CONNECT_TIMEOUT", default.connect_timeout_ms, minimum=1, maximum=day
            ),
        )
