"""Per-run datasets stacked into one, as Gammapy's ``MapDataset.stack`` adds them (its
high-level analysis with ``stack: true``).

Each run's dataset lies on a cutout of the analysis geometry; stacking adds, within each
run's safe mask, its counts, background and exposure (the exposure where any energy is safe)
into the geometry, and averages the PSF and energy-dispersion maps weighted by their
exposures, on their own coarse grid, where the run is safe there. The safe mask of the stack
is the union of the runs'. Host-side NumPy.

Example:
    >>> runs = make_map_datasets(store, ids, geometry, ("aeff-default", "offset-max"))  # doctest: +SKIP
    >>> stacked = stack_map_datasets(geometry, runs)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
from astropy import units as u
from astropy.time import Time
from astropy.wcs import WCS
from scipy.interpolate import RegularGridInterpolator

from .geometry import nearest_pixel_values, pixel_skycoords
from .io import MapDatasetFile
from .makers import MapGeometry

__all__ = ["STACK_BYTES_LIMIT", "gti_union", "stack_map_datasets", "stacked_bytes", "stacking_geometry"]


def _placement(parent: WCS, part: WCS, shape: tuple[int, int], where: str) -> tuple[slice, slice]:
    """Where the cutout ``part`` (image ``shape``) lies in ``parent``: ``(rows, columns)``."""
    if not (np.allclose(parent.wcs.cdelt, part.wcs.cdelt) and np.allclose(parent.wcs.crval, part.wcs.crval)
            and list(parent.wcs.ctype) == list(part.wcs.ctype)):  # fmt: skip
        raise ValueError(f"{where}: its geometry is not a cutout of the stacking geometry (different projection, reference or pixel size)")
    offset = np.asarray(parent.wcs.crpix) - np.asarray(part.wcs.crpix)
    if not np.allclose(offset, np.round(offset)):
        raise ValueError(f"{where}: its pixels are not aligned with the stacking geometry's (offset {offset} pixels)")
    x0, y0 = (int(round(v)) for v in offset)
    return slice(y0, y0 + shape[0]), slice(x0, x0 + shape[1])


def _edisp_weights(mask: np.ndarray, wcs: WCS, irf_wcs: WCS, irf_shape: tuple[int, int]) -> np.ndarray:
    """A run's safe mask ``(energy, ny, nx)`` at the centres of its IRF grid's pixels as
    Gammapy's ``mask_safe_edisp`` takes it: any non-zero value of the linear interpolation
    between pixels, extrapolated beyond the image."""
    x, y = wcs.world_to_pixel(pixel_skycoords(irf_wcs, irf_shape))
    ny, nx = mask.shape[-2:]
    values = np.moveaxis(mask.astype(float), (-2, -1), (0, 1))
    interpolator = RegularGridInterpolator((np.arange(ny, dtype=float), np.arange(nx, dtype=float)), values, bounds_error=False, fill_value=None)
    return np.moveaxis(interpolator(np.stack([y, x], axis=-1)), (0, 1), (-2, -1)) != 0


def _overlap_fraction(energy_edges: np.ndarray, energy_true_edges: np.ndarray) -> np.ndarray:
    """The fraction of each true-energy bin within each reconstructed-energy bin: the diagonal
    kernel Gammapy's empty stacked dataset starts from (``get_overlap_fraction``)."""
    low = np.fmax(energy_edges[None, :-1], energy_true_edges[:-1, None])
    high = np.fmin(energy_edges[None, 1:], energy_true_edges[1:, None])
    return np.clip(high - low, 0, None) / np.diff(energy_true_edges)[:, None]


def _add_weighted_irf(irf: np.ndarray, exposure: np.ndarray, part: tuple[slice, slice], other: np.ndarray, other_exposure: np.ndarray,
                      weights: np.ndarray) -> None:
    """Gammapy's ``IRFMap.stack``, in place: within ``part``, the exposure-weighted mean of the
    stack's map and the run's (where ``weights``), exposures added where ``weights``."""
    region = (Ellipsis, *part)
    irf[region] *= exposure[region]
    irf[region] += np.nan_to_num(other * other_exposure) * weights
    exposure[region] += np.nan_to_num(other_exposure) * np.any(weights, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        irf[region] /= exposure[region]
    np.nan_to_num(irf, copy=False)


def gti_union(intervals: list[Time]) -> Time:
    """The union of the runs' good time intervals, ``(n, 2)`` by start, overlapping ones merged
    (Gammapy's ``GTI.union`` after stacking)."""
    reference = intervals[0][0, 0]
    seconds = np.concatenate([(t - reference).to_value("s") for t in intervals])
    seconds = seconds[np.argsort(seconds[:, 0])]
    merged = [list(seconds[0])]
    for start, stop in seconds[1:]:
        if start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], stop)
        else:
            merged.append([start, stop])
    return reference + u.Quantity(np.array(merged), "s")


