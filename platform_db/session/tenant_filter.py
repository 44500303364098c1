"""The tenant in the SQL itself: `tenant_id = :tenant` on every ORM statement of a tenant session.

Row-level security is the enforcement and stays so: the policy of every tenant table
compares `tenant_id` with the transaction's `app.current_tenant_id`. But a policy is
invisible to a distributed planner. On Citus (docs/SCALING.md) a query whose only tenant
filter comes from RLS is sent to every shard of the table (`Task Count: 32`), while the
same query with `tenant_id = '<uuid>'` in its WHERE clause is planned by the fast-path
router onto the one shard that holds the tenant (`Task Count: 1`).

So a `TenantSession` with a tenant (its own, or the ambient `tenant_context()`) adds
`tenant_id = :tenant` for every tenant-owned entity (every model with `TenantMixin`, a
service's included) of each ORM SELECT, UPDATE and DELETE it executes, through
SQLAlchemy's `with_loader_criteria` in a `do_orm_execute` listener: `select(Lead)`,
`find_many`, `search_pages`, joins, relationship loads and ORM bulk UPDATE/DELETE all
carry it. The tenant is a bound parameter (`:platform_db_tenant`), so the statement cache
keeps one entry per statement, not one per tenant. Inserts need nothing (the row carries its `tenant_id`),
and the unit of work updates and deletes by primary key, which starts with `tenant_id`.

What it does not cover: `text()` and Core statements on Table objects (no entity to
attach the criteria to) are sent as written, so SQL written by hand should say
`tenant_id = :tenant` itself when it must reach one shard. A session without a tenant is
platform-wide by definition (a BYPASSRLS script) and gets no filter. The filter can never
widen what a session sees: RLS filters the same rows again.

The cost on a single PostgreSQL server is measured in docs/PERFORMANCE.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import sqlalchemy
from sqlalchemy import bindparam, event
from sqlalchemy.engine import Result
from sqlalchemy.orm import ORMExecuteState, with_loader_criteria

from platform_db.models.base import TenantMixin
from platform_db.session.tenancy import TenantSession

# An execution option that leaves the statement as written (for code that knows it needs
# no routing, and for measuring what the filter costs).
SKIP_OPTION = "platform_db_tenant_filter"
# The bound parameter that carries the tenant into every statement.
TENANT_PARAMETER = "platform_db_tenant"

# One option for every statement and tenant: the tenant is a bound parameter supplied at
# execution, so the option (and the statement's cache key) never changes. A lambda that
# closed over the tenant would be re-analysed on every execution: measured at about 0.08
# ms of client CPU per statement against 0.02 ms for this (docs/PERFORMANCE.md).
TENANT_CRITERIA = with_loader_criteria(
    TenantMixin,
    # The name spelled out: a global read inside the lambda would be tracked as a value.
    lambda cls: cls.tenant_id == bindparam("platform_db_tenant"),
    include_aliases=True,
)


@event.listens_for(TenantSession, "do_orm_execute")
def _add_tenant_criteria(state: ORMExecuteState) -> Result[Any] | None:
    if not (state.is_select or state.is_update or state.is_delete):
        return None
    # ORM bulk UPDATE by primary key (a list of parameter sets): the key starts with
    # tenant_id already.
    if state.is_executemany or state.execution_options.get(SKIP_OPTION) is False:
        return None
    session = state.session
    if not isinstance(session, TenantSession):
        return None
    scope = session.tenant_scope
    if scope is None:
        return None
    # The statement and its parameters are replaced in place (SQLAlchemy runs what the
    # state holds once the listeners return), rather than executed again through
    # invoke_statement(), which ran the whole of Session.execute a second time (24 Python
    # calls of about 1,100 per request; docs/PERFORMANCE.md). Lazy loads and refreshes
    # come through here again (and get the tenant they need: the statement that
    # loaded the objects passes its criteria on to them).
    statement = state.statement.options(TENANT_CRITERIA)
    if not _PARAMETERS_REPLACEABLE:
        # SQLAlchemy 2.0 runs the parameters it was called with, whatever a listener puts
        # in `state.parameters`: execute again, with the tenant's (merged into the
        # parameters, which must be a mapping there).
        if state.parameters is None:
            state.parameters = {}
        return state.invoke_statement(
            statement=statement, params={TENANT_PARAMETER: scope.tenant_id}
        )
    state.statement = statement
    params = cast("Mapping[str, Any] | None", state.parameters)  # not executemany: checked
    state.parameters = (
        {**params, TENANT_PARAMETER: scope.tenant_id}
        if params
        else {TENANT_PARAMETER: scope.tenant_id}
    )
    return None


# Since SQLAlchemy 2.1 Session.execute runs the parameters a do_orm_execute listener
# leaves in `state.parameters`; 2.0 (the floor, 2.0.40) runs the ones it was given
# (make test-lowest caught it).
_PARAMETERS_REPLACEABLE = tuple(int(p) for p in sqlalchemy.__version__.split(".")[:2]) >= (2, 1)


__all__ = ["SKIP_OPTION", "TENANT_CRITERIA", "TENANT_PARAMETER"]
