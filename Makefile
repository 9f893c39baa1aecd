# Two commands for a new machine: `make run` (the whole pipeline through the Prefect flow) and `make test`.
# Both create the virtual environment first when it is missing.
VENV ?= .venv
PYTHON ?= python3
BIN := $(abspath $(VENV))/bin
# dvc.yaml's commands call `python`: the venv's, also when `make repro` is used.
export PATH := $(BIN):$(PATH)
UI_PORT ?= 5000
SERVE_PORT ?= 5001

.PHONY: help run lock check test test-fast fuzz repro ui serve-model schedule clean stream loop annotate schedule-loop watch
help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

# Every package at the version requirements.lock pins (torch included: the release on our machines' local disk, a
# CUDA build that runs on CPU), then the project itself without resolving again. `make lock` refreshes the lock.
$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	$(BIN)/python -m groundwork.plot_page  # .dvc/offline_plots.html: `dvc plots show` draws offline
	touch $@

lock: $(VENV)/.installed  ## compile requirements.lock from pyproject.toml's ranges (torch pinned by torch-local.txt)
	$(BIN)/pip-compile --quiet --extra dev --strip-extras --no-emit-index-url --no-emit-find-links \
		--constraint torch-local.txt --output-file requirements.lock pyproject.toml

# Before any test: the code is linted, the lock agrees with pyproject.toml and with what is installed, and every
# import is declared (deptry: an undeclared or unused dependency fails, each ignore has its reason in pyproject.toml)
check: $(VENV)/.installed  ## lint, check the lock and the declared dependencies
	$(BIN)/ruff check .
	$(BIN)/python tests/lock_check.py --installed
	$(BIN)/deptry --no-ansi .

run: $(VENV)/.installed  ## run the whole pipeline through the Prefect flow
	$(BIN)/groundwork run

# Two workers (pytest-xdist, one module at a time each, so a module's shared fixtures are built once): a serial run
# keeps one of two cores idle for much of the time, waiting on stage processes, servers, DVC and SQLite.
TEST_WORKERS ?= 2
test: check  ## lint and check the dependencies, then run the whole test suite (what CI runs)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadscope

# The markers are declared in pyproject.toml; each marked test also runs alone: pytest tests/x.py::test_y
FAST_TESTS := not (e2e or server or browser or torchrun or subprocess)
test-fast: check  ## lint and check the dependencies, then the unit tests alone (no pipeline runs, servers, browser, torchrun, stage processes)
	$(BIN)/python -m pytest -m "$(FAST_TESTS)" -n $(TEST_WORKERS) --dist loadscope

# The suite fuzzes every reader of outside files with 1,000 cases each and a fixed seed; this runs many more, each
# time with a new seed, and prints how many cases of each family every reader got.
FUZZ_CASES ?= 20000
fuzz: $(VENV)/.installed  ## fuzz every reader of outside files with FUZZ_CASES cases each (random seed)
	GROUNDWORK_FUZZ_CASES=$(FUZZ_CASES) $(BIN)/python -m pytest tests/test_fuzz.py -s

repro: $(VENV)/.installed  ## run the pipeline with `dvc repro` (same stages, cache and dvc.lock), stages started warm
	$(BIN)/groundwork repro

ui: $(VENV)/.installed  ## open the MLflow UI on the project's store, at http://127.0.0.1:$(UI_PORT)
	$(BIN)/groundwork ui --port $(UI_PORT)

serve-model: $(VENV)/.installed  ## serve the champion model over HTTP at http://127.0.0.1:$(SERVE_PORT)/invocations
	$(BIN)/groundwork serve --port $(SERVE_PORT)

schedule: $(VENV)/.installed  ## serve the nightly deployment of prefect.yaml (schedule, one run at a time); Ctrl-C stops
	$(BIN)/groundwork schedule

stream: $(VENV)/.installed  ## write the simulated stream of arriving batches into data/incoming (after `make run`)
	$(BIN)/groundwork stream $(if $(UPTO),--upto $(UPTO))

loop: $(VENV)/.installed  ## one iteration of the adaptive loop through its Prefect flow (monitor, ask, adapt)
	$(BIN)/groundwork loop

annotate: $(VENV)/.installed  ## answer the labelling queue with the simulated stream's true labels, into data/labels
	$(BIN)/groundwork annotate

schedule-loop: $(VENV)/.installed  ## serve the hourly-adaptive deployment of prefect.yaml (hourly, and on each arrival); Ctrl-C stops
	$(BIN)/groundwork schedule --deployment hourly-adaptive

watch: $(VENV)/.installed  ## emit a Prefect event for each batch that arrives in data/incoming (needs PREFECT_API_URL); Ctrl-C stops
	$(BIN)/groundwork watch

clean:  ## remove pipeline outputs and the tracking store (keeps the venv and DVC's cache)
	rm -rf data models reports mlflow.db mlartifacts dvc.lock adaptive/dvc.lock
