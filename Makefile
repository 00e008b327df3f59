# The two set-up commands (see README): `make run` and `make test`.
# Both create .venv with python3 on first use and install the pinned requirements.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test lint bench

$(BIN)/.runtime: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(BIN)/.dev: $(BIN)/.runtime requirements-dev.txt
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

## Migrate the database (SQLite in instance/ unless DATABASE_URL is set), then serve with gunicorn and run
## the background worker beside it (app/serve.py supervises both; Ctrl-C or SIGTERM stops both).
run: $(BIN)/.runtime
	exec $(BIN)/python -m app.serve

## Lint, then the whole test suite (PostgreSQL too when TEST_DATABASE_URL is set).
test: $(BIN)/.dev
	$(BIN)/ruff check app tests bench migrations wsgi.py gunicorn.conf.py
	$(BIN)/pytest -n auto

## The SPEC C2 benchmark (see bench/README.md); pass flags with ARGS="--database-url ...".
bench: $(BIN)/.dev
	bench/run $(ARGS)

lint: $(BIN)/.dev
	$(BIN)/ruff check app tests bench migrations wsgi.py gunicorn.conf.py
