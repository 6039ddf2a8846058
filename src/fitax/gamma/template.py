"""``TemplateSpatialModel``: a sky map (optionally energy-dependent) as a spatial model.

The template is resampled once per binding, on the host, at the dataset's pixel centres
(and true energies), so its npred is a fixed image per source inside the compiled
likelihood; its position is frozen at the map centre, as Gammapy's default. Resampling
follows Gammapy: linear interpolation of the logarithm of the values in pixel
coordinates (and in log energy), zero outside the map, negative values clipped.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import astropy.units as u
import equinox as eqx
import numpy as np
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from astropy.wcs.utils import wcs_to_celestial_frame

from ..io import open_fits
from ..parameters import Parameter
from ._common import parameter

__all__ = ["TemplateMap", "TemplateSpatialModel"]

_TINY = np.finfo(np.float64).tiny
_BRIGHTNESS_3D = u.Unit("cm-2 s-1 TeV-1 sr-1")


@dataclasses.dataclass(frozen=True, eq=False)
class TemplateMap:
    """Template values ``(ny, nx)`` [sr-1] or ``(energy, ny, nx)`` [cm-2 s-1 TeV-1 sr-1]
    at true-energy nodes ``energy`` [TeV], on ``wcs``. Compared by identity (it is static
    data of the compiled model)."""

    data: np.ndarray
    wcs: WCS
    energy: np.ndarray | None
    filename: str | None = None
    normalize: bool = True

    @classmethod
    def read(cls, path, normalize: bool = True) -> "TemplateMap":
        """Read a FITS image or cube: the first image HDU, energies from an ``ENERGIES``
        table (Fermi-LAT diffuse models, MeV) or the HDU named by ``BANDSHDU``."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file (template map)")
        with open_fits(path) as hdul:
            image = next((h for h in hdul if getattr(h, "is_image", False) and h.data is not None), None)
            if image is None:
                raise ValueError(f"{path}: no image HDU with data (template map)")
            data = np.asarray(image.data, float)
            header = image.header
            bands_name = header.get("BANDSHDU", "ENERGIES" if "ENERGIES" in hdul else None)
            energy = None
            if data.ndim == 3:
                if bands_name is None or bands_name not in hdul:
                    raise ValueError(f"{path}: a 3-d template needs an energy table (ENERGIES or BANDSHDU)")
                bands = Table.read(hdul[bands_name])
                column = next((c for c in ("ENERGY", "Energy", "ENERGY_TRUE") if c in bands.colnames), None)
                if column is None:
                    raise ValueError(f"{path}[{bands_name}]: no ENERGY column")
                energy = np.asarray(bands[column].quantity.to_value("TeV") if bands[column].unit else bands[column], float)
                if len(energy) != data.shape[0]:
                    raise ValueError(f"{path}: {data.shape[0]} planes but {len(energy)} energies in {bands_name}")
            elif data.ndim != 2:
                raise ValueError(f"{path}: template must be 2-d or 3-d, got shape {data.shape}")
            unit_text = (header.get("BUNIT") or "").strip()
            wcs = WCS(header).celestial
        if energy is not None:
            # Fermi-LAT diffuse cubes carry no BUNIT: their brightness is per MeV
            unit = u.Unit(unit_text) if unit_text else u.Unit("cm-2 s-1 MeV-1 sr-1")
            try:
                data = data * unit.to(_BRIGHTNESS_3D) if not normalize else data
            except u.UnitConversionError as error:
                raise ValueError(f"{path}: unit {unit} of a 3-d template is not a surface brightness per energy") from error
        if normalize:
            data = _normalised(data, wcs)
        elif energy is None:
            unit = u.Unit(unit_text) if unit_text else u.Unit("sr-1")
            data = data * unit.to("sr-1")
        return cls(data=data, wcs=wcs, energy=energy, filename=str(path), normalize=normalize)

    @classmethod
    def from_image(cls, data, wcs: WCS, normalize: bool = True) -> "TemplateMap":
        """A 2-d template from an image in memory: with ``normalize``, any non-negative
        values (divided by their sum and the pixels' solid angles, as :meth:`read` does);
        otherwise a brightness already in sr-1.

        Example:
            >>> import numpy as np
            >>> from fitax.gamma.simulate import make_geometry
            >>> template = TemplateMap.from_image(np.ones((10, 10)), make_geometry(npix=10))
            >>> round(float((template.data * 0.02**2 * (np.pi / 180) ** 2).sum()), 4)
            1.0
        """
        data = np.asarray(data, float)
        if data.ndim != 2 or not np.all(np.isfinite(data)) or np.any(data < 0):
            raise ValueError(f"a template image must be 2-d, finite and >= 0, got shape {data.shape}")
        wcs = wcs.celestial
        return cls(data=_normalised(data, wcs) if normalize else data, wcs=wcs, energy=None, normalize=normalize)

    @property
    def frame(self) -> str:
        return wcs_to_celestial_frame(self.wcs).name

    @property
    def centre(self) -> SkyCoord:
        ny, nx = self.data.shape[-2:]
        return self.wcs.pixel_to_world((nx - 1) / 2, (ny - 1) / 2)

    def interpolate(self, lon: np.ndarray, lat: np.ndarray, energy: np.ndarray | None = None) -> np.ndarray:
        """Values at sky positions (degrees, in the template's frame) and, for a cube, at
        true energies [TeV] (result ``(energy, *lon.shape)``)."""
        x, y = self.wcs.world_to_pixel_values(lon, lat)
        ny, nx = self.data.shape[-2:]
        log_values = np.log(np.clip(self.data, _TINY, None))
        outside = (np.floor(x + 0.5) < 0) | (np.floor(x + 0.5) >= nx) | (np.floor(y + 0.5) < 0) | (np.floor(y + 0.5) >= ny)
        if self.energy is None:
            result = np.exp(_bilinear(log_values, x, y))
        else:
            log_nodes = np.log(self.energy)
            pix_e = np.interp(np.log(energy), log_nodes, np.arange(len(log_nodes)))
            below, above = np.log(energy) < log_nodes[0], np.log(energy) > log_nodes[-1]
            step_low, step_high = log_nodes[1] - log_nodes[0], log_nodes[-1] - log_nodes[-2]
            pix_e = np.where(below, (np.log(energy) - log_nodes[0]) / step_low, pix_e)
            pix_e = np.where(above, len(log_nodes) - 1 + (np.log(energy) - log_nodes[-1]) / step_high, pix_e)
            e0 = np.clip(np.floor(pix_e).astype(int), 0, len(log_nodes) - 2)
            we = (pix_e - e0)[:, None, None] if x.ndim == 2 else (pix_e - e0)[:, None]
            planes = np.stack([_bilinear(log_values[i], x, y) for i in range(len(log_nodes))])
            result = np.exp((1 - we) * planes[e0] + we * planes[e0 + 1])
            energy_outside = (np.floor(pix_e + 0.5) < 0) | (np.floor(pix_e + 0.5) >= len(log_nodes))
            result[energy_outside] = 0.0
        result = np.where(np.abs(result) - _TINY <= _TINY, 0.0, result)
        result = np.where(np.isfinite(result), result, 0.0)
        result[..., outside] = 0.0
        return np.clip(result, 0.0, None)


