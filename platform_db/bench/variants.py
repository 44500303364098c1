"""The four ways the baseline comparison runs the same drawn requests.

A  the package: `Database`, `async_session(tenant_id=...)`, a platform_app login, RLS
   (platform_db.bench.workload.run_request, the same code as the main workload).
B  what a team would write instead: plain SQLAlchemy async ORM (an `AsyncSession` of a
   plain `create_async_engine`), `WHERE tenant_id = ...` in every query, no hook, on a
   login that bypasses RLS.
C  raw asyncpg sending the package's own SQL with the package's own round trips: the
   BEGIN message the package sends (the tenant setting in it), the query (prepared, as
   SQLAlchemy prepares it), the end (ROLLBACK after a read, COMMIT after a write), on a
   platform_app login under RLS. The BEGIN message and the end statements are read from
   the package itself at the start of a run (`capture_package_messages`), and the queries
   are compiled from the package's own statements, so C follows the package when it
   changes; tests/test_bench_baseline.py holds C's statements equal to A's.
D  raw asyncpg, B's SQL with its explicit tenant filter, no transaction block, on the
   login that bypasses RLS: the floor.

B and D use the same statements (`plain_statement`): B builds them per call, as ORM code
does; D compiles each shape once. Writes behave alike everywhere: the lead update loads
the lead, moves it along the funnel as `Lead.advance_to` does (or bumps its score) and
writes the changed columns; the submission insert writes one row and reads back its
`created_at`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import ipaddress
import json
import random
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg
from sqlalchemy import (
    DateTime,
    String,
    Table,
    Uuid,
    bindparam,
    func,
    insert,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from platform_db.bench.workload import (
    _NEXT,
    LEAD_LIST_ORDER,
    PAGE_SIZE,
    RANGE_LIMIT,
    SEARCH_LIMIT,
    LeadRef,
    Request,
    TenantSample,
    cursor_after,
    run_request,
    select_statement,
    submission_values,
)
from platform_db.models import (
    FormSubmission,
    Lead,
    LeadStatus,
    PageStatus,
    PlatformTenantSummary,
    TenantDashboard,
    User,
)
from platform_db.models import Page as PageModel
from platform_db.models.lead import OPEN_STATUSES
from platform_db.models.page import SEARCH_CONFIG
from platform_db.session import seal
from platform_db.session import search as search_module
from platform_db.session.database import Database
from platform_db.session.query import build_find_many
from platform_db.session.settings import ASYNC_DRIVER, PoolSettings, Settings, with_driver
from platform_db.session.tenant_filter import TENANT_CRITERIA, TENANT_PARAMETER

VARIANTS: tuple[str, ...] = ("A", "B", "C", "D", "U")
# What runs unless asked (--baseline-variants): U measures the seal's cost (issue 15).
DEFAULT_VARIANTS: tuple[str, ...] = ("A", "B", "C", "D")
DESCRIPTIONS: dict[str, str] = {
    "A": "the package: Database, async_session(tenant_id=...), platform_app login, RLS",
    "B": "plain SQLAlchemy async ORM, explicit tenant filter, no hook, a BYPASSRLS login",
    "C": "raw asyncpg, the package's SQL and round trips (BEGIN + tenant setting in one "
    "message, the query, ROLLBACK/COMMIT), platform_app login, RLS",
    "D": "raw asyncpg, explicit tenant filter, no transaction, a BYPASSRLS login",
    "U": "the package unsealed: A without a tenant key, the database not enforcing seals "
    "during U's phases (what sealing costs)",
}
# Each variant's backends, for the server-CPU probe: (application_name LIKE, which login).
APPLICATION_NAMES: dict[str, str] = {
    "A": "platform-db:%",
    "B": "platform-db-bench:b%",
    "C": "platform-db-bench:c%",
    "D": "platform-db-bench:d%",
    "U": "platform-db:%",
}
WRITE_CLASSES = frozenset({"lead_update", "submission_insert"})
TENANT_MARK = "{tenant}"
SEAL_MARK = "{seal}"
# The seal in the package's first message (platform_db.session.seal.enter_sql).
_SEAL_LITERAL = re.compile(r"(platform\.set_tenant\('[^']*', '[^']*', ')([^']*)('\))")
_DIALECT = asyncpg_dialect()  # type: ignore[no-untyped-call]  # untyped in SQLAlchemy


class Runner(Protocol):
    async def setup(self) -> None: ...
    async def run(self, req: Request, rng: random.Random) -> int: ...
    async def close(self) -> None: ...


# --- What the package sends around its queries -----------------------------------------


@dataclass(frozen=True, slots=True)
class PackageMessages:
    """The simple-query messages the package sends around a request's statements.

    `begin`: what starts a tenant transaction, `{tenant}` where the tenant's id goes
    (today `BEGIN; SELECT set_config(...)`, one message); `read_end` / `write_end`: what
    ends a transaction that only read (the session closes: ROLLBACK) and one that wrote
    (COMMIT). Per pool, since each pool's connections could differ.
    """

    begin: dict[str, str] = field(default_factory=dict)
    read_end: str = "ROLLBACK;"
    write_end: str = "COMMIT;"

    def begin_for(self, pool: str, tenant: uuid.UUID, pid: int = 0) -> str:
        """The pool's first message for `tenant`, on a connection to backend `pid`: with
        a seal of its own when the package's carried one (PLATFORM_DB_TENANT_KEY)."""
        message = self.begin[pool].replace(TENANT_MARK, str(tenant))
        if SEAL_MARK in message:
            key = seal.key_from_env()
            assert key is not None, "the package sealed: PLATFORM_DB_TENANT_KEY is set"
            message = message.replace(SEAL_MARK, key.seal(str(tenant), "", pid))
        return message


