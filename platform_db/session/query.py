"""A safe, tenant-aware list helper: `find_many(session, Model, filters=..., order_by=...)`.

Tenant-aware because it runs inside a tenant session: RLS restricts the rows, and the
session adds `tenant_id = :tenant` to the statement (platform_db.session.tenant_filter), so
a distributed database reads one shard. Safe because every filter and sort name is checked
against the model's mapped columns, every value is coerced to the column's type and
bound, and anything unknown is a clear `QueryError` before SQL runs.

Pagination: `offset` for shallow pages, and keyset pagination for deep ones — pass the
`next_cursor` of one page as `after` of the next; the cursor is opaque, carries the sort
it was made for, and a page costs the same at any depth. Nullable sort fields page like
any other: NULLs come last ascending and first descending (PostgreSQL's default, so the
same indexes serve), and a cursor that stopped on a NULL carries it.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import enum
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Generic, TypeVar

from sqlalchemy import ColumnElement, Integer, Select, String, and_, bindparam, false, or_, select
from sqlalchemy import Enum as SAEnum
from sqlalchemy.dialects.postgresql import JSONB, TSVECTOR
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute, Mapper, Session
from sqlalchemy.sql.schema import Column

from platform_db.models.base import Base

T = TypeVar("T", bound=Base)

MAX_LIMIT = 1000
MAX_OFFSET = 10_000

OPERATORS = (
    "eq",
    "ne",
    "lt",
    "lte",
    "gt",
    "gte",
    "in",
    "not_in",
    "is_null",
    "contains",
    "startswith",
)
# What a column of each kind can take; `contains` on a JSONB column is containment (@>).
TEXT_OPERATORS = ("contains", "startswith")
JSONB_OPERATORS = ("eq", "ne", "is_null", "contains")


class QueryError(ValueError):
    """A filter, sort, limit or cursor that the model does not support."""


@dataclass(frozen=True, slots=True)
class PageResult(Generic[T]):
    items: list[T]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class _SortKey:
    name: str
    column: InstrumentedAttribute[Any]
    descending: bool
    nullable: bool


def _columns(model: type[Base]) -> dict[str, Column[Any]]:
    mapper: Mapper[Any] = model.__mapper__
    return {
        attr.key: attr.columns[0]
        for attr in mapper.column_attrs
        if isinstance(attr.columns[0], Column) and not isinstance(attr.columns[0].type, TSVECTOR)
    }


def _attr(model: type[Base], name: str) -> InstrumentedAttribute[Any]:
    attr: InstrumentedAttribute[Any] = getattr(model, name)
    return attr


def _coerce(column: Column[Any], value: Any, name: str) -> Any:
    if value is None:
        return None
    try:
        if isinstance(column.type, SAEnum) and column.type.enum_class is not None:
            return column.type.enum_class(value)
        python_type = column.type.python_type
    except NotImplementedError:
        return value
    except ValueError:
        raise QueryError(f"{name}: {value!r} is not one of the allowed values") from None
    try:
        if python_type is uuid.UUID and not isinstance(value, uuid.UUID):
            return uuid.UUID(str(value))
        if python_type is dt.datetime and isinstance(value, str):
            parsed = dt.datetime.fromisoformat(value)
            if parsed.tzinfo is None:
                raise QueryError(f"{name}: timestamp {value!r} needs a time zone")
            return parsed
        if python_type is bool and not isinstance(value, bool):
            raise QueryError(f"{name}: expected true or false, got {value!r}")
        if python_type is int and not isinstance(value, int | bool):
            return int(value)
        if python_type in (str, dict, list) and not isinstance(value, python_type):
            raise QueryError(f"{name}: expected {python_type.__name__}, got {value!r}")
    except (TypeError, ValueError) as exc:
        if isinstance(exc, QueryError):
            raise
        raise QueryError(f"{name}: {value!r} is not a valid {python_type.__name__}") from None
    return value


def _operators_for(column: Column[Any]) -> tuple[str, ...]:
    if isinstance(column.type, JSONB):
        return JSONB_OPERATORS
    if isinstance(column.type, String):
        return OPERATORS
    return tuple(op for op in OPERATORS if op not in TEXT_OPERATORS)


def _escape_like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _field_and_operator(
    model: type[Base], columns: dict[str, Column[Any]], key: str
) -> tuple[str, str]:
    name, _, op = key.partition("__")
    op = op or "eq"
    if name not in columns:
        raise QueryError(
            f"unknown filter field {name!r} for {model.__name__}; known: {sorted(columns)}"
        )
    if op not in OPERATORS:
        raise QueryError(f"unknown filter operator {op!r}; known: {list(OPERATORS)}")
    allowed = _operators_for(columns[name])
    if op not in allowed:
        # Checked here rather than left to PostgreSQL, which would say only that
        # `jsonb ~~* text` does not exist.
        raise QueryError(f"{name} supports only {list(allowed)}, not {op!r}")
    return name, op


# A filter as the statement holds it: (field, operator, variant), where the variant is
# what of the value changes the SQL itself (NULL, an empty list, which way is_null goes);
# everything else about the value is a bound parameter.
_FilterShape = tuple[str, str, str]


def _filter_binding(
    columns: dict[str, Column[Any]], name: str, op: str, key: str, value: Any
) -> tuple[str, Any]:
    """Check and coerce one filter's value: (variant, the value to bind or None)."""
    column = columns[name]
    if isinstance(column.type, JSONB) and op == "contains":
        if not isinstance(value, dict | list):
            raise QueryError(
                f"{key}: expected an object or array (JSONB containment, @>), got {value!r}"
            )
        return "", value
    if op == "is_null":
        if not isinstance(value, bool):
            raise QueryError(f"{key}: expected true or false")
        return ("null" if value else "not null"), None
    if op in ("in", "not_in"):
        if isinstance(value, str | bytes) or not isinstance(value, Sequence | set | frozenset):
            raise QueryError(f"{key}: expected a list of values")
        values = [_coerce(column, v, name) for v in value]
        return ("", values) if values else ("empty", None)
    if op in ("contains", "startswith"):
        if not isinstance(value, str):
            raise QueryError(f"{key}: expected a string")
        pattern = _escape_like(value)
        return "", (f"%{pattern}%" if op == "contains" else f"{pattern}%")
    coerced = _coerce(column, value, name)
    if coerced is None and op in ("eq", "ne"):
        return "null", None
    return "", coerced


