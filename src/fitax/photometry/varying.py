"""PSFs that change across the image: a polynomial in (x, y) for each shape parameter (as
IPAC's and PSFEx's PSF models of survey quadrants), and the per-star PSFs it yields.

Each shape parameter is a polynomial of degree ``degree`` in the normalised coordinates
``u = (x - x0) / scale``, ``v = (y - y0) / scale`` (``|u|, |v| <= 1`` over the image), taken
through a link that keeps it valid everywhere: ``log`` for widths (Gaussian ``sigma_x,
sigma_y``, Moffat ``gamma``), ``log(alpha - 1)`` for the Moffat index and ``atanh`` for the
Gaussian correlation ``rho``. Degree 0 is a constant PSF.

:class:`PerStarPSF` holds one PSF per star (array leaves with a leading star axis); the
stamp kernels vmap over it, so every star is fitted with the PSF at its own position.

Example:
    >>> import numpy as np
    >>> psf = VaryingPSF.from_function("gaussian", lambda u, v: {"sigma_x": 1.2 + 0.2 * u, "sigma_y": 1.2 + 0.2 * u,
    ...                                "rho": 0.0 * u}, degree=1, shape=(1000, 1000))
    >>> stars = psf.at(np.array([0.0, 999.0]), np.array([500.0, 500.0]))
    >>> np.round(np.asarray(stars.psf.sigma_x), 2)    # log(sigma) linear in u: 1.0 and 1.4 approached
    array([1.01, 1.41])
"""

from __future__ import annotations

import itertools
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..device import on_host
from .psf import GaussianPSF, ImagePSF, MoffatPSF, moffat_fwhm, moffat_points

__all__ = ["VaryingPSF", "PerStarPSF", "take_stars", "polynomial_terms", "SHAPE_PARAMETERS"]

SHAPE_PARAMETERS = {"gaussian": ("sigma_x", "sigma_y", "rho"), "moffat": ("gamma", "alpha")}


def _links(xp) -> dict:
    """Each shape parameter's map to the unbounded quantity the polynomial describes, and
    back, in the array namespace ``xp``."""
    return {
        "sigma_x": (xp.log, xp.exp), "sigma_y": (xp.log, xp.exp), "gamma": (xp.log, xp.exp),
        "rho": (xp.arctanh, xp.tanh), "alpha": (lambda a: xp.log(a - 1.0), lambda t: 1.0 + xp.exp(t)),
    }


_LINKS = _links(jnp)
# Host (NumPy) inputs are computed with NumPy: JAX would compile a small program for each
# operation and shape, ~14 ms each in a new process.
_HOST_LINKS = _links(np)


def polynomial_terms(degree: int) -> tuple[tuple[int, int], ...]:
    """Exponents ``(i, j)`` of ``u^i v^j`` with ``i + j <= degree``, constant first."""
    return tuple(sorted(((i, j) for i, j in itertools.product(range(degree + 1), repeat=2) if i + j <= degree), key=lambda t: (sum(t), -t[0])))


class PerStarPSF(eqx.Module):
    """One PSF per star: ``psf``'s array leaves carry a leading axis of length ``n``."""

    psf: MoffatPSF | GaussianPSF | ImagePSF

    @property
    def n(self) -> int:
        return len(jax.tree_util.tree_leaves(self.psf)[0])

    def in_axes(self):
        """``jax.vmap`` axes of :attr:`psf`: 0 for every leaf."""
        return jax.tree_util.tree_map(lambda _: 0, self.psf)

    @property
    def fwhm(self) -> float:
        """The largest FWHM of the stars (sizes that must hold every star's PSF)."""
        return float(np.max(np.asarray(jax.vmap(lambda p: _fwhm(p))(self.psf))))

    def __repr__(self) -> str:
        return f"PerStarPSF({type(self.psf).__name__} x {self.n}, FWHM <= {self.fwhm:.2f} px)"


def _fwhm(psf):
    if isinstance(psf, ImagePSF):  # the area above half maximum, as a circle's diameter
        return 2 * jnp.sqrt(jnp.sum(psf.data >= 0.5 * psf.data.max()) / psf.oversampling**2 / jnp.pi)
    if isinstance(psf, GaussianPSF):
        return 2 * jnp.sqrt(2 * jnp.log(2)) * jnp.sqrt(psf.sigma_x * psf.sigma_y)
    return moffat_fwhm(psf.gamma, psf.alpha)


def take_stars(psf, index):
    """The PSFs of stars ``index`` of a :class:`PerStarPSF`; any other PSF unchanged."""
    if isinstance(psf, PerStarPSF):
        return PerStarPSF(jax.tree_util.tree_map(lambda a: np.asarray(a)[index], psf.psf))
    return psf


