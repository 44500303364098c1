"""What `alembic revision --autogenerate` and `alembic check` see beyond tables and columns.

Alembic compares tables, columns, indexes and constraints; it knows nothing of row-level
security, policies, grants, triggers, functions, views, materialized views or pg_cron
jobs. This comparator (registered when this module is imported, as alembic/env.py does)
compares the database with the package's current definitions (platform_db.ddl.definitions:
every function, view and job, and the entities of every tenant table of the target
metadata), kind by kind, by meaning (platform_db.ddl.entities), and emits the three
generic operations of platform_db.migration.operations:

- `create_entity(...)`: missing (for a new `TenantMixin` model: its RLS, policy, grants,
  audit trigger, right after its `op.create_table`);
- `replace_entity(...)`: there, but meaning something else (a policy loosened, a grant
  added, a trigger disabled, a function or a view changed);
- `drop_entity(...)`: there, in the package's scope, and no longer defined (an extra
  policy on a tenant table, a function of schema `platform` nobody defines).

Each detection is logged, as Alembic's own comparators log theirs, and honours the
environment's `include_name` / `include_object` (type_ is the entity's kind).

`prepare_revision` (a process_revision_directives hook, alembic/env.py installs it) then
freezes the revision: every entity it runs is rendered at module level of the revision
(template variable `${entities}` of script.py.mako), and a replaced definition that an
earlier revision holds is pointed at (`replaces="<rev>.<name>"`) rather than copied.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic.autogenerate import comparators
from alembic.autogenerate.api import AutogenContext
from alembic.operations.ops import CreateTableOp, MigrationScript, UpgradeOps
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, text

from platform_db.ddl import definitions
from platform_db.ddl.entities import (
    _HAS_PG_CRON,
    CANNOT_REPLACE_IN_PLACE,
    KINDS,
    Entity,
    PartitionProtection,
    Policy,
    ScheduledJob,
)
from platform_db.ddl.tenant_table import tenant_tables
from platform_db.migration.operations import (
    CreateEntityOp,
    DropEntityOp,
    EntityOp,
    ReplaceEntityOp,
)

log = logging.getLogger("alembic.autogenerate.compare.platform_db")

# The key of context.configure() under which an environment says what it owns.
SCOPE_OPTION = "platform_db_scope"


@dataclass(frozen=True, slots=True)
class Scope:
    """What one Alembic environment owns: these tables (their columns, indexes,
    constraints and tenant-table entities), and, for the package, schema `platform`."""

    tables: frozenset[str]
    package: bool

    def wanted(self, metadata: Any) -> list[Entity]:
        """The entities this environment defines."""
        if self.package:
            return definitions(metadata)
        return [e for t in tenant_tables(metadata) if t.name in self.tables for e in t.entities()]


Filter = Callable[[Entity], bool]


def _existing_tables(conn: Connection, names: Iterable[str]) -> set[str]:
    rows = conn.execute(
        text(
            "SELECT n FROM unnest(CAST(:n AS text[])) n WHERE pg_catalog.to_regclass(n) IS NOT NULL"
        ),
        {"n": sorted(set(names))},
    )
    return {r[0] for r in rows}


def compare_entities(
    conn: Connection,
    wanted: Sequence[Entity],
    *,
    new_tables: Iterable[str] = (),
    include: Filter | None = None,
) -> list[EntityOp]:
    """The operations that make the database hold `wanted` exactly (empty: no drift).

    `new_tables`: tables (`public.notes`) an earlier operation of the same revision
    creates; their entities are created. Entities of tables that neither exist nor are
    created are skipped (the table is going away, or is not this environment's).
    """
    keep = include or (lambda _e: True)
    wanted = [e for e in wanted if keep(e)]
    creating = set(new_tables)
    existing = _existing_tables(conn, {e.table for e in wanted if e.table})
    drops: list[EntityOp] = []
    changes: list[EntityOp] = []
    policy_changed: set[str] = set()
    for kind in KINDS:
        entities = [e for e in wanted if type(e) is kind]
        if not entities:
            continue
        present = [e for e in entities if e.table is None or e.table in existing]
        for e in entities:
            if e.table is not None and e.table not in existing and e.table in creating:
                changes.append(_detected(CreateEntityOp(e)))
        live = kind.read(conn, present) if present else {}
        for e in present:
            have = live.get(e.identity)
            if have is None:
                changes.append(_detected(CreateEntityOp(e)))
                continue
            reasons = e.differences(conn, have)
            if kind is PartitionProtection and not reasons and e.table in policy_changed:
                reasons = ["the parent's policies change"]
            if reasons:
                # PostgreSQL refuses to replace it in place (a function's return type
                # changed): the revision drops the old definition and creates the new one.
                recreate = any(r.startswith(CANNOT_REPLACE_IN_PLACE) for r in reasons)
                replace = ReplaceEntityOp(e, previous=have, recreate=recreate, reasons=reasons)
                changes.append(_detected(replace))
        names = {e.identity for e in entities}
        for identity, have in sorted(live.items()):
            if identity not in names and keep(have):
                drops.append(_detected(DropEntityOp(have)))
        if kind is Policy:
            policy_changed = {o.entity.table for o in [*drops, *changes] if o.entity.table}
    changes.sort(key=_order)
    drops.sort(key=_order, reverse=True)
    return [*drops, *changes]


def _order(operation: EntityOp) -> tuple[int, str, int]:
    """Functions first, then each table's objects together, then views and jobs."""
    entity = operation.entity
    if entity.table is not None:
        return (1, entity.table, entity.rank)
    return (0 if entity.rank < 20 else 2, "", entity.rank)


def _detected(operation: EntityOp) -> EntityOp:
    verb, identity, detail = operation.to_diff_tuple()
    log.info("Detected %s %r%s", verb.replace("_", " "), identity, f": {detail}" if detail else "")
    return operation


def _created_tables(upgrade_ops: UpgradeOps) -> set[str]:
    return {
        f"{o.schema or 'public'}.{o.table_name}"
        for o in upgrade_ops.ops
        if isinstance(o, CreateTableOp) and o.schema in (None, "public")
    }


def _filter(autogen_context: AutogenContext) -> Filter:
    def include(entity: Entity) -> bool:
        table = entity.table
        if table is not None:
            schema, _, name = table.partition(".")
            if not autogen_context.run_name_filters(
                name,
                "table",
                {"schema_name": None if schema == "public" else schema},
            ):
                return False
        schema = entity.identity.split(".")[0]
        parents = {"schema_name": schema, "table_name": table}
        return autogen_context.run_name_filters(
            entity.identity,
            entity.kind,  # type: ignore[arg-type]
            parents,  # type: ignore[arg-type]
        ) and autogen_context.run_object_filters(
            entity,  # type: ignore[arg-type]
            entity.identity,
            entity.kind,  # type: ignore[arg-type]
            False,
            None,
        )

    return include


def _compare(
    autogen_context: AutogenContext, upgrade_ops: UpgradeOps, schemas: set[str | None]
) -> Any:
    conn = autogen_context.connection
    if conn is None or autogen_context.metadata is None or None not in schemas:
        return _CONTINUE
    scope = autogen_context.opts.get(SCOPE_OPTION)
    if not isinstance(scope, Scope):
        # An environment that does not say (an older env.py): the package's view.
        metadata = autogen_context.metadata
        metadatas = metadata if isinstance(metadata, Sequence) else [metadata]
        scope = Scope(tables=frozenset(t for m in metadatas for t in m.tables), package=True)
    wanted = scope.wanted(autogen_context.metadata)
    include = _filter(autogen_context)
    upgrade_ops.ops.extend(
        compare_entities(conn, wanted, new_tables=_created_tables(upgrade_ops), include=include)
    )
    upgrade_ops.ops.extend(
        _jobs_against_history(conn, autogen_context.migration_context, wanted, include)
    )
    return _CONTINUE


def _jobs_against_history(
    conn: Connection, context: MigrationContext, wanted: Sequence[Entity], include: Filter
) -> list[EntityOp]:
    """Where pg_cron is not installed, the catalog holds no jobs to compare with: compare
    the wanted jobs with the newest definitions the revisions hold instead, so that a
    changed schedule still gets a revision (its SQL does nothing here, and schedules the
    job where pg_cron is installed). Jobs no longer wanted are not dropped this way."""
    jobs = [e for e in wanted if isinstance(e, ScheduledJob) and include(e)]
    if not jobs or conn.scalar(text(_HAS_PG_CRON)):
        return []
    history = _history(context)
    operations: list[EntityOp] = []
    for job in jobs:
        found = history.get(job.identity)
        if found is None or not isinstance(found[2], ScheduledJob):
            operations.append(_detected(CreateEntityOp(job, reasons=["no revision schedules it"])))
        elif found[2] != job:
            reason = f"revision {found[0]} schedules {found[2].schedule}: {found[2].command}"
            operations.append(_detected(ReplaceEntityOp(job, previous=found[2], reasons=[reason])))
    return operations


# After Alembic's own table comparison, so entities follow the create_table of their
# table (and precede its drop in the downgrade). Alembic 1.18 orders comparators by
# priority; before it, by registration, and alembic's own register first.
try:
    from alembic.util import DispatchPriority, PriorityDispatchResult

    _CONTINUE: Any = PriorityDispatchResult.CONTINUE
    comparators.dispatch_for("schema", priority=DispatchPriority.LAST)(_compare)
except ImportError:  # Alembic < 1.18
    _CONTINUE = None
    comparators.dispatch_for("schema")(_compare)


def drift(conn: Connection, metadata: Any) -> list[tuple[Any, ...]]:
    """What `alembic check` would report about the tenant tables of `metadata`, as diff
    tuples. For code that has a connection but no Alembic environment (the test plugin)."""
    wanted = [e for t in tenant_tables(metadata) for e in t.entities()]
    return [o.to_diff_tuple() for o in compare_entities(conn, wanted)]


# --------------------------------------------------------------------------------------
# Freezing the revision: module-level definitions and pointers to earlier revisions
# --------------------------------------------------------------------------------------


def _history(context: MigrationContext) -> dict[str, tuple[str, str, Entity]]:
    """Per identity, the newest definition a revision holds: (revision, name, entity)."""
    found: dict[str, tuple[str, str, Entity]] = {}
    script = context.script
    if script is None:
        return found
    for revision in script.walk_revisions():
        for name, value in vars(revision.module).items():
            if isinstance(value, Entity) and value.identity not in found:
                found[value.identity] = (revision.revision, name, value)
    return found


def _variable(entity: Entity, taken: set[str], suffix: str = "") -> str:
    identity = entity.identity.removeprefix("public.").removeprefix("platform.")
    base = re.sub(r"[^a-z0-9]+", "_", f"{identity}_{entity.kind}{suffix}".lower()).strip("_")
    name, n = base, 2
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    taken.add(name)
    return name


def _point_at_history(context: MigrationContext, script: MigrationScript) -> None:
    conn = context.connection
    history = _history(context)
    if conn is None or not history:
        return
    downgrades = [
        o for ops in script.downgrade_ops_list for o in ops.ops if isinstance(o, ReplaceEntityOp)
    ]
    for ops in script.upgrade_ops_list:
        for o in ops.ops:
            if not isinstance(o, ReplaceEntityOp) or o.previous is None:
                continue
            found = history.get(o.entity.identity)
            if found is None or type(found[2]) is not type(o.entity):
                continue
            revision, name, old = found
            if old.differences(conn, o.previous):
                continue  # the database holds something no revision defined: keep it
            reference = f"{revision}.{name}"
            for d in downgrades:
                if d.previous is o.entity and d.entity is o.previous:
                    d.entity, d.previous, d.replace_with = o.entity, None, reference
            o.previous, o.replaces = None, reference


def _partitions_after_their_policies(ops: list[Any]) -> None:
    """Partitions copy their parent's policies: in a downgrade too (which Alembic builds
    by reversing the upgrade), re-sync them after the parent's policies are restored."""
    for o in [o for o in ops if isinstance(o, EntityOp)]:
        if not isinstance(o.entity, PartitionProtection) or isinstance(o, DropEntityOp):
            continue
        later = [
            i
            for i, p in enumerate(ops)
            if isinstance(p, EntityOp)
            and isinstance(p.entity, Policy)
            and p.entity.table == o.entity.table
        ]
        if later and ops.index(o) < later[-1]:
            ops.remove(o)
            ops.insert(later[-1], o)


def prepare_revision(
    context: MigrationContext,
    revision: Any,
    directives: list[MigrationScript],
) -> None:
    """process_revision_directives: freeze the entities a new revision runs (see above)."""
    if not directives:
        return
    script = directives[0]
    _point_at_history(context, script)
    for ops in script.downgrade_ops_list:
        _partitions_after_their_policies(ops.ops)
    template_args = context.opts.get("template_args")
    if template_args is not None:
        template_args.setdefault("entities", "")
    location = context.script.dir if context.script is not None else None
    template = Path(location, "script.py.mako") if location else None
    if (
        template_args is None
        or template is None
        or not template.is_file()
        or "${entities" not in template.read_text()
    ):
        return  # an older template: the entities are rendered inline, as arguments
    operations = [
        o
        for ops in (*script.upgrade_ops_list, *script.downgrade_ops_list)
        for o in ops.ops
        if isinstance(o, EntityOp)
    ]
    names: dict[Entity, str] = {}
    taken: set[str] = set()
    as_found = False
    for o in operations:
        # The previous definition of a replace, read from the database: "as found".
        for entity, suffix in ((o.entity, ""), (getattr(o, "previous", None), "_as_found")):
            if entity is not None and entity not in names:
                names[entity] = _variable(entity, taken, suffix)
                as_found = as_found or bool(suffix)
        o.variable = names[o.entity]
        if isinstance(o, ReplaceEntityOp) and o.previous is not None:
            o.previous_variable = names[o.previous]
    kinds = sorted({type(e).__name__ for e in names})
    if kinds:
        script.imports.add(f"from platform_db.ddl.entities import {', '.join(kinds)}")
    notes = [_AS_FOUND_NOTE] if as_found else []
    notes += _protection_notes(context, {e.table for e in names if e.table})
    template_args["entities"] = "\n\n".join(
        [*notes, *(f"{n} = {e.render()}" for e, n in names.items())]
    )


_AS_FOUND_NOTE = """\
# The downgrade restores the *_as_found definitions below as they were found in the
# database, which no revision defined (drift this revision repairs, such as a loosened
# policy or an extra grant): review them before running it."""


def _protection_notes(context: MigrationContext, tables: set[str]) -> list[str]:
    """A comment for each tenant table the model protects differently, with its reason."""
    metadata = context.opts.get("target_metadata")
    if metadata is None:
        return []
    notes = []
    for table in tenant_tables(metadata):
        p = table.protection
        if table.qualified in tables and not p.is_default:
            off = [
                w
                for w, on in (("no row-level security", p.rls), ("not audited", p.audit))
                if not on
            ]
            what = ", ".join(off) or "protected differently"
            notes.append(f"# {table.qualified}: {what} ({p.reason or 'see its model'}).")
    return ["\n".join(notes)] if notes else []


# Names of platform_db.autogen before the entity comparator (issue 12).
_REMOVED = ("compare_tenant_tables", "compare_materialized_views")


def __getattr__(name: str) -> Any:
    if name in _REMOVED:
        raise ImportError(
            f"{name} was removed from {__name__} (formerly platform_db.autogen) in 0.1: "
            "use compare_entities(conn, wanted), which compares every kind of entity "
            "(platform_db.ddl.entities) at once",
            name=__name__,
        )
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["SCOPE_OPTION", "Scope", "compare_entities", "drift", "prepare_revision"]