def _filter_clause(
    model: type[Base], columns: dict[str, Column[Any]], shape: _FilterShape, param: str
) -> Any:
    """The WHERE clause of one filter, its value bound as `param` (None: no clause)."""
    name, op, variant = shape
    attr = _attr(model, name)
    column = columns[name]
    if isinstance(column.type, JSONB) and op == "contains":
        return attr.contains(bindparam(param, type_=column.type))
    if op == "is_null":
        return attr.is_(None) if variant == "null" else attr.is_not(None)
    if op in ("in", "not_in"):
        if variant == "empty":
            return false() if op == "in" else None
        values = bindparam(param, type_=column.type, expanding=True)
        return attr.in_(values) if op == "in" else attr.not_in(values)
    if op in ("contains", "startswith"):
        return attr.ilike(bindparam(param, type_=String), escape="\\")
    if variant == "null":
        return attr.is_(None) if op == "eq" else attr.is_not(None)
    bound = bindparam(param, type_=column.type)
    return {
        "eq": attr.__eq__,
        "ne": attr.__ne__,
        "lt": attr.__lt__,
        "lte": attr.__le__,
        "gt": attr.__gt__,
        "gte": attr.__ge__,
    }[op](bound)


def _sort_keys(
    model: type[Base], columns: dict[str, Column[Any]], order_by: Sequence[str]
) -> list[_SortKey]:
    if isinstance(order_by, str):
        order_by = [order_by]
    keys: list[_SortKey] = []
    for spec in order_by:
        descending = spec.startswith("-")
        name = spec.lstrip("-+")
        if name not in columns:
            raise QueryError(
                f"unknown sort field {name!r} for {model.__name__}; known: {sorted(columns)}"
            )
        if any(k.name == name for k in keys):
            raise QueryError(f"sort field {name!r} given twice")
        keys.append(_SortKey(name, _attr(model, name), descending, bool(columns[name].nullable)))
    # The primary key makes the order total, which keyset pagination needs.
    last_desc = keys[-1].descending if keys else False
    for pk in model.__mapper__.primary_key:
        if pk.key is not None and not any(k.name == pk.key for k in keys):
            keys.append(_SortKey(pk.key, _attr(model, pk.key), last_desc, False))
    return keys


def _encode_value(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, uuid.UUID | Decimal):
        return str(value)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return value


