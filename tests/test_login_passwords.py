"""Login passwords are set as SCRAM-SHA-256 verifiers, never sent in clear.

A password in `CREATE ROLE ... PASSWORD '...'` lands in the server log and in
pg_stat_statements (which `platform-db doctor` reads); the package's helpers send the
verifier instead. libpq's own PQencryptPasswordConn is the reference.
"""

from __future__ import annotations

import base64
import secrets

import psycopg
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL

from platform_db.ddl.security import scram_sha_256
from platform_db.session.settings import SYNC_DRIVER, with_driver


def _libpq_verifier(server_url: URL, password: str) -> str:
    dsn = with_driver(server_url, SYNC_DRIVER).render_as_string(hide_password=False)
    with psycopg.connect(dsn.replace("postgresql+psycopg://", "postgresql://")) as conn:
        return conn.pgconn.encrypt_password(password.encode(), b"x", b"scram-sha-256").decode()


def test_verifier_equals_libpq_for_the_same_salt(server_url: URL) -> None:
    for password in ("pencil", secrets.token_urlsafe(24), "it's a 'quoted' one"):
        reference = _libpq_verifier(server_url, password)
        head, _keys = reference.split("$", 1)[1].split("$")
        iterations, salt = head.split(":")
        mine = scram_sha_256(password, iterations=int(iterations), salt=base64.b64decode(salt))
        assert mine == reference


def test_role_gets_the_verifier_not_the_password(engine: Engine) -> None:
    name = f"pdb_pw_{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(16)
    verifier = scram_sha_256(password)
    with engine.begin() as conn:
        # exec_driver_sql: text() would read the verifier's ":" as a bind parameter.
        conn.exec_driver_sql(f"CREATE ROLE {name} LOGIN PASSWORD '{verifier}'")
    try:
        with engine.connect() as conn:
            stored = conn.scalar(
                text("SELECT rolpassword FROM pg_authid WHERE rolname = :n"), {"n": name}
            )
        assert stored == verifier
        assert password not in stored
    finally:
        with engine.begin() as conn:
            conn.execute(text(f"DROP ROLE {name}"))


@pytest.mark.parametrize("bad", ["", "pässword"])
def test_non_ascii_or_empty_password_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="ASCII"):
        scram_sha_256(bad)
