"""PSF kernels and energy-dispersion matrices at a sky position (host-side NumPy).

Gammapy evaluates each source with the PSF and energy dispersion of the position it sits
at; these functions extract them from a dataset's IRF maps once per source position, as
plain arrays. They run on the host, outside ``jit``: the kernels are data of the compiled
likelihood, so a new position means new arrays, never a recompilation.

The PSF kernel follows Gammapy's recipe (``PSFMap.get_psf_kernel``) so that npred agrees
with it pixel by pixel: per true energy, the kernel is cut at the 99.9% containment radius
(a square of odd width), sampled ``factor`` times finer than the map's pixels (enough for
12 samples across the 68% diameter, at most 4), the PSF is linearly interpolated in offset
at the fine pixel centres, summed back into map pixels and normalised to 1.
"""

from __future__ import annotations

import functools

import numpy as np
from astropy.coordinates import SkyCoord, angular_separation
from astropy.wcs import WCS
from astropy.wcs.utils import proj_plane_pixel_scales

from .geometry import celestial, sky_to_pixel
from .psf_kernel_map import bilinear_nodes

__all__ = ["PSF_CONTAINMENT", "psf_profile", "containment_radius", "psf_kernel", "edisp_matrix", "map_centre", "pixel_scale", "diagonal_edisp"]

PSF_CONTAINMENT = 0.999
_PRECISION_FACTOR = 12
_MAX_UPSAMPLING = 4
_RADIUS_UPSAMPLING = 20


def pixel_scale(wcs: WCS) -> float:
    """Largest pixel side [deg] of a celestial WCS."""
    return float(np.max(proj_plane_pixel_scales(celestial(wcs))))


def map_centre(wcs: WCS, shape: tuple[int, int]) -> SkyCoord:
    """Sky position of the centre of an ``(ny, nx)`` image."""
    ny, nx = shape
    return celestial(wcs).pixel_to_world((nx - 1) / 2, (ny - 1) / 2)


def _pixel_of(wcs: WCS, position: SkyCoord) -> tuple[float, float]:
    x, y = sky_to_pixel(wcs, position)
    return float(x), float(y)


def psf_profile(psf: np.ndarray, psf_wcs: WCS | None, position: SkyCoord) -> np.ndarray:
    """The PSF ``(energy, rad)`` at ``position``: bilinear interpolation between the
    centres of the PSF map's pixels (clamped at its border), or the single profile of a
    one-region PSF."""
    if psf_wcs is None or psf.shape[2:] == (1, 1):
        return psf[:, :, 0, 0]
    index, weight = bilinear_nodes(psf_wcs, psf.shape[2:], position)
    return psf.reshape(psf.shape[:2] + (-1,))[:, :, index[:, 0]] @ weight[:, 0]


def _interp_log_energy(profile: np.ndarray, energy_nodes: np.ndarray, energy: np.ndarray) -> np.ndarray:
    """Linear interpolation (with extrapolation) in log energy along axis 0."""
    log_nodes, log_energy = np.log(energy_nodes), np.log(energy)
    if len(energy_nodes) == 1:
        return np.repeat(profile, len(energy), axis=0)
    index = np.clip(np.searchsorted(log_nodes, log_energy) - 1, 0, len(log_nodes) - 2)
    weight = ((log_energy - log_nodes[index]) / (log_nodes[index + 1] - log_nodes[index]))[:, None]
    return (1 - weight) * profile[index] + weight * profile[index + 1]


