"""notes-service's Alembic environment: platform-db's service environment, own version table.

`alembic upgrade head` brings platform-db's schema to the installed package's head first,
then runs this service's revisions; autogenerate and `alembic check` see only the tables
notes_service.models adds (platform_db.migration.environment).
"""

from alembic import context
from platform_db.migration.environment import run_service_migrations
from platform_db.models import metadata

import notes_service.models  # noqa: F401 - the service's models, on platform_db's Base

run_service_migrations(context, target_metadata=metadata, version_table="notes_alembic_version")