class CaptureError(RuntimeError):
    """The package's messages could not be read (the hook changed in an unexpected way)."""


async def capture_package_messages(app_url: URL, env: dict[str, str]) -> PackageMessages:
    """Run two transactions of each pool through the package and record what it sends.

    asyncpg's query logger sees every simple-query message (BEGIN with the tenant
    setting, ROLLBACK, COMMIT); prepared statements bypass it, which is what is wanted.
    """
    tenant = uuid.uuid4()  # no such tenant: nothing is read or written
    db = Database.from_env({**env, "DATABASE_URL": app_url.render_as_string(hide_password=False)})
    begin: dict[str, str] = {}
    ends: dict[bool, str] = {}
    try:
        for pool in ("main", "analytics"):
            for commit in (False, True):
                seen: list[str] = []
                async with db.async_session(tenant_id=tenant, pool=pool) as session:
                    conn = await session.connection()
                    raw = await conn.get_raw_connection()
                    driver: Any = raw.driver_connection

                    def log(record: Any, seen: list[str] = seen) -> None:
                        seen.append(str(record.query))

                    driver.add_query_logger(log)
                    try:
                        await session.execute(select(1))
                        if commit:
                            await session.commit()
                        else:
                            await session.rollback()
                        await asyncio.sleep(0)  # loggers run on the next loop turn
                    finally:
                        driver.remove_query_logger(log)
                if len(seen) != 2:
                    raise CaptureError(f"expected BEGIN and an end on the {pool} pool, saw {seen}")
                first, last = seen
                if first.count(str(tenant)) != 1 or not first.lstrip().upper().startswith("BEGIN"):
                    raise CaptureError(
                        f"the package's first message does not carry the tenant once: {first!r}"
                    )
                template = _SEAL_LITERAL.sub(
                    lambda m: m.group(1) + SEAL_MARK + m.group(3), first
                ).replace(str(tenant), TENANT_MARK)
                if begin.setdefault(pool, template) != template:
                    raise CaptureError(
                        f"the {pool} pool begins two ways: {begin[pool]!r}, {template!r}"
                    )
                ends[commit] = last
    finally:
        await db.dispose_async()
    return PackageMessages(begin=begin, read_end=ends[False], write_end=ends[True])


# --- A: the package ----------------------------------------------------------------------


class PackageRunner:
    def __init__(self, app_url: URL, env: dict[str, str], *, sealed: bool = True) -> None:
        env = {**env, "DATABASE_URL": app_url.render_as_string(hide_password=False)}
        # U: the same pools without a tenant key (the harness stops enforcing for U).
        self.db = (
            Database.from_env(env) if sealed else Database(Settings.from_env(env), tenant_key=None)
        )

    async def setup(self) -> None:
        await self.db.warm_up_async("main", "analytics")

    async def run(self, req: Request, rng: random.Random) -> int:
        return (await run_request(self.db, req, rng, time_setup=False)).rows

    async def close(self) -> None:
        await self.db.dispose_async()


# --- The statements -----------------------------------------------------------------------

