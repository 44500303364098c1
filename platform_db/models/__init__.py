"""Typed SQLAlchemy models of every platform table, one module per aggregate."""

from platform_db.models.audit import AuditAction, AuditLog, AuditLogReadOnlyError
from platform_db.models.base import (
    NAMING_CONVENTION,
    Base,
    TenantMixin,
    TimestampMixin,
    is_tenant_owned,
    normalize_email,
)
from platform_db.models.dashboard import (
    PlatformTenantSummary,
    ReadOnlyViewError,
    TenantDashboard,
    TenantLeadFunnel,
    TenantSubmissionActivity,
)
from platform_db.models.form import Form, FormSubmission
from platform_db.models.lead import (
    FUNNEL_ORDER,
    InvalidTransitionError,
    Lead,
    LeadStatus,
)
from platform_db.models.page import Page, PageStatus
from platform_db.models.tenant import Tenant, TenantPlan, TenantStatus
from platform_db.models.user import User, UserRole

metadata = Base.metadata

# The package's own tables, as defined here: a service's models added to the same
# metadata later are not among them (platform_db.migration.environment).
PACKAGE_TABLES: frozenset[str] = frozenset(metadata.tables)

# The package's tenant-owned tables, from the one registry (platform_db.ddl.tenant_table).
TENANT_OWNED_TABLES: tuple[str, ...] = tuple(
    mapper.class_.__tablename__
    for mapper in Base.registry.mappers
    if is_tenant_owned(mapper.class_)
)

__all__ = [
    "FUNNEL_ORDER",
    "NAMING_CONVENTION",
    "PACKAGE_TABLES",
    "TENANT_OWNED_TABLES",
    "AuditAction",
    "AuditLog",
    "AuditLogReadOnlyError",
    "Base",
    "Form",
    "FormSubmission",
    "InvalidTransitionError",
    "Lead",
    "LeadStatus",
    "Page",
    "PageStatus",
    "PlatformTenantSummary",
    "ReadOnlyViewError",
    "Tenant",
    "TenantDashboard",
    "TenantLeadFunnel",
    "TenantMixin",
    "TenantPlan",
    "TenantStatus",
    "TenantSubmissionActivity",
    "TimestampMixin",
    "User",
    "UserRole",
    "metadata",
    "normalize_email",
]
