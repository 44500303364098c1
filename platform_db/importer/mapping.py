"""Which collection goes to which table, and which document field to which column.

The built-in mapping reads Payload CMS documents (MongoDB adapter, multi-tenant and
form-builder plugins). A mapping file (JSON, or TOML by its `.toml` suffix) overrides it:

    [collections.posts]            # the collection (file posts.json / .jsonl / .ndjson [.gz])
    table = "pages"                # one of the tables below
    fields.title = "headline"      # column = a dotted path in the document ...
    fields.slug = ["slug", "permalink"]    # ... or paths tried in order
    fields.excerpt = false         # not imported
    values.status = { live = "published", hidden = "draft" }
    ignore = ["legacyField"]       # never kept in the row's JSON column

    [collections.pages]
    skip = true                    # a built-in collection not to import

Top-level `defaults = false` drops the built-in collections. `platform-db import-mongo
--show-mapping` prints the effective mapping as JSON (a valid mapping file).

Each table has a fixed set of fields with fixed conversions (below); the mapping only
says where they come from. Columns and lengths are read from the SQLAlchemy models, so
the importer checks exactly what the schema will enforce.
"""

from __future__ import annotations

import functools
import json
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import Column, String
from sqlalchemy.dialects import postgresql

from platform_db.models import (
    LeadStatus,
    PageStatus,
    TenantPlan,
    TenantStatus,
    UserRole,
    metadata,
)


class MappingError(ValueError):
    """The mapping file is unreadable or says something impossible."""


class Kind(StrEnum):
    ID = "id"  # the document's own id -> uuid
    TENANT = "tenant"  # a reference to a tenants document -> uuid
    REF = "ref"  # a reference to a document of another table -> uuid
    TEXT = "text"
    EMAIL = "email"
    SLUG = "slug"  # a URL path segment (pages may contain '/')
    SUBDOMAIN = "subdomain"
    DOMAIN = "domain"
    RICHTEXT = "richtext"  # text or Slate/Lexical rich text -> searchable plain text
    TIMESTAMP = "timestamp"
    CREATED = "created"  # a timestamp; falls back to the ObjectId's time
    UPDATED = "updated"  # a timestamp; falls back to created
    BOOL = "bool"
    INT = "int"
    ENUM = "enum"
    JSON_ARRAY = "json_array"
    SUBMISSION_DATA = "submission_data"  # [{field, value}, ...] or an object -> object
    IP = "ip"
    EXTRAS = "extras"  # every field no other column took, as a JSON object


@dataclass(frozen=True, slots=True)
class FieldSpec:
    column: str
    kind: Kind
    paths: tuple[str, ...] = ()  # Payload defaults
    required: bool = False
    default: Any = None
    ref: str | None = None  # referenced table (REF)
    values: tuple[str, ...] = ()  # allowed values (ENUM)
    value_map: Mapping[str, str] = field(default_factory=dict)  # default translations (ENUM)
    low: int | None = None  # INT range
    high: int | None = None


@dataclass(frozen=True, slots=True)
class TableSpec:
    """What the importer knows about one target table."""

    name: str
    fields: tuple[FieldSpec, ...]
    tenant_owned: bool = True
    # Column sets that are unique (after tenant_id for tenant tables) and must be
    # checked before the move, with the message's noun.
    unique: tuple[tuple[str, ...], ...] = ()
    fan_out: bool = False  # one document may give a row in several tenants (users)

    def field(self, column: str) -> FieldSpec:
        for f in self.fields:
            if f.column == column:
                return f
        raise KeyError(column)

    @property
    def columns(self) -> list[str]:
        return [f.column for f in self.fields]

    @property
    def key(self) -> tuple[str, ...]:
        base = ("tenant_id", "id") if self.tenant_owned else ("id",)
        return (*base, "created_at") if self.name == "form_submissions" else base

    @property
    def refs(self) -> list[FieldSpec]:
        return [f for f in self.fields if f.kind is Kind.REF]

    @property
    def extras_column(self) -> str | None:
        return next((f.column for f in self.fields if f.kind is Kind.EXTRAS), None)

    def sql_type(self, column: str) -> str:
        col: Column[Any] = metadata.tables[self.name].c[column]
        return str(col.type.compile(dialect=postgresql.dialect()))  # type: ignore[no-untyped-call]

    def max_length(self, column: str) -> int | None:
        return _max_length(self.name, column)