_TYPES: dict[str, Any] = {
    "tenant": Uuid(),
    "text": String(),
    "since": DateTime(timezone=True),
    "until": DateTime(timezone=True),
    "after_at": DateTime(timezone=True),
    "after_id": Uuid(),
}


def plain_statement(cls: str, v: dict[str, Any]) -> Any:
    """The statement a team writes for each read class, with `tenant_id = ...` in it.

    `v` holds the request's values, or bind parameters of the same names (D compiles
    each shape once)."""
    if cls == "user_by_email":
        return select(User).where(User.tenant_id == v["tenant"], User.email == v["text"])
    if cls == "page_by_slug":
        return select(PageModel).where(
            PageModel.tenant_id == v["tenant"], PageModel.slug == v["text"]
        )
    if cls == "page_search":
        query = func.websearch_to_tsquery(SEARCH_CONFIG, v["text"])
        rank = func.ts_rank_cd(PageModel.search_vector, query).label("rank")
        return (
            select(PageModel, rank)
            .where(
                PageModel.tenant_id == v["tenant"],
                PageModel.status == PageStatus.PUBLISHED,
                PageModel.search_vector.bool_op("@@")(query),
            )
            .order_by(rank.desc(), PageModel.id)
            .limit(SEARCH_LIMIT)
        )
    if cls == "lead_list":
        stmt = select(Lead).where(Lead.tenant_id == v["tenant"], Lead.status == v["status"])
        if "after_at" in v:
            after = tuple_(Lead.created_at, Lead.id) < tuple_(v["after_at"], v["after_id"])
            stmt = stmt.where(after)
        return stmt.order_by(Lead.created_at.desc(), Lead.id.desc()).limit(PAGE_SIZE + 1)
    if cls == "dashboard_read":
        return select(PlatformTenantSummary).where(PlatformTenantSummary.tenant_id == v["tenant"])
    if cls == "submissions_range":
        return (
            select(FormSubmission)
            .where(
                FormSubmission.tenant_id == v["tenant"],
                FormSubmission.created_at >= v["since"],
                FormSubmission.created_at < v["until"],
            )
            .order_by(FormSubmission.created_at.desc())
            .limit(RANGE_LIMIT)
        )
    raise ValueError(f"{cls} is not a read class")


def plain_values(req: Request) -> dict[str, Any]:
    v: dict[str, Any] = {"tenant": req.tenant.id, "text": req.text}
    if req.cls == "lead_list":
        v["status"] = req.status
        if req.lead is not None and req.after is not None:
            v["after_at"], v["after_id"] = req.lead.created_at, req.lead.id
    if req.cls == "submissions_range":
        v["since"], v["until"] = req.since, req.until
    return v


def advance(status: str, score: int, rng: random.Random) -> dict[str, Any]:
    """The columns the lead update changes, as `run_request` changes them through the ORM
    (`Lead.advance_to`, or the score of a closed lead), in the table's column order."""
    if LeadStatus(status) in OPEN_STATUSES:
        target = _NEXT[status]
        if target == "converted" and rng.random() < 0.6:
            target = "lost"
        when = dt.datetime.now(dt.UTC)
        changes: dict[str, Any] = {"status": target, "status_changed_at": when}
        if target == "converted":
            changes["converted_at"] = when
        if target == "lost":
            changes["lost_reason"] = "benchmark"
        return changes
    return {"score": (score + 1) % 101}


def submission_row(req: Request) -> dict[str, Any]:
    """The submission insert's row, as `run_request` adds it (id made here, as the ORM does)."""
    values = submission_values(req)
    return {
        "tenant_id": req.tenant.id,
        "id": uuid.uuid4(),
        "form_id": req.form,
        "lead_id": None,
        "data": values["data"],
        "ip_address": ipaddress.ip_address(values["ip"]),
        "user_agent": values["agent"],
        "referrer": values["referrer"],
    }


UPDATE_SHAPES: tuple[tuple[str, ...], ...] = (
    ("score",),
    ("status", "status_changed_at"),
    ("status", "status_changed_at", "converted_at"),
    ("status", "status_changed_at", "lost_reason"),
)


@dataclass(frozen=True, slots=True)
class Compiled:
    """A statement compiled once for asyncpg: its SQL and the order of its values."""

    sql: str
    names: tuple[str, ...]
    defaults: dict[str, Any]

    @classmethod
    def of(cls, stmt: Any) -> Compiled:
        compiled = stmt.compile(dialect=_DIALECT)
        return cls(str(compiled), tuple(compiled.positiontup or ()), dict(compiled.params))

    def args(self, values: dict[str, Any]) -> list[Any]:
        """The values in binding order; a name not given keeps its compiled value (a
        constant of the statement, such as the search configuration)."""
        return [_processed(values[n]) if n in values else self.defaults[n] for n in self.names]


