# Entry points, each installing what it needs into .venv first:
#   make demo   run the demo on an embedded PostgreSQL (or DURABLY_DATABASE_URL / DATABASE_URL)
#   make test   run the whole test suite (against DATABASE_URL, else the embedded PostgreSQL)
#   make check  format, lint, types, layers and the unit tests: seconds, no database needed
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: demo test lint check bench compare chaos install

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e . --group dev
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/durably demo

test: install
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check src tests bench examples
	$(BIN)/mypy src tests
	$(BIN)/lint-imports

check: lint
	$(BIN)/ruff format --check src tests bench examples
	$(BIN)/pytest -q tests/unit

bench: install
	$(BIN)/python -m bench.queue
	$(BIN)/python -m bench.durable
	$(BIN)/python -m bench.ceiling

# The 10-minute chaos run of docs/reliability.md (a private PostgreSQL; needs no DATABASE_URL).
chaos: install
	$(BIN)/python -m bench.chaos

# durably side by side with PgQueuer, Procrastinate, DBOS and Absurd (bench/README.md); the
# first run installs each peer into bench/.venvs/. About 40 minutes on 2 cores.
compare: install
	$(BIN)/python -m bench --compare
