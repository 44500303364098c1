"""A throw-away PgBouncer in transaction mode: the bench's many-connections phase, the tests.

The server's `max_connections` caps how many clients may connect directly. The
platform's answer to hundreds of connections is PgBouncer in transaction mode
(docs/OPERATIONS.md): `pgbouncer()` starts one on a free loopback port in front of the
server, with `server_pool` server connections shared by up to `max_clients` client
connections, for one login only. tests/test_pgbouncer.py runs the isolation tests
through the same.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path


def find_pgbouncer() -> str | None:
    found = shutil.which("pgbouncer")
    if found:
        return found
    for candidate in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


@dataclass(frozen=True, slots=True)
class Bouncer:
    host: str
    port: int
    version: str


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _unprivileged_user(host: str) -> pwd.struct_passwd:
    """Whom to run PgBouncer as when running as root.

    Behind a unix socket (the embedded server), the owner of the socket directory, the
    one user sure to reach it; otherwise `postgres`, or `nobody`.
    """
    if host.startswith("/"):
        owner = Path(host).stat().st_uid
        if owner != 0:
            return pwd.getpwuid(owner)
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        return pwd.getpwnam("nobody")


def _quote(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


@contextlib.contextmanager
def pgbouncer(
    binary: str,
    *,
    server_host: str,
    server_port: int,
    dbname: str,
    user: str,
    password: str,
    server_pool: int,
    max_clients: int,
    aliases: Mapping[str, str] | None = None,
    log: Path | None = None,
) -> Iterator[Bouncer]:
    """Run PgBouncer for the duration of the block; stopped and cleaned up afterwards.

    `aliases` adds databases that lead to the same one with extra settings, e.g.
    `{"app_one": "pool_size=1"}`; `log` keeps PgBouncer's output there (default: a
    temporary file removed afterwards). Raises RuntimeError when it does not start.
    """
    port = _free_port()
    workdir = Path(tempfile.mkdtemp(prefix="platform-db-pgbouncer-"))
    ini, userlist = workdir / "pgbouncer.ini", workdir / "userlist.txt"
    log = log or workdir / "log"
    userlist.write_text(f"{_quote(user)} {_quote(password)}\n")
    server = f"host={server_host} port={server_port} dbname={dbname}"
    extra = "".join(f"{alias} = {server} {options}\n" for alias, options in (aliases or {}).items())
    ini.write_text(
        f"""[databases]
{dbname} = {server}
{extra}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {userlist}
pool_mode = transaction
default_pool_size = {server_pool}
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = {max_clients + 10}
ignore_startup_parameters = extra_float_digits,options
server_reset_query = DISCARD ALL
server_reset_query_always = 1
pidfile =
logfile =
log_connections = 0
log_disconnections = 0
"""
    )
    cmd = [binary]
    if os.geteuid() == 0:
        # PgBouncer refuses to run as root: hand it the files and switch user.
        pw = _unprivileged_user(server_host)
        for path in (workdir, ini, userlist):
            os.chown(path, pw.pw_uid, pw.pw_gid)
        cmd += ["-u", pw.pw_name]
    workdir.chmod(0o700)
    userlist.chmod(0o600)
    cmd.append(str(ini))
    version = subprocess.run(  # noqa: S603 - argv list
        [binary, "--version"], capture_output=True, text=True, check=False
    ).stdout.splitlines()
    with log.open("wb") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT)  # noqa: S603
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"pgbouncer exited with {proc.returncode}: {log.read_text()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", port), timeout=0.2),
            ):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"pgbouncer did not listen on {port}: {log.read_text()}")
            time.sleep(0.05)
        yield Bouncer("127.0.0.1", port, version[0] if version else "pgbouncer")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)