def _processed(value: Any) -> Any:
    """A value as SQLAlchemy hands it to asyncpg (enums as text, JSON as text)."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict | list):
        return json.dumps(value)
    return value


def write_statements() -> dict[str, Compiled]:
    """The writes' SQL, the same for every variant (the ORM's, which has the tenant in
    the lead's key): the lead by key, its update per set of changed columns, the insert."""
    table: Table = Lead.__table__  # type: ignore[assignment]  # a Table, typed FromClause
    key = (table.c.tenant_id == bindparam("t"), table.c.id == bindparam("i"))
    subs: Table = FormSubmission.__table__  # type: ignore[assignment]
    found = {
        "lead_get": Compiled.of(
            select(Lead).where(Lead.tenant_id == bindparam("t"), Lead.id == bindparam("i"))
        ),
        "submission_insert": Compiled.of(
            insert(subs)
            .values({c: bindparam(c) for c in SUBMISSION_COLUMNS})
            .returning(subs.c.created_at)
        ),
    }
    for cols in UPDATE_SHAPES:
        stmt = update(table).where(*key).values({c: bindparam(c) for c in cols})
        found["lead_update:" + ",".join(cols)] = Compiled.of(stmt)
    return found


SUBMISSION_COLUMNS = (
    "tenant_id",
    "id",
    "form_id",
    "lead_id",
    "data",
    "ip_address",
    "user_agent",
    "referrer",
)


def package_statements() -> dict[str, Compiled]:
    """C's SQL: the package's own statements for each read class, compiled once.

    Built by the builders the package runs (the workload's read statements, the search
    helper's statement, find_many's lead list with and without a cursor), so the text
    is the package's; each request's values are bound by name (`package_args`)."""
    tenant = uuid.UUID(int=1)
    now = dt.datetime.now(dt.UTC)
    sample = TenantSample(tenant, 1, "software", now, (), (), (), ())

    def read(cls: str, **kw: Any) -> Compiled:
        stmt = select_statement(Request(cls, sample, **kw), explicit_tenant=False)
        return filtered(stmt)

    def filtered(stmt: Any) -> Compiled:
        # What a tenant session adds to every ORM statement (platform_db.session.tenant_filter).
        return Compiled.of(stmt.options(TENANT_CRITERIA))

    lead = LeadRef(tenant, "new", now)
    first, _ = build_find_many(
        Lead, filters={"status": "new"}, order_by=LEAD_LIST_ORDER, limit=PAGE_SIZE
    )
    later, _ = build_find_many(
        Lead,
        filters={"status": "new"},
        order_by=LEAD_LIST_ORDER,
        limit=PAGE_SIZE,
        after=cursor_after(tenant, lead),
    )
    return {
        "user_by_email": read("user_by_email", text="x"),
        "page_by_slug": read("page_by_slug", text="x"),
        "page_search": filtered(search_module._SEARCH),
        "lead_list": filtered(first),
        "lead_list_after": filtered(later),
        "dashboard_read": filtered(
            select(TenantDashboard).where(TenantDashboard.tenant_id == bindparam("t"))
        ),
        "submissions_range": read("submissions_range", since=now, until=now),
        **write_statements(),
        "lead_get": filtered(
            select(Lead).where(Lead.tenant_id == bindparam("t"), Lead.id == bindparam("i"))
        ),
    }


def package_args(c: Compiled, req: Request) -> list[Any]:
    """A read request's values, in the order the package's statement binds them."""
    return (
        _package_args(c, req)
        if TENANT_PARAMETER not in c.names
        else [
            req.tenant.id if n == TENANT_PARAMETER else v
            for n, v in zip(c.names, _package_args(_without_tenant(c), req), strict=True)
        ]
    )


def _without_tenant(c: Compiled) -> Compiled:
    # The same positions, with the tenant parameter standing in as a constant.
    return Compiled(c.sql, c.names, {**c.defaults, TENANT_PARAMETER: None})


