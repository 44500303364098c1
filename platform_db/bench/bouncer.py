"""A throw-away PgBouncer in transaction mode for the many-connections phase of the bench.

The server's `max_connections` (100 here, shared with everything else on it) caps how many
clients may connect directly. The platform's answer to hundreds of connections is
PgBouncer in transaction mode (docs/OPERATIONS.md): the bench starts one on a free
loopback port in front of the server, with `server_pool` server connections shared by up
to `max_clients` client connections, for the platform_app login only.
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
from collections.abc import Iterator
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
) -> Iterator[Bouncer]:
    """Run PgBouncer for the duration of the block; stopped and cleaned up afterwards."""
    port = _free_port()
    workdir = Path(tempfile.mkdtemp(prefix="platform-db-bench-pgbouncer-"))
    ini, userlist, log = workdir / "pgbouncer.ini", workdir / "userlist.txt", workdir / "log"
    userlist.write_text(f"{_quote(user)} {_quote(password)}\n")
    ini.write_text(
        f"""[databases]
{dbname} = host={server_host} port={server_port} dbname={dbname}

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
server_reset_query =
pidfile =
logfile =
log_connections = 0
log_disconnections = 0
"""
    )
    cmd = [binary]
    if os.geteuid() == 0:
        # PgBouncer refuses to run as root: hand it the files and switch user.
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pw = pwd.getpwnam("nobody")
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