def containment_radius(profile: np.ndarray, rad: np.ndarray, rad_edges: np.ndarray, fraction: float) -> np.ndarray:
    """Radius [deg] containing ``fraction`` of each PSF in ``profile`` ``(energy, rad)``
    [deg-2], the PSF being tabulated at offsets ``rad`` in bins ``rad_edges``.

    As Gammapy: the cumulative sum of ``2 pi r psf dr`` at the bins' upper edges is
    interpolated linearly on an offset grid 20 times finer than the table's (its bin
    centres when ``rad`` are the bins' centres, else its nodes) and the nearest grid
    point is taken.
    """
    cumulative = np.cumsum(2 * np.pi * rad * profile * np.diff(rad_edges), axis=-1)
    nodes = rad_edges[1:]
    if np.allclose(rad, 0.5 * (rad_edges[1:] + rad_edges[:-1]), rtol=1e-6, atol=1e-9):
        fine_edges = _subdivide(rad_edges)
        fine = 0.5 * (fine_edges[1:] + fine_edges[:-1])
    else:
        fine = _subdivide(rad)
    slope = (cumulative[:, 1] - cumulative[:, 0]) / (nodes[1] - nodes[0])
    contained = np.array([np.interp(fine, nodes, c) for c in cumulative])
    below = fine < nodes[0]
    contained[:, below] = cumulative[:, :1] + slope[:, None] * (fine[below] - nodes[0])
    return fine[np.argmin(np.abs(contained - fraction), axis=-1)]


def _subdivide(points: np.ndarray) -> np.ndarray:
    """Each interval of ``points`` cut in ``_RADIUS_UPSAMPLING`` equal steps, and the last
    point: ``np.linspace(lo, hi, k, endpoint=False)`` of each interval (the same products
    and sums, bit for bit) in one array operation instead of one call per interval."""
    points = np.asarray(points, float)
    low, high = points[:-1], points[1:]
    step = (high - low) / _RADIUS_UPSAMPLING
    steps = np.arange(_RADIUS_UPSAMPLING, dtype=float)[None, :] * step[:, None] + low[:, None]
    return np.concatenate([steps.ravel(), points[-1:]])


