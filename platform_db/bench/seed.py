"""`platform-db seed`: fill a database with a realistic platform, fast, with COPY.

Shape (all deterministic for a given `seed`, `as_of` and tenant index):

* tenants of skewed sizes: tenant i draws its size from a log-normal law with its own
  random stream, so a few tenants are large and most are small, and the first 100
  tenants of a 1,000-tenant seed are exactly the tenants of a 100-tenant seed (the
  scaling run compares the same tenants at two data sizes);
* per tenant: users, CMS pages with real-looking text (full-text search has common and
  rare words), forms, leads spread over the funnel by age, and form submissions over
  `months` months of history, denser in recent months, each partition created first;
* 75% of leads come from a submission and point at it (and it at them).

Loading runs as a superuser: COPY into tables under row-level security is refused to
roles that do not bypass it, and the load sets `session_replication_role = replica` so
that foreign-key triggers do not fire row by row (as `pg_restore --disable-triggers`
does); every foreign key is then checked set-based, once, before the command succeeds.
CHECK and unique constraints are enforced during the load as always. Afterwards: VACUUM
(ANALYZE), the dashboards' materialized views refreshed, a CHECKPOINT.
"""

from __future__ import annotations

import bisect
import datetime as dt
import math
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy.engine import URL

from platform_db.bench.textgen import (
    COMPANY_SUFFIXES,
    COMPANY_WORDS,
    FIRST_NAMES,
    INDUSTRIES,
    LAST_NAMES,
    LEAD_SOURCES,
    LOST_REASONS,
    REFERRERS,
    USER_AGENTS,
    TextGenerator,
    slugify,
    zipf_weights,
)

Progress = Callable[[str], None]

TABLE_ORDER = ("tenants", "users", "forms", "pages", "leads", "form_submissions")

COLUMNS: dict[str, tuple[str, ...]] = {
    "tenants": (
        "id",
        "name",
        "subdomain",
        "custom_domain",
        "industry_module",
        "plan",
        "status",
        "settings",
        "created_at",
        "updated_at",
    ),
    "users": (
        "tenant_id",
        "id",
        "email",
        "first_name",
        "last_name",
        "role",
        "is_active",
        "last_login_at",
        "created_at",
        "updated_at",
    ),
    "forms": (
        "tenant_id",
        "id",
        "name",
        "slug",
        "description",
        "fields",
        "settings",
        "is_active",
        "created_at",
        "updated_at",
    ),
    "pages": (
        "tenant_id",
        "id",
        "slug",
        "title",
        "content",
        "excerpt",
        "status",
        "published_at",
        "author_id",
        "meta",
        "created_at",
        "updated_at",
    ),
    "leads": (
        "tenant_id",
        "id",
        "email",
        "first_name",
        "last_name",
        "phone",
        "company",
        "source",
        "status",
        "score",
        "status_changed_at",
        "converted_at",
        "lost_reason",
        "form_id",
        "source_submission_id",
        "source_submission_created_at",
        "attributes",
        "created_at",
        "updated_at",
    ),
    "form_submissions": (
        "tenant_id",
        "id",
        "created_at",
        "form_id",
        "lead_id",
        "data",
        "ip_address",
        "user_agent",
        "referrer",
    ),
}

NULL = "\\N"
DAY = 86_400.0

# Log-normal spread of tenant sizes: the median tenant is about a third of the mean, the
# largest of 1,000 about 30 times the mean.
SIZE_SIGMA = 1.5
DEFAULT_TENANTS = 1000
DEFAULT_ROWS_PER_TENANT = 11_000
DEFAULT_MONTHS = 36
DEFAULT_SEED = 42
LEAD_FROM_SUBMISSION = 0.75


class SeedError(RuntimeError):
    """The database cannot be seeded as asked (not empty, not a superuser, bad input)."""


