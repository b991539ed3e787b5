# Quick start: `make run` starts the local stack, `make lint` checks style and
# types, `make test` runs every test and reports coverage, `make unit` the unit
# tests alone.
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

# Every test under coverage, the functions' own processes included (see
# [tool.coverage] in pyproject.toml). A full run must reach the report's floor,
# and every line and branch of the pure core: the state machine, the payload
# parser, the signature check and the diff of a change into outcome events.
COVERAGE_DIR := .run/coverage
PURE_CORE := functions/transitions.py,functions/events.py,functions/signature.py,functions/outcomes.py

test: venv $(CHECKOV_VENV)/.installed
	rm -rf $(COVERAGE_DIR) && mkdir -p $(COVERAGE_DIR)
	CHECKOV=$(CHECKOV_VENV)/bin/checkov $(VENV)/bin/coverage run -m pytest -q $(ARGS)
	$(VENV)/bin/coverage combine -q
	$(VENV)/bin/coverage report $(if $(ARGS),--fail-under=0)
	$(if $(ARGS),,$(VENV)/bin/coverage report --include=$(PURE_CORE) --fail-under=100)

# Lint, format and type checks; their configuration is in pyproject.toml.
LINT_PATHS := functions local bench tests infra main.py

lint: venv
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/mypy

unit: venv
	$(VENV)/bin/python -m pytest -q tests/unit $(ARGS)

run: venv
	$(VENV)/bin/python -m local.stack $(ARGS)
