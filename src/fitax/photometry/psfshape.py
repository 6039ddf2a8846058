"""Fit the PSF shape of an image from its bright isolated stars, jointly.

The shape parameters (Moffat ``gamma``, ``alpha``; Gaussian ``sigma_x``, ``sigma_y``,
``rho``) are shared by all stars; each star keeps its own flux, position and background. One
:func:`fitax.fit` over ``n_shape + 4 n`` parameters, so the shape errors account for every
star's nuisance parameters.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..fit import FitResult, fit
from ..parameters import Parameter, is_parameter
from ..stats import chi2
from .psf import GaussianPSF, MoffatPSF, psf_as_data
from .stamps import check_positions, cut_stamps, initial_estimates, predicted_variance, prf_boxes, prf_stamps

__all__ = ["PSFShape", "fit_psf_shape", "select_psf_stars"]


@dataclasses.dataclass(frozen=True)
class PSFShape:
    """A fitted PSF shape: ``psf`` (ready for :func:`fitax.photometry.fit_stars`) and the
    shape parameters' values and errors."""

    psf: MoffatPSF | GaussianPSF
    values: dict[str, float]
    errors: dict[str, float]
    n_stars: int
    result: FitResult

    @property
    def fwhm(self) -> float:
        return self.psf.fwhm

    def __repr__(self) -> str:
        shape = ", ".join(f"{k}={v:.4f} +- {self.errors[k]:.4f}" for k, v in self.values.items())
        return f"PSFShape({type(self.psf).__name__}: {shape}, FWHM={self.fwhm:.3f} px, from {self.n_stars} stars)"


class _Star(eqx.Module):
    flux: Parameter
    x: Parameter
    y: Parameter
    bkg: Parameter


class _ShapeModel(eqx.Module):
    psf: MoffatPSF | GaussianPSF  # with Parameter leaves
    stars: tuple[_Star, ...]


def _joint_chi2(model: _ShapeModel, data):
    stamps, variance, good = data
    size = stamps.shape[-1]
    field = lambda name: jnp.stack([getattr(s, name).value for s in model.stars])  # noqa: E731
    flux, x, y, bkg = field("flux"), field("x"), field("y"), field("bkg")
    psf = jax.tree_util.tree_map(lambda p: p.value, model.psf, is_leaf=is_parameter)
    prf = prf_boxes(x - size // 2, y - size // 2, psf, size)
    npred = flux[:, None, None] * prf + bkg[:, None, None]
    return chi2(stamps, npred, jnp.sqrt(variance), good)


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
    fwhm0: float = 3.0, mask=None,
) -> PSFShape:
    """Fit the PSF shape jointly to the stars at ``(x, y)`` (choose them with
    :func:`select_psf_stars`), starting from a PSF of FWHM ``fwhm0`` pixels."""
    image, x, y = check_positions(image, x, y)
    if len(x) < 3:
        raise ValueError(f"need at least 3 stars to fit the PSF shape, got {len(x)}")
    start, free = _start_psf(kind, fwhm0)
    stamps, good, origin_x, origin_y = cut_stamps(image, x, y, fit_shape, mask)
    start = psf_as_data(start)
    bkg0, flux0 = initial_estimates(stamps, good, fit_shape, start)
    local_x, local_y = x - origin_x, y - origin_y
    variance = predicted_variance(flux0, prf_stamps(local_x, local_y, fit_shape, start), bkg0, read_noise)
    model = _ShapeModel(
        psf=free,
        stars=tuple(
            _Star(Parameter(f, min=0.0), Parameter(cx, min=-0.5, max=fit_shape - 0.5), Parameter(cy, min=-0.5, max=fit_shape - 0.5), Parameter(b))
            for f, cx, cy, b in zip(flux0, local_x, local_y, bkg0)
        ),
    )
    data = (jnp.asarray(stamps), jnp.asarray(variance), jnp.asarray(good))
    result = fit(_joint_chi2, model, args=data)
    if not result.converged:
        raise RuntimeError(f"the PSF shape fit did not converge: {result.message}")
    names = ("gamma", "alpha") if kind == "moffat" else ("sigma_x", "sigma_y", "rho")
    values = {n: float(result.values[f"psf.{n}"]) for n in names}
    errors = {n: float(result.errors[f"psf.{n}"]) for n in names}
    psf = MoffatPSF(**values) if kind == "moffat" else GaussianPSF(**values)
    return PSFShape(psf=psf, values=values, errors=errors, n_stars=len(x), result=result)