@dataclass(frozen=True, slots=True)
class SeedConfig:
    tenants: int = DEFAULT_TENANTS
    rows_per_tenant: int = DEFAULT_ROWS_PER_TENANT
    months: int = DEFAULT_MONTHS
    seed: int = DEFAULT_SEED
    as_of: dt.date = field(default_factory=lambda: dt.datetime.now(dt.UTC).date())
    batch_rows: int = 250_000

    def __post_init__(self) -> None:
        if not 1 <= self.tenants <= 1_000_000:
            raise SeedError(f"tenants must be between 1 and 1,000,000, got {self.tenants}")
        if not 20 <= self.rows_per_tenant <= 10_000_000:
            raise SeedError(
                f"rows per tenant must be between 20 and 10,000,000, got {self.rows_per_tenant}"
            )
        if not 1 <= self.months <= 120:
            raise SeedError(f"months must be between 1 and 120, got {self.months}")

    @property
    def first_month(self) -> dt.date:
        """The first month of history (partitions are created from here on)."""
        total = self.as_of.year * 12 + self.as_of.month - 1 - self.months
        return dt.date(total // 12, total % 12 + 1, 1)

    @property
    def as_of_epoch(self) -> float:
        return dt.datetime.combine(self.as_of, dt.time(), dt.UTC).timestamp()


@dataclass(frozen=True, slots=True)
class TenantSpec:
    """What the seed creates for one tenant; all counts are exact."""

    index: int
    id: str
    name: str
    subdomain: str
    industry: str
    weight: float
    created_epoch: float
    users: int
    pages: int
    forms: int
    leads: int
    submissions: int

    @property
    def rows(self) -> int:
        return 1 + self.users + self.pages + self.forms + self.leads + self.submissions


def _uuid(rng: random.Random) -> str:
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"


def _ts(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(sep=" ", timespec="microseconds")


def plan_tenant(index: int, config: SeedConfig) -> TenantSpec:
    """Tenant `index`'s size and identity; independent of how many tenants there are."""
    rng = random.Random(f"{config.seed}:tenant:{index}")  # noqa: S311 - test data
    mu = math.log(config.rows_per_tenant) - SIZE_SIGMA**2 / 2
    weight = min(rng.lognormvariate(mu, SIZE_SIGMA), config.rows_per_tenant * 60.0)
    industry = sorted(INDUSTRIES)[rng.randrange(len(INDUSTRIES))]
    a, b = rng.choice(COMPANY_WORDS), rng.choice(COMPANY_WORDS)
    suffix = rng.choice(COMPANY_SUFFIXES)
    name = f"{a.capitalize()} {b.capitalize()} {industry.replace('_', ' ').title()} {index}"
    subdomain = f"{a}-{b}-{suffix}-{index}"
    # Older tenants tend to be the bigger ones: age grows with size.
    size_rank = min(1.0, math.log1p(weight) / math.log1p(config.rows_per_tenant * 60.0))
    age_months = max(1.0, config.months * min(1.0, 0.1 + 0.5 * rng.random() + 0.6 * size_rank))
    created_epoch = config.as_of_epoch - age_months * 30.4 * DAY
    users = max(1, round(2 + weight * 0.002))
    pages = max(3, round(5 + weight * 0.004))
    forms = max(1, min(40, round(1 + math.log2(1 + weight / 800) + rng.random() * 2)))
    leads = max(1, round(weight * 0.14))
    submissions = max(leads, round(weight * 0.84))
    return TenantSpec(
        index=index,
        id=_uuid(rng),
        name=name,
        subdomain=subdomain,
        industry=industry,
        weight=weight,
        created_epoch=created_epoch,
        users=min(users, 2000),
        pages=min(pages, 5000),
        forms=forms,
        leads=leads,
        submissions=submissions,
    )


def plan(config: SeedConfig) -> list[TenantSpec]:
    """Every tenant's spec, in load order (by id, so (tenant_id, ...) indexes fill in order)."""
    return sorted((plan_tenant(i, config) for i in range(config.tenants)), key=lambda s: s.id)


_FORM_KINDS: tuple[tuple[str, str, str], ...] = (
    ("Contact us", "contact", '["email", "name", "message"]'),
    ("Newsletter", "newsletter", '["email"]'),
    ("Request a quote", "quote-request", '["email", "name", "company", "budget"]'),
    ("Book a consultation", "book-a-consultation", '["email", "name", "phone", "date"]'),
    ("Callback request", "callback-request", '["name", "phone"]'),
    ("Event registration", "event-registration", '["email", "name", "company"]'),
    ("Download the guide", "download-guide", '["email", "company"]'),
    ("Feedback", "feedback", '["email", "rating", "message"]'),
)


def _fields_json(names: str) -> str:
    import json  # noqa: PLC0415

    kinds = {"email": "email", "message": "textarea", "phone": "tel", "date": "date"}
    return json.dumps(
        [
            {"name": n, "type": kinds.get(n, "text"), "required": n in ("email", "name")}
            for n in json.loads(names)
        ]
    )


_FORM_FIELDS = {slug: _fields_json(names) for _, slug, names in _FORM_KINDS}
_PLANS = ("free", "starter", "professional", "enterprise")
_ROLES = ("editor", "viewer")
_FIRST_CAP = tuple(n.capitalize() for n in FIRST_NAMES)
_LAST_CAP = tuple(n.capitalize() for n in LAST_NAMES)


class _Batch:
    def __init__(self) -> None:
        self.lines: dict[str, list[str]] = {t: [] for t in TABLE_ORDER}
        self.rows = 0
        self.tenants = 0


def tenant_lines(spec: TenantSpec, config: SeedConfig, text: TextGenerator) -> dict[str, list[str]]:
    """The COPY text-format lines of one tenant, per table."""
    return _TenantWriter(spec, config, text).lines()


class _TenantWriter:
    """One tenant's rows; one random stream, drawn in a fixed order (determinism)."""

    def __init__(self, spec: TenantSpec, config: SeedConfig, text: TextGenerator) -> None:
        self.spec = spec
        self.text = text
        self.rng = random.Random(f"{config.seed}:rows:{spec.index}")  # noqa: S311 - test data
        self.out: dict[str, list[str]] = {t: [] for t in TABLE_ORDER}
        self.tid = spec.id
        self.t0 = spec.created_epoch
        self.t1 = config.as_of_epoch
        self.span = self.t1 - self.t0
        self.user_ids: list[str] = []
        self.form_ids: list[str] = []
        self.form_slugs: list[str] = []
        self.lead_ids: list[str] = []
        self.submissions: list[tuple[float, str]] = []

    def lines(self) -> dict[str, list[str]]:
        self.tenant()
        self.users()
        self.forms()
        self.pages()
        self.leads()
        self.other_submissions()
        # In time order: COPY routes rows to one partition at a time.
        self.submissions.sort(key=lambda s: s[0])
        self.out["form_submissions"] = [line for _, line in self.submissions]
        return self.out

    def _when(self) -> float:
        """A moment of the tenant's history, denser towards the present."""
        return self.t0 + self.span * math.sqrt(self.rng.random())

    def tenant(self) -> None:
        spec, rng = self.spec, self.rng
        plan_name = _PLANS[max(0, min(3, int(math.log10(max(1.0, spec.weight)) - 2.5)))]
        draw = rng.random()
        status = "trial" if draw < 0.08 else "suspended" if draw < 0.10 else "active"
        custom = f"{spec.subdomain}.com" if rng.random() < 0.2 else NULL
        settings = (
            f'{{"locale": "en", "theme": "{rng.choice(("light", "dark"))}", '
            f'"seed": {{"index": {spec.index}, "rows": {spec.rows}}}}}'
        )
        created = _ts(self.t0)
        self.out["tenants"].append(
            "\t".join(
                (
                    self.tid,
                    spec.name,
                    spec.subdomain,
                    custom,
                    spec.industry,
                    plan_name,
                    status,
                    settings,
                    created,
                    created,
                )
            )
        )

    def users(self) -> None:
        """One owner, two admins, then editors and viewers."""
        rng, domain = self.rng, f"{self.spec.subdomain}.example.com"
        for k in range(self.spec.users):
            uid = _uuid(rng)
            self.user_ids.append(uid)
            fi, li = _below(rng, len(FIRST_NAMES)), _below(rng, len(LAST_NAMES))
            role = "owner" if k == 0 else "admin" if k < 3 else _ROLES[rng.random() < 0.6]
            active = "t" if k == 0 or rng.random() < 0.9 else "f"
            made = _ts(self.t0 + self.span * 0.5 * rng.random())
            login = NULL if rng.random() < 0.1 else _ts(self.t1 - rng.expovariate(1 / (3 * DAY)))
            self.out["users"].append(
                "\t".join(
                    (
                        self.tid,
                        uid,
                        f"{FIRST_NAMES[fi]}.{LAST_NAMES[li]}{k}@{domain}",
                        _FIRST_CAP[fi],
                        _LAST_CAP[li],
                        role,
                        active,
                        login,
                        made,
                        made,
                    )
                )
            )

    def forms(self) -> None:
        """The common kinds first, numbered repeats for tenants with many forms."""
        rng, kinds = self.rng, len(_FORM_KINDS)
        for k in range(self.spec.forms):
            name, slug, _ = _FORM_KINDS[k % kinds]
            fields = _FORM_FIELDS[slug]
            if k >= kinds:
                slug = f"{slug}-{k // kinds + 1}"
                name = f"{name} {k // kinds + 1}"
            fid = _uuid(rng)
            self.form_ids.append(fid)
            self.form_slugs.append(slug)
            made = _ts(self.t0 + self.span * 0.2 * rng.random())
            self.out["forms"].append(
                "\t".join(
                    (
                        self.tid,
                        fid,
                        name,
                        slug,
                        f"{name} form of {self.spec.name}",
                        fields,
                        '{"notify": true}',
                        "t" if k < 2 or rng.random() < 0.9 else "f",
                        made,
                        made,
                    )
                )
            )
        self.form_cum = zipf_weights(len(self.form_ids), 1.3)

    def _form(self) -> int:
        return bisect.bisect(self.form_cum, self.rng.random() * self.form_cum[-1])

    def pages(self) -> None:
        """About, pricing, contact, then articles of several paragraphs."""
        rng, text = self.rng, self.text
        fixed = (("about", "About us"), ("pricing", "Pricing"), ("contact", "Contact"))
        for k in range(self.spec.pages):
            if k < len(fixed):
                slug, title = fixed[k]
            else:
                title = text.title(rng)
                slug = ("blog/" if rng.random() < 0.6 else "") + f"{slugify(title)}-{k}"
            paragraphs = text.body(rng, rng.randint(2, 8))
            draw = rng.random()
            status = "published" if draw < 0.7 else "draft" if draw < 0.9 else "archived"
            made = self.t0 + self.span * rng.random()
            published = (
                NULL if status == "draft" else _ts(min(self.t1, made + rng.random() * 3 * DAY))
            )
            author = self.user_ids[_below(rng, len(self.user_ids))] if rng.random() < 0.95 else NULL
            keywords = ", ".join(f'"{w}"' for w in rng.sample(list(text.nouns), 3))
            self.out["pages"].append(
                "\t".join(
                    (
                        self.tid,
                        _uuid(rng),
                        slug,
                        title,
                        "\\n\\n".join(paragraphs),  # COPY's escaped newline
                        paragraphs[0][:300].rsplit(" ", 1)[0],
                        status,
                        published,
                        author,
                        f'{{"description": "{title}", "keywords": [{keywords}]}}',
                        _ts(made),
                        _ts(min(self.t1, made + rng.random() * 30 * DAY)),
                    )
                )
            )

    def leads(self) -> None:
        """Most leads come from a submission; their funnel stage depends on their age."""
        rng = self.rng
        for _ in range(self.spec.leads):
            t = self._when()
            lid = _uuid(rng)
            self.lead_ids.append(lid)
            fi = self._form()
            first, last = _below(rng, len(FIRST_NAMES)), _below(rng, len(LAST_NAMES))
            company = f"{rng.choice(COMPANY_WORDS)}{rng.choice(COMPANY_WORDS)}"
            email = f"{FIRST_NAMES[first]}.{LAST_NAMES[last]}@{company}.com"
            age_days = (self.t1 - t) / DAY
            if rng.random() < min(0.85, age_days / 240):
                status = "converted" if rng.random() < 0.35 else "lost"
            else:
                status = rng.choices(("new", "contacted", "qualified"), (5, 3, 2))[0]
            changed = t if status == "new" else t + rng.random() * min(age_days, 60) * DAY
            changed_s, ts = _ts(changed), _ts(t)
            sub_id = sub_ts = NULL
            if rng.random() < LEAD_FROM_SUBMISSION:
                sub_id, sub_ts = _uuid(rng), ts
                data = (
                    f'{{"email": "{email}", "name": "{_FIRST_CAP[first]} {_LAST_CAP[last]}", '
                    f'"message": "{self.text.sentence(rng, 5, 12)}"}}'
                )
                self._submission(t, sid=sub_id, ts=ts, form=self.form_ids[fi], lead=lid, data=data)
            self.out["leads"].append(
                "\t".join(
                    (
                        self.tid,
                        lid,
                        email,
                        _FIRST_CAP[first],
                        _LAST_CAP[last],
                        f"+1-555-{100 + _below(rng, 900)}-{1000 + _below(rng, 9000)}",
                        f"{company.capitalize()} {rng.choice(COMPANY_SUFFIXES).capitalize()}",
                        LEAD_SOURCES[_below(rng, len(LEAD_SOURCES))],
                        status,
                        str(_below(rng, 101)),
                        changed_s,
                        changed_s if status == "converted" else NULL,
                        rng.choice(LOST_REASONS) if status == "lost" else NULL,
                        self.form_ids[fi],
                        sub_id,
                        sub_ts,
                        f'{{"utm_source": "{LEAD_SOURCES[_below(rng, len(LEAD_SOURCES))]}"}}',
                        ts,
                        changed_s,
                    )
                )
            )

    def other_submissions(self) -> None:
        """Newsletter sign-ups and the like; a few are repeat contacts of known leads."""
        rng = self.rng
        for _ in range(self.spec.submissions - len(self.submissions)):
            t = self._when()
            fi = self._form()
            lead = self.lead_ids[_below(rng, len(self.lead_ids))] if rng.random() < 0.08 else NULL
            first, last = _below(rng, len(FIRST_NAMES)), _below(rng, len(LAST_NAMES))
            data = (
                f'{{"email": "{FIRST_NAMES[first]}.{LAST_NAMES[last]}@example.net", '
                f'"name": "{_FIRST_CAP[first]} {_LAST_CAP[last]}", '
                f'"page": "{self.form_slugs[fi]}"}}'
            )
            self._submission(
                t, sid=_uuid(rng), ts=_ts(t), form=self.form_ids[fi], lead=lead, data=data
            )

    def _submission(
        self, t: float, *, sid: str, ts: str, form: str, lead: str | None, data: str
    ) -> None:
        rng = self.rng
        referrer = REFERRERS[_below(rng, len(REFERRERS))] if rng.random() < 0.8 else NULL
        line = "\t".join(
            (
                self.tid,
                sid,
                ts,
                form,
                lead or NULL,
                data,
                _ip(rng),
                USER_AGENTS[_below(rng, len(USER_AGENTS))],
                referrer,
            )
        )
        self.submissions.append((t, line))


def _below(rng: random.Random, n: int) -> int:
    """randrange(n) at a fifth of the cost (uniform enough for test data)."""
    return int(rng.random() * n)


def _ip(rng: random.Random) -> str:
    n = rng.getrandbits(32)
    return f"{(n >> 24) % 223 + 1}.{(n >> 16) & 255}.{(n >> 8) & 255}.{n % 254 + 1}"


def generate_batches(config: SeedConfig, specs: list[TenantSpec]) -> Iterator[_Batch]:
    """Tenants' lines grouped into batches of about `batch_rows` rows."""
    texts = {industry: TextGenerator(industry) for industry in INDUSTRIES}
    batch = _Batch()
    for spec in specs:
        for table, lines in tenant_lines(spec, config, texts[spec.industry]).items():
            batch.lines[table].extend(lines)
            batch.rows += len(lines)
        batch.tenants += 1
        if batch.rows >= config.batch_rows:
            yield batch
            batch = _Batch()
    if batch.rows:
        yield batch


@dataclass(slots=True)
class SeedResult:
    database: str
    config: dict[str, Any]
    tenants: int
    rows: dict[str, int]
    total_rows: int
    partitions: int
    largest_tenant_rows: int
    median_tenant_rows: int
    smallest_tenant_rows: int
    copy_seconds: float
    load_seconds: float
    rows_per_second: float
    verify_seconds: float | None
    vacuum_seconds: float
    refresh_seconds: float
    total_seconds: float
    database_bytes: int
    foreign_key_violations: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict  # noqa: PLC0415

        return asdict(self)


def conninfo(url: URL) -> str:
    """A libpq URI for psycopg from a SQLAlchemy URL (password included, never printed)."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def _is_superuser(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
    return bool(row and row[0])


def _ensure_schema(url: URL, say: Progress) -> None:
    from sqlalchemy import create_engine, text  # noqa: PLC0415
    from sqlalchemy.pool import NullPool  # noqa: PLC0415

    from platform_db.migration import runner as migrations  # noqa: PLC0415
    from platform_db.session.settings import SYNC_DRIVER, with_driver  # noqa: PLC0415

    engine = create_engine(with_driver(url, SYNC_DRIVER), poolclass=NullPool)
    try:
        with engine.begin() as conn:
            exists = conn.scalar(text("SELECT to_regclass('public.alembic_version') IS NOT NULL"))
            if not exists:
                say("migrating the database to head ...")
            migrations.upgrade(conn, "head")
    finally:
        engine.dispose()


def _copy_batch(conn: psycopg.Connection[Any], batch: _Batch) -> None:
    with conn.cursor() as cur:
        for table in TABLE_ORDER:
            lines = batch.lines[table]
            if not lines:
                continue
            statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
                sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, COLUMNS[table]))
            )
            with cur.copy(statement) as copy:
                chunk = 2000
                for i in range(0, len(lines), chunk):
                    copy.write("\n".join(lines[i : i + chunk]) + "\n")


def secondary_indexes(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    """(name, definition) of the seeded tables' indexes that no constraint uses.

    Primary keys and the unique indexes foreign keys point at stay; the others are built
    once after the load, which is several times faster than maintaining them row by row.
    A partitioned index is dropped and re-created on the parent, so every partition gets
    it again exactly as `CREATE TABLE ... PARTITION OF` would have given it.
    """
    rows = conn.execute(
        """
        SELECT ic.relname, pg_get_indexdef(i.indexrelid)
        FROM pg_index i
        JOIN pg_class ic ON ic.oid = i.indexrelid
        JOIN pg_class t ON t.oid = i.indrelid
        WHERE t.relnamespace = 'public'::regnamespace
          AND t.relname = ANY(%s) AND NOT t.relispartition
          AND NOT EXISTS (SELECT FROM pg_constraint c WHERE c.conindid = i.indexrelid)
        ORDER BY t.relname, ic.relname
        """,
        (list(TABLE_ORDER),),
    ).fetchall()
    return [(str(name), str(ddl).replace(" ON ONLY ", " ON ", 1)) for name, ddl in rows]


def foreign_key_violations(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """For every foreign key of a table in `public`: rows whose target does not exist.

    Read from the catalog, so a foreign key added by a later revision is checked too.
    MATCH SIMPLE: a row with any NULL key column references nothing.
    """
    fks = conn.execute(
        """
        SELECT c.conname, c.conrelid::regclass::text, c.confrelid::regclass::text,
               ARRAY(SELECT a.attname FROM unnest(c.conkey) WITH ORDINALITY k(n, i)
                     JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n
                     ORDER BY k.i)::text[],
               ARRAY(SELECT a.attname FROM unnest(c.confkey) WITH ORDINALITY k(n, i)
                     JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n
                     ORDER BY k.i)::text[]
        FROM pg_constraint c
        JOIN pg_class r ON r.oid = c.conrelid
        WHERE c.contype = 'f' AND c.conparentid = 0
          AND r.relnamespace = 'public'::regnamespace AND NOT r.relispartition
        ORDER BY 1
        """
    ).fetchall()
    out: dict[str, int] = {}
    for name, child, parent, cols, pcols in fks:
        not_null = sql.SQL(" AND ").join(
            sql.SQL("c.{} IS NOT NULL").format(sql.Identifier(col)) for col in cols
        )
        match = sql.SQL(" AND ").join(
            sql.SQL("p.{} = c.{}").format(sql.Identifier(pc), sql.Identifier(cc))
            for cc, pc in zip(cols, pcols, strict=True)
        )
        query = sql.SQL(
            "SELECT count(*) FROM {child} c WHERE {nn} "
            "AND NOT EXISTS (SELECT FROM {parent} p WHERE {match})"
        ).format(
            child=sql.Identifier(*child.split(".")),
            parent=sql.Identifier(*parent.split(".")),
            nn=not_null,
            match=match,
        )
        row = conn.execute(query).fetchone()
        out[name] = int(row[0]) if row else 0
    return out


def run_seed(
    url: URL,
    config: SeedConfig,
    *,
    replace: bool = False,
    verify: bool = True,
    progress: Progress | None = None,
) -> SeedResult:
    """Seed the database at `url` (a superuser's); see the module docstring."""
    say = progress or (lambda _m: None)
    started = time.perf_counter()
    _ensure_schema(url, say)
    specs = plan(config)
    with psycopg.connect(conninfo(url), autocommit=False) as conn:
        _prepare(conn, config, replace=replace, say=say)
        # One transaction: a failed load leaves the database as it was, indexes included.
        rows, copy_seconds, load_seconds = _load(conn, config, specs, say)
        violations: dict[str, int] = {}
        verify_seconds: float | None = None
        if verify:
            say("checking every foreign key (set-based) ...")
            t = time.perf_counter()
            violations = foreign_key_violations(conn)
            verify_seconds = time.perf_counter() - t
            bad = {k: v for k, v in violations.items() if v}
            if bad:
                raise SeedError(f"foreign keys violated after the load: {bad}")
        say("committing ...")
        conn.commit()
    after = _after_load(url, say)
    sizes = sorted(s.rows for s in specs)
    total = sum(rows.values())
    return SeedResult(
        database=after["database"],
        config={
            "tenants": config.tenants,
            "rows_per_tenant": config.rows_per_tenant,
            "months": config.months,
            "seed": config.seed,
            "as_of": config.as_of.isoformat(),
        },
        tenants=len(specs),
        rows=rows,
        total_rows=total,
        partitions=after["partitions"],
        largest_tenant_rows=sizes[-1],
        median_tenant_rows=sizes[len(sizes) // 2],
        smallest_tenant_rows=sizes[0],
        copy_seconds=round(copy_seconds, 2),
        load_seconds=round(load_seconds, 2),
        rows_per_second=round(total / load_seconds) if load_seconds else 0,
        verify_seconds=None if verify_seconds is None else round(verify_seconds, 2),
        vacuum_seconds=after["vacuum_seconds"],
        refresh_seconds=after["refresh_seconds"],
        total_seconds=round(time.perf_counter() - started, 2),
        database_bytes=after["database_bytes"],
        foreign_key_violations=violations,
    )


def _prepare(
    conn: psycopg.Connection[Any], config: SeedConfig, *, replace: bool, say: Progress
) -> None:
    if not _is_superuser(conn):
        raise SeedError(
            "seed must run as a superuser: COPY into tables under forced row-level "
            "security is refused to other roles, and the load disables foreign-key "
            "triggers while it runs (DATABASE_URL names the login)"
        )
    row = conn.execute("SELECT EXISTS (SELECT FROM tenants)").fetchone()
    if row and row[0]:
        if not replace:
            raise SeedError("the database already holds tenants; pass --replace to empty it first")
        say("emptying the tenant tables (--replace) ...")
        conn.execute("TRUNCATE tenants, users, pages, forms, leads, form_submissions CASCADE")
    say(
        f"creating monthly partitions from {config.first_month:%Y-%m} "
        f"({config.months} months of history, 3 ahead) ..."
    )
    conn.execute(
        "SELECT * FROM platform.ensure_form_submission_partitions("
        "months_ahead => %s, start_month => %s)",
        (config.months + 3, config.first_month),
    )


def _load(
    conn: psycopg.Connection[Any], config: SeedConfig, specs: list[TenantSpec], say: Progress
) -> tuple[dict[str, int], float, float]:
    """COPY every batch, then build the secondary indexes; returns rows and timings."""
    conn.execute("SET LOCAL session_replication_role = replica")
    conn.execute("SET LOCAL synchronous_commit = off")
    conn.execute("SET LOCAL maintenance_work_mem = '1GB'")
    indexes = secondary_indexes(conn)
    for name, _ in indexes:
        conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier("public", name)))
    planned = sum(s.rows for s in specs)
    say(
        f"loading {config.tenants:,} tenants, {planned:,} rows (seed {config.seed}, as of "
        f"{config.as_of}; {len(indexes)} indexes built afterwards) ..."
    )
    start = time.perf_counter()
    rows = {t: 0 for t in TABLE_ORDER}
    done_rows = done_tenants = 0
    for batch in _background(generate_batches(config, specs)):
        _copy_batch(conn, batch)
        for table, lines in batch.lines.items():
            rows[table] += len(lines)
        done_rows += batch.rows
        done_tenants += batch.tenants
        elapsed = time.perf_counter() - start
        rate = done_rows / elapsed if elapsed else 0.0
        eta = (planned - done_rows) / rate if rate else 0.0
        say(
            f"  {done_tenants:>7,}/{config.tenants:,} tenants  {done_rows:>12,}/{planned:,} rows"
            f"  {rate:>9,.0f} rows/s  eta {eta:5.0f} s"
        )
    copy_seconds = time.perf_counter() - start
    conn.execute("SET LOCAL session_replication_role = origin")
    for name, ddl in indexes:
        say(f"  building {name} ...")
        conn.execute(ddl.encode())  # catalog text (pg_get_indexdef), never input
    return rows, copy_seconds, time.perf_counter() - start


def _after_load(url: URL, say: Progress) -> dict[str, Any]:
    """VACUUM (ANALYZE), refresh the dashboards, CHECKPOINT; returns sizes and timings."""
    with psycopg.connect(conninfo(url), autocommit=True) as conn:
        say("VACUUM (ANALYZE) ...")
        t = time.perf_counter()
        conn.execute("VACUUM (ANALYZE) tenants, users, forms, pages, leads, form_submissions")
        vacuum_seconds = time.perf_counter() - t
        say("refreshing the dashboards' materialized views ...")
        t = time.perf_counter()
        has_refresh = conn.execute(
            "SELECT to_regprocedure('platform.refresh_performance_views()') IS NOT NULL"
        ).fetchone()
        if has_refresh and has_refresh[0]:
            conn.execute("SELECT * FROM platform.refresh_performance_views()")
        refresh_seconds = time.perf_counter() - t
        conn.execute("CHECKPOINT")
        row = conn.execute(
            "SELECT current_database(), pg_database_size(current_database()), "
            "(SELECT count(*) FROM pg_inherits "
            " WHERE inhparent = 'public.form_submissions'::regclass)"
        ).fetchone()
    assert row is not None
    return {
        "database": str(row[0]),
        "database_bytes": int(row[1]),
        "partitions": int(row[2]),
        "vacuum_seconds": round(vacuum_seconds, 2),
        "refresh_seconds": round(refresh_seconds, 2),
    }


_DONE = object()


def _background(batches: Iterator[_Batch]) -> Iterator[_Batch]:
    """Generate the next batch in a thread while the current one is copied.

    The server parses and indexes a batch on one core while Python builds the next on
    the other; the queue holds at most two batches in memory.
    """
    q: queue.Queue[Any] = queue.Queue(maxsize=2)
    stop = threading.Event()

    def produce() -> None:
        try:
            for batch in batches:
                if stop.is_set():
                    return
                q.put(batch)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            q.put(exc)
            return
        q.put(_DONE)

    worker = threading.Thread(target=produce, name="seed-generator", daemon=True)
    worker.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while worker.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                worker.join(0.05)