@functools.cache
def _max_length(table: str, column: str) -> int | None:
    col_type = metadata.tables[table].c[column].type
    return col_type.length if isinstance(col_type, String) else None


def _enum(values: type[StrEnum]) -> tuple[str, ...]:
    return tuple(v.value for v in values)


T = Kind
TABLES: dict[str, TableSpec] = {
    spec.name: spec
    for spec in (
        TableSpec(
            "tenants",
            tenant_owned=False,
            unique=(("subdomain",), ("custom_domain",)),
            fields=(
                FieldSpec("id", T.ID, ("_id",), required=True),
                FieldSpec("name", T.TEXT, ("name", "title"), required=True),
                FieldSpec("subdomain", T.SUBDOMAIN, ("subdomain", "slug")),
                FieldSpec("custom_domain", T.DOMAIN, ("customDomain", "domain")),
                FieldSpec("industry_module", T.TEXT, ("industryModule", "industry")),
                FieldSpec("plan", T.ENUM, ("plan",), default="free", values=_enum(TenantPlan)),
                FieldSpec(
                    "status", T.ENUM, ("status",), default="active", values=_enum(TenantStatus)
                ),
                FieldSpec("settings", T.EXTRAS),
                FieldSpec("created_at", T.CREATED, ("createdAt",)),
                FieldSpec("updated_at", T.UPDATED, ("updatedAt",)),
            ),
        ),
        TableSpec(
            "users",
            fan_out=True,
            unique=(("email",),),
            fields=(
                FieldSpec("tenant_id", T.TENANT, ("tenant", "tenants[].tenant"), required=True),
                FieldSpec("id", T.ID, ("_id",), required=True),
                FieldSpec("email", T.EMAIL, ("email",), required=True),
                FieldSpec("first_name", T.TEXT, ("firstName", "first_name", "name")),
                FieldSpec("last_name", T.TEXT, ("lastName", "last_name")),
                FieldSpec(
                    "role",
                    T.ENUM,
                    ("tenants[].roles", "roles", "role"),
                    default="viewer",
                    values=_enum(UserRole),
                    value_map={
                        "super-admin": "admin",
                        "tenant-admin": "admin",
                        "tenant-editor": "editor",
                        "tenant-viewer": "viewer",
                        "author": "editor",
                        "user": "viewer",
                        "public": "viewer",
                    },
                ),
                FieldSpec("is_active", T.BOOL, ("isActive", "active"), default=True),
                FieldSpec("last_login_at", T.TIMESTAMP, ("lastLoginAt", "lastLogin")),
                FieldSpec("created_at", T.CREATED, ("createdAt",)),
                FieldSpec("updated_at", T.UPDATED, ("updatedAt",)),
            ),
        ),
        TableSpec(
            "pages",
            unique=(("slug",),),
            fields=(
                FieldSpec("tenant_id", T.TENANT, ("tenant",), required=True),
                FieldSpec("id", T.ID, ("_id",), required=True),
                FieldSpec("slug", T.SLUG, ("slug",), required=True),
                FieldSpec("title", T.TEXT, ("title",), required=True),
                FieldSpec("content", T.RICHTEXT, ("content", "layout"), default=""),
                FieldSpec("excerpt", T.TEXT, ("excerpt", "meta.description")),
                FieldSpec(
                    "status",
                    T.ENUM,
                    ("_status", "status"),
                    default="draft",
                    values=_enum(PageStatus),
                ),
                FieldSpec("published_at", T.TIMESTAMP, ("publishedAt", "publishedDate")),
                FieldSpec("author_id", T.REF, ("author", "createdBy"), ref="users"),
                FieldSpec("meta", T.EXTRAS),
                FieldSpec("created_at", T.CREATED, ("createdAt",)),
                FieldSpec("updated_at", T.UPDATED, ("updatedAt",)),
            ),
        ),
        TableSpec(
            "forms",
            unique=(("slug",),),
            fields=(
                FieldSpec("tenant_id", T.TENANT, ("tenant",), required=True),
                FieldSpec("id", T.ID, ("_id",), required=True),
                FieldSpec("name", T.TEXT, ("title", "name"), required=True),
                FieldSpec("slug", T.SLUG, ("slug",)),
                FieldSpec("description", T.TEXT, ("description",)),
                FieldSpec("fields", T.JSON_ARRAY, ("fields",), default=[]),
                FieldSpec("is_active", T.BOOL, ("isActive", "active"), default=True),
                FieldSpec("settings", T.EXTRAS),
                FieldSpec("created_at", T.CREATED, ("createdAt",)),
                FieldSpec("updated_at", T.UPDATED, ("updatedAt",)),
            ),
        ),
        TableSpec(
            "form_submissions",
            fields=(
                FieldSpec("tenant_id", T.TENANT, ("tenant",), required=True),
                FieldSpec("id", T.ID, ("_id",), required=True),
                FieldSpec("created_at", T.CREATED, ("createdAt",)),
                FieldSpec("form_id", T.REF, ("form",), ref="forms", required=True),
                FieldSpec("lead_id", T.REF, (), ref="leads"),
                FieldSpec("data", T.SUBMISSION_DATA, ("submissionData", "data"), default={}),
                FieldSpec("ip_address", T.IP, ("ipAddress", "ip")),
                FieldSpec("user_agent", T.TEXT, ("userAgent",)),
                FieldSpec("referrer", T.TEXT, ("referrer", "referer")),
            ),
        ),
        TableSpec(
            "leads",
            fields=(
                FieldSpec("tenant_id", T.TENANT, ("tenant",), required=True),
                FieldSpec("id", T.ID, ("_id",), required=True),
                FieldSpec("email", T.EMAIL, ("email",), required=True),
                FieldSpec("first_name", T.TEXT, ("firstName", "first_name")),
                FieldSpec("last_name", T.TEXT, ("lastName", "last_name")),
                FieldSpec("phone", T.TEXT, ("phone",)),
                FieldSpec("company", T.TEXT, ("company",)),
                FieldSpec("source", T.TEXT, ("source",), default="website"),
                FieldSpec("status", T.ENUM, ("status",), default="new", values=_enum(LeadStatus)),
                FieldSpec("score", T.INT, ("score",), default=0, low=0, high=100),
                FieldSpec("status_changed_at", T.TIMESTAMP, ("statusChangedAt",)),
                FieldSpec("converted_at", T.TIMESTAMP, ("convertedAt",)),
                FieldSpec("lost_reason", T.TEXT, ("lostReason",)),
                FieldSpec("form_id", T.REF, ("form",), ref="forms"),
                FieldSpec(
                    "source_submission_id",
                    T.REF,
                    ("submission", "sourceSubmission", "formSubmission"),
                    ref="form_submissions",
                ),
                FieldSpec("attributes", T.EXTRAS),
                FieldSpec("created_at", T.CREATED, ("createdAt",)),
                FieldSpec("updated_at", T.UPDATED, ("updatedAt",)),
            ),
        ),
    )
}

