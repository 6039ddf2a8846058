"""A map dataset (Gammapy's ``MapDataset``): one observation's counts, exposure,
background and IRF maps as host arrays, and the IRFs extracted at a source position.

What a binding extracts at a position (PSF kernels, energy-dispersion matrices, pixel
coordinates, and the FFTs and sky grids :mod:`fitax.gamma.map_binding` derives from them)
is kept per dataset (:meth:`MapDataset.cached`): repeated fits from the same start (TS,
profiles, benchmarks) look each up once.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
from astropy.coordinates import SkyCoord
from astropy.wcs import WCS

from . import irf
from .geometry import position_key, sky_to_pixel, solid_angles
from .io import MapDatasetFile, read_map_dataset
from .likelihood import npred, stat_sum
from .map_binding import bind_maps, check_sources_on_maps
from .models import Models, SkyModel

__all__ = ["MapDataset"]


@dataclasses.dataclass(frozen=True, repr=False, eq=False)
class MapDataset:
    """One observation: counts, exposure, background and IRFs as host arrays.

    Shapes are ``(energy, ny, nx)`` for ``counts``, ``background`` and ``mask`` (the
    bins used by the fit: ``mask_safe & mask_fit``) and ``(energy_true, ny, nx)`` for
    ``exposure`` [cm2 s]. ``irfs`` is the file's PSF and energy-dispersion maps.
    """

    name: str
    counts: np.ndarray
    exposure: np.ndarray
    background: np.ndarray
    mask: np.ndarray
    energy_edges: np.ndarray
    energy_true_edges: np.ndarray
    wcs: WCS
    irfs: MapDatasetFile

    @classmethod
    def read(cls, path, name: str | None = None) -> "MapDataset":
        """Read a Gammapy ``MapDataset`` FITS file (no Gammapy needed)."""
        contents = read_map_dataset(path)
        return cls.from_file_contents(contents, name)

    @classmethod
    def from_file_contents(cls, contents: MapDatasetFile, name: str | None = None) -> "MapDataset":
        if contents.counts_off is not None:
            raise ValueError(f"{contents.path}: an on-off map dataset (COUNTS_OFF, ACCEPTANCE, ACCEPTANCE_OFF); read it as a "
                             "MapDatasetOnOff (its type in datasets.yaml)")
        mask = np.ones(contents.counts.shape, bool)
        if contents.mask_safe is not None:
            mask &= contents.mask_safe
        if getattr(contents, "mask_fit", None) is not None:
            mask &= contents.mask_fit
        background = contents.background if contents.background is not None else np.zeros_like(contents.counts)
        return cls(
            name=name or contents.name.split(".")[0], counts=contents.counts, exposure=contents.exposure * 1e4,
            background=background, mask=mask, energy_edges=contents.energy_edges,
            energy_true_edges=contents.energy_true_edges, wcs=contents.wcs, irfs=contents,
        )

    @property
    def shape(self) -> tuple[int, int]:
        return self.counts.shape[1:]

    @functools.cached_property
    def solid_angle(self) -> np.ndarray:
        """Solid angle of each pixel [sr] (computed once per dataset)."""
        return solid_angles(self.wcs, self.shape)

    @functools.cached_property
    def _irf_cache(self) -> dict:
        return {}

    def cached(self, key: tuple, compute):
        """``compute()``, kept per ``key``: what a binding extracts at a source position
        does not change, and repeated fits from the same start (TS, profiles,
        benchmarks) look it up once."""
        if key not in self._irf_cache:
            self._irf_cache[key] = compute()
        return self._irf_cache[key]

    def psf_kernel(self, position: SkyCoord) -> np.ndarray | None:
        """PSF kernels ``(energy_true, n, n)`` for a source at ``position`` (see
        :func:`fitax.gamma.irf.psf_kernel`; with an asymmetric PSF kernel map, its kernels
        interpolated at ``position``), or ``None`` without a PSF."""
        contents = self.irfs
        if contents.psf_kernel_map is not None:
            return self.cached(("psf", position_key(position)), lambda: contents.psf_kernel_map.kernels_at(position))
        if contents.psf is None:
            return None
        return self.cached(("psf", position_key(position)), lambda: irf.psf_kernel(
            contents.psf, contents.psf_wcs, contents.psf_energy_true, contents.psf_rad, contents.psf_rad_edges,
            position, self.energy_true_centres, self.wcs, self.shape,
        ))

    def edisp_matrix(self, position: SkyCoord | None) -> np.ndarray:
        """Energy-dispersion matrix ``(energy_true, energy)`` at ``position`` (the map
        centre for ``None``; a diagonal matrix without energy dispersion)."""
        def compute():
            if self.irfs.edisp is None:
                return irf.diagonal_edisp(self.energy_true_edges, self.energy_edges)
            at = irf.map_centre(self.wcs, self.shape) if position is None else position
            return irf.edisp_matrix(self.irfs.edisp, self.irfs.edisp_wcs, at)

        return self.cached(("edisp", None if position is None else position_key(position)), compute)

    def pixel_linearisation(self, lon: float, lat: float, frame: str) -> tuple[np.ndarray, np.ndarray]:
        """Pixel coordinates ``(x, y)`` of ``(lon, lat)`` [deg] in ``frame`` and their
        derivatives per degree ``(2, 2)``."""
        return self.cached(("pixel", frame, lon, lat), lambda: _pixel_linearisation(self.wcs, lon, lat, frame))

    @property
    def source_files(self) -> tuple:
        """The file(s) the dataset was read from."""
        return () if self.irfs.path is None else (self.irfs.path,)

    @property
    def energy_centres(self) -> np.ndarray:
        return np.sqrt(self.energy_edges[1:] * self.energy_edges[:-1])

    @property
    def energy_true_centres(self) -> np.ndarray:
        return np.sqrt(self.energy_true_edges[1:] * self.energy_true_edges[:-1])

    def contains(self, position: SkyCoord) -> bool:
        x, y = sky_to_pixel(self.wcs, position)
        ny, nx = self.shape
        return bool(-0.5 <= x <= nx - 0.5 and -0.5 <= y <= ny - 0.5)

    def npred(self, models: Models) -> np.ndarray:
        """Predicted counts ``(energy, ny, nx)`` of ``models`` (those that apply here)."""
        return npred([self], models)[0]

    def stat_sum(self, models: Models) -> float:
        """Cash statistic over the fit mask, ``sum 2 (npred - n log npred)`` as Gammapy."""
        return stat_sum([self], models)

    # ------------------------------------------- the dataset protocol (fitax.gamma.likelihood)
    def group_key(self) -> tuple:
        """Datasets of equal keys (shapes and energy axes) are stacked into one group."""
        return ("map", self.counts.shape, self.exposure.shape, tuple(np.round(self.energy_true_edges, 12)),
                tuple(np.round(self.energy_edges, 12)))

    @staticmethod
    def check_models(datasets: list["MapDataset"], sources: list[SkyModel]) -> None:
        """Sources that cannot be evaluated on these maps are errors naming the model."""
        check_sources_on_maps(datasets, sources)

    @staticmethod
    def bind_group(members: list["MapDataset"], sources: list[SkyModel], shard: bool):
        """The members stacked with each source's IRFs at its position
        (:func:`fitax.gamma.map_binding.bind_maps`)."""
        return bind_maps(members, [s for s in sources if s.spatial is not None], shard)

    def __repr__(self) -> str:
        ne, ny, nx = self.counts.shape
        return (f"MapDataset({self.name!r}: {ne} x {len(self.energy_true_edges) - 1} (true) energies, {ny}x{nx} pixels, "
                f"{self.counts[self.mask].sum():.0f} counts in the fit mask)")


def _pixel_linearisation(wcs: WCS, lon: float, lat: float, frame: str) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates of (lon, lat) in ``frame`` and their derivatives per degree
    (central differences of 1e-4 deg; the five points in one call of the WCS: five calls
    took 45 ms per dataset, most of it building sky coordinates)."""
    step = 1e-4
    dlon = np.array([0.0, step, -step, 0.0, 0.0])
    dlat = np.array([0.0, 0.0, 0.0, step, -step])
    x, y = sky_to_pixel(wcs, SkyCoord(lon + dlon, lat + dlat, unit="deg", frame=frame))
    points = np.stack([x, y], axis=1)
    jacobian = np.stack([(points[1] - points[2]) / (2 * step), (points[3] - points[4]) / (2 * step)], axis=1)
    return points[0], jacobian
