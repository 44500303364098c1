"""Turn one parsed document into staging rows, or a RejectError saying why it cannot be one.

Everything the schema would refuse (CHECK constraints, lengths, NOT NULL, formats) is
checked here, per document, so that a bad document is rejected alone instead of failing
the whole collection's move. What needs other rows (the tenant exists, a reference
resolves within the same tenant, a slug or email is free) is checked set-based in SQL
by platform_db.importer.load.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import unicodedata
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bson import Decimal128, Int64, ObjectId

from platform_db.importer.documents import RejectError, check_text, dumps, iso_utc, to_json
from platform_db.importer.ids import InvalidReferenceError, describe, display_id, id_to_uuid
from platform_db.importer.mapping import CollectionMapping, FieldSpec, Kind, TableSpec
from platform_db.importer.richtext import plain_text
from platform_db.models import normalize_email

_MISSING: Any = object()
_SLUG_RE = {
    "pages": re.compile(r"^[a-z0-9]+([-/][a-z0-9]+)*$"),
    "forms": re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$"),
}
_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_DOMAIN_RE = re.compile(r"^[a-z0-9.-]+\.[a-z]{2,}$")

# Columns of every staging table before the table's own: where the row came from.
SOURCE_COLUMNS = ("src_row", "src_line", "src_item", "src_offset", "src_len")
# Staging-only columns after the table's own.
EXTRA_STAGING: dict[str, tuple[tuple[str, str], ...]] = {
    "forms": (("slug_alt", "text"),),
    "tenants": (("subdomain_derived", "boolean"),),
}


def staging_columns(table: TableSpec) -> list[str]:
    cols = [*SOURCE_COLUMNS, *table.columns]
    if table.name == "leads":
        cols.append("source_submission_created_at")
    cols.extend(name for name, _ in EXTRA_STAGING.get(table.name, ()))
    return cols


@dataclass(frozen=True, slots=True)
class _FieldPlan:
    """How one column is read: the paths (pre-split) and the conversion."""

    spec: FieldSpec
    paths: tuple[tuple[str, tuple[str, ...], bool], ...]  # (path, parts, in the element)
    label: str
    convert: Callable[[Converter, Any, FieldSpec, str], Any]


def _unreachable(c: Converter, value: Any, spec: FieldSpec, label: str) -> Any:
    raise AssertionError(f"{spec.kind} is filled by the converter itself")


@dataclass(frozen=True, slots=True)
class Row:
    tenant_id: uuid.UUID | None
    values: dict[str, Any]


def get_path(doc: Any, path: str) -> Any:
    """The value at a dotted path, or _MISSING. Nulls count as missing."""
    node = doc
    for part in path.split("."):
        if not isinstance(node, dict):
            return _MISSING
        node = node.get(part, _MISSING)
        if node is _MISSING or node is None:
            return _MISSING
    return node


def ref_value(value: Any) -> Any:
    """The id inside a reference: Payload stores a bare id, or {relationTo, value} when
    polymorphic; a populated copy carries its own `id`/`_id`."""
    if isinstance(value, dict):
        for key in ("value", "id", "_id"):
            if key in value:
                return ref_value(value[key])
        raise InvalidReferenceError(f"not a document reference: {describe(value)}")
    return value


def slugify(text: str, *, max_length: int) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    return slug[:max_length].strip("-")


DEFAULT_EARLIEST = dt.datetime(1990, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True, slots=True)
class DateWindow:
    """The dates an import accepts; any other is a reject (0001-01-01, 9999-12-31 ...).

    An implausible date is a broken document, and an imported one would create a
    partition for its month (form_submissions_9999_12) that nothing else will ever use.
    """

    earliest: dt.datetime
    latest: dt.datetime

    @classmethod
    def default(cls, *, now: dt.datetime | None = None) -> DateWindow:
        """From 1990-01-01 to 10 years after now (UTC)."""
        now = now or dt.datetime.now(dt.UTC)
        latest = now.replace(year=now.year + 10, day=min(now.day, 28))
        return cls(DEFAULT_EARLIEST, latest)

    def check(self, value: dt.datetime, label: str) -> dt.datetime:
        if not self.earliest <= value <= self.latest:
            raise RejectError(
                f"{label} is outside the plausible dates {self.earliest:%Y-%m-%d} to "
                f"{self.latest:%Y-%m-%d}: {iso_utc(value)}"
            )
        return value


class Converter:
    """Converts the documents of one collection according to its mapping."""

    def __init__(self, mapping: CollectionMapping, *, dates: DateWindow | None = None) -> None:
        self.mapping = mapping
        self.dates = dates or DateWindow.default()
        self.table = mapping.table
        self.columns = staging_columns(self.table)
        self.consumed = mapping.consumed_top_level() | mapping.ignore
        arrays = {p.split("[]", 1)[0] for ps in mapping.paths.values() for p in ps if "[]" in p}
        # Fields a table without a JSON column reads: not "dropped" in the report.
        self.read_fields = self.consumed | arrays
        self.richtext_keys = frozenset(
            p
            for f in self.table.fields
            if f.kind is Kind.RICHTEXT
            for p in mapping.paths.get(f.column, ())
            if "." not in p
        )
        self.dropped_fields: dict[str, int] = {}
        tenant_paths = mapping.paths.get("tenant_id", ())
        self.fan_arrays = {p.split("[]", 1)[0] for p in tenant_paths if "[]" in p}
        self.plans = [self._plan(spec) for spec in self.table.fields]
        self.has_extras = self.table.extras_column is not None

    def _plan(self, spec: FieldSpec) -> _FieldPlan:
        paths = self.mapping.paths.get(spec.column, ())
        compiled = []
        for path in paths:
            if "[]" in path:
                array_key, rest = path.split("[].", 1)
                if array_key in self.fan_arrays:  # read in the current tenant's element
                    compiled.append((path, tuple(rest.split(".")), True))
            else:
                compiled.append((path, tuple(path.split(".")), False))
        return _FieldPlan(
            spec,
            tuple(compiled),
            "/".join(paths) or spec.column,
            _CONVERTERS.get(spec.kind, _unreachable),
        )

    # -- tenants ---------------------------------------------------------------------

    def tenant_contexts(  # noqa: PLR0912 - one branch per shape of tenant reference
        self, doc: dict[str, Any]
    ) -> list[tuple[uuid.UUID, dict[str, Any] | None]]:
        """(tenant, array element it came from) for each row the document gives."""
        if not self.table.tenant_owned:
            return []
        paths = self.mapping.paths.get("tenant_id", ())
        found: list[tuple[uuid.UUID, dict[str, Any] | None]] = []
        for path in paths:
            if "[]" in path:
                array_key, rest = path.split("[].", 1)
                items = get_path(doc, array_key)
                if items is _MISSING:
                    continue
                if not isinstance(items, list):
                    raise RejectError(f"{array_key} must be a list")
                for i, element in enumerate(items):
                    value = get_path(element, rest) if isinstance(element, dict) else _MISSING
                    if value is _MISSING:
                        raise RejectError(f"{array_key}[{i}] has no {rest}")
                    found.append(
                        (self._uuid(value, "tenants", f"{array_key}[{i}].{rest}"), element)
                    )
            else:
                value = get_path(doc, path)
                if value is not _MISSING:
                    found.append((self._uuid(value, "tenants", path), None))
            if found:
                break
        if not found:
            raise RejectError(f"missing required field {' or '.join(paths)} (the tenant)")
        unique: dict[uuid.UUID, dict[str, Any] | None] = {}
        for tenant, element in found:
            unique.setdefault(tenant, element)
        if len(unique) > 1 and not self.table.fan_out:
            raise RejectError(
                f"the document names {len(unique)} tenants; a {self.table.name} row has one"
            )
        return list(unique.items())

    def tenants_of(self, doc: Any) -> list[uuid.UUID | None]:
        """Best effort, for accounting a rejected document: its tenants, or [None]."""
        if not self.table.tenant_owned:
            return [None]
        try:
            return [t for t, _ in self.tenant_contexts(doc)] or [None]
        except (RejectError, InvalidReferenceError):
            return [None]

    # -- the document ----------------------------------------------------------------

    def convert(self, doc: dict[str, Any]) -> list[Row]:
        """The rows of a document: one, or one per tenant for a fan-out table (users)."""
        contexts: list[tuple[uuid.UUID | None, dict[str, Any] | None]] = (
            list(self.tenant_contexts(doc)) if self.table.tenant_owned else [(None, None)]
        )
        rows = []
        for tenant, element in contexts:
            values: dict[str, Any] = {}
            for plan in self.plans:
                spec = plan.spec
                if spec.kind is Kind.TENANT:
                    values[spec.column] = tenant
                elif spec.kind is Kind.EXTRAS:
                    values[spec.column] = self._extras(doc, values)
                else:
                    values[spec.column] = self._field(doc, element, plan, values)
            self._finish(doc, values)
            rows.append(Row(tenant, values))
        return rows

    def _field(
        self,
        doc: dict[str, Any],
        element: dict[str, Any] | None,
        plan: _FieldPlan,
        values: dict[str, Any],
    ) -> Any:
        spec = plan.spec
        for path, parts, in_element in plan.paths:
            node: Any = element if in_element else doc
            if node is None:
                continue
            for part in parts:
                node = node.get(part) if isinstance(node, dict) else None
                if node is None:
                    break
            if node is not None:
                return plan.convert(self, node, spec, path)
        if spec.kind is Kind.CREATED:
            return self.dates.check(self._created_fallback(doc), "the time of _id")
        if spec.kind is Kind.UPDATED:
            return values["created_at"]
        if spec.required:
            raise RejectError(
                f"missing required field {plan.label} ({self.table.name}.{spec.column})"
            )
        if spec.kind in (Kind.JSON_ARRAY, Kind.SUBMISSION_DATA):
            return dumps(spec.default)  # JSON text for the jsonb column
        return spec.default

    def _created_fallback(self, doc: dict[str, Any]) -> dt.datetime:
        oid = doc.get("_id")
        if isinstance(oid, ObjectId):
            return oid.generation_time
        if isinstance(oid, str) and re.fullmatch(r"[0-9a-fA-F]{24}", oid):
            return ObjectId(oid).generation_time
        raise RejectError("missing createdAt, and _id is not an ObjectId to take the time from")

    def _extras(self, doc: dict[str, Any], values: dict[str, Any]) -> str:
        extras: dict[str, Any] = {}
        for key, value in doc.items():
            if key in self.richtext_keys and not isinstance(value, str):
                extras[key] = to_json(value, key)  # the tree, to render the page as before
            elif key not in self.consumed:
                extras[key] = to_json(value, key)
        extras["_mongo"] = {"collection": self.mapping.name, "id": display_id(doc.get("_id"))}
        return dumps(extras)

    def note_dropped(self, doc: dict[str, Any]) -> None:
        """Count fields a table without a JSON column cannot keep (reported at the end)."""
        for key in doc:
            if key not in self.read_fields:
                self.dropped_fields[key] = self.dropped_fields.get(key, 0) + 1

    def _finish(self, doc: dict[str, Any], v: dict[str, Any]) -> None:
        name = self.table.name
        if name == "pages" and v["status"] == "published" and v["published_at"] is None:
            v["published_at"] = v["updated_at"]
        elif name == "leads":
            if v["status_changed_at"] is None:
                v["status_changed_at"] = v["updated_at"]
            if v["status"] == "converted" and v["converted_at"] is None:
                v["converted_at"] = v["status_changed_at"]
            v["source_submission_created_at"] = None
        elif name == "forms":
            limit = self.table.max_length("slug") or 200
            if v["slug"] is None:
                base = slugify(v["name"], max_length=limit - 7) or "form"
                v["slug"] = base
                v["slug_alt"] = f"{base}-{_id_tail(v['id'])}"
            else:
                v["slug_alt"] = None
        elif name == "tenants":
            v["subdomain_derived"] = v["subdomain"] is None
            if v["subdomain"] is None:
                v["subdomain"] = slugify(v["name"], max_length=63)
                if not v["subdomain"]:
                    raise RejectError("missing subdomain, and the name gives none")
        if not self.has_extras:
            self.note_dropped(doc)

    def staging_row(self, row: Row, src: tuple[int, int, int, int, int]) -> tuple[Any, ...]:
        values = row.values
        return (*src, *(values.get(c) for c in self.columns[len(SOURCE_COLUMNS) :]))

    # -- conversions -------------------------------------------------------------------

    def _uuid(self, value: Any, table: str, label: str) -> uuid.UUID:
        try:
            return id_to_uuid(ref_value(value), table=table)
        except InvalidReferenceError as exc:
            raise RejectError(f"{label}: {exc}") from None


def _id_tail(value: uuid.UUID) -> str:
    oid = display_id(value)
    return oid[-6:] if len(oid) == 24 else value.hex[-6:]


def _text(c: Converter, value: Any, spec: FieldSpec, label: str) -> str:
    if isinstance(value, str):
        text = value
    elif isinstance(value, int | float | Int64 | Decimal128) and not isinstance(value, bool):
        text = str(value)
    else:
        raise RejectError(f"{label} must be text, not {describe(value)}")
    check_text(text, label)
    if spec.required and not text.strip():
        raise RejectError(f"{label} is empty ({c.table.name}.{spec.column} is required)")
    limit = c.table.max_length(spec.column)
    if limit is not None and len(text) > limit:
        raise RejectError(f"{label} is longer than {limit} characters ({len(text)})")
    return text


def _email(c: Converter, value: Any, spec: FieldSpec, label: str) -> str:
    if not isinstance(value, str):
        raise RejectError(f"{label}: bad email {describe(value)}")
    check_text(value, label)
    try:
        return normalize_email(value)
    except ValueError:
        raise RejectError(f"{label}: bad email {describe(value)}") from None


def _slug(c: Converter, value: Any, spec: FieldSpec, label: str) -> str:
    if not isinstance(value, str):
        raise RejectError(f"{label} must be text, not {describe(value)}")
    check_text(value, label)
    slug = value.strip().lower().strip("/")
    pattern = _SLUG_RE[c.table.name]
    if not pattern.match(slug):
        raise RejectError(f"{label} {value!r} is not a valid slug (must match {pattern.pattern})")
    limit = c.table.max_length(spec.column)
    if limit is not None and len(slug) > limit:
        raise RejectError(f"{label} is longer than {limit} characters")
    return slug


def _subdomain(c: Converter, value: Any, spec: FieldSpec, label: str) -> str:
    text = value.strip().lower() if isinstance(value, str) else None
    if text is None or not _SUBDOMAIN_RE.match(text):
        raise RejectError(f"{label} {describe(value)} is not a valid subdomain")
    return text


def _domain(c: Converter, value: Any, spec: FieldSpec, label: str) -> str:
    text = value.strip().lower().rstrip(".") if isinstance(value, str) else None
    if text is None or not _DOMAIN_RE.match(text) or len(text) > 253:
        raise RejectError(f"{label} {describe(value)} is not a domain name")
    return text


def _richtext(c: Converter, value: Any, spec: FieldSpec, label: str) -> str:
    if isinstance(value, str):
        return check_text(value, label)
    if isinstance(value, dict | list):
        return check_text(plain_text(value), label)
    raise RejectError(f"{label} must be text or rich text, not {describe(value)}")


def _timestamp(c: Converter, value: Any, spec: FieldSpec, label: str) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return c.dates.check(value if value.tzinfo else value.replace(tzinfo=dt.UTC), label)
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            raise RejectError(f"{label} is not a date: {describe(value)}") from None
        return c.dates.check(parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC), label)
    raise RejectError(f"{label} is not a date: {describe(value)}")


def _bool(c: Converter, value: Any, spec: FieldSpec, label: str) -> bool:
    if isinstance(value, bool):
        return value
    raise RejectError(f"{label} must be true or false, not {describe(value)}")


def _int(c: Converter, value: Any, spec: FieldSpec, label: str) -> int:
    number: int | None = None
    if (isinstance(value, int | Int64) and not isinstance(value, bool)) or (
        isinstance(value, float) and value.is_integer()
    ):
        number = int(value)
    elif isinstance(value, Decimal128):
        d = value.to_decimal()
        number = int(d) if d.is_finite() and d == d.to_integral_value() else None
    if number is None:
        raise RejectError(f"{label} must be a whole number, not {describe(value)}")
    if (spec.low is not None and number < spec.low) or (
        spec.high is not None and number > spec.high
    ):
        raise RejectError(f"{label} {number} is outside {spec.low}..{spec.high}")
    return number


def _enum(c: Converter, value: Any, spec: FieldSpec, label: str) -> str:
    vmap = c.mapping.values.get(spec.column, {})

    def one(v: Any) -> str:
        if not isinstance(v, str):
            raise RejectError(f"{label} must be text, not {describe(v)}")
        for candidate in (v, v.strip().lower()):
            target = vmap.get(candidate, candidate)
            if target in spec.values:
                return target
        raise RejectError(
            f"{label} {v!r} is not one of {', '.join(spec.values)} "
            f"(translate it under values.{spec.column} in a mapping file)"
        )

    if isinstance(value, list):
        if not value:
            return str(spec.default)
        # Several roles: the most privileged (the allowed values are listed strongest first).
        return min((one(v) for v in value), key=spec.values.index)
    return one(value)


def _json_array(c: Converter, value: Any, spec: FieldSpec, label: str) -> str:
    if not isinstance(value, list):
        raise RejectError(f"{label} must be a list, not {describe(value)}")
    return dumps(to_json(value, label))


def _submission_data(c: Converter, value: Any, spec: FieldSpec, label: str) -> str:
    if isinstance(value, dict):
        return dumps(to_json(value, label))
    if not isinstance(value, list):
        raise RejectError(f"{label} must be a list of {{field, value}} or an object")
    data: dict[str, Any] = {}
    for i, item in enumerate(value):
        name = item.get("field", item.get("name")) if isinstance(item, dict) else None
        if not isinstance(name, str) or not name:
            raise RejectError(f"{label}[{i}] has no field name")
        check_text(name, f"{label}[{i}].field")
        converted = to_json(item.get("value"), f"{label}[{i}].value")
        if name in data and data[name] != converted:
            raise RejectError(f"{label} has field {name!r} twice with different values")
        data[name] = converted
    return dumps(data)


def _ip(c: Converter, value: Any, spec: FieldSpec, label: str) -> str:
    try:
        return str(ipaddress.ip_address(str(value).strip()))
    except ValueError:
        raise RejectError(f"{label} {describe(value)} is not an IP address") from None


def _id(c: Converter, value: Any, spec: FieldSpec, label: str) -> uuid.UUID:
    return c._uuid(value, c.table.name, label)


def _ref(c: Converter, value: Any, spec: FieldSpec, label: str) -> uuid.UUID:
    # A polymorphic {relationTo, value} naming another collection simply does not
    # resolve in spec.ref's table and is rejected as a dangling reference there.
    assert spec.ref is not None
    return c._uuid(value, spec.ref, label)


def _created(c: Converter, value: Any, spec: FieldSpec, label: str) -> dt.datetime:
    return _timestamp(c, value, spec, label)


_CONVERTERS: dict[Kind, Callable[[Converter, Any, FieldSpec, str], Any]] = {
    Kind.ID: _id,
    Kind.REF: _ref,
    Kind.TEXT: _text,
    Kind.EMAIL: _email,
    Kind.SLUG: _slug,
    Kind.SUBDOMAIN: _subdomain,
    Kind.DOMAIN: _domain,
    Kind.RICHTEXT: _richtext,
    Kind.TIMESTAMP: _timestamp,
    Kind.CREATED: _created,
    Kind.UPDATED: _created,
    Kind.BOOL: _bool,
    Kind.INT: _int,
    Kind.ENUM: _enum,
    Kind.JSON_ARRAY: _json_array,
    Kind.SUBMISSION_DATA: _submission_data,
    Kind.IP: _ip,
}
