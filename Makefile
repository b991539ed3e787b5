# Quick start: `make run` starts the local stack, `make lint` checks style and
# types, `make test` runs every test and reports coverage, `make unit` the unit
# tests alone.
# Extra arguments go through ARGS, e.g. make test ARGS="-k webhook -x".

PYTHON ?= python3.11
VENV := .venv
CHECKOV_VENV := .venv-checkov

.PHONY: venv lint test unit run lock audit

venv: $(VENV)/.installed

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall only when a lock changed. requirements-dev.txt holds the runtime
# lock's versions and hashes too, so the tests run what is deployed.
$(VENV)/.installed: requirements.txt requirements-dev.txt | $(VENV)/bin/python
	$(VENV)/bin/python -m pip install -q --require-hashes -r requirements-dev.txt
	touch $@

# The locks, from the top-level lists: requirements.in -> requirements.txt
# (deployed), requirements-dev.in -> requirements-dev.txt; every package pinned
# and hashed. Kept pins stay; ARGS=--upgrade moves them to the newest allowed.
PIP_COMPILE := CUSTOM_COMPILE_COMMAND="make lock" $(VENV)/bin/pip-compile --quiet --generate-hashes --allow-unsafe \
	--strip-extras --no-emit-index-url --no-emit-find-links $(ARGS)

# The lock is resolved here; the functions run on python312 (PYTHON_RUNTIME
# in both routes) on Linux x86_64, so it is then installed for that platform
# in a dry run, hashes checked, from wheels alone: a package that needs
# another Python's markers or a build from source shows here, not at deploy.
DEPLOYED_PYTHON := 3.12
DEPLOYED_PLATFORMS := --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64

lock: venv
	$(PIP_COMPILE) -o requirements.txt requirements.in
	$(PIP_COMPILE) -o requirements-dev.txt requirements-dev.in
	$(VENV)/bin/python -m pip install -q --dry-run --ignore-installed --require-hashes --only-binary=:all: \
		--python-version $(DEPLOYED_PYTHON) --implementation cp $(DEPLOYED_PLATFORMS) --target .run/lock-check -r requirements.txt

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

lint: venv audit
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/mypy

# Known vulnerabilities in the locked packages (pip-audit); says "audit skipped"
# where its database is unreachable, and gives up after a time limit (local/audit.py).
audit: venv
	$(VENV)/bin/python -m local.audit requirements.txt requirements-dev.txt

unit: venv
	$(VENV)/bin/python -m pytest -q tests/unit $(ARGS)

run: venv
	$(VENV)/bin/python -m local.stack $(ARGS)
