# One entry point. `make demo` brings the stack up and runs a demo flash sale; `make test` runs every check.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STACK := $(BIN)/python deploy/stack.py

.PHONY: install demo up down status test lint bench bench-gateway bench-orders clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

demo: install         ## start Redis/PostgreSQL if needed, 2 replicas per service, run a demo flash sale, stop
	$(STACK) demo

up: install           ## start the stack and leave it running (stop it with `make down`)
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

bench: install        ## purchase endpoint vs a trivial endpoint, same server setup, one run
	$(STACK) backends --env-file .stack/backends.env
	set -a && . ./.stack/backends.env && set +a && $(BIN)/python loadtest/bench_purchase.py

bench-gateway: install ## purchases through the gateway vs straight to flashsale, same setup, one run
	$(STACK) backends --env-file .stack/backends.env
	set -a && . ./.stack/backends.env && set +a && $(BIN)/python loadtest/bench_gateway.py

bench-orders: install ## order creation throughput from a pre-filled purchase stream
	$(STACK) backends --env-file .stack/backends.env
	set -a && . ./.stack/backends.env && set +a && $(BIN)/python loadtest/bench_orders.py

clean: down
	rm -rf .stack $(VENV)
