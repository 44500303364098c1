# platform-db — `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
# A second venv with the lowest versions pyproject.toml declares (.ci/lowest.txt).
LOWEST ?= .venv-lowest
LOWEST_STAMP := $(LOWEST)/.installed-lowest
# The tests that prove the floors: the revisions, autogenerate, check and drift, then the
# ORM, async, pool and driver-error paths over the migrated schema, and the analytics
# pool's routing on a standby (Session.get_bind, handle_error), and the tenant filter
# (do_orm_execute behaves differently in SQLAlchemy 2.0). About three minutes.
LOWEST_TESTS ?= tests/test_migrations.py tests/test_autogenerate.py tests/test_drift.py \
	tests/test_migration_safety.py tests/test_schema.py tests/test_query.py \
	tests/test_tenancy_hook.py tests/test_pools.py tests/test_revision_history.py \
	tests/test_runtime_faults.py tests/test_rls_bypass.py tests/test_replica.py \
	tests/test_tenant_filter.py

.DEFAULT_GOAL := help
.PHONY: help install demo test test-lowest lint format migrate check clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "platform-db needs Python 3.11 or newer ($(PYTHON) is older); set PYTHON=..."; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install the package with its test and dev tools

demo: $(STAMP) ## migrate, create sample tenants, print a summary (embedded PostgreSQL unless DATABASE_URL is set)
	$(BIN)/platform-db demo

# The example service (examples/service) runs with its own pytest configuration and the
# plugin's database; its tests need TEST_DATABASE_URL (they are skipped without it).
test: $(STAMP) ## run the tests, then examples/service's (TEST_DATABASE_URL, else Docker, else an embedded PostgreSQL)
	$(BIN)/pytest
	cd examples/service && $(abspath $(BIN))/pytest

$(LOWEST_STAMP): pyproject.toml .ci/lowest.txt
	test -x $(LOWEST)/bin/python || $(PYTHON) -m venv $(LOWEST)
	$(LOWEST)/bin/python -m pip install --quiet --upgrade pip
	$(LOWEST)/bin/python -m pip install --quiet -c .ci/lowest.txt -e '.[dev]'
	touch $(LOWEST_STAMP)

test-lowest: $(LOWEST_STAMP) ## the migration tests against the lowest declared SQLAlchemy, Alembic and drivers
	$(LOWEST)/bin/python .ci/check_lowest.py
	$(LOWEST)/bin/pytest $(LOWEST_TESTS)

lint: $(STAMP) ## ruff check, ruff format --check, mypy --strict (the package, then examples/service), squawk on the revisions' SQL
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	cd examples/service && $(abspath $(BIN))/mypy
	$(BIN)/python -m platform_db.migration.lint

format: $(STAMP) ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

migrate: $(STAMP) ## alembic upgrade head on DATABASE_URL
	$(BIN)/alembic upgrade head

check: $(STAMP) ## alembic check on DATABASE_URL: do the models and the database agree?
	$(BIN)/alembic check

clean: ## remove the virtualenv, caches and the embedded server's data
	rm -rf $(VENV) $(LOWEST) .pgdata .pytest_cache .mypy_cache .ruff_cache
