# Two commands set up everything on a fresh machine with Python 3.10+, pip and make:
#   make demo   - create .venv, install nbqueue, run the main job (examples/montecarlo.py)
#   make test   - create .venv with the test extras, run the whole suite
#   make lint   - the quality gate (ruff and mypy), which make test runs first
#   make bench  - create .venv with the bench extras (the peers), run benchmarks/run.py
#   make labextension - rebuild the prebuilt JupyterLab extension (needs Node and npm)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench labextension clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python $(VENV)/.jupyter-data
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python $(VENV)/.jupyter-data
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

$(VENV)/.installed-bench: pyproject.toml | $(BIN)/python $(VENV)/.jupyter-data
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	touch $@ $(VENV)/.installed

# An editable install (pip install -e) installs no data files (PEP 660 leaves them out):
# link the prebuilt lab extension and the config enabling the server extension into the
# venv, where a wheel puts them (pyproject.toml: data-files).
$(VENV)/.jupyter-data: | $(BIN)/python
	mkdir -p $(VENV)/share/jupyter/labextensions $(VENV)/etc/jupyter/jupyter_server_config.d
	ln -sfn $(abspath nbqueue)/dashboard/labextension $(VENV)/share/jupyter/labextensions/nbqueue-labextension
	ln -sfn $(abspath nbqueue)/dashboard/jupyter-config/nbqueue.json $(VENV)/etc/jupyter/jupyter_server_config.d/nbqueue.json
	touch $@

demo: $(VENV)/.installed
	$(BIN)/python examples/montecarlo.py

# The browser test drives Debian's Chromium (no browser download); install it if missing.
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null

# The tests start many Python processes (workers, kernels, scripts): each imports
# nbqueue and the tests' tasks from bytecode compiled here once, even where
# PYTHONDONTWRITEBYTECODE keeps Python from caching it; likewise the test modules as
# pytest rewrites their asserts, once here rather than in each of its workers
# (pyproject.toml: how pytest runs).
test: lint $(CHROMIUM)
	$(BIN)/python -m compileall -q nbqueue tests benchmarks
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest --collect-only -q -n 0 -p no:cacheprovider >/dev/null
	$(BIN)/python -m pytest

# the quality gate: ruff check (E, F, W, B, UP, SIM, I), ruff format and mypy, configured in pyproject.toml
lint: $(VENV)/.installed-test
	$(BIN)/ruff check nbqueue
	$(BIN)/ruff format --check nbqueue
	$(BIN)/mypy

# BENCH_ARGS="--quick" (or --only noop,latency, --skip-peers, --json FILE) narrows it
bench: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/report.py  # docs/performance.md from the run's JSON

# The JupyterLab side panel's extension, built from labextension/ into
# nbqueue/dashboard/labextension/ and committed, so that users and CI need no Node. Only
# labextension/src needs it: the panel itself (nbqueue/dashboard/static/) is served as is.
labextension: $(VENV)/.installed-test
	cd labextension && npm ci --no-audit --no-fund
	cd labextension && PATH="$(abspath $(BIN)):$$PATH" jupyter labextension build .
	cp labextension/install.json nbqueue/dashboard/labextension/

clean:
	rm -rf $(VENV) .pytest_cache test-artifacts
