"""Asymptotic CLs as a differentiable function of the model's yields and modifier data.

An analysis that optimises its selection for the final sensitivity needs ``dCLs/d(yields)``.
:func:`differentiable_cls` takes a hypotest already computed (its five fits) and rebuilds its
CLs from them as a JAX function of ``(data, model)``: each fitted parameter vector is
:func:`fitax.implicit.implicit_minimum` of its fit (derivative from the implicit function
theorem), the Asimov data are the model's expectation at the background-only fit (so they move
with the model), and the statistics and p-values are the calculator's own JAX formulas. Its
value equals the hypotest's; ``equinox.filter_grad`` of it (the model also holds integer index
arrays, which ``jax.grad`` refuses) gives the derivatives with respect to every
array of the :class:`~fitax.hep.model.Model` (``nominal``, ``histosys_*``, ``normsys_*``,
``gauss_sigma``, ...) and to the observed data.

Example:
    >>> result = hypotest(1.0, data, model)  # doctest: +SKIP
    >>> d_model = eqx.filter_grad(lambda m: differentiable_cls(result, data, m)[0])(model)  # doctest: +SKIP
    >>> d_model.nominal  # dCLs_obs / d(nominal yield of each sample and bin)  # doctest: +SKIP
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ..implicit import implicit_minimum
from .calculators import HypotestResult, asymptotic_pvalues, expected_band
from .teststat import HistFitResult, statistic_value

__all__ = ["differentiable_bestfit", "differentiable_cls"]

# A parameter closer than this to a bound (relative to the bound range) is taken as held by
# it: the fit's minimum is on the bound, where it stays under small changes of the model.
_AT_BOUND = 1e-6


def _nll(vector, args):
    data, model = args
    return model.nll(vector, data)


def _bounds(fit: HistFitResult, model) -> np.ndarray:
    """``(n_parameters, 2)`` bounds of the fit's parameters in pyhf's order (from its
    Parameters, which hold them statically, so ``model`` may be traced)."""
    rows = []
    for pset in model.parameter_sets:
        entry = fit.params[pset.name]
        for parameter in (entry,) if pset.is_scalar else entry:
            rows.append((-np.inf if parameter.min is None else parameter.min, np.inf if parameter.max is None else parameter.max))
    return np.array(rows, dtype=float)


def _fitted(fit: HistFitResult, model, data, held: np.ndarray) -> Array:
    """The best-fit vector of ``fit`` as a function of ``(data, model)``."""
    bounds = _bounds(fit, model)
    scale = np.where(np.isfinite(bounds[:, 1] - bounds[:, 0]), bounds[:, 1] - bounds[:, 0], 1.0)
    at_bound = (fit.bestfit - bounds[:, 0] <= _AT_BOUND * scale) | (bounds[:, 1] - fit.bestfit <= _AT_BOUND * scale)
    free = ~(held | np.asarray(model.suggested_fixed()) | at_bound)
    return implicit_minimum(_nll, fit.bestfit, (data, model), free)


def differentiable_bestfit(fit: HistFitResult, data, model, poi_fixed: bool = False) -> Float[Array, " parameters"]:
    """The best-fit vector of ``fit`` (from :func:`~fitax.hep.teststat.mle_fit`, or
    :func:`~fitax.hep.teststat.fixed_poi_fit` with ``poi_fixed=True``) as a JAX function of
    ``data`` and ``model``; parameters fixed in the fit or at a bound have zero derivative."""
    if not fit.converged:
        raise ValueError(f"differentiable_bestfit: the fit did not converge ({'; '.join(fit.warnings)})")
    held = np.zeros(model.n_parameters, bool)
    held[model.poi_index] = poi_fixed
    return _fitted(fit, model, jnp.asarray(data, dtype=float), held)


def _sqrt(q):
    """``sqrt(q)`` with a finite derivative at ``q = 0`` (where the statistic is clipped)."""
    safe = jnp.where(q > 0, q, 1.0)
    return jnp.where(q > 0, jnp.sqrt(safe), 0.0)


def differentiable_cls(result: HypotestResult, data, model) -> tuple[Float[Array, ""], Float[Array, " 5"]]:
    """``(CLs_obs, CLs_exp)`` of an asymptotic ``result`` as JAX functions of ``data`` (main
    bins + auxiliary data) and ``model``, with the derivatives of its fits' minimisers.

    ``result`` must be :func:`~fitax.hep.calculators.hypotest` of the same ``data`` and
    ``model`` (asymptotics, every fit converged).
    """
    if result.calctype != "asymptotics":
        raise ValueError("differentiable_cls needs an asymptotic hypotest (toy CLs are not differentiable)")
    if not result.converged:
        raise ValueError(f"differentiable_cls: a fit of the hypotest did not converge ({'; '.join(result.warnings)})")
    data = jnp.asarray(data, dtype=float)
    fits = result.fits
    poi = model.poi_index
    only_poi = np.zeros(model.n_parameters, bool)
    only_poi[poi] = True
    nothing = np.zeros(model.n_parameters, bool)
    mu = result.poi_test

    free = _fitted(fits["free_data"], model, data, nothing)
    fixed = _fitted(fits["fixed_data"], model, data, only_poi)
    q = statistic_value(result.test_stat, mu, free[poi], model.nll(fixed, data), model.nll(free, data))

    # The Asimov data are the expectation at the background-only fit, whose free fit is that
    # point itself (with the POI at its Asimov value): both follow the model.
    generation = _fitted(fits["asimov_generation"], model, data, only_poi)
    asimov = model.expected_data(generation, include_auxdata=True)
    fixed_asimov = _fitted(fits["fixed_asimov"], model, asimov, only_poi)
    q_asimov = statistic_value(result.test_stat, mu, generation[poi], model.nll(fixed_asimov, asimov), model.nll(generation, asimov))

    sqrt_qa = _sqrt(q_asimov)
    _, clsb, _, cls = asymptotic_pvalues(result.test_stat, _sqrt(q), sqrt_qa)
    return (clsb if result.test_stat == "q0" else cls), expected_band(result.test_stat, sqrt_qa)
