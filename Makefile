# provisiond: `make demo` runs the main job, `make test` runs the whole suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: help bootstrap venv test test-fast check fmt demo bench clean

help:
	@echo "make demo   - start provisiond on SQLite with the example inventory (Ctrl-C stops)"
	@echo "make test   - run the whole test suite (SQLite and a throwaway PostgreSQL)"
	@echo "make test-fast - the edit-test loop: no QEMU, nothing marked slow, SQLite only"
	@echo "make check  - ruff lint + format check, mypy --strict"
	@echo "make bench  - run the benchmarks in tests/bench/"

bootstrap:
	@./scripts/bootstrap.sh

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	@touch $@

venv: bootstrap $(STAMP)

test: venv
	$(BIN)/pytest --durations=25

# The edit-test loop: no QEMU guests, nothing marked slow, SQLite only (CI runs both).
test-fast: venv
	PROVISIOND_TEST_BACKENDS=sqlite $(BIN)/pytest -q -m "not slow" --ignore=tests/e2e

check: venv
	$(BIN)/ruff check provisiond tests scripts
	$(BIN)/ruff format --check provisiond tests scripts
	$(BIN)/mypy

fmt: venv
	$(BIN)/ruff format provisiond tests scripts
	$(BIN)/ruff check --fix provisiond tests scripts

demo: venv
	$(BIN)/python scripts/demo.py

bench: venv
	@set -e; for f in tests/bench/bench_*.py; do [ -e "$$f" ] || continue; echo "== $$f"; $(BIN)/python "$$f"; done

clean:
	rm -rf $(VENV) .provisiond .provisiond-demo .pytest_cache .mypy_cache .ruff_cache
