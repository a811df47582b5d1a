# The project's commands; see README.md. Every target installs what it needs first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# Every Python dependency, pinned with the hashes of its files on PyPI (uv pip compile).
LOCK := requirements.lock
UV_VERSION := 0.13.8
UV := $(VENV)/lock-tools/bin/uv

.PHONY: up down status demo replay test unit bench chaos lint install lock

install: $(STAMP)

# Exactly the lock, never a resolution: pip refuses a file whose hash differs and, with
# --no-deps, installs nothing the lock does not name; then the project itself, built
# with the locked setuptools.
$(STAMP): pyproject.toml $(LOCK)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check --require-hashes --no-deps -r $(LOCK)
	@$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

# Re-lock on purpose, after a change of pyproject.toml's dependencies: the pins already
# in the lock are kept, new ones resolved. `make lock UPGRADE=1` moves every pin to
# the newest release the ranges allow. Review the diff, then `make install`.
lock:
	@test -x $(UV) || { $(PYTHON) -m venv $(VENV)/lock-tools && \
		$(VENV)/lock-tools/bin/pip install -q --disable-pip-version-check uv==$(UV_VERSION); }
	@$(UV) pip compile -q pyproject.toml --extra dev --universal --python-version 3.11 \
		--generate-hashes --no-header --annotation-style line \
		$(if $(UPGRADE),--upgrade,) -o $(LOCK)

up: $(STAMP)
	@$(PY) -m stack up

down:
	@if [ -x $(PY) ]; then $(PY) -m stack down; else echo "nothing to stop"; fi

status: $(STAMP)
	@$(PY) -m stack status

demo: up
	@$(PY) -m proof.demo

replay: $(STAMP)
	@$(PY) -m stack replay

test: $(STAMP)
	@$(PY) -m stack prepare
	@$(PY) -m pytest -p no:cacheprovider $(PYTEST_ARGS)

unit: $(STAMP)
	@$(PY) -m pytest -q tests/unit

bench: $(STAMP)
	@$(PY) -m proof.bench

chaos: $(STAMP)
	@$(PY) -m proof.chaos

lint: $(STAMP)
	@$(PY) -m ruff check .
	@$(VENV)/bin/lint-imports
	@$(PY) -m mypy schemas service_kit command_api course_processor projections notifier stack migrations proof tests
