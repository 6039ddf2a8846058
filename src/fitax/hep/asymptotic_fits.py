"""The four fits of an asymptotic CLs test, and the Asimov data between them, as one program.

An asymptotic hypotest fits the observed data three times (free; the POI fixed at the tested
value; fixed at the Asimov value, which generates the Asimov data) and the Asimov data once
(the POI fixed at the tested value). Made one :func:`fitax.fit` at a time, each fit pays its
own dispatch and ~3-4 ms of Python around its 64 scalar Parameters on sbottom, more than its
~2 ms of arithmetic. Here the fits are :func:`fitax.fit_traced` calls chained in one compiled
program; the host receives arrays.

The fits are projected Newton (``method="projected"``: the bounds as a box), from the same
start as the single fits (pyhf's suggested init). A POI whose minimum lies on its lower bound
is reached exactly, so the single path's extra fit at the bound is not needed; the fit that
generates the Asimov data is that fit wherever the Asimov value is the lower bound (q~).
Data-independent choices (the test statistic, which POI values lie in the domain) are made
on the host; what is traced is the model's arrays, the data and the tested value, so a
limit scan or a new patch of the same structure reuses the program.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from .. import programs
from ..batch import fit_traced
from ..parameters import ParameterSpace
from .teststat import ConditionalObjective

__all__ = ["ROLES", "AsymptoticFits", "asymptotic_fits", "asymptotic_fits_traced", "stacked_asymptotic_fits"]

ROLES = ("free_data", "fixed_data", "asimov_generation", "fixed_asimov")
"""The fitted roles, in the order of :class:`AsymptoticFits`' leading axis."""


class AsymptoticFits(eqx.Module):
    """Arrays of the four fits, leading axis in :data:`ROLES` order; ``v`` and ``errors``
    over the free parameters (``ParameterSpace.names`` order, the POI free in every fit: see
    :class:`~fitax.hep.teststat.ConditionalObjective`)."""

    v: Float[Array, "4 n"]
    errors: Float[Array, "4 n"]
    twice_nll: Float[Array, "4"]
    edm: Float[Array, "4"]
    status: Int[Array, "4"]
    converged: Bool[Array, "4"]
    free_asimov_twice_nll: Float[Array, ""]


def _row(fit) -> tuple:
    errors = jnp.where(fit.positive_definite, jnp.sqrt(jnp.abs(jnp.diagonal(fit.covariance))), jnp.nan)
    return fit.v, errors, fit.stat, fit.edm, fit.status, fit.converged


def asymptotic_fits_traced(
    objective: Any,
    space: ParameterSpace,
    start: Any,
    data: Float[Array, " bins"],
    poi_test: Float[Array, ""],
    asimov_mu: Float[Array, ""],
    tol: float,
) -> AsymptoticFits:
    """The fits of the asymptotic test of ``poi_test`` (see the module docstring), one after
    the other on one device, as a traceable function (:func:`asymptotic_fits` compiles it). (``vmap`` would run every fit for as many steps as the slowest:
    11.8 against 5.8 ms for the three fits to sbottom's data; two lanes of two fits over two
    CPU devices with ``shard_map`` measured 14.6 against 12.7 ms for all four on one.)

    Args:
        objective: a :class:`~fitax.hep.teststat.ConditionalObjective` of the model.
        space: the parameter space of ``start`` (the POI free within its bounds).
        start: the Parameters every fit starts from.
        data: observed main bins followed by the auxiliary data.
        poi_test: the tested POI value; ``asimov_mu`` the POI of the Asimov data.
        tol: the fits' EDM tolerance (``-2 log L`` units).
    """
    model = objective.model

    def fit(args):
        return _row(fit_traced(objective, space, start, args, tol=tol, method="projected"))

    fixed_values = jnp.stack([poi_test, poi_test, asimov_mu])
    conditional = jnp.array([False, True, True])
    on_data = jax.lax.map(lambda a: fit((data, *a)), (fixed_values, conditional))
    generating = model.to_vector(space.with_values(start, on_data[0][2])).at[model.poi_index].set(asimov_mu)
    asimov = model.expected_data(generating, include_auxdata=True)
    fixed_asimov = fit((asimov, poi_test, jnp.asarray(True)))
    rows = [jnp.concatenate([a, b[None]]) for a, b in zip(on_data, fixed_asimov)]
    return AsymptoticFits(*rows, free_asimov_twice_nll=model.nll(generating, asimov))


asymptotic_fits = programs.cached(asymptotic_fits_traced, name="fitax.hep.asymptotic_fits")
""":func:`asymptotic_fits_traced` as one compiled program (kept on disk across processes
while :func:`fitax.programs.enable` is in force)."""


@programs.cached(name="fitax.hep.stacked_asymptotic_fits")
def stacked_asymptotic_fits(
    models: Any,
    poi: str,
    anchor: float,
    space: ParameterSpace,
    starts: Any,
    data: Float[Array, "points bins"],
    poi_test: Float[Array, ""],
    asimov_mu: Float[Array, ""],
    tol: float,
) -> AsymptoticFits:
    """:func:`asymptotic_fits_traced` for each point of ``models`` (models of one structure
    stacked along a leading axis, as ``starts`` and ``data``), one after the other in one
    program; every field of the result gains the point axis."""

    def one(point):
        model, start, observed = point
        objective = ConditionalObjective(model, poi, anchor)
        return asymptotic_fits_traced(objective, space, start, observed, poi_test, asimov_mu, tol)

    return jax.lax.map(one, (models, starts, data))
