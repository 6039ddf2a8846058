"""Asymptotic CLs hypotests of many models of one structure, in two batched fit rounds.

The signal points of a patchset differ only in their yields: their models have the same
modifiers, parameters and array shapes, so they stack into one pytree with a leading point
axis, and every fit of every point's hypotest runs in :func:`fitax.fit_batch`:

1. for each point, the free fit to its data, the conditional fit at the tested POI, the
   conditional fit that generates the Asimov data (POI 0; 1 for ``q0``) and the conditional
   fit at the POI's lower bound: ``4 n`` fits;
2. the conditional fit at the tested POI to each point's Asimov data: ``n`` fits.

The fits are those :func:`~fitax.hep.calculators.hypotest` makes one at a time, with the same
solver (damped Newton) from the same start, so each point's numbers are the same where the
fits reach the same minima (sbottom's likelihood has several local minima, and the batched
and single programs, differing in rounding, can end in different ones): the free
fit is replaced by the fit at the bound where that is lower (see :func:`_with_bound`), and
the free fit to the Asimov data is not run
(its minimum is known exactly, see :func:`fitax.hep.teststat.saturated_point`). What the
batch saves is the Python around each fit (~4 ms of a sbottom fit's ~10 ms). A point any of
whose fits did not converge is tested again by ``hypotest`` itself, so its result carries
the single fits' diagnostics.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..batch import BatchFitResult, fit_batch
from .calculators import HypotestResult, check_test_stat, fit_warnings, hypotest, pvalues_and_band
from .teststat import (
    FIT_TOLERANCE,
    ConditionalObjective,
    HistFitResult,
    bound_warnings,
    dotted_names,
    free_poi_start,
    saturated_point,
    statistic_value,
    with_poi,
)

__all__ = ["StackedObjective", "hypotest_stacked", "same_structure"]


class StackedObjective(eqx.Module):
    """:class:`~fitax.hep.teststat.ConditionalObjective` with the model among the per-problem
    arguments, so that problems of different models (stacked) share one batch."""

    poi: str = eqx.field(static=True)
    anchor: float = eqx.field(static=True)

    def __call__(self, params, args):
        model, data, fixed_value, conditional = args
        return ConditionalObjective(model, self.poi, self.anchor)(params, (data, fixed_value, conditional))


def _key(model) -> tuple:
    leaves, treedef = jax.tree_util.tree_flatten(model)
    return (
        treedef,
        tuple((np.shape(x), str(np.asarray(x).dtype)) for x in leaves),
        np.asarray(model.bounds).tobytes(),
        model.suggested_fixed().tobytes(),
    )


def same_structure(models: Sequence) -> list[list[int]]:
    """Indices of ``models`` grouped by structure (modifiers, parameters, shapes, bounds and
    fixed flags): each group can be stacked."""
    groups: dict = {}
    for i, model in enumerate(models):
        groups.setdefault(_key(model), []).append(i)
    return list(groups.values())


def _repeat(tree, times: int):
    return jax.tree_util.tree_map(lambda x: jnp.concatenate([x] * times), tree)


def _fit_results(model, result: BatchFitResult, start, conditional_values, expected_at_bound) -> list[HistFitResult]:
    """One :class:`HistFitResult` per row of ``result`` (``fit=None``: no single
    :class:`fitax.FitResult` exists); rows with a conditional value report the POI fixed."""
    vectors = np.asarray(model.to_vector(result.params), float)
    names = dotted_names(model)
    errors = np.zeros_like(vectors)
    for j, name in enumerate(names):
        if name in result.errors:
            errors[:, j] = result.errors[name]
    poi, position = model.poi_name, model.poi_index
    out = []
    for i in range(vectors.shape[0]):
        params = model.from_vector(vectors[i], template=start)
        values = {n: result.values[n][i] for n in result.names}
        row_errors = {n: result.errors[n][i] for n in result.names}
        warnings = bound_warnings(values, row_errors, params, expected_at_bound)
        if not result.converged[i]:
            warnings = (f"fit did not converge: {result.message(i)}",) + warnings
        bestfit, uncertainty = vectors[i].copy(), errors[i].copy()
        value = conditional_values[i]
        if value is not None:
            bestfit[position], uncertainty[position] = value, 0.0
            params = with_poi(params, poi, value, frozen=True)
        out.append(HistFitResult(
            bestfit=bestfit, uncertainty=uncertainty, twice_nll=float(result.stat[i]), converged=bool(result.converged[i]),
            warnings=warnings, params=params, fit=None,
        ))
    return out


def _with_bound(free: HistFitResult, at_bound: HistFitResult, model, lower, upper) -> HistFitResult:
    """The free fit, replaced by the fit with the POI fixed at its lower bound (a point of the
    free fit's domain) where that is lower: where the free POI ended on the bound, as
    :func:`~fitax.hep.teststat.mle_fit` does, and also where the free fit ended in a higher
    local minimum (on 16 scaled-signal sbottom points, one free fit ran to the POI's upper
    bound 0.40 above the fit at 0, where the single fit had stopped near 0). A warning where
    the POI ended at its upper bound."""
    position, poi = model.poi_index, model.poi_name
    mu_hat, error = free.bestfit[position], free.uncertainty[position]
    near = max(0.01 * error, 1e-6) if np.isfinite(error) else 1e-6
    if upper is not None and upper - mu_hat <= near:
        free = dataclasses.replace(free, warnings=free.warnings + (f"{poi} at its upper bound {upper:g}",))
    if lower is None or not at_bound.converged or at_bound.twice_nll >= free.twice_nll:
        return free
    return dataclasses.replace(at_bound, params=with_poi(at_bound.params, poi, lower, frozen=False, bounds=(lower, upper)))


def _stack(models: Sequence):
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *models)


def hypotest_stacked(poi_test: float, data: Sequence, models: Sequence, test_stat: str = "qtilde") -> list[HypotestResult]:
    """The asymptotic CLs test of ``poi_test`` for each ``(data[i], models[i])``, all of one
    structure (:func:`same_structure`), with every fit in two :func:`fitax.fit_batch` calls.

    Equal to :func:`~fitax.hep.calculators.hypotest` on each point where both reach the same
    minima; a point with an unconverged fit is redone that way.
    """
    check_test_stat(test_stat)
    if len(same_structure(models)) != 1:
        raise ValueError("the models differ in structure (modifiers, parameters, shapes, bounds or fixed flags); group them with same_structure")
    n = len(models)
    model = models[0]
    poi_test = 0.0 if test_stat == "q0" else float(poi_test)
    asimov_mu = 1.0 if test_stat == "q0" else 0.0
    poi = model.poi_name
    start = free_poi_start(model, model.init_params())
    anchor = float(start[poi].value)
    objective = StackedObjective(poi, anchor)
    stacked = _stack(models)
    observed = jnp.stack([jnp.asarray(d, float) for d in data])
    inits = np.stack([np.asarray(m.to_vector(free_poi_start(m, m.init_params())), float) for m in models])

    # round 1: free, conditional at poi_test, Asimov generation, conditional at the POI's lower bound
    lower, upper = start[poi].min, start[poi].max
    at_lower = poi_test if lower is None else lower
    conditional = np.repeat([False, True, True, True], n)
    fixed_values = np.repeat([poi_test, poi_test, asimov_mu, at_lower], n)
    args = (_repeat(stacked, 4), _repeat(observed, 4), jnp.asarray(fixed_values), jnp.asarray(conditional))
    first = fit_batch(objective, model.from_vector(np.tile(inits, (4, 1)), template=start), args, tol=FIT_TOLERANCE)
    fits = _fit_results(model, first, start, [None] * n + [poi_test] * n + [asimov_mu] * n + [at_lower] * n, expected_at_bound=(poi,))
    free, fixed, generation = fits[:n], fits[n : 2 * n], fits[2 * n : 3 * n]
    free = [_with_bound(f, b, model, lower, upper) for f, b in zip(free, fits[3 * n :])]

    # Asimov data: each model's expectation at its generating fit, the POI at asimov_mu
    generating = np.stack([g.bestfit for g in generation])
    asimov = jax.vmap(lambda m, v: m.expected_data(v, include_auxdata=True))(stacked, jnp.asarray(generating))
    free_asimov = [
        saturated_point(models[i], with_poi(generation[i].params, poi, asimov_mu, frozen=False, bounds=(lower, upper)), asimov[i])
        for i in range(n)
    ]

    # round 2: conditional at poi_test on the Asimov data
    args = (stacked, asimov, jnp.full(n, poi_test), jnp.ones(n, bool))
    second = fit_batch(objective, model.from_vector(inits, template=start), args, tol=FIT_TOLERANCE)
    fixed_asimov = _fit_results(model, second, start, [poi_test] * n, expected_at_bound=(poi,))

    position = model.poi_index
    mu_hat = np.array([f.bestfit[position] for f in free])
    q = statistic_value(test_stat, poi_test, mu_hat, np.array([f.twice_nll for f in fixed]), np.array([f.twice_nll for f in free]))
    q_asimov = statistic_value(
        test_stat, poi_test, asimov_mu, np.array([f.twice_nll for f in fixed_asimov]), np.array([f.twice_nll for f in free_asimov])
    )
    results = []
    for i in range(n):
        point_fits = {
            "free_data": free[i], "fixed_data": fixed[i], "asimov_generation": generation[i], "free_asimov": free_asimov[i],
            "fixed_asimov": fixed_asimov[i],
        }
        if not all(f.converged for f in point_fits.values()):
            results.append(hypotest(poi_test, data[i], models[i], test_stat))
            continue
        (t, clsb, clb, cls), band = pvalues_and_band(test_stat, float(np.sqrt(q[i])), float(np.sqrt(q_asimov[i])))
        results.append(HypotestResult(
            poi_test=poi_test, test_stat=test_stat, calctype="asymptotics",
            cls_obs=float(clsb if test_stat == "q0" else cls), cls_exp=np.asarray(band), clsb_obs=float(clsb),
            clb_obs=float(clb), teststat=float(t), fits=point_fits, converged=True,
            warnings=fit_warnings(point_fits),
        ))
    return results