def _round_up_to_odd(value: float) -> int:
    return int(np.ceil(value) // 2 * 2 + 1)


@functools.lru_cache(maxsize=256)
def _separation_grid(ctype: tuple[str, str], frame_lon: float, frame_lat: float, npix: int, binsz: float) -> np.ndarray:
    """Angular distance [deg] from the centre of the pixel centres of an ``npix`` square
    image of ``binsz`` pixels, in the projection ``ctype`` centred on ``(frame_lon,
    frame_lat)`` (cached: datasets of one geometry share their grids)."""
    grid = WCS(naxis=2)
    grid.wcs.ctype = list(ctype)
    grid.wcs.crval = [frame_lon, frame_lat]
    grid.wcs.cdelt = [-binsz, binsz]
    grid.wcs.crpix = [(npix + 1) / 2, (npix + 1) / 2]
    x, y = np.meshgrid(np.arange(npix), np.arange(npix))
    lon, lat = grid.pixel_to_world_values(x, y)
    separation = np.rad2deg(angular_separation(*np.deg2rad([lon, lat]), *np.deg2rad([frame_lon, frame_lat])))
    separation.flags.writeable = False
    return separation


def psf_kernel(
    psf: np.ndarray,
    psf_wcs: WCS | None,
    psf_energy_true: np.ndarray,
    psf_rad: np.ndarray,
    psf_rad_edges: np.ndarray,
    position: SkyCoord,
    energy_true: np.ndarray,
    wcs: WCS,
    shape: tuple[int, int],
    containment: float = PSF_CONTAINMENT,
) -> np.ndarray:
    """Normalised PSF kernels ``(energy_true, n, n)`` (``n`` odd) for a source at
    ``position``, on the pixels of the image ``wcs``/``shape``, at true energies
    ``energy_true`` [TeV] (the exposure's bin centres).

    The truncation radius of the k-th kernel is the containment radius of the k-th energy
    of the PSF table (the last one beyond its end), as in Gammapy: the two agree when the
    PSF and the exposure share their true-energy axis, and otherwise (Fermi-LAT files)
    this keeps npred equal to Gammapy's pixel by pixel; the truncation holds 0.1% of
    the flux either way.
    """
    table_profile = psf_profile(psf, psf_wcs, position)
    profile = _interp_log_energy(table_profile, psf_energy_true, energy_true)
    table_radii = containment_radius(table_profile, psf_rad, psf_rad_edges, containment)
    radii = table_radii[np.minimum(np.arange(len(energy_true)), len(table_radii) - 1)]
    r68 = containment_radius(profile, psf_rad, psf_rad_edges, 0.68)
    binsz = pixel_scale(wcs)
    factors = np.minimum(np.ceil(_PRECISION_FACTOR / (2 * r68 / binsz)).astype(int), _MAX_UPSAMPLING)
    factors = np.maximum(factors, 1)
    size = _round_up_to_odd(2 * radii.max() / binsz)
    image = celestial(wcs)
    ny, nx = shape
    centre_lon, centre_lat = (float(v) for v in image.all_pix2world((nx - 1) / 2, (ny - 1) / 2, 0))
    centre_lon = centre_lon % 360.0 if centre_lon % 360.0 < 360.0 else 0.0  # as map_centre's Longitude: [0, 360)
    ctype, offsets = tuple(image.wcs.ctype), tuple(np.asarray(psf_rad, float).tolist())
    kernels = np.zeros((len(energy_true), size, size))
    for index, (values, radius, factor) in enumerate(zip(profile, radii, factors)):
        npix = _round_up_to_odd(2 * radius / binsz)
        lower, weight = _offset_interpolation(ctype, centre_lon, centre_lat, int(npix * factor), float(binsz / factor), offsets)
        fine = np.clip((1 - weight) * values[lower] + weight * values[lower + 1], 0, None)
        coarse = fine.reshape(npix, factor, npix, factor).sum(axis=(1, 3))
        start = (size - npix) // 2
        kernels[index, start:start + npix, start:start + npix] = coarse
    total = kernels.sum(axis=(1, 2), keepdims=True)
    return np.divide(kernels, total, out=np.zeros_like(kernels), where=total > 0)


@functools.lru_cache(maxsize=256)
def _offset_interpolation(ctype: tuple[str, str], frame_lon: float, frame_lat: float, npix: int, binsz: float,
                          nodes: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Linear interpolation (extrapolated beyond the ends) of a PSF tabulated at offsets
    ``nodes`` to the pixel centres of :func:`_separation_grid`: the lower node of each
    pixel and its weight on the upper one. Cached: the datasets of a survey share their
    grids and PSF offsets, and 400 of them made 24000 such look-ups."""
    rad, nodes = _separation_grid(ctype, frame_lon, frame_lat, npix, binsz), np.asarray(nodes)
    index = np.clip(np.searchsorted(nodes, rad) - 1, 0, len(nodes) - 2)
    weight = (rad - nodes[index]) / (nodes[index + 1] - nodes[index])
    index.flags.writeable = weight.flags.writeable = False
    return index, weight


def edisp_matrix(edisp: np.ndarray, edisp_wcs: WCS | None, position: SkyCoord) -> np.ndarray:
    """The energy-dispersion matrix ``(energy_true, energy)`` of the map pixel containing
    ``position`` (the nearest pixel when it lies outside), as Gammapy picks it: a position
    on a pixel border belongs to the lower pixel."""
    if edisp_wcs is None or edisp.shape[2:] == (1, 1):
        return edisp[:, :, 0, 0]
    ny, nx = edisp.shape[2:]
    x, y = _pixel_of(edisp_wcs, position)
    nearest_x, nearest_y = int(np.ceil(x - 0.5)), int(np.ceil(y - 0.5))
    return edisp[:, :, int(np.clip(nearest_y, 0, ny - 1)), int(np.clip(nearest_x, 0, nx - 1))]


def diagonal_edisp(energy_true_edges: np.ndarray, energy_edges: np.ndarray) -> np.ndarray:
    """Perfect energy resolution: each true-energy bin goes to the reco bin holding its centre."""
    centres = np.sqrt(energy_true_edges[1:] * energy_true_edges[:-1])
    index = np.searchsorted(energy_edges, centres) - 1
    matrix = np.zeros((len(centres), len(energy_edges) - 1))
    inside = (index >= 0) & (index < len(energy_edges) - 1)
    matrix[np.nonzero(inside)[0], index[inside]] = 1.0
    return matrix
