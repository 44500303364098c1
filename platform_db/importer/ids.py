"""Deterministic ids: a MongoDB `_id` becomes the same UUID on every run.

An ObjectId (12 bytes) is embedded whole in a version-8 UUID, so the original id can be
read back from the row itself, in every table (users and form_submissions have no free
JSON column to keep it in):

    ObjectId  5f1e2d3c4b5a697887766554
    UUID      5f1e2d3c-4b5a-8697-8887-7665546f6964
              ^^^^^^^^ ^^^^  ^^^  ^^^ ^^^^^^      the ObjectId's 24 hex digits, in order
                            8    8                version 8, RFC 9562 variant
                                        6f6964   "oid" in ASCII: marks the layout

The ObjectId starts with its creation time, so these UUIDs sort by creation time like
the ObjectIds did (friendly to B-tree indexes). In SQL:

    -- ObjectId -> UUID
    (substr(o, 1, 12) || '8' || substr(o, 13, 3) || '8' || substr(o, 16, 9) || '6f6964')::uuid
    -- UUID -> ObjectId
    substr(h, 1, 12) || substr(h, 14, 3) || substr(h, 18, 9)  -- h = replace(id::text, '-', '')

Other `_id` types: a UUID (`$uuid`, binary subtype 4) is kept as it is; a 24-digit hex
string is read as an ObjectId (Payload stores relationship ids as such strings unless
`relationshipsAsObjectID` is on); any other string or integer becomes a version-5 UUID
of the table and the value, so references still resolve but the value is not
recoverable from the UUID (it is kept in the row's JSON column where the table has one).
"""

from __future__ import annotations

import functools
import re
import uuid
from typing import Any

from bson import Int64, ObjectId

MARKER = "6f6964"
# Fixed forever: changing it would give every non-ObjectId document a new id.
NAMESPACE = uuid.UUID("6c1b3f0e-6a55-5d0e-9a0b-706c6174666f")

_HEX24 = re.compile(r"^[0-9a-fA-F]{24}$")


class InvalidReferenceError(ValueError):
    """A value cannot be read as a document id."""


def uuid_from_object_id(oid: ObjectId | str) -> uuid.UUID:
    """The UUID of an ObjectId (or of its 24 hex digits)."""
    if isinstance(oid, ObjectId):
        return _from_binary(oid.binary)
    h = str(oid)
    if not _HEX24.match(h):
        raise InvalidReferenceError(f"not an ObjectId: {oid!r}")
    return _from_binary(bytes.fromhex(h))


@functools.lru_cache(maxsize=8192)  # tenants and forms are referenced over and over
def _from_binary(raw: bytes) -> uuid.UUID:
    o = int.from_bytes(raw, "big")  # 96 bits: 12 + 3 + 9 hex digits
    return uuid.UUID(
        int=(o >> 48) << 80
        | 0x8 << 76
        | ((o >> 36) & 0xFFF) << 64
        | 0x8 << 60
        | (o & 0xF_FFFF_FFFF) << 24
        | int(MARKER, 16)
    )


def object_id_from_uuid(value: uuid.UUID | str) -> str | None:
    """The ObjectId (24 hex digits) a UUID was made from, or None if it was not."""
    h = uuid.UUID(str(value)).hex
    if h[12] != "8" or h[16] != "8" or not h.endswith(MARKER):
        return None
    return h[0:12] + h[13:16] + h[17:26]


def id_to_uuid(value: Any, *, table: str) -> uuid.UUID:
    """The UUID of a document id of `table` (the table decides the namespace of non-ObjectIds).

    Raises InvalidReferenceError for values that cannot be ids (None, floats, objects).
    """
    if isinstance(value, ObjectId):
        return uuid_from_object_id(value)
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str):
        text = value.strip()
        if _HEX24.match(text):
            return uuid_from_object_id(text)
        if not text:
            raise InvalidReferenceError("empty id")
        try:
            return uuid.UUID(text) if len(text) == 36 else _named(table, "s", text)
        except ValueError:
            return _named(table, "s", text)
    if isinstance(value, Int64 | int) and not isinstance(value, bool):
        return _named(table, "i", str(int(value)))
    raise InvalidReferenceError(f"not a document id: {describe(value)}")


def _named(table: str, kind: str, text: str) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, f"{table}\x1f{kind}\x1f{text}")


def display_id(value: Any) -> str:
    """A short text form of a document id for messages."""
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, uuid.UUID):
        oid = object_id_from_uuid(value)
        return oid if oid is not None else str(value)
    return describe(value)


def describe(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