# Payload's collection slugs.
DEFAULT_COLLECTIONS: dict[str, str] = {
    "tenants": "tenants",
    "users": "users",
    "pages": "pages",
    "forms": "forms",
    "form-submissions": "form_submissions",
    "leads": "leads",
}
# Never kept in a JSON column: Mongoose's version key, and Payload's authentication
# secrets (password hashes and tokens are not migrated: users sign in again or reset).
DEFAULT_IGNORE = (
    "__v",
    "hash",
    "salt",
    "password",
    "resetPasswordToken",
    "resetPasswordExpiration",
    "loginAttempts",
    "lockUntil",
    "sessions",
    "apiKey",
    "apiKeyIndex",
    "enableAPIKey",
    "_verificationToken",
)
FILE_SUFFIXES = (".json", ".jsonl", ".ndjson", ".json.gz", ".jsonl.gz", ".ndjson.gz")


@dataclass(frozen=True, slots=True)
class CollectionMapping:
    """The effective mapping of one collection."""

    name: str
    table: TableSpec
    paths: dict[str, tuple[str, ...]]  # column -> paths (empty: not imported)
    values: dict[str, dict[str, str]]  # column -> source value -> target value
    ignore: frozenset[str]
    file: str | None = None

    def consumed_top_level(self) -> frozenset[str]:
        """Top-level fields a column reads whole: not copied again into the JSON column.

        A field read only in part (`meta.description`) is still kept whole.
        """
        return frozenset(
            p for paths in self.paths.values() for p in paths if "." not in p and "[]" not in p
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "table": self.table.name,
            **({"file": self.file} if self.file else {}),
            "fields": {
                c: (list(p) if len(p) != 1 else p[0]) if p else False
                for c, p in self.paths.items()
                if self.table.field(c).kind is not Kind.EXTRAS
            },
            "values": {c: dict(v) for c, v in self.values.items() if v},
            "ignore": sorted(self.ignore),
        }


