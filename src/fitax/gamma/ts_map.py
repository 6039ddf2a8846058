"""TS maps with Gammapy's definitions (its ``TSMapEstimator``, ``sum_over_energy_groups``):
at every pixel, the amplitude of a source kernel that best fits the counts around that
pixel on top of the counts the dataset's models predict, with its TS, error, asymmetric
errors and upper limit.

The kernel is Gammapy's: the predicted counts of a point (or Gaussian) source of power-law
spectrum at the map centre, through the PSF and energy dispersion there and the exposure
of the nearest exposed pixel, cut to ``kernel_width`` and normalised in each energy bin.
Around each pixel the kernel is averaged over the energy bins that the mask keeps there
(Gammapy's mask weighting), times the exposure that converts the reference spectrum into
counts. Each pixel's Cash statistic is then a convex function of one amplitude.

Gammapy solves one pixel after another in a Python loop (``brentq`` on the Cash derivative,
to 1% of the amplitude). Here all pixels of a block of image rows are solved together: a
bracketed Halley iteration runs on every pixel at once until each amplitude is within 1e-6 of
its statistical error (Gammapy's brackets, so the same root); the errors and upper limit are
the statistic's crossings, found likewise. Each iteration sums over every pixel's window in
one pass, a loop over the window's offsets in which the entries at one offset are a shifted
slice of the images (no copy of the windows is made). The blocks have one
shape: a map compiles once per image size, kernel size and number of distinct energy masks
(rounded up to a power of two).

Example:
    >>> maps = ts_map(dataset, models, kernel_width=1 * u.deg)  # doctest: +SKIP
    >>> maps.write("ts_map.fits")  # Gammapy: FluxMaps.read("ts_map.fits")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.wcs import WCS
from jaxtyping import Array, Float, Int

from .. import programs
from .datasets import Datasets
from .estimators import reco_exposure, snap_energy_edges
from .flux_maps import FluxMaps
from .geometry import celestial
from .irf import map_centre, pixel_scale
from .mapdataset import MapDataset
from .models import Models, SkyModel
from .spatial import GaussianSpatialModel, PointSpatialModel
from .spectral import PowerLawSpectralModel

__all__ = ["kernel_model", "ts_map", "ts_map_kernel"]

_TRUNCATION = 1e-25  # Gammapy's floor of predicted counts inside the logarithm of Cash
_TOLERANCE = 1e-6  # amplitudes converge to this fraction of their statistical error
_MAX_ITERATIONS = 60
_BLOCK_PIXELS = 16_000  # pixels per block of rows
_UNROLL = 7  # window offsets per loop iteration


def kernel_model(kind: str = "point", index: float = 2.0, sigma: float | None = None) -> SkyModel:
    """Gammapy's default TS-map source: a power law of ``index`` (amplitude 1e-12
    cm-2 s-1 TeV-1 at 1 TeV) with a point (``kind="point"``) or Gaussian (``"gaussian"``, width
    ``sigma`` [deg]) morphology; its position is set to the map centre when used."""
    spectral = PowerLawSpectralModel(index=index, amplitude=1e-12, reference=1.0)
    if kind == "point":
        return SkyModel(spectral, PointSpatialModel(), name="ts-kernel")
    if kind == "gaussian":
        if sigma is None or not sigma > 0:
            raise ValueError(f"a Gaussian TS-map kernel needs a positive width sigma [deg], got {sigma}")
        return SkyModel(spectral, GaussianSpatialModel(sigma=sigma), name="ts-kernel")
    raise ValueError(f"TS-map kernel {kind!r}: expected 'point' or 'gaussian'")


def _round_up_to_odd(value: float) -> int:
    return int(np.ceil(value) // 2 * 2 + 1)


def _kernel_wcs(dataset: MapDataset, width: float) -> tuple[WCS, int, SkyCoord]:
    """Gammapy's ``geom.to_odd_npix(max_radius=width / 2)``: an odd square image of the
    map's pixel size and projection, centred on the map centre."""
    wcs = celestial(dataset.wcs)
    binsz = pixel_scale(wcs)
    npix = _round_up_to_odd(width / binsz)
    centre = map_centre(wcs, dataset.shape)
    kernel = WCS(naxis=2)
    kernel.wcs.ctype = list(wcs.wcs.ctype)
    kernel.wcs.crval = [float(v) for v in wcs.wcs_pix2world([[(dataset.shape[1] - 1) / 2, (dataset.shape[0] - 1) / 2]], 0)[0]]
    kernel.wcs.crpix = [(npix + 1) / 2, (npix + 1) / 2]
    kernel.wcs.cdelt = [-binsz, binsz]
    if wcs.wcs.equinox == wcs.wcs.equinox:  # not NaN
        kernel.wcs.equinox = wcs.wcs.equinox
    kernel.wcs.radesys = wcs.wcs.radesys
    return kernel, npix, centre


