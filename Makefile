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
	$(PY) -m pip install --quiet -e '.[all,test]'
	touch $(STAMP)

# Test files are spread over one pytest-xdist worker per core (at most 4: each worker and the services it
# starts hold torch, ~1-2 GB); a file's tests share one worker and its fixtures. PYTEST_ARGS passes options
# through, e.g. PYTEST_ARGS="--durations=25", or PYTEST_ARGS="-n 0" for one process.
XDIST := -n auto --maxprocesses 4 --dist loadfile

# The whole suite (what CI runs).
test: $(STAMP)
	$(PY) -m pytest -q $(XDIST) $(PYTEST_ARGS)

# Everything except the end-to-end tests (marker e2e: the demo, whole pipelines, several cooperating service
# processes); the subset to run while working. Markers are listed in pyproject.toml and tests/conftest.py.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not e2e" $(XDIST) $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache

.PHONY: demo
demo: $(STAMP)
	$(VENV)/bin/cem-demo $(DEMO_ARGS)
