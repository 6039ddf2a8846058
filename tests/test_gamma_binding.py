"""Binding datasets to models is host work: it moves arrays to the device but compiles
nothing (every compiled program costs a shell re-run ~14 ms even from the cache)."""

import jax
from conftest import shared_data, traced_programs

import fitax.gamma as fg
from fitax.gamma.datasets import bind


def test_binding_traces_no_program():
    datasets = fg.read_datasets(shared_data("gamma", "sim", "datasets_n1.yaml"))
    models = fg.read_models(shared_data("gamma", "sim", "models_start_n1.yaml"))
    jax.clear_caches()  # as in a new process: nothing traced before
    with traced_programs() as traced:
        groups = bind(datasets, models)
    jax.block_until_ready(groups)
    assert traced == [], f"{len(traced)} programs traced while binding"
