# Two commands on a fresh machine: `make up` runs the cluster, `make test` runs the tests.
# Both create .venv and install the project (with its test extras) the first time.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup up down status demo test test-fast sim bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

up: setup            ## start a 3-node cluster on the built-in config, in the foreground (Ctrl-C stops it)
	$(BIN)/lfctl up

down: setup
	$(BIN)/lfctl down

status: setup
	$(BIN)/lfctl status

demo: setup          ## a cluster, a steady load and a fault every few seconds, live; q stops it (DURATION=60 for an unattended run)
	$(BIN)/lfctl demo $(if $(DURATION),--duration $(DURATION))

test: setup          ## the whole suite: unit, simulation (5,000 seeds), integration on real processes
	$(BIN)/python -m pytest -q

test-fast: setup     ## everything but the long simulation runs
	$(BIN)/python -m pytest -q -m "not slow"

sim: setup           ## more seeds: make sim SEEDS=20000
	$(BIN)/python -m orchestrator.simulator --seeds $(or $(SEEDS),5000)

$(VENV)/.bench-stamp: pyproject.toml $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $@

bench: $(VENV)/.bench-stamp   ## the benchmark suite, < 10 min: bench/results/*.json + *.png (docs/performance.md)
	$(BIN)/python bench/codec_bench.py
	$(BIN)/python bench/storage_bench.py
	$(BIN)/python bench/core_bench.py --orders 100000 --repeats 5
	$(BIN)/python bench/zmq_calls_bench.py --repeats 3
	$(BIN)/python bench/backup_bench.py
	$(BIN)/python bench/suite.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis *.egg-info
