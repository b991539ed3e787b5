# Quick start: `make run` starts the local stack, `make lint` checks style and
# types, `make test` runs every test.
# Extra arguments go through ARGS, e.g. make test ARGS="-k webhook -x".

PYTHON ?= python3.11
VENV := .venv
CHECKOV_VENV := .venv-checkov

.PHONY: venv lint test unit run

venv: $(VENV)/.installed

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall only when a requirements file changed.
$(VENV)/.installed: requirements.txt requirements-dev.txt | $(VENV)/bin/python
	$(VENV)/bin/python -m pip install -q -r requirements-dev.txt
	touch $@

# checkov (the infra policy check) in an environment of its own.
$(CHECKOV_VENV)/.installed: requirements-checkov.txt
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install -q -r requirements-checkov.txt
	touch $@

test: venv $(CHECKOV_VENV)/.installed
	CHECKOV=$(CHECKOV_VENV)/bin/checkov $(VENV)/bin/python -m pytest -q $(ARGS)

# Lint and type checks; their configuration is in pyproject.toml. No
# `ruff format --check` yet: formatting the whole tree rewrites ~2,500 lines in
# 63 files, which would collide with every branch in flight; a change of its own.
LINT_PATHS := functions local bench tests main.py

lint: venv
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/mypy

unit: venv
	$(VENV)/bin/python -m pytest -q tests/unit $(ARGS)

run: venv
	$(VENV)/bin/python -m local.stack $(ARGS)
