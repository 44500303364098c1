"""The one definition of what a tenant-owned table gets.

Every model with `TenantMixin` (platform_db.models.base) is, in the database:

1. under row-level security, enabled and forced, with the `tenant_isolation` policy
   (platform_db.ddl.security.TENANT_POLICY) and any extra policy its model declares;
2. granted to `platform_app` and `platform_admin` for row work only (SELECT, INSERT,
   UPDATE, DELETE unless the model says less), with nothing for PUBLIC;
3. audited: the `audit_row_change` trigger (platform_db.ddl.audit) records every row
   change in `audit_log`, except the columns the model excludes and generated columns;
4. searchable through its index, when its model declares `__tenant_search__ =
   TenantSearch(...)`: a SECURITY DEFINER search function (platform_db.ddl.search).

A model changes this only through `__tenant_protection__ = TenantProtection(...)`, and
turning RLS or auditing off requires a reason: an unprotected tenant table is a decision
written in the model, never an accident. `TenantTable.entities()` turns it into the
database objects (platform_db.ddl.entities) that autogenerate renders into the revision
creating the table, that `alembic check` compares, and that the test plugin
(platform_db.testing) checks. This module is also the one registry of tenant tables:
`TenantMixin` registers each table here, and everything else asks `tenant_tables()` or
`is_tenant_table()`.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Computed, Table
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import TSVECTOR

from platform_db.ddl import audit
from platform_db.ddl.entities import (
    ADMIN_ROLE,
    APP_ROLE,
    TABLE_PRIVILEGES,
    Entity,
    PartitionProtection,
    RowLevelSecurity,
    TableGrants,
)
from platform_db.ddl.search import TenantSearch
from platform_db.ddl.security import ROW_PRIVILEGES, TENANT_POLICY, Policy, ident

# Table -> its model's protection, filled by TenantMixin. Not Table.info: Alembic renders
# a table's info into the create_table of a revision.
_PROTECTIONS: weakref.WeakKeyDictionary[Table, TenantProtection] = weakref.WeakKeyDictionary()
_SEARCHES: weakref.WeakKeyDictionary[Table, TenantSearch] = weakref.WeakKeyDictionary()
_KNOWN_PRIVILEGES = frozenset(TABLE_PRIVILEGES)


@dataclass(frozen=True, slots=True)
class TenantProtection:
    """How a tenant-owned table is protected; the default is the full protection.

    `rls=False` or `audit=False` must come with `reason`, which is kept in the model and
    rendered into the revision that applies it.
    """

    rls: bool = True
    audit: bool = True
    reason: str | None = None
    audit_exclude: tuple[str, ...] = ()
    app_privileges: tuple[str, ...] = ROW_PRIVILEGES
    admin_privileges: tuple[str, ...] = ROW_PRIVILEGES
    extra_policies: tuple[Policy, ...] = field(default=())

    def __post_init__(self) -> None:
        if (not self.rls or not self.audit) and not (self.reason and self.reason.strip()):
            off = " and ".join(
                w
                for w, on in (("row-level security", self.rls), ("auditing", self.audit))
                if not on
            )
            raise ValueError(
                f"turning off {off} of a tenant-owned table needs a reason: "
                "TenantProtection(..., reason='why this table may skip it')"
            )
        for privileges in (self.app_privileges, self.admin_privileges):
            unknown = set(privileges) - _KNOWN_PRIVILEGES
            if unknown:
                raise ValueError(f"unknown table privileges {sorted(unknown)}")
        for column in self.audit_exclude:
            ident(column)
        if not self.rls and self.extra_policies:
            raise ValueError("extra policies without row-level security would never apply")

    @property
    def policies(self) -> tuple[Policy, ...]:
        """The policies the table must have, exactly (none without RLS)."""
        return (TENANT_POLICY, *self.extra_policies) if self.rls else ()

    @property
    def is_default(self) -> bool:
        return self == FULL_PROTECTION


FULL_PROTECTION = TenantProtection()


@dataclass(frozen=True, slots=True)
class TenantTable:
    """A tenant-owned table as the database must have it."""

    name: str
    key: tuple[str, ...] = ("id",)
    audit_exclude: tuple[str, ...] = ()
    protection: TenantProtection = FULL_PROTECTION
    schema: str = "public"
    partitioned: bool = False
    search: TenantSearch | None = None
    key_types: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        ident(self.name)
        if self.schema != "public":
            raise ValueError("tenant-owned tables live in schema public")
        for column in (*self.key, *self.audit_exclude):
            ident(column)

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def audited_exclude(self) -> tuple[str, ...]:
        """Columns the audit trigger never records (declared plus generated)."""
        return tuple(sorted({*self.audit_exclude, *self.protection.audit_exclude}))

    @property
    def audit_trigger_args(self) -> list[str]:
        return audit.audit_trigger_args(self.name, self.key, self.audited_exclude)

    def entities(self) -> list[Entity]:
        """Every database object that makes this table a protected tenant table."""
        t, p = self.qualified, self.protection
        found: list[Entity] = [RowLevelSecurity(t, enabled=p.rls, forced=p.rls)]
        found += [policy.for_table(t) for policy in p.policies]
        found += [
            TableGrants(t, "PUBLIC", ()),
            TableGrants(t, APP_ROLE, p.app_privileges),
            TableGrants(t, ADMIN_ROLE, p.admin_privileges),
        ]
        if p.audit:
            found.append(audit.audit_trigger(self.name, self.key, self.audited_exclude))
        if self.partitioned:
            found.append(PartitionProtection(t, rls=p.rls))
        if self.search is not None:
            found.append(self.search.entity(t, list(zip(self.key, self.key_types, strict=True))))
        return found


def protection_of(cls: type[Any]) -> TenantProtection:
    """The protection a model class declares (`__tenant_protection__`), validated."""
    protection = getattr(cls, "__tenant_protection__", FULL_PROTECTION)
    if not isinstance(protection, TenantProtection):
        raise TypeError(
            f"{cls.__name__}.__tenant_protection__ must be a TenantProtection, "
            f"not {type(protection).__name__}"
        )
    return protection


def search_of(cls: type[Any]) -> TenantSearch | None:
    """The search a model class declares (`__tenant_search__`), validated."""
    search = getattr(cls, "__tenant_search__", None)
    if search is not None and not isinstance(search, TenantSearch):
        raise TypeError(
            f"{cls.__name__}.__tenant_search__ must be a TenantSearch, not {type(search).__name__}"
        )
    return search


def register_tenant_table(
    table: Table, protection: TenantProtection, search: TenantSearch | None = None
) -> None:
    """Record that `table` is tenant-owned, protected as `protection` (TenantMixin does),
    and searched through `search`'s function if given."""
    _PROTECTIONS[table] = protection
    if search is None:
        _SEARCHES.pop(table, None)
        return
    column = table.columns.get(search.vector)
    if column is None or not isinstance(column.type, TSVECTOR):
        raise ValueError(
            f"{table.name}: __tenant_search__ names {search.vector!r}, which is not a "
            "tsvector column of the table"
        )
    _SEARCHES[table] = search


