# One entry point. `make demo` brings the stack up and runs a demo flash sale; `make test` runs every check.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STACK := $(BIN)/python -m deploy

.PHONY: install install-loadtest demo up down status test lint bench bench-gateway bench-traces bench-orders bench-pay clean \
	loadtest loadtest-smoke check drills perf-table \
	drill-baseline drill-kill-replica drill-postgres-down drill-payment-down drill-redis-restart

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

demo: install         ## start Redis/PostgreSQL if needed, 2 replicas per service, run a demo flash sale, stop
	$(STACK) demo

up: install           ## start the stack (and Prometheus, Alertmanager when installed); stop it with `make down`
	$(STACK) up

down:                 ## stop only what `make up` / `make demo` started
	$(STACK) down

status:
	$(STACK) status

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: install lint    ## ruff, mypy, then pytest against real Redis and PostgreSQL
	$(STACK) backends --env-file .stack/backends.env
	set -a && . ./.stack/backends.env && set +a && $(BIN)/python -m pytest -q

# Extra options of a benchmark, e.g. make bench-gateway BENCH_ARGS="--baseline HEAD~1" (an A/B in one run).
BENCH_ARGS ?=

bench: install        ## purchase endpoint vs a trivial endpoint, same server setup, one run
	$(STACK) backends --env-file .stack/backends.env
	set -a && . ./.stack/backends.env && set +a && $(BIN)/python -m loadtest.bench.purchase

bench-gateway: install ## purchases through the gateway vs straight to flashsale, same setup, one run
	$(STACK) backends --env-file .stack/backends.env
	set -a && . ./.stack/backends.env && set +a && $(BIN)/python -m loadtest.bench.gateway $(BENCH_ARGS)

bench-traces: install ## purchases with traces off, 1 % sampled (OTLP to a discarding sink), [--baseline COMMIT]
	$(STACK) backends --env-file .stack/backends.env
	set -a && . ./.stack/backends.env && set +a && $(BIN)/python -m loadtest.bench.traces $(BENCH_ARGS)

bench-orders: install ## order creation throughput from a pre-filled purchase stream
	$(STACK) backends --env-file .stack/backends.env
	set -a && . ./.stack/backends.env && set +a && $(BIN)/python -m loadtest.bench.orders

bench-pay: install    ## one order process: CPU, transactions and time per pay at a fixed number in flight
	$(STACK) backends --env-file .stack/backends.env
	set -a && . ./.stack/backends.env && set +a && $(BIN)/python -m loadtest.bench.pay

# ---- load tests and failure drills (docs/loadtest.md). The drills bring up the stack with private Redis and
# PostgreSQL (`python -m deploy up --private`; STACK_PORT_OFFSET applies) and leave it running: `make down` stops it.
# Users at the normal peak, and the pre-sale test's multiple of it (5-10).
LOADTEST_PEAK ?= 50
LOADTEST_MULTIPLE ?= 5
DRILL_ARGS ?=
DRILLS := baseline kill-replica postgres-down payment-down redis-restart

install-loadtest: $(VENV)/.installed-loadtest

$(VENV)/.installed-loadtest: $(VENV)/.installed
	$(BIN)/pip install -q -e ".[dev,loadtest]"
	touch $@

loadtest: install-loadtest  ## a flash-crowd run with no fault (= make drill-baseline): report in loadtest/results/
	$(BIN)/python -m loadtest.drills baseline --peak $(LOADTEST_PEAK) --multiple $(LOADTEST_MULTIPLE) $(DRILL_ARGS)

$(addprefix drill-,$(DRILLS)): install-loadtest  ## one drill: load, fault, restore, drain, checker, report
	$(BIN)/python -m loadtest.drills $(@:drill-%=%) --peak $(LOADTEST_PEAK) --multiple $(LOADTEST_MULTIPLE) $(DRILL_ARGS)

drills: install-loadtest     ## every drill, one after another (each reports on its own)
	for d in $(DRILLS); do $(MAKE) --no-print-directory drill-$$d || exit 1; done

check: install              ## the checker over a run or sales: make check CHECK_ARGS="--run loadtest/results/<run>"
	$(BIN)/python -m loadtest.checker $(or $(CHECK_ARGS),--all)

loadtest-smoke: install     ## CI's short full-chain smoke on its own (part of `make test` too)
	$(STACK) backends --env-file .stack/backends.env
	set -a && . ./.stack/backends.env && set +a && $(BIN)/python -m pytest -q tests/loadtest

perf-table: install         ## Redis floor, trivial ceiling, purchases direct / via gateway, row-lock baseline
	$(STACK) backends --env-file .stack/backends.env
	set -a && . ./.stack/backends.env && set +a && $(BIN)/python -m loadtest.bench.perf_table

clean: down
	rm -rf .stack $(VENV)
