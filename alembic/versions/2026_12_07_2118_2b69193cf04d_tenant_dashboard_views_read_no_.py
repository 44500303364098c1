"""Tenant dashboard views read no distributed relation

Revision ID: 2b69193cf04d
Revises: 78783bb96ecf
Create Date: 2026-12-07 21:18:16.940233+00:00
"""

from collections.abc import Sequence

from platform_db.ddl.entities import Function, MaterializedView
from platform_db.migration.operations import create_entity, drop_entity, replace_entity

revision: str = "2b69193cf04d"
down_revision: str | Sequence[str] | None = "78783bb96ecf"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The definitions this revision runs, frozen here (platform_db.ddl.entities). A later
# revision that changes one points back at it: replaces="2b69193cf04d.<name>".
current_tenant_function = Function(
    name="platform.current_tenant",
    arguments="",
    definition="""RETURNS TABLE (id uuid, subdomain character varying, updated_at timestamp with time zone)
LANGUAGE plpgsql STABLE
AS $fn$
BEGIN
    RETURN QUERY SELECT t.id, t.subdomain, t.updated_at FROM public.tenants t
        WHERE t.id = platform.current_tenant_id();
END
$fn$""",
    execute=("platform_app", "platform_admin"),
    comment="The row of public.tenants of the current tenant (app.current_tenant_id), if any.",
)

tenant_performance_summary_materialized_view = MaterializedView(
    name="tenant_performance_summary",
    query="""SELECT t.id AS tenant_id,
       t.subdomain,
       coalesce(u.total, 0) AS total_users,
       coalesce(p.total, 0) AS total_pages,
       coalesce(l.total, 0) AS total_leads,
       coalesce(u.total, 0) AS users_total,
       coalesce(u.active, 0) AS users_active,
       coalesce(p.total, 0) AS pages_total,
       coalesce(p.published, 0) AS pages_published,
       coalesce(f.total, 0) AS forms_total,
       coalesce(f.active, 0) AS forms_active,
       coalesce(l.total, 0) AS leads_total,
       coalesce(l.new, 0) AS leads_new,
       coalesce(l.contacted, 0) AS leads_contacted,
       coalesce(l.qualified, 0) AS leads_qualified,
       coalesce(l.converted, 0) AS leads_converted,
       coalesce(l.lost, 0) AS leads_lost,
       CASE WHEN coalesce(l.total, 0) = 0 THEN 0::numeric
            ELSE round(l.converted::numeric / l.total, 4) END AS conversion_rate,
       coalesce(s.total, 0) AS submissions_total,
       coalesce(s.last_30_days, 0) AS submissions_30d,
       greatest(t.updated_at, u.last_change, p.last_change, f.last_change, l.last_change,
                s.last_change) AS last_activity_at,
       now() AS refreshed_at
FROM public.tenants t
LEFT JOIN (SELECT tenant_id, count(*) AS total, count(*) FILTER (WHERE is_active) AS active,
                  max(greatest(updated_at, last_login_at)) AS last_change
           FROM public.users GROUP BY tenant_id) u ON u.tenant_id = t.id
LEFT JOIN (SELECT tenant_id, count(*) AS total,
                  count(*) FILTER (WHERE status = 'published') AS published,
                  max(updated_at) AS last_change
           FROM public.pages GROUP BY tenant_id) p ON p.tenant_id = t.id
LEFT JOIN (SELECT tenant_id, count(*) AS total, count(*) FILTER (WHERE is_active) AS active,
                  max(updated_at) AS last_change
           FROM public.forms GROUP BY tenant_id) f ON f.tenant_id = t.id
LEFT JOIN (SELECT tenant_id, count(*) AS total,
                  count(*) FILTER (WHERE status = 'new') AS new,
                  count(*) FILTER (WHERE status = 'contacted') AS contacted,
                  count(*) FILTER (WHERE status = 'qualified') AS qualified,
                  count(*) FILTER (WHERE status = 'converted') AS converted,
                  count(*) FILTER (WHERE status = 'lost') AS lost,
                  max(updated_at) AS last_change
           FROM public.leads GROUP BY tenant_id) l ON l.tenant_id = t.id
LEFT JOIN (SELECT tenant_id, count(*) AS total,
                  count(*) FILTER (WHERE created_at >= now() - interval '30 days') AS last_30_days,
                  max(created_at) AS last_change
           FROM public.form_submissions GROUP BY tenant_id) s ON s.tenant_id = t.id""",
    unique_columns=("tenant_id",),
    tenant_view="tenant_dashboard",
    new_tenant_row="""t.id, t.subdomain::character varying(63), 0::bigint, 0::bigint, 0::bigint,
           0::bigint, 0::bigint, 0::bigint, 0::bigint, 0::bigint, 0::bigint,
           0::bigint, 0::bigint, 0::bigint, 0::bigint, 0::bigint, 0::bigint,
           0::numeric, 0::bigint, 0::bigint, t.updated_at, r.refreshed_at""",
    tenant_source="platform.current_tenant",
)

