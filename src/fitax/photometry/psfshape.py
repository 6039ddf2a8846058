"""Fit the PSF shape of an image from its bright isolated stars, jointly.

The Moffat ``gamma`` and ``alpha`` are shared by all stars; each star keeps its own flux,
position and background. One :func:`fitax.fit` over ``2 + 4 n`` parameters, so the shape
errors account for every star's nuisance parameters.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from ..fit import FitResult, fit
from ..parameters import Parameter
from ..stats import chi2
from .psf import moffat_fwhm
from .starfit import _check_inputs, _initial_estimates, _predicted_variance, _prf_boxes, _prf_stamps, cut_stamps

__all__ = ["MoffatShape", "fit_moffat_shape", "select_psf_stars"]


@dataclasses.dataclass(frozen=True)
class MoffatShape:
    """A fitted Moffat PSF shape with errors."""

    gamma: float
    alpha: float
    gamma_err: float
    alpha_err: float
    n_stars: int
    result: FitResult

    @property
    def fwhm(self) -> float:
        return float(moffat_fwhm(self.gamma, self.alpha))

    def __repr__(self) -> str:
        return (
            f"MoffatShape(gamma={self.gamma:.4f} +- {self.gamma_err:.4f} px, alpha={self.alpha:.4f} +- "
            f"{self.alpha_err:.4f}, FWHM={self.fwhm:.3f} px, from {self.n_stars} stars)"
        )


class _Star(eqx.Module):
    flux: Parameter
    x: Parameter
    y: Parameter
    bkg: Parameter


class _ShapeModel(eqx.Module):
    gamma: Parameter
    alpha: Parameter
    stars: tuple[_Star, ...]


def _joint_chi2(model: _ShapeModel, data):
    stamps, variance, good = data
    size = stamps.shape[-1]
    field = lambda name: jnp.stack([getattr(s, name).value for s in model.stars])  # noqa: E731
    flux, x, y, bkg = field("flux"), field("x"), field("y"), field("bkg")
    prf = _prf_boxes(x - size // 2, y - size // 2, model.gamma.value, model.alpha.value, size)
    npred = flux[:, None, None] * prf + bkg[:, None, None]
    return chi2(stamps, npred, jnp.sqrt(variance), good)


def select_psf_stars(image, x, y, *, n_max: int = 40, isolation: float = 12.0, edge: int = 10, saturation_mask=None) -> np.ndarray:
    """Indices of the brightest stars with no other catalog star within ``isolation`` pixels,
    at least ``edge`` pixels from the border and free of masked pixels nearby."""
    image, x, y = _check_inputs(image, x, y)
    ny, nx = image.shape
    xy = np.c_[x, y]
    order = np.argsort(-image[np.clip(np.round(y).astype(int), 0, ny - 1), np.clip(np.round(x).astype(int), 0, nx - 1)])
    chosen = []
    for i in order:
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


def fit_moffat_shape(
    image, x, y, *, read_noise: float, fit_shape: int = 15, gamma0: float = 2.0, alpha0: float = 2.5, mask=None
) -> MoffatShape:
    """Fit Moffat ``gamma`` and ``alpha`` jointly to the stars at ``(x, y)`` (choose them with
    :func:`select_psf_stars`)."""
    image, x, y = _check_inputs(image, x, y)
    if len(x) < 3:
        raise ValueError(f"need at least 3 stars to fit the PSF shape, got {len(x)}")
    stamps, good, origin_x, origin_y = cut_stamps(image, x, y, fit_shape, mask)
    bkg0, flux0 = _initial_estimates(stamps, good, fit_shape, (gamma0, alpha0))
    local_x, local_y = x - origin_x, y - origin_y
    variance = _predicted_variance(flux0, _prf_stamps(local_x, local_y, fit_shape, (gamma0, alpha0)), bkg0, read_noise)
    model = _ShapeModel(
        gamma=Parameter(gamma0, min=0.3, max=20.0, unit="pix"),
        alpha=Parameter(alpha0, min=1.05, max=20.0),
        stars=tuple(
            _Star(Parameter(f, min=0.0), Parameter(cx, min=-0.5, max=fit_shape - 0.5), Parameter(cy, min=-0.5, max=fit_shape - 0.5), Parameter(b))
            for f, cx, cy, b in zip(flux0, local_x, local_y, bkg0)
        ),
    )
    data = (jnp.asarray(stamps), jnp.asarray(variance), jnp.asarray(good))
    result = fit(_joint_chi2, model, args=data)
    if not result.converged:
        raise RuntimeError(f"the PSF shape fit did not converge: {result.message}")
    return MoffatShape(
        gamma=result.values["gamma"], alpha=result.values["alpha"], gamma_err=result.errors["gamma"],
        alpha_err=result.errors["alpha"], n_stars=len(x), result=result,
    )
