"""Spatial models with Gammapy's names, parameters and formulas (on the sphere).

Each model's ``evaluate(lon, lat)`` gives the surface brightness [sr-1] (it integrates to 1
over the sky) at sky coordinates in degrees, in the model's ``frame``; angles of the
parameters are in degrees, as in Gammapy's YAML files. Everything is a pure ``jnp``
function of the parameters, so positions and sizes are differentiable.

Elongated Gaussian and disk models use Gammapy's effective radius (the ellipse's radius
along the position angle of each point); the elliptical disk's normalisation is the same
integral Gammapy takes with ``scipy.integrate.quad``, here by 64-point Gauss–Legendre (its
integrand is smooth and periodic).
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import erf
from jaxtyping import Array, ArrayLike, Float

from ..parameters import Parameter
from ..device import on_host
from ._common import parameter

__all__ = [
    "unit_vectors", "PointSpatialModel", "GaussianSpatialModel", "DiskSpatialModel", "ShellSpatialModel",
    "ConstantSpatialModel",
]

_EDGE_WIDTH_95 = 2.326174307353347  # erf argument at which a smooth edge falls from 95% to 5%


def unit_vectors(lon, lat) -> Float[Array | np.ndarray, "3 *pix"]:
    """Cartesian unit vectors of sky positions given in degrees: computed with NumPy for
    host (NumPy) inputs, as when a dataset is bound (JAX would compile a small program for
    each operation and shape there), with JAX otherwise."""
    xp = np if on_host(lon, lat) else jnp
    lon, lat = xp.deg2rad(xp.asarray(lon, float)), xp.deg2rad(xp.asarray(lat, float))
    return xp.stack([xp.cos(lat) * xp.cos(lon), xp.cos(lat) * xp.sin(lon), xp.sin(lat)])


class _Offsets(eqx.Module):
    """Where sky points lie as seen from a model's centre, computed from unit vectors
    with products and square roots only (no trigonometry per pixel): ``chord2`` is the
    squared chord ``|v - v0|^2 = 2 (1 - cos sep)`` (exact even for tiny separations),
    ``east``/``north`` the components along the centre's tangent-plane axes, whose angle
    is the position angle."""

    chord2: Array
    east: Array
    north: Array

    @classmethod
    def of(cls, xyz, lon0_deg, lat0_deg) -> "_Offsets":
        lon0, lat0 = jnp.deg2rad(lon0_deg), jnp.deg2rad(lat0_deg)
        c_lon, s_lon, c_lat, s_lat = jnp.cos(lon0), jnp.sin(lon0), jnp.cos(lat0), jnp.sin(lat0)
        x, y, z = xyz[0], xyz[1], xyz[2]
        dx, dy, dz = x - c_lat * c_lon, y - c_lat * s_lon, z - s_lat
        return cls(chord2=dx * dx + dy * dy + dz * dz, east=-s_lon * x + c_lon * y,
                   north=-s_lat * (c_lon * x + s_lon * y) + c_lat * z)

    @property
    def separation(self) -> Array:
        """Angular distance [rad]."""
        return 2.0 * jnp.arcsin(jnp.minimum(0.5 * jnp.sqrt(self.chord2), 1.0))

    def effective_radius(self, phi, major, e) -> tuple[Array, Array]:
        """Radius of the ellipse (semi-major ``major`` [rad], eccentricity ``e``, position
        angle ``phi`` [rad]) towards each point (Gammapy's convention), and the semi-minor
        axis. At the centre itself the direction is taken along the major axis."""
        minor = major * jnp.sqrt(1 - e**2)
        rho2 = self.east**2 + self.north**2
        safe = rho2 > 0
        rho = jnp.sqrt(jnp.where(safe, rho2, 1.0))
        sin_pa, cos_pa = jnp.where(safe, self.east / rho, 0.0), jnp.where(safe, self.north / rho, 1.0)
        sin_d = jnp.sin(phi) * cos_pa - jnp.cos(phi) * sin_pa
        cos_d = jnp.cos(phi) * cos_pa + jnp.sin(phi) * sin_pa
        return minor, major * minor / jnp.sqrt((major * sin_d) ** 2 + (minor * cos_d) ** 2)


class _SpatialModel(eqx.Module):
    def evaluate(self, lon: Float[ArrayLike, "*pix"], lat: Float[ArrayLike, "*pix"]) -> Float[Array, "*pix"]:
        """Surface brightness [sr-1] at ``lon``, ``lat`` [deg] in the model's frame."""
        return self.evaluate_xyz(unit_vectors(lon, lat))

    def evaluate_xyz(self, xyz: Float[Array, "3 *pix"]) -> Float[Array, "*pix"]:
        """Surface brightness [sr-1] at the sky points with unit vectors ``xyz``."""
        raise NotImplementedError

    def evaluation_bin_size_min(self) -> float | None:
        """Pixel size [deg] fine enough to integrate the model by its pixel-centre values
        (Gammapy's criterion; ``None``: any pixel size will do)."""
        return None

    @property
    def position(self):
        """The model's centre as an astropy ``SkyCoord`` (host side)."""
        from astropy.coordinates import SkyCoord

        return SkyCoord(float(self.lon_0.value), float(self.lat_0.value), unit="deg", frame=self.frame)


class PointSpatialModel(_SpatialModel):
    """A point source at ``lon_0``, ``lat_0``: its flux is shared between the four nearest
    pixels with bilinear weights that preserve the centroid (Gammapy's sub-pixel
    weighting), which keeps npred a continuous, differentiable function of the position.
    """

    lon_0: Parameter
    lat_0: Parameter
    frame: str = eqx.field(static=True)

    def __init__(self, lon_0=0.0, lat_0=0.0, frame="icrs"):
        self.lon_0 = parameter(lon_0, "deg")
        self.lat_0 = parameter(lat_0, "deg", min=-90, max=90)
        self.frame = frame

    def evaluate_xyz(self, xyz):
        raise TypeError("a point source has no surface brightness; npred places its PSF kernel with bilinear pixel weights")


class GaussianSpatialModel(_SpatialModel):
    """Gaussian on the sphere: ``exp(-(1 - cos sep) / (2 a))`` with ``a = 1 - cos(sigma)``,
    normalised on the sphere; elongated with eccentricity ``e`` and position angle ``phi``.

    Example:
        >>> from fitax.gamma.spatial import GaussianSpatialModel
        >>> g = GaussianSpatialModel(lon_0=0.2, lat_0=0.1, sigma=0.2)
        >>> round(float(g.evaluate(0.2, 0.1)) * 2 * 3.14159265 * (0.2 * 3.14159265 / 180) ** 2, 4)
        1.0
    """

    lon_0: Parameter
    lat_0: Parameter
    sigma: Parameter
    e: Parameter
    phi: Parameter
    frame: str = eqx.field(static=True)

    def __init__(self, lon_0=0.0, lat_0=0.0, sigma=1.0, e=0.0, phi=0.0, frame="icrs"):
        self.lon_0 = parameter(lon_0, "deg")
        self.lat_0 = parameter(lat_0, "deg", min=-90, max=90)
        self.sigma = parameter(sigma, "deg", min=0)
        self.e = parameter(e, "", frozen=True, min=0, max=1)
        self.phi = parameter(phi, "deg", frozen=True)
        self.frame = frame

    def evaluate_xyz(self, xyz):
        sigma, phi = jnp.deg2rad(self.sigma.value), jnp.deg2rad(self.phi.value)
        e = jnp.asarray(self.e.value, dtype=float)
        offsets = _Offsets.of(xyz, self.lon_0.value, self.lat_0.value)
        minor, sigma_eff = offsets.effective_radius(phi, sigma, e)
        circular = e == 0
        sigma_eff = jnp.where(circular, sigma, sigma_eff)
        a = 1.0 - jnp.cos(sigma_eff)
        a_circular = 1.0 - jnp.cos(sigma)
        norm = jnp.where(
            circular,
            1 / (4 * jnp.pi * a_circular * (1.0 - jnp.exp(-1.0 / a_circular))),
            1 / (2 * jnp.pi * sigma * jnp.where(circular, 1.0, minor)),
        )
        return norm * jnp.exp(-0.25 * offsets.chord2 / a)

    def evaluation_bin_size_min(self):
        return float(self.sigma.value) / 3.0


class DiskSpatialModel(_SpatialModel):
    """Uniform disk of radius ``r_0`` (elongated by ``e``, ``phi``) with a smooth edge: the
    brightness falls from 95% to 5% over ``edge_width`` times the radius."""

    lon_0: Parameter
    lat_0: Parameter
    r_0: Parameter
    e: Parameter
    phi: Parameter
    edge_width: Parameter
    frame: str = eqx.field(static=True)

    def __init__(self, lon_0=0.0, lat_0=0.0, r_0=1.0, e=0.0, phi=0.0, edge_width=0.01, frame="icrs"):
        self.lon_0 = parameter(lon_0, "deg")
        self.lat_0 = parameter(lat_0, "deg", min=-90, max=90)
        self.r_0 = parameter(r_0, "deg", min=0)
        self.e = parameter(e, "", frozen=True, min=0, max=1)
        self.phi = parameter(phi, "deg", frozen=True)
        self.edge_width = parameter(edge_width, "", frozen=True, min=0, max=1)
        self.frame = frame

    def _norm(self, r_0, e):
        semi_minor = r_0 * jnp.sqrt(1 - e**2)
        nodes, weights = np.polynomial.legendre.leggauss(64)
        x = 0.5 * np.pi * (nodes + 1)
        inv_a, inv_b = 1 / jnp.sin(r_0) ** 2, 1 / jnp.sin(semi_minor) ** 2
        integrand = 1 - jnp.sqrt(1 - 1 / (inv_b + (inv_a - inv_b) * jnp.cos(x) ** 2))
        return 1 / (2 * 0.5 * np.pi * jnp.sum(weights * integrand))

    def evaluate_xyz(self, xyz):
        r_0, phi = jnp.deg2rad(self.r_0.value), jnp.deg2rad(self.phi.value)
        e = jnp.asarray(self.e.value, dtype=float)
        offsets = _Offsets.of(xyz, self.lon_0.value, self.lat_0.value)
        sigma_eff = jnp.where(e == 0, r_0, offsets.effective_radius(phi, r_0, e)[1])
        inside = 0.5 * (1 - erf((offsets.separation - sigma_eff) / (sigma_eff * self.edge_width.value) * _EDGE_WIDTH_95))
        return self._norm(r_0, e) * inside

    def evaluation_bin_size_min(self):
        return float(self.r_0.value) * (1 - float(self.edge_width.value)) / 10.0


class ShellSpatialModel(_SpatialModel):
    """Projected uniform spherical shell between ``radius`` and ``radius + width``."""

    lon_0: Parameter
    lat_0: Parameter
    radius: Parameter
    width: Parameter
    frame: str = eqx.field(static=True)

    def __init__(self, lon_0=0.0, lat_0=0.0, radius=1.0, width=0.2, frame="icrs"):
        self.lon_0 = parameter(lon_0, "deg")
        self.lat_0 = parameter(lat_0, "deg", min=-90, max=90)
        self.radius = parameter(radius, "deg", min=0)
        self.width = parameter(width, "deg", min=0)
        self.frame = frame

    def evaluate_xyz(self, xyz):
        radius, width = jnp.deg2rad(self.radius.value), jnp.deg2rad(self.width.value)
        sep = _Offsets.of(xyz, self.lon_0.value, self.lat_0.value).separation
        outer = radius + width
        norm = 3 / (2 * jnp.pi * (outer**3 - radius**3))
        through_outer = jnp.sqrt(jnp.maximum(outer**2 - sep**2, 0.0))
        through_inner = jnp.sqrt(jnp.maximum(radius**2 - sep**2, 0.0))
        return norm * jnp.where(sep > outer, 0.0, through_outer - jnp.where(sep < radius, through_inner, 0.0))

    def evaluation_bin_size_min(self):
        return float(self.width.value)


class ConstantSpatialModel(_SpatialModel):
    """The same brightness ``value`` [sr-1] everywhere (an isotropic diffuse component)."""

    value: Parameter
    frame: str = eqx.field(static=True)

    def __init__(self, value=1.0, frame="icrs"):
        self.value = parameter(value, "sr-1", frozen=True)
        self.frame = frame

    def evaluate_xyz(self, xyz):
        return jnp.full(jnp.shape(xyz)[1:], 1.0) * self.value.value

    @property
    def position(self):
        return None

