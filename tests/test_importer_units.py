"""The importer's parts that need no database: reader, Extended JSON, ids, mapping, checks."""

from __future__ import annotations

import datetime as dt
import gzip
import io
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from bson import Binary, Decimal128, Int64, ObjectId, json_util
from bson.binary import UuidRepresentation
from bson.json_util import CANONICAL_JSON_OPTIONS, RELAXED_JSON_OPTIONS, JSONOptions
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from platform_db.importer import reader
from platform_db.importer.convert import Converter
from platform_db.importer.documents import RejectError, parse_document
from platform_db.importer.ids import (
    id_to_uuid,
    object_id_from_uuid,
    uuid_from_object_id,
)
from platform_db.importer.mapping import MappingError, default_mapping, mapping_from_dict
from platform_db.importer.reader import SourceFile, read_documents
from platform_db.importer.richtext import plain_text

RELAXED = JSONOptions(
    json_mode=RELAXED_JSON_OPTIONS.json_mode, uuid_representation=UuidRepresentation.STANDARD
)
CANONICAL = JSONOptions(
    json_mode=CANONICAL_JSON_OPTIONS.json_mode, uuid_representation=UuidRepresentation.STANDARD
)


def docs(data: bytes) -> list[reader.RawDocument]:
    return list(read_documents(io.BytesIO(data)))


# -- reader ------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
documents_strategy = st.lists(
    st.dictionaries(st.text(max_size=6), json_values, max_size=5), max_size=8
)


# The monkeypatched chunk size is the same for every example, so sharing it is fine.
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(documents_strategy, st.sampled_from(["lines", "pretty", "array", "array-pretty"]))
def test_reader_finds_every_document_in_every_form(
    monkeypatch: pytest.MonkeyPatch, items: list[dict[str, Any]], form: str
) -> None:
    # Tiny chunks put strings, escapes and brackets across every chunk boundary.
    monkeypatch.setattr(reader, "CHUNK", 5)
    if form == "lines":
        data = "".join(json.dumps(d) + "\n" for d in items)
    elif form == "pretty":
        data = "".join(json.dumps(d, indent="\t") + "\n" for d in items)
    elif form == "array":
        data = json.dumps(items, separators=(",", ":"))
    else:
        data = json.dumps(items, indent=2)
    found = docs(data.encode())
    assert [json.loads(d.text) for d in found] == items
    assert all(d.problem is None for d in found)
    assert [d.item for d in found] == list(range(1, len(items) + 1))
    raw = data.encode()
    for d in found:  # offsets point at the document's own text (rejects are read back)
        assert raw[d.offset : d.offset + len(d.text)] == d.text


def test_a_broken_document_does_not_hide_the_next_ones() -> None:
    lines = b'{"a": 1}\n{"b": \n\n{"c": 3}\n{\n\t"d": 4\n}\n{\n\t"e": 5\n{"f": 6}\n'
    found = docs(lines)
    assert [(d.line, d.problem is None) for d in found] == [
        (1, True),
        (2, True),  # parsed later: invalid JSON
        (4, True),
        (5, True),
        (8, False),  # a pretty document that never closed
        (10, True),
    ]
    array = b'[{"a":1},{"b":"x}"},{"c": },{"d":[1,{"e":2}]}]'
    found = docs(array)
    assert [d.text for d in found] == [b'{"a":1}', b'{"b":"x}"}', b'{"c": }', b'{"d":[1,{"e":2}]}']
    assert [d.item for d in found] == [1, 2, 3, 4]


def test_a_truncated_array_is_reported() -> None:
    found = docs(b'[{"a":1},\n{"b":2')
    assert found[-1].problem is not None
    assert "truncated" in found[-1].problem
    assert found[-1].line == 2
    found = docs(b'[{"a":1},{"b":2}')
    assert found[-1].problem is not None
    assert "array is closed" in found[-1].problem


def test_gzip_and_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "pages.json.gz"
    path.write_bytes(gzip.compress(b'\xef\xbb\xbf[{"a": 1}, {"b": 2}]'))
    with SourceFile(path) as source:
        found = list(source.documents())
        assert [d.text for d in found] == [b'{"a": 1}', b'{"b": 2}']
        spans = source.read_spans([(d.offset, len(d.text)) for d in found])
    assert [spans[(d.offset, len(d.text))] for d in found] == [d.text for d in found]


# -- Extended JSON -----------------------------------------------------------------------

SAMPLE = {
    "_id": ObjectId("5f1e2d3c4b5a697887766554"),
    "at": dt.datetime(2021, 3, 4, 5, 6, 7, 123000, tzinfo=dt.UTC),
    "long": Int64(2**40),
    "int": 7,
    "double": 1.5,
    "decimal": Decimal128("1234.50"),
    "binary": Binary(b"\x00\x01\x02", 0),
    "uuid": uuid.UUID("3b241101-e2bb-4255-8caf-4136c566a962"),
    "nested": [{"when": dt.datetime(1999, 12, 31, tzinfo=dt.UTC)}],
}