class VaryingPSF(eqx.Module):
    """A PSF whose shape parameters are polynomials in the image position (see the module
    docstring). ``coefficients[name]`` holds the linked parameter's polynomial coefficients in
    the order of :func:`polynomial_terms`."""

    coefficients: dict
    kind: Literal["gaussian", "moffat"] = eqx.field(static=True)
    degree: int = eqx.field(static=True)
    centre: tuple[float, float] = eqx.field(static=True)
    scale: float = eqx.field(static=True)
    points: int = eqx.field(static=True, default=4)

    @classmethod
    def constant(cls, psf: GaussianPSF | MoffatPSF, degree: int, shape: tuple[int, int]) -> "VaryingPSF":
        """The constant ``psf`` as a polynomial of ``degree`` (higher terms 0)."""
        kind = "gaussian" if isinstance(psf, GaussianPSF) else "moffat"
        n_terms = len(polynomial_terms(degree))
        coefficients = {name: np.r_[float(_HOST_LINKS[name][0](float(getattr(psf, name)))), np.zeros(n_terms - 1)]
                        for name in SHAPE_PARAMETERS[kind]}
        points = psf.points if isinstance(psf, MoffatPSF) else 4
        return cls(coefficients, kind, degree, ((shape[1] - 1) / 2, (shape[0] - 1) / 2), max(shape) / 2, points)

    @classmethod
    def from_function(cls, kind, parameters, *, degree: int, shape: tuple[int, int], points: int | None = None) -> "VaryingPSF":
        """Fit the polynomial to ``parameters(u, v) -> {name: value}`` on a grid (for
        simulations and tests)."""
        u, v = (a.ravel() for a in np.meshgrid(np.linspace(-1, 1, 9), np.linspace(-1, 1, 9)))
        design = np.stack([u**i * v**j for i, j in polynomial_terms(degree)], axis=1)
        values = parameters(u, v)
        coefficients = {name: np.linalg.lstsq(design, _HOST_LINKS[name][0](np.asarray(values[name], float)), rcond=None)[0]
                        for name in SHAPE_PARAMETERS[kind]}
        if kind == "moffat" and points is None:
            points = moffat_points(float(np.min(values["gamma"]))) + 1
        return cls(coefficients, kind, degree, ((shape[1] - 1) / 2, (shape[0] - 1) / 2), max(shape) / 2, points or 4)

    def values_at(self, x, y) -> dict:
        """Shape parameters at pixel positions ``x, y`` (0-based)."""
        host = on_host(x, y, *self.coefficients.values())
        xp, links = (np, _HOST_LINKS) if host else (jnp, _LINKS)
        u = (xp.asarray(x, float) - self.centre[0]) / self.scale
        v = (xp.asarray(y, float) - self.centre[1]) / self.scale
        design = xp.stack([u**i * v**j for i, j in polynomial_terms(self.degree)], axis=-1)
        return {name: links[name][1](design @ xp.asarray(c)) for name, c in self.coefficients.items()}

    def at(self, x, y) -> PerStarPSF:
        """The PSF of each star at ``x, y``."""
        atleast_1d = np.atleast_1d if on_host(x, y) else jnp.atleast_1d
        values = self.values_at(atleast_1d(x), atleast_1d(y))
        if self.kind == "gaussian":
            return PerStarPSF(GaussianPSF(values["sigma_x"], values["sigma_y"], values["rho"]))
        return PerStarPSF(MoffatPSF(values["gamma"], values["alpha"], points=self.points))

    def at_point(self, x: float, y: float) -> GaussianPSF | MoffatPSF:
        """The PSF at one position, as a plain PSF."""
        values = {k: float(v[0]) for k, v in self.values_at(np.array([x]), np.array([y])).items()}
        return GaussianPSF(**values) if self.kind == "gaussian" else MoffatPSF(values["gamma"], values["alpha"], points=self.points)

    @property
    def fwhm(self) -> float:
        """FWHM at the image centre."""
        return self.at_point(*self.centre).fwhm

    def fwhm_range(self, shape: tuple[int, int]) -> tuple[float, float]:
        """Smallest and largest FWHM over a 9 x 9 grid covering an image of ``shape``."""
        xs, ys = np.meshgrid(np.linspace(0, shape[1] - 1, 9), np.linspace(0, shape[0] - 1, 9))
        widths = np.asarray(jax.vmap(_fwhm)(self.at(xs.ravel(), ys.ravel()).psf))
        return float(widths.min()), float(widths.max())

    def __repr__(self) -> str:
        return f"VaryingPSF({self.kind}, degree {self.degree}, FWHM {self.fwhm:.2f} px at the centre)"
