# session-worker: `make demo` runs the main job, `make test` runs the whole suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk -F ':.*?## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create the virtualenv and install the worker with dev tools

kafka-up: ## start the local single-node Kafka (KRaft) on 127.0.0.1:9092
	bash scripts/kafka.sh up

kafka-down: ## stop the local Kafka
	bash scripts/kafka.sh down

lint: $(STAMP) ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP) ## mypy --strict
	$(BIN)/mypy

unit: $(STAMP) ## unit tests only (no broker)
	$(BIN)/pytest tests/unit -q

test: $(STAMP) ## lint, typecheck, then the whole suite against a real broker (started and stopped here)
	@mkdir -p .cache; echo "building deploy-test tools in the background (log: .cache/deploy-tools.log)"
	nice -n 10 bash scripts/install-deploy-tools.sh > .cache/deploy-tools.log 2>&1 &
	$(MAKE) lint typecheck
	bash scripts/kafka.sh up
	set -o pipefail; status=0; $(BIN)/pytest -q --durations=15 || status=$$?; \
	  bash scripts/kafka.sh down; exit $$status

# `make demo KAFKA_PORT=19092 WORKER_HTTP_PORT=9465 DEMO_ARGS="--sessions 100"` (or the same
# variables in the environment): the broker port (started there if none answers) and HTTP port.
KAFKA_PORT ?= 9092
WORKER_HTTP_PORT ?= 9464
DEMO_ARGS ?=
demo: $(STAMP) ## local broker + synthetic traffic + worker + live table (Ctrl-C stops all); KAFKA_PORT, WORKER_HTTP_PORT
	$(BIN)/session-worker demo --bootstrap-servers 127.0.0.1:$(KAFKA_PORT) --http-port $(WORKER_HTTP_PORT) $(DEMO_ARGS)

bench: $(STAMP) ## benchmarks against the local broker; prints a table, writes bench/results/
	bash scripts/kafka.sh up
	$(BIN)/python -m bench; status=$$?; bash scripts/kafka.sh down; exit $$status

clean: ## remove the virtualenv and caches (keeps the downloaded broker)
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

.PHONY: help install kafka-up kafka-down lint typecheck unit test demo bench clean
