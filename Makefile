# Two commands set up and check fitax on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test bench install install-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .

install-test: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test]"

demo: install
	$(BIN)/fitax gamma demo --out results/gamma
	$(BIN)/fitax phot demo --out results/photometry

test: install-test
	$(BIN)/python -m pytest -q -rs

bench: install-test
	$(BIN)/python benchmarks/core_fit.py
	$(BIN)/python benchmarks/batch_fit.py
	$(BIN)/python benchmarks/photometry.py
	$(BIN)/python benchmarks/gamma_fit.py

clean:
	rm -rf $(VENV) results build src/*.egg-info
