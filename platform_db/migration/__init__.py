"""Migrating a database: the runner (`runner`), the entity operations revisions call
(`operations`), what autogenerate and `alembic check` compare (`autogenerate`), and the
SQL lint of the revisions (`lint`)."""
