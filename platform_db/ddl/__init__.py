"""Raw DDL that SQLAlchemy models cannot express: roles, RLS, grants, partition functions.

Everything here is SQL text built from identifiers owned by this package (table names
from the models, fixed role names); nothing is built from user input.
"""
