"""Profile likelihoods: scans, confidence intervals and test statistics.

Each profile point is a fit of the other free parameters with one parameter fixed; the fixed
value is data to the compiled fit, so a scan compiles once and each point starts from the
previous point's best fit.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from jaxtyping import ArrayLike, Float
from jax.scipy.special import gammaincc, gammaln, ndtri

from .fit import FitResult, call_objective, fit
from .parameters import ParameterSpace, freeze, get_parameter, parameters_dict, set_values

__all__ = ["profile", "ProfileResult", "confidence_interval", "ConfidenceInterval", "ts", "TSResult", "wilks_significance"]


@dataclasses.dataclass(frozen=True)
class ProfileResult:
    """A likelihood profile of one parameter.

    Attributes:
        name: the scanned parameter.
        values: scan points.
        stat: profiled statistic at each point (other free parameters refitted).
        delta_stat: ``stat - min(stat)``; compare with ``errordef * n_sigma**2``.
        converged: whether each refit converged.
        fitted: values of all parameters at each point, by dotted name.
    """

    name: str
    values: np.ndarray
    stat: np.ndarray
    converged: np.ndarray
    fitted: dict[str, np.ndarray]

    @property
    def delta_stat(self) -> np.ndarray:
        return self.stat - np.min(self.stat)

    def plot(self, ax=None, errordef: float = 1.0):
        """Plot ``delta_stat`` against the scanned values, with the 1 sigma level."""
        import matplotlib.pyplot as plt

        ax = ax or plt.gca()
        ax.plot(self.values, self.delta_stat, "-o", ms=3)
        ax.axhline(errordef, color="0.5", ls="--", lw=1, label="1 sigma")
        ax.set_xlabel(self.name)
        ax.set_ylabel("profiled delta stat")
        return ax


class _FixedPoint:
    """Fits of ``params`` with one parameter frozen at a chosen value, warm-started."""

    def __init__(self, objective, params, name, args, errordef, method, tol):
        parameter = get_parameter(params, name)
        if parameter.frozen:
            raise ValueError(f"parameter {name!r} is frozen; thaw it to profile it or to compute its interval")
        if parameter.tied_to is not None:
            raise ValueError(f"parameter {name!r} is tied to {parameter.tied_to!r}; profile {parameter.tied_to!r} instead")
        self.objective, self.name, self.args = objective, name, args
        self.errordef, self.method, self.tol = errordef, method, tol
        self.lower = parameter.min if parameter.min is not None else -np.inf
        self.upper = parameter.max if parameter.max is not None else np.inf
        self.current = freeze(params, name)
        self.others_free = ParameterSpace.from_params(self.current).size > 0
        self.not_converged: list[float] = []

    def __call__(self, value: float) -> tuple[float, bool, Any]:
        model = set_values(self.current, {self.name: value})
        if not self.others_free:
            return fixed_stat(self.objective, model, self.args, self.errordef), True, model
        result = fit(self.objective, model, self.method, args=self.args, errordef=self.errordef, tol=self.tol)
        if result.converged:
            self.current = result.params  # warm start for the next point
        else:
            self.not_converged.append(value)
        return result.stat, result.converged, result.params

    def warn_if_not_converged(self, what: str) -> None:
        if self.not_converged:
            points = ", ".join(f"{v:.6g}" for v in self.not_converged)
            warnings.warn(f"{what} of {self.name!r}: the refits of the other parameters at {self.name} = {points} did not "
                          "converge, so the profiled statistic there is only an upper bound", RuntimeWarning, stacklevel=3)


def fixed_stat(objective: Callable, params, args, errordef: float) -> float:
    """The statistic of a model without free parameters: the objective plus its priors'
    penalty, as :func:`fitax.fit` would minimise it."""
    stat = call_objective(objective, params, args) + errordef * ParameterSpace.from_params(params).prior_penalty(params)
    return float(stat)


def profile(
    objective: Callable,
    params,
    name: str,
    values: Sequence[float] | Float[ArrayLike, " n"],
    *,
    args: Any = None,
    errordef: float = 1.0,
    method: str = "auto",
    tol: float = 1e-6,
) -> ProfileResult:
    """Profile the statistic over parameter ``name`` at the given ``values``.

    Points whose refit did not converge are marked in ``converged``, do not warm-start the
    next point, and raise a ``RuntimeWarning`` naming them.

    Example:
        >>> import jax.numpy as jnp, fitax
        >>> p = {"a": fitax.Parameter(1.0), "b": fitax.Parameter(0.0)}
        >>> f = lambda p: (p["a"].value - 2) ** 2 + (p["a"].value - p["b"].value) ** 2
        >>> prof = fitax.profile(f, p, "a", [1.0, 2.0, 3.0])
        >>> prof.delta_stat.round(6).tolist()
        [1.0, 0.0, 1.0]
    """
    point = _FixedPoint(objective, params, name, args, errordef, method, tol)
    stats, converged, fitted = [], [], {n: [] for n in parameters_dict(params)}
    for value in values:
        stat, ok, model = point(float(value))
        stats.append(stat)
        converged.append(ok)
        for n, p in parameters_dict(model).items():
            fitted[n].append(float(np.asarray(p.value)))
    point.warn_if_not_converged("profile")
    return ProfileResult(
        name=name,
        values=np.asarray(values, dtype=float),
        stat=np.asarray(stats),
        converged=np.asarray(converged),
        fitted={n: np.asarray(v) for n, v in fitted.items()},
    )


@dataclasses.dataclass(frozen=True)
class ConfidenceInterval:
    """A profile-likelihood interval ``[lower, upper]`` around the best fit ``value``.

    ``lower_at_bound``/``upper_at_bound`` are true where the profile did not reach the
    threshold before the parameter's bound: the interval is then open on that side and the
    bound is reported (a one-sided limit).
    """

    name: str
    value: float
    lower: float
    upper: float
    n_sigma: float
    lower_at_bound: bool
    upper_at_bound: bool

    @property
    def errors(self) -> tuple[float, float]:
        """``(value - lower, upper - value)``, the asymmetric errors."""
        return self.value - self.lower, self.upper - self.value


def _find_crossing(point: _FixedPoint, best: float, step: float, target: float, direction: int, max_points: int):
    """Value on one side of ``best`` where the profiled statistic reaches ``target``."""
    bound = point.upper if direction > 0 else point.lower
    inner, inner_stat = best, None
    outer = best + direction * step
    for _ in range(max_points):
        if direction * (outer - bound) >= 0:
            outer = bound
        stat, _, _ = point(outer)
        if stat >= target:
            break
        if outer == bound:
            return bound, True
        inner, inner_stat = outer, stat
        outer = best + 2 * (outer - best)
    else:
        raise RuntimeError(f"profile of {point.name!r} did not reach the threshold within {max_points} doublings")
    outer_stat = stat
    # Safeguarded secant/bisection on the bracket [inner, outer].
    for _ in range(max_points):
        if inner_stat is None:
            inner_stat, _, _ = point(inner)
        frac = (target - inner_stat) / (outer_stat - inner_stat) if outer_stat != inner_stat else 0.5
        trial = inner + np.clip(frac, 0.1, 0.9) * (outer - inner)
        stat, _, _ = point(trial)
        if abs(stat - target) < 1e-4 * max(abs(target - inner_stat), 1e-3):
            return trial, False
        if stat < target:
            inner, inner_stat = trial, stat
        else:
            outer, outer_stat = trial, stat
        if abs(outer - inner) <= 1e-10 * max(abs(best), abs(step)):
            break
    return 0.5 * (inner + outer), False


def confidence_interval(
    objective: Callable,
    params,
    name: str,
    *,
    n_sigma: float = 1.0,
    args: Any = None,
    errordef: float = 1.0,
    method: str = "auto",
    result: FitResult | None = None,
    max_points: int = 40,
    tol: float = 1e-6,
) -> ConfidenceInterval:
    """Profile-likelihood interval of parameter ``name`` (like MINOS): where the profiled
    statistic rises by ``errordef * n_sigma**2`` above its minimum.

    Args:
        result: the best fit, if already done (it is refitted otherwise).
        tol: EDM tolerance of every refit (as in :func:`fitax.fit`); the interval ends are
            found to about ``1e-4`` in the statistic.
    """
    if result is None:
        result = fit(objective, params, method, args=args, errordef=errordef, tol=tol)
    # One fixed-point fitter per side (each warm-starts along its own direction); building
    # them first refuses frozen, tied or unknown parameters before any work.
    below, above = (_FixedPoint(objective, result.params, name, args, errordef, method, tol) for _ in range(2))
    best = result.values[name]
    target = result.stat + errordef * n_sigma**2
    error = result.errors.get(name, np.nan)
    step = n_sigma * error if np.isfinite(error) and error > 0 else max(abs(best) * 0.1, 1e-3)
    lower, lower_open = _find_crossing(below, best, step, target, -1, max_points)
    upper, upper_open = _find_crossing(above, best, step, target, +1, max_points)
    below.warn_if_not_converged("confidence interval")
    above.warn_if_not_converged("confidence interval")
    return ConfidenceInterval(name, best, float(lower), float(upper), n_sigma, lower_open, upper_open)


@dataclasses.dataclass(frozen=True)
class TSResult:
    """Test statistic of nested models, ``ts = (stat_null - stat_alt) / errordef``.

    ``ts`` is in ``-2 log L`` units; ``significance`` is the Gaussian-equivalent significance
    from Wilks' theorem with ``df`` degrees of freedom (valid away from parameter bounds).
    ``converged`` is false when either fit did not converge: ``ts`` is then unreliable.
    """

    ts: float
    df: int
    significance: float
    result_alt: FitResult
    result_null: FitResult

    @property
    def converged(self) -> bool:
        return self.result_alt.converged and self.result_null.converged


def warn_unless_converged(result: TSResult) -> None:
    """A ``RuntimeWarning`` naming the fits of a TS that did not converge, with their messages."""
    failed = [f"{which} fit ({r.message})" for which, r in (("alternative", result.result_alt), ("null", result.result_null))
              if not r.converged]
    if failed:
        warnings.warn(f"TS = {result.ts:.4g} is unreliable: the {' and the '.join(failed)} did not converge", RuntimeWarning,
                      stacklevel=3)


def ts(
    objective: Callable,
    params,
    null: dict[str, float],
    *,
    args: Any = None,
    errordef: float = 1.0,
    method: str = "auto",
    tol: float = 1e-6,
) -> TSResult:
    """Test statistic for the null hypothesis that fixes ``null`` parameters to given values.

    Example (is there a source? amplitude fixed to 0 under the null):
        >>> import jax.numpy as jnp, fitax
        >>> n = jnp.array([5.0, 12.0, 30.0, 11.0, 4.0])
        >>> shape = jnp.array([0.0, 0.2, 1.0, 0.2, 0.0])
        >>> p = {"amp": fitax.Parameter(10.0, min=0), "bkg": fitax.Parameter(5.0, min=0)}
        >>> f = lambda p: fitax.stats.cash(n, p["bkg"].value + p["amp"].value * shape)
        >>> round(fitax.ts(f, p, {"amp": 0.0}).ts, 1)
        30.9
    """
    if not null:
        raise ValueError("null must name at least one parameter to fix")
    result_alt = fit(objective, params, method, args=args, errordef=errordef, tol=tol)
    null_params = result_alt.params
    for name in null:
        parameter = get_parameter(null_params, name)
        if parameter.frozen:
            raise ValueError(f"parameter {name!r} is already frozen; the null hypothesis must fix free parameters")
    null_params = freeze(set_values(null_params, null), *null)
    if ParameterSpace.from_params(null_params).size == 0:
        stat_null = fixed_stat(objective, null_params, args, errordef)
        result_null = dataclasses.replace(result_alt, params=null_params, stat=stat_null, converged=True,
                                          message="no free parameter under the null: evaluated, not fitted")
    else:
        result_null = fit(objective, null_params, method, args=args, errordef=errordef, tol=tol)
    value = (result_null.stat - result_alt.stat) / errordef
    df = len(null)
    result = TSResult(float(value), df, wilks_significance(value, df), result_alt, result_null)
    warn_unless_converged(result)
    return result


def wilks_significance(ts_value: float, df: int) -> float:
    """Gaussian-equivalent significance of ``ts_value`` for a chi2 with ``df`` degrees of freedom.

    Gammapy's convention (``ts_to_sigma``): the one-sided Gaussian quantile of half the chi2
    p-value, which is exactly ``sqrt(ts)`` for one degree of freedom (a source amplitude
    bounded at 0, Chernoff's half-chi2). Where the p-value underflows (TS of hundreds or
    more) the asymptotic chi2 tail is used.
    """
    ts_value = max(float(ts_value), 0.0)
    if df == 1:
        return float(np.sqrt(ts_value))
    p_value = 0.5 * float(gammaincc(df / 2.0, ts_value / 2.0))
    if p_value > 1e-300:
        # -ndtri(p) rather than ndtri(1 - p): keeps precision for small p-values.
        return max(float(-ndtri(p_value)), 0.0)
    half = ts_value / 2.0
    log_p = -half + (df / 2.0 - 1.0) * np.log(half) - float(gammaln(df / 2.0)) - np.log(2.0)
    z2 = -2.0 * log_p
    return float(np.sqrt(z2 - np.log(z2) - np.log(2 * np.pi)))
