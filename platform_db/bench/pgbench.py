"""The limits the workload is compared with: pgbench on the same machine, in the same run.

* `select_only`: pgbench's built-in select-only script (`-S`) on its own small database:
  what this server does with the simplest possible query.
* Custom scripts running the workload's SQL with the same parameters (16 drawn requests
  per class, weighted like the workload's mix; the SQL is what the package's statements
  compile to, values inlined), in three variants:

  `sql`         a superuser (no RLS), explicit `tenant_id = ...`, no transaction block;
  `sql_tx`      the same inside BEGIN; <the tenant hook's statement>; ...; COMMIT (the
                hook's round trips);
  `sql_tx_rls`  a platform_app login, BEGIN; <the hook's statement>; the query without a
                tenant filter (RLS filters); COMMIT: what the package sends, minus its own
                costs. With a tenant key the hook's statement is the sealed one, for any
                backend (pgbench's are not known when the scripts are written): the
                database takes such seals while the scripts run (`unbound_seals`).

  so `sql_tx - sql` is the cost of the tenant transaction, `sql_tx_rls - sql_tx` the cost
  of RLS over an explicit filter, and `package - sql_tx_rls` the cost of the package
  (pool, ORM, driver) over the database.

Latencies come from pgbench's per-transaction log (`-l`), the first `warmup` seconds
dropped, so percentiles are computed exactly as for the workload.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from sqlalchemy import Engine, event

from platform_db.bench.workload import (
    CLASSES,
    INSERT_SUBMISSION_SQL,
    UPDATE_LEAD_SQL,
    Catalog,
    Request,
    draw_request,
    select_statement,
    submission_values,
)
from platform_db.session import seal

VARIANTS = ("sql", "sql_tx", "sql_tx_rls")
MAX_SCRIPTS = 128  # pgbench's limit on -f scripts
# As the tenant hook sends it without a key (platform_db.session.tenancy.scope_sql).
SET_TENANT_SQL = "SET LOCAL app.current_tenant_id = %(tenant)s; SET LOCAL app.current_user_id = ''"
# A sealed script names no backend (pgbench's connections are not known when it is
# written) and the 60-second step of the middle of its run; a seal verifies within one
# step of it, so a run may last at most this long.
MAX_SEALED_RUN_S = 120


def tenant_statement(raw: psycopg.Connection[Any], tenant: str, *, sealed_at: float | None) -> str:
    """The tenant hook's statement for a script: sealed with PLATFORM_DB_TENANT_KEY (for
    any backend, the step of `sealed_at`) when there is a key, else SET_TENANT_SQL."""
    key = seal.key_from_env()
    if key is None or sealed_at is None:
        return _mogrify(raw, SET_TENANT_SQL, {"tenant": tenant})
    return seal.enter_sql(tenant, "", key.seal(tenant, "", 0, now=sealed_at))


def find_pgbench() -> str | None:
    found = shutil.which("pgbench")
    if found:
        return found
    for root in sorted(Path("/usr/lib/postgresql").glob("*/bin/pgbench"), reverse=True):
        if os.access(root, os.X_OK):
            return str(root)
    return None


def pgbench_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)  # noqa: S603
    return out.stdout.strip()


@dataclass(frozen=True, slots=True)
class Script:
    cls: str
    weight: int
    variant: str
    body: str


def _capture(engine: Engine) -> Callable[[], tuple[str, Any]]:
    """Record the last statement and parameters SQLAlchemy hands the driver."""
    seen: list[tuple[str, Any]] = []

    def before(_conn: Any, _cur: Any, statement: str, parameters: Any, *_: Any) -> None:
        seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", before)

    def last() -> tuple[str, Any]:
        return seen[-1]

    return last


def render_select(
    engine: Engine, last: Callable[[], tuple[str, Any]], req: Request, *, explicit_tenant: bool
) -> str:
    """The read class's SQL as the package's statement compiles it, values inlined.

    The statement runs once (in a rolled-back transaction, as the superuser) so that
    SQLAlchemy produces exactly the SQL and values it would send; psycopg then inlines
    the values with its own quoting.
    """
    stmt = select_statement(req, explicit_tenant=explicit_tenant)
    with engine.connect() as conn:
        conn.execute(stmt)
        statement, params = last()
        raw = conn.connection.dbapi_connection
        assert isinstance(raw, psycopg.Connection)
        sql = psycopg.ClientCursor(raw).mogrify(statement, params)
        conn.rollback()
    return sql.strip()


def _mogrify(conn: psycopg.Connection[Any], sql: str, params: Mapping[str, Any]) -> str:
    return psycopg.ClientCursor(conn).mogrify(sql, params).strip()


def build_scripts(
    engine: Engine,
    catalog: Catalog,
    mix: Mapping[str, int],
    *,
    seed: int,
    per_class: int | None = None,
    sealed_at: float | None = None,
) -> dict[str, list[Script]]:
    """Scripts of every variant for requests drawn like the workload's (tenants sealed
    for the time `sealed_at` when there is a tenant key: `tenant_statement`)."""
    import random  # noqa: PLC0415

    classes = [c for c in CLASSES if mix.get(c, 0) > 0]
    per_class = per_class or max(1, MAX_SCRIPTS // len(classes))
    rng = random.Random(f"{seed}:pgbench")  # noqa: S311 - benchmark parameters
    out: dict[str, list[Script]] = {v: [] for v in VARIANTS}
    last = _capture(engine)
    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        assert isinstance(raw, psycopg.Connection)
        for cls in classes:
            for _ in range(per_class):
                req = draw_request(cls, catalog, rng)
                tenant = {"tenant": str(req.tenant.id)}
                set_tenant = tenant_statement(raw, tenant["tenant"], sealed_at=sealed_at)
                if cls == "lead_update":
                    assert req.lead is not None
                    get = render_select(engine, last, req, explicit_tenant=True)
                    upd = _mogrify(raw, UPDATE_LEAD_SQL, {**tenant, "lead": str(req.lead.id)})
                    plain = [get, upd]
                    rls = [get, upd]
                elif cls == "submission_insert":
                    values = submission_values(req)
                    ins = _mogrify(
                        raw,
                        INSERT_SUBMISSION_SQL,
                        {
                            **tenant,
                            "form": str(req.form),
                            "data": Jsonb(values["data"]),
                            "ip": values["ip"],
                            "agent": values["agent"],
                            "referrer": values["referrer"],
                        },
                    )
                    plain = [ins]
                    rls = [ins]
                else:
                    plain = [render_select(engine, last, req, explicit_tenant=True)]
                    rls = [render_select(engine, last, req, explicit_tenant=False)]
                weight = mix[cls]
                out["sql"].append(Script(cls, weight, "sql", _body(plain)))
                out["sql_tx"].append(
                    Script(cls, weight, "sql_tx", _body(["BEGIN", set_tenant, *plain, "COMMIT"]))
                )
                out["sql_tx_rls"].append(
                    Script(cls, weight, "sql_tx_rls", _body(["BEGIN", set_tenant, *rls, "COMMIT"]))
                )
        conn.rollback()
    return out


def _body(statements: Sequence[str]) -> str:
    return "".join(f"{s};\n" for s in statements)


@dataclass(slots=True)
class PgbenchRun:
    """One pgbench run: per-class latencies (ms) from its log, and what it printed."""

    name: str
    command: list[str]
    clients: int = 0
    latencies: dict[str, list[float]] = field(default_factory=dict)
    window_s: float = 0.0
    failed: int = 0
    stdout: str = ""
    error: str | None = None
    cpu: dict[str, Any] | None = None


# client, transaction, latency us, script, epoch s, epoch us[, schedule lag us (with -R)]
_LOG_LINE = re.compile(rb"^(\d+) (\d+) (\d+|failed|skipped) (\d+) (\d+) (\d+)(?: (\d+))?")


def run_pgbench(
    binary: str,
    *,
    name: str,
    conn: Mapping[str, str],
    password: str | None,
    scripts: Sequence[Script] | None,
    builtin: str | None = None,
    clients: int,
    threads: int,
    duration_s: int,
    warmup_s: int,
    seed: int,
    timeout_s: float,
    protocol: str = "prepared",
    probe: Callable[[], Any] | None = None,
    rate: float | None = None,
) -> PgbenchRun:
    """Run pgbench (custom scripts or a built-in one) and read its per-transaction log.

    `protocol` is pgbench's -M: `prepared` like the package's asyncpg, `extended` through
    PgBouncer in transaction mode (no named prepared statements there). `probe`, called
    once the warm-up is over, returns a stats.CpuProbe of the server backends to watch
    until just before the end. `rate` (transactions per second in all) runs pgbench
    open-loop (-R); a transaction's latency then includes its schedule lag, as the
    workload's does.
    """
    with tempfile.TemporaryDirectory(prefix="platform-db-pgbench-") as tmp:
        work = Path(tmp)
        cmd = [
            binary,
            "-n",
            "-M",
            protocol,
            "-c",
            str(clients),
            "-j",
            str(max(1, min(threads, clients))),
            "-T",
            str(duration_s + warmup_s),
            f"--random-seed={seed}",
            *(["-R", f"{rate:g}"] if rate else []),
            "-l",
            f"--log-prefix={work / 'log'}",
            "-h",
            conn["host"],
            "-p",
            conn["port"],
            "-U",
            conn["user"],
        ]
        classes: list[str] = []
        if builtin:
            cmd += ["-b", builtin]
            classes = [builtin]
        else:
            assert scripts
            for i, script in enumerate(scripts):
                path = work / f"{i:03d}_{script.cls}.sql"
                path.write_text(script.body)
                cmd += ["-f", f"{path}@{script.weight}"]
                classes.append(script.cls)
        cmd.append(conn["dbname"])
        env = dict(os.environ)
        if password:
            env["PGPASSWORD"] = password
        else:
            env.pop("PGPASSWORD", None)
        shown = [c if not c.startswith(str(work)) else "<script>" for c in cmd]
        shown = [re.sub(r"^(-f\s*)?/tmp/\S+@", "<script>@", c) for c in shown]
        result = PgbenchRun(name=name, command=shown, clients=clients)
        started = time.monotonic()
        proc = subprocess.Popen(  # noqa: S603 - argv list, no shell
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        try:
            if probe is not None and duration_s > 1:
                time.sleep(max(0.0, started + warmup_s + 0.5 - time.monotonic()))
                watch = probe()
                watch.start()
                time.sleep(max(0.0, started + warmup_s + duration_s - 0.5 - time.monotonic()))
                result.cpu = watch.stop()
            stdout, stderr = proc.communicate(
                timeout=max(1.0, started + timeout_s - time.monotonic())
            )
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            result.error = f"pgbench did not finish within {timeout_s:.0f} s"
            return result
        result.stdout = stdout
        if proc.returncode != 0:
            result.error = (stderr.strip() or stdout.strip())[-2000:]
        _read_logs(work, classes, warmup_s, duration_s, result)
    return result


def _read_logs(
    work: Path, classes: Sequence[str], warmup_s: int, duration_s: int, result: PgbenchRun
) -> None:
    rows: list[tuple[float, int, int]] = []  # (end time, script, latency us)
    failed = 0
    for path in work.glob("log*"):
        with path.open("rb") as f:
            for line in f:
                m = _LOG_LINE.match(line)
                if not m:
                    continue
                if m.group(3) in (b"failed", b"skipped"):
                    failed += 1
                    continue
                end = int(m.group(5)) + int(m.group(6)) / 1e6
                lag = int(m.group(7)) if m.group(7) else 0
                rows.append((end, int(m.group(4)), int(m.group(3)) + lag))
    if not rows:
        return
    start = min(r[0] for r in rows)
    lo, hi = start + warmup_s, start + warmup_s + duration_s
    lat: dict[str, list[float]] = {}
    for end, script, us in rows:
        if lo <= end < hi:
            lat.setdefault(classes[script], []).append(us / 1000.0)
    result.latencies = lat
    result.window_s = float(duration_s)
    result.failed = failed


def ensure_pgbench_database(
    binary: str,
    *,
    conn: Mapping[str, str],
    password: str | None,
    admin: psycopg.Connection[Any],
    dbname: str,
    scale: int,
    say: Callable[[str], None],
) -> None:
    """Create and initialise pgbench's own database (`pgbench -i`) unless it is there."""
    exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
    if exists:
        with psycopg.connect(**_kw(conn, dbname, password)) as c:
            row = c.execute(
                "SELECT to_regclass('pgbench_accounts') IS NOT NULL "
                "AND (SELECT count(*) FROM pgbench_branches) = %s",
                (scale,),
            ).fetchone()
            if row and row[0]:
                return
    else:
        admin.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(dbname)))
    say(f"initialising pgbench's database {dbname} (scale {scale}) ...")
    env = dict(os.environ)
    if password:
        env["PGPASSWORD"] = password
    start = time.perf_counter()
    subprocess.run(  # noqa: S603 - argv list, no shell
        [
            binary,
            "-i",
            "-q",
            "-s",
            str(scale),
            "-h",
            conn["host"],
            "-p",
            conn["port"],
            "-U",
            conn["user"],
            dbname,
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    say(f"  done in {time.perf_counter() - start:.1f} s")


def _kw(conn: Mapping[str, str], dbname: str, password: str | None) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "host": conn["host"],
        "port": int(conn["port"]),
        "user": conn["user"],
        "dbname": dbname,
        "autocommit": True,
    }
    if password:
        kw["password"] = password
    return kw