def _package_args(c: Compiled, req: Request) -> list[Any]:
    if req.cls in ("user_by_email", "page_by_slug"):
        return c.args({c.names[0]: req.text})
    if req.cls == "page_search":
        return c.args({"text": req.text, "limit": SEARCH_LIMIT, "published_only": True})
    if req.cls == "lead_list":
        values: dict[str, Any] = {"f0": req.status, "limit": PAGE_SIZE + 1}
        if req.after is not None and req.lead is not None:
            values |= {"c0": req.lead.created_at, "c1": req.tenant.id, "c2": req.lead.id}
        return c.args(values)
    if req.cls == "dashboard_read":
        return c.args({"t": req.tenant.id})
    if req.cls == "submissions_range":
        return c.args(dict(zip(c.names[:2], (req.since, req.until), strict=True)))
    raise ValueError(f"{req.cls} is not a read class")


# --- B: plain SQLAlchemy -------------------------------------------------------------------


class PlainOrmRunner:
    """B: an AsyncSession per request, statements built per call, the tenant in WHERE."""

    def __init__(self, url: URL, pool_size: int) -> None:
        self.engine = create_async_engine(
            with_driver(url, ASYNC_DRIVER),
            pool_size=pool_size,
            max_overflow=0,
            connect_args={"server_settings": {"application_name": "platform-db-bench:b"}},
        )
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self.pool_size = pool_size

    async def setup(self) -> None:
        conns = await asyncio.gather(*(self.engine.connect() for _ in range(self.pool_size)))
        await asyncio.gather(*(c.close() for c in conns))

    async def run(self, req: Request, rng: random.Random) -> int:
        tid = req.tenant.id
        async with self.sessions() as s:
            if req.cls == "lead_update":
                assert req.lead is not None
                lead = await s.get(Lead, (tid, req.lead.id))
                if lead is None:
                    return 0
                for name, value in advance(lead.status, lead.score, rng).items():
                    setattr(lead, name, value)
                await s.commit()
                return 1
            if req.cls == "submission_insert":
                s.add(FormSubmission(**submission_row(req)))
                await s.commit()
                return 1
            if req.cls == "dashboard_read":
                row = await s.get(PlatformTenantSummary, tid)
                return 0 if row is None else 1
            stmt = plain_statement(req.cls, plain_values(req))
            if req.cls == "page_search":
                return len((await s.execute(stmt)).all())
            return len((await s.scalars(stmt)).all())

    async def close(self) -> None:
        await self.engine.dispose()


# --- C and D: raw asyncpg -------------------------------------------------------------------


class _ConnectionPool:
    """Connections opened up front and handed out in turn: no reset, no ping."""

    def __init__(self) -> None:
        self.idle: asyncio.Queue[Any] = asyncio.Queue()
        self.all: list[Any] = []

    async def open(self, n: int, connect: dict[str, Any]) -> None:
        for conn in await asyncio.gather(*(asyncpg.connect(**connect) for _ in range(n))):
            self.all.append(conn)
            self.idle.put_nowait(conn)

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.all), return_exceptions=True)


def _connect(url: URL, server_settings: dict[str, str]) -> dict[str, Any]:
    return {
        "host": url.host or "127.0.0.1",
        "port": url.port or 5432,
        "user": url.username,
        "password": url.password,
        "database": url.database,
        "server_settings": server_settings,
    }


def _server_settings(pool: PoolSettings, application_name: str) -> dict[str, str]:
    """The per-connection settings the package's engines send for this pool
    (platform_db.session.engines), under another application_name."""
    settings = {
        "application_name": application_name,
        "statement_timeout": str(pool.statement_timeout_ms),
        "lock_timeout": str(pool.lock_timeout_ms),
        "idle_in_transaction_session_timeout": str(pool.idle_in_transaction_timeout_ms),
    }
    if pool.work_mem:
        settings["work_mem"] = pool.work_mem
    if pool.read_only:
        settings["default_transaction_read_only"] = "on"
    return settings


