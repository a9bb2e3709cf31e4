# Two commands for a newcomer: `make run` (the farm on http://127.0.0.1:8000) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Installed once per change of the requirements: the runtime ones for `make run`, the development ones
# (tests, lint, benchmarks; the runtime ones included) for everything else.
RUNTIME := $(VENV)/.installed-runtime
DEV := $(VENV)/.installed

.PHONY: install install-dev run test test-fast lint format bench chaos screenshots clean

$(RUNTIME): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $@

$(DEV): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements-dev.txt
	touch $@ $(RUNTIME)

install: $(RUNTIME)

install-dev: $(DEV)

# This checkout's local settings: a generated SECRET_KEY (never committed; real environment variables win).
.env: | $(RUNTIME)
	$(PY) -m t2i_project.envfile $@

# The farm as a LAN runs it (DEBUG off, static files collected); `DEBUG=1 make run` for debug pages.
# PORT and COMFYUI_PORT (the simulator's) choose other ports; LOG_LEVEL=INFO shows every request.
run: install .env
	$(PY) manage.py runfarm

test: install-dev lint
	$(PY) -m pytest

# The everyday loop: everything but the tests marked slow (processes, the browser, end to end).
test-fast: install-dev
	$(PY) -m pytest -m "not slow"

lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

bench: install-dev
	$(PY) -m bench

chaos: install-dev
	$(PY) -m bench.chaos

# docs/screenshots/*.png from a demo farm (tools/screenshots.py; needs Debian's chromium).
screenshots: install-dev
	$(PY) -m tools.screenshots

format: install-dev
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
