"""Full-text search of a tenant table that uses its GIN index under row-level security.

Why a function. Under the `tenant_isolation` policy the policy's condition is a security
barrier: a condition of the query may run before it, or inside an index scan, only if
its function is leakproof. `@@` (`ts_match_vq`) is not, so beneath the policy PostgreSQL
never uses the GIN index on the tsvector: it walks all of the tenant's rows and matches
each one (docs/PERFORMANCE.md, "Search"). A `security_barrier` view does not help for
the same reason; a plain view would let any condition run on other tenants' rows; and
marking `ts_match_vq` LEAKPROOF is a superuser change to a built-in that no dump carries.

So each searchable tenant table gets one plpgsql function (for `pages`,
`platform.search_pages(query tsquery, max_rows integer, published_only boolean)`) that

- is SECURITY DEFINER and owned by platform_admin, the NOLOGIN role with BYPASSRLS: no
  policy applies to its query, so `@@` is an ordinary index condition (a bitmap scan of
  the GIN index, ANDed with the tenant's `(tenant_id, ...)` index);
- filters on `platform.current_tenant_id()` itself, the very value the policy compares
  with: no tenant set means no rows, exactly as under the policy;
- returns only the rows' keys and `ts_rank_cd` ranks, best first, at most `max_rows`
  (capped at 1000); callers join the rows back through RLS by key
  (platform_db.session.search), so every column a tenant reads is still read under its
  policy;
- pins `search_path` (pg_catalog, then pg_temp) and names every object with its schema,
  so a caller's objects can never stand in for the built-ins;
- has a ROWS estimate (the usual page of results, 20), and EXECUTE for platform_app only
  (platform_admin owns it; PUBLIC has nothing).

Why platform_admin and not a role of its own: BYPASSRLS is what the function needs and
platform_admin is the package's one NOLOGIN role that has it (it already owns the
dashboards' materialized views for the same reason). It has row privileges on every
tenant table, but a SECURITY DEFINER function can only run its own fixed statement (no
dynamic SQL here), which reads one table, for the caller's tenant. A dedicated role with
SELECT on one table would narrow that further at the price of one more cluster-wide role
whose grants every table check would have to know; not worth it for a fixed statement.
platform_owner cannot be the owner: RLS is forced, so the owner is filtered like
everybody and the barrier stays.

A service's tenant table gets the same with `__tenant_search__ = TenantSearch(...)` on its
model (docs/SERVICES.md): autogenerate creates the function in the revision that creates
(or first declares) it, `alembic check` compares it, and the test plugin
(platform_db.testing) proves it closed to the other tenant. Put a service's function in
the service's own schema (`public.search_notes`), not in `platform`, which is the
package's (its check would propose dropping a function it does not define).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from platform_db.ddl.entities import (
    ADMIN_ROLE,
    APP_ROLE,
    PLATFORM_SCHEMA,
    Function,
    ident,
    qualified,
    role_name,
)

# The cap of max_rows inside every search function: a page of results, not an export.
MAX_SEARCH_ROWS = 1000
TENANT_FUNCTION = f"{PLATFORM_SCHEMA}.current_tenant_id()"


@dataclass(frozen=True, slots=True)
class TenantSearch:
    """How a tenant table is searched: its search function and tsvector column.

    `function`: the function's schema-qualified name. `vector`: the table's tsvector
    column (with a GIN index). `subset`: an optional `(argument, condition)`, a boolean
    argument (default true) that limits the search to rows meeting a condition on the
    table's own columns, e.g. `("published_only", "status = 'published'")`; the function
    then has one statement for each case, so each can use a partial index. `rows`: the
    planner's estimate of rows returned (ROWS).
    """

    function: str
    vector: str = "search_vector"
    subset: tuple[str, str] | None = None
    rows: int = 20
    owner: str = ADMIN_ROLE
    execute: tuple[str, ...] = (APP_ROLE,)

    def __post_init__(self) -> None:
        qualified(self.function)
        ident(self.vector)
        role_name(self.owner)
        for role in self.execute:
            role_name(role)
        if self.subset is not None:
            ident(self.subset[0])
            if ";" in self.subset[1] or "$" in self.subset[1]:
                raise ValueError(f"refusing unexpected search condition {self.subset[1]!r}")
        if not 1 <= self.rows <= MAX_SEARCH_ROWS:
            raise ValueError(f"rows must be between 1 and {MAX_SEARCH_ROWS}")

    @property
    def arguments(self) -> str:
        args = f"query tsquery, max_rows integer DEFAULT {self.rows}"
        if self.subset is not None:
            args += f", {self.subset[0]} boolean DEFAULT true"
        return args

    def entity(self, table: str, key: Sequence[tuple[str, str]]) -> Function:
        """The function for `table` (`public.pages`) with key columns `(name, type)`."""
        qualified(table)
        if not key:
            raise ValueError(f"{table}: a search function returns the rows' keys; none given")
        names = [ident(name) for name, _ in key]
        if "rank" in names:
            raise ValueError(f"{table}: a key column named rank clashes with the search's rank")
        returns = ", ".join(f"{name} {_type_sql(type_)}" for name, type_ in key)
        columns = ", ".join(f"t.{name}" for name in names)
        order = ", ".join([f"{len(names) + 1} DESC", *(str(i + 1) for i in range(len(names)))])

        def statement(condition: str | None) -> str:
            where = f"t.tenant_id = _tenant AND t.{self.vector} @@ $1"
            if condition is not None:
                where += f"\n          AND ({condition})"
            return (
                "RETURN QUERY\n"
                f"        SELECT {columns}, pg_catalog.ts_rank_cd(t.{self.vector}, $1)\n"
                f"        FROM {table} AS t\n"
                f"        WHERE {where}\n"
                f"        ORDER BY {order}\n"
                f"        LIMIT LEAST($2, {MAX_SEARCH_ROWS});"
            )

        if self.subset is None:
            body = f"    {statement(None)}"
        else:
            body = (
                "    IF $3 THEN\n"
                f"        {statement(self.subset[1])}\n"
                "    ELSE\n"
                f"        {statement(None)}\n"
                "    END IF;"
            )
        definition = f"""RETURNS TABLE ({returns}, rank real)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
ROWS {self.rows}
AS $fn$
#variable_conflict use_column
DECLARE
    -- The value the tenant policy compares with: NULL when no tenant is set.
    _tenant uuid := {TENANT_FUNCTION};
BEGIN
    IF _tenant IS NULL OR $1 IS NULL OR $2 IS NULL OR $2 < 1 THEN
        RETURN;
    END IF;
{body}
END
$fn$"""
        return Function(
            name=self.function,
            arguments=self.arguments,
            definition=definition,
            execute=self.execute,
            comment=(
                f"Full-text search of {table} for the current tenant "
                f"({TENANT_FUNCTION}; none set: no rows): keys and ts_rank_cd ranks, best "
                f"first. Runs as {self.owner} (BYPASSRLS) so that the GIN index on "
                f"{self.vector} is used; callers read the rows themselves, under RLS."
            ),
            owner=self.owner,
            on=table,
        )


def _type_sql(type_: str) -> str:
    spelled = type_.strip().lower()
    if not spelled.replace(" ", "").replace("(", "").replace(")", "").replace("_", "").isalnum():
        raise ValueError(f"refusing unexpected column type {type_!r}")
    return spelled


__all__ = ["MAX_SEARCH_ROWS", "TenantSearch"]
