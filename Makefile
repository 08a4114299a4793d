# The two set-up commands of the README, each working from a fresh clone with nothing installed:
#
#     make run     # the main job: the single-stage DAG on the embedded dataset (CPU, minutes)
#     make test    # the test suite
#
# Both create the virtual environment (.venv, Python 3.11) when it is missing or older than
# pyproject.toml, then run inside it. PYTHON, VENV and CORES can be set: `make run CORES=8`.

PYTHON ?= python3.11
VENV ?= .venv
CORES ?= $(shell nproc 2>/dev/null || echo 2)
BIN := $(abspath $(VENV))/bin

.PHONY: run test env

env: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

run: $(VENV)/.installed
	PATH="$(BIN):$$PATH" snakemake --cores $(CORES) results/toy_val_miou.csv

test: $(VENV)/.installed
	PATH="$(BIN):$$PATH" pytest -q --durations=25   # the slowest tests last: what CI's time goes to
