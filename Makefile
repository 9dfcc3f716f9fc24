# The two commands of the README: `make run` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
RUN_STAMP  := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test

.PHONY: run test check lint typecheck pytest bench-check bench docs dist ansible-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(RUN_STAMP)

## run: create the venv, install, and start the appliance on the built-in simulated site
run: $(RUN_STAMP)
	$(BIN)/appliance run --simulate

## test: install what the tests need, then lint, type-check and run the whole suite
test: $(TEST_STAMP)
	bash scripts/install-test-servers.sh
	$(MAKE) --no-print-directory check pytest bench-check

## bench-check: the control benchmark's goals for the default profile (deterministic, ~10 s)
bench-check: $(TEST_STAMP)
	$(BIN)/python bench/control.py --check --no-write

## bench: every benchmark, each writing its figures into docs/performance.md (~25 min on 2 cores)
BENCHES := loop_lateness meter_to_setpoint modbus_slave opcua_server scale archive_throughput soak
bench: $(TEST_STAMP)
	bash scripts/install-test-servers.sh
	$(BIN)/python bench/control.py
	set -e; for b in $(BENCHES); do echo "== bench.$$b"; $(BIN)/python -m bench.$$b; done

check: lint typecheck

lint: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(TEST_STAMP)
	$(BIN)/mypy

pytest: $(TEST_STAMP)
	$(BIN)/python -m pytest

## dist: build the wheel the fleet's appliance role installs (dist/appliance-VERSION-py3-none-any.whl)
dist: | $(BIN)/python
	$(BIN)/pip wheel --no-deps --quiet --wheel-dir dist .

## ansible-check: .venv-ansible (pinned ansible-core, ansible-lint), lint, syntax check, playbook tests
ansible-check: $(TEST_STAMP)
	bash scripts/ansible-check.sh

## docs: regenerate the generated documentation from models/points.yaml
docs: $(RUN_STAMP)
	$(BIN)/appliance points --format markdown > docs/points.md
	$(BIN)/appliance points --format csv > docs/points.csv
	$(BIN)/python -m appliance.northbound.opcua generate
	$(BIN)/python -m appliance.northbound.modbus generate
	$(BIN)/python -m appliance.archive.dashboards

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build *.egg-info
