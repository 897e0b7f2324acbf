# apigate developer commands. Everything runs on loopback; nothing here uses docker.
#
#   make run     create .venv if needed, start the demo upstream + gateway (Ctrl-C stops both)
#   make test    install the environment and test tools, lint, run the whole test suite
#   make lint    ruff check, ruff format --check, mypy --strict
#   make bench   the benchmark matrix of issue 18 (bench/matrix.sh; table in bench/results/latest.md)
#   make bench-peers  side-by-side loopback benchmark: upstream direct / nginx / apigate (bench/run.sh)
#   make format  apply ruff's formatter and safe fixes
#   make clean   remove caches and build output (keeps .venv and bench/results)

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: help install run test test-deps lint format bench bench-peers clean distclean FORCE

help:
	@sed -n 's/^#   make /  make /p' $(firstword $(MAKEFILE_LIST))

# The hot modules are compiled with mypyc next to their sources (src/apigate/_native.py);
# a no-op when the build is newer than every source, a rebuild after any edit.
install: $(STAMP)
	@$(BIN)/python scripts/build_native.py

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "apigate needs Python >= 3.11, $(PYTHON) is " + sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)

# Re-install when pyproject.toml changes, or when the console script has gone missing.
$(STAMP): pyproject.toml $(if $(wildcard $(BIN)/apigate),,FORCE) | $(BIN)/python
	$(BIN)/python -m pip install --disable-pip-version-check --quiet -e '.[test]'
	@touch $@

run: install
	$(BIN)/apigate demo

test: install
	scripts/install-test-deps.sh
	@$(MAKE) --no-print-directory lint
	$(BIN)/pytest $(PYTEST_ARGS)

test-deps:
	scripts/install-test-deps.sh

lint: install
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy

format: install
	$(BIN)/ruff format src tests
	$(BIN)/ruff check --fix src tests

bench: install
	bench/matrix.sh

bench-peers: install
	bench/run.sh

clean:
	rm -rf build dist .pytest_cache .mypy_cache .ruff_cache src/*.egg-info
	find src -name '*.so' -delete
	find src tests -name __pycache__ -type d -prune -exec rm -rf {} +

# Also removes the virtualenv (the next `make install` recreates it).
distclean: clean
	rm -rf $(VENV)

FORCE:
