# The project's commands; see README.md. Every target installs what it needs first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: up down status demo replay test unit bench chaos lint install

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

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
