"""Write a realistic Payload-style mongoexport dump, with a few deliberately bad documents.

    python -m platform_db.importer.sampledump DIR [--documents 5000] [--tenants 3] [--seed 1]

Several tenants (multi-tenant plugin), users in one or two tenants, pages with Lexical
rich text and drafts, form-builder forms and their submissions spread over the last
eighteen months, and leads. Files come in both mongoexport forms (JSON lines, and
`--jsonArray` on one line) and every document is written by bson.json_util in relaxed
or canonical Extended JSON v2 at random. The bad documents cover every reason the
importer rejects for; `generate()` returns what a correct import must produce, for the
tests, the demo and the benchmark.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import struct
import sys
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bson import Decimal128, Int64, ObjectId, json_util
from bson.binary import Binary, UuidRepresentation
from bson.json_util import CANONICAL_JSON_OPTIONS, RELAXED_JSON_OPTIONS, JSONOptions

_RELAXED = JSONOptions(
    json_mode=RELAXED_JSON_OPTIONS.json_mode, uuid_representation=UuidRepresentation.STANDARD
)
_CANONICAL = JSONOptions(
    json_mode=CANONICAL_JSON_OPTIONS.json_mode, uuid_representation=UuidRepresentation.STANDARD
)

_FIRST = ("Ada", "Grace", "Linus", "Barbara", "Ken", "Margaret", "Dennis", "Frances", "Alan")
_LAST = ("Lovelace", "Hopper", "Torvalds", "Liskov", "Thompson", "Hamilton", "Ritchie", "Turing")
_WORDS = [
    "homes",
    "garden",
    "roof",
    "loan",
    "survey",
    "contract",
    "smile",
    "implant",
    "lawyer",
    "estate",
    "offer",
    "viewing",
    "appointment",
    "invoice",
    "quote",
    "service",
    "plan",
    "team",
    "office",
    "city",
    "price",
    "guide",
    "market",
]
_TENANTS = (
    ("Acme Realty", "acme-realty", "acme-realty.com"),
    ("Bright Dental", "bright-dental", None),
    ("Cobalt Legal", "cobalt-legal", "cobalt.law"),
    ("Delta Roofing", "delta-roofing", None),
    ("Evergreen Gardens", "evergreen", "evergreen-gardens.co.uk"),
)


@dataclass(frozen=True, slots=True)
class BadDocument:
    collection: str
    file: str
    line: int
    item: int
    reason: str  # a fragment the importer's reason must contain
    tenant: str | None  # ObjectId hex of the tenant it claims, if any


@dataclass(slots=True)
class SampleManifest:
    """What a correct import of the dump produces."""

    directory: Path
    tenants: list[str] = field(default_factory=list)  # ObjectId hex
    # collection -> tenant ObjectId hex -> good rows (users: one per membership)
    good: dict[str, Counter[str]] = field(default_factory=dict)
    bad: list[BadDocument] = field(default_factory=list)
    documents: int = 0
    months: set[str] = field(default_factory=set)  # YYYY_MM of good submissions

    def good_rows(self, collection: str) -> int:
        return sum(self.good.get(collection, Counter()).values())


class _Ids:
    """Deterministic ObjectIds whose time part is the document's creation time."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.counter = rng.randrange(1 << 20)

    def at(self, when: dt.datetime) -> ObjectId:
        self.counter = (self.counter + 1) % (1 << 24)
        raw = struct.pack(">I", int(when.timestamp())) + self.rng.randbytes(5)
        return ObjectId(raw + self.counter.to_bytes(3, "big"))


def _lexical(paragraphs: list[str], heading: str | None = None) -> dict[str, Any]:
    children: list[dict[str, Any]] = []
    if heading:
        children.append(
            {
                "type": "heading",
                "tag": "h2",
                "version": 1,
                "children": [{"type": "text", "text": heading, "format": 0, "version": 1}],
            }
        )
    for p in paragraphs:
        children.append(
            {
                "type": "paragraph",
                "version": 1,
                "children": [{"type": "text", "text": p, "format": 0, "version": 1}],
            }
        )
    return {"root": {"type": "root", "version": 1, "direction": "ltr", "children": children}}


