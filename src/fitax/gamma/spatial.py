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
from ._common import parameter

__all__ = [
    "angular_separation", "position_angle", "point_weights", "PointSpatialModel", "GaussianSpatialModel", "DiskSpatialModel", "ShellSpatialModel",
    "ConstantSpatialModel",
]

_EDGE_WIDTH_95 = 2.326174307353347  # erf argument at which a smooth edge falls from 95% to 5%


def angular_separation(lon1, lat1, lon2, lat2):
    """Great-circle distance [rad] between points given in radians (Vincenty's formula,
    accurate at all separations, as astropy's)."""
    sdlon, cdlon = jnp.sin(lon2 - lon1), jnp.cos(lon2 - lon1)
    slat1, slat2, clat1, clat2 = jnp.sin(lat1), jnp.sin(lat2), jnp.cos(lat1), jnp.cos(lat2)
    num1 = clat2 * sdlon
    num2 = clat1 * slat2 - slat1 * clat2 * cdlon
    return jnp.arctan2(jnp.hypot(num1, num2), slat1 * slat2 + clat1 * clat2 * cdlon)


def position_angle(lon1, lat1, lon2, lat2):
    """Position angle [rad] of point 2 seen from point 1 (east of north), inputs in radians."""
    dlon = lon2 - lon1
    y = jnp.sin(dlon) * jnp.cos(lat2)
    x = jnp.cos(lat1) * jnp.sin(lat2) - jnp.sin(lat1) * jnp.cos(lat2) * jnp.cos(dlon)
    return jnp.arctan2(y, x)


def _radians(*values):
    return tuple(jnp.deg2rad(jnp.asarray(v, dtype=float)) for v in values)


def _effective_radius(lon0, lat0, lon, lat, phi, major, e):
    """Radius of the ellipse (semi-major ``major``, eccentricity ``e``, position angle
    ``phi``) in the direction of each point; also returns the semi-minor axis."""
    d_phi = phi - position_angle(lon0, lat0, lon, lat)
    minor = major * jnp.sqrt(1 - e**2)
    return minor, major * minor / jnp.sqrt((major * jnp.sin(d_phi)) ** 2 + (minor * jnp.cos(d_phi)) ** 2)


class _SpatialModel(eqx.Module):
    def evaluate(self, lon: Float[ArrayLike, "*pix"], lat: Float[ArrayLike, "*pix"]) -> Float[Array, "*pix"]:
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

    def evaluate(self, lon, lat):
        raise TypeError("a point source has no surface brightness; npred uses its pixel weights (fitax.gamma.point_weights)")


def point_weights(x0, y0, shape: tuple[int, int]) -> Float[Array, "ny nx"]:
    """Bilinear pixel weights of a point at pixel coordinates ``(x0, y0)`` (0-based,
    pixel centres at integers) on an ``(ny, nx)`` image: ``(1 - |dx|)(1 - |dy|)`` on the
    four nearest pixels, summing to 1 inside the image."""
    ny, nx = shape
    wx = jnp.maximum(1.0 - jnp.abs(jnp.arange(nx) - x0), 0.0)
    wy = jnp.maximum(1.0 - jnp.abs(jnp.arange(ny) - y0), 0.0)
    return wy[:, None] * wx[None, :]


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

    def evaluate(self, lon, lat):
        lon, lat, lon0, lat0, sigma, phi = _radians(lon, lat, self.lon_0.value, self.lat_0.value, self.sigma.value, self.phi.value)
        e = jnp.asarray(self.e.value, dtype=float)
        sep = angular_separation(lon, lat, lon0, lat0)
        minor, sigma_eff = _effective_radius(lon0, lat0, lon, lat, phi, sigma, e)
        circular = e == 0
        sigma_eff = jnp.where(circular, sigma, sigma_eff)
        a = 1.0 - jnp.cos(sigma_eff)
        a_circular = 1.0 - jnp.cos(sigma)
        norm = jnp.where(
            circular,
            1 / (4 * jnp.pi * a_circular * (1.0 - jnp.exp(-1.0 / a_circular))),
            1 / (2 * jnp.pi * sigma * jnp.where(circular, 1.0, minor)),
        )
        return norm * jnp.exp(-0.5 * (1 - jnp.cos(sep)) / a)

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

    def evaluate(self, lon, lat):
        lon, lat, lon0, lat0, r_0, phi = _radians(lon, lat, self.lon_0.value, self.lat_0.value, self.r_0.value, self.phi.value)
        e = jnp.asarray(self.e.value, dtype=float)
        sep = angular_separation(lon, lat, lon0, lat0)
        sigma_eff = jnp.where(e == 0, r_0, _effective_radius(lon0, lat0, lon, lat, phi, r_0, e)[1])
        inside = 0.5 * (1 - erf((sep - sigma_eff) / (sigma_eff * self.edge_width.value) * _EDGE_WIDTH_95))
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

    def evaluate(self, lon, lat):
        lon, lat, lon0, lat0, radius, width = _radians(lon, lat, self.lon_0.value, self.lat_0.value, self.radius.value, self.width.value)
        sep = angular_separation(lon, lat, lon0, lat0)
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

    def evaluate(self, lon, lat):
        return jnp.full(jnp.broadcast_shapes(jnp.shape(lon), jnp.shape(lat)), 1.0) * self.value.value

    @property
    def position(self):
        return None