def _encode_cursor(keys: list[_SortKey], row: Base) -> str:
    payload = {
        "s": [("-" if k.descending else "") + k.name for k in keys],
        "v": [_encode_value(getattr(row, k.name)) for k in keys],
    }
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str, keys: list[_SortKey], columns: dict[str, Column[Any]]) -> list[Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        payload = json.loads(raw)
        spec, values = payload["s"], payload["v"]
    except (binascii.Error, ValueError, TypeError, KeyError):
        raise QueryError("malformed cursor") from None
    expected = [("-" if k.descending else "") + k.name for k in keys]
    if spec != expected or not isinstance(values, list) or len(values) != len(keys):
        raise QueryError("cursor was made for a different sort order")
    if any(v is None and not k.nullable for k, v in zip(keys, values, strict=True)):
        raise QueryError("malformed cursor")
    return [_coerce(columns[k.name], v, k.name) for k, v in zip(keys, values, strict=True)]


def _equal(key: _SortKey, value: Any) -> ColumnElement[bool]:
    return key.column.is_(None) if value is None else key.column == value


def _step(key: _SortKey, value: Any) -> ColumnElement[bool]:
    """Rows strictly after `value` in this key's direction; NULL sorts after every value."""
    column = key.column
    if value is None:
        return column.is_not(None) if key.descending else false()
    if key.descending:
        before: ColumnElement[bool] = column < value
        return before
    after: ColumnElement[bool] = column > value
    return or_(after, column.is_(None)) if key.nullable else after


def _after(keys: list[_SortKey], values: list[Any]) -> ColumnElement[bool]:
    # (a, b, c) after (x, y, z), each in its own direction:
    # a >= x AND (a > x OR (a = x AND b > y) OR (a = x AND b = y AND c > z))
    # The leading a >= x is implied by the rest, but only it can be an index condition:
    # without it an index on (..., a) is read from the first row and the OR filters
    # away every row of the earlier pages, so page n cost n pages (docs/PERFORMANCE.md).
    # With NULLs "=" is IS NULL and ">" follows PostgreSQL's default NULL placement.
    # `values` are bound parameters (None where the cursor holds NULL).
    clauses = []
    for i, key in enumerate(keys):
        equal = [_equal(keys[j], values[j]) for j in range(i)]
        clauses.append(and_(*equal, _step(key, values[i])))
    first, value = keys[0], values[0]
    if first.nullable:
        bound = or_(_equal(first, value), _step(first, value))
    else:
        bound = first.column <= value if first.descending else first.column >= value
    return and_(bound, or_(*clauses))


# The statements find_many runs, built once per shape (model, filters with their
# variants, sort, cursor with its NULLs, offset or not) with every value bound: a call
# checks and binds its values and reuses the statement, whose SQLAlchemy cache key is
# then already known. Shapes are bounded by the models' fields and operators; the cache
# is emptied should it ever hold more than _PREPARED_MAX of them.
_PREPARED_MAX = 1024
_PREPARED: dict[tuple[Any, ...], Select[Any]] = {}
_COLUMNS: dict[type[Base], dict[str, Column[Any]]] = {}
_SORT_KEYS: dict[tuple[type[Base], tuple[str, ...]], list[_SortKey]] = {}


def _columns_of(model: type[Base]) -> dict[str, Column[Any]]:
    found = _COLUMNS.get(model)
    if found is None:
        found = _COLUMNS[model] = _columns(model)
    return found


def _sort_keys_of(
    model: type[Base], columns: dict[str, Column[Any]], order_by: Sequence[str]
) -> list[_SortKey]:
    spec = (order_by,) if isinstance(order_by, str) else tuple(order_by)
    found = _SORT_KEYS.get((model, spec))
    if found is None:
        found = _sort_keys(model, columns, spec)
        if len(_SORT_KEYS) >= _PREPARED_MAX:
            _SORT_KEYS.clear()
        _SORT_KEYS[(model, spec)] = found
    return found


def _build(
    model: type[Base],
    columns: dict[str, Column[Any]],
    *,
    filters: tuple[_FilterShape, ...],
    keys: list[_SortKey],
    cursor: tuple[bool, ...] | None,
    offset: bool,
) -> Select[Any]:
    stmt = select(model)
    for i, shape in enumerate(filters):
        clause = _filter_clause(model, columns, shape, f"f{i}")
        if clause is not None:
            stmt = stmt.where(clause)
    if cursor is not None:
        values = [
            None if null else bindparam(f"c{i}", type_=columns[k.name].type)
            for i, (k, null) in enumerate(zip(keys, cursor, strict=True))
        ]
        stmt = stmt.where(_after(keys, values))
    # ASC is NULLS LAST and DESC NULLS FIRST by default; _step relies on that.
    stmt = stmt.order_by(*(k.column.desc() if k.descending else k.column.asc() for k in keys))
    if offset:
        stmt = stmt.offset(bindparam("offset", type_=Integer))
    return stmt.limit(bindparam("limit", type_=Integer))


def _prepare(
    model: type[T],
    *,
    filters: Mapping[str, Any] | None,
    order_by: Sequence[str],
    limit: int,
    offset: int,
    after: str | None,
) -> tuple[Select[Any], dict[str, Any], list[_SortKey]]:
    """The statement of this shape, the values to bind into it, and the sort keys."""
    if not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise QueryError(f"limit must be between 1 and {MAX_LIMIT}, got {limit!r}")
    if not isinstance(offset, int) or not 0 <= offset <= MAX_OFFSET:
        raise QueryError(
            f"offset must be between 0 and {MAX_OFFSET}, got {offset!r}; use the cursor for deep pages"
        )
    if after is not None and offset:
        raise QueryError("use either offset or a cursor, not both")
    columns = _columns_of(model)
    params: dict[str, Any] = {"limit": limit + 1}
    shapes: list[_FilterShape] = []
    for i, (key, value) in enumerate((filters or {}).items()):
        name, op = _field_and_operator(model, columns, key)
        variant, bound = _filter_binding(columns, name, op, key, value)
        shapes.append((name, op, variant))
        params[f"f{i}"] = bound
    keys = _sort_keys_of(model, columns, order_by)
    cursor: tuple[bool, ...] | None = None
    if after is not None:
        values = _decode_cursor(after, keys, columns)
        cursor = tuple(v is None for v in values)
        params.update({f"c{i}": v for i, v in enumerate(values) if v is not None})
    if offset:
        params["offset"] = offset
    sort = tuple((k.name, k.descending) for k in keys)
    shape = (model, tuple(shapes), sort, cursor, bool(offset))
    stmt = _PREPARED.get(shape)
    if stmt is None:
        stmt = _build(
            model, columns, filters=tuple(shapes), keys=keys, cursor=cursor, offset=bool(offset)
        )
        if len(_PREPARED) >= _PREPARED_MAX:
            _PREPARED.clear()
        _PREPARED[shape] = stmt
    return stmt, params, keys


def build_find_many(
    model: type[T],
    *,
    filters: Mapping[str, Any] | None = None,
    order_by: Sequence[str] = (),
    limit: int = 50,
    offset: int = 0,
    after: str | None = None,
) -> tuple[Select[Any], list[_SortKey]]:
    """The SELECT that find_many runs (one row more than `limit`, to know if more follow),
    with this call's values in it."""
    stmt, params, keys = _prepare(
        model, filters=filters, order_by=order_by, limit=limit, offset=offset, after=after
    )
    return stmt.params(params), keys


def _page(rows: list[T], keys: list[_SortKey], limit: int) -> PageResult[T]:
    more = len(rows) > limit
    items = rows[:limit]
    cursor = None
    if more and items:
        cursor = _encode_cursor(keys, items[-1])
    return PageResult(items, cursor)


def find_many(
    session: Session,
    model: type[T],
    *,
    filters: Mapping[str, Any] | None = None,
    order_by: Sequence[str] = (),
    limit: int = 50,
    offset: int = 0,
    after: str | None = None,
) -> PageResult[T]:
    """List rows of `model` visible to the session's tenant.

    `filters` maps `field` or `field__op` (ops: eq, ne, lt, lte, gt, gte, in, not_in,
    is_null, contains, startswith; contains and startswith on text fields only; a JSONB
    field takes eq, ne, is_null and contains, which is containment: `{"plan": "pro"}`)
    to a value; `order_by` lists fields, `-field` for
    descending. Returns the items and, when more follow, `next_cursor` for `after=`.
    """
    stmt, params, keys = _prepare(
        model, filters=filters, order_by=order_by, limit=limit, offset=offset, after=after
    )
    rows: list[T] = list(session.scalars(stmt, params))
    return _page(rows, keys, limit)


async def find_many_async(
    session: AsyncSession,
    model: type[T],
    *,
    filters: Mapping[str, Any] | None = None,
    order_by: Sequence[str] = (),
    limit: int = 50,
    offset: int = 0,
    after: str | None = None,
) -> PageResult[T]:
    """find_many for an AsyncSession."""
    stmt, params, keys = _prepare(
        model, filters=filters, order_by=order_by, limit=limit, offset=offset, after=after
    )
    rows: list[T] = list(await session.scalars(stmt, params))
    return _page(rows, keys, limit)
