# CareCast: `make demo` and `make test` are the two set-up commands (see README).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export CARECAST_HOME ?= $(CURDIR)/.carecast

.PHONY: install browser redis demo test test-fast bench bench-smoke docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip==26.3

# Installs the pinned lock (requirements.lock), then the project itself without re-resolving.
$(VENV)/.installed: $(BIN)/python requirements.lock pyproject.toml
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $@

install: $(VENV)/.installed browser redis

# Browser tests drive Debian's Chromium (Playwright's own browser download does not work here).
# As root these install what the tests need; otherwise they say what to install (CI then fails, not skips).
browser:
	@test -x /usr/bin/chromium || if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else echo "note: browser tests need Debian's chromium: sudo apt-get install chromium"; fi

# Redis online-store tests need a Redis server on 127.0.0.1:6379 (.ci/run starts one from Debian's redis-server).
redis:
	@command -v redis-server >/dev/null || if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; \
	  else echo "note: Redis tests need Debian's redis-server: sudo apt-get install redis-server"; fi

demo: install
	@bash scripts/demo.sh

test: install
	$(BIN)/python -m pytest -n 2 --dist loadgroup

test-fast: install
	$(BIN)/python -m pytest -n 2 -m "not slow"

bench: install
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done
	@echo "results appended to $(CARECAST_HOME)/benchmarks/results.jsonl"

docs: install
	$(BIN)/carecast data contracts-doc --out docs/data-contracts.md

clean:
	rm -rf $(VENV) .carecast
