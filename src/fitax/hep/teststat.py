"""Maximum-likelihood fits and profile-likelihood test statistics of HistFactory models.

Every fit is :func:`fitax.fit` (damped Newton with exact Hessians) of ``-2 log L`` (errordef 1)
with the model's hand-written derivatives (:meth:`fitax.hep.Model.nll`), started, like pyhf's, from the
model's suggested initial values; free and conditional fits are one compiled program
(:class:`ConditionalObjective`).
The test statistics follow pyhf (``pyhf.infer.test_statistics``, arXiv:1007.1727):
``t = 2 NLL(mu, theta_hat_hat) - 2 NLL(mu_hat, theta_hat)`` clipped at 0, with the free fit
bounded by the POI's bounds (lower bound 0 gives the "tilde" statistics); ``q_mu`` and
``q~_mu`` are 0 where ``mu_hat > mu``, ``q0`` is 0 where ``mu_hat < 0``.

Two places where fitax differs from pyhf's numbers on purpose, both towards the exact value:

* a free fit whose POI ends at its lower bound is compared with the fit with the POI fixed at
  that bound, and the lower of the two minima is kept: a bounded coordinate approaches its
  bound only geometrically, and the fixed fit is the exact constrained minimum there;
* the free fit to an Asimov dataset is not run: Asimov data are the model's expectation at
  the parameters they were generated from, where every Poisson and constraint term is at its
  own maximum, so that point is the global minimum exactly (pyhf fits it and gets it to the
  optimiser's tolerance).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from ..device import on_host, to_device
from ..fit import FitResult, fit
from ..parameters import Parameter, parameters_dict

__all__ = [
    "HistFitResult",
    "bound_warnings",
    "checked_data",
    "free_fit_or_bound_fit",
    "TestStatResult",
    "TEST_STATISTICS",
    "mle_fit",
    "fixed_poi_fit",
    "ConditionalObjective",
    "free_poi_start",
    "saturated_point",
    "test_statistic",
    "q0",
    "qmu",
    "qmu_tilde",
    "tmu",
    "tmu_tilde",
    "parameter_labels",
    "dotted_names",
]

TEST_STATISTICS = ("q0", "q", "qtilde", "t", "ttilde")
"""Names accepted by :func:`test_statistic` (pyhf's, plus ``t`` and ``ttilde``)."""

FIT_TOLERANCE = 1e-12
"""EDM tolerance of every fit, in units of ``-2 log L`` (an EDM of ``d**2``: ``d`` standard
errors from the minimum). Tight because the Asimov dataset is built from a fit: its error
enters ``q_A`` to first order. Measured on sbottom: at 1e-9 the generating fit stopped at
EDM 3e-10 and moved the expected CLs by 1.6e-6 relative; at 1e-12 Newton's quadratic
convergence ends every fit of the hypotest at EDM <= 1e-20 for two more iterations."""


def parameter_labels(model) -> list[str]:
    """pyhf's labels of the entries of ``model.to_vector``: ``name`` for scalar parameters,
    ``name[i]`` for the bins of multi-bin ones (staterror, shapesys, shapefactor)."""
    return list(model.par_names)


def dotted_names(model) -> list[str]:
    """fitax's dotted names (as in :class:`fitax.FitResult`) of the entries of
    ``model.to_vector``: ``name`` or ``name.i``."""
    return [p.name if p.is_scalar else f"{p.name}.{i}" for p in model.parameter_sets for i in range(p.size)]


@dataclasses.dataclass(frozen=True, repr=False)
class HistFitResult:
    """One fit of a HistFactory model.

    Attributes:
        bestfit: fitted values of all parameters, in pyhf's order (``model.to_vector``).
        uncertainty: their errors from the exact Hessian (0 for fixed parameters).
        twice_nll: ``-2 log L`` at the best fit (pyhf's ``twice_nll``).
        converged: the fit converged (EDM below tolerance at a positive-definite Hessian).
        warnings: parameters at a bound they should not be at, and similar caveats.
        params: the fitted parameter pytree.
        fit: the underlying :class:`fitax.FitResult` (``None`` for a point known exactly,
            see :func:`saturated_point`, and for the fits of a hypotest made in one program,
            :mod:`fitax.hep.asymptotic_fits`: refit with :func:`mle_fit` for a covariance).
    """

    bestfit: np.ndarray
    uncertainty: np.ndarray
    twice_nll: float
    converged: bool
    warnings: tuple[str, ...]
    params: Any
    fit: FitResult | None

    def to_dict(self, labels: list[str]) -> dict:
        """JSON-ready summary: minimum, convergence and the values by pyhf label."""
        return {
            "twice_nll": self.twice_nll,
            "converged": self.converged,
            "warnings": list(self.warnings),
            "bestfit": dict(zip(labels, self.bestfit.tolist())),
            "uncertainty": dict(zip(labels, self.uncertainty.tolist())),
        }

    def __repr__(self) -> str:
        return f"HistFitResult(twice_nll={self.twice_nll:.6f}, converged={self.converged}, warnings={list(self.warnings)})"


def _poi_parameter(params, poi: str) -> Parameter:
    if poi not in params:
        raise KeyError(f"the model has no parameter of interest {poi!r}; its parameters are {sorted(params)}")
    return params[poi]


def with_poi(params, poi: str, value=None, *, frozen: bool, bounds=None):
    """``params`` with the POI replaced: fixed at ``value`` (no bounds, so that every fixed
    value shares one compiled fit), or free within ``bounds`` (default: its own)."""
    current = _poi_parameter(params, poi)
    value = current.value if value is None else value
    if frozen:
        new = Parameter(value, frozen=True)
    else:
        lo, hi = (current.min, current.max) if bounds is None else bounds
        new = Parameter(value, min=lo, max=hi)
    return {**params, poi: new}


def bound_warnings(values, errors, params, expected_at_bound: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Free parameters of ``params`` whose fitted value (``values``, by dotted name) lies
    within 1% of its error (``errors``) or 1e-6 absolute of a bound, except those expected
    there (the POI of a tilde statistic at 0)."""
    out = []
    for name, p in parameters_dict(params).items():
        if p.frozen or p.tied_to is not None or name in expected_at_bound:
            continue
        value, error = values[name], errors[name]
        tol = max(0.01 * error, 1e-6) if np.isfinite(error) else 1e-6
        for bound, side in ((p.min, "lower"), (p.max, "upper")):
            if bound is not None and abs(value - bound) <= tol:
                out.append(f"{name} at its {side} bound {bound:g}")
    return tuple(out)


PRECISION_EDM = 1e-6
"""A fit that stops above :data:`FIT_TOLERANCE` but below this EDM (fitax's default tolerance;
Minuit's default goal is 2e-4) at a positive-definite Hessian is a minimum to float64 precision:
with yields of ~1e5 events the rounding of ``-2 log L`` (~1e-11) stops every step first
(measured on an AGC workspace: EDM 3.6e-11, iminuit from that point agrees to 1e-11 with EDM
5e-8). It is reported converged, with a warning that names its EDM."""


def _summarise(model, result: FitResult, expected_at_bound=()) -> HistFitResult:
    params = result.params
    names = dotted_names(model)
    warnings = bound_warnings(result.values, result.errors, params, expected_at_bound)
    converged = bool(result.converged)
    if not converged and np.isfinite(result.edm) and result.edm < PRECISION_EDM and np.all(np.isfinite(result.covariance)):
        converged = True
        warnings = (f"EDM {result.edm:.2g} is above the requested {FIT_TOLERANCE:g} (float64 rounding stops the steps), below {PRECISION_EDM:g}",) + warnings
    if not converged:
        warnings = (f"fit did not converge: {result.message}",) + warnings
    return HistFitResult(
        bestfit=np.array([result.values[n] for n in names]),
        uncertainty=np.array([result.errors[n] for n in names]),
        twice_nll=float(result.stat),
        converged=converged,
        warnings=warnings,
        params=params,
        fit=result,
    )


def checked_data(model, data) -> jnp.ndarray:
    """``data`` as a float64 device array, checked against the model: a ValueError names its
    shape against the model's bins, or non-finite values."""
    # host data are checked with NumPy and copied to the device once (eager JAX would
    # compile a program per operation, ~14 ms each in a new process)
    host = on_host(data)
    xp = np if host else jnp
    data = xp.asarray(data, dtype=float)
    expected = model.n_main_bins + model.aux_size
    if data.ndim != 1 or data.shape[0] != expected:
        raise ValueError(
            f"data has shape {tuple(data.shape)}; the model expects {expected} values "
            f"({model.n_main_bins} main bins + {model.aux_size} auxiliary data)"
        )
    if not bool(xp.all(xp.isfinite(data))):
        raise ValueError("data contain non-finite values")
    return to_device(data) if host else data


class ConditionalObjective(eqx.Module):
    """``-2 log L`` of a free or a conditional fit, so that both share one structure, one
    compiled program (:func:`fitax.fit`) or one batch (:func:`fitax.fit_batch`).

    The POI is a free parameter in every fit. With ``conditional`` true the likelihood is
    evaluated at ``fixed_value`` instead, and ``(mu - anchor)**2`` pins the then flat POI at
    ``anchor`` (its start value, inside its bounds) without touching the minimum: the Hessian
    stays positive definite and the objective at the optimum is exactly the conditional
    ``-2 log L``. One program instead of two halves what a hypotest compiles.
    """

    model: Any
    poi: str = eqx.field(static=True)
    anchor: float = eqx.field(static=True)

    def __call__(self, params, args):
        data, fixed_value, conditional = args
        mu = params[self.poi].value
        evaluated = eqx.tree_at(lambda p: p[self.poi].value, params, jnp.where(conditional, fixed_value, mu))
        nll = self.model.nll(self.model.to_vector(evaluated), data)
        return nll + jnp.where(conditional, (mu - self.anchor) ** 2, 0.0)


def free_poi_start(model, init_params, poi_bounds=None):
    """``init_params`` with the POI free within ``poi_bounds`` (default its own), checked to
    start strictly inside them (a bounded coordinate cannot start on its bound)."""
    params = with_poi(init_params, model.poi_name, frozen=False, bounds=poi_bounds)
    poi = params[model.poi_name]
    start = float(poi.value)
    if (poi.min is not None and start <= poi.min) or (poi.max is not None and start >= poi.max):
        raise ValueError(f"the POI {model.poi_name!r} starts at {start}, not strictly inside its bounds [{poi.min}, {poi.max}]")
    return params


def _fit(model, data, init_params, poi_bounds, conditional_value: float | None) -> HistFitResult:
    params = free_poi_start(model, model.init_params() if init_params is None else init_params, poi_bounds)
    poi = model.poi_name
    conditional = conditional_value is not None
    objective = ConditionalObjective(model, poi, float(params[poi].value))
    args = (data, to_device(0.0 if conditional_value is None else float(conditional_value)), to_device(conditional))
    result = _summarise(model, fit(objective, params, args=args, tol=FIT_TOLERANCE), expected_at_bound=(poi,))
    if not conditional:
        return result
    bestfit, uncertainty = result.bestfit.copy(), result.uncertainty.copy()
    bestfit[model.poi_index], uncertainty[model.poi_index] = conditional_value, 0.0
    params = with_poi(result.params, poi, conditional_value, frozen=True)
    return dataclasses.replace(result, bestfit=bestfit, uncertainty=uncertainty, params=params)


def fixed_poi_fit(poi_value: float, data, model, init_params=None, poi_bounds=None) -> HistFitResult:
    """Fit the nuisance parameters with the POI fixed at ``poi_value`` (pyhf's
    ``fixed_poi_fit``): the conditional fit ``theta_hat_hat(mu)``. ``poi_value`` may lie
    outside the POI's bounds (limit scans); ``poi_bounds`` only selects the compiled program
    shared with the free fit of the same bounds."""
    data = checked_data(model, data)
    return _fit(model, data, init_params, poi_bounds, float(poi_value))


def mle_fit(data, model, init_params=None, poi_bounds=None) -> HistFitResult:
    """The unconditional maximum-likelihood fit (pyhf's ``mle.fit``), POI within
    ``poi_bounds`` (default: the model's).

    If the POI ends at its lower bound, the fit with the POI fixed there is run as well and the
    lower minimum kept (the bounded coordinate converges to its bound only geometrically); a POI
    at its lower bound is expected, not a warning. A POI at its upper bound is a warning.
    """
    data = checked_data(model, data)
    result = _fit(model, data, init_params, poi_bounds, None)
    poi = result.params[model.poi_name]
    mu_hat, error = result.bestfit[model.poi_index], result.uncertainty[model.poi_index]
    if poi.max is not None and poi.max - mu_hat <= max(0.01 * error, 1e-6):
        result = dataclasses.replace(result, warnings=result.warnings + (f"{model.poi_name} at its upper bound {poi.max:g}",))
    if poi.min is None or mu_hat - poi.min > (max(0.01 * error, 1e-6) if np.isfinite(error) else 1e-6):
        return result
    at_bound = _fit(model, data, init_params, poi_bounds, poi.min)
    if at_bound.converged and at_bound.twice_nll < result.twice_nll:
        # Reported as the free fit it is: the POI free, at its lower bound.
        params = with_poi(at_bound.params, model.poi_name, poi.min, frozen=False, bounds=(poi.min, poi.max))
        return dataclasses.replace(at_bound, params=params)
    return result


def saturated_point(model, params, data) -> HistFitResult:
    """``-2 log L`` at ``params`` without fitting: the exact minimum when ``data`` are the
    model's Asimov expectation at ``params`` (every term of the likelihood at its maximum)."""
    twice_nll = float(model.nll(params, jnp.asarray(data, dtype=float)))
    if not np.isfinite(twice_nll):
        raise ValueError(f"-2 log L is {twice_nll} at the given parameters")
    vector = np.asarray(model.to_vector(params), float)
    return HistFitResult(
        bestfit=vector, uncertainty=np.zeros_like(vector), twice_nll=twice_nll, converged=True, warnings=(), params=params, fit=None
    )


def free_fit_or_bound_fit(free: HistFitResult, at_bound: HistFitResult, model, lower, upper) -> HistFitResult:
    """The free fit, replaced by the fit with the POI fixed at its lower bound (a point of the
    free fit's domain) where that is lower: where the free POI ended on the bound, as
    :func:`mle_fit` does, and also where the free fit ended in a higher local minimum (on 16
    scaled-signal sbottom points, one batched free fit ran to the POI's upper bound 0.40 above
    the fit at 0, where the single fit had stopped near 0). A warning where the POI ended at
    its upper bound."""
    position, poi = model.poi_index, model.poi_name
    mu_hat, error = free.bestfit[position], free.uncertainty[position]
    near = max(0.01 * error, 1e-6) if np.isfinite(error) else 1e-6
    if upper is not None and upper - mu_hat <= near:
        free = dataclasses.replace(free, warnings=free.warnings + (f"{poi} at its upper bound {upper:g}",))
    if lower is None or not at_bound.converged or at_bound.twice_nll >= free.twice_nll:
        return free
    return dataclasses.replace(at_bound, params=with_poi(at_bound.params, poi, lower, frozen=False, bounds=(lower, upper)))


@dataclasses.dataclass(frozen=True, repr=False)
class TestStatResult:
    """A profile-likelihood test statistic and the two fits it is made of.

    Attributes:
        name: ``"q0"``, ``"q"``, ``"qtilde"``, ``"t"`` or ``"ttilde"``.
        poi_test: the tested POI value.
        value: the statistic.
        fixed: the conditional fit at ``poi_test`` (at 0 for ``q0``).
        free: the unconditional fit.
        converged: both fits converged.
    """

    __test__ = False  # not a pytest class

    name: str
    poi_test: float
    value: float
    fixed: HistFitResult
    free: HistFitResult

    @property
    def converged(self) -> bool:
        return self.fixed.converged and self.free.converged

    @property
    def warnings(self) -> tuple[str, ...]:
        return tuple(f"conditional fit: {w}" for w in self.fixed.warnings) + tuple(f"free fit: {w}" for w in self.free.warnings)

    def __repr__(self) -> str:
        return f"TestStatResult({self.name}={self.value:.6g} at {self.poi_test:g}, converged={self.converged})"


def statistic_value(name: str, poi_test: float, mu_hat, twice_nll_fixed, twice_nll_free):
    """The statistic from the two minima and the fitted POI (NumPy or JAX arrays, so toys
    are computed in one vectorised expression)."""
    xp = jnp if isinstance(mu_hat, jnp.ndarray) else np
    ratio = xp.clip(twice_nll_fixed - twice_nll_free, 0.0, None)
    if name in ("q", "qtilde"):
        return xp.where(mu_hat > poi_test, 0.0, ratio)
    if name == "q0":
        return xp.where(mu_hat < 0.0, 0.0, ratio)
    return ratio


def _check_name(name: str) -> None:
    if name not in TEST_STATISTICS:
        raise ValueError(f"unknown test statistic {name!r}; expected one of {', '.join(TEST_STATISTICS)}")


def test_statistic(name: str, poi_test: float, data, model, *, init_params=None, poi_bounds=None, free: HistFitResult | None = None) -> TestStatResult:
    """The test statistic ``name`` at ``poi_test`` (``q0`` always tests 0).

    Like pyhf, the free fit uses the POI bounds as given (default the model's: a lower bound of
    0 makes ``q`` equal to ``qtilde`` in value); pass ``poi_bounds`` to widen them for the
    non-tilde statistics. ``free`` reuses an unconditional fit already made on ``data``.
    """
    _check_name(name)
    poi_test = 0.0 if name == "q0" else float(poi_test)
    fixed = fixed_poi_fit(poi_test, data, model, init_params, poi_bounds)
    free = mle_fit(data, model, init_params, poi_bounds) if free is None else free
    mu_hat = free.bestfit[model.poi_index]
    value = float(statistic_value(name, poi_test, mu_hat, fixed.twice_nll, free.twice_nll))
    return TestStatResult(name=name, poi_test=poi_test, value=value, fixed=fixed, free=free)


def q0(data, model, **kwargs) -> TestStatResult:
    """Discovery statistic ``q0`` (arXiv:1007.1727, eq. 12)."""
    return test_statistic("q0", 0.0, data, model, **kwargs)


def qmu(poi_test: float, data, model, **kwargs) -> TestStatResult:
    """Upper-limit statistic ``q_mu`` (eq. 14)."""
    return test_statistic("q", poi_test, data, model, **kwargs)


def qmu_tilde(poi_test: float, data, model, **kwargs) -> TestStatResult:
    """Upper-limit statistic ``q~_mu`` for a POI bounded below at 0 (eq. 16)."""
    return test_statistic("qtilde", poi_test, data, model, **kwargs)


def tmu(poi_test: float, data, model, **kwargs) -> TestStatResult:
    """Two-sided statistic ``t_mu`` (eq. 8)."""
    return test_statistic("t", poi_test, data, model, **kwargs)


def tmu_tilde(poi_test: float, data, model, **kwargs) -> TestStatResult:
    """Two-sided statistic ``t~_mu`` for a POI bounded below at 0 (eq. 11)."""
    return test_statistic("ttilde", poi_test, data, model, **kwargs)
