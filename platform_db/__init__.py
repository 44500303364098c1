"""platform-db: the PostgreSQL schema of a multi-tenant SaaS platform."""

__version__ = "0.1.0"
