# E-Port Trust: `make run` starts the embedded default, `make test` runs every check.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA_DIR ?= ./var
HOST ?= 127.0.0.1
PORT ?= 8000
APT_PACKAGES := openssl nginx softhsm2 chromium golang-cfssl postgresql openjdk-17-jre-headless

.PHONY: run test test-quick lint typecheck pytest pytest-quick bench sysdeps clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/eport serve --dev --data-dir $(DATA_DIR) --host $(HOST) --port $(PORT)

# System packages the tests and benchmarks use; installed only when missing.
sysdeps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	  else echo "missing system packages:$$missing (install them as root)"; fi; fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check ca authsvc cli tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

# Three workers on two cores: the tests spend much of their time waiting on the servers
# and CLI processes they start, so a third keeps the cores busy (1.88 of 2 measured).
# Each file's tests run on one worker, so a module's servers start once, not per worker.
# The tests start the servers and the CLI as real processes, thousands of them: each would
# compile the project's modules anew where PYTHONDONTWRITEBYTECODE is set (and so never
# cache them), so they are compiled once first (compileall writes whatever that says).
pytest: $(STAMP) sysdeps
	$(BIN)/python -m compileall -q -j 0 ca authsvc cli > /dev/null
	$(BIN)/pytest -q -n 3 --dist loadfile tests

test: lint typecheck pytest

# Locally, between changes: every check but the tests marked slow (multi-host, ceremony,
# upgrade, backup and load tests of ten seconds or more); CI runs them all (make test).
pytest-quick: $(STAMP) sysdeps
	$(BIN)/python -m compileall -q -j 0 ca authsvc cli > /dev/null
	$(BIN)/pytest -q -n 3 --dist loadfile -m "not slow" tests

test-quick: lint typecheck pytest-quick

bench: $(STAMP) sysdeps
	$(BIN)/python bench/issuance.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
