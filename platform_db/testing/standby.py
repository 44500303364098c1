"""Throw-away PostgreSQL clusters on this machine: a streaming hot standby of a server,
and a private primary. For the tests (tests/test_replica*.py), a service's tests, and
trying the analytics pool on a replica by hand. No pytest here.

    with streaming_standby(server_url) as standby:   # pg_basebackup -R, hot_standby = on
        url = standby.url("platform")                 # postgresql://postgres@127.0.0.1:5433/platform
        standby.wait_for_replay()                     # until it has replayed all the primary wrote
        standby.stop(); standby.start()               # faults
    # stopped, its replication slot dropped, its directory removed

The standby is a second cluster made with `pg_basebackup -R -X stream -C -S <slot>` from
the server, listening on 127.0.0.1 on the first free port of PLATFORM_DB_STANDBY_PORTS
(default 5433-5439), with `hot_standby = on`. It needs, or `StandbyUnavailable` says what
is missing:

- PostgreSQL server binaries of the server's major version on this machine (found in
  PLATFORM_DB_PG_BINDIR, the server's own BINDIR, /usr/lib/postgresql/<major>/bin, the
  `pgserver` wheel, or `pg_config --bindir` on PATH);
- a replication connection for the URL's user (a superuser) allowed by the server's
  pg_hba.conf, e.g. `host replication all 127.0.0.1/32 trust` (.ci/run adds it);
- as root: an unprivileged user to run the cluster as (the owner of the server's data
  directory when it is on this machine, else `postgres`).

The standby's pg_hba.conf trusts the superuser and the replication user on loopback and
asks every other login for its password (scram-sha-256), as a real replica would. A
standby that outlives its process (a killed test run) is found by the directory prefix
`platform-db-standby-` under the temporary directory (.ci/run stops such leftovers), and
its slot (`platform_db_standby_<pid>_<hex>`) is dropped by the next standby made by a
process of this machine once the pid is gone.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from platform_db.session.settings import SYNC_DRIVER, with_driver

DIR_PREFIX = "platform-db-standby-"
SLOT_PREFIX = "platform_db_standby_"
DEFAULT_PORTS = "5433-5439"
# Settings a hot standby must have at least as high as its primary's.
_AT_LEAST_PRIMARY = (
    "max_connections",
    "max_worker_processes",
    "max_wal_senders",
    "max_prepared_transactions",
    "max_locks_per_transaction",
)


class StandbyUnavailable(RuntimeError):
    """A standby (or private cluster) cannot be made here; the message says why."""


# --- binaries ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Binaries:
    """A PostgreSQL installation's bin directory and its major version."""

    bindir: Path
    major: int

    def __call__(self, tool: str) -> str:
        return str(self.bindir / tool)