@dataclass(frozen=True, slots=True)
class ImportMapping:
    collections: tuple[CollectionMapping, ...]

    def ordered(self) -> list[CollectionMapping]:
        """Collections in an order where every reference points at an earlier table."""
        tables = {c.table.name for c in self.collections}
        deps: dict[str, set[str]] = {t: set() for t in tables}
        for c in self.collections:
            if c.table.tenant_owned and "tenants" in tables:
                deps[c.table.name].add("tenants")
            for ref in c.table.refs:
                assert ref.ref is not None
                if c.paths.get(ref.column) and ref.ref in tables and ref.ref != c.table.name:
                    deps[c.table.name].add(ref.ref)
        order: list[str] = []
        visiting: list[str] = []

        def visit(t: str) -> None:
            if t in order:
                return
            if t in visiting:
                cycle = " -> ".join([*visiting[visiting.index(t) :], t])
                raise MappingError(
                    f"the mapped references form a cycle ({cycle}); unmap one of them "
                    "(for example fields.lead_id = false on form_submissions)"
                )
            visiting.append(t)
            for d in sorted(deps[t]):
                visit(d)
            visiting.pop()
            order.append(t)

        # Stable: the built-in order first, then the others by name.
        for t in [*TABLES, *sorted(tables)]:
            if t in tables:
                visit(t)
        rank = {t: i for i, t in enumerate(order)}
        return sorted(self.collections, key=lambda c: (rank[c.table.name], c.name))

    def as_dict(self) -> dict[str, Any]:
        return {
            "defaults": False,
            "collections": {c.name: c.as_dict() for c in self.collections},
        }


def _defaults_for(name: str, table: TableSpec) -> CollectionMapping:
    return CollectionMapping(
        name=name,
        table=table,
        paths={f.column: f.paths for f in table.fields if f.kind is not Kind.EXTRAS},
        values={f.column: dict(f.value_map) for f in table.fields if f.kind is Kind.ENUM},
        ignore=frozenset(DEFAULT_IGNORE),
    )


def default_mapping() -> ImportMapping:
    return ImportMapping(
        tuple(_defaults_for(name, TABLES[table]) for name, table in DEFAULT_COLLECTIONS.items())
    )


def load_mapping(path: Path | None) -> ImportMapping:
    """The built-in mapping, overridden by the file at `path` if given."""
    if path is None:
        return default_mapping()
    try:
        raw_text = path.read_bytes()
    except OSError as exc:
        raise MappingError(f"cannot read the mapping file {path}: {exc.strerror}") from None
    try:
        data = (
            tomllib.loads(raw_text.decode("utf-8"))
            if path.suffix.lower() == ".toml"
            else json.loads(raw_text)
        )
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MappingError(
            f"{path}: not valid {path.suffix.lstrip('.') or 'JSON'}: {exc}"
        ) from None
    return mapping_from_dict(data, source=str(path))


