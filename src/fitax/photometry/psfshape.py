"""Fit the PSF shape of an image from its bright isolated stars, jointly.

The shape parameters (Moffat ``gamma``, ``alpha``; Gaussian ``sigma_x``, ``sigma_y``,
``rho``) are shared by all stars; each star keeps its own flux, position and background. One
:func:`fitax.fit` over ``n_shape + 4 n`` parameters, so the shape errors account for every
star's nuisance parameters.

A fit compiles once per number of stars (every star's parameters are separate leaves of the
model). The stars are therefore padded to a multiple of :data:`STAR_BUCKET` with *ghost*
stars: fully masked stamps whose parameters are held at their start by a quadratic penalty.
A ghost adds nothing to the chi2 at the minimum and does not couple to the shape, so the
fitted shape, its errors and the chi2 are those of the real stars, while images with
similar numbers of PSF stars (and the refit after rejections) share one compiled fit.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..device import to_device
from ..fit import FitResult, fit
from ..parameters import Parameter, is_parameter, with_value
from ..stats import chi2
from .psf import GaussianPSF, MoffatPSF, psf_as_data
from .stamps import check_positions, cut_stamps, initial_estimates, predicted_variance, prf_boxes, prf_stamps
from .gridded import GriddedPSF
from .varying import SHAPE_PARAMETERS, VaryingPSF, polynomial_terms

__all__ = ["PSFShape", "fit_psf_shape", "fit_varying_psf_shape", "choose_psf_degree", "select_psf_stars"]


@dataclasses.dataclass(frozen=True)
class PSFShape:
    """A fitted PSF shape: ``psf`` (ready for :func:`fitax.photometry.fit_stars`) and the
    shape parameters' values and errors. A PSF given rather than fitted (a grid of ePSFs)
    has no values, no stars and no ``result``."""

    psf: MoffatPSF | GaussianPSF | VaryingPSF | GriddedPSF
    values: dict[str, float]
    errors: dict[str, float]
    n_stars: int
    result: FitResult | None
    rejected: int = 0
    """Candidates replaced because their stamps did not fit the common shape (blends, ...)."""
    positions: tuple[np.ndarray, np.ndarray] | None = None
    """Positions of the stars the shape was fitted on."""
    variance: np.ndarray | None = None
    """The stamps' variance the fit weighted them with: the fits of higher degree on the same
    stars reuse it, so their chi2 values compare (nested models, same weights)."""

    @property
    def degree(self) -> int:
        """Polynomial degree of the shape's variation over the image (0: constant)."""
        return self.psf.degree if isinstance(self.psf, VaryingPSF) else 0

    @property
    def fwhm(self) -> float:
        return self.psf.fwhm

    def __repr__(self) -> str:
        shape = ", ".join(f"{k}={v:.4f} +- {self.errors[k]:.4f}" for k, v in self.values.items())
        return f"PSFShape({type(self.psf).__name__}: {shape}, FWHM={self.fwhm:.3f} px, from {self.n_stars} stars, {self.rejected} rejected)"


STAR_BUCKET = 16
"""The joint shape fits pad their stars to a multiple of this (see the module docstring)."""


def _ghost_count(n_stars: int) -> int:
    return -n_stars % STAR_BUCKET


class _Star(eqx.Module):
    flux: Parameter
    x: Parameter
    y: Parameter
    bkg: Parameter


class _ShapeModel(eqx.Module):
    psf: MoffatPSF | GaussianPSF  # with Parameter leaves
    stars: tuple[_Star, ...]


