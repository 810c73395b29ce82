# Every target that needs Python creates .venv when it is missing and (re)installs the project
# only when pyproject.toml changed since the last install (a stamp file remembers).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
HOST ?= 0.0.0.0
PORT ?= 8000
# What `make run` serves: the DI example (container, config/taskflow.yaml) or the plain one.
APP ?= di
UVICORN_TARGET_di := examples.di_app.app:create_app --factory
UVICORN_TARGET_plain := examples.app:app

.DEFAULT_GOAL := help
.PHONY: help install run test lint format bench docs clean

help:
	@echo "make run    serve the example app on http://localhost:$(PORT) (dashboard: /tasks/dashboard)"
	@echo "           (examples/di_app on config/taskflow.yaml; APP=plain serves examples/app.py)"
	@echo "make test   run the test suite"
	@echo "make lint   ruff check, ruff format --check, mypy"
	@echo "make bench  run the core benchmark (BENCH=admin|di|durability|task_control|instructions for the others)"
	@echo "make docs   build the documentation site into site/"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Newer than pyproject.toml means installed from the current dependency list.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

install: $(STAMP)

run: $(STAMP)
	$(if $(UVICORN_TARGET_$(APP)),,$(error APP must be di or plain, got '$(APP)'))
	@mkdir -p var
	$(BIN)/python -m uvicorn $(UVICORN_TARGET_$(APP)) --app-dir . --host $(HOST) --port $(PORT) --timeout-graceful-shutdown 5

# Chromium for the browser tests comes from the system (apt in .ci/run); what pip cannot
# install for the tests is set up here. Extra pytest arguments: make test ARGS="-k sqlite".
# The tests run in pytest-xdist workers, one per CPU (at most TEST_WORKERS_MAX): most of the
# slow tests wait on processes and servers, so the workers overlap well. worksteal hands a
# finished worker the tests another one has not started yet, so one long test does not hold
# the end of the run. Serially: make test ARGS="-n 0".
# pytest exits 5 when it collected no test: that is a failure here, never a pass.
TEST_WORKERS ?= auto
TEST_WORKERS_MAX ?= 4
test: $(STAMP)
	@status=0; \
	$(BIN)/pytest -n $(TEST_WORKERS) --maxprocesses=$(TEST_WORKERS_MAX) --dist worksteal $(ARGS) \
		|| status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: pytest ran no test" >&2; exit 1; fi; \
	exit $$status

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# make bench runs bench/bench_core.py; BENCH=admin runs bench/bench_admin.py, and so on.
BENCH ?= core
bench: $(STAMP)
	$(BIN)/python bench/bench_$(BENCH).py $(ARGS)

docs: $(STAMP)
	$(BIN)/pip install --quiet mkdocs
	$(BIN)/mkdocs build

clean:
	rm -rf site build dist .pytest_cache .mypy_cache .ruff_cache
