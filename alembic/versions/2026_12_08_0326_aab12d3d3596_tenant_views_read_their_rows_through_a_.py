"""Tenant views read their rows through a fence that a caller's condition cannot cross

Revision ID: aab12d3d3596
Revises: 82452f34d3ca
Create Date: 2026-12-08 03:26:53.759089+00:00
"""

from collections.abc import Sequence

from platform_db.ddl.entities import MaterializedView
from platform_db.migration.operations import replace_entity

revision: str = "aab12d3d3596"
down_revision: str | Sequence[str] | None = "82452f34d3ca"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The definitions this revision runs, frozen here (platform_db.ddl.entities). A later
# revision that changes one points back at it: replaces="aab12d3d3596.<name>".
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
    fenced=True,
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
    fenced=True,
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
    fenced=True,
)


def upgrade() -> None:
    # ### commands auto generated by Alembic - please adjust! ###
    replace_entity(
        tenant_performance_summary_materialized_view,
        replaces="2b69193cf04d.tenant_performance_summary_materialized_view",
    )
    replace_entity(
        lead_funnel_monthly_materialized_view,
        replaces="2b69193cf04d.lead_funnel_monthly_materialized_view",
    )
    replace_entity(
        form_submissions_daily_materialized_view,
        replaces="2b69193cf04d.form_submissions_daily_materialized_view",
    )
    # ### end Alembic commands ###


def downgrade() -> None:
    # ### commands auto generated by Alembic - please adjust! ###
    replace_entity(
        form_submissions_daily_materialized_view,
        replace_with="2b69193cf04d.form_submissions_daily_materialized_view",
    )
    replace_entity(
        lead_funnel_monthly_materialized_view,
        replace_with="2b69193cf04d.lead_funnel_monthly_materialized_view",
    )
    replace_entity(
        tenant_performance_summary_materialized_view,
        replace_with="2b69193cf04d.tenant_performance_summary_materialized_view",
    )
    # ### end Alembic commands ###
