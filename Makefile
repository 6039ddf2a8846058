# Two commands set up and check fitax on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-slow lane-gamma-core lane-hep-photometry bench install install-test clean

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
	$(BIN)/fitax hep demo --out results/hep
	$(BIN)/fitax hep generate --out results/agc/data --events 40000
	$(BIN)/fitax hep agc --inputs results/agc/data/inputs.json --out results/agc --optimise 5

# The core's tests run a second time with jaxtyping's runtime checker on every annotated
# function of fitax (shapes and dtypes enforced, not decorative). Bad-input tests are left
# out of that pass: the checker rejects their wrong types before fitax's own clearer errors.
TYPECHECKED_TESTS := tests/test_stats.py tests/test_parameters.py tests/test_bijectors.py tests/test_mapsum.py \
	tests/test_integrate.py tests/test_minimize.py tests/test_profile.py tests/test_batch.py
TYPECHECKED_LANE_TWO := tests/test_sample.py
TYPECHECK = $(PYTEST) -o addopts="" --jaxtyping-packages=fitax,typecheck.checker -m "not slow" -k "not bad and not invalid"

# The suite runs in separate pytest processes, two lanes at a time (one per core): gamma, the
# AGC columnar analysis, the core with the doctests, then the type-checked pass in one lane;
# HEP inference and the AGC derivatives, the sampler (and its type-checked pass), the programs
# cache, the multi-process gamma fit, then photometry in the other. tests/conftest.py drops JAX's compiled programs after a test module
# once the process holds many memory mappings: one session holding every program passed
# Linux's limit of 65530 (each XLA:CPU executable maps its code) and XLA crashed in
# backend_compile_and_load. Photometry runs in its own process because after HEP's programs
# the release came after every module and each recompiled the shared pipeline.
#
# Each lane keeps XLA's compilation cache in a folder of its own for the run (removed after):
# a program compiled again (after that release, in the type-checked pass) is read back, not
# recompiled. Lanes run at the same time and do not share a folder.
#
# `make test` runs every test not marked slow (the long comparisons with iminuit, Gammapy,
# pyhf and photutils on large problems); `make test-slow` runs those; CI runs both.
PYTEST := $(BIN)/python -m pytest -q -rs
MARK ?= not slow
LANE_CACHE := cache=$$(mktemp -d) && trap 'rm -rf "$$cache"' EXIT && export FITAX_TEST_XLA_CACHE=$$cache
# Lane two runs every HEP test file but the AGC analysis's (lane one runs it); its gradient
# tests balance the lanes. pytest's --ignore-glob would not drop files named on its command line.
HEP_LANE_TWO_TESTS := $(filter-out tests/test_hep_agc.py,$(wildcard tests/test_hep_*.py))
# The multi-process fit (its own Python processes, ~40 s), the position-dependent PSF
# (~45 s) and the 1D reduction (~40 s) balance the lanes from lane two.
GAMMA_LANE_TWO_TESTS := tests/test_gamma_distributed.py tests/test_gamma_psf_position.py tests/test_gamma_spectrum_reduce.py
NOT_GAMMA_HEP_PHOTOMETRY := --ignore-glob='tests/test_gamma_*' --ignore-glob='tests/test_hep_*' \
	--ignore-glob='tests/test_photometry_*' --ignore=tests/test_sample.py --ignore=tests/test_programs.py

test: install-test
	$(MAKE) --no-print-directory -j2 --output-sync=target lane-gamma-core lane-hep-photometry MARK="not slow"

test-slow: install-test
	$(MAKE) --no-print-directory -j2 --output-sync=target lane-gamma-core lane-hep-photometry MARK="slow"

lane-gamma-core:
	$(LANE_CACHE) \
	&& $(PYTEST) -m "$(MARK)" --durations=10 $(filter-out $(GAMMA_LANE_TWO_TESTS),$(wildcard tests/test_gamma_*.py)) \
	&& $(PYTEST) -m "$(MARK)" --durations=5 tests/test_hep_agc.py \
	&& $(PYTEST) -m "$(MARK)" --durations=10 $(NOT_GAMMA_HEP_PHOTOMETRY) \
	&& if [ "$(MARK)" = "not slow" ]; then $(TYPECHECK) $(TYPECHECKED_TESTS); fi

lane-hep-photometry:
	$(LANE_CACHE) \
	&& $(PYTEST) -m "$(MARK)" --durations=5 $(HEP_LANE_TWO_TESTS) \
	&& $(PYTEST) -m "$(MARK)" --durations=5 tests/test_sample.py tests/test_programs.py $(GAMMA_LANE_TWO_TESTS) \
	&& if [ "$(MARK)" = "not slow" ]; then $(TYPECHECK) $(TYPECHECKED_LANE_TWO); fi \
	&& $(PYTEST) -m "$(MARK)" --durations=10 tests/test_photometry_*.py

bench: install-test
	$(BIN)/python benchmarks/core_fit.py
	$(BIN)/python benchmarks/batch_fit.py
	$(BIN)/python benchmarks/photometry.py
	$(BIN)/python benchmarks/gamma_fit.py

clean:
	rm -rf $(VENV) results build src/*.egg-info