STACK_BYTES_LIMIT = 2 * 1024**3
"""Above this size of its cubes, a stacked dataset is made on the runs' bounding box rather
than on the whole geometry (:func:`stacking_geometry`)."""


def stacked_bytes(geometry: MapGeometry) -> int:
    """Bytes of a stacked dataset's cubes on ``geometry``: counts, background, exposure,
    mask and the PSF and EDisp maps with their exposures."""
    n_reco, n_true = len(geometry.energy_edges) - 1, len(geometry.energy_true_edges) - 1
    n_rad = len(geometry.rad_edges) - 1
    pixels, irf_pixels = int(np.prod(geometry.shape)), int(np.prod(geometry.irf_shape))
    return pixels * (8 * (2 * n_reco + n_true) + n_reco) + irf_pixels * 8 * n_true * (n_rad + n_reco + 2)


def _bounding(parent: WCS, parts: list[tuple[WCS, tuple[int, int]]], where: str) -> tuple[WCS, tuple[int, int]]:
    """The smallest image of ``parent``'s pixel grid holding every cutout ``(wcs, shape)``."""
    placed = [_placement(parent, wcs, shape, where) for wcs, shape in parts]
    y0, y1 = min(rows.start for rows, _ in placed), max(rows.stop for rows, _ in placed)
    x0, x1 = min(columns.start for _, columns in placed), max(columns.stop for _, columns in placed)
    wcs = parent.deepcopy()
    wcs.wcs.crpix = np.asarray(parent.wcs.crpix) - [x0, y0]
    wcs.array_shape = (y1 - y0, x1 - x0)
    return wcs, (y1 - y0, x1 - x0)


def stacking_geometry(geometry: MapGeometry, datasets: list[MapDatasetFile], limit: int = STACK_BYTES_LIMIT) -> MapGeometry:
    """``geometry``, or, where a stacked dataset on it would exceed ``limit`` bytes (an
    all-sky geometry: ~50 GB of cubes at 0.02 deg, what makes Gammapy's stacking run out of
    memory), the part of it that the runs' cutouts cover, on the same pixel grid (so every
    stacked value is Gammapy's; the pixels left out would hold no counts, exposure or
    background, and only the placeholder diagonal EDisp of pixels no run reaches), with a
    warning."""
    if stacked_bytes(geometry) <= limit or not datasets:
        return geometry
    wcs, shape = _bounding(geometry.wcs, [(d.wcs, d.counts.shape[1:]) for d in datasets], "stacking")
    irf_parts = [(d.psf_wcs, d.psf.shape[2:]) for d in datasets if d.psf is not None]
    irf_parts += [(d.edisp_wcs, d.edisp.shape[2:]) for d in datasets if d.edisp is not None]
    irf_wcs, irf_shape = _bounding(geometry.irf_wcs, irf_parts, "stacking") if irf_parts else (geometry.irf_wcs, geometry.irf_shape)
    cropped = dataclasses.replace(geometry, wcs=wcs, shape=shape, irf_wcs=irf_wcs, irf_shape=irf_shape)
    warnings.warn(f"stacking on the runs' {shape[1]} x {shape[0]} pixels of the {geometry.shape[1]} x {geometry.shape[0]} geometry: "
                  f"the whole would need {stacked_bytes(geometry) / 1e9:.3g} GB ({stacked_bytes(cropped) / 1e9:.3g} GB now)", stacklevel=2)
    return cropped