def tenant_table_of(table: Table) -> TenantTable | None:
    """The TenantTable of a mapped table, or None when it is not tenant-owned."""
    protection = _PROTECTIONS.get(table)
    if protection is None:
        return None
    key_columns = [c for c in table.primary_key.columns if c.name != "tenant_id"]
    generated = tuple(c.name for c in table.columns if isinstance(c.computed, Computed))
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]  # untyped in SQLAlchemy
    return TenantTable(
        name=table.name,
        key=tuple(c.name for c in key_columns),
        audit_exclude=generated,
        protection=protection,
        schema=table.schema or "public",
        partitioned=bool(table.dialect_options["postgresql"].get("partition_by")),
        search=_SEARCHES.get(table),
        key_types=tuple(c.type.compile(dialect=dialect).lower() for c in key_columns),
    )


def is_tenant_table(table: Table) -> bool:
    """Whether `table` was registered as tenant-owned (by TenantMixin)."""
    return table in _PROTECTIONS


def tenant_tables(metadata: Any) -> list[TenantTable]:
    """Every tenant-owned table of a MetaData (or of a sequence of them), sorted by name."""
    metadatas = metadata if isinstance(metadata, list | tuple) else [metadata]
    found = [
        spec
        for md in metadatas
        for table in md.tables.values()
        if (spec := tenant_table_of(table)) is not None
    ]
    return sorted(found, key=lambda s: s.name)


__all__ = [
    "FULL_PROTECTION",
    "TenantProtection",
    "TenantTable",
    "is_tenant_table",
    "protection_of",
    "register_tenant_table",
    "search_of",
    "tenant_table_of",
    "tenant_tables",
]