def test_relaxed_and_canonical_parse_to_the_same_values() -> None:
    relaxed = json_util.dumps(SAMPLE, json_options=RELAXED)
    canonical = json_util.dumps(SAMPLE, json_options=CANONICAL)
    assert relaxed != canonical
    assert '"$numberLong"' in canonical
    assert '"$numberDecimal"' in canonical
    a = parse_document(relaxed.encode())
    b = parse_document(canonical.encode())
    assert a == b
    assert a["_id"] == SAMPLE["_id"]
    assert a["at"] == SAMPLE["at"]
    assert a["uuid"] == SAMPLE["uuid"]
    # $date as ISO text, as $numberLong, and $uuid spelled out
    iso = parse_document(
        b'{"d": {"$date": "2021-03-04T05:06:07.123Z"}, "u": {"$uuid": "3b241101-e2bb-4255-8caf-4136c566a962"}}'
    )
    ms = parse_document(b'{"d": {"$date": {"$numberLong": "1614834367123"}}}')
    assert iso["d"] == ms["d"] == SAMPLE["at"]
    assert iso["u"] == SAMPLE["uuid"]


@settings(max_examples=200, deadline=None)
@given(
    st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31)),
    st.sampled_from(["%Y-%m-%dT%H:%M:%S.{ms}Z", "%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S.{cs}Z"]),
)
def test_fast_iso_dates_equal_json_utils(when: dt.datetime, layout: str) -> None:
    """The fromisoformat shortcut for mongoexport's relaxed dates gives json_util's value."""
    text_date = when.strftime(
        layout.format(ms=f"{when.microsecond // 1000:03d}", cs=f"{when.microsecond // 10000:02d}")
    )
    text_date = text_date.rjust(len(text_date) + (4 - len(text_date.split("-")[0])), "0")
    doc = json.dumps({"d": {"$date": text_date}})
    expected = json_util.loads(doc, json_options=RELAXED.with_options(tz_aware=True, tzinfo=dt.UTC))
    assert parse_document(doc.encode()) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (b'{"a": ', "invalid JSON"),
        (b"[1, 2]", "not a document"),
        (b'{"a": {"$oid": "xyz"}}', "invalid Extended JSON"),
        (b'{"a": "\xff"}', "invalid UTF-8"),
    ],
)
def test_parse_errors_say_what_is_wrong(text: bytes, reason: str) -> None:
    with pytest.raises(RejectError, match=reason):
        parse_document(text)


# -- ids ---------------------------------------------------------------------------------


def test_object_ids_become_readable_deterministic_uuids() -> None:
    oid = ObjectId("5f1e2d3c4b5a697887766554")
    u = uuid_from_object_id(oid)
    assert str(u) == "5f1e2d3c-4b5a-8697-8887-7665546f6964"
    assert u.version == 8
    assert object_id_from_uuid(u) == str(oid)
    # The same document by any spelling of its id, from any referencing collection.
    assert id_to_uuid(oid, table="forms") == id_to_uuid(str(oid).upper(), table="leads") == u
    # Other id types: stable, namespaced by table, not mistaken for ObjectIds.
    a = id_to_uuid("home", table="pages")
    assert a == id_to_uuid("home", table="pages") != id_to_uuid("home", table="forms")
    assert object_id_from_uuid(a) is None
    assert id_to_uuid(Int64(42), table="pages") == id_to_uuid(42, table="pages")
    assert object_id_from_uuid(uuid.uuid4()) is None


# -- conversion --------------------------------------------------------------------------

TENANT = ObjectId("5f1e2d3c4b5a697887766000")


def convert(collection: str, doc: dict[str, Any]) -> list[dict[str, Any]]:
    mapping = {c.name: c for c in default_mapping().collections}[collection]
    encoded = json_util.dumps(doc, json_options=RELAXED).encode()
    return [r.values for r in Converter(mapping).convert(parse_document(encoded))]


def page(**fields: Any) -> dict[str, Any]:
    return {"_id": ObjectId(), "tenant": TENANT, "title": "T", "slug": "t", **fields}


@pytest.mark.parametrize(
    ("collection", "doc", "reason"),
    [
        (
            "pages",
            {"_id": ObjectId(), "tenant": TENANT, "slug": "x"},
            "missing required field title",
        ),
        ("pages", page(title="a\x00b"), "NUL character in title"),
        ("pages", page(meta={"k\x00": 1}), "NUL character in a key of meta"),
        ("pages", page(slug="Not a slug!"), "not a valid slug"),
        ("pages", page(title="x" * 301), "longer than 300"),
        ("pages", {"_id": ObjectId(), "title": "T", "slug": "t"}, "missing required field tenant"),
        ("pages", page(tenant={"not": "an id"}), "not a document reference"),
        ("pages", page(_status="live"), "is not one of draft, published, archived"),
        ("leads", {"_id": ObjectId(), "tenant": TENANT, "email": "nope"}, "bad email"),
        (
            "leads",
            {"_id": ObjectId(), "tenant": TENANT, "email": "a@b.co", "score": 101},
            "outside 0..100",
        ),
        ("form-submissions", {"_id": ObjectId(), "tenant": TENANT}, "missing required field form"),
        (
            "form-submissions",
            {
                "_id": ObjectId(),
                "tenant": TENANT,
                "form": ObjectId(),
                "submissionData": [{"field": "a", "value": 1}, {"field": "a", "value": 2}],
            },
            "twice with different values",
        ),
        (
            "form-submissions",
            {"_id": "custom", "tenant": TENANT, "form": ObjectId()},
            "missing createdAt",
        ),
    ],
)
def test_bad_documents_are_rejected_with_a_reason(
    collection: str, doc: dict[str, Any], reason: str
) -> None:
    with pytest.raises(RejectError, match=reason):
        convert(collection, doc)


