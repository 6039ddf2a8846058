"""Shared helpers: reference fits with iminuit, and the location of ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import jax
import numpy as np
import pytest

import fitax
from fitax.fit import call_objective

REPO = Path(__file__).resolve().parents[1]

# In-process CLI tests would otherwise turn on the on-disk caches (XLA executables and
# exported programs under ~/.cache/fitax) for the whole test session: the suite would write
# into the user's home and every later compilation would go through the cache. Tests of the
# caches enable them explicitly in folders of their own.
os.environ["FITAX_CACHE_DIR"] = ""


def shared_data(*parts: str) -> Path:
    """Path under the shared data folder; skips the test with a clear message when absent."""
    root = Path(os.environ.get("FITAX_SHARED_DATA", REPO.parent / "shared" / "data"))
    path = root.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared test data not found at {path} (set FITAX_SHARED_DATA to its location)")
    return path


def iminuit_reference(objective, params, args=None, errordef=1.0):
    """MIGRAD + HESSE on the same objective, JAX gradient supplied; returns (values, errors, fval).

    Tight settings (strategy 2, tol 1e-4, MIGRAD repeated until valid) so that differences
    measure fitax, not an under-converged reference.
    """
    from iminuit import Minuit

    space = fitax.ParameterSpace.from_params(params)

    def physical(v):
        model = space.with_values(params, v)
        return call_objective(objective, model, args) + errordef * space.prior_penalty(model)

    fun = jax.jit(physical)
    grad = jax.jit(jax.grad(physical))
    minuit = Minuit(lambda v: float(fun(v)), np.asarray(space.values(params)), grad=lambda v: np.asarray(grad(v)), name=list(space.names))
    minuit.errordef = errordef
    minuit.strategy = 2
    minuit.tol = 1e-4
    for i, limits in enumerate(space.bounds):
        minuit.limits[i] = limits
    for _ in range(5):
        minuit.migrad()
        if minuit.valid:
            break
    minuit.hesse()
    values = dict(zip(space.names, np.asarray(minuit.values)))
    errors = dict(zip(space.names, np.asarray(minuit.errors)))
    return values, errors, minuit.fval
