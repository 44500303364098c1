"""Alembic environment of platform-db (platform_db.migration.environment does the work).

The URL comes from the caller's connection (config.attributes["connection"], as the tests
and the CLI pass it), else from DATABASE_URL. A service's env.py calls
run_service_migrations from the same module: see docs/SERVICES.md.
"""

from alembic import context

from platform_db.migration.environment import run_package_migrations

run_package_migrations(context)