def mapping_from_dict(data: Any, *, source: str = "mapping") -> ImportMapping:
    """Apply a mapping document (already parsed) over the built-in mapping."""
    if not isinstance(data, dict):
        raise MappingError(f"{source}: the top level must be an object/table")
    unknown = set(data) - {"defaults", "collections"}
    if unknown:
        raise MappingError(f"{source}: unknown top-level keys {sorted(unknown)}")
    use_defaults = data.get("defaults", True)
    if not isinstance(use_defaults, bool):
        raise MappingError(f"{source}: defaults must be true or false")
    result: dict[str, CollectionMapping] = (
        {c.name: c for c in default_mapping().collections} if use_defaults else {}
    )
    collections = data.get("collections", {})
    if not isinstance(collections, dict):
        raise MappingError(f"{source}: collections must be an object/table")
    for name, spec in collections.items():
        where = f"{source}: collections.{name}"
        if not isinstance(spec, dict):
            raise MappingError(f"{where} must be an object/table")
        if spec.get("skip", False) is True:
            result.pop(name, None)
        else:
            result[name] = _collection(name, spec, result.get(name), where)
    mapping = ImportMapping(tuple(result.values()))
    mapping.ordered()  # refuse cycles now, with the mapping's name in the message
    return mapping


def _collection(
    name: str, spec: dict[str, Any], base: CollectionMapping | None, where: str
) -> CollectionMapping:
    bad = set(spec) - {"table", "file", "fields", "values", "ignore", "skip"}
    if bad:
        raise MappingError(f"{where}: unknown keys {sorted(bad)}")
    table_name = spec.get("table", base.table.name if base else None)
    if table_name not in TABLES:
        raise MappingError(
            f"{where}: table must be one of {', '.join(TABLES)} (got {table_name!r})"
        )
    table = TABLES[table_name]
    if base is None or base.table is not table:
        base = _defaults_for(name, table)
    paths = dict(base.paths)
    for column, value in _obj(spec.get("fields", {}), f"{where}.fields").items():
        if column not in paths:
            mappable = ", ".join(c for c in table.columns if c in paths)
            raise MappingError(
                f"{where}.fields.{column}: {table.name} has no such field ({mappable})"
            )
        paths[column] = _paths(value, f"{where}.fields.{column}")
    for f in table.fields:
        if f.required and f.kind is not Kind.EXTRAS and not paths.get(f.column):
            raise MappingError(f"{where}: {table.name}.{f.column} is required and unmapped")
    values = _values(table, base, spec, where)
    ignore = spec.get("ignore", sorted(base.ignore))
    if not isinstance(ignore, list) or not all(isinstance(i, str) for i in ignore):
        raise MappingError(f"{where}.ignore must be a list of field names")
    file = spec.get("file", base.file)
    if file is not None and (not isinstance(file, str) or "/" in file or file.startswith(".")):
        raise MappingError(f"{where}.file must be a file name inside the dump directory")
    return CollectionMapping(name, table, paths, values, frozenset(ignore) | {"__v"}, file)


def _values(
    table: TableSpec, base: CollectionMapping, spec: dict[str, Any], where: str
) -> dict[str, dict[str, str]]:
    values = {c: dict(v) for c, v in base.values.items()}
    for column, vmap in _obj(spec.get("values", {}), f"{where}.values").items():
        if column not in values:
            enums = ", ".join(values) or "none"
            raise MappingError(
                f"{where}.values.{column}: only enumerated fields take values ({enums})"
            )
        allowed = table.field(column).values
        for src, dst in _obj(vmap, f"{where}.values.{column}").items():
            if dst not in allowed:
                raise MappingError(
                    f"{where}.values.{column}.{src}: {dst!r} is not one of {', '.join(allowed)}"
                )
            values[column][src] = dst
    return values


def _obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MappingError(f"{where} must be an object/table")
    return value


def _paths(value: Any, where: str) -> tuple[str, ...]:
    if value is False or value is None:
        return ()
    items: Sequence[Any] = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(p, str) and p for p in items):
        raise MappingError(f"{where} must be a path, a list of paths, or false")
    for p in items:
        if p.count("[]") > 1 or (p.count("[]") == 1 and not p.split(".")[0].endswith("[]")):
            raise MappingError(f"{where}: '[]' may only follow the first path segment ({p!r})")
    return tuple(items)
