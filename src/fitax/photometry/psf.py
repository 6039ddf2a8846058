"""Pixel-integrated PSF models (PRFs): the fraction of a unit-flux star falling in each pixel.

Point-sampling a PSF at pixel centres biases fluxes of well-sampled stars by 1-2% (the
profile is curved across a pixel), so every model here integrates over the pixel area:

* elliptical Gaussian with full covariance: exact erf integration along x, conditional on y,
  and Gauss–Legendre quadrature along y (exact in both directions when uncorrelated);
* elliptical Moffat ``(alpha - 1) / (pi gamma_x gamma_y) [1 + q]^-alpha``: 2-d Gauss–Legendre
  quadrature (its pixel integral has no closed form).

All functions are pure, vectorised over any leading shape, and differentiable in every
parameter, so fits of position and shape go through ``jax.grad``.
"""

from __future__ import annotations

from functools import lru_cache

import jax
import jax.numpy as jnp
import numpy as np
import equinox as eqx
from jax.scipy.special import ndtr
from jaxtyping import Array, ArrayLike, Float

__all__ = ["gaussian_prf", "moffat_prf", "moffat_fwhm", "moffat_points", "MoffatPSF", "GaussianPSF", "ImagePSF", "psf_as_data"]


@lru_cache(maxsize=16)
def _pixel_nodes(points: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss–Legendre offsets within a pixel ``[-0.5, 0.5]`` and their weights (sum 1)."""
    nodes, weights = np.polynomial.legendre.leggauss(points)
    return 0.5 * nodes, 0.5 * weights


def gaussian_prf(
    dx: Float[ArrayLike, "*#pix"],
    dy: Float[ArrayLike, "*#pix"],
    sigma_x: Float[ArrayLike, ""],
    sigma_y: Float[ArrayLike, ""],
    rho: Float[ArrayLike, ""] = 0.0,
    points: int = 6,
) -> Float[Array, "*#pix"]:
    """Integral of a unit-flux 2-d Gaussian over pixels centred at offsets ``(dx, dy)``.

    Args:
        dx, dy: pixel-centre offsets from the star's centre (column, row), any shape.
        sigma_x, sigma_y: standard deviations along x and y [pixels].
        rho: correlation coefficient (``|rho| < 1``); the covariance is
            ``[[sx^2, rho sx sy], [rho sx sy, sy^2]]``.
        points: Gauss–Legendre points across the pixel in y (used only when ``rho != 0``).

    Example:
        >>> import jax.numpy as jnp
        >>> from fitax.photometry import gaussian_prf
        >>> yy, xx = jnp.mgrid[-10:11, -10:11]
        >>> round(float(gaussian_prf(xx - 0.3, yy + 0.2, 1.2, 0.9, 0.4).sum()), 6)
        1.0
    """
    dx = jnp.asarray(dx, dtype=float)
    dy = jnp.asarray(dy, dtype=float)
    sigma_x = jnp.asarray(sigma_x, dtype=float)
    sigma_y = jnp.asarray(sigma_y, dtype=float)
    rho = jnp.asarray(rho, dtype=float)
    # Uncorrelated: separable, exact.
    separable = (ndtr((dx + 0.5) / sigma_x) - ndtr((dx - 0.5) / sigma_x)) * (
        ndtr((dy + 0.5) / sigma_y) - ndtr((dy - 0.5) / sigma_y)
    )
    # Correlated: x | y is Gaussian with mean rho sx/sy y and sd sx sqrt(1 - rho^2), so the x
    # integral is exact (erf) and only the y integral is numerical.
    offsets, weights = _pixel_nodes(points)
    y = dy[..., None] + offsets
    density_y = jnp.exp(-0.5 * (y / sigma_y) ** 2) / (jnp.sqrt(2 * jnp.pi) * sigma_y)
    mean_x = rho * sigma_x / sigma_y * y
    sd_x = sigma_x * jnp.sqrt(1 - rho**2)
    along_x = ndtr((dx[..., None] + 0.5 - mean_x) / sd_x) - ndtr((dx[..., None] - 0.5 - mean_x) / sd_x)
    correlated = jnp.sum(weights * density_y * along_x, axis=-1)
    # At rho = 0 report the exact separable value but keep the correlated form's derivatives:
    # the separable form does not depend on rho, so a fit started at rho = 0 would stay there.
    exact_at_zero = separable + correlated - jax.lax.stop_gradient(correlated)
    return jnp.where(rho == 0, exact_at_zero, correlated)


def moffat_prf(
    dx: Float[ArrayLike, "*#pix"],
    dy: Float[ArrayLike, "*#pix"],
    gamma: Float[ArrayLike, ""],
    alpha: Float[ArrayLike, ""],
    ellipticity: Float[ArrayLike, ""] = 0.0,
    theta: Float[ArrayLike, ""] = 0.0,
    points: int = 4,
) -> Float[Array, "*#pix"]:
    """Integral of a unit-flux elliptical Moffat profile over pixels at offsets ``(dx, dy)``.

    ``f = (alpha - 1) / (pi gamma_1 gamma_2) [1 + (u / gamma_1)^2 + (v / gamma_2)^2]^-alpha``
    with ``gamma_1 = gamma``, ``gamma_2 = gamma (1 - ellipticity)`` along axes rotated by
    ``theta`` (radians, counter-clockwise from x). ``points x points`` Gauss–Legendre nodes
    per pixel: 4 give ~1e-5 relative accuracy for a 2.5-pixel FWHM (see tests).

    Example:
        >>> import jax.numpy as jnp
        >>> from fitax.photometry import moffat_prf
        >>> yy, xx = jnp.mgrid[-10:11, -10:11]
        >>> round(float(moffat_prf(xx, yy, 2.45, 3.0).sum()), 4)  # 21x21 stamp misses the wings
        0.9981
    """
    dx = jnp.asarray(dx, dtype=float)
    dy = jnp.asarray(dy, dtype=float)
    gamma_1 = jnp.asarray(gamma, dtype=float)
    gamma_2 = gamma_1 * (1 - jnp.asarray(ellipticity, dtype=float))
    offsets, weights = _pixel_nodes(points)
    # Node axes first ([y-node, x-node, ...pixels]): the pixel axes stay innermost, which
    # vectorises far better on CPU than length-4 node axes (measured 1.6x on stamp fits).
    extra = (None,) * dx.ndim
    x = dx[None, None] + offsets[(None, slice(None), *extra)]
    y = dy[None, None] + offsets[(slice(None), None, *extra)]
    if isinstance(ellipticity, (int, float)) and isinstance(theta, (int, float)) and ellipticity == 0 and theta == 0:
        # Circular: squares on the small x and y grids, one broadcast add (3x faster stamp fits).
        q = (x**2 + y**2) / gamma_1**2
    else:
        cos_t, sin_t = jnp.cos(theta), jnp.sin(theta)
        u = cos_t * x + sin_t * y
        v = -sin_t * x + cos_t * y
        q = (u / gamma_1) ** 2 + (v / gamma_2) ** 2
    # A known integer alpha is a few multiplications instead of exp and log per sample (6x
    # faster stamp fits, benchmarks/batch_fit.py); a fitted (traced) alpha takes the general form.
    if isinstance(alpha, (int, float)) and float(alpha).is_integer():
        power = (1 + q) ** -int(alpha)
    else:
        alpha = jnp.asarray(alpha, dtype=float)
        power = jnp.exp(-alpha * jnp.log1p(q))
    density = (alpha - 1) / (jnp.pi * gamma_1 * gamma_2) * power
    node_weights = (weights[:, None] * weights[None, :])[(..., *extra)]
    return jnp.sum(density * node_weights, axis=(0, 1))


def moffat_points(gamma: float) -> int:
    """Gauss–Legendre points per pixel axis that keep a Moffat PRF's flux-weighted error
    below ~1e-5 (measured against 12 points): the error falls fast with ``gamma`` in pixels,
    and evaluation cost grows as ``points^2`` (3 points make star fits 1.5x faster than 4)."""
    gamma = float(gamma)
    for smallest_gamma, points in ((2.3, 3), (1.7, 4), (1.2, 5), (0.9, 6)):
        if gamma >= smallest_gamma:
            return points
    return 10


def moffat_fwhm(gamma, alpha):
    """Full width at half maximum of a Moffat profile: ``2 gamma sqrt(2^(1/alpha) - 1)``,
    written with ``expm1``: a Moffat fitted to a Gaussian PSF runs to ``alpha ~ 1e18`` (its
    Gaussian limit), where ``2^(1/alpha) - 1`` rounds to 0."""
    return 2 * gamma * jnp.sqrt(jnp.expm1(jnp.log(2.0) / jnp.asarray(alpha, dtype=float)))


class MoffatPSF(eqx.Module):
    """Moffat PSF shape: ``gamma`` [pixels] and ``alpha``, circular unless ``ellipticity``
    and ``theta`` [radians] are given (see :func:`moffat_prf`); ``points`` is the quadrature
    order of its pixel integral (from :func:`moffat_points` by default).

    Example:
        >>> MoffatPSF(2.45, 3.0)
        MoffatPSF(gamma=2.45, alpha=3, FWHM=2.50 px)
    """

    gamma: Float[ArrayLike, ""]
    alpha: Float[ArrayLike, ""]
    ellipticity: Float[ArrayLike, ""] | None
    theta: Float[ArrayLike, ""] | None
    points: int = eqx.field(static=True)

    def __init__(self, gamma, alpha, points: int | None = None, *, ellipticity=None, theta=None):
        self.gamma = gamma
        self.alpha = alpha
        # None (circular) keeps moffat_prf's fast circular path; values make it elliptical
        self.ellipticity = ellipticity
        self.theta = theta
        self.points = moffat_points(gamma * (1 - (ellipticity or 0.0))) if points is None else int(points)

    def prf(self, dx, dy):
        if self.ellipticity is None and self.theta is None:
            return moffat_prf(dx, dy, self.gamma, self.alpha, points=self.points)
        ellipticity = 0.0 if self.ellipticity is None else jnp.asarray(self.ellipticity, dtype=float)
        theta = 0.0 if self.theta is None else jnp.asarray(self.theta, dtype=float)
        return moffat_prf(dx, dy, self.gamma, self.alpha, ellipticity, theta, points=self.points)

    @property
    def fwhm(self) -> float:
        gamma, alpha = float(self.gamma), float(self.alpha)  # NumPy: no compiled program for a number
        return 2 * gamma * np.sqrt(np.expm1(np.log(2.0) / alpha))

    def __repr__(self) -> str:
        return f"MoffatPSF(gamma={float(self.gamma):.4g}, alpha={float(self.alpha):.4g}, FWHM={self.fwhm:.2f} px)"


class GaussianPSF(eqx.Module):
    """Elliptical Gaussian PSF with full covariance: ``sigma_x``, ``sigma_y`` [pixels] and
    correlation ``rho``.

    Example:
        >>> GaussianPSF(1.1, 1.0, 0.1)
        GaussianPSF(sigma_x=1.1, sigma_y=1, rho=0.1, FWHM=2.47 px)
    """

    sigma_x: Float[ArrayLike, ""]
    sigma_y: Float[ArrayLike, ""]
    rho: Float[ArrayLike, ""] = 0.0

    def prf(self, dx, dy):
        return gaussian_prf(dx, dy, self.sigma_x, self.sigma_y, self.rho)

    @property
    def fwhm(self) -> float:
        """FWHM of the geometric-mean width."""
        return float(2 * np.sqrt(2 * np.log(2)) * np.sqrt(float(self.sigma_x) * float(self.sigma_y)))

    def __repr__(self) -> str:
        return (
            f"GaussianPSF(sigma_x={float(self.sigma_x):.4g}, sigma_y={float(self.sigma_y):.4g}, "
            f"rho={float(self.rho):.3g}, FWHM={self.fwhm:.2f} px)"
        )


def _cubic_weights(t):
    """Keys cubic-convolution weights (a = -0.5) of the 4 samples around fractional ``t``:
    interpolates exactly through the samples, is C1 and reproduces quadratics."""
    a = -0.5
    distances = jnp.stack([1 + t, t, 1 - t, 2 - t], axis=-1)
    near = ((a + 2) * distances - (a + 3)) * distances**2 + 1
    far = ((a * distances - 5 * a) * distances + 8 * a) * distances - 4 * a
    return jnp.where(distances <= 1, near, far)


class ImagePSF(eqx.Module):
    """Empirical PSF: a pixel-integrated PSF tabulated on a grid ``oversampling`` times finer
    than the image pixels (photutils' ``ImagePSF`` convention: the array centre is the star's
    centre), evaluated at any sub-pixel offset by cubic convolution (smooth, differentiable
    in the position). Normalised so the PRF sums to 1 over image pixels.

    Example:
        >>> import numpy as np
        >>> from fitax.photometry import ImagePSF, MoffatPSF
        >>> fine = (np.arange(161) - 80) / 4                  # x4 grid, 41 x 41 pixels
        >>> table = MoffatPSF(2.45, 3.0).prf(fine[None, :], fine[:, None])
        >>> psf = ImagePSF(table, oversampling=4)
        >>> yy, xx = np.mgrid[-3:4, -3:4]
        >>> bool(np.allclose(psf.prf(xx - 0.3, yy + 0.1), MoffatPSF(2.45, 3.0).prf(xx - 0.3, yy + 0.1), atol=2e-4))
        True
    """

    data: Float[Array, "ny nx"]
    oversampling: int = eqx.field(static=True)

    def __init__(self, data, oversampling: int):
        data = np.asarray(data, dtype=float)
        if data.ndim != 2 or min(data.shape) < 4:
            raise ValueError(f"ImagePSF needs a 2-d table of at least 4 x 4 samples, got shape {data.shape}")
        if not (np.all(np.isfinite(data)) and data.sum() > 0):
            raise ValueError("ImagePSF table must be finite with a positive sum")
        if int(oversampling) < 1:
            raise ValueError(f"oversampling must be a positive integer, got {oversampling}")
        self.oversampling = int(oversampling)
        # each of the oversampling^2 sub-pixel phases must sum to 1 over image pixels
        self.data = jnp.asarray(np.pad(data / data.sum() * self.oversampling**2, 2))

    def prf(self, dx, dy):
        dx, dy = jnp.asarray(dx, dtype=float), jnp.asarray(dy, dtype=float)
        ny, nx = self.data.shape
        u = (nx - 1) / 2 + dx * self.oversampling
        v = (ny - 1) / 2 + dy * self.oversampling
        iu, iv = jnp.floor(u), jnp.floor(v)
        wu, wv = _cubic_weights(u - iu), _cubic_weights(v - iv)
        cols = iu.astype(int)[..., None] + jnp.arange(-1, 3)
        rows = iv.astype(int)[..., None] + jnp.arange(-1, 3)
        inside = (cols[..., None, :] >= 0) & (cols[..., None, :] < nx) & (rows[..., :, None] >= 0) & (rows[..., :, None] < ny)
        samples = self.data[jnp.clip(rows, 0, ny - 1)[..., :, None], jnp.clip(cols, 0, nx - 1)[..., None, :]]
        samples = jnp.where(inside, samples, 0.0)
        return jnp.einsum("...i,...ij,...j->...", wv, samples, wu)

    @property
    def fwhm(self) -> float:
        """Width of the area above half maximum, as a circle's diameter [pixels]."""
        data = np.asarray(self.data)
        area = np.sum(data >= 0.5 * data.max()) / self.oversampling**2
        return float(2 * np.sqrt(area / np.pi))

    def __repr__(self) -> str:
        ny, nx = self.data.shape
        return f"ImagePSF({ny - 4}x{nx - 4} samples, oversampling={self.oversampling}, FWHM~{self.fwhm:.2f} px)"


def psf_as_data(psf):
    """``psf`` with its numbers as NumPy arrays, so that compiled programs take them as data:
    every PSF of one kind then shares one program, where Python numbers would be static
    (a new trace, and a new program on disk, for each fitted PSF). An integer Moffat
    ``alpha`` stays a Python number: it selects :func:`moffat_prf`'s faster kernel."""
    keep = isinstance(psf, MoffatPSF) and isinstance(psf.alpha, (int, float)) and float(psf.alpha).is_integer()
    as_array = lambda x: np.asarray(x, dtype=float) if isinstance(x, (int, float, np.number)) else x  # noqa: E731
    converted = jax.tree_util.tree_map(as_array, psf)
    return eqx.tree_at(lambda p: p.alpha, converted, psf.alpha) if keep else converted