lead_funnel_monthly_materialized_view = MaterializedView(
    name="lead_funnel_monthly",
    query="""SELECT tenant_id,
       date_trunc('month', created_at AT TIME ZONE 'UTC')::date AS month,
       count(*) AS leads_created,
       count(*) FILTER (WHERE status = 'new') AS still_new,
       count(*) FILTER (WHERE status = 'contacted') AS contacted,
       count(*) FILTER (WHERE status = 'qualified') AS qualified,
       count(*) FILTER (WHERE status = 'converted') AS converted,
       count(*) FILTER (WHERE status = 'lost') AS lost,
       round(count(*) FILTER (WHERE status = 'converted')::numeric / count(*), 4)
           AS conversion_rate,
       now() AS refreshed_at
FROM public.leads
GROUP BY tenant_id, date_trunc('month', created_at AT TIME ZONE 'UTC')::date""",
    unique_columns=("tenant_id", "month"),
    tenant_view="tenant_lead_funnel",
    new_tenant_row="""t.id, date_trunc('month', now() AT TIME ZONE 'UTC')::date,
           0::bigint, 0::bigint, 0::bigint, 0::bigint, 0::bigint, 0::bigint, 0::numeric,
           r.refreshed_at""",
    tenant_source="platform.current_tenant",
)

form_submissions_daily_materialized_view = MaterializedView(
    name="form_submissions_daily",
    query="""SELECT tenant_id,
       form_id,
       (created_at AT TIME ZONE 'UTC')::date AS day,
       count(*) AS submissions,
       count(lead_id) AS with_lead,
       now() AS refreshed_at
FROM public.form_submissions
WHERE created_at >= date_trunc('day', now()) - interval '400 days'
GROUP BY tenant_id, form_id, (created_at AT TIME ZONE 'UTC')::date""",
    unique_columns=("tenant_id", "form_id", "day"),
    tenant_view="tenant_submission_activity",
    new_tenant_row="""t.id, NULL::uuid, (now() AT TIME ZONE 'UTC')::date, 0::bigint, 0::bigint,
           r.refreshed_at""",
    tenant_source="platform.current_tenant",
)


def upgrade() -> None:
    # ### commands auto generated by Alembic - please adjust! ###
    create_entity(current_tenant_function)
    replace_entity(
        tenant_performance_summary_materialized_view,
        replaces="fbe2ab389375.tenant_performance_summary_materialized_view",
    )
    replace_entity(
        lead_funnel_monthly_materialized_view,
        replaces="fbe2ab389375.lead_funnel_monthly_materialized_view",
    )
    replace_entity(
        form_submissions_daily_materialized_view,
        replaces="fbe2ab389375.form_submissions_daily_materialized_view",
    )
    # ### end Alembic commands ###


def downgrade() -> None:
    # ### commands auto generated by Alembic - please adjust! ###
    replace_entity(
        form_submissions_daily_materialized_view,
        replace_with="fbe2ab389375.form_submissions_daily_materialized_view",
    )
    replace_entity(
        lead_funnel_monthly_materialized_view,
        replace_with="fbe2ab389375.lead_funnel_monthly_materialized_view",
    )
    replace_entity(
        tenant_performance_summary_materialized_view,
        replace_with="fbe2ab389375.tenant_performance_summary_materialized_view",
    )
    drop_entity(current_tenant_function)
    # ### end Alembic commands ###
