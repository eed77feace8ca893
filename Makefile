# Couchfarm. Two commands on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
APT_PACKAGES := $(shell grep -v '^\#' .ci/apt-packages.txt)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=

.PHONY: setup test lint typecheck format demo bench package clean fuzz screenshots

setup: $(VENV)/.installed node_modules/.installed .ci/.apt-installed

# Debian packages the tests need (Node.js for PouchDB Server, browsers and X for UI tests).
.ci/.apt-installed: .ci/apt-packages.txt
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	command -v npm >/dev/null || missing="$$missing npm"; \
	if [ -n "$$missing" ]; then \
	  echo "apt-get install: $$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@touch $@

$(VENV)/.installed: pyproject.toml
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

node_modules/.installed: package.json package-lock.json | .ci/.apt-installed
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# mypy: standard on hub/ and desktop_worker/, strict on the protocol core (pyproject.toml).
typecheck: setup
	$(VENV)/bin/mypy

# The portal's committed screenshots (docs/screenshots/portal-*.png); the suite writes its
# own into var/screenshots/ and leaves the tree alone.
screenshots: setup
	COUCHFARM_SCREENSHOTS=docs/screenshots $(VENV)/bin/pytest -p no:cacheprovider tests/browser

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: setup lint typecheck
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# Open-ended Hypothesis run over every test file that uses it: profile "fuzz" (see
# tests/conftest.py; `make test` runs the derandomized "ci"), five times the examples, drawn
# from a random seed that it prints; 4-6 minutes. FUZZ_SEED=<seed> runs that seed again.
fuzz: setup
	@seed=$${FUZZ_SEED:-$$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}; \
	echo "make fuzz: Hypothesis seed $$seed (make fuzz FUZZ_SEED=$$seed to run it again)"; \
	HYPOTHESIS_PROFILE=fuzz $(VENV)/bin/pytest -p no:cacheprovider --hypothesis-seed=$$seed \
	  $$(grep -lE '^(from|import) hypothesis' tests/test_*.py) $(PYTEST_ARGS); \
	status=$$?; echo "make fuzz: Hypothesis seed $$seed"; exit $$status

# DEMO_ARGS="--seconds 60" stops it on its own; --fresh deletes var/demo first.
DEMO_ARGS ?=
demo: setup
	$(PY) -m hub.demo $(DEMO_ARGS)

# BENCH_SCALE=small (default, under 10 minutes) or full; see docs/BENCHMARKS.md.
BENCH_SCALE ?= small
bench: setup bench/.venv-picas/.installed
	@$(PY) -c 'import matplotlib, greenstalk' 2>/dev/null || $(PY) -m pip install -q -e '.[bench]'
	BENCH_SCALE=$(BENCH_SCALE) $(PY) -m bench.run

# PiCaS (the claim race's reference) pins setuptools==80, cryptography<42 and couchdb<2: it
# gets a venv of its own.
bench/.venv-picas/.installed:
	@[ -x bench/.venv-picas/bin/python ] || $(PYTHON) -m venv bench/.venv-picas
	@echo '*' > bench/.venv-picas/.gitignore
	bench/.venv-picas/bin/python -m pip install -q 'picas==1.1.2'
	@touch $@

# The worker as one folder for this OS (PyInstaller), self-tested; see docs/PACKAGING.md.
package: setup
	@$(PY) -c 'import PyInstaller' 2>/dev/null || $(PY) -m pip install -q -e '.[package]'
	$(PY) installer/build.py $(PACKAGE_ARGS)

clean:
	rm -rf var .pytest_cache .ruff_cache