def _stars(flux0, x0, y0, bkg0, fit_shape: int) -> tuple[_Star, ...]:
    """Each star's free flux, position (within its stamp) and background; then the ghost
    stars that pad them to a multiple of :data:`STAR_BUCKET`, at their penalty's minimum."""
    n_ghosts = _ghost_count(len(flux0))
    centre = float(fit_shape // 2)
    flux0, x0, y0, bkg0 = (np.r_[a, np.full(n_ghosts, g)] for a, g in ((flux0, 1.0), (x0, centre), (y0, centre), (bkg0, 0.0)))
    return tuple(
        _Star(Parameter(f, min=0.0), Parameter(cx, min=-0.5, max=fit_shape - 0.5), Parameter(cy, min=-0.5, max=fit_shape - 0.5), Parameter(b))
        for f, cx, cy, b in zip(flux0, x0, y0, bkg0)
    )


def _padded_data(stamps, variance, good, *per_star):
    """The fit's data with ghost stars appended (fully masked stamps, unit variance) and the
    ghost mask last; ``per_star`` arrays (positions) are padded with zeros."""
    n_ghosts = _ghost_count(len(stamps))
    pad = lambda a, value: np.concatenate([a, np.full((n_ghosts, *np.shape(a)[1:]), value, dtype=np.asarray(a).dtype)])  # noqa: E731
    ghost = np.r_[np.zeros(len(stamps), bool), np.ones(n_ghosts, bool)]
    arrays = (pad(stamps, 0.0), pad(variance, 1.0), pad(good, False), *(pad(a, 0.0) for a in per_star), ghost)
    return tuple(to_device(a) for a in arrays)


def _stamp_model(stars: tuple[_Star, ...], psf, size: int):
    """Every star's ``(flux, x, y, bkg)`` values and its predicted ``size x size`` stamp."""
    field = lambda name: jnp.stack([getattr(s, name).value for s in stars])  # noqa: E731
    flux, x, y, bkg = field("flux"), field("x"), field("y"), field("bkg")
    npred = flux[:, None, None] * prf_boxes(x - size // 2, y - size // 2, psf, size) + bkg[:, None, None]
    return (flux, x, y, bkg), npred


def _star_terms(model, stamps, variance, good, ghost, psf):
    """chi2 of the real stars' stamps plus the ghosts' penalty (0 at their start)."""
    size = stamps.shape[-1]
    (flux, x, y, bkg), npred = _stamp_model(model.stars, psf, size)
    centre = size // 2
    penalty = jnp.sum(jnp.where(ghost, (flux - 1.0) ** 2 + (x - centre) ** 2 + (y - centre) ** 2 + bkg**2, 0.0))
    return chi2(stamps, npred, jnp.sqrt(variance), good) + penalty


def _joint_chi2(model: _ShapeModel, data):
    stamps, variance, good, ghost = data
    psf = jax.tree_util.tree_map(lambda p: p.value, model.psf, is_leaf=is_parameter)
    return _star_terms(model, stamps, variance, good, ghost, psf)


def _start_psf(kind: str, fwhm0: float):
    if kind == "moffat":
        alpha0 = 2.5
        gamma0 = fwhm0 / (2 * np.sqrt(2 ** (1 / alpha0) - 1))
        start = MoffatPSF(gamma0, alpha0)
        # quadrature order fixed from the start (the fitted gamma is traced); one finer than
        # moffat_points asks, so a shrinking PSF stays accurate
        free = MoffatPSF(Parameter(gamma0, min=0.3, max=20.0, unit="pix"), Parameter(alpha0, min=1.05, max=20.0), points=start.points + 1)
        return start, free
    if kind == "gaussian":
        sigma0 = fwhm0 / (2 * np.sqrt(2 * np.log(2)))
        start = GaussianPSF(sigma0, sigma0, 0.0)
        free = GaussianPSF(Parameter(sigma0, min=0.2, max=20.0, unit="pix"), Parameter(sigma0, min=0.2, max=20.0, unit="pix"),
                           Parameter(0.0, min=-0.95, max=0.95))
        return start, free
    raise ValueError(f"unknown PSF kind {kind!r}; expected 'moffat' or 'gaussian'")


def select_psf_stars(image, x, y, *, n_max: int = 40, isolation: float = 12.0, edge: int = 10, saturation_mask=None) -> np.ndarray:
    """Indices of the brightest stars with no other catalog star within ``isolation`` pixels,
    at least ``edge`` pixels from the border and free of masked pixels nearby."""
    image, x, y = check_positions(image, x, y)
    ny, nx = image.shape
    xy = np.c_[x, y]
    order = np.argsort(-image[np.clip(np.round(y).astype(int), 0, ny - 1), np.clip(np.round(x).astype(int), 0, nx - 1)])
    # Cosmic rays, hot pixels and hot columns at catalog positions would be the "brightest
    # stars": keep round candidates no sharper than twice the median of the 200 brightest.
    from .detect import background_map, star_like

    rows, cols = np.clip(np.round(y).astype(int), 0, ny - 1), np.clip(np.round(x).astype(int), 0, nx - 1)
    stellar = star_like(image - background_map(image, saturation_mask), rows, cols, order[:200])
    chosen = []
    for i in order:
        if not stellar[i]:
            continue
        if not (edge <= x[i] < nx - edge and edge <= y[i] < ny - edge):
            continue
        distance = np.hypot(*(xy - xy[i]).T)
        distance[i] = np.inf
        if distance.min() < isolation:
            continue
        if saturation_mask is not None:
            r0, c0 = int(round(y[i])), int(round(x[i]))
            if saturation_mask[r0 - 3 : r0 + 4, c0 - 3 : c0 + 4].any():
                continue
        chosen.append(i)
        if len(chosen) == n_max:
            break
    return np.asarray(chosen, dtype=int)


def fit_psf_shape(
    image, x, y, *, read_noise: float, kind: Literal["moffat", "gaussian"] = "moffat", fit_shape: int = 15,
    fwhm0: float = 3.0, mask=None, max_stars: int | None = None, reject_sigma: float = 5.0,
) -> PSFShape:
    """Fit the PSF shape jointly to the stars at ``(x, y)`` (candidates in order of
    preference, e.g. from :func:`select_psf_stars`), starting from a PSF of FWHM ``fwhm0``.

    The first ``max_stars`` candidates (default: all) are fitted; stars whose reduced chi2
    exceeds the others' by more than ``reject_sigma`` robust standard deviations (unresolved
    blends, galaxies, defects, which widen the PSF) are then replaced by the next candidates
    and the shape is fitted again, with the same number of stars where spares remain (fewer
    otherwise; the compiled fit is reused either way within a bucket of :data:`STAR_BUCKET`).
    """
    image, x, y = check_positions(image, x, y)
    if len(x) < 3:
        raise ValueError(f"need at least 3 stars to fit the PSF shape, got {len(x)}")
    n = len(x) if max_stars is None else min(int(max_stars), len(x))
    start, free = _start_psf(kind, fwhm0)
    order = np.arange(n)
    result, reduced, variance = _fit_shape(image, x[order], y[order], read_noise, fit_shape, mask, start, free)
    centre = np.median(reduced)
    width = 1.4826 * np.median(np.abs(reduced - centre))
    outliers = reduced > max(1.5 * centre, centre + reject_sigma * width)
    spares = np.arange(n, len(x))[: int(outliers.sum())]
    kept = order[~outliers]
    if outliers.any() and len(kept) + len(spares) >= 3:
        order = np.r_[kept, spares]
        if _inside_bounds(result.params.psf):  # from the first fit's shape the refit needs few steps
            start, free = _restart_from(result)
        result, _, variance = _fit_shape(image, x[order], y[order], read_noise, fit_shape, mask, start, free)
    rejected = int(outliers.sum())
    if not result.converged:
        # a star whose own flux and position are not determined (a clipped, flat-topped core
        # in an image that does not declare its saturation: a saddle in position) leaves the
        # joint Hessian indefinite; it does not belong among the PSF stars either
        undetermined = ~_stars_determined(result.params, image, x[order], y[order], read_noise, fit_shape, mask)
        spares = np.arange(n + len(spares), len(x))[: int(undetermined.sum())]  # candidates not tried yet
        if undetermined.any() and (~undetermined).sum() + len(spares) >= 3:
            order = np.r_[order[~undetermined], spares]
            start, free = _restart_from(result)
            result, _, variance = _fit_shape(image, x[order], y[order], read_noise, fit_shape, mask, start, free)
            rejected += int(undetermined.sum())
    if not result.converged:
        raise RuntimeError(f"the PSF shape fit did not converge: {result.message}")
    names = ("gamma", "alpha") if kind == "moffat" else ("sigma_x", "sigma_y", "rho")
    values = {n: float(result.values[f"psf.{n}"]) for n in names}
    errors = {n: float(result.errors[f"psf.{n}"]) for n in names}
    psf = MoffatPSF(**values) if kind == "moffat" else GaussianPSF(**values)
    return PSFShape(psf=psf, values=values, errors=errors, n_stars=len(order), result=result, rejected=rejected,
                    positions=(x[order], y[order]), variance=variance)


@dataclasses.dataclass(frozen=True)
class _VaryingChi2:
    """chi2 of the stars under a polynomial PSF evaluated at each star's normalised position;
    hashable by its static description, so equal degrees and kinds share one compiled fit."""

    kind: str
    degree: int
    points: int

    def __call__(self, model, data):
        stamps, variance, good, u, v, ghost = data
        coefficients = {k: jnp.stack([c.value for c in v]) for k, v in model.coefficients.items()}
        # positions come normalised (u, v), so images of any size share the compiled fit
        psf = VaryingPSF(coefficients, self.kind, self.degree, (0.0, 0.0), 1.0, self.points).at(u, v)
        return _star_terms(model, stamps, variance, good, ghost, psf)


class _VaryingShapeModel(eqx.Module):
    coefficients: dict
    stars: tuple[_Star, ...]


def _arrowhead(n_shape: int, n_stars: int) -> np.ndarray:
    """Hessian sparsity of a joint shape fit: the shape parameters (first) couple to
    everything, each star's four parameters only to themselves and the shape."""
    n_free = n_shape + 4 * n_stars
    pattern = np.zeros((n_free, n_free), bool)
    pattern[:n_shape, :] = pattern[:, :n_shape] = True
    for i in range(n_stars):
        block = slice(n_shape + 4 * i, n_shape + 4 * i + 4)
        pattern[block, block] = True
    return pattern


def fit_varying_psf_shape(image, constant: PSFShape, *, degree: int, read_noise: float, fit_shape: int = 15, mask=None) -> PSFShape:
    """Fit a PSF whose shape parameters are polynomials of ``degree`` in the position
    (:class:`~fitax.photometry.varying.VaryingPSF`) to the stars the constant shape
    ``constant`` was fitted on, starting from it. The Hessian's sparsity (each star's
    parameters couple only to themselves and the shape) keeps the exact Newton steps cheap."""
    image = np.asarray(image, dtype=float)
    x, y = constant.positions
    start = VaryingPSF.constant(constant.psf, degree, image.shape)
    per_star = start.at(x, y)
    stamps, good, origin_x, origin_y = cut_stamps(image, x, y, fit_shape, mask)
    bkg0, flux0 = initial_estimates(stamps, good, fit_shape, per_star)
    local_x, local_y = x - origin_x, y - origin_y
    if constant.variance is not None and constant.variance.shape == stamps.shape:
        variance = constant.variance
    else:
        variance = predicted_variance(flux0, prf_stamps(local_x, local_y, fit_shape, per_star), bkg0, read_noise)
    model = _VaryingShapeModel(
        coefficients={k: tuple(Parameter(float(c)) for c in v) for k, v in start.coefficients.items()},
        stars=_stars(flux0, local_x, local_y, bkg0, fit_shape),
    )
    pattern = _arrowhead(sum(len(v) for v in start.coefficients.values()), len(model.stars))
    objective = _VaryingChi2(start.kind, degree, start.points)
    u, v = (np.asarray(x) - start.centre[0]) / start.scale, (np.asarray(y) - start.centre[1]) / start.scale
    data = _padded_data(stamps, variance, good, u, v)
    result = fit(objective, model, args=data, hessian_sparsity=pattern)
    if not result.converged:
        raise RuntimeError(f"the degree-{degree} PSF shape fit did not converge: {result.message}")
    coefficients = {k: np.array([float(c.value) for c in v]) for k, v in result.params.coefficients.items()}
    psf = VaryingPSF(coefficients, start.kind, degree, start.centre, start.scale, start.points)
    values = {f"{k}[{i}]": float(c) for k, v in coefficients.items() for i, c in enumerate(v)}
    errors = {f"{k}[{i}]": float(result.errors[f"coefficients.{k}.{i}"]) for k, v in coefficients.items() for i in range(len(v))}
    return PSFShape(psf=psf, values=values, errors=errors, n_stars=len(x), result=result, rejected=constant.rejected, positions=(x, y),
                    variance=variance)


def choose_psf_degree(image, constant: PSFShape, *, read_noise: float, max_degree: int = 2, fit_shape: int = 15, mask=None) -> PSFShape:
    """The PSF of degree 0 to ``max_degree`` with the lowest Bayesian information criterion,
    ``chi2 + k ln n_pixels`` (``k`` shape coefficients; the stars' own parameters are the same
    for every degree); the lower degree on a tie. All fits use the same stamps and weights
    (``constant.variance``), so their chi2 values compare.

    ``max_degree`` is fitted right after the constant, and the degrees between only if it wins:
    a variation without linear terms (focus, field curvature: widths growing towards every
    edge) leaves degree 1 no better than 0 but not degree 2, while a constant PSF costs two
    fits, not three. The price: a linear variation too weak to pay for degree 2's extra
    coefficients (a chi2 gain between ``6 ln n`` and ``15 ln n`` for a Gaussian's three shape
    parameters) stays constant."""
    n_pixels = len(constant.positions[0]) * fit_shape**2
    n_shape = len(SHAPE_PARAMETERS["gaussian" if isinstance(constant.psf, GaussianPSF) else "moffat"])

    def bic(shape: PSFShape) -> float:
        return float(shape.result.stat) + n_shape * len(polynomial_terms(shape.degree)) * np.log(n_pixels)

    def fitted(degree: int) -> PSFShape:
        return fit_varying_psf_shape(image, constant, degree=degree, read_noise=read_noise, fit_shape=fit_shape, mask=mask)

    if max_degree < 1:
        return constant
    highest = fitted(max_degree)
    if bic(highest) >= bic(constant):
        return constant
    return min([constant, *(fitted(degree) for degree in range(1, max_degree)), highest], key=bic)


def _restart_from(result: FitResult):
    """``(start, free)`` PSFs for a refit from a fit's shape: host numbers, as in the first
    fit, so that the compiled fit is reused."""
    free = jax.tree_util.tree_map(lambda p: with_value(p, np.asarray(float(p.value))), result.params.psf, is_leaf=is_parameter)
    return jax.tree_util.tree_map(lambda p: float(p.value), free, is_leaf=is_parameter), free


def _inside_bounds(psf) -> bool:
    """Whether every shape parameter lies off its bounds (a fit cannot start on one: e.g. a
    Moffat alpha at its maximum, where a Gaussian image drives it)."""
    leaves = jax.tree_util.tree_leaves(psf, is_leaf=is_parameter)
    def off(p):
        value, span = float(p.value), abs(float(p.value)) * 1e-6 + 1e-12
        return (p.min is None or value > p.min + span) and (p.max is None or value < p.max - span)
    return all(off(p) for p in leaves if is_parameter(p))


@jax.jit
def _star_chi2(model: _ShapeModel, data):
    """chi2 of each star's stamp under the fitted model (0 for ghosts)."""
    stamps, variance, good, _ = data
    psf = jax.tree_util.tree_map(lambda p: p.value, model.psf, is_leaf=is_parameter)
    _, npred = _stamp_model(model.stars, psf, stamps.shape[-1])
    return jnp.sum(jnp.where(good, (stamps - npred) ** 2 / variance, 0.0), axis=(1, 2))


def _stars_determined(params, image, x, y, read_noise, fit_shape, mask) -> np.ndarray:
    """Whether each star's own flux, position and background are determined at the fitted
    shape: its 4 x 4 block of the chi2 Hessian (the PSF held fixed) is positive definite."""
    stamps, good, origin_x, origin_y = cut_stamps(image, x, y, fit_shape, mask)
    psf = jax.tree_util.tree_map(lambda p: p.value, params.psf, is_leaf=is_parameter)
    theta = np.array([[float(s.flux.value), float(s.x.value), float(s.y.value), float(s.bkg.value)] for s in params.stars[: len(x)]])
    variance = predicted_variance(theta[:, 0], prf_stamps(theta[:, 1], theta[:, 2], fit_shape, psf_as_data(psf)), theta[:, 3], read_noise)

    def star_chi2(t, stamp, var, g):
        prf = prf_boxes(t[1:2] - fit_shape // 2, t[2:3] - fit_shape // 2, psf, fit_shape)[0]
        return jnp.sum(jnp.where(g, (stamp - t[0] * prf - t[3]) ** 2 / var, 0.0))

    hessians = jax.vmap(jax.hessian(star_chi2))(jnp.asarray(theta), jnp.asarray(stamps), jnp.asarray(variance), jnp.asarray(good))
    return np.linalg.eigvalsh(np.asarray(hessians))[:, 0] > 0


def _fit_shape(image, x, y, read_noise, fit_shape, mask, start, free):
    """The joint fit of the shape and every star's flux, position and background; with each
    star's reduced chi2."""
    stamps, good, origin_x, origin_y = cut_stamps(image, x, y, fit_shape, mask)
    start = psf_as_data(start)
    bkg0, flux0 = initial_estimates(stamps, good, fit_shape, start)
    local_x, local_y = x - origin_x, y - origin_y
    variance = predicted_variance(flux0, prf_stamps(local_x, local_y, fit_shape, start), bkg0, read_noise)
    model = _ShapeModel(psf=free, stars=_stars(flux0, local_x, local_y, bkg0, fit_shape))
    data = _padded_data(stamps, variance, good)
    n_shape = len([p for p in jax.tree_util.tree_leaves(free, is_leaf=is_parameter) if is_parameter(p)])
    result = fit(_joint_chi2, model, args=data, hessian_sparsity=_arrowhead(n_shape, len(model.stars)))
    reduced = np.asarray(_star_chi2(result.params, data))[: len(x)] / np.maximum(good.sum(axis=(1, 2)) - 4, 1)
    return result, reduced, variance
