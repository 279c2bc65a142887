# CareCast: `make demo` and `make test` are the two set-up commands (see README).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export CARECAST_HOME ?= $(CURDIR)/.carecast

.PHONY: install browser redis demo lint test test-fast bench bench-smoke docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip==26.3

# Installs the pinned runtime set (requirements.lock: what a Bento ships) and the development set on top
# (requirements-dev.lock: tests, linters, notebooks), then the project itself without re-resolving.
$(VENV)/.installed: $(BIN)/python requirements.lock requirements-dev.lock pyproject.toml
	$(BIN)/pip install -q -r requirements.lock -r requirements-dev.lock
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

# ruff (lint and import order) and mypy (types) over the project, before any test runs.
lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

test: install lint
	$(BIN)/python -m pytest -n 2 --dist loadgroup --durations=25

test-fast: install
	$(BIN)/python -m pytest -n 2 -m "not slow"

# Benchmarks run on their own worlds under BENCH_WORK (never $CARECAST_HOME); results are appended to one file
# and compared with the previous result of each benchmark at the end. Order matters: drift and serving use
# the pipeline benchmark's world, the feature-store benchmark the feature-build benchmark's.
BENCH_WORK ?= /tmp/carecast-bench
BENCH_PY = $(BIN)/python benchmarks
bench: install
	@set -e; start=$$SECONDS; since=$$(date -u +%Y-%m-%dT%H:%M:%S+00:00); W=$(BENCH_WORK)/full; mkdir -p $$W; \
	export BENCH_RESULTS=$${BENCH_RESULTS:-$(CARECAST_HOME)/benchmarks/results.jsonl}; \
	step() { echo "== $$*"; t=$$SECONDS; $(BENCH_PY)/"$$@"; echo "   ($$((SECONDS - t)) s)"; }; \
	step bench_synth.py --patients 100000; \
	step bench_validate.py --visits 1000000; \
	step bench_features_build.py --patients 100000 --keep $$W/features/world-100000 --home $$W/features/home-100000; \
	step bench_features_store.py --work $$W/features --patients 100000; \
	step bench_training.py --work $$W/training --patients 100000; \
	step bench_pipeline.py --work $$W/pipeline --patients 20000; \
	step bench_drift.py --home $$W/pipeline/home-20000 --require-world; \
	step bench_serving.py --home $$W/pipeline/home-20000; \
	step bench_score.py; \
	step bench_ui.py; \
	step bench_worklist.py; \
	step bench_replicas.py --work $$W/replicas; \
	step bench_spark.py --work $$W/spark --patients 100000; \
	step bench_outreach.py --patients 20000 --work $$W/outreach; \
	echo "make bench: all benchmarks in $$((SECONDS - start)) s; results appended to $$BENCH_RESULTS"; \
	$(BENCH_PY)/compare.py "$$BENCH_RESULTS" --since $$since

# Every benchmark at a small size (budget: 5 minutes on 2 cores), in a fresh work folder, with its own results
# file so that small runs are compared with small runs. To fit: training reuses the pipeline's world (it adds
# challengers there, after drift and serving have run), the feature-store run materializes with the bulk
# writer only, and the other sizes are small. Wall times on a shared machine carry its load: over budget is
# reported with the load average, not failed.
bench-smoke: install
	@set -e; start=$$SECONDS; since=$$(date -u +%Y-%m-%dT%H:%M:%S+00:00); W=$(BENCH_WORK)/smoke; rm -rf $$W; mkdir -p $$W; \
	export BENCH_RESULTS=$${BENCH_RESULTS:-$(CARECAST_HOME)/benchmarks/smoke-results.jsonl}; \
	step() { echo "== $$*"; t=$$SECONDS; $(BENCH_PY)/"$$@"; echo "   ($$((SECONDS - t)) s)"; }; \
	step bench_synth.py --patients 2000; \
	step bench_validate.py --visits 20000; \
	step bench_features_build.py --patients 2000 --keep $$W/features/world-2000 --home $$W/features/home-2000; \
	step bench_features_store.py --work $$W/features --patients 2000 --appointments 20000 --methods bulk --calls 100 --batch-calls 10; \
	step bench_pipeline.py --work $$W/pipeline --patients 2000; \
	step bench_drift.py --home $$W/pipeline/home-2000 --require-world; \
	step bench_serving.py --home $$W/pipeline/home-2000 --sequential 200 --concurrent-requests 300 --batch-repeats 3; \
	step bench_training.py --work $$W/pipeline --patients 2000 --reuse; \
	step bench_score.py --appointments 20000 --patients 2000 --train-rows 2000; \
	step bench_ui.py --rows 500 --repeat 5; \
	step bench_worklist.py --patients 2000 --outcomes 2000 --rows 500 --posts 10 --repeat 5; \
	step bench_spark.py --work $$W/spark --patients 2000 --skip-train; \
	total=$$((SECONDS - start)); \
	echo "make bench-smoke: all benchmarks in $$total s (budget 300 s); 1-min load average now $$(cut -d' ' -f1 /proc/loadavg); results appended to $$BENCH_RESULTS"; \
	if [ $$total -gt 300 ]; then echo "make bench-smoke: OVER the 300 s budget ($$total s) at load $$(cut -d' ' -f1 /proc/loadavg) on $$(nproc) cores"; fi; \
	$(BENCH_PY)/compare.py "$$BENCH_RESULTS" --since $$since
