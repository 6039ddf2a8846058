"""Upper limits on the POI by root finding on CLs, and profile-likelihood scans.

:func:`upper_limit` solves ``CLs(mu) = level`` for the observed CLs and for each of the five
expected ones with Brent's method (``scipy.optimize.brentq``) inside a bracket found by a
scan, as pyhf's ``intervals.upper_limits.toms748_scan`` does. The fits that do not depend on
``mu`` are made once (:class:`~fitax.hep.calculators.AsymptoticCalculator`), conditional fits
are cached by ``mu``, so the observed limit costs two fits per Brent step and each expected
limit one.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import brentq

from ..batch import fit_batch
from .calculators import AsymptoticCalculator, pvalues_and_band
from .teststat import FIT_TOLERANCE, HistFitResult, mle_fit, with_poi

__all__ = ["UpperLimit", "upper_limit", "ProfileScan", "profile_scan"]

LIMIT_RTOL = 1e-8
"""Relative tolerance of each root (Brent): far below the 1e-4 at which pyhf's own toms748
search stops, so the limits differ from pyhf's only by pyhf's tolerance and fit precision."""


@dataclasses.dataclass(frozen=True, repr=False)
class UpperLimit:
    """Observed and expected upper limits on the POI at CLs = ``level``.

    Attributes:
        observed: the observed limit.
        expected: the five expected limits, pyhf's order (-2, -1, 0, +1, +2 sigma band).
        level: the CLs level (0.05 for 95% CL).
        scan: POI values evaluated, sorted.
        cls_obs, cls_exp: CLs at each ``scan`` value (observed; ``(n, 5)`` expected).
        converged: every fit of every evaluated point converged.
        warnings: caveats from the fits.
    """

    observed: float
    expected: np.ndarray
    level: float
    scan: np.ndarray
    cls_obs: np.ndarray
    cls_exp: np.ndarray
    converged: bool
    warnings: tuple[str, ...]

    def to_dict(self) -> dict:
        return {
            "obs_limit": self.observed,
            "exp_limits": [float(x) for x in self.expected],
            "level": self.level,
            "converged": self.converged,
            "warnings": list(self.warnings),
        }

    def __repr__(self) -> str:
        return f"UpperLimit(observed={self.observed:.6g}, expected={np.round(self.expected, 6).tolist()}, converged={self.converged})"


class _CLsCurves:
    """Observed and expected CLs as functions of the POI, with the conditional fits cached."""

    def __init__(self, calculator: AsymptoticCalculator):
        self.calculator = calculator
        self.sqrt_q: dict[float, float] = {}
        self.sqrt_qa: dict[float, float] = {}
        self.fits: list[HistFitResult] = []

    def _asimov(self, mu: float) -> float:
        if mu not in self.sqrt_qa:
            value, fit = self.calculator.sqrt_qa(mu)
            self.sqrt_qa[mu] = value
            self.fits.append(fit)
        return self.sqrt_qa[mu]

    def _observed_and_band(self, mu: float):
        if mu not in self.sqrt_q:
            value, fit = self.calculator.sqrt_q(mu)
            self.sqrt_q[mu] = value
            self.fits.append(fit)
        (_, _, _, cls), band = pvalues_and_band(self.calculator.test_stat, self.sqrt_q[mu], self._asimov(mu))
        return float(cls), np.asarray(band)

    def observed(self, mu: float) -> float:
        return self._observed_and_band(mu)[0]

    def expected(self, mu: float) -> np.ndarray:
        sqrt_qa = self._asimov(mu)
        return np.asarray(pvalues_and_band(self.calculator.test_stat, sqrt_qa, sqrt_qa)[1])  # the band needs sqrt(q_A) only

    def all_curves(self, mu: float) -> np.ndarray:
        """Observed then the five expected CLs at ``mu``."""
        observed, band = self._observed_and_band(mu)
        return np.concatenate([[observed], band])


def upper_limit(data, model, level: float = 0.05, test_stat: str = "qtilde", init_params=None, bracket=None) -> UpperLimit:
    """Observed and expected upper limits on the POI (asymptotic CLs).

    Args:
        data, model: the observed data and the :class:`fitax.hep.Model`.
        level: CLs level of the limit (0.05: 95% CL).
        test_stat: ``"qtilde"`` (default) or ``"q"``.
        bracket: optional ``(low, high)`` start of the bracket search; by default the POI's
            bounds, with the lower end moved off 0 (pyhf's choice). The bracket is halved at the
            low end and doubled at the high end until every curve changes sign inside.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if test_stat not in ("q", "qtilde"):
        raise ValueError(f"upper limits use test_stat 'q' or 'qtilde', got {test_stat!r}")
    calculator = AsymptoticCalculator(data, model, test_stat, init_params)
    curves = _CLsCurves(calculator)
    poi = model.init_params()[model.poi_name]
    if bracket is None:
        high = poi.max if poi.max is not None else 10.0
        free_mu = float(calculator.free_fit.bestfit[calculator.poi_position])
        low = max(free_mu, 0.0) + 0.01 * high if poi.min is None or poi.min >= 0 else poi.min
    else:
        low, high = (float(x) for x in bracket)
    for _ in range(30):
        if np.all(curves.all_curves(low) > level):
            break
        low = low / 2 if low > 0 else low - 1.0
    else:
        raise RuntimeError(f"no lower end of the bracket found: CLs stays below {level} down to POI = {low:g}")
    for _ in range(30):
        if np.all(curves.all_curves(high) < level):
            break
        high *= 2
    else:
        raise RuntimeError(f"no upper end of the bracket found: CLs stays above {level} up to POI = {high:g}")

    def root(curve):
        # The tightest bracket among the points evaluated so far (every curve falls with mu).
        points = sorted(curves.sqrt_qa)
        below = [mu for mu in points if curve(mu) < level]
        above = [mu for mu in points if curve(mu) > level and mu < below[0]]
        return brentq(lambda mu: curve(mu) - level, above[-1], below[0], xtol=1e-12, rtol=LIMIT_RTOL)

    observed = root(curves.observed)
    expected = np.array([root(lambda mu, k=k: float(curves.expected(mu)[k])) for k in range(5)])
    scan = np.array(sorted(curves.sqrt_qa))
    obs = np.array([curves.observed(mu) for mu in scan])
    exp = np.array([curves.expected(mu) for mu in scan])
    fits = [calculator.free_fit, calculator.asimov[0]] + curves.fits
    warnings = tuple(dict.fromkeys(w for f in fits for w in f.warnings))
    return UpperLimit(
        observed=float(observed),
        expected=expected,
        level=level,
        scan=scan,
        cls_obs=obs,
        cls_exp=exp,
        converged=all(f.converged for f in fits),
        warnings=warnings,
    )


@dataclasses.dataclass(frozen=True, repr=False)
class ProfileScan:
    """Profile of ``-2 log L`` in the POI.

    Attributes:
        poi_values: scanned POI values.
        delta_twice_nll: ``-2 log L`` at each value minus its minimum over the POI (free fit).
        converged: each conditional fit converged.
        mle: the free fit.
    """

    poi_values: np.ndarray
    delta_twice_nll: np.ndarray
    converged: np.ndarray
    mle: HistFitResult

    def __repr__(self) -> str:
        return f"ProfileScan({self.poi_values.size} points, all converged={bool(self.converged.all())})"


class _ProfiledNLL(eqx.Module):
    """``-2 log L`` of the model as a function of its parameter pytree."""

    model: eqx.Module

    def __call__(self, params, data):
        return self.model.nll(self.model.to_vector(params), data)


def profile_scan(data, model, poi_values, init_params=None) -> ProfileScan:
    """``-2 log L`` profiled over the nuisance parameters at each POI value, relative to the
    free fit; all conditional fits in one :func:`fitax.fit_batch` call."""
    poi_values = np.asarray(poi_values, dtype=float).reshape(-1)
    if poi_values.size == 0:
        raise ValueError("poi_values is empty")
    params = model.init_params() if init_params is None else init_params
    mle = mle_fit(data, model, params)
    fixed = with_poi(params, model.poi_name, 0.0, frozen=True)
    batch = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, poi_values.shape + jnp.shape(x)), fixed)
    batch = eqx.tree_at(lambda b: b[model.poi_name].value, batch, jnp.asarray(poi_values))
    data = jnp.broadcast_to(jnp.asarray(data, dtype=float), poi_values.shape + (model.n_main_bins + model.aux_size,))
    result = fit_batch(_ProfiledNLL(model), batch, data, tol=FIT_TOLERANCE)
    return ProfileScan(poi_values=poi_values, delta_twice_nll=result.stat - mle.twice_nll, converged=result.converged, mle=mle)
