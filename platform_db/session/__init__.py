"""What a service uses at run time: settings, engines and pools, `Database`, the tenant
hook, `find_many` and search. Nothing here connects at import time."""

# The explicit tenant filter listens on TenantSession (platform_db.session.tenant_filter);
# loaded with the package so that every tenant session has it, however it was made.
from platform_db.session import tenant_filter as _tenant_filter  # noqa: F401