class _Writer:
    """One collection's file in one of mongoexport's two forms."""

    def __init__(self, path: Path, *, array: bool, mode: str, rng: random.Random) -> None:
        self.path = path
        self.array = array
        self.mode = mode
        self.rng = rng
        self.out = path.open("w", encoding="utf-8")
        self.line = 1
        self.item = 0
        if array:
            self.out.write("[")

    def _encode(self, doc: dict[str, Any]) -> str:
        mode = self.mode if self.mode != "mixed" else self.rng.choice(("relaxed", "canonical"))
        return json_util.dumps(doc, json_options=_CANONICAL if mode == "canonical" else _RELAXED)

    def write(self, doc: dict[str, Any] | str) -> tuple[int, int]:
        """Write a document (or raw, possibly broken, text); return its (line, item)."""
        text = doc if isinstance(doc, str) else self._encode(doc)
        self.item += 1
        if self.array:
            if self.item > 1:
                self.out.write(",")
            self.out.write(text)
            return 1, self.item
        self.out.write(text + "\n")
        self.line += 1
        return self.line - 1, self.item

    def close(self) -> None:
        if self.array:
            self.out.write("]\n")
        self.out.close()


def generate(  # noqa: PLR0912, PLR0915 - the sample, read top to bottom
    directory: Path,
    *,
    documents: int = 5000,
    tenants: int = 3,
    seed: int = 1,
    form: str = "mixed",  # "lines", "array" or "mixed"
    mode: str = "mixed",  # "relaxed", "canonical" or "mixed"
    bad: bool = True,
    now: dt.datetime | None = None,
) -> SampleManifest:
    """Write the dump into `directory` (created if missing); return the expectations."""
    if not 1 <= tenants <= len(_TENANTS):
        raise ValueError(f"tenants must be between 1 and {len(_TENANTS)}")
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)  # noqa: S311 - sample data, not secrets
    ids = _Ids(rng)
    now = (now or dt.datetime(2026, 11, 1, tzinfo=dt.UTC)).replace(microsecond=0)
    manifest = SampleManifest(directory)
    arrays = {
        "lines": set(),
        "array": {"tenants", "users", "pages", "forms", "form-submissions", "leads"},
        "mixed": {"tenants", "forms", "form-submissions"},
    }[form]
    writers: dict[str, _Writer] = {}
    # Its own generator, so the documents are the same whatever the form and mode.
    mode_rng = random.Random(f"{seed}:modes")  # noqa: S311 - sample data, not secrets

    def writer(name: str) -> _Writer:
        if name not in writers:
            writers[name] = _Writer(
                directory / f"{name}.json", array=name in arrays, mode=mode, rng=mode_rng
            )
        return writers[name]

    def good(name: str, tenant: ObjectId, doc: dict[str, Any]) -> None:
        writer(name).write(doc)
        manifest.documents += 1
        manifest.good.setdefault(name, Counter())[str(tenant)] += 1

    def broken(name: str, doc: dict[str, Any] | str, reason: str, tenant: ObjectId | None) -> None:
        line, item = writer(name).write(doc)
        manifest.documents += 1
        manifest.bad.append(
            BadDocument(name, f"{name}.json", line, item, reason, str(tenant) if tenant else None)
        )

    def when(days_back: int) -> dt.datetime:
        """A time within the last `days_back` days."""
        return now - dt.timedelta(seconds=rng.randrange(days_back * 86_400))

    def words(n: int) -> str:
        return " ".join(rng.choice(_WORDS) for _ in range(n))

    per_tenant = max(documents // tenants, 40)
    n_users = max(per_tenant // 20, 3)
    n_pages = max(per_tenant // 8, 4)
    n_forms = 3
    n_leads = max(per_tenant // 5, 4)
    n_subs = max(per_tenant - n_users - n_pages - n_forms - n_leads, 10)

    tenant_ids: list[ObjectId] = []
    for name, slug, domain in _TENANTS[:tenants]:
        created = when(900)
        tid = ids.at(created)
        tenant_ids.append(tid)
        doc: dict[str, Any] = {
            "_id": tid,
            "name": name,
            "slug": slug,
            "createdAt": created,
            "updatedAt": created + dt.timedelta(days=3),
            "__v": 0,
        }
        if domain:
            doc["domain"] = domain
        good("tenants", tid, doc)
    manifest.tenants = [str(t) for t in tenant_ids]
    ghost_tenant = ids.at(when(800))  # referenced, never exported

    users: dict[ObjectId, list[ObjectId]] = {t: [] for t in tenant_ids}
    forms: dict[ObjectId, list[ObjectId]] = {t: [] for t in tenant_ids}
    subs: dict[ObjectId, list[ObjectId]] = {t: [] for t in tenant_ids}
    for ti, tid in enumerate(tenant_ids):
        for u in range(n_users):
            created = when(700)
            uid = ids.at(created)
            first, last = rng.choice(_FIRST), rng.choice(_LAST)
            memberships = [
                {"tenant": tid, "roles": [rng.choice(("tenant-admin", "tenant-viewer"))]}
            ]
            # The first user of each tenant also works for the next tenant.
            if u == 0 and len(tenant_ids) > 1:
                other = tenant_ids[(ti + 1) % len(tenant_ids)]
                memberships.append({"tenant": other, "roles": ["tenant-viewer"]})
                users[other].append(uid)
                manifest.good.setdefault("users", Counter())[str(other)] += 1
            users[tid].append(uid)
            good(
                "users",
                tid,
                {
                    "_id": uid,
                    "email": f"{first}.{last}.{ti}.{u}@Example.com",
                    "firstName": first,
                    "lastName": last,
                    "roles": ["user"],
                    "tenants": memberships,
                    "hash": "x" * 20,
                    "salt": "y" * 8,
                    "loginAttempts": 0,
                    "createdAt": created,
                    "updatedAt": created,
                },
            )

        for p in range(n_pages):
            created = when(600)
            pid = ids.at(created)
            status = rng.choice(("published", "published", "draft"))
            title = f"{words(3).title()} {p}"
            doc = {
                "_id": pid,
                "tenant": tid,
                "title": title,
                "slug": (
                    "home"
                    if p == 0
                    else f"{'blog/' if p % 3 == 0 else ''}{words(2).replace(' ', '-')}-{p}"
                ),
                "_status": status,
                "content": _lexical([words(12), words(20)], heading=words(3).title()),
                "meta": {"title": title, "description": words(8)},
                "author": rng.choice(users[tid]),
                "createdAt": created,
                "updatedAt": created + dt.timedelta(hours=5),
            }
            if status == "published" and p % 2:
                doc["publishedAt"] = created + dt.timedelta(hours=1)
            if p == 1:
                doc["legacyChecksum"] = Binary(b"\x00\x01payload", 0)
            good("pages", tid, doc)

        for f in range(n_forms):
            created = when(560)
            fid = ids.at(created)
            forms[tid].append(fid)
            title = "Contact" if f < 2 else "Request a quote"  # two forms with one title
            good(
                "forms",
                tid,
                {
                    "_id": fid,
                    "tenant": tid,
                    "title": title,
                    "fields": [
                        {"blockType": "text", "name": "name", "label": "Name", "required": True},
                        {"blockType": "email", "name": "email", "label": "Email", "required": True},
                        {"blockType": "textarea", "name": "message", "label": "Message"},
                    ],
                    "submitButtonLabel": "Send",
                    "confirmationType": "message",
                    "confirmationMessage": _lexical(["Thanks, we will be in touch."]),
                    "emails": [],
                    "createdAt": created,
                    "updatedAt": created,
                },
            )

        for _ in range(n_subs):
            created = when(540)
            sid = ids.at(created)
            subs[tid].append(sid)
            first, last = rng.choice(_FIRST), rng.choice(_LAST)
            good(
                "form-submissions",
                tid,
                {
                    "_id": sid,
                    "tenant": tid,
                    "form": rng.choice(forms[tid]),
                    "submissionData": [
                        {"field": "name", "value": f"{first} {last}"},
                        {"field": "email", "value": f"{first}.{last}@mail.example".lower()},
                        {"field": "message", "value": words(15)},
                    ],
                    "createdAt": created,
                    "updatedAt": created,
                },
            )
            manifest.months.add(f"{created:%Y_%m}")

        for i in range(n_leads):
            created = when(500)
            lid = ids.at(created)
            status = rng.choice(("new", "contacted", "qualified", "converted", "lost"))
            doc = {
                "_id": lid,
                "tenant": tid,
                "email": f"lead{i}.{ti}@Mail.Example",
                "firstName": rng.choice(_FIRST),
                "lastName": rng.choice(_LAST),
                "company": words(2).title(),
                "source": rng.choice(("website", "referral", "ads")),
                "status": status,
                "score": Int64(rng.randrange(101)),
                "form": rng.choice(forms[tid]),
                "submission": rng.choice(subs[tid]),
                "budget": Decimal128(f"{rng.randrange(1000, 90000)}.50"),
                "visitorId": uuid.UUID(int=rng.getrandbits(128), version=4),
                "createdAt": created,
                "updatedAt": created + dt.timedelta(days=2),
            }
            if status == "converted" and i % 2:
                doc["convertedAt"] = created + dt.timedelta(days=2)
            good("leads", tid, doc)

    if bad:
        a, b = tenant_ids[0], tenant_ids[-1]
        t0 = when(100)
        broken(
            "pages",
            '{"_id": {"$oid": "' + str(ids.at(t0)) + '"}, "title": "Broken',
            "invalid JSON",
            None,
        )
        broken(
            "pages",
            {"_id": ids.at(t0), "tenant": a, "slug": "no-title", "createdAt": t0},
            "missing required field title",
            a,
        )
        broken(
            "pages",
            {
                "_id": ids.at(t0),
                "tenant": a,
                "title": "Null\x00byte",
                "slug": "nul",
                "createdAt": t0,
            },
            "NUL character",
            a,
        )
        broken(
            "pages",
            {
                "_id": ids.at(t0),
                "tenant": ghost_tenant,
                "title": "Orphan",
                "slug": "orphan",
                "createdAt": t0,
            },
            "tenant does not exist",
            ghost_tenant,
        )
        broken(
            "leads",
            {"_id": ids.at(t0), "tenant": a, "email": "not-an-email", "createdAt": t0},
            "bad email",
            a,
        )
        broken(
            "leads",
            {"_id": ids.at(t0), "tenant": a, "email": "x@y.example", "score": 150, "createdAt": t0},
            "outside 0..100",
            a,
        )
        broken(
            "form-submissions",
            {
                "_id": ids.at(t0),
                "tenant": a,
                "form": ids.at(t0),
                "submissionData": [],
                "createdAt": t0,
            },
            "dangling reference",
            a,
        )
        if a != b:
            broken(
                "form-submissions",
                {
                    "_id": ids.at(t0),
                    "tenant": a,
                    "form": forms[b][0],
                    "submissionData": [{"field": "x", "value": "y"}],
                    "createdAt": t0,
                },
                "cross-tenant reference",
                a,
            )
        broken(
            "form-submissions",
            '{"_id": {"$oid": "' + str(ids.at(t0)) + '"}, "form": }',
            "invalid JSON",
            None,
        )
        dup_email = f"{_FIRST[0]}.dup@example.com"
        good(
            "users",
            a,
            {"_id": ids.at(t0), "email": dup_email, "tenants": [{"tenant": a}], "createdAt": t0},
        )
        broken(
            "users",
            {
                "_id": ids.at(t0),
                "email": dup_email.upper(),
                "tenants": [{"tenant": a}],
                "createdAt": t0,
            },
            "used by another document",
            a,
        )
    for w in writers.values():
        w.close()
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m platform_db.importer.sampledump",
        description="Write a Payload-style mongoexport dump with a few bad documents.",
    )
    parser.add_argument("directory", type=Path)
    parser.add_argument("--documents", type=int, default=5000, help="about this many (5000)")
    parser.add_argument("--tenants", type=int, default=3, help=f"1 to {len(_TENANTS)} (3)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--form", choices=("lines", "array", "mixed"), default="mixed")
    parser.add_argument("--mode", choices=("relaxed", "canonical", "mixed"), default="mixed")
    parser.add_argument("--no-bad", action="store_true", help="only good documents")
    args = parser.parse_args(argv)
    m = generate(
        args.directory,
        documents=args.documents,
        tenants=args.tenants,
        seed=args.seed,
        form=args.form,
        mode=args.mode,
        bad=not args.no_bad,
    )
    summary = {
        "directory": str(m.directory),
        "documents": m.documents,
        "good_rows": {c: m.good_rows(c) for c in m.good},
        "bad": [f"{b.file}:{b.line} item {b.item}: {b.reason}" for b in m.bad],
    }
    json.dump(summary, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
