"""Runs reduced to MapDatasets, as Gammapy's ``MapDatasetMaker`` + ``SafeMaskMaker`` (and its
``DatasetsMaker``, which cuts each run's dataset out of the analysis geometry around its
pointing) make them.

Example:
    >>> store = DataStore.from_dir("hess-dl3-dr1")  # doctest: +SKIP
    >>> geometry = MapGeometry(wcs, (ny, nx), energy_edges, energy_true_edges)  # doctest: +SKIP
    >>> datasets = make_map_datasets(store, [23523, 23526], geometry, ("aeff-default", "offset-max"), 2.5 * u.deg)  # doctest: +SKIP
    >>> write_map_dataset(datasets[0], "obs_23523.fits.gz")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterable

import numpy as np
from astropy import units as u
from astropy.utils.exceptions import AstropyUserWarning
from astropy.wcs import WCS

from .dl3 import DataStore, Observation
from .geometry import celestial, coarse_wcs, cutout_wcs, pixel_skycoords
from .io import MapDatasetFile
from .irf_maps import RAD_EDGES, edisp_kernel_map, psf_map
from .reduce import SafeMaskParameters, background_cube, counts_cube, exposure_cube, safe_mask

__all__ = ["BINSZ_IRF", "MapGeometry", "fov_background_norm", "make_map_datasets", "map_dataset_file"]

BINSZ_IRF = 0.2
"""Pixel size [deg] of the PSF and energy-dispersion maps' grid (Gammapy's ``binsz_irf``)."""


@dataclasses.dataclass(frozen=True)
class MapGeometry:
    """A 3D analysis geometry: the sky image (``wcs``, ``shape = (ny, nx)``), reconstructed and
    true energy bin edges, and the coarse grid of the IRF maps (by default ``coarse_wcs`` of the
    image with ``BINSZ_IRF`` pixels, as Gammapy's ``MapDataset.create``)."""

    wcs: WCS
    shape: tuple[int, int]
    energy_edges: u.Quantity
    energy_true_edges: u.Quantity
    irf_wcs: WCS | None = None
    irf_shape: tuple[int, int] | None = None
    rad_edges: u.Quantity = RAD_EDGES

    def __post_init__(self):
        if self.irf_wcs is None:
            irf_wcs, irf_shape = coarse_wcs(self.wcs, self.shape, BINSZ_IRF)
            object.__setattr__(self, "irf_wcs", irf_wcs)
            object.__setattr__(self, "irf_shape", irf_shape)

    def cutout(self, position, width: u.Quantity) -> "MapGeometry":
        """The geometry within a square of ``width`` around ``position`` (the IRF grid cut out
        likewise), as Gammapy's ``MapDataset.cutout(mode="trim")``."""
        degrees = float(u.Quantity(width).to_value("deg"))
        wcs, shape = cutout_wcs(self.wcs, self.shape, position, degrees)
        irf_wcs, irf_shape = cutout_wcs(self.irf_wcs, self.irf_shape, position, degrees)
        return dataclasses.replace(self, wcs=wcs, shape=shape, irf_wcs=irf_wcs, irf_shape=irf_shape)


def map_dataset_file(observation: Observation, geometry: MapGeometry, safe_mask_methods=("aeff-default",),
                     offset_max: u.Quantity = 3 * u.deg, name: str | None = None,
                     safe_mask_parameters: SafeMaskParameters = SafeMaskParameters()) -> MapDatasetFile:
    """One run reduced to a MapDataset's contents (counts, exposure, background, PSF map and
    energy-dispersion kernel map with their exposures, safe mask, good time), for
    :func:`~fitax.gamma.io.write_map_dataset`: Gammapy's ``MapDatasetMaker`` then
    ``SafeMaskMaker(methods=safe_mask_methods, offset_max=offset_max, **safe_mask_parameters)``. A geometry the run
    gives no exposure to (every pixel beyond its IRFs' offsets) is a ``ValueError`` naming it.

    Example:
        >>> contents = map_dataset_file(obs, MapGeometry(wcs, (ny, nx), edges, true_edges), ("aeff-default", "offset-max"))  # doctest: +SKIP
        >>> write_map_dataset(contents, "obs_23523.fits.gz")  # doctest: +SKIP
    """
    wcs, shape = geometry.wcs, geometry.shape
    energy_edges, energy_true_edges = geometry.energy_edges, geometry.energy_true_edges
    exposure = exposure_cube(observation, wcs, shape, energy_true_edges).to_value("m2 s")
    if not np.any(exposure > 0):
        centre = pixel_skycoords(wcs, (1, 1)).icrs
        raise ValueError(f"obs {observation.obs_id}: the geometry ({shape[1]}x{shape[0]} pixels) has no exposure from this run; its pointing "
                         f"(RA {observation.pointing.ra.deg:.2f}, Dec {observation.pointing.dec.deg:.2f} deg) is "
                         f"{centre.separation(observation.pointing).deg[0, 0]:.1f} deg from the geometry's first pixel")
    background = background_cube(observation, wcs, shape, energy_edges)
    psf = edisp = None
    irf_wcs, irf_shape = geometry.irf_wcs, geometry.irf_shape
    if observation.psf is not None:
        psf = psf_map(observation.psf, observation.pointing, irf_wcs, irf_shape, energy_true_edges, geometry.rad_edges)
    if observation.edisp is not None:
        edisp = edisp_kernel_map(observation.edisp, observation.pointing, irf_wcs, irf_shape, energy_edges, energy_true_edges)
    elif "edisp-bias" in safe_mask_methods:
        raise ValueError(f"obs {observation.obs_id}: the 'edisp-bias' safe mask needs an energy dispersion; the run has none")
    mask = safe_mask(observation, wcs, shape, energy_edges, safe_mask_methods, offset_max=offset_max, background=background,
                     parameters=safe_mask_parameters, exposure=exposure, energy_true_edges=energy_true_edges, edisp=edisp, edisp_wcs=irf_wcs)
    irf_exposure = exposure_cube(observation, irf_wcs, irf_shape, energy_true_edges).to_value("m2 s")[:, None]
    true_edges = u.Quantity(energy_true_edges).to_value("TeV")
    rad_edges = u.Quantity(geometry.rad_edges).to_value("deg")
    return MapDatasetFile(
        name=name or f"obs_{observation.obs_id}", path=None, counts=counts_cube(observation, wcs, shape, energy_edges),
        exposure=exposure, background=background, mask_safe=mask, mask_fit=None,
        energy_edges=u.Quantity(energy_edges).to_value("TeV"), energy_true_edges=true_edges, wcs=celestial(wcs),
        psf=psf, psf_rad=0.5 * (rad_edges[1:] + rad_edges[:-1]), psf_rad_edges=rad_edges,
        psf_energy_true=np.sqrt(true_edges[1:] * true_edges[:-1]), psf_wcs=irf_wcs, edisp=edisp, edisp_wcs=irf_wcs,
        livetime=float(observation.ontime.to_value("s")), gti=observation.gti_times,
        psf_exposure=None if psf is None else irf_exposure, edisp_exposure=None if edisp is None else irf_exposure,
    )  # fmt: skip


def make_map_datasets(store: DataStore, obs_ids: Iterable[int], geometry: MapGeometry, safe_mask_methods=("aeff-default",),
                      safe_mask_offset_max: u.Quantity = 3 * u.deg, offset_max: u.Quantity = 2.5 * u.deg,
                      progress=None, safe_mask_parameters: SafeMaskParameters = SafeMaskParameters(),
                      observations: Iterable[tuple[str, Observation]] | None = None) -> list[MapDatasetFile]:
    """One dataset per run, in the order of ``obs_ids``, each on the part of ``geometry``
    within a square of side ``2 offset_max`` around its pointing (Gammapy's high-level
    analysis: ``DatasetsMaker`` with ``cutout_mode="trim"``), with the safe mask of
    ``safe_mask_methods``, ``safe_mask_offset_max`` and ``safe_mask_parameters``; or one per
    named run of ``observations`` (``(name, observation)``, e.g. runs cut to time intervals
    by ``Observation.select_time``), ``store`` and ``obs_ids`` then unused. A run whose cutout
    misses the geometry is left out with a warning, as Gammapy does; if every run misses it,
    that is a ``ValueError``. ``progress(name)`` is called as each run is done."""
    from astropy.nddata.utils import NoOverlapError

    if observations is None:
        observations = ((f"obs_{int(obs_id)}", store.observation(obs_id)) for obs_id in obs_ids)
    datasets, missed = [], []
    for name, observation in observations:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", AstropyUserWarning)  # Cutout2D's "partial overlap" notes
                part = geometry.cutout(observation.pointing, 2 * u.Quantity(offset_max))
        except NoOverlapError:
            warnings.warn(f"{name} left out: its field of view (within {offset_max} of its pointing) misses the geometry", stacklevel=2)
            missed.append(name)
            continue
        datasets.append(map_dataset_file(observation, part, safe_mask_methods, safe_mask_offset_max, name=name,
                                         safe_mask_parameters=safe_mask_parameters))
        if progress is not None:
            progress(name)
    if not datasets:
        raise ValueError(f"every run ({', '.join(missed)}) misses the geometry: no dataset made")
    return datasets


def fov_background_norm(dataset: MapDatasetFile, exclusion: np.ndarray | None = None, min_counts: float = 0.0,
                        min_npred_background: float = 0.0) -> tuple[float, float] | None:
    """The background norm that makes the predicted background match the counts of the safe
    bins outside ``exclusion`` (``(ny, nx)`` or ``(energy, ny, nx)``, True where a pixel may be
    used), and its error: ``sum(counts) / sum(background)`` and ``sqrt(sum(counts)) /
    sum(background)``, Gammapy's ``FoVBackgroundMaker(method="scale")`` for a dataset without
    sources. Its ``method="fit"`` (a Cash fit of the norm alone) has the same minimum and error.
    ``None`` where Gammapy's maker fails (too few counts or background, a norm that is not
    finite or positive); Gammapy then drops the run's safe mask.

    Example:
        >>> norm, error = fov_background_norm(dataset, exclusion)  # doctest: +SKIP
    """
    if dataset.background is None:
        raise ValueError(f"dataset {dataset.name}: a FoV background norm needs the dataset's background")
    mask = np.ones(dataset.counts.shape, dtype=bool) if dataset.mask_safe is None else dataset.mask_safe.copy()
    if exclusion is not None:
        mask &= np.broadcast_to(exclusion, mask.shape)
    mask &= np.isfinite(dataset.background)
    counts, background = float(dataset.counts[mask].sum()), float(dataset.background[mask].sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = counts / background
    if not np.isfinite(norm) or background <= min_npred_background or counts <= min_counts or counts <= 0:
        return None
    return norm, float(np.sqrt(counts) / background)