def test_payload_defaults() -> None:
    [row] = convert(
        "pages",
        page(
            slug="/About/Team/",
            _status="published",
            updatedAt=dt.datetime(2024, 5, 1, tzinfo=dt.UTC),
            content={
                "root": {
                    "type": "root",
                    "children": [
                        {"type": "heading", "children": [{"type": "text", "text": "Hello"}]},
                        {
                            "type": "paragraph",
                            "children": [
                                {"type": "text", "text": "world "},
                                {"type": "link", "children": [{"type": "text", "text": "here"}]},
                            ],
                        },
                    ],
                }
            },
            meta={"description": "SEO"},
        ),
    )
    assert row["slug"] == "about/team"
    assert row["content"] == "Hello\nworld here"
    assert row["published_at"] == dt.datetime(2024, 5, 1, tzinfo=dt.UTC)  # published, no date
    meta = json.loads(row["meta"])
    assert meta["content"]["root"]["type"] == "root"  # the tree stays renderable
    assert meta["meta"] == {"description": "SEO"}
    assert row["excerpt"] == "SEO"
    assert meta["_mongo"]["collection"] == "pages"

    a, b = ObjectId(), ObjectId()
    rows = convert(
        "users",
        {
            "_id": ObjectId(),
            "email": " Ada@Example.COM ",
            "roles": ["user"],
            "tenants": [{"tenant": a, "roles": ["tenant-admin"]}, {"tenant": str(b)}],
            "hash": "secret",
        },
    )
    assert [(r["tenant_id"], r["role"], r["email"]) for r in rows] == [
        (uuid_from_object_id(a), "admin", "ada@example.com"),
        (uuid_from_object_id(b), "viewer", "ada@example.com"),
    ]
    [sub] = convert(
        "form-submissions",
        {
            "_id": ObjectId(),
            "tenant": TENANT,
            "form": {"relationTo": "forms", "value": a},
            "submissionData": [{"field": "email", "value": "x@y.z"}],
        },
    )
    assert sub["form_id"] == uuid_from_object_id(a)
    assert json.loads(sub["data"]) == {"email": "x@y.z"}
    [form] = convert(
        "forms",
        {"_id": ObjectId("5f1e2d3c4b5a697887766abc"), "tenant": TENANT, "title": "Contact us!"},
    )
    assert (form["slug"], form["slug_alt"]) == ("contact-us", "contact-us-766abc")


def test_slate_rich_text() -> None:
    slate = [
        {"type": "h1", "children": [{"text": "Title"}]},
        {"children": [{"text": "Some "}, {"text": "bold", "bold": True}, {"text": " text"}]},
    ]
    assert plain_text(slate) == "Title\nSome bold text"


# -- mapping files -----------------------------------------------------------------------


def test_mapping_file_maps_another_layout() -> None:
    mapping = mapping_from_dict(
        {
            "collections": {
                "posts": {
                    "table": "pages",
                    "fields": {
                        "title": "headline",
                        "slug": ["permalink", "slug"],
                        "excerpt": False,
                    },
                    "values": {"status": {"live": "published"}},
                },
                "leads": {"skip": True},
            }
        }
    )
    names = [c.name for c in mapping.ordered()]
    assert "posts" in names
    assert "leads" not in names
    assert names.index("tenants") < names.index("users") < names.index("posts")
    posts = {c.name: c for c in mapping.collections}["posts"]
    row = (
        Converter(posts)
        .convert(
            {
                "_id": ObjectId(),
                "tenant": TENANT,
                "headline": "H",
                "permalink": "p",
                "status": "live",
                "excerpt": "not imported",
                "createdAt": dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
            }
        )[0]
        .values
    )
    assert (row["title"], row["slug"], row["status"], row["excerpt"]) == (
        "H",
        "p",
        "published",
        None,
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"collections": {"x": {"table": "nope"}}}, "table must be one of"),
        ({"collections": {"pages": {"fields": {"titel": "t"}}}}, "pages has no such field"),
        ({"collections": {"pages": {"fields": {"title": False}}}}, "required and unmapped"),
        ({"collections": {"pages": {"values": {"status": {"x": "gone"}}}}}, "is not one of"),
        (
            {"collections": {"form-submissions": {"fields": {"lead_id": "lead"}}}},
            "cycle",
        ),
        ({"colections": {}}, "unknown top-level keys"),
    ],
)
def test_mapping_errors_are_precise(data: dict[str, Any], message: str) -> None:
    with pytest.raises(MappingError, match=message):
        mapping_from_dict(data)