class RawRunner:
    """C: the package's SQL and messages under RLS; D: plain SQL, no transaction block."""

    def __init__(
        self, variant: str, url: URL, settings: Settings, messages: PackageMessages | None
    ) -> None:
        if variant == "C" and messages is None:
            raise ValueError("C sends the package's messages: capture them first")
        self.variant = variant
        self.url = url
        self.settings = settings
        self.messages = messages
        self.pools: dict[str, _ConnectionPool] = {}
        self.statements = package_statements() if variant == "C" else write_statements()
        self.plain: dict[tuple[str, bool], Compiled] = {}

    async def setup(self) -> None:
        name = f"platform-db-bench:{self.variant.lower()}"
        main, analytics = self.settings.main, self.settings.analytics
        if self.variant == "C":
            # The package's pools: the same sizes and per-connection settings.
            for label, pool in (("main", main), ("analytics", analytics)):
                self.pools[label] = _ConnectionPool()
                settings = _server_settings(pool, f"{name}-{label}")
                await self.pools[label].open(pool.max_size, _connect(self.url, settings))
        else:
            self.pools["main"] = _ConnectionPool()
            size = main.max_size + analytics.max_size
            await self.pools["main"].open(size, _connect(self.url, {"application_name": name}))

    async def close(self) -> None:
        for pool in self.pools.values():
            await pool.close()

    async def run(self, req: Request, rng: random.Random) -> int:
        label = "analytics" if req.cls == "dashboard_read" and "analytics" in self.pools else "main"
        pool = self.pools[label]
        conn = await pool.idle.get()
        try:
            if self.variant == "C":
                return await self._in_tenant_transaction(conn, req, rng, label)
            return await self._statements(conn, req, rng)
        finally:
            pool.idle.put_nowait(conn)

    async def _in_tenant_transaction(
        self, conn: Any, req: Request, rng: random.Random, pool: str
    ) -> int:
        m = self.messages
        assert m is not None
        await conn.execute(m.begin_for(pool, req.tenant.id, conn.get_server_pid()))
        try:
            n = await self._statements(conn, req, rng)
        except BaseException:
            await conn.execute("ROLLBACK;")
            raise
        await conn.execute(m.write_end if req.cls in WRITE_CLASSES else m.read_end)
        return n

    async def _statements(self, conn: Any, req: Request, rng: random.Random) -> int:
        s, tid = self.statements, req.tenant.id
        if req.cls == "lead_update":
            assert req.lead is not None
            get = s["lead_get"]
            rows = await conn.fetch(
                get.sql, *get.args({"t": tid, "i": req.lead.id, TENANT_PARAMETER: tid})
            )
            if not rows:
                return 0
            changes = advance(rows[0]["status"], rows[0]["score"], rng)
            upd = s["lead_update:" + ",".join(changes)]
            await conn.execute(upd.sql, *upd.args({**changes, "t": tid, "i": req.lead.id}))
            return 1
        if req.cls == "submission_insert":
            ins = s["submission_insert"]
            await conn.fetch(ins.sql, *ins.args(submission_row(req)))
            return 1
        if self.variant == "C":
            key = "lead_list_after" if req.cls == "lead_list" and req.after else req.cls
            c = s[key]
            return len(await conn.fetch(c.sql, *package_args(c, req)))
        values = plain_values(req)
        c = self._plain(req.cls, "after_at" in values)
        return len(await conn.fetch(c.sql, *c.args(values)))

    def _plain(self, cls: str, after: bool) -> Compiled:
        found = self.plain.get((cls, after))
        if found is None:
            names = ["tenant", "text", "status", "since", "until"]
            names += ["after_at", "after_id"] if after else []
            params = {n: bindparam(n, type_=_TYPES.get(n)) for n in names}
            found = self.plain[(cls, after)] = Compiled.of(plain_statement(cls, params))
        return found


def make_runner(
    variant: str,
    *,
    app_url: URL,
    plain_url: URL,
    env: dict[str, str],
    messages: PackageMessages | None,
) -> Runner:
    settings = Settings.from_env(
        {**env, "DATABASE_URL": app_url.render_as_string(hide_password=False)}
    )
    if variant == "A":
        return PackageRunner(app_url, env)
    if variant == "U":
        return PackageRunner(app_url, env, sealed=False)
    if variant == "B":
        return PlainOrmRunner(plain_url, settings.main.max_size + settings.analytics.max_size)
    if variant == "C":
        return RawRunner("C", app_url, settings, messages)
    if variant == "D":
        return RawRunner("D", plain_url, settings, None)
    raise ValueError(f"unknown variant {variant!r}")


__all__ = [
    "APPLICATION_NAMES",
    "DEFAULT_VARIANTS",
    "DESCRIPTIONS",
    "VARIANTS",
    "CaptureError",
    "Compiled",
    "PackageMessages",
    "advance",
    "capture_package_messages",
    "make_runner",
    "package_args",
    "package_statements",
    "plain_statement",
    "plain_values",
    "submission_row",
    "write_statements",
]
