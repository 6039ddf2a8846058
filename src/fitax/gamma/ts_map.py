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
to 1% of the amplitude). Here all pixels are solved together: the counts, background and
source counts around each pixel are laid out as an ``(entries, pixels)`` array for a block of
image rows, and a bracketed Halley iteration runs on every pixel of the block at once until
each amplitude is within 1e-6 of its statistical error (Gammapy's brackets, so the same root);
the errors and upper limit are the statistic's crossings, found likewise. The blocks have one
shape: a map compiles once per image size, kernel size and number of distinct energy masks
(rounded up to a power of two).

Example:
    >>> maps = ts_map(dataset, models, kernel_width=1 * u.deg)  # doctest: +SKIP
    >>> maps.write("ts_map.fits")  # Gammapy: FluxMaps.read("ts_map.fits")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses

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
_BLOCK_ENTRIES = 400_000  # entries x pixels per block of rows (~3 MB per array; 0.2-0.7 M measured alike on CPU)


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
    rows = int(max(1, min(ny, _BLOCK_ENTRIES // (len(members) * size * size * nx))))
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
    floored = jnp.maximum(background, _TRUNCATION)  # Gammapy's Cash floors predicted counts at 1e-25
    # what does not depend on the kernel is summed over each pixel's window once (summed-area
    # tables); per entry, background / model = (background / exposure) x (1 / kernel) needs no division
    window_background = _window_sums(background.sum(axis=0), size)
    window_counts_log_background = _window_sums(jnp.sum(counts * jnp.log(floored), axis=0), size)
    per_exposure = jnp.where(exposure > 0, floored / jnp.where(exposure > 0, exposure, 1.0), jnp.inf)
    inverse_kernels = jnp.where(kernels > 0, 1.0 / jnp.where(kernels > 0, kernels, 1.0), jnp.inf)

    offset_y, offset_x = np.divmod(np.arange(size * size), size)
    pixel_y, pixel_x = np.divmod(np.arange(rows * nx), nx)
    flat_index = jnp.asarray((offset_y[:, None] + pixel_y[None]) * padded_columns + offset_x[:, None] + pixel_x[None], jnp.int32)

    def entries(image, start):
        """The ``size x size`` pixels around each pixel of the block, ``(size^2, rows x nx)``
        (one gather from the block's rows: slices stacked in a loop cost 3x more, unrolled
        they compile for tens of seconds)."""
        return jax.lax.dynamic_slice(image, (start, 0), (rows + size - 1, padded_columns)).reshape(-1)[flat_index]

    def block_fit(block):
        start = block * rows
        c, m, r = [], [], []
        for d in range(n_datasets):
            if n_patterns == 1:
                kernel, inverse = kernels[d, 0][:, None], inverse_kernels[d, 0][:, None]
            else:
                index = entries(patterns[d], start) * (size * size) + jnp.arange(size * size)[:, None]
                kernel, inverse = kernels[d].reshape(-1)[index], inverse_kernels[d].reshape(-1)[index]
            c.append(entries(counts[d], start))
            m.append(kernel * entries(exposure[d], start))
            r.append(entries(per_exposure[d], start) * inverse)
        window = lambda image: jax.lax.dynamic_slice(image, (start, 0), (rows, nx)).reshape(-1)  # noqa: E731
        return _pixel_fits(jnp.concatenate(c), jnp.concatenate(m), jnp.concatenate(r), window(window_background),
                          window(window_counts_log_background), n_sigma, n_sigma_ul, errors)

    fitted = jax.lax.map(block_fit, jnp.arange(blocks))
    return {name: value.reshape(blocks * rows, nx) for name, value in fitted.items()}


def _window_sums(image: Float[Array, "py px"], size: int) -> Float[Array, "ny nx"]:
    """Sums over the ``size x size`` window of each pixel of an image padded by ``size // 2``."""
    table = jnp.pad(jnp.cumsum(jnp.cumsum(image, axis=0), axis=1), ((1, 0), (1, 0)))
    return table[size:, size:] - table[:-size, size:] - table[size:, :-size] + table[:-size, :-size]


def _sums(*terms):
    """Sums over the entries (axis 0) of several arrays in one pass: separate sums would each
    recompute the division they share (measured 4x slower on CPU)."""
    return jax.lax.reduce(terms, (0.0,) * len(terms), lambda a, b: tuple(x + y for x, y in zip(a, b)), (0,))


def _pixel_fits(counts: Float[Array, "k n"], model: Float[Array, "k n"], ratio: Float[Array, "k n"], sum_background: Float[Array, " n"],
               counts_log_background: Float[Array, " n"], n_sigma, n_sigma_ul, errors: bool) -> dict:
    """Fit ``counts ~ Poisson(background + norm x model)`` for each of ``n`` pixels, ``k``
    entries each (Cash statistic), as Gammapy's ``BrentqFluxEstimator`` defines the result.
    ``ratio`` is ``max(background, 1e-25) / model`` (``inf`` where the model is 0);
    ``sum_background`` and ``counts_log_background`` are the sums of ``background`` and of
    ``counts x log(max(background, 1e-25))`` over each pixel's entries."""
    modelled = model > 0
    # the linear (Gaussian, background-weighted) amplitude is the Newton start
    background_floor = jnp.where(modelled, jnp.maximum(ratio * model, 1e-3), 1.0)
    sum_model, sum_counts, guess_top, guess_bottom = _sums(
        model, counts, jnp.where(modelled, model * counts / background_floor - model * jnp.minimum(ratio * model / background_floor, 1.0), 0.0),
        jnp.where(modelled, model**2 / background_floor, 0.0))
    stat_null = 2.0 * (sum_background - counts_log_background)
    norm_min_total = -jnp.min(ratio, axis=0)  # predicted counts stay >= 0 above
    # where counts were seen, counts x model / (background + norm x model) = counts / (norm + ratio)
    ratio_all, ratio = ratio, jnp.where(counts > 0, ratio, jnp.inf)  # every entry's; those with counts
    # Gammapy's bracket of the root (Stewart 2009), from the smallest background-to-model ratio
    # where counts were seen and its counts (any of equal ratios gives a valid bracket)
    ratio_min = jnp.min(ratio, axis=0)
    counts_min = jnp.max(jnp.where(ratio == ratio_min[None], counts, 0.0), axis=0)
    any_seen = jnp.isfinite(ratio_min)
    norm_min_total = jnp.where(jnp.isfinite(norm_min_total), norm_min_total, -1e14)
    ratio_min = jnp.where(any_seen, ratio_min, 1e14)
    counts_min = jnp.where(any_seen, counts_min, 1.0)
    safe_sum = jnp.where(sum_model > 0, sum_model, 1.0)
    low = counts_min / safe_sum - ratio_min
    high = sum_counts / safe_sum - ratio_min
    solvable = (sum_counts > 0) & (sum_model > 0) & any_seen

    def derivatives(norm):
        """Half the Cash derivative (Gammapy's root function over 2) and its next two."""
        inverse = 1.0 / (norm + ratio)
        weighted = counts * inverse
        first, second, third = _sums(weighted, weighted * inverse, weighted * inverse * inverse)
        return sum_model - first, second, -2.0 * third

    def halley(state):
        norm, lower, upper, iterations, active, _ = state
        value, slope, curvature = derivatives(norm)
        moving = active & (jnp.abs(value) > _TOLERANCE * jnp.sqrt(slope))
        # f is increasing: the root stays bracketed; Halley's step, or bisection when it leaves
        lower = jnp.where(value < 0, norm, lower)
        upper = jnp.where(value > 0, norm, upper)
        step = 2 * value * slope / (2 * slope**2 - value * curvature)
        proposal = norm - step
        inside = (proposal > lower) & (proposal < upper) & jnp.isfinite(proposal)
        proposal = jnp.where(inside, proposal, 0.5 * (lower + upper))
        return jnp.where(moving, proposal, norm), lower, upper, iterations + moving, moving, slope

    def unfinished(state):
        return jnp.any(state[4]) & (jnp.max(state[3]) < _MAX_ITERATIONS)

    guess = guess_top / jnp.maximum(guess_bottom, 1e-300)
    start = jnp.where(solvable, jnp.clip(guess, low, high), low)
    state = (start, low, high, jnp.zeros(counts.shape[1], jnp.int32), solvable, jnp.zeros(counts.shape[1]))
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
        shifted = norm + ratio_all  # predicted counts over model
        positive = modelled & (shifted * model > _TRUNCATION)
        relative = jnp.where(positive, shifted / jnp.where(modelled, ratio_all, 1.0), _TRUNCATION / jnp.where(modelled, ratio_all * model, 1.0))
        excess, logs, slope = _sums(
            jnp.where(modelled, jnp.where(positive, norm * model, _TRUNCATION - ratio_all * model), 0.0),
            jnp.where(modelled & (counts > 0), counts * jnp.log(relative), 0.0),
            jnp.where(positive, model - counts / shifted, 0.0))
        return stat_null + 2.0 * (excess - logs), 2.0 * slope

    def stat_and_slope_positive(norm):
        """:func:`stat_and_slope` where every predicted count is positive, by a cheaper formula."""
        logs, inverse = _sums(counts * jnp.log1p(norm / ratio), counts / (norm + ratio))
        return stat_null + 2.0 * (norm * sum_model - logs), 2.0 * (sum_model - inverse)

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
                active = reaches & (jnp.abs(gap) > _TOLERANCE * jnp.abs(slope) * sigma)
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
