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

# The headless browser of the console's browser tests: Debian's chromium and chromedriver (root, or sudo).
# Without it those tests skip with the reason. Nothing is downloaded outside the package manager.
.PHONY: browser
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then echo "chromium and chromedriver present"; \
	else SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo -n); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver; fi

.PHONY: demo
demo: $(STAMP)
	$(VENV)/bin/cem-demo $(DEMO_ARGS)

# ---- the compose stack (Docker) ----
# `docker compose` (v2) where the plugin exists, else Debian's docker-compose 1.29. Without a bridge network
# (hosts prepared with ../shared/tools/docker-here) every container uses the host's network instead.
# Build arguments come from the environment: BASE_IMAGE, TORCH_INDEX_URL (see Dockerfile).
COMPOSE = $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)
COMPOSE_FILES = $(shell docker network inspect bridge >/dev/null 2>&1 || echo "-f docker-compose.yml -f docker-compose.host.yml")

.PHONY: compose-demo compose-down compose-test

audit.env:
	printf 'CEM_AUDIT_TOKEN=%s\n' "$$($(PYTHON) -c 'import secrets; print(secrets.token_hex(32))')" > $@
	@echo "wrote audit.env with a random audit token"

# The whole demo in containers; ends with the comparison table (also in demo-out/table.txt). The auditor stays
# up on port 8000 until Ctrl-C; `make compose-down` removes containers and volumes.
compose-demo: audit.env
	mkdir -p demo-out
	CEM_UID=$$(id -u) CEM_GID=$$(id -g) $(COMPOSE) $(COMPOSE_FILES) up --build

compose-down:
	$(COMPOSE) $(COMPOSE_FILES) down -v --remove-orphans

# The container test (tests/compose): builds the images, runs the stack, kills a cloud under traffic, cleans up.
compose-test: $(STAMP)
	CEM_COMPOSE_TEST=1 $(PY) -m pytest -q -n 0 -m compose tests/compose $(PYTEST_ARGS)