def _nearest_exposure(dataset: MapDataset, position: SkyCoord) -> np.ndarray:
    """Exposure per true energy at the exposed pixel nearest ``position`` (Gammapy's
    ``get_nearest_valid_exposure_position``)."""
    exposed = np.any(dataset.exposure > 0, axis=0)
    if not exposed.any():
        raise ValueError(f"dataset {dataset.name!r}: no pixel has exposure; a TS map needs some")
    x, y = celestial(dataset.wcs).world_to_pixel(position)
    near = (slice(max(int(y) - 2, 0), int(y) + 4), slice(max(int(x) - 2, 0), int(x) + 4))
    if exposed[near].all():  # the usual case: no need to measure the distance to every pixel
        candidates = np.zeros_like(exposed)
        candidates[near] = True
    else:
        candidates = exposed
    rows, columns = np.nonzero(candidates)
    separation = celestial(dataset.wcs).pixel_to_world(columns, rows).separation(position).deg
    index = np.argmin(separation)
    return dataset.exposure[:, rows[index], columns[index]]


def ts_map_kernel(dataset: MapDataset, model: SkyModel, width: float) -> np.ndarray:
    """Gammapy's TS-map kernel ``(energy, n, n)``: the predicted counts of ``model`` placed at
    the map centre on an odd ``n x n`` image ``width`` [deg] wide, with the exposure of the
    nearest exposed pixel everywhere and the PSF and energy dispersion at the centre,
    normalised to 1 in each energy bin (0 where nothing is predicted)."""
    wcs, npix, centre = _kernel_wcs(dataset, width)
    frame = "galactic" if celestial(dataset.wcs).wcs.ctype[0].startswith("GLON") else "icrs"
    at = centre.transform_to(frame)
    lon, lat = float(at.spherical.lon.deg), float(at.spherical.lat.deg)
    spatial = model.spatial
    if isinstance(spatial, PointSpatialModel):
        placed = PointSpatialModel(lon_0=lon, lat_0=lat, frame=frame)
    elif isinstance(spatial, GaussianSpatialModel):
        placed = GaussianSpatialModel(lon_0=lon, lat_0=lat, sigma=float(spatial.sigma.value), e=float(spatial.e.value),
                                      phi=float(spatial.phi.value), frame=frame)
    else:
        raise ValueError(f"TS-map kernel: spatial model {type(spatial).__name__} not supported (point or Gaussian)")
    exposure = _nearest_exposure(dataset, centre)
    n_energy, n_true = dataset.counts.shape[0], dataset.exposure.shape[0]
    if isinstance(spatial, PointSpatialModel) and dataset.irfs.psf is not None:
        # a point at the centre pixel: the PSF kernels themselves, through the spectrum and
        # the energy dispersion (what npred computes, without compiling it)
        psf = dataset.psf_kernel(centre)
        window_psf = np.zeros((n_true, npix, npix))
        half, kernel_half = npix // 2, psf.shape[-1] // 2
        cut = min(half, kernel_half)
        inner, outer = slice(half - cut, half + cut + 1), slice(kernel_half - cut, kernel_half + cut + 1)
        window_psf[:, inner, inner] = psf[:, outer, outer]
        edges = np.asarray(dataset.energy_true_edges, float)
        flux = np.asarray(model.spectral.integral(edges[:-1], edges[1:]), float)
        kernel = np.einsum("t,tr,tyx->ryx", exposure * flux, dataset.edisp_matrix(centre), window_psf)
    else:
        window = dataclasses.replace(
            dataset, name=f"{dataset.name}-ts-kernel", counts=np.zeros((n_energy, npix, npix)),
            exposure=np.broadcast_to(exposure[:, None, None], (n_true, npix, npix)).copy(),
            background=np.zeros((n_energy, npix, npix)), mask=np.ones((n_energy, npix, npix), bool), wcs=wcs,
        )
        kernel = np.asarray(window.npred(Models([SkyModel(model.spectral, placed, name="ts-kernel")])), float)
    total = kernel.sum(axis=(1, 2), keepdims=True)
    return np.divide(kernel, total, out=np.zeros_like(kernel), where=total > 0)


def ts_map(datasets, models: Models | None = None, kernel: SkyModel | None = None, kernel_width: u.Quantity = 1.0 * u.deg,
           energy_edges: u.Quantity | None = None, *, n_sigma: float = 1.0, n_sigma_ul: float = 2.0,
           errors: bool = False) -> FluxMaps:
    """TS maps of one MapDataset, or of several on the same sky grid fitted jointly, as
    Gammapy's ``TSMapEstimator`` with ``sum_over_energy_groups=True``.

    Args:
        datasets: a MapDataset, or Datasets of MapDatasets sharing their sky grid.
        models: the models whose predicted counts (sources and background) the kernel is fitted on
            top of; ``None``: the datasets' background maps alone.
        kernel: the test source (:func:`kernel_model`; default a point source of index 2).
        kernel_width: the kernel's full width (Gammapy's ``kernel_width``; Gammapy's own default,
            the whole map, is rarely what one wants, so fitax's is 1 deg).
        energy_edges: edges [TeV] of the energy bins of the maps, snapped to the datasets' edges
            (default: one bin over the whole axis).
        errors: also the asymmetric errors ``norm_errn``/``norm_errp`` (``n_sigma``) and the
            upper limit ``norm_ul`` (``n_sigma_ul``), Gammapy's ``selection_optional=["errn-errp",
            "ul"]``.

    Example:
        >>> maps = ts_map(dataset, kernel=kernel_model("gaussian", sigma=0.1), energy_edges=[0.01, 0.5] * u.TeV)  # doctest: +SKIP
        >>> float(np.nanmax(maps.maps["sqrt_ts"]))  # doctest: +SKIP
    """
    single = not isinstance(datasets, (list, tuple)) and not hasattr(datasets, "names")  # one dataset, not a collection
    members = [datasets] if single else list(datasets)
    if not members:
        raise ValueError("ts_map: no dataset given")
    for dataset in members:
        if not isinstance(dataset, MapDataset):
            raise ValueError(f"ts_map: dataset {getattr(dataset, 'name', dataset)!r} is not a MapDataset (TS maps need maps)")
        if dataset.shape != members[0].shape or not celestial(dataset.wcs).wcs.compare(celestial(members[0].wcs).wcs):
            raise ValueError(f"ts_map: dataset {dataset.name!r} is not on the sky grid of {members[0].name!r}; "
                             "the datasets of one TS map must share their pixels")
    models = Models(()) if models is None else (models if isinstance(models, Models) else Models(models))
    kernel = kernel_model() if kernel is None else kernel
    width = float(u.Quantity(kernel_width, "deg").value)
    if not width > 0:
        raise ValueError(f"ts_map: kernel_width must be positive, got {kernel_width}")
    edges = np.asarray(members[0].energy_edges, float)
    for dataset in members:
        if not np.allclose(dataset.energy_edges, edges, rtol=1e-6, atol=0):
            raise ValueError(f"ts_map: dataset {dataset.name!r} has other energy bins than {members[0].name!r}; "
                             "the datasets of one TS map must share their energy axis")
    if energy_edges is None:
        groups = [(0, edges.size - 1)]
    else:
        requested = np.asarray(u.Quantity(energy_edges, "TeV").to_value("TeV"), float)
        snapped = snap_energy_edges(edges, requested)
        groups = [(low, high) for low, high in zip(snapped[:-1], snapped[1:]) if high > low]
        if not groups:
            raise ValueError(f"ts_map: the energy edges {list(requested)} TeV cover no bin of the datasets' axis")
    # without source or background models the predicted counts are the background maps
    modelled = bool(models.sky_models) or any(models.background_model(d.name) is not None for d in members)
    npreds = Datasets(members).npred(models) if modelled else [d.background for d in members]
    kernels = [ts_map_kernel(dataset, kernel, width) for dataset in members]
    half = kernels[0].shape[-1] // 2
    exposures = [reco_exposure(dataset, kernel.spectral) for dataset in members]
    results = [_energy_group(members, npreds, exposures, kernels, low, high, half, n_sigma, n_sigma_ul, errors) for low, high in groups]
    maps = {name: np.stack([result[name] for result in results]) for name in results[0]}
    # Gammapy's rule: with upper limits, below sqrt(TS) 2 (not where there is no value); without, no value
    maps["is_ul"] = maps["sqrt_ts"] < 2.0 if errors else np.isnan(maps["norm"])
    maps["success"] = np.where(np.isnan(maps["norm"]), True, maps["success"] > 0.5)
    group_edges = np.array([edges[low] for low, _ in groups] + [edges[groups[-1][1]]])
    meta = {"N_SIGMA": (n_sigma, "sigmas of norm_err, norm_errn, norm_errp"), "N_SIG_UL": (n_sigma_ul, "sigmas of norm_ul"),
            "KWIDTH": (width, "[deg] full width of the kernel"), "CREATOR": ("fitax", "")}
    return FluxMaps(maps, group_edges, members[0].wcs, kernel, meta)