def _normalised(data: np.ndarray, wcs: WCS) -> np.ndarray:
    """Each plane divided by its sum and by the pixels' solid angles: a brightness [sr-1]
    integrating to one over the map."""
    from .geometry import solid_angles

    solid_angle = solid_angles(wcs, data.shape[-2:])
    total = data.sum(axis=(-2, -1), keepdims=True)
    return np.divide(data, total, out=np.zeros_like(data), where=total != 0) / solid_angle


def _bilinear(values: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear interpolation of ``values[y, x]`` at pixel coordinates, extrapolating
    linearly beyond the outermost pixel centres (as scipy's grid interpolator with
    ``fill_value=None``)."""
    ny, nx = values.shape
    x0 = np.clip(np.floor(x).astype(int), 0, max(nx - 2, 0))
    y0 = np.clip(np.floor(y).astype(int), 0, max(ny - 2, 0))
    wx, wy = x - x0, y - y0
    x1, y1 = np.minimum(x0 + 1, nx - 1), np.minimum(y0 + 1, ny - 1)
    return ((1 - wy) * ((1 - wx) * values[y0, x0] + wx * values[y0, x1])
            + wy * ((1 - wx) * values[y1, x0] + wx * values[y1, x1]))


class TemplateSpatialModel(eqx.Module):
    """A template map as spatial model (Gammapy's ``TemplateSpatialModel``).

    Its position ``lon_0``, ``lat_0`` is the map centre and stays frozen. A 2-d template is a
    brightness [sr-1] (normalised to one over the map when ``normalize``); a 3-d one
    carries its spectrum [cm-2 s-1 TeV-1 sr-1] (use it with a
    :class:`PowerLawNormSpectralModel`, as Gammapy's Fermi-LAT diffuse models are used).

    Example:
        >>> from fitax.gamma.template import TemplateSpatialModel
        >>> TemplateSpatialModel.read("../shared/data/gamma/fermi-3fhl-gc/gll_iem_v06_gc.fits.gz", normalize=False)  # doctest: +SKIP
    """

    lon_0: Parameter
    lat_0: Parameter
    template: TemplateMap = eqx.field(static=True)
    frame: str = eqx.field(static=True)

    def __init__(self, template: TemplateMap, lon_0=None, lat_0=None, frame=None):
        centre = template.centre
        self.template = template
        self.frame = template.frame if frame is None else frame
        self.lon_0 = parameter(centre.spherical.lon.deg if lon_0 is None else lon_0, "deg", frozen=True)
        self.lat_0 = parameter(centre.spherical.lat.deg if lat_0 is None else lat_0, "deg", frozen=True, min=-90, max=90)

    @classmethod
    def read(cls, filename, normalize: bool = True) -> "TemplateSpatialModel":
        return cls(TemplateMap.read(filename, normalize=normalize))

    @property
    def is_energy_dependent(self) -> bool:
        return self.template.energy is not None

    @property
    def position(self) -> SkyCoord:
        return SkyCoord(float(self.lon_0.value), float(self.lat_0.value), unit="deg", frame=self.frame)

    def evaluation_bin_size_min(self):
        return None

    def evaluate(self, lon, lat, energy=None) -> np.ndarray:
        """Host-side values at ``lon``, ``lat`` [deg] (and true ``energy`` [TeV] for a cube)."""
        return self.template.interpolate(np.asarray(lon, float), np.asarray(lat, float), energy)

    def evaluate_xyz(self, xyz):
        raise TypeError("a template is resampled on the host when datasets are bound, not evaluated under jit")
