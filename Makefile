# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.demo-installed

.PHONY: setup demo test lint typecheck chaos bench bench-quick clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

setup: $(STAMP)

# The demo needs only the collector extra (no test or benchmark tools), and says what it installs.
$(DEMO_STAMP): pyproject.toml
	@echo "make demo: creating $(VENV) and installing telemetry-core[collector] only"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --progress-bar on --upgrade pip
	$(PY) -m pip install --progress-bar on -e '.[collector]'
	touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(PY) -m telemetry_core.collector.demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check telemetry_core plugins

typecheck: $(STAMP)
	$(VENV)/bin/mypy

test: lint typecheck
	$(PY) -m pytest

chaos: $(STAMP)
	TELEMETRY_CHAOS_FULL=1 $(PY) -m pytest tests/chaos -p no:cacheprovider -v

bench: $(STAMP)
	$(PY) -m bench --full

bench-quick: $(STAMP)
	$(PY) -m bench --quick

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
