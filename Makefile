.PHONY: demo test lint

VENV ?= .venv
PY := $(VENV)/bin/python

$(PY):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q -e '.[test]'

# A real server and worker on localhost pruning a real model to 25%, then a before/after table.
demo: $(PY)
	$(PY) -m service.demo

# The same command .ci/run runs (after ruff and mypy).
test: $(PY)
	$(PY) -m pytest -q -x --timeout=900 tests

lint: $(PY)
	$(VENV)/bin/ruff format --check pruning service tests bench
	$(VENV)/bin/ruff check pruning service tests bench
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy
