"""Parse Extended JSON documents with bson.json_util and turn BSON values into JSON for jsonb.

Both Extended JSON v2 modes (relaxed and canonical) and the legacy shell-export forms
are read by `bson.json_util`: `$oid`, `$date` (ISO text, `$numberLong` or a number),
`$numberLong`, `$numberInt`, `$numberDouble`, `$numberDecimal`, `$binary` (both
layouts), `$uuid`, `$regularExpression`, `$timestamp`, ... A document's values come out
as Python/BSON types: ObjectId, tz-aware datetime (UTC), Int64, Decimal128, uuid.UUID,
bytes/Binary and so on, identical for the two modes.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
import re
import uuid
from functools import partial
from typing import Any

from bson import Binary, Decimal128, Int64, ObjectId, json_util
from bson.binary import UuidRepresentation
from bson.errors import BSONError
from bson.json_util import JSONOptions

from platform_db.importer.ids import describe

JSON_OPTIONS = JSONOptions(
    tz_aware=True,
    tzinfo=dt.UTC,
    # $binary subtype 4 and $uuid become uuid.UUID; subtype 3 (legacy) stays Binary.
    uuid_representation=UuidRepresentation.STANDARD,
)
_OBJECT_HOOK = partial(json_util.object_hook, json_options=JSON_OPTIONS)
# mongoexport writes relaxed dates as ISO 8601 in UTC with milliseconds. json_util parses
# them with strptime, which is half of its time on a typical document; exactly this
# form (and nothing else) is read by datetime.fromisoformat instead, which gives the
# identical value (tests compare the two). Everything else goes to json_util.
_ISO_UTC_MS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,3})?Z")


def _object_hook(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and "$date" in obj:
        value = obj["$date"]
        if type(value) is str and _ISO_UTC_MS.fullmatch(value):
            return dt.datetime.fromisoformat(value)
    return _OBJECT_HOOK(obj)


_DECODER = json.JSONDecoder(object_hook=_object_hook)
_BAD_TEXT = re.compile("[\x00\ud800-\udfff]")


class RejectError(ValueError):
    """A document (or one of its rows) cannot be imported; the message is the reason."""


# MongoDB refuses documents nested deeper than 100 levels; a deeper one in an export is
# not a real document, and Python's JSON parser and encoder fail on a few hundred.
MAX_NESTING = 100
TOO_DEEP = f"nested deeper than {MAX_NESTING} levels (MongoDB's limit): not a real document"


def nesting_depth(value: Any) -> int:
    """How deeply objects and arrays nest in a parsed document (without recursion)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        children = node.values() if isinstance(node, dict) else node
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return deepest


def parse_document(text: bytes) -> dict[str, Any]:
    """One Extended JSON document, or RejectError saying why it is not one."""
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RejectError(f"invalid UTF-8 at byte {exc.start} of the document") from None
    try:
        doc = _DECODER.decode(decoded)
    except json.JSONDecodeError as exc:
        where = (
            f"line {exc.lineno}, column {exc.colno}" if exc.lineno > 1 else f"column {exc.colno}"
        )
        raise RejectError(f"invalid JSON: {exc.msg} ({where})") from None
    except RecursionError:
        raise RejectError(TOO_DEEP) from None
    except (BSONError, TypeError, ValueError, KeyError, OverflowError) as exc:
        raise RejectError(f"invalid Extended JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise RejectError(f"not a document: a JSON {type(doc).__name__} instead of an object")
    # Only a document with that many brackets can nest that deep: the walk is rarely needed.
    if text.count(b"{") + text.count(b"[") > MAX_NESTING and nesting_depth(doc) > MAX_NESTING:
        raise RejectError(TOO_DEEP)
    return doc


def check_text(value: str, field: str) -> str:
    """Refuse text PostgreSQL cannot store (NUL) or UTF-8 cannot encode (lone surrogates)."""
    bad = _BAD_TEXT.search(value)
    if bad is not None:
        if bad.group() == "\x00":
            raise RejectError(f"NUL character in {field} (PostgreSQL text cannot hold it)")
        raise RejectError(f"invalid Unicode (a lone surrogate) in {field}")
    return value


def to_json(value: Any, field: str) -> Any:  # noqa: PLR0912 - one branch per BSON type
    """A BSON value as plain JSON for a jsonb column, refusing text PostgreSQL cannot store.

    ObjectIds become their hex text, datetimes ISO 8601 text in UTC (as Payload's API
    shows them), UUIDs their text, Int64 an integer. Values JSON has no form for keep
    their Extended JSON form (`{"$numberDecimal": "1.10"}`, `{"$binary": ...}`, NaN as
    `{"$numberDouble": "NaN"}`), so nothing is lost or silently rounded.
    """
    if value is None or isinstance(value, bool | str):
        if isinstance(value, str):
            check_text(value, field)
        return value
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            check_text(k, f"a key of {field}")
            out[k] = to_json(v, f"{field}.{k}")
        return out
    if isinstance(value, list | tuple):
        return [to_json(v, f"{field}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Int64):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$numberDouble": repr(value).capitalize()}
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, dt.datetime):
        return iso_utc(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Decimal128):
        return {"$numberDecimal": str(value)}
    if isinstance(value, Binary | bytes):
        subtype = value.subtype if isinstance(value, Binary) else 0
        return {
            "$binary": {
                "base64": base64.b64encode(bytes(value)).decode(),
                "subType": f"{subtype:02x}",
            }
        }
    # Regex, Code, Timestamp, MinKey, MaxKey, DBRef, DatetimeMS: their relaxed form.
    try:
        converted: Any = json.loads(json_util.dumps(value, json_options=JSON_OPTIONS))
    except (TypeError, ValueError) as exc:
        raise RejectError(f"{field}: cannot represent {describe(value)} as JSON ({exc})") from None
    return converted


def iso_utc(value: dt.datetime) -> str:
    """ISO 8601 in UTC with milliseconds and a Z, like MongoDB shows dates."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def dumps(value: Any) -> str:
    """Compact JSON text for COPY into a jsonb column."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
