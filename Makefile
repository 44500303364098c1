# platform-db — `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev

.DEFAULT_GOAL := help
.PHONY: help install demo test lint format migrate check clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-9s %s\n", $$1, $$2}'

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

test: $(STAMP) ## run the tests (TEST_DATABASE_URL, else Docker, else an embedded PostgreSQL)
	$(BIN)/pytest

lint: $(STAMP) ## ruff check, ruff format --check, mypy --strict, squawk on the revisions' SQL
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m platform_db.migration.lint

format: $(STAMP) ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

migrate: $(STAMP) ## alembic upgrade head on DATABASE_URL
	$(BIN)/alembic upgrade head

check: $(STAMP) ## alembic check on DATABASE_URL: do the models and the database agree?
	$(BIN)/alembic check

clean: ## remove the virtualenv, caches and the embedded server's data
	rm -rf $(VENV) .pgdata .pytest_cache .mypy_cache .ruff_cache
