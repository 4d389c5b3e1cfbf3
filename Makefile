# The README's two commands: `make demo` and `make test`. Both work on a fresh Debian
# machine as root: they create the virtual environment in .venv, install the project,
# and start the services they need (RabbitMQ on 127.0.0.1 and InfluxDB; for the demo with
# RUNTIME=docker, dockerd and the worker image; for the tests also dockerd
# with a locally built image, InfluxDB and Chromium) through idlecloud.dev.services, devdocker
# and devinflux.

# Replicas run under uids of their own and must be able to run the virtual environment's
# interpreter: Debian's /usr/bin/python3, not one in a private folder such as /root/.pyenv.
PYTHON ?= $(firstword $(wildcard /usr/bin/python3) python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
RUNTIME ?= process

.PHONY: demo test lint format install services clean

$(STAMP): pyproject.toml Makefile
	@$(PYTHON) -c 'import ensurepip' >/dev/null 2>&1 || { apt-get update -q && apt-get install -y -q python3-venv; }
	$(PYTHON) -m venv --clear $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

install: $(STAMP)

services: $(STAMP)
	$(BIN)/bus dev up

demo: $(STAMP)
	$(BIN)/python -m examples.stereo.demo --runtime $(RUNTIME)

test: services
	$(BIN)/bus dev up --docker --influxdb --chromium --cluster 3
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis .import_linter_cache