def stack_map_datasets(geometry: MapGeometry, datasets: list[MapDatasetFile], name: str = "stacked") -> MapDatasetFile:
    """The runs' ``datasets`` (each on a cutout of ``geometry``, as :func:`make_map_datasets`
    makes them) stacked into one dataset on ``geometry``, in their order, as Gammapy's
    ``MapDataset.stack`` into an empty ``MapDataset.create(geometry)``. A run with no safe bin
    is left out; the stack's good time is the union of the runs'."""
    energy = np.asarray(datasets[0].energy_edges) if datasets else geometry.energy_edges.to_value("TeV")
    true = np.asarray(datasets[0].energy_true_edges) if datasets else geometry.energy_true_edges.to_value("TeV")
    n_reco, n_true = energy.size - 1, true.size - 1
    shape, irf_shape = geometry.shape, geometry.irf_shape
    counts, background = np.zeros((n_reco, *shape)), np.zeros((n_reco, *shape))
    exposure, mask = np.zeros((n_true, *shape)), np.zeros((n_reco, *shape), dtype=bool)
    rad_edges = geometry.rad_edges.to_value("deg")
    psf, psf_exposure = np.zeros((n_true, rad_edges.size - 1, *irf_shape)), np.zeros((n_true, 1, *irf_shape))
    edisp = np.broadcast_to(_overlap_fraction(energy, true)[:, :, None, None], (n_true, n_reco, *irf_shape)).copy()
    edisp_exposure = np.zeros((n_true, 1, *irf_shape))
    livetime, has_psf, has_edisp, intervals = 0.0, False, False, []
    for dataset in datasets:
        where = f"dataset {dataset.name}"
        if not np.allclose(dataset.energy_edges, energy) or not np.allclose(dataset.energy_true_edges, true):
            raise ValueError(f"{where}: its energy axes differ from the first dataset's; only datasets of one geometry stack")
        safe = np.ones(dataset.counts.shape, dtype=bool) if dataset.mask_safe is None else dataset.mask_safe
        if not safe.any():
            continue
        part = _placement(geometry.wcs, dataset.wcs, dataset.counts.shape[1:], where)
        counts[(Ellipsis, *part)] += np.nan_to_num(dataset.counts) * safe
        exposure[(Ellipsis, *part)] += np.nan_to_num(dataset.exposure) * safe.any(axis=0)
        if dataset.background is not None:
            background[(Ellipsis, *part)] += np.nan_to_num(dataset.background) * safe
        mask[(Ellipsis, *part)] |= safe
        livetime += dataset.livetime or 0.0
        if dataset.gti is not None:
            intervals.append(dataset.gti)
        if dataset.psf is not None:
            has_psf = True
            irf_part = _placement(geometry.irf_wcs, dataset.psf_wcs, dataset.psf.shape[2:], where)
            # the nearest pixel's safe mask (any energy), as Gammapy's mask_safe_psf
            weights = nearest_pixel_values(safe.any(axis=0), dataset.wcs, dataset.psf_wcs, dataset.psf.shape[2:], fill=False)[None, None]
            _add_weighted_irf(psf, psf_exposure, irf_part, dataset.psf, dataset.psf_exposure, weights)
        if dataset.edisp is not None:
            has_edisp = True
            irf_part = _placement(geometry.irf_wcs, dataset.edisp_wcs, dataset.edisp.shape[2:], where)
            weights = _edisp_weights(safe, dataset.wcs, dataset.edisp_wcs, dataset.edisp.shape[2:])[None]
            _add_weighted_irf(edisp, edisp_exposure, irf_part, dataset.edisp, dataset.edisp_exposure, weights)
    gti = gti_union(intervals) if intervals else None
    if gti is not None:  # overlapping runs count once, as in Gammapy's stacked GTI
        livetime = float(np.sum((gti[:, 1] - gti[:, 0]).to_value("s")))
    return MapDatasetFile(
        name=name, path=None, counts=counts, exposure=exposure, background=background, mask_safe=mask, mask_fit=None,
        energy_edges=energy, energy_true_edges=true, wcs=geometry.wcs, psf=psf if has_psf else None,
        psf_rad=0.5 * (rad_edges[1:] + rad_edges[:-1]), psf_rad_edges=rad_edges, psf_energy_true=np.sqrt(true[1:] * true[:-1]),
        psf_wcs=geometry.irf_wcs, edisp=edisp if has_edisp else None, edisp_wcs=geometry.irf_wcs, livetime=livetime,
        psf_exposure=psf_exposure if has_psf else None, edisp_exposure=edisp_exposure if has_edisp else None,
        gti=gti,
    )  # fmt: skip