def _major_of(bindir: Path) -> int | None:
    postgres = bindir / "postgres"
    if not os.access(postgres, os.X_OK):
        return None
    try:
        out = subprocess.run(  # noqa: S603 - a fixed argv
            [str(postgres), "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except OSError:
        return None
    found = re.search(r"\(PostgreSQL\) (\d+)", out)
    return int(found.group(1)) if found else None


def _pgserver_bindir() -> str | None:
    """The `pgserver` wheel's bin directory (the embedded server of `make test`), if any;
    found without importing it."""
    spec = importlib.util.find_spec("pgserver")
    if spec is None or spec.origin is None:
        return None
    return str(Path(spec.origin).parent / "pginstall" / "bin")


def _pg_config_bindir() -> str | None:
    pg_config = shutil.which("pg_config")
    if not pg_config:
        return None
    out = subprocess.run(  # noqa: S603 - a fixed argv
        [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=False
    )
    return out.stdout.strip() or None


def find_binaries(major: int, *, hints: tuple[str | None, ...] = ()) -> Binaries | None:
    """The first bin directory holding `postgres` of this major version: PLATFORM_DB_PG_BINDIR,
    `hints` (the server's BINDIR), /usr/lib/postgresql/<major>/bin, the pgserver wheel's,
    `pg_config --bindir`."""
    candidates: list[Callable[[], str | None]] = [
        lambda: os.environ.get("PLATFORM_DB_PG_BINDIR"),
        *[(lambda h=h: h) for h in hints],
        lambda: f"/usr/lib/postgresql/{major}/bin",
        _pgserver_bindir,
        _pg_config_bindir,
    ]
    for candidate in candidates:
        found = candidate()
        if found and _major_of(Path(found)) == major:
            return Binaries(Path(found), major)
    return None


# --- connections -----------------------------------------------------------------------


def _admin(url: URL) -> Engine:
    return create_engine(
        with_driver(url, SYNC_DRIVER),
        poolclass=NullPool,
        isolation_level="AUTOCOMMIT",
        connect_args={"connect_timeout": 5, "application_name": "platform-db:standby-admin"},
    )


def _scalar(url: URL, sql: str, **params: Any) -> Any:
    engine = _admin(url)
    try:
        with engine.connect() as conn:
            return conn.execute(text(sql), params).scalar()
    finally:
        engine.dispose()


def _address(url: URL) -> tuple[str, int]:
    query_host = url.query.get("host")
    host = query_host[0] if isinstance(query_host, tuple) else query_host
    return str(host or url.host or "127.0.0.1"), int(url.port or 5432)


def _ports() -> list[int]:
    raw = os.environ.get("PLATFORM_DB_STANDBY_PORTS", DEFAULT_PORTS).strip()
    low, _, high = raw.partition("-")
    try:
        first, last = int(low), int(high or low)
    except ValueError:
        raise StandbyUnavailable(
            f"PLATFORM_DB_STANDBY_PORTS must look like 5433-5439, not {raw!r}"
        ) from None
    return list(range(first, last + 1))


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As the postmaster binds: a port whose last connections are in TIME_WAIT is free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _run_as(server_data_dir: str | None) -> pwd.struct_passwd | None:
    """Whom PostgreSQL runs as: this user, or (as root) an unprivileged one."""
    if os.geteuid() != 0:
        return None
    if server_data_dir and os.path.isdir(server_data_dir):
        owner = os.stat(server_data_dir).st_uid
        if owner != 0:
            return pwd.getpwuid(owner)
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise StandbyUnavailable(
            "running as root, and there is no `postgres` user to run PostgreSQL as"
        ) from None


# --- a cluster of this process ---------------------------------------------------------


@dataclass(slots=True)
class LocalCluster:
    """A cluster this process made: its directory, port and the OS user it runs as."""

    base: Path  # holds data/, server.log and the unix socket
    port: int
    binaries: Binaries
    superuser: str
    owner: pwd.struct_passwd | None

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    @property
    def log(self) -> Path:
        return self.base / "server.log"

    def url(
        self,
        database: str = "postgres",
        *,
        username: str | None = None,
        password: str | None = None,
    ) -> URL:
        return URL.create(
            SYNC_DRIVER,
            username=username or self.superuser,
            password=password,
            host="127.0.0.1",
            port=self.port,
            database=database,
        )

    def execute(
        self, argv: list[str], *, timeout: float = 120, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL tool as the cluster's owner (they refuse to run as root)."""
        kwargs: dict[str, Any] = {}
        if self.owner is not None:
            kwargs = {"user": self.owner.pw_uid, "group": self.owner.pw_gid, "extra_groups": []}
        return subprocess.run(  # noqa: S603 - argv built here
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=self.base,
            env={**os.environ, "PGAPPNAME": "platform-db:standby-tool", **(env or {})},
            **kwargs,
        )

    def run(
        self,
        argv: list[str],
        *,
        timeout: float = 120,
        check: bool = True,
        env: dict[str, str] | None = None,
    ) -> str:
        """`execute`, raising StandbyUnavailable with the tool's message when it fails."""
        proc = self.execute(argv, timeout=timeout, env=env)
        if check and proc.returncode != 0:
            raise StandbyUnavailable(
                f"{Path(argv[0]).name} failed (exit {proc.returncode}): "
                f"{(proc.stderr or proc.stdout).strip()[-2000:]}"
            )
        return proc.stdout

    def pg_ctl(self, *args: str, timeout: float = 120, check: bool = True) -> str:
        return self.run(
            [self.binaries("pg_ctl"), "-D", str(self.data_dir), *args],
            timeout=timeout,
            check=check,
        )

    def running(self) -> bool:
        if not (self.data_dir / "postmaster.pid").exists():
            return False
        status = self.execute([self.binaries("pg_ctl"), "-D", str(self.data_dir), "status"])
        return status.returncode == 0

    def start(self, *, timeout_s: int = 90) -> None:
        try:
            self.pg_ctl(
                "-l", str(self.log), "-w", "-t", str(timeout_s), "start", timeout=timeout_s + 30
            )
        except StandbyUnavailable as exc:
            raise StandbyUnavailable(f"{exc}\n--- {self.log} ---\n{self.log_tail()}") from None

    def stop(self, mode: str = "fast") -> None:
        """Stop it (`fast`: a clean shutdown; `immediate`: as if the machine lost power)."""
        if self.running():
            self.pg_ctl("-m", mode, "-w", "-t", "60", "stop", timeout=90)

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    def scalar(self, sql: str, database: str = "postgres", **params: Any) -> Any:
        """One value, as the superuser."""
        return _scalar(self.url(database), sql, **params)

    def configure(self, **settings: str) -> None:
        """ALTER SYSTEM SET each setting on the standby, then reload."""
        engine = _admin(self.url())
        try:
            with engine.connect() as conn:
                for name, value in settings.items():
                    if not re.fullmatch(r"[a-z_]+", name):
                        raise ValueError(f"not a setting name: {name!r}")
                    conn.execute(
                        text(f"ALTER SYSTEM SET {name} = {_literal(value)}")  # name checked above
                    )
                conn.execute(text("SELECT pg_reload_conf()"))
        finally:
            engine.dispose()

    def remove(self) -> None:
        with contextlib.suppress(StandbyUnavailable, subprocess.TimeoutExpired):
            self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)


def _new_base(owner: pwd.struct_passwd | None) -> Path:
    parent = os.environ.get("PLATFORM_DB_STANDBY_DIR") or tempfile.gettempdir()
    if owner is not None and not os.environ.get("PLATFORM_DB_STANDBY_DIR"):
        parent = "/tmp"  # noqa: S108 - root's TMPDIR may be closed to the unprivileged owner
    base = Path(tempfile.mkdtemp(prefix=DIR_PREFIX, dir=parent))
    if owner is not None:
        os.chown(base, owner.pw_uid, owner.pw_gid)
    base.chmod(0o700)
    return base


def _write(cluster: LocalCluster, name: str, content: str, *, append: bool = False) -> None:
    path = cluster.data_dir / name
    with path.open("a" if append else "w") as out:
        out.write(content)
    if cluster.owner is not None:
        os.chown(path, cluster.owner.pw_uid, cluster.owner.pw_gid)
    path.chmod(0o600)


def _conf(cluster: LocalCluster, extra: dict[str, str]) -> str:
    values = {
        "listen_addresses": "'127.0.0.1'",
        "port": str(cluster.port),
        "unix_socket_directories": f"'{cluster.base}'",
        "shared_buffers": "32MB",
        "shared_preload_libraries": "''",
        "logging_collector": "off",
        "log_line_prefix": "'%m [%p] %q%a '",
        **extra,
    }
    lines = "".join(f"{k} = {v}\n" for k, v in values.items())
    return f"# written by platform_db.testing.standby\n{lines}"


def _hba(superuser: str) -> str:
    return (
        "# written by platform_db.testing.standby\n"
        "local   all          all                       trust\n"
        f"host    all          {superuser}     127.0.0.1/32    trust\n"
        "host    all          all           127.0.0.1/32    scram-sha-256\n"
        "local   replication  all                       trust\n"
        "host    replication  all           127.0.0.1/32    trust\n"
    )


def _start_on_a_free_port(cluster: LocalCluster, conf: dict[str, str]) -> None:
    """Start on the first free port of PLATFORM_DB_STANDBY_PORTS (another may take one
    between the check and the start: then the next)."""
    tried = []
    for port in _ports():
        if not _port_free(port):
            tried.append(f"{port} in use")
            continue
        cluster.port = port
        _write(cluster, "postgresql.conf", _conf(cluster, conf))
        try:
            cluster.start()
        except StandbyUnavailable as exc:
            if "could not bind" in str(exc) or "already in use" in str(exc):
                tried.append(f"{port} taken while starting")
                continue
            raise
        return
    raise StandbyUnavailable(
        f"no free port for a local cluster in PLATFORM_DB_STANDBY_PORTS ({', '.join(tried)})"
    )


# --- the standby -----------------------------------------------------------------------


@dataclass(slots=True)
class Standby(LocalCluster):
    """A streaming hot standby of `primary` (a superuser URL of the server)."""

    primary: URL = field(default_factory=lambda: URL.create(SYNC_DRIVER))
    slot: str = ""

    def wait_for_replay(self, *, timeout_s: float = 30.0) -> None:
        """Until the standby has replayed everything the primary has written so far."""
        target = _scalar(self.primary, "SELECT pg_current_wal_lsn()::text")
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(DBAPIError):
                if self.scalar(
                    "SELECT pg_last_wal_replay_lsn() >= CAST(:lsn AS pg_lsn)", lsn=target
                ):
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the standby on port {self.port} did not replay up to {target} "
                    f"within {timeout_s:g} s\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def wait_until_streaming(self, *, timeout_s: float = 60.0) -> None:
        """Until its WAL receiver streams from the primary (after a start or restart)."""
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(DBAPIError):
                if self.scalar("SELECT status FROM pg_stat_wal_receiver") == "streaming":
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the standby on port {self.port} is not streaming after {timeout_s:g} s\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.05)

    def pause_replay(self) -> None:
        """Stop applying WAL (it is still received): the standby falls behind on purpose."""
        self.scalar("SELECT pg_wal_replay_pause()")

    def resume_replay(self) -> None:
        self.scalar("SELECT pg_wal_replay_resume()")


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def drop_stale_slots(primary: URL) -> list[str]:
    """Drop inactive slots of standbys whose making process is gone (a killed test run)."""
    engine = _admin(primary)
    dropped = []
    try:
        with engine.connect() as conn:
            for (name,) in conn.execute(
                text(
                    "SELECT slot_name FROM pg_replication_slots "
                    "WHERE NOT active AND slot_name LIKE :p"
                ),
                {"p": SLOT_PREFIX + "%"},
            ):
                found = re.fullmatch(re.escape(SLOT_PREFIX) + r"(\d+)_[0-9a-f]+", name)
                if found and not _pid_alive(int(found.group(1))):
                    conn.execute(text("SELECT pg_drop_replication_slot(:s)"), {"s": name})
                    dropped.append(name)
    finally:
        engine.dispose()
    return dropped


def _drop_slot(primary: URL, slot: str) -> None:
    engine = _admin(primary)
    try:
        with engine.connect() as conn:
            deadline = time.monotonic() + 30
            while True:
                row = conn.execute(
                    text("SELECT active FROM pg_replication_slots WHERE slot_name = :s"),
                    {"s": slot},
                ).first()
                if row is None:
                    return
                if not row.active:
                    conn.execute(text("SELECT pg_drop_replication_slot(:s)"), {"s": slot})
                    return
                if time.monotonic() > deadline:  # its walsender is gone soon after the stop
                    return
                time.sleep(0.1)
    finally:
        engine.dispose()


def describe_server(url: URL) -> dict[str, Any]:
    """What making a standby of the server needs to know (as its superuser)."""
    engine = _admin(url)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                text(
                    "SELECT current_setting('server_version_num')::int / 10000 AS major, "
                    "(SELECT rolsuper FROM pg_roles WHERE rolname = current_user) AS superuser, "
                    "current_user AS login, current_setting('wal_level') AS wal_level, "
                    "current_setting('max_wal_senders')::int AS max_wal_senders, "
                    "current_setting('data_directory') AS data_directory, "
                    "(SELECT setting FROM pg_config WHERE name = 'BINDIR') AS bindir"
                )
            ).one()
            limits: dict[str, str] = {
                str(name): str(value)
                for name, value in conn.execute(
                    text("SELECT name, setting FROM pg_settings WHERE name = ANY(:n)"),
                    {"n": list(_AT_LEAST_PRIMARY)},
                )
            }
            replication_rules = conn.execute(
                text(
                    "SELECT count(*) FROM pg_hba_file_rules "
                    "WHERE 'replication' = ANY(database) AND error IS NULL"
                )
            ).scalar()
    finally:
        engine.dispose()
    return {**row._asdict(), "limits": limits, "replication_rules": replication_rules}


@contextlib.contextmanager
def streaming_standby(primary: URL, *, slot: bool = True) -> Iterator[Standby]:
    """A hot standby of the server `primary` (a superuser URL) for the block; stopped,
    its slot dropped and its directory removed afterwards. Raises StandbyUnavailable,
    saying why, where one cannot be made."""
    try:
        server = describe_server(primary)
    except DBAPIError as exc:
        raise StandbyUnavailable(f"cannot examine the server: {exc.orig}") from None
    if not server["superuser"]:
        raise StandbyUnavailable(f"{server['login']} is not a superuser of the server")
    if server["wal_level"] not in ("replica", "logical") or server["max_wal_senders"] < 2:
        raise StandbyUnavailable(
            f"the server has wal_level = {server['wal_level']} and max_wal_senders = "
            f"{server['max_wal_senders']}: a standby needs replica and at least 2"
        )
    if not server["replication_rules"]:
        raise StandbyUnavailable(
            "the server's pg_hba.conf allows no replication connection: add "
            "`host replication all 127.0.0.1/32 trust` (or scram-sha-256) and reload"
        )
    binaries = find_binaries(int(server["major"]), hints=(server["bindir"],))
    if binaries is None:
        raise StandbyUnavailable(
            f"no PostgreSQL {server['major']} server binaries on this machine "
            f"(set PLATFORM_DB_PG_BINDIR, or install postgresql-{server['major']})"
        )
    if not any(_port_free(port) for port in _ports()):
        ports = os.environ.get("PLATFORM_DB_STANDBY_PORTS", DEFAULT_PORTS)
        raise StandbyUnavailable(f"no free port in PLATFORM_DB_STANDBY_PORTS ({ports})")
    owner = _run_as(server["data_directory"])
    drop_stale_slots(primary)
    host, port = _address(primary)
    standby = Standby(
        base=_new_base(owner),
        port=0,
        binaries=binaries,
        superuser=str(server["login"]),
        owner=owner,
        primary=primary,
        slot=f"{SLOT_PREFIX}{os.getpid()}_{secrets.token_hex(4)}" if slot else "",
    )
    try:
        env_password = {"PGPASSWORD": primary.password} if primary.password else {}
        argv = [
            binaries("pg_basebackup"),
            "-d",
            f"host={host} port={port} user={server['login']} application_name=platform-db-standby",
            "-D",
            str(standby.data_dir),
            "-R",
            "-X",
            "stream",
            "--checkpoint=fast",
            "--no-sync",
        ]
        if slot:
            argv += ["-C", "-S", standby.slot]
        standby.run(argv, timeout=1800, env=env_password)
        # The server's ALTER SYSTEM settings are not the standby's: keep what -R wrote.
        auto = standby.data_dir / "postgresql.auto.conf"
        kept = [
            line
            for line in auto.read_text().splitlines()
            if line.startswith(("#", "primary_conninfo", "primary_slot_name"))
        ]
        _write(standby, "postgresql.auto.conf", "\n".join(kept) + "\n")
        _write(standby, "pg_hba.conf", _hba(standby.superuser))
        _write(standby, "pg_ident.conf", "")
        limits: dict[str, str] = dict(server["limits"])
        _start_on_a_free_port(
            standby,
            {
                "hot_standby": "on",
                "hot_standby_feedback": "off",
                "max_standby_streaming_delay": "30s",
                "cluster_name": "'platform-db-standby'",
                **limits,
            },
        )
        standby.wait_until_streaming()
        yield standby
    finally:
        standby.remove()
        if slot:
            with contextlib.suppress(DBAPIError):
                _drop_slot(primary, standby.slot)


@contextlib.contextmanager
def private_primary(binaries: Binaries, *, superuser: str = "postgres") -> Iterator[LocalCluster]:
    """A primary of its own (initdb) on a free port of PLATFORM_DB_STANDBY_PORTS, for
    tests that restart the primary without touching a shared server; removed afterwards."""
    owner = _run_as(None)
    cluster = LocalCluster(
        base=_new_base(owner), port=0, binaries=binaries, superuser=superuser, owner=owner
    )
    try:
        cluster.run(
            [
                binaries("initdb"),
                "-D",
                str(cluster.data_dir),
                "-U",
                superuser,
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            timeout=300,
        )
        _write(cluster, "pg_hba.conf", _hba(superuser))
        _start_on_a_free_port(
            cluster, {"wal_level": "replica", "max_wal_senders": "10", "max_connections": "60"}
        )
        yield cluster
    finally:
        cluster.remove()


def standby_of(
    primary: LocalCluster, database: str = "postgres"
) -> contextlib.AbstractContextManager[Standby]:
    """`streaming_standby` of a private primary."""
    return streaming_standby(primary.url(database))


__all__ = [
    "DIR_PREFIX",
    "SLOT_PREFIX",
    "Binaries",
    "LocalCluster",
    "Standby",
    "StandbyUnavailable",
    "describe_server",
    "drop_stale_slots",
    "find_binaries",
    "private_primary",
    "standby_of",
    "streaming_standby",
]
