"""platform-db: the PostgreSQL schema of a multi-tenant SaaS platform.

The layers, from the database up (docs/ARCHITECTURE.md):

- `platform_db.models`: typed SQLAlchemy models, one module per aggregate;
- `platform_db.ddl`: the current definitions of everything else in the schema (roles,
  policies, grants, triggers, functions, views, materialized views, scheduled jobs);
- `platform_db.migration`: running the revisions, the entity operations, autogenerate;
- `platform_db.session`: settings, engines and pools, `Database`, the tenant hook, queries;
- `platform_db.maintenance`: `doctor` and `maintain`;
- `platform_db.testing`: the pytest isolation plugin and scratch databases.

Tools a service never imports: `platform_db.cli`, `platform_db.demo`,
`platform_db.importer`, `platform_db.bench`.
"""

from platform_db import _moved

__version__ = "0.1.0"

_moved.install()
