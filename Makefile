# imagegen: `make run` serves on http://127.0.0.1:8080; `make test` runs the whole suite (what CI runs).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN_STAMP := $(VENV)/.run-stamp
DEV_STAMP := $(VENV)/.dev-stamp

.PHONY: install run test lint format bench-deps clean

install: $(DEV_STAMP)

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "imagegen needs Python 3.11+"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# `make run` needs only imagegen itself; the tests add the dev tools, moto, the Firebase SDKs.
$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $(RUN_STAMP)

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(RUN_STAMP) $(DEV_STAMP)

run: $(RUN_STAMP)
	$(BIN)/imagegen serve

test: $(DEV_STAMP)
	$(BIN)/pytest

lint: $(DEV_STAMP)
	$(BIN)/ruff check src tests bench functions
	$(BIN)/ruff format --check src tests bench functions
	$(BIN)/mypy
	$(BIN)/mypy functions/main.py

format: $(DEV_STAMP)
	$(BIN)/ruff format src tests bench functions
	$(BIN)/ruff check --fix src tests bench functions

# The HTTP benchmarks drive load with wrk (Debian's package): see bench/README.md.
bench-deps: $(DEV_STAMP)
	apt-get update && apt-get install -y wrk
	$(BIN)/pip install --quiet -e '.[dev,bench]'

clean:
	rm -rf $(VENV) var .pytest_cache
