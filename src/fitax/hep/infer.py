"""Inference on HistFactory models: the public entry points, plus pulls, ranking and yields.

Fits and test statistics live in :mod:`fitax.hep.teststat`, hypothesis tests in
:mod:`fitax.hep.calculators`, limits and profile scans in :mod:`fitax.hep.limits`; this module
gathers them and adds the post-fit summaries:

* :func:`pulls`: ``(theta_hat - theta_0) / sigma_prefit`` and ``sigma_hat / sigma_prefit`` of
  every constrained parameter;
* :func:`ranking`: the pre- and post-fit impact of each nuisance parameter on the POI (the fit
  repeated with the parameter fixed at ``theta_hat +- sigma``, pre-fit sigma from its
  constraint, post-fit from the covariance), all ``4 n`` refits in one
  :func:`fitax.fit_batch` call;
* :func:`yields`: expected yields per channel, sample and bin with uncertainties from linear
  propagation of the covariance (pre-fit: the constraints' widths; post-fit: the fit's).
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..batch import fit_batch
from .calculators import (
    AsymptoticCalculator,
    HypotestResult,
    Significance,
    ToyCalculator,
    discovery_significance,
    hypotest,
    sample_data,
)
from .limits import ProfileScan, UpperLimit, profile_scan, upper_limit
from .teststat import (
    FIT_TOLERANCE,
    HistFitResult,
    TestStatResult,
    fixed_poi_fit,
    mle_fit,
    parameter_labels,
    q0,
    qmu,
    qmu_tilde,
    test_statistic,
    tmu,
    tmu_tilde,
)

__all__ = [
    "AsymptoticCalculator",
    "HistFitResult",
    "HypotestResult",
    "ProfileScan",
    "Ranking",
    "Significance",
    "TestStatResult",
    "ToyCalculator",
    "UpperLimit",
    "discovery_significance",
    "fixed_poi_fit",
    "hypotest",
    "mle_fit",
    "parameter_labels",
    "profile_scan",
    "pulls",
    "q0",
    "qmu",
    "qmu_tilde",
    "ranking",
    "sample_data",
    "test_statistic",
    "tmu",
    "tmu_tilde",
    "upper_limit",
    "yields",
]


def constraint_widths(model) -> tuple[np.ndarray, np.ndarray]:
    """Nominal centre and pre-fit width of every parameter (pyhf order): the Gaussian
    constraint's auxdata and sigma; ``1`` and ``1/sqrt(tau)`` for a Poisson (shapesys)
    constraint; NaN width for unconstrained parameters."""
    n = len(parameter_labels(model))
    centre, width = np.full(n, np.nan), np.full(n, np.nan)
    aux = np.asarray(model.auxdata)
    gauss_index, gauss_pos = np.asarray(model.gauss_index), np.asarray(model.gauss_aux_pos)
    centre[gauss_index] = aux[gauss_pos]
    width[gauss_index] = np.asarray(model.gauss_sigma)
    poisson_index, factor = np.asarray(model.poisson_index), np.asarray(model.poisson_factor)
    centre[poisson_index] = 1.0
    width[poisson_index] = 1.0 / np.sqrt(factor)
    return centre, width


def _free_positions(model, params) -> list[int]:
    """pyhf positions of the free parameters of ``params``."""
    positions, start = [], 0
    for name in model.parameter_names:
        entry = params[name]
        components = entry if isinstance(entry, tuple) else (entry,)
        positions += [start + i for i, p in enumerate(components) if p.is_free]
        start += len(components)
    return positions


def pulls(fit: HistFitResult, model) -> dict[str, tuple[float, float]]:
    """``label -> (pull, constraint)`` of every constrained parameter that was free:
    ``(theta_hat - theta_0) / sigma_prefit`` and ``sigma_hat / sigma_prefit``."""
    centre, width = constraint_widths(model)
    labels = parameter_labels(model)
    out = {}
    for i in _free_positions(model, fit.params):
        if np.isfinite(width[i]):
            out[labels[i]] = (float((fit.bestfit[i] - centre[i]) / width[i]), float(fit.uncertainty[i] / width[i]))
    return out


class _Pinned(eqx.Module):
    """``-2 log L`` with the parameter at flat position ``index`` evaluated at ``value``, and
    pinned at ``anchor`` (inside its bounds) by ``(theta - anchor)**2``: every ranking refit,
    whichever parameter it fixes, has the same structure, so all share one batched call.
    The penalty is zero at the optimum and the pinned direction decouples, so the minimum
    is the conditional one exactly."""

    model: eqx.Module
    anchor: jax.Array

    def __call__(self, params, args):
        data, index, value = args
        vector = self.model.to_vector(params)
        return self.model.nll(vector.at[index].set(value), data) + (vector[index] - self.anchor[index]) ** 2


@dataclasses.dataclass(frozen=True, repr=False)
class Ranking:
    """Impact of each nuisance parameter on the POI, largest post-fit impact first.

    Attributes:
        labels: parameter labels (pyhf's).
        prefit_up, prefit_down: POI shift with the parameter at ``theta_hat +- sigma_prefit``
            (NaN for unconstrained parameters).
        postfit_up, postfit_down: POI shift at ``theta_hat +- sigma_hat``.
        pulls: ``(pull, constraint)`` per label (NaN for unconstrained parameters).
        mle: the free fit; ``converged``: it and every refit converged.
    """

    labels: list[str]
    prefit_up: np.ndarray
    prefit_down: np.ndarray
    postfit_up: np.ndarray
    postfit_down: np.ndarray
    pulls: np.ndarray
    mle: HistFitResult
    converged: bool

    def to_dict(self) -> list[dict]:
        return [
            {
                "parameter": label,
                "prefit_up": float(self.prefit_up[i]),
                "prefit_down": float(self.prefit_down[i]),
                "postfit_up": float(self.postfit_up[i]),
                "postfit_down": float(self.postfit_down[i]),
                "pull": float(self.pulls[i, 0]),
                "constraint": float(self.pulls[i, 1]),
            }
            for i, label in enumerate(self.labels)
        ]

    def __repr__(self) -> str:
        return f"Ranking({len(self.labels)} parameters, top: {self.labels[:3]}, converged={self.converged})"


def ranking(data, model, init_params=None) -> Ranking:
    """Pre- and post-fit impacts of every free nuisance parameter on the POI."""
    data = jnp.asarray(data, dtype=float)
    mle = mle_fit(data, model, init_params)
    if not mle.converged:
        raise RuntimeError(f"the free fit did not converge ({'; '.join(mle.warnings)}): impacts would be meaningless")
    labels = parameter_labels(model)
    poi = model.poi_index
    positions = [i for i in _free_positions(model, mle.params) if i != poi]
    if not positions:
        raise ValueError("the model has no free nuisance parameter to rank")
    centre, width = constraint_widths(model)
    bounds = model.suggested_bounds()
    theta = mle.bestfit[positions]
    prefit = np.where(np.isfinite(width[positions]), width[positions], 0.0)
    shifts = [theta + prefit, theta - prefit, theta + mle.uncertainty[positions], theta - mle.uncertainty[positions]]
    values = np.clip(np.concatenate(shifts), np.tile(bounds[positions, 0], 4), np.tile(bounds[positions, 1], 4))
    n = values.size
    # Warm start at the best fit, moved off any bound (a bounded coordinate cannot start on it).
    lower, upper = bounds[:, 0], bounds[:, 1]
    margin = 1e-6 * (upper - lower)
    anchor = jnp.asarray(np.clip(mle.bestfit, lower + margin, upper - margin))
    start = model.from_vector(anchor, template=mle.params)
    batch = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (n,) + jnp.shape(x)), start)
    args = (jnp.broadcast_to(data, (n,) + data.shape), jnp.asarray(np.tile(positions, 4)), jnp.asarray(values))
    result = fit_batch(_Pinned(model, anchor), batch, args, tol=FIT_TOLERANCE)
    mu = result.values[model.poi_name] - mle.bestfit[poi]
    k = len(positions)
    impact = [mu[j * k : (j + 1) * k] for j in range(4)]
    unconstrained = ~np.isfinite(width[positions])
    impact[0] = np.where(unconstrained, np.nan, impact[0])
    impact[1] = np.where(unconstrained, np.nan, impact[1])
    pull_table = np.stack([(theta - centre[positions]) / width[positions], mle.uncertainty[positions] / width[positions]], axis=1)
    order = np.argsort(-np.maximum(np.abs(impact[2]), np.abs(impact[3])), kind="stable")
    return Ranking(
        labels=[labels[positions[i]] for i in order],
        prefit_up=impact[0][order],
        prefit_down=impact[1][order],
        postfit_up=impact[2][order],
        postfit_down=impact[3][order],
        pulls=pull_table[order],
        mle=mle,
        converged=bool(mle.converged and result.converged.all()),
    )


def yields(model, fit: HistFitResult | None = None, data=None) -> dict:
    """Expected yields per channel: ``{channel: {"samples": {name: [...]}, "total": [...],
    "uncertainty": [...], "data": [...]}}``.

    Pre-fit (``fit=None``): at the model's initial parameters, uncertainty from the
    constraints' widths (uncorrelated; unconstrained parameters contribute none). Post-fit:
    at ``fit.bestfit``, uncertainty from the fit's covariance. Uncertainties are linear
    propagations ``J C J^T`` with ``J`` the exact Jacobian of the total yield per bin.
    """
    if fit is None:
        params = model.init_params()
        positions = _free_positions(model, params)
        _, width = constraint_widths(model)
        sigma = np.where(np.isfinite(width[positions]), width[positions], 0.0)
        covariance = np.diag(sigma**2)
    else:
        params = fit.params
        positions = _free_positions(model, params)
        if fit.fit is None or not np.all(np.isfinite(fit.fit.covariance)):
            raise ValueError(
                "the fit has no covariance (not converged, not a fit, or a fit of a one-program hypotest: "
                "use mle_fit): post-fit uncertainties are undefined"
            )
        covariance = _covariance_in_pyhf_order(model, fit, positions)
    vector = model.to_vector(params)
    index = jnp.asarray(positions)

    def by_sample(free):
        return model.expected_by_sample(vector.at[index].set(free))

    free = vector[index]
    per_sample = np.asarray(by_sample(free))
    jacobian = np.asarray(jax.jacfwd(lambda f: jnp.sum(by_sample(f), axis=0))(free))
    variance = np.einsum("bi,ij,bj->b", jacobian, covariance, jacobian)
    total = per_sample.sum(axis=0)
    observed = None if data is None else np.asarray(data, float)[: model.n_main_bins]
    out = {}
    for channel, bins in model.channel_slices().items():
        out[channel] = {
            "samples": {s: per_sample[k, bins].tolist() for k, s in enumerate(model.samples)},
            "total": total[bins].tolist(),
            "uncertainty": np.sqrt(np.maximum(variance[bins], 0.0)).tolist(),
        }
        if observed is not None:
            out[channel]["data"] = observed[bins].tolist()
    return out


def _covariance_in_pyhf_order(model, fit: HistFitResult, positions: list[int]) -> np.ndarray:
    """The fit's covariance (free parameters in fitax's order) re-indexed to ``positions``;
    a parameter the fit held fixed (the POI of a free fit that ended at its bound, refitted
    there) gets no variance."""
    dotted = []
    for name in model.parameter_names:
        entry = fit.params[name]
        dotted += [name] if not isinstance(entry, tuple) else [f"{name}.{i}" for i in range(len(entry))]
    names = list(fit.fit.free_names)
    rows = [names.index(dotted[i]) if dotted[i] in names else -1 for i in positions]
    covariance = np.zeros((len(positions), len(positions)))
    kept = [k for k, r in enumerate(rows) if r >= 0]
    source = [rows[k] for k in kept]
    covariance[np.ix_(kept, kept)] = np.asarray(fit.fit.covariance)[np.ix_(source, source)]
    return covariance
