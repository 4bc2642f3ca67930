# `make test` and `make demo` are the two commands a newcomer runs; each creates
# the virtual environment and installs the project first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-fast clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# The whole suite (what CI runs). PYTEST_ARGS passes options through, e.g. PYTEST_ARGS="--durations=25".
test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Everything except the end-to-end tests (marker e2e: the demo, whole pipelines, several cooperating service
# processes); the subset to run while working. Markers are listed in pyproject.toml and tests/conftest.py.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not e2e" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache

.PHONY: demo
demo: $(STAMP)
	$(VENV)/bin/cem-demo $(DEMO_ARGS)
