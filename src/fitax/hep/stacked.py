"""Asymptotic CLs hypotests of many models of one structure, in one compiled program.

The signal points of a patchset differ only in their yields: their models have the same
modifiers, parameters and array shapes, so they stack into one pytree with a leading point
axis, and :func:`fitax.hep.asymptotic_fits.stacked_asymptotic_fits` runs every point's four
fits (the program :func:`~fitax.hep.calculators.hypotest` runs for one point) one point
after the other in one call. The numbers are :func:`~fitax.hep.calculators.hypotest`'s; what
the stacking saves is the dispatch and the Python around each point's program. A point any
of whose fits did not converge is tested again one fit at a time
(:class:`~fitax.hep.calculators.AsymptoticCalculator`), so its result carries the single
fits' fallbacks and diagnostics.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ..device import on_host, to_device
from ..parameters import ParameterSpace
from .asymptotic_fits import stacked_asymptotic_fits
from .calculators import AsymptoticCalculator, HypotestResult, check_test_stat, hypotest_from_fits
from .teststat import FIT_TOLERANCE, checked_data, free_poi_start

__all__ = ["hypotest_stacked", "same_structure"]


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


def _stack(trees: Sequence):
    # host leaves are stacked on the host and copied once (an eager jnp.stack per leaf is a
    # dispatched program each)
    return jax.tree_util.tree_map(lambda *xs: to_device(np.stack(xs)) if all(map(on_host, xs)) else jnp.stack(xs), *trees)


def hypotest_stacked(poi_test: float, data: Sequence, models: Sequence, test_stat: str = "qtilde") -> list[HypotestResult]:
    """The asymptotic CLs test of ``poi_test`` for each ``(data[i], models[i])``, all of one
    structure (:func:`same_structure`), in one compiled call.

    Equal to :func:`~fitax.hep.calculators.hypotest` on each point; a point with an
    unconverged fit is redone one fit at a time, as ``hypotest`` redoes it.
    """
    check_test_stat(test_stat)
    if len(same_structure(models)) != 1:
        raise ValueError("the models differ in structure (modifiers, parameters, shapes, bounds or fixed flags); group them with same_structure")
    poi_test = 0.0 if test_stat == "q0" else float(poi_test)
    asimov_mu = 1.0 if test_stat == "q0" else 0.0
    model = models[0]
    poi = model.poi_name
    starts = [free_poi_start(m, m.init_params()) for m in models]
    space = ParameterSpace.from_params(starts[0])
    observed = jnp.stack([checked_data(m, d) for m, d in zip(models, data)])
    arrays = stacked_asymptotic_fits(
        _stack(models), poi, float(starts[0][poi].value), space, _stack(starts), observed,
        to_device(poi_test), to_device(asimov_mu), FIT_TOLERANCE,
    )
    arrays = jax.tree_util.tree_map(np.asarray, arrays)
    results = []
    for i, (point_model, start) in enumerate(zip(models, starts)):
        point = jax.tree_util.tree_map(lambda x: x[i], arrays)
        result = hypotest_from_fits(point, point_model, start, space, poi_test, test_stat)
        # the single fits, with their fallbacks (not hypotest, which would rerun this program first)
        results.append(result if result is not None else AsymptoticCalculator(data[i], point_model, test_stat).hypotest(poi_test))
    return results