def _energy_group(members, npreds, exposures, kernels, low: int, high: int, half: int, n_sigma, n_sigma_ul, errors: bool) -> dict:
    """The per-pixel fit over energy bins ``low:high`` of every dataset."""
    counts, background, exposure, patterns, weighted = [], [], [], [], []
    used = np.zeros(members[0].shape, bool)
    for dataset, npred, reco, kernel_cube in zip(members, npreds, exposures, kernels):
        npred = np.asarray(npred, float)[low:high]
        mask = dataset.mask[low:high] & np.isfinite(npred)
        counts.append(np.sum(dataset.counts[low:high] * mask, axis=0))
        background.append(np.sum(np.where(mask, npred, 0.0), axis=0))
        exposure.append(np.sum(reco[low:high] * mask, axis=0))
        # Gammapy averages the kernel over the energy bins the mask keeps at each pixel: the
        # distinct masks along energy are few, so each gets its kernel and pixels an index
        # (pixels the mask removes at every energy have no exposure and need no kernel)
        flat = mask.reshape(mask.shape[0], -1)
        kept = flat.any(axis=0)
        codes = np.packbits(flat[:, kept], axis=0)
        codes = codes.T.copy().view(np.dtype((np.void, codes.shape[0]))).ravel()  # one code per pixel's mask
        _, first, inverse = np.unique(codes, return_index=True, return_inverse=True)
        distinct = flat[:, kept][:, first].T if kept.any() else np.ones((1, flat.shape[0]), bool)
        index = np.zeros(flat.shape[1], int)
        index[kept] = inverse.ravel()
        on = distinct.sum(axis=1)
        cube = kernel_cube[low:high]
        averaged = np.einsum("pe,eyx->pyx", distinct.astype(float), cube) / np.where(on > 0, on, 1)[:, None, None]
        patterns.append(index.reshape(dataset.shape))
        weighted.append(averaged)
        used |= mask.any(axis=0) & (background[-1] > 0)
    if not used.any():
        names = ", ".join(repr(d.name) for d in members)
        raise ValueError(f"ts_map: no pixel of {names} has both an unmasked energy bin in {members[0].energy_edges[low]:.4g}-"
                         f"{members[0].energy_edges[high]:.4g} TeV and a predicted background; check the safe/fit masks and the background")
    # the number of distinct masks is rounded up to a power of two: it is part of the program's shape
    n_patterns = max(w.shape[0] for w in weighted)
    n_patterns = 1 if n_patterns == 1 else 1 << (n_patterns - 1).bit_length()
    weighted = [np.concatenate([w, np.zeros((n_patterns - w.shape[0],) + w.shape[1:])]) for w in weighted]
    ny, nx = members[0].shape
    size = 2 * half + 1
    rows = int(max(1, min(ny, _BLOCK_PIXELS // nx)))
    blocks = -(-ny // rows)

    def padded(images, fill=0):
        stack = np.stack(images)
        return np.pad(stack, ((0, 0), (half, half + blocks * rows - ny), (half, half)), constant_values=fill)

    solved = _solve(jnp.asarray(padded(counts), float), jnp.asarray(padded(background), float),
                    jnp.asarray(padded(exposure), float), jnp.asarray(padded(patterns), jnp.int32),
                    jnp.asarray(np.stack(weighted).reshape(len(members), n_patterns, -1), float),
                    jnp.asarray(n_sigma, float), jnp.asarray(n_sigma_ul, float), rows=rows, size=size, errors=errors)
    result = {}
    for name, values in solved.items():
        image = np.asarray(values).reshape(blocks * rows, nx)[:ny].astype(float)
        image[~used] = np.nan
        result[name] = image
    with np.errstate(invalid="ignore"):
        result["sqrt_ts"] = np.where(result["norm"] > 0, 1.0, -1.0) * np.sqrt(np.clip(result["ts"], 0, None))
    result["sqrt_ts"][~used] = np.nan
    return result


class Entries(NamedTuple):
    """The window entries of a set of pixels, as one reduction pass sees them: counts,
    predicted counts of the kernel at amplitude 1 (``model``), and the background floored at
    1e-25 as Gammapy's Cash floors it, with its inverse and ``1 / max(background, 1e-3)`` (the
    weight of the start's linear fit): per image, not per entry, so no pass divides by them.
    Arrays broadcast against the per-pixel arrays."""

    counts: Array
    model: Array
    background: Array
    inverse_background: Array
    inverse_floor: Array


Reducer = Callable[[Callable[[Entries], tuple], Callable[[tuple, tuple], tuple], tuple], tuple]


def _add(left: tuple, right: tuple) -> tuple:
    return tuple(a + b for a, b in zip(left, right))


def dense_reducer(counts: Float[Array, "k *pixels"], model: Float[Array, "k *pixels"], background: Float[Array, "k *pixels"]) -> Reducer:
    """Reductions over ``k`` entries given per pixel (a few pixels, tests): every term is
    evaluated on the whole ``(k, *pixels)`` array and combined along the entries."""
    floored = jnp.maximum(background, _TRUNCATION)
    entries = Entries(counts, model, floored, 1.0 / floored, 1.0 / jnp.maximum(floored, 1e-3))

    def reduce(term, combine, init):
        values = term(entries)
        return jax.lax.reduce(tuple(jnp.broadcast_to(v, counts.shape) for v in values), init, combine, (0,))

    return reduce


def _window_reducer(counts, exposures, background, *, kernels, rows: int, nx: int, size: int) -> Reducer:
    """Reductions over the ``size x size`` window of every pixel of a block of ``rows x nx``
    pixels, for images padded by ``size // 2`` (``(d, rows + size - 1, nx + size - 1)``;
    ``exposures`` ``(d, p, ...)``: the exposure where each of ``p`` kernels applies). The
    entries at one window offset are a slice of each image, so a pass is a loop over the
    offsets that reads every image in place: no gathered copy of the windows (reading them
    through a gather cost as much as the arithmetic), and memory that does not grow with the
    kernel."""
    floored = jnp.maximum(background, _TRUNCATION)
    inverse_background = 1.0 / floored
    inverse_floor = 1.0 / jnp.maximum(floored, 1e-3)
    n_datasets, n_patterns = exposures.shape[:2]

    def at(image, y, x):
        return jax.lax.dynamic_slice(image, (y, x), (rows, nx))  # kept 2-D: flattening a slice copies it (2x slower)

    def reduce(term, combine, init):
        def offset(o, accumulated):
            y, x = o // size, o % size
            for d in range(n_datasets):
                model = sum(kernels[d, k, o] * at(exposures[d, k], y, x) for k in range(n_patterns))
                values = term(Entries(at(counts[d], y, x), model, at(floored[d], y, x), at(inverse_background[d], y, x),
                                      at(inverse_floor[d], y, x)))
                accumulated = combine(accumulated, values)
            return accumulated

        start = tuple(jnp.full((rows, nx), value) for value in init)
        return jax.lax.fori_loop(0, size * size, offset, start, unroll=_UNROLL)

    return reduce


@programs.cached(name="fitax.gamma.ts_map")
def _solve(counts: Float[Array, "d py px"], background: Float[Array, "d py px"], exposure: Float[Array, "d py px"],
           patterns: Int[Array, "d py px"], kernels: Float[Array, "d p kk"], n_sigma, n_sigma_ul, *, rows: int, size: int,
           errors: bool) -> dict:
    """Every pixel's amplitude fit, block of ``rows`` image rows after block; inputs padded by
    ``size // 2`` on each side (and below to whole blocks) with zeros."""
    n_datasets, padded_rows, padded_columns = counts.shape
    nx = padded_columns - size + 1
    blocks = (padded_rows - size + 1) // rows
    n_patterns = kernels.shape[1]
    # the exposure where each kernel applies: the model of an entry is kernel x exposure
    exposures = exposure[:, None] * (patterns[:, None] == jnp.arange(n_patterns)[None, :, None, None])
    # what does not depend on the kernel is summed over each pixel's window once (summed-area tables)
    floored = jnp.maximum(background, _TRUNCATION)
    window_background = _window_sums(background.sum(axis=0), size)
    window_counts_log_background = _window_sums(jnp.sum(counts * jnp.log(floored), axis=0), size)

    def block_fit(block):
        start = block * rows
        cut = lambda image: jax.lax.dynamic_slice_in_dim(image, start, rows + size - 1, axis=-2)  # noqa: E731
        window = lambda image: jax.lax.dynamic_slice(image, (start, 0), (rows, nx))  # noqa: E731
        reduce = _window_reducer(cut(counts), cut(exposures), cut(background), kernels=kernels, rows=rows, nx=nx, size=size)
        return _pixel_fits(reduce, window(window_background), window(window_counts_log_background), n_sigma, n_sigma_ul, errors)

    fitted = jax.lax.map(block_fit, jnp.arange(blocks))
    return {name: value.reshape(blocks * rows, nx) for name, value in fitted.items()}


def _window_sums(image: Float[Array, "py px"], size: int) -> Float[Array, "ny nx"]:
    """Sums over the ``size x size`` window of each pixel of an image padded by ``size // 2``."""
    table = jnp.pad(jnp.cumsum(jnp.cumsum(image, axis=0), axis=1), ((1, 0), (1, 0)))
    return table[size:, size:] - table[:-size, size:] - table[size:, :-size] + table[:-size, :-size]


def _largest(left: tuple, right: tuple) -> tuple:
    return tuple(jnp.maximum(a, b) for a, b in zip(left, right))


def _pixel_fits(reduce: Reducer, sum_background: Float[Array, "*pixels"], counts_log_background: Float[Array, "*pixels"],
                n_sigma, n_sigma_ul, errors: bool) -> dict:
    """Fit ``counts ~ Poisson(background + norm x model)`` for each pixel (Cash statistic),
    as Gammapy's ``BrentqFluxEstimator`` defines the result. ``reduce`` runs one pass over
    every pixel's entries (:func:`dense_reducer`, or the windows of a map);
    ``sum_background`` and ``counts_log_background`` are the sums of ``background`` and of
    ``counts x log(max(background, 1e-25))`` over each pixel's entries."""
    # Gammapy's bracket of the root (Stewart 2009), from the smallest background-to-model ratio
    # where counts were seen and its counts (any of equal ratios gives a valid bracket); above
    # minus the smallest ratio of all, every predicted count stays >= 0. Model-to-background
    # ratios are compared: products of what each entry holds, no division per entry.
    def model_over_background(e):
        return e.model * e.inverse_background

    largest_seen, largest = reduce(lambda e: (jnp.where(e.counts > 0, model_over_background(e), 0.0), model_over_background(e)),
                                   _largest, (0.0, 0.0))

    def start_terms(e):
        at_largest = (e.counts > 0) & (model_over_background(e) == largest_seen)
        return (e.model, e.counts, e.model * (e.counts - e.background) * e.inverse_floor, e.model**2 * e.inverse_floor,
                jnp.where(at_largest, e.counts, 0.0))

    sum_model, sum_counts, guess_top, guess_bottom, counts_min = reduce(
        start_terms, lambda left, right: (*_add(left[:4], right[:4]), jnp.maximum(left[4], right[4])), (0.0,) * 5)
    stat_null = 2.0 * (sum_background - counts_log_background)
    ratio_min = 1.0 / largest_seen  # inf where no counts were seen
    norm_min_total = jnp.where(largest > 0, -1.0 / jnp.where(largest > 0, largest, 1.0), -1e14)
    any_seen = jnp.isfinite(ratio_min)
    ratio_min = jnp.where(any_seen, ratio_min, 1e14)
    counts_min = jnp.where(any_seen, counts_min, 1.0)
    safe_sum = jnp.where(sum_model > 0, sum_model, 1.0)
    low = counts_min / safe_sum - ratio_min
    high = sum_counts / safe_sum - ratio_min
    solvable = (sum_counts > 0) & (sum_model > 0) & any_seen

    def seen_over_predicted(e, norm):
        """``counts x model / (background + norm x model)``, 0 where no counts were seen (the
        predicted counts there may be <= 0 below the best fit)."""
        seen = e.counts > 0
        return jnp.where(seen, e.counts * e.model / jnp.where(seen, e.background + norm * e.model, 1.0), 0.0)

    def derivatives(norm):
        """Half the Cash derivative (Gammapy's root function over 2) and its next two."""
        def terms(e):
            # bins without counts may be predicted <= 0 here; they weigh 0 as long as the
            # division stays finite
            inverse = e.model / jnp.maximum(e.background + norm * e.model, 1e-300)
            weighted = e.counts * inverse
            return weighted, weighted * inverse, weighted * inverse * inverse

        first, second, third = reduce(terms, _add, (0.0,) * 3)
        return sum_model - first, second, -2.0 * third

    def halley(state):
        norm, lower, upper, iterations, active, _ = state
        value, slope, curvature = derivatives(norm)
        # a root below the smallest norm that keeps every predicted count >= 0 is replaced by
        # that norm (below): once the function is positive there, the answer is known
        below_floor = (value > 0) & (norm <= norm_min_total)
        moving = active & (jnp.abs(value) > _TOLERANCE * jnp.sqrt(slope)) & ~below_floor
        # f is increasing: the root stays bracketed; Halley's step, or bisection when it leaves
        lower = jnp.where(value < 0, norm, lower)
        upper = jnp.where(value > 0, norm, upper)
        step = 2 * value * slope / (2 * slope**2 - value * curvature)
        proposal = norm - step
        inside = (proposal > lower) & (proposal < upper) & jnp.isfinite(proposal)
        proposal = jnp.where(inside, proposal, 0.5 * (lower + upper))
        proposal = jnp.where(norm > norm_min_total, jnp.maximum(proposal, norm_min_total), proposal)
        return jnp.where(moving, proposal, norm), lower, upper, iterations + moving, moving, slope

    def unfinished(state):
        return jnp.any(state[4]) & (jnp.max(state[3]) < _MAX_ITERATIONS)

    guess = guess_top / jnp.maximum(guess_bottom, 1e-300)
    start = jnp.where(solvable, jnp.clip(guess, low, high), low)
    state = (start, low, high, jnp.zeros(sum_model.shape, jnp.int32), solvable, jnp.zeros(sum_model.shape))
    norm, _, _, niter, unconverged, slope = jax.lax.while_loop(unfinished, halley, state)
    success = ~unconverged
    # Gammapy's bracket can reach below the smallest norm that keeps every predicted count
    # positive; a root there is replaced by that norm, and the error taken at it
    clamped = solvable & (norm < norm_min_total)
    norm = jnp.where(solvable, jnp.maximum(norm, norm_min_total), norm_min_total)
    slope = jax.lax.cond(jnp.any(clamped), lambda: jnp.where(clamped, derivatives(norm)[1], slope), lambda: slope)
    slope = jnp.where(solvable, slope, 0.0)  # no counts where the kernel is: Gammapy's infinite error
    sigma = 1.0 / jnp.sqrt(slope)

    def stat_and_slope(norm):
        """Cash at ``norm`` and its derivative, as Gammapy sums it: predicted counts below
        1e-25 count as 1e-25 (below the best fit, bins without counts may go negative)."""
        def terms(e):
            predicted = e.background + norm * e.model
            positive = (e.model > 0) & (predicted > _TRUNCATION)
            excess = jnp.where(e.model > 0, jnp.where(positive, norm * e.model, _TRUNCATION - e.background), 0.0)
            logs = jnp.where(e.counts > 0, e.counts * jnp.log(jnp.maximum(predicted, _TRUNCATION)), 0.0)
            return excess, logs, jnp.where(positive, e.model - seen_over_predicted(e, norm), 0.0)

        excess, logs, slope = reduce(terms, _add, (0.0,) * 3)
        return stat_null + 2.0 * (excess - logs + counts_log_background), 2.0 * slope

    def stat_and_slope_positive(norm):
        """:func:`stat_and_slope` where every predicted count is positive, by a cheaper formula."""
        def terms(e):
            seen = e.counts > 0
            predicted = jnp.where(seen, e.background + norm * e.model, 1.0)
            return jnp.where(seen, e.counts * jnp.log(predicted), 0.0), jnp.where(seen, e.counts * e.model / predicted, 0.0)

        logs, inverse = reduce(terms, _add, (0.0,) * 2)
        return stat_null + 2.0 * (norm * sum_model - logs + counts_log_background), 2.0 * (sum_model - inverse)

    def stat_and_slope_anywhere(norm):
        return jax.lax.cond(jnp.any(norm <= norm_min_total), stat_and_slope, stat_and_slope_positive, norm)

    stat = stat_and_slope_positive(norm)[0]  # the best fit never predicts negative counts
    result = {"norm": norm, "norm_err": n_sigma * sigma, "ts": stat_null - stat, "npred": sum_background + norm * sum_model,
              "npred_excess": norm * sum_model, "stat": stat, "stat_null": stat_null, "niter": niter, "success": success}
    if errors:
        slope_at_best = stat_and_slope_anywhere(norm)[1]

        def crossing(level, side):
            """Where the statistic rises by ``level`` on ``side`` (+1 above, -1 below the best
            fit), within Gammapy's 100 errors of it (NaN if it does not rise that far). Below,
            as in Gammapy, bins without counts may be predicted negative: the statistic is
            continued there (linear in them) up to the first bin with counts predicted zero."""
            target = stat + level
            far = norm + side * 100.0 * n_sigma * sigma
            bound = jnp.maximum(far, -ratio_min) if side < 0 else far
            reaches = (stat_and_slope_anywhere(bound)[0] >= target) & jnp.isfinite(sigma)

            def climb(state):
                x, near, far_end, count, _ = state
                value, slope = stat_and_slope_anywhere(x)
                gap = value - target
                # the crossing stays between the best fit (below the level) and the far end
                # (above it); Newton's step, or bisection when it leaves that bracket
                near = jnp.where(gap < 0, x, near)
                far_end = jnp.where(gap > 0, x, far_end)
                proposal = x - gap / jnp.where(slope != 0, slope, 1.0)
                inside = ((proposal - near) * (proposal - far_end) < 0) & jnp.isfinite(proposal)
                proposal = jnp.where(inside, proposal, 0.5 * (near + far_end))
                # a Newton step below the tolerance, unless the statistic is steep (next to
                # a bin predicted zero, where a tiny step can leave it far from the level)
                active = reaches & (jnp.abs(gap) > _TOLERANCE * jnp.minimum(jnp.abs(slope) * sigma, 1.0))
                return jnp.where(active, proposal, x), near, far_end, count + 1, jnp.any(active)

            def far_enough(state):
                return state[4] & (state[3] < _MAX_ITERATIONS)

            # the statistic is convex and rises at least as fast as its tangent at the best
            # fit (steep where the best fit sits on the boundary): start at the nearer of the
            # quadratic and the tangent's estimates
            rise = side * slope_at_best
            x0 = norm + side * jnp.minimum(jnp.sqrt(level) * sigma, jnp.where(rise > 0, level / jnp.where(rise > 0, rise, 1.0), jnp.inf))
            x0 = jnp.where(side * (x0 - bound) >= 0, 0.5 * (norm + bound), x0)
            x, _, _, _, _ = jax.lax.while_loop(far_enough, climb, (x0, norm, bound, 0, jnp.array(True)))
            return jnp.where(reaches, x, jnp.nan)

        result["norm_errn"] = norm - crossing(n_sigma**2, -1)
        result["norm_errp"] = crossing(n_sigma**2, +1) - norm
        result["norm_ul"] = crossing(n_sigma_ul**2, +1)
    return result
