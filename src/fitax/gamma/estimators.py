"""Flux points with Gammapy's definitions (its ``FluxPointsEstimator``; by default, as
Gammapy's, ``reoptimize=False``): per energy bin, the norm of one source's spectrum that
best fits the counts of the datasets' bins in that energy range, everything else fixed.
With ``reoptimize=True`` the other models' free parameters are fitted along, bin by bin,
with the core's fits, profiles and intervals.

With the other models fixed, each bin's statistic is a function of one number: Cash,
``stat(norm) = 2 sum(mu - n log mu)`` with ``mu = other + norm x signal``, for map datasets,
and WStat (the background profiled bin by bin) with the signal ``other + norm x signal`` for
on-off spectra. The predicted counts are computed once (one npred with and one without the
source), and each bin is then a one-dimensional Newton solve on host arrays, its errors,
upper limit and likelihood scan read off the same function. Gammapy refits a copy of its
datasets with Minuit for each bin and each quantity.

Example:
    >>> points = flux_points(datasets, models, "crab", [1, 3, 10] * u.TeV)  # doctest: +SKIP
    >>> points.write("flux_points.fits")  # Gammapy: FluxPoints.read("flux_points.fits")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import equinox as eqx
import jax
import numpy as np
from astropy import units as u
from astropy.table import Table, vstack
from astropy.time import Time

from ..io import atomic_write
from ..parameters import Parameter
from .datasets import Datasets
from .likelihood import stat_sum_groups
from .mapdataset import MapDataset
from .mapdataset_onoff import MapDatasetOnOff
from .spectrum import SpectrumDatasetOnOff
from .flux_maps import FluxMaps
from .models import FoVBackgroundModel, Models, SkyModel
from .spectral import PowerLawSpectralModel

__all__ = ["FluxPoints", "LightCurve", "NORM_SCAN", "excess_map", "flux_points", "light_curve", "reco_exposure", "snap_energy_edges"]

NORM_SCAN = np.geomspace(0.2, 5.0, 11)
"""Gammapy's default norm scan: 11 values from 0.2 to 5, log-spaced."""

_TRUNCATION = 1e-25  # Gammapy's floor of predicted counts in Cash


@dataclasses.dataclass(frozen=True)
class FluxPoints:
    """Flux points as Gammapy's ``FluxPoints`` table of ``sed_type="likelihood"`` (format
    ``gadf-sed``): per energy bin ``e_min``, ``e_ref``, ``e_max`` [TeV], the reference model's
    ``ref_dnde``/``ref_flux``/``ref_eflux``/``ref_e2dnde``, ``norm`` with ``norm_err``
    (``n_sigma``), ``norm_errn``/``norm_errp``, ``norm_ul`` (``n_sigma_ul``), ``ts``,
    ``sqrt_ts``, ``npred``/``npred_excess``/``counts`` per dataset, ``stat``, ``stat_null``,
    ``is_ul``, ``success``, ``norm_scan``/``stat_scan``."""

    table: Table

    @property
    def dnde(self) -> u.Quantity:
        return self.table["norm"] * self.table["ref_dnde"].quantity

    @property
    def e2dnde(self) -> u.Quantity:
        return self.table["norm"] * self.table["ref_e2dnde"].quantity

    def write(self, path) -> Path:
        """Write as Gammapy's ``FluxPoints.write(format="gadf-sed")`` does (atomically)."""
        import warnings

        from astropy.io.fits.verify import VerifyWarning

        def write(tmp):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", VerifyWarning)  # Gammapy's lower-case meta keys become HIERARCH cards, as in its files
                self.table.write(tmp, format="fits", overwrite=True)

        return atomic_write(path, write)

    def __repr__(self) -> str:
        rows = [f"{lo:.3g}-{hi:.3g} TeV: norm {n:.3f} +- {e:.3f}, ts {t:.1f}" for lo, hi, n, e, t in
                zip(self.table["e_min"], self.table["e_max"], self.table["norm"], self.table["norm_err"], self.table["ts"])]
        return "FluxPoints(" + "; ".join(rows) + ")"


def snap_energy_edges(edges: np.ndarray, requested: np.ndarray) -> np.ndarray:
    """The indices of the bin edges of ``edges`` nearest (in log energy) to each of
    ``requested`` (clipped to the axis), as Gammapy's ``MapAxis.group_table`` groups bins."""
    pixel = np.interp(np.log(requested), np.log(edges), np.arange(edges.size) - 0.5, left=-0.5, right=edges.size - 1.5)
    return (np.round(pixel + 0.5)).astype(int)


