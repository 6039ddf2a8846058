"""Sky grids: the pixel-centre coordinates and solid angles of a WCS image, as arrays.

The WCS is handled by astropy once, on the host (``SkyGrid.from_wcs``); inside ``jit``
only the resulting arrays are used, so models can move and change size under
differentiation while the grid stays a static-shape constant.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

__all__ = ["SkyGrid", "integrate_spatial"]


class SkyGrid(eqx.Module):
    """Pixel centres of an image ``oversampling`` times finer than the ``(ny, nx)`` WCS
    image (``lon``, ``lat`` [deg], shape ``(ny * k, nx * k)``) and the solid angle of each
    image pixel [sr]."""

    lon: Float[Array, "fy fx"]
    lat: Float[Array, "fy fx"]
    solid_angle: Float[Array, "ny nx"]
    oversampling: int = eqx.field(static=True)

    @classmethod
    def from_wcs(cls, wcs, shape: tuple[int, int], oversampling: int = 1) -> "SkyGrid":
        """Grid of a 2-d celestial ``astropy.wcs.WCS`` with image ``shape = (ny, nx)``.

        Solid angles are those of the pixel corners' spherical quadrilaterals, approximated
        as Gammapy does (the product of the corner-to-corner angular sizes).
        """
        ny, nx = shape
        k = int(oversampling)
        if k < 1:
            raise ValueError(f"oversampling must be a positive integer, got {oversampling}")
        # fine pixel centres in coarse pixel coordinates (0-based, pixel centres at integers)
        fine_x = (np.arange(nx * k) + 0.5) / k - 0.5
        fine_y = (np.arange(ny * k) + 0.5) / k - 0.5
        lon, lat = wcs.celestial.pixel_to_world_values(*np.meshgrid(fine_x, fine_y))
        return cls(lon=jnp.asarray(lon), lat=jnp.asarray(lat), solid_angle=jnp.asarray(_solid_angle(wcs, shape)), oversampling=k)


def _solid_angle(wcs, shape) -> np.ndarray:
    """Gammapy's pixel solid angle: angular sizes of the pixel's two diagonals' sides."""
    from astropy.coordinates import angular_separation as separation

    ny, nx = shape
    corner_x, corner_y = np.meshgrid(np.arange(nx + 1) - 0.5, np.arange(ny + 1) - 0.5)
    lon, lat = (np.deg2rad(a) for a in wcs.celestial.pixel_to_world_values(corner_x, corner_y))
    low_left = lon[:-1, :-1], lat[:-1, :-1]
    low_right = lon[:-1, 1:], lat[:-1, 1:]
    up_left = lon[1:, :-1], lat[1:, :-1]
    along_x = separation(*low_left, *low_right)
    along_y = separation(*low_left, *up_left)
    return np.asarray(along_x * along_y)


def integrate_spatial(model, grid: SkyGrid) -> Float[Array, "ny nx"]:
    """Fraction of a spatial model's flux in each image pixel: the brightness at the fine
    pixel centres, averaged over each image pixel, times its solid angle (Gammapy's
    ``integrate_geom`` with the same oversampling)."""
    k = grid.oversampling
    values = model.evaluate(grid.lon, grid.lat)
    fy, fx = values.shape
    mean = values.reshape(fy // k, k, fx // k, k).mean(axis=(1, 3))
    return mean * grid.solid_angle
