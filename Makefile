.PHONY: venv demo test test-fast lint style

# The virtual environment every target runs in; CI passes its own (`make VENV=.venv-ci ...`).
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
SOURCES := pruning service tests bench

# Made once, from the project's own files: torch as requirements-torch.txt pins it (the CPU build where
# pip's index serves it), then the project with its test extras. A venv made beforehand is used as it is.
venv: $(PY)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements-torch.txt
	$(VENV)/bin/pip install -q -e '.[test]'

# A real server and worker on localhost pruning a real model to 25%, then a before/after table.
demo: $(PY)
	$(PY) -m service.demo

# Every test; the per-test timeout is pyproject.toml's.
test: $(PY)
	$(PY) -m pytest -q -x tests

# The tests not marked slow (minutes on a CPU each).
test-fast: $(PY)
	$(PY) -m pytest -q -x -m "not slow" tests

lint: $(PY)
	$(VENV)/bin/ruff format --check $(SOURCES)
	$(VENV)/bin/ruff check $(SOURCES)
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

# Format, then fix what ruff can fix on its own.
style: $(PY)
	$(VENV)/bin/ruff format $(SOURCES)
	$(VENV)/bin/ruff check --fix $(SOURCES)