def _cash(counts: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """Gammapy's Cash terms ``2 (mu - n log mu)``, ``mu`` floored at 1e-25, 0 log 0 = 0."""
    mu = np.maximum(mu, _TRUNCATION)
    return 2.0 * (mu - np.where(counts > 0, counts * np.log(mu), 0.0))


def _stat(norm: float, counts: np.ndarray, other: np.ndarray, signal: np.ndarray) -> float:
    return float(np.sum(_cash(counts, other + norm * signal)))


@dataclasses.dataclass(frozen=True)
class _CashPiece:
    """One dataset's bins of an energy range under Cash: ``mu = other + norm x signal``.
    Bins the source does not reach add a constant, summed once, so that the one-dimensional
    solves see only the bins near the source (~1% of a map's)."""

    counts: np.ndarray
    other: np.ndarray
    signal: np.ndarray
    constant: float
    total_counts: int
    other_total: float
    n_bins: int

    @classmethod
    def of(cls, counts, other, signal) -> "_CashPiece":
        counts, other, signal = (np.asarray(a, float) for a in (counts, other, signal))
        reached = signal != 0
        return cls(counts[reached], other[reached], signal[reached], _stat(0.0, counts[~reached], other[~reached], signal[~reached]),
                   int(counts.sum()), float(other.sum()), counts.size)

    def stat(self, norm: float) -> float:
        return self.constant + _stat(norm, self.counts, self.other, self.signal)

    def derivatives(self, norm: float) -> tuple[float, float]:
        mu = self.other + norm * self.signal
        return 2.0 * float(np.sum(self.signal - self.counts * self.signal / mu)), 2.0 * float(np.sum(self.counts * self.signal**2 / mu**2))

    def allows(self, norm: float) -> bool:
        return bool(np.all(self.other + norm * self.signal > 0))

    def npred(self, norm: float) -> float:
        return self.other_total + norm * float(self.signal.sum())

    def excess(self, norm: float) -> float:
        return norm * float(self.signal.sum())


def _wstat_background(n_on, n_off, alpha, mu_sig):
    """Gammapy's profiled background ``mu_bkg`` (``get_wstat_mu_bkg``) per bin, with the
    ``C`` and ``D`` of its closed form."""
    c = alpha * (n_on + n_off) - (1 + alpha) * mu_sig
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.sqrt(c**2 + 4 * alpha * (alpha + 1) * n_off * mu_sig)
        return (c + d) / (2 * alpha * (alpha + 1)), c, d


def _wstat_terms(n_on, n_off, alpha, mu_sig):
    """Gammapy's ``wstat`` per bin, with its goodness-of-fit terms (0 at the best fit)."""
    mu_bkg, _, _ = _wstat_background(n_on, n_off, alpha, mu_sig)
    with np.errstate(divide="ignore", invalid="ignore"):
        on = np.where(n_on > 0, n_on * (np.log(n_on) - 1 - np.log(mu_sig + alpha * mu_bkg)), 0.0)
        off = np.where(n_off > 0, n_off * (np.log(n_off) - 1 - np.log(mu_bkg)), 0.0)
    return 2 * (mu_sig + (1 + alpha) * mu_bkg + on + off)


def _wstat_slope(n_on, n_off, alpha, mu_sig):
    """``d wstat / d mu_sig`` per bin by the envelope theorem, ``2 (1 - n_on / mu_on)`` at
    the profiled background (exact where Gammapy's closed form is the profile's minimum: a
    non-negative signal)."""
    mu_bkg, _, _ = _wstat_background(n_on, n_off, alpha, mu_sig)
    with np.errstate(divide="ignore", invalid="ignore"):
        return 2.0 * (1.0 - np.where(n_on > 0, n_on / (mu_sig + alpha * mu_bkg), 0.0))


@dataclasses.dataclass(frozen=True)
class _OnOffPiece:
    """One on-off spectrum's bins of an energy range under WStat (Gammapy's, with its
    goodness-of-fit terms): signal ``mu_sig = other + norm x signal``, the background profiled
    per bin; its derivatives in the norm by the envelope theorem (``d stat / d mu_sig = 2 (1 -
    n_on / mu_on)``) and the profiled background's slope."""

    n_on: np.ndarray
    n_off: np.ndarray
    alpha: np.ndarray
    other: np.ndarray
    signal: np.ndarray
    total_counts: int

    @property
    def n_bins(self) -> int:
        return self.n_on.size

    @classmethod
    def of(cls, n_on, n_off, alpha, other, signal) -> "_OnOffPiece":
        n_on = np.asarray(n_on, float)
        return cls(n_on, np.asarray(n_off, float), np.asarray(alpha, float), np.asarray(other, float), np.asarray(signal, float),
                   int(n_on.sum()))

    def _background(self, mu_sig):
        return _wstat_background(self.n_on, self.n_off, self.alpha, mu_sig)

    def stat(self, norm: float) -> float:
        return float(np.sum(_wstat_terms(self.n_on, self.n_off, self.alpha, self.other + norm * self.signal)))

    def derivatives(self, norm: float) -> tuple[float, float]:
        a = self.alpha
        mu_sig = self.other + norm * self.signal
        mu_bkg, c, d = self._background(mu_sig)
        mu_on = mu_sig + a * mu_bkg
        with np.errstate(divide="ignore", invalid="ignore"):
            slope = np.where(d > 0, (-(1 + a) + (-(1 + a) * c + 2 * a * (a + 1) * self.n_off) / d) / (2 * a * (a + 1)), 0.0)
            ratio = np.where(self.n_on > 0, self.n_on / mu_on, 0.0)
            curvature = np.where(self.n_on > 0, 2 * ratio / mu_on * (1 + a * slope), 0.0)
        return float(np.sum(_wstat_slope(self.n_on, self.n_off, a, mu_sig) * self.signal)), float(np.sum(curvature * self.signal**2))

    def allows(self, norm: float) -> bool:
        return bool(np.isfinite(self.stat(norm)))

    def npred(self, norm: float) -> float:
        mu_sig = self.other + norm * self.signal
        return float(np.sum(mu_sig + self.alpha * np.nan_to_num(self._background(mu_sig)[0])))

    def excess(self, norm: float) -> float:
        return norm * float(self.signal.sum())


def _best_norm(pieces: list) -> tuple[float, float, bool]:
    """The norm minimising the summed statistic, its curvature ``d2 stat / d norm2`` there,
    and whether Newton's method converged (steps halved to keep every piece's prediction
    valid). Where WStat is flat-curved (linear in the norm while an off-less bin's profiled
    background is 0), the minimum is first bracketed downhill; Cash is flat-curved only
    where the source reaches no counted bin, where it has no minimum."""
    norm, curvature = 1.0, np.nan
    bracketed = False
    for _ in range(100):
        gradient, curvature = (sum(values) for values in zip(*(p.derivatives(norm) for p in pieces)))
        if not curvature > 0:
            # Cash is flat-curved only where the source reaches no counted bin: unbounded below, no minimum to find
            if bracketed or gradient == 0 or not all(isinstance(p, _OnOffPiece) for p in pieces):
                return norm, curvature, False
            norm, bracketed = _downhill_minimum(pieces, norm, -np.sign(gradient)), True
            continue
        step = -gradient / curvature
        for _ in range(60):
            if all(p.allows(norm + step) for p in pieces):
                break
            step /= 2
        norm += step
        if abs(step) < 1e-10 * max(1.0, abs(norm)):
            return norm, sum(p.derivatives(norm)[1] for p in pieces), True
    return norm, curvature, False


def _downhill_minimum(pieces: list, start: float, direction: float) -> float:
    """The minimum of the summed statistic along ``direction`` from ``start``: steps doubled
    until it rises (or the prediction turns invalid), then Brent's method in that bracket."""
    from scipy.optimize import minimize_scalar

    def stat(x: float) -> float:
        return sum(p.stat(x) for p in pieces) if all(p.allows(x) for p in pieces) else np.inf

    step, previous, current = max(1.0, abs(start)), start, start
    for _ in range(60):
        candidate = current + direction * step
        if not stat(candidate) < stat(current):
            low, high = sorted((previous, candidate))
            return float(minimize_scalar(stat, bounds=(low, high), method="bounded", options={"xatol": 1e-12 * max(1.0, abs(current))}).x)
        previous, current, step = current, candidate, 2 * step
    return current


def _crossing(stat, start: float, level: float, direction: float, scale: float) -> float:
    """Where ``stat`` first reaches ``level`` going from ``start`` in ``direction``, or NaN."""
    from scipy.optimize import brentq  # imported here: scipy.optimize costs 0.6 s, which TS and excess maps need not pay

    step, previous = scale, start
    for _ in range(60):
        point = start + direction * step
        value = stat(point)
        if not np.isfinite(value):
            return np.nan
        if value >= level:
            return brentq(lambda x: stat(x) - level, min(previous, point), max(previous, point), xtol=1e-10 * max(1.0, abs(point)))
        previous, step = point, step * 2
    return np.nan


def _reference_fluxes(model, e_min: np.ndarray, e_max: np.ndarray) -> dict:
    spectral = model.spectral
    e_ref = np.sqrt(e_min * e_max)
    dnde = np.asarray(spectral(e_ref), float)
    energy_flux = [float(_energy_flux(spectral, lo, hi)) for lo, hi in zip(e_min, e_max)]
    return {"e_ref": e_ref, "ref_dnde": dnde, "ref_flux": np.asarray(spectral.integral(e_min, e_max), float),
            "ref_eflux": np.asarray(energy_flux), "ref_e2dnde": dnde * e_ref**2}


def _energy_flux(spectral, e_min: float, e_max: float) -> float:
    from ..integrate import gauss_legendre

    import jax.numpy as jnp

    log_min, log_max = np.log(e_min), np.log(e_max)
    return float(gauss_legendre(lambda log_e: spectral(jnp.exp(log_e)) * jnp.exp(2 * log_e), log_min, log_max, 16))


def flux_points(datasets, models: Models, source: str, energy_edges: u.Quantity, *, n_sigma: float = 1.0, n_sigma_ul: float = 2.0,
                scan_values: np.ndarray = NORM_SCAN, reoptimize: bool = False) -> FluxPoints:
    """Flux points of ``source`` in the bins of ``energy_edges`` (each snapped to the nearest
    edge of the datasets' reconstructed-energy axis, as Gammapy), with every other parameter
    fixed at its value in ``models`` (Gammapy's default ``reoptimize=False``): the norm of the
    source's spectrum over each bin's safe and fitted counts, its error (``n_sigma`` times the
    curvature's), asymmetric errors and upper limit from the likelihood profile
    (``stat - stat_min = n_sigma^2``, ``n_sigma_ul^2``), TS against norm 0, the stat scan at
    ``scan_values`` and npred, excess and counts per dataset. All of Gammapy's optional
    quantities are computed (``selection_optional="all"`` but the sensitivity).

    ``reoptimize=True`` (Gammapy's option): in each bin the other models' free parameters
    (background norms, other sources) are fitted with the norm, and refitted for the TS (norm
    0), along the profile that gives the asymmetric errors and the upper limit, and at each
    scan value; the source's own parameters stay frozen.

    Example:
        >>> points = flux_points(datasets, models, "crab", [1, 2, 5, 10] * u.TeV)  # doctest: +SKIP
        >>> points.table["norm", "norm_err", "ts"]  # doctest: +SKIP
    """
    datasets, models, requested = _checked(datasets, models, source, energy_edges, "flux_points")
    total, others = _predicted_counts(datasets, models, source, "flux_points")
    reoptimized = (lambda bins: _reoptimized_bin_result(datasets, total, others, models, source, bins, n_sigma, n_sigma_ul, scan_values)) \
        if reoptimize else None
    table = _flux_point_table(list(datasets), total, others, models[source], requested, n_sigma, n_sigma_ul, scan_values, reoptimized)
    table.meta["SOURCE"] = source
    return FluxPoints(table)


def _predicted_counts(datasets: Datasets, models: Models, source: str, where: str) -> tuple[list, list]:
    """Each dataset's predicted counts with and without ``source``; a source that predicts
    nothing anywhere (its ``datasets_names`` match none, or it lies off every map) is an error."""
    total = datasets.npred(models)
    others = datasets.npred(models.without(source))
    if not any(np.any(t - o > 0) for t, o in zip(total, others)):
        raise ValueError(f"{where}: source {source!r} predicts no counts in any dataset ({', '.join(datasets.names)}); "
                         "check its datasets_names and position")
    return total, others


def _flux_point_table(datasets: list, total: list, others: list, model, requested: np.ndarray, n_sigma: float, n_sigma_ul: float,
                      scan_values: np.ndarray, reoptimized=None) -> Table:
    """The flux points of ``model`` in the bins of ``requested`` edges [TeV], each snapped to
    the datasets' nearest reconstructed-energy edges (a bin that snaps to no bin of the axis is
    a row of NaN, at the requested edges, as Gammapy's), from each dataset's predicted counts
    with (``total``) and without (``others``) the source; or ``reoptimized(bins)``, a bin's
    result with the other models refitted."""
    edges = np.asarray(datasets[0].energy_edges, float)
    rows, e_min, e_max = [], [], []
    for lo, hi in zip(requested[:-1], requested[1:]):
        low, high = snap_energy_edges(edges, np.array([lo, hi]))
        if high <= low:
            rows.append(_no_data_result(len(datasets), scan_values))
            e_min.append(lo), e_max.append(hi)
            continue
        if reoptimized is not None:
            rows.append(reoptimized(slice(low, high)))
        else:
            pieces = [_piece(d, t, o, slice(low, high)) for d, t, o in zip(datasets, total, others)]
            rows.append(_bin_result(pieces, n_sigma, n_sigma_ul, scan_values))
        e_min.append(edges[low]), e_max.append(edges[high])
    table = Table()
    # one contiguous energy axis, as Gammapy's FluxPoints hold them (its axis is made of the
    # bins' lower edges and the last upper edge): a NaN bin ends where the next one starts
    e_min = np.array(e_min)
    e_max = np.append(e_min[1:], e_max[-1])
    reference = _reference_fluxes(model, e_min, e_max)
    table["e_ref"] = reference["e_ref"] * u.TeV
    table["e_min"], table["e_max"] = e_min * u.TeV, e_max * u.TeV
    table["ref_dnde"] = reference["ref_dnde"] * u.Unit("cm-2 s-1 TeV-1")
    table["ref_flux"] = reference["ref_flux"] * u.Unit("cm-2 s-1")
    table["ref_eflux"] = reference["ref_eflux"] * u.Unit("TeV cm-2 s-1")
    table["ref_e2dnde"] = reference["ref_e2dnde"] * u.Unit("TeV cm-2 s-1")
    for key in ("norm", "norm_err", "norm_errp", "norm_errn", "norm_ul", "ts", "sqrt_ts", "stat", "stat_null", "npred", "npred_excess",
                "counts", "success", "is_ul", "norm_scan", "stat_scan"):  # fmt: skip
        table[key] = np.array([row[key] for row in rows])
    table.meta.update(_sed_meta(n_sigma, n_sigma_ul))
    return table


def _piece(dataset, total: np.ndarray, other: np.ndarray, bins: slice):
    """The safe bins of ``dataset`` in the energy range ``bins``, as a Cash or WStat piece."""
    mask = dataset.mask[bins]
    if isinstance(dataset, SpectrumDatasetOnOff):
        return _OnOffPiece.of(dataset.counts[bins][mask], dataset.counts_off[bins][mask], dataset.alpha[bins][mask], other[bins][mask],
                              (total - other)[bins][mask])
    return _CashPiece.of(dataset.counts[bins][mask], other[bins][mask], (total - other)[bins][mask])


def _checked(datasets, models, source: str, energy_edges, where: str) -> tuple[Datasets, Models, np.ndarray]:
    """The datasets and models as fitax's collections, after the checks an estimator needs,
    and the requested energy edges [TeV]."""
    datasets = datasets if isinstance(datasets, Datasets) else Datasets(list(datasets))
    models = models if isinstance(models, Models) else Models(models)
    if source not in models.names:
        raise ValueError(f"{where}: no model {source!r} (models: {', '.join(models.names)})")
    for dataset in datasets:
        if not isinstance(dataset, (MapDataset, SpectrumDatasetOnOff)):
            raise ValueError(f"{where}: dataset {dataset.name} is a {type(dataset).__name__}; estimators take MapDatasets and on-off spectra "
                             "(SpectrumDatasetOnOff)")
    edges = np.asarray(datasets[0].energy_edges, float)
    if any(not np.allclose(d.energy_edges, edges, rtol=1e-9) for d in datasets):
        raise ValueError(f"{where}: all datasets must share one reconstructed-energy axis (Gammapy: aligned energy axes)")
    requested = u.Quantity(energy_edges, "TeV").to_value("TeV")
    if requested.ndim != 1 or requested.size < 2 or np.any(np.diff(requested) <= 0) or requested[0] <= 0:
        raise ValueError(f"{where}: energy edges must be at least two increasing positive energies, got {requested} TeV")
    if requested[-1] <= edges[0] or requested[0] >= edges[-1]:
        warnings.warn(f"{where}: the energy edges {requested} TeV lie outside the datasets' axis ({edges[0]:.3g}-{edges[-1]:.3g} TeV): "
                      "every bin is NaN", stacklevel=3)
    return datasets, models, requested


def _sed_meta(n_sigma: float, n_sigma_ul: float) -> dict:
    """The table metadata Gammapy writes with likelihood flux points."""
    return {"SED_TYPE": "likelihood", "UL_CONF": float(_confidence(n_sigma_ul)), "n_sigma": n_sigma, "n_sigma_ul": n_sigma_ul,
            "sed_type_init": "likelihood", "CREATOR": "fitax"}


def _confidence(n_sigma: float) -> float:
    """The confidence of an ``n_sigma`` upper limit, as Gammapy writes it (``UL_CONF``)."""
    from scipy.stats import norm

    return round(1 - 2 * norm.sf(n_sigma), 7)


def _no_data_result(n_datasets: int, scan_values) -> dict:
    """A bin beyond the datasets' energy axis: Gammapy's ``_nan_result``."""
    return {"norm": np.nan, "norm_err": np.nan, "norm_errp": np.nan, "norm_errn": np.nan, "norm_ul": np.nan, "ts": np.nan,
            "sqrt_ts": np.nan, "stat": np.nan, "stat_null": np.nan, "npred": np.full(n_datasets, np.nan),
            "npred_excess": np.full(n_datasets, np.nan), "counts": np.zeros(n_datasets, dtype=int), "success": False, "is_ul": False,
            "norm_scan": np.asarray(scan_values, float), "stat_scan": np.full(len(scan_values), np.nan)}  # fmt: skip


# The joint statistic of bound groups, compiled once per structure: where a reoptimized flux
# point has nothing else free its profiles only evaluate the statistic, and op by op the
# likelihood's custom derivatives would compile anew at every point (60 s for 3 bins, now 8 s).
_compiled_stat = eqx.filter_jit(stat_sum_groups)


def _no_safe_bin_result(counts: np.ndarray, scan_values) -> dict:
    """No safe bin in this energy range: Gammapy's values for datasets that do not contribute."""
    n_datasets = len(counts)
    return {"norm": np.nan, "norm_err": np.nan, "norm_errp": np.nan, "norm_errn": np.nan, "norm_ul": np.nan, "ts": np.nan,
            "sqrt_ts": np.nan, "stat": 0.0, "stat_null": 0.0, "npred": np.full(n_datasets, np.nan), "npred_excess": np.zeros(n_datasets),
            "counts": counts, "success": False, "is_ul": False,
            "norm_scan": np.asarray(scan_values, float), "stat_scan": np.full(len(scan_values), np.nan)}  # fmt: skip


def _energy_slice(dataset, bins: slice):
    """``dataset`` with its fitted bins cut to the reconstructed energies ``bins`` (Gammapy's
    ``slice_by_energy``, as a mask)."""
    keep = np.zeros(dataset.mask.shape[0], bool)
    keep[bins] = True
    return dataclasses.replace(dataset, mask=dataset.mask & keep.reshape((-1,) + (1,) * (dataset.mask.ndim - 1)))


def _acting_models(models: Models, names: list[str]) -> Models:
    """The models acting on the datasets ``names``: their background models and the sky
    models that apply to one of them (a fit of those datasets refuses the others)."""
    return Models([m for m in models if (m.dataset_name in names if isinstance(m, FoVBackgroundModel)
                                         else any(m.applies_to(n) for n in names))])


def _fixed_source(models: Models, source: str) -> SkyModel:
    """``source`` with every parameter frozen at its value and untied, its spectrum scaled by
    a free norm (Gammapy's ``ScaleSpectralModel`` with ``freeze_all``); a parameter of another
    model tied to the source is an error naming it (the wrapped spectrum renames the source's)."""
    from .spectral import ScaleSpectralModel

    original = models[source]
    prefix = f"{source}."
    tied = [name for name, p in models.parameters.items() if p.tied_to is not None and p.tied_to.startswith(prefix)
            and not name.startswith(prefix)]
    if tied:
        raise ValueError(f"reoptimize: parameters {tied} are tied to source {source!r}, whose parameters the flux points freeze; "
                         "untie them (or use reoptimize=False)")
    fixed = jax.tree_util.tree_map(lambda p: dataclasses.replace(p, frozen=True, tied_to=None) if isinstance(p, Parameter) else p,
                                   original, is_leaf=lambda x: isinstance(x, Parameter))
    return SkyModel(ScaleSpectralModel(fixed.spectral), fixed.spatial, source, original.datasets_names, original.psf_mode, fixed.temporal)


def _reoptimized_bin_result(datasets: Datasets, total: list, others: list, models: Models, source: str, bins: slice, n_sigma, n_sigma_ul,
                            scan_values) -> dict:
    """One flux point with the other models' free parameters fitted along (Gammapy's
    ``reoptimize=True``): the source's spectrum scaled by a free norm, its own parameters
    frozen; TS, the profile crossings and the scan refit the others at each fixed norm. Only
    datasets with safe bins in the range take part (a background norm no bin constrains
    would leave the fit without errors); a bin without counts, or where the source predicts
    none in counted bins, has no best norm to refit around: it takes the plain result."""
    from ..parameters import free_parameter_names, freeze, set_values
    from ..profile import confidence_interval, fixed_stat, profile
    from .fit import fit
    from .likelihood import bind

    sliced = [_energy_slice(d, bins) for d in datasets]
    counts = np.array([int(np.sum(d.counts[d.mask])) for d in sliced], dtype=int)
    contributing = Datasets([d for d in sliced if np.any(d.mask)])
    if not len(contributing):
        return _no_safe_bin_result(counts, scan_values)
    scaled = _acting_models(models, contributing.names).replace(_fixed_source(models, source))
    start = [_piece(d, t, o, bins) for d, t, o in zip(sliced, total, others)]  # the given models' counts: the scaled source at norm 1
    signal = np.concatenate([p.signal for p in start])
    if counts.sum() == 0 or not np.any(signal > 0):
        return _bin_result(start, n_sigma, n_sigma_ul, scan_values)
    name = f"{source}.spectral.norm"
    best = fit(contributing, scaled)
    groups = bind(contributing, best.params)
    constant = sum(float(g.data_constant) for g in groups)

    def refitted_stat(params) -> float:
        if not free_parameter_names(params):
            return fixed_stat(_compiled_stat, params, groups, 1.0) + constant
        return fit(contributing, params).stat

    # with nothing else free the profiles only evaluate the statistic: compiled once; refits compile their own programs
    objective = stat_sum_groups if free_parameter_names(freeze(best.params, name)) else _compiled_stat

    def crossing(sigma: float, side: str) -> float:
        try:
            interval = confidence_interval(objective, best.params, name, n_sigma=sigma, args=groups, result=core_best)
        except RuntimeError:  # the profile never rises that far (e.g. counts only where the source predicts none)
            return np.nan
        return getattr(interval, side)

    norm, error = best.values[name], best.errors[name]
    null = refitted_stat(freeze(set_values(best.params, {name: 0.0}), name))
    core_best = dataclasses.replace(best, stat=best.stat - constant)  # the profiles' statistic has no data constant
    upper, lower, limit = crossing(n_sigma, "upper"), crossing(n_sigma, "lower"), crossing(n_sigma_ul, "upper")
    scan = profile(objective, best.params, name, np.asarray(scan_values, float), args=groups)
    fitted = [_piece(d, t, o, bins) for d, t, o in zip(sliced, Datasets(sliced).npred(best.params),
                                                        Datasets(sliced).npred(best.params.without(source)))]
    ts = null - best.stat
    return {
        "norm": norm, "norm_err": n_sigma * error, "norm_errp": upper - norm, "norm_errn": norm - lower, "norm_ul": limit,
        "ts": ts, "sqrt_ts": np.sign(norm) * np.sqrt(max(ts, 0.0)), "stat": best.stat, "stat_null": null,
        "npred": np.array([p.npred(1.0) for p in fitted]), "npred_excess": np.array([p.excess(1.0) for p in fitted]),
        "counts": counts, "success": bool(best.converged), "is_ul": bool(ts < n_sigma_ul**2),
        "norm_scan": np.asarray(scan_values, float), "stat_scan": scan.stat + constant,
    }  # fmt: skip


def _bin_result(pieces: list, n_sigma, n_sigma_ul, scan_values) -> dict:
    n_datasets = len(pieces)
    counts = np.array([p.total_counts for p in pieces], dtype=int)
    if sum(p.n_bins for p in pieces) == 0:
        return _no_safe_bin_result(counts, scan_values)

    def stat(x: float) -> float:
        return sum(p.stat(x) for p in pieces)

    signal = np.concatenate([p.signal for p in pieces])
    if counts.sum() == 0 or not np.any(signal > 0):
        # no counts (the statistic falls without bound as the norm goes negative) or no signal
        # here: no best norm; the upper limit is where the statistic rises n_sigma_ul^2 above norm 0
        null = stat(0.0)
        scale = 1.0 / max(float(2 * np.sum(signal)), 1e-300)
        return {"norm": np.nan, "norm_err": np.nan, "norm_errp": np.nan, "norm_errn": np.nan,
                "norm_ul": _crossing(stat, 0.0, null + n_sigma_ul**2, +1.0, scale) if np.any(signal > 0) else np.nan,
                "ts": np.nan, "sqrt_ts": np.nan, "stat": null, "stat_null": null,
                "npred": np.array([p.npred(0.0) for p in pieces]), "npred_excess": np.zeros(n_datasets),
                "counts": counts, "success": False, "is_ul": True,
                "norm_scan": np.asarray(scan_values, float), "stat_scan": np.array([stat(x) for x in scan_values])}  # fmt: skip
    norm, curvature, success = _best_norm(pieces)

    best = stat(norm)
    null = stat(0.0)
    error = np.sqrt(2.0 / curvature) if curvature > 0 else np.nan
    scale = error if np.isfinite(error) and error > 0 else 1.0
    upper = _crossing(stat, norm, best + n_sigma**2, +1.0, scale)
    lower = _crossing(stat, norm, best + n_sigma**2, -1.0, scale)
    ul = _crossing(stat, norm, best + n_sigma_ul**2, +1.0, scale)
    ts = null - best
    return {
        "norm": norm, "norm_err": n_sigma * error, "norm_errp": upper - norm, "norm_errn": norm - lower, "norm_ul": ul, "ts": ts,
        "sqrt_ts": np.sign(norm) * np.sqrt(max(ts, 0.0)), "stat": best, "stat_null": null,
        "npred": np.array([p.npred(norm) for p in pieces]), "npred_excess": np.array([p.excess(norm) for p in pieces]),
        "counts": counts, "success": bool(success), "is_ul": bool(ts < n_sigma_ul**2),
        "norm_scan": np.asarray(scan_values, float), "stat_scan": np.array([stat(x) for x in scan_values]),
    }  # fmt: skip


@dataclasses.dataclass(frozen=True)
class LightCurve:
    """Flux points per time interval, as Gammapy's light curves (``FluxPoints`` with a time
    axis) in its ``lightcurve`` table format: one row per interval, ``time_min``/``time_max``
    [MJD], and each flux-point column with one entry per energy bin (``npred``, ``counts``,
    ``npred_excess`` also one per dataset, NaN for datasets outside the interval)."""

    table: Table

    def write(self, path) -> Path:
        """Write as Gammapy's ``FluxPoints.write(format="lightcurve")`` does (atomically)."""
        return FluxPoints(self.table).write(path)

    def __repr__(self) -> str:
        return f"LightCurve({len(self.table)} intervals, MJD {self.table['time_min'][0]:.4f}-{self.table['time_max'][-1]:.4f})"


def light_curve(datasets, models: Models, source: str, energy_edges: u.Quantity = (1.0, 10.0) * u.TeV,
                time_intervals: list[tuple[Time, Time]] | None = None, *, n_sigma: float = 1.0, n_sigma_ul: float = 2.0,
                scan_values: np.ndarray = NORM_SCAN, reoptimize: bool = False) -> LightCurve:
    """The light curve of ``source``: its flux points (:func:`flux_points`, every other
    parameter fixed) in ``energy_edges`` for each time interval, from the datasets whose good
    time lies within it (to 1e-6 s), as Gammapy's ``LightCurveEstimator``: by default one
    interval per dataset (per run: from its first good time to its last; a stacked dataset
    is one interval), or the given ``time_intervals``; intervals without a whole dataset are
    left out, overlapping intervals are an error. ``reoptimize=True``: in each interval the
    free parameters of the models acting on its datasets are refitted per bin, as
    :func:`flux_points` does.

    Example:
        >>> curve = light_curve(datasets, models, "pks2155", [0.7, 10] * u.TeV)  # doctest: +SKIP
        >>> curve.write("light_curve.fits")  # Gammapy: FluxPoints.read(..., format="lightcurve")  # doctest: +SKIP
    """
    datasets, models, requested = _checked(datasets, models, source, energy_edges, "light_curve")
    gtis = [d.irfs.gti if isinstance(d, MapDataset) else d.gti for d in datasets]
    missing = [d.name for d, gti in zip(datasets, gtis) if gti is None]
    if missing:
        raise ValueError(f"light_curve: datasets {', '.join(missing)} have no good time intervals (GTI) to place them in time")
    if time_intervals is None:  # one interval per dataset, from its first good time to its last (Gammapy's Datasets.gti)
        bounds = [(gti[0, 0], gti[-1, 1]) for gti in gtis]
    else:
        bounds = [(Time(a), Time(b)) for a, b in time_intervals]
    bounds.sort(key=lambda interval: interval[0].tt.mjd)
    for (_, stop), (start, _) in zip(bounds[:-1], bounds[1:]):
        if start < stop:
            raise ValueError(f"light_curve: time intervals overlap (one ends at MJD {stop.tt.mjd:.6f}, the next starts at {start.tt.mjd:.6f}); "
                             "Gammapy refuses overlapping intervals too")
    total, others = _predicted_counts(datasets, models, source, "light_curve")
    tolerance = 1e-6 * u.s
    rows = []
    for start, stop in bounds:
        chosen = [i for i, gti in enumerate(gtis) if gti[0, 0] >= start - tolerance and gti[-1, 1] <= stop + tolerance]
        if not chosen:
            continue
        reoptimized = None
        if reoptimize:
            subset = Datasets([datasets[i] for i in chosen])
            reoptimized = (lambda bins, subset=subset, chosen=chosen:
                           _reoptimized_bin_result(subset, [total[i] for i in chosen], [others[i] for i in chosen], models, source, bins,
                                                   n_sigma, n_sigma_ul, scan_values))
        table = _flux_point_table([datasets[i] for i in chosen], [total[i] for i in chosen], [others[i] for i in chosen], models[source],
                                  requested, n_sigma, n_sigma_ul, scan_values, reoptimized)  # fmt: skip
        row = Table({"time_min": [start.tt.mjd], "time_max": [stop.tt.mjd]})
        for column in table.columns:
            values = np.asarray(table[column])
            if column in ("npred", "npred_excess", "counts"):  # one entry per dataset of the whole set, NaN outside the interval
                expanded = np.full((len(table), len(datasets)), np.nan)
                expanded[:, chosen] = values
                values = expanded
            row[column] = values[np.newaxis]
            row[column].unit = table[column].unit
        rows.append(row)
    if not rows:
        raise ValueError("light_curve: no dataset lies within any of the time intervals")
    curve = vstack(rows, metadata_conflicts="silent")
    curve.meta.update({**_sed_meta(n_sigma, n_sigma_ul), "SOURCE": source, "MJDREFI": 0, "MJDREFF": 0.0, "TIMESYS": "tt", "TIMEUNIT": "d"})
    return LightCurve(curve)


def reco_exposure(dataset: MapDataset, spectral) -> np.ndarray:
    """Counts ``(energy, ny, nx)`` that the spectrum ``spectral`` gives in each pixel, through
    the exposure and the energy dispersion at the map centre (Gammapy's
    ``estimate_exposure_reco_energy(normalize=False)``)."""
    true_edges = np.asarray(dataset.energy_true_edges, float)
    flux = np.asarray(spectral.integral(true_edges[:-1], true_edges[1:]), float)
    return np.einsum("tyx,t,tr->ryx", dataset.exposure, flux, dataset.edisp_matrix(None))


def excess_map(dataset, models: Models, correlation_radius: u.Quantity = 0.1 * u.deg, energy_edges: u.Quantity | None = None, *,
               n_sigma: float = 1.0, n_sigma_ul: float = 2.0) -> FluxMaps:
    """Excess and significance maps of one MapDataset or MapDatasetOnOff (stack runs
    first), as Gammapy's ``ExcessMapEstimator`` with its defaults: the counts in the
    dataset's safe bins, summed over the energy bins within ``energy_edges`` (default: all)
    and correlated with a top-hat of ``correlation_radius`` (astropy's ``Tophat2DKernel``, as
    Gammapy), against

    - a MapDataset: the predicted counts of ``models`` (the background template and any
      sources), correlated alike; Cash statistics per pixel (Li & Ma's equation 17);
    - a MapDatasetOnOff (a ring background): the OFF counts, correlated, with Gammapy's
      correlated ``alpha`` (the correlated measured background over the correlated OFF counts)
      and the signal ``models`` predict; WStat per pixel (Li & Ma's equation 17 with the
      background measured, its uncertainties and limits where WStat rises by ``n_sigma^2``).

    The result is one energy bin of :class:`~fitax.gamma.flux_maps.FluxMaps`: ``counts`` and
    ``npred`` (counts within the correlation radius), ``npred_excess``, ``ts``/``sqrt_ts``,
    ``norm`` (the excess over the excess a power law of index 2 and amplitude 1e-12 cm-2 s-1
    TeV-1 would give, the reference model) with ``norm_err`` (``n_sigma``),
    ``norm_errn``/``norm_errp``/``norm_ul`` (``n_sigma_ul``) and ``is_ul``, written in
    Gammapy's FluxMaps format.

    Example:
        >>> maps = excess_map(stacked, models, 0.1 * u.deg)  # doctest: +SKIP
        >>> maps.write("excess_map.fits")  # doctest: +SKIP
    """
    from astropy.convolution import Tophat2DKernel

    on_off = isinstance(dataset, MapDatasetOnOff)
    on = dataset.on if on_off else dataset
    if not isinstance(on, MapDataset):
        raise ValueError(f"excess_map: dataset {getattr(dataset, 'name', dataset)!r} is not a MapDataset or MapDatasetOnOff "
                         "(excess maps need maps)")
    models = models if isinstance(models, Models) else Models(models)
    edges = np.asarray(on.energy_edges, float)
    if energy_edges is None:
        low, high = 0, edges.size - 1
    else:
        requested = u.Quantity(energy_edges, "TeV").to_value("TeV")
        low, high = snap_energy_edges(edges, requested[[0, -1]])
        if high <= low:
            raise ValueError(f"excess_map: the energy range {requested[0]}-{requested[-1]} TeV covers no bin of the dataset's axis")
    safe = (on.irfs.mask_safe if on.irfs.mask_safe is not None else np.ones(on.counts.shape, bool))[low:high]
    # Gammapy's estimator mask: pixels with a safe energy (and, with a fit mask, a fitted one) in the range
    footprint = safe.any(axis=0) & (True if on.irfs.mask_fit is None else on.irfs.mask_fit[low:high].any(axis=0))

    def safe_sum(cube: np.ndarray) -> np.ndarray:  # Gammapy's resample_axis(weights=mask_safe)
        return np.sum(cube[low:high] * safe, axis=0)

    def image(cube: np.ndarray) -> np.ndarray:
        return safe_sum(cube) * footprint

    if on_off and not models.sky_models:  # nothing to predict: no program to compile
        predicted = np.zeros(on.counts.shape)
    else:
        (predicted,) = Datasets([on]).npred(models)  # on-off: the models' signal (the ON dataset has no background template)
    reference = safe_sum(reco_exposure(on, PowerLawSpectralModel(index=2.0, amplitude=1e-12)))  # not cut to the footprint, as Gammapy

    pixel = float(np.mean(np.abs(on.wcs.wcs.cdelt)))
    kernel = Tophat2DKernel(u.Quantity(correlation_radius, "deg").value / pixel).array
    kernel = kernel / kernel.max()

    def correlate(values: np.ndarray) -> np.ndarray:
        correlated = _convolve_same(values, kernel)
        # FFT rounding (~1e-12 of the largest value) where nothing was summed is a zero, not a value to divide by
        correlated[np.abs(correlated) <= 1e-10 * np.max(np.abs(correlated), initial=0.0)] = 0.0
        return correlated

    n_on = np.rint(correlate(image(on.counts)))
    if on_off:
        n_off, alpha = _correlated_off(dataset, image, correlate)
        maps = _wstat_excess_maps(n_on, n_off, alpha, correlate(image(np.nan_to_num(predicted))), n_sigma, n_sigma_ul)
    else:
        maps = _cash_excess_maps(n_on, correlate(image(np.nan_to_num(predicted))), n_sigma, n_sigma_ul)
    with np.errstate(invalid="ignore", divide="ignore"):  # the reference counts per pixel, averaged over the safe footprint
        expected = correlate(reference) / correlate(footprint.astype(float))
        for name in ("norm", "norm_err", "norm_errn", "norm_errp", "norm_ul"):
            maps[name] = maps.pop(name) / expected
    for values in maps.values():
        values[~footprint] = np.nan  # as Gammapy: no value where no energy is safe
    with np.errstate(invalid="ignore"):
        maps["is_ul"] = maps["sqrt_ts"] < 2.0  # Gammapy's rule with upper limits (False where there is no value)
    meta = {"N_SIGMA": (n_sigma, "sigmas of norm_err, norm_errn, norm_errp"), "N_SIG_UL": (n_sigma_ul, "sigmas of norm_ul"),
            "CORR_RAD": (float(u.Quantity(correlation_radius, "deg").value), "[deg] correlation radius"), "CREATOR": ("fitax", "")}
    reference_model = SkyModel(PowerLawSpectralModel(index=2.0, amplitude=1e-12), name="excess-reference")
    return FluxMaps({name: values[None] for name, values in maps.items()}, edges[[low, high]], on.wcs, reference_model, meta)


def _convolve_same(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """``scipy.signal.fftconvolve(image, kernel, mode="same")`` (odd kernels) with NumPy's FFT:
    importing scipy.signal takes ~1.3 s, more than a map's whole estimate."""
    ky, kx = kernel.shape
    shape = (image.shape[0] + ky - 1, image.shape[1] + kx - 1)
    full = np.fft.irfft2(np.fft.rfft2(image, shape) * np.fft.rfft2(kernel, shape), shape)
    return full[(ky - 1) // 2 : (ky - 1) // 2 + image.shape[0], (kx - 1) // 2 : (kx - 1) // 2 + image.shape[1]]


def _correlated_off(dataset: MapDatasetOnOff, image, correlate) -> tuple[np.ndarray, np.ndarray]:
    """The correlated OFF counts and ``alpha`` of an on-off map dataset, as Gammapy's
    estimator: the energy bins summed (the acceptances so that ``alpha x counts_off`` sums
    the measured background), then the measured background and the OFF counts correlated
    and divided (``correlate_off=True``)."""
    counts_off, acceptance, background = image(dataset.counts_off), image(dataset.acceptance), image(dataset.background)
    with np.errstate(invalid="ignore", divide="ignore"):
        acceptance_off = acceptance * counts_off / background
        measured = np.nan_to_num(acceptance / acceptance_off) * counts_off
        measured[acceptance_off == 0] = 0.0
        n_off = correlate(counts_off)
        # no OFF count within the radius: alpha is 0/0, NaN, and so is the pixel (Gammapy's is FFT noise over noise)
        return n_off, correlate(measured) / n_off


def _cash_excess_maps(n_on: np.ndarray, mu: np.ndarray, n_sigma: float, n_sigma_ul: float) -> dict:
    """Per pixel, Cash with the background ``mu`` known (Gammapy's ``CashCountsStatistic``):
    the excess, TS and, in counts, the errors and upper limit (closed forms in Lambert's W)."""
    from scipy.special import lambertw

    excess = n_on - mu
    ts = _cash(n_on, mu) - _cash(n_on, n_on)

    def lambert_offsets(n_sigma_value: float, branch: int) -> np.ndarray:
        c = n_sigma_value**2 / 2
        positive = n_on > 0
        on = np.where(positive, n_on, 1.0)
        value = (-1 if branch == -1 else 1) * on * (lambertw(-np.exp(-c / on - 1), k=branch).real + 1)
        return np.where(positive, value, 0.0 if branch == 0 else c)

    return {
        "counts": n_on, "npred": n_on.copy(), "npred_excess": excess, "ts": ts, "sqrt_ts": np.sign(excess) * np.sqrt(np.clip(ts, 0, None)),
        "norm": excess, "norm_err": np.sqrt(n_on) * n_sigma, "norm_errn": lambert_offsets(n_sigma, 0), "norm_errp": lambert_offsets(n_sigma, -1),
        # Gammapy's compute_upper_limit: n_sigma_ul^2 / 2 counts where none were seen
        "norm_ul": np.where(n_on > 0, lambert_offsets(n_sigma_ul, -1) + excess, n_sigma_ul**2 / 2),
    }  # fmt: skip


def _wstat_excess_maps(n_on: np.ndarray, n_off: np.ndarray, alpha: np.ndarray, mu_sig: np.ndarray, n_sigma: float,
                       n_sigma_ul: float) -> dict:
    """Per pixel, WStat with the background measured (Gammapy's ``WStatCountsStatistic``):
    the excess ``n_on - alpha n_off - mu_sig``, TS, the error ``sqrt(n_on + alpha^2 n_off)``,
    and the excesses where WStat is ``n_sigma^2`` above its minimum below and above it and
    ``n_sigma_ul^2`` above it (Gammapy's search ranges: where WStat does not reach the level
    there, ``errn`` is ``n_on`` and the others have no value)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        excess = n_on - alpha * n_off - mu_sig
        error = np.sqrt(n_on + alpha**2 * n_off)

        def stat(signal):
            return _wstat_terms(n_on, n_off, alpha, signal + mu_sig)

        def slope(signal):
            return _wstat_slope(n_on, n_off, alpha, signal + mu_sig)

        best = stat(excess)
        ts = np.clip(stat(np.zeros_like(excess)) - best, 0, None)
        lower = _convex_crossing(stat, slope, best + n_sigma**2, excess - 2 * n_sigma * (error + 1), excess, outer="lower")
        upper = _convex_crossing(stat, slope, best + n_sigma**2, excess, excess + 2 * n_sigma * (error + 1), outer="upper")
        limit = _convex_crossing(stat, slope, best + n_sigma_ul**2, excess, excess + 2 * n_sigma_ul * (error + 1), outer="upper")
        return {
            "counts": n_on, "npred": n_on.copy(), "npred_excess": excess, "ts": ts, "sqrt_ts": np.sign(excess) * np.sqrt(ts),
            "norm": excess, "norm_err": error * n_sigma, "norm_errn": np.where(np.isnan(lower), n_on, excess - lower),
            "norm_errp": upper - excess, "norm_ul": limit,
        }  # fmt: skip


def _convex_crossing(function, slope, level: np.ndarray, lower: np.ndarray, upper: np.ndarray, outer: str) -> np.ndarray:
    """Where ``function`` (elementwise on arrays) crosses ``level`` between ``lower`` and
    ``upper``, if it is on different sides of it there; NaN elsewhere, as Gammapy's
    ``find_roots`` with one bin. Newton's method from the ``outer`` end, where the function
    is above the level: where the function is convex (WStat of a non-negative signal) it
    approaches the crossing from that side in a few steps. As in Numerical Recipes' ``rtsafe``,
    a step that would leave the shrinking bracket, or that is not half the one before, is a
    bisection instead (WStat of a negative signal need not be convex, nor ``slope`` exact
    there), so every element converges; each stops once its step is below 1e-10 of it (the
    statistic, ~1e4 with its goodness-of-fit terms, is known to ~1e-12)."""
    f_lower, f_upper = function(lower) - level, function(upper) - level
    with np.errstate(invalid="ignore"):
        found = (np.sign(f_lower) != np.sign(f_upper)) & np.isfinite(f_lower) & np.isfinite(f_upper)
    low, high, sign_low = np.where(found, lower, 0.0), np.where(found, upper, 0.0), np.sign(f_lower)
    x = low if outer == "lower" else high
    previous_step = high - low
    done = ~found
    for _ in range(300):
        with np.errstate(invalid="ignore", divide="ignore"):
            value = function(x) - level
            newton_step = value / slope(x)
        keep_low = np.sign(value) == sign_low
        low, high = np.where(keep_low, x, low), np.where(keep_low, high, x)
        newton = x - newton_step
        with np.errstate(invalid="ignore"):
            use_newton = np.isfinite(newton) & (newton >= low) & (newton <= high) & (np.abs(newton_step) <= 0.5 * np.abs(previous_step))
        following = np.where(done, x, np.where(use_newton, newton, 0.5 * (low + high)))
        previous_step = following - x
        x = following
        done |= np.abs(previous_step) <= 1e-10 * np.maximum(np.abs(x), 1.0)
        if np.all(done):
            break
    return np.where(found & done, x, np.nan)
