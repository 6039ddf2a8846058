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
image rows, and a safeguarded Newton iteration runs on every pixel of the block at once until
each amplitude is within 1e-6 of its statistical error (Gammapy's brackets, so the same root).
The blocks have one shape: a map compiles once per image and kernel size.

Example:
    >>> maps = ts_map(dataset, models, kernel_width=1 * u.deg)  # doctest: +SKIP
    >>> maps.write("ts_map.fits")  # Gammapy: FluxMaps.read("ts_map.fits")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.wcs import WCS
from jaxtyping import Array, Float, Int

from ..io import atomic_write
from .datasets import Datasets
from .estimators import reco_exposure, snap_energy_edges
from .geometry import celestial, pixel_skycoords
from .io import bands_hdu, map_image_hdu
from .irf import map_centre, pixel_scale
from .mapdataset import MapDataset
from .modelio import write_models
from .models import Models, SkyModel
from .spatial import GaussianSpatialModel, PointSpatialModel
from .spectral import PowerLawSpectralModel

__all__ = ["FluxMaps", "kernel_model", "ts_map", "ts_map_kernel"]

_TRUNCATION = 1e-25  # Gammapy's floor of predicted counts inside the logarithm of Cash
_TOLERANCE = 1e-6  # amplitudes converge to this fraction of their statistical error
_MAX_ITERATIONS = 60
_BLOCK_ENTRIES = 250000  # entries x pixels per block of rows: ~6 MB per array, which stays in cache
_QUANTITIES = ("norm", "norm_err", "norm_errn", "norm_errp", "norm_ul", "ts", "sqrt_ts", "npred", "npred_excess",
               "stat", "stat_null", "niter", "is_ul", "success")


@dataclasses.dataclass(frozen=True)
class FluxMaps:
    """Gammapy's ``FluxMaps`` of ``sed_type="likelihood"``: maps ``(energy, ny, nx)`` of
    ``norm`` (the amplitude over ``reference_model``'s), ``norm_err`` (``n_sigma``),
    ``norm_errn``/``norm_errp``/``norm_ul`` (when asked for), ``ts``, ``sqrt_ts`` (signed by the
    norm), ``npred``/``npred_excess`` (within the kernel), ``stat``/``stat_null``, ``niter``,
    ``is_ul`` and ``success``, on ``wcs`` with energy bins ``energy_edges`` [TeV]; NaN where no
    energy bin is used or nothing is predicted."""

    maps: dict[str, np.ndarray]
    energy_edges: np.ndarray
    wcs: WCS
    reference_model: SkyModel
    meta: dict

    @property
    def flux(self) -> u.Quantity:
        """Integrated flux ``norm x`` the reference model's flux in each energy bin [cm-2 s-1]."""
        spectral = self.reference_model.spectral
        reference = np.asarray(spectral.integral(self.energy_edges[:-1], self.energy_edges[1:]))
        return self.maps["norm"] * reference[:, None, None] * u.Unit("cm-2 s-1")

    def write(self, path) -> Path:
        """Write as Gammapy's ``FluxMaps.write`` does (atomically): one image HDU per quantity,
        each with its ``<NAME>_BANDS`` energy table, and the reference model in
        ``<stem>_model.yaml`` beside it, named in the primary header (``MODEL``) so that
        ``FluxMaps.read(path)`` finds it."""
        path = Path(path)
        model_path = path.with_name(path.name.split(".")[0] + "_model.yaml").resolve()
        write_models(Models([self.reference_model]), model_path)
        primary = fits.PrimaryHDU()
        primary.header["SED_TYPE"] = "likelihood"
        primary.header["MODEL"] = model_path.as_posix()
        for key, value in self.meta.items():
            primary.header[key.upper()[:8]] = value
        hdus = [primary]
        for name in _QUANTITIES:
            if name in self.maps:
                bands = bands_hdu(name.upper(), [("ENERGY", self.energy_edges, "log")])
                data = self.maps[name]
                data = data.astype(np.int64) if name in ("is_ul", "success") else np.asarray(data, float)
                hdus += [map_image_hdu(name.upper(), data, self.wcs, bands), bands]
        hdulist = fits.HDUList(hdus)
        return atomic_write(path, lambda tmp: hdulist.writeto(tmp, overwrite=True))

    def __repr__(self) -> str:
        ts = self.maps["ts"]
        return (f"FluxMaps({ts.shape[2]}x{ts.shape[1]} pixels, {ts.shape[0]} energy bin(s) "
                f"{self.energy_edges[0]:.3g}-{self.energy_edges[-1]:.3g} TeV, max TS {np.nanmax(ts):.1f})")


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
    separation = pixel_skycoords(dataset.wcs, dataset.shape).separation(position).deg
    separation[~exposed] = np.inf
    y, x = np.unravel_index(np.argmin(separation), separation.shape)
    return dataset.exposure[:, y, x]


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
    window = dataclasses.replace(
        dataset, name=f"{dataset.name}-ts-kernel", counts=np.zeros((n_energy, npix, npix)),
        exposure=np.broadcast_to(exposure[:, None, None], (n_true, npix, npix)).copy(),
        background=np.zeros((n_energy, npix, npix)), mask=np.ones((n_energy, npix, npix), bool), wcs=wcs,
    )
    source = SkyModel(model.spectral, placed, name="ts-kernel")
    kernel = np.asarray(window.npred(Models([source])), float)
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
    members = [datasets] if isinstance(datasets, MapDataset) else list(datasets)
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
    if energy_edges is None:
        groups = [(0, edges.size - 1)]
    else:
        requested = np.asarray(u.Quantity(energy_edges, "TeV").to_value("TeV"), float)
        snapped = snap_energy_edges(edges, requested)
        groups = [(low, high) for low, high in zip(snapped[:-1], snapped[1:]) if high > low]
        if not groups:
            raise ValueError(f"ts_map: the energy edges {list(requested)} TeV cover no bin of the datasets' axis")
    npreds = Datasets(members).npred(models)
    kernels = [ts_map_kernel(dataset, kernel, width) for dataset in members]
    half = kernels[0].shape[-1] // 2
    results = [_energy_group(members, npreds, kernels, kernel, low, high, half, n_sigma, n_sigma_ul, errors) for low, high in groups]
    maps = {name: np.stack([result[name] for result in results]) for name in results[0]}
    maps["is_ul"] = ~(maps["sqrt_ts"] >= 2.0) if errors else np.isnan(maps["norm"])
    maps["success"] = np.where(np.isnan(maps["norm"]), True, maps["success"] > 0.5)
    group_edges = np.array([edges[low] for low, _ in groups] + [edges[groups[-1][1]]])
    meta = {"n_sigma": n_sigma, "n_sigma_ul": n_sigma_ul, "kwidth": width, "creator": "fitax"}
    return FluxMaps(maps, group_edges, members[0].wcs, kernel, meta)


def _energy_group(members, npreds, kernels, kernel, low: int, high: int, half: int, n_sigma, n_sigma_ul, errors: bool) -> dict:
    """The per-pixel fit over energy bins ``low:high`` of every dataset."""
    counts, background, exposure, patterns, weighted = [], [], [], [], []
    used = np.zeros(members[0].shape, bool)
    for dataset, npred, kernel_cube in zip(members, npreds, kernels):
        npred = np.asarray(npred, float)[low:high]
        mask = dataset.mask[low:high] & np.isfinite(npred)
        counts.append(np.sum(dataset.counts[low:high] * mask, axis=0))
        background.append(np.sum(np.where(mask, npred, 0.0), axis=0))
        exposure.append(np.sum(reco_exposure(dataset, kernel.spectral)[low:high] * mask, axis=0))
        # Gammapy averages the kernel over the energy bins the mask keeps at each pixel: the
        # distinct masks along energy are few, so each gets its kernel and pixels an index
        codes = np.packbits(mask.reshape(mask.shape[0], -1), axis=0)
        codes = codes.T.copy().view(np.dtype((np.void, codes.shape[0]))).ravel()  # one code per pixel's mask
        _, first, index = np.unique(codes, return_index=True, return_inverse=True)
        distinct = mask.reshape(mask.shape[0], -1)[:, first].T
        on = distinct.sum(axis=1)
        cube = kernel_cube[low:high]
        averaged = np.einsum("pe,eyx->pyx", distinct.astype(float), cube) / np.where(on > 0, on, 1)[:, None, None]
        patterns.append(index.reshape(dataset.shape))
        weighted.append(averaged)
        used |= mask.any(axis=0) & (background[-1] > 0)
    n_patterns = max(w.shape[0] for w in weighted)
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


@functools.partial(jax.jit, static_argnames=("rows", "size", "errors"))
def _solve(counts: Float[Array, "d py px"], background: Float[Array, "d py px"], exposure: Float[Array, "d py px"],
           patterns: Int[Array, "d py px"], kernels: Float[Array, "d p kk"], n_sigma, n_sigma_ul, *, rows: int, size: int,
           errors: bool) -> dict:
    """Every pixel's amplitude fit, block of ``rows`` image rows after block; inputs padded by
    ``size // 2`` on each side (and below to whole blocks) with zeros."""
    n_datasets, padded_rows, padded_columns = counts.shape
    nx = padded_columns - size + 1
    blocks = (padded_rows - size + 1) // rows
    log_background = jnp.log(jnp.maximum(background, _TRUNCATION))
    n_patterns = kernels.shape[1]

    def entries(image, start):
        """The ``size x size`` pixels around each pixel of the block, ``(size^2, rows x nx)``,
        copied by slices (a gather costs several times more; slices unrolled over both
        offsets compile for tens of seconds)."""
        def shifted_rows(dy):
            band = jax.lax.dynamic_slice(image, (start + dy, 0), (rows, padded_columns))
            return jnp.stack([band[:, dx:dx + nx].reshape(-1) for dx in range(size)])

        return jax.lax.map(shifted_rows, jnp.arange(size)).reshape(size * size, rows * nx)

    def block_fit(block):
        start = block * rows
        c, b, m, log_b = [], [], [], []
        for d in range(n_datasets):
            c.append(entries(counts[d], start))
            b.append(entries(background[d], start))
            log_b.append(entries(log_background[d], start))
            if n_patterns == 1:
                weights = kernels[d, 0][:, None]
            else:
                index = entries(patterns[d], start) * (size * size) + jnp.arange(size * size)[:, None]
                weights = kernels[d].reshape(-1)[index]
            m.append(weights * entries(exposure[d], start))
        c, b, m, log_b = (jnp.concatenate(x) for x in (c, b, m, log_b))
        return pixel_fits(c, b, m, log_b, n_sigma, n_sigma_ul, errors)

    fitted = jax.lax.map(block_fit, jnp.arange(blocks))
    return {name: value.reshape(blocks * rows, nx) for name, value in fitted.items()}


def pixel_fits(counts: Float[Array, "k n"], background: Float[Array, "k n"], model: Float[Array, "k n"],
               log_background: Float[Array, "k n"], n_sigma, n_sigma_ul, errors: bool) -> dict:
    """Fit ``counts ~ Poisson(background + norm x model)`` for each of ``n`` pixels, ``k``
    entries each (Cash statistic), as Gammapy's ``BrentqFluxEstimator`` defines the result;
    ``log_background`` is ``log(max(background, 1e-25))``."""
    sum_model, sum_counts, sum_background = model.sum(axis=0), counts.sum(axis=0), background.sum(axis=0)
    modelled = model > 0
    ratio_all = jnp.where(modelled, background / jnp.where(modelled, model, 1.0), jnp.inf)
    norm_min_total = -jnp.where(modelled.any(axis=0), jnp.min(ratio_all, axis=0), 1e14)
    # where counts were seen, counts x model / (background + norm x model) = counts / (norm + ratio)
    ratio = jnp.where(counts > 0, ratio_all, jnp.inf)
    # Gammapy's bracket of the root (Stewart 2009), from the smallest background-to-model ratio
    # where counts were seen and its counts (any of equal ratios gives a valid bracket)
    ratio_min = jnp.min(ratio, axis=0)
    counts_min = jnp.max(jnp.where(ratio == ratio_min[None], counts, 0.0), axis=0)
    any_seen = jnp.isfinite(ratio_min)
    ratio_min = jnp.where(any_seen, ratio_min, 1e14)
    counts_min = jnp.where(any_seen, counts_min, 1.0)
    safe_sum = jnp.where(sum_model > 0, sum_model, 1.0)
    low = counts_min / safe_sum - ratio_min
    high = sum_counts / safe_sum - ratio_min
    solvable = (sum_counts > 0) & (sum_model > 0) & any_seen
    stat_null = 2.0 * (sum_background - jnp.sum(counts * log_background, axis=0))

    def derivatives(norm):
        """Half the Cash derivative (Gammapy's root function over 2) and its next two."""
        inverse = 1.0 / (norm + ratio)
        weighted = counts * inverse
        return (sum_model - weighted.sum(axis=0), (weighted * inverse).sum(axis=0),
                -2.0 * (weighted * inverse * inverse).sum(axis=0))

    def halley(state):
        norm, lower, upper, iterations, active = state
        value, slope, curvature = derivatives(norm)
        moving = active & (jnp.abs(value) > _TOLERANCE * jnp.sqrt(slope))
        # f is increasing: the root stays bracketed; Halley's step, or bisection when it leaves
        lower = jnp.where(value < 0, norm, lower)
        upper = jnp.where(value > 0, norm, upper)
        step = 2 * value * slope / (2 * slope**2 - value * curvature)
        proposal = norm - step
        inside = (proposal > lower) & (proposal < upper) & jnp.isfinite(proposal)
        proposal = jnp.where(inside, proposal, 0.5 * (lower + upper))
        return jnp.where(moving, proposal, norm), lower, upper, iterations + moving, moving

    def unfinished(state):
        return jnp.any(state[4]) & (jnp.max(state[3]) < _MAX_ITERATIONS)

    start = jnp.where(solvable, jnp.clip(_linear_guess(counts, background, model), low, high), low)
    state = (start, low, high, jnp.zeros(counts.shape[1], jnp.int32), solvable)
    norm, _, _, niter, _ = jax.lax.while_loop(unfinished, halley, state)
    value, slope, _ = derivatives(norm)
    success = ~solvable | (jnp.abs(value) <= 10 * _TOLERANCE * jnp.sqrt(slope))
    # Gammapy's bracket can reach below the smallest norm that keeps every predicted count
    # positive; a root there is replaced by that norm, and the error taken at it
    norm = jnp.where(solvable, jnp.maximum(norm, norm_min_total), norm_min_total)
    slope = jnp.where(solvable, derivatives(norm)[1], 0.0)  # no counts where the kernel is: Gammapy's infinite error
    sigma = 1.0 / jnp.sqrt(slope)

    def stat_and_slope(norm):
        """Cash at ``norm`` and its derivative, as Gammapy sums it: predicted counts below
        1e-25 count as 1e-25 (below the best fit, bins without counts may go negative)."""
        mu = background + norm * model
        positive = mu > _TRUNCATION
        clipped = jnp.where(positive, mu, _TRUNCATION)
        log_ratio = jnp.where(counts > 0, jnp.log(clipped) - log_background, 0.0)
        stat = stat_null + 2.0 * (jnp.sum(clipped - background, axis=0) - jnp.sum(counts * log_ratio, axis=0))
        return stat, 2.0 * jnp.sum(jnp.where(positive, model - counts * model / clipped, 0.0), axis=0)

    stat = stat_and_slope(norm)[0]
    result = {"norm": norm, "norm_err": n_sigma * sigma, "ts": stat_null - stat, "npred": sum_background + norm * sum_model,
              "npred_excess": norm * sum_model, "stat": stat, "stat_null": stat_null, "niter": niter, "success": success}
    if errors:
        def crossing(level, side):
            """Where the statistic rises by ``level`` on ``side`` (+1 above, -1 below the best
            fit), within Gammapy's 100 errors of it (NaN if it does not rise that far). Below,
            as in Gammapy, bins without counts may be predicted negative: the statistic is
            continued there (linear in them) up to the first bin with counts predicted zero."""
            target = stat + level
            far = norm + side * 100.0 * n_sigma * sigma
            bound = jnp.maximum(far, -ratio_min) if side < 0 else far
            reaches = (stat_and_slope(bound)[0] >= target) & jnp.isfinite(sigma)

            def climb(state):
                x, near, far_end, count, _ = state
                value, slope = stat_and_slope(x)
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

            x0 = norm + side * jnp.sqrt(level) * sigma
            x0 = jnp.where(side * (x0 - bound) >= 0, 0.5 * (norm + bound), x0)
            x, _, _, _, _ = jax.lax.while_loop(far_enough, climb, (x0, norm, bound, 0, jnp.array(True)))
            return jnp.where(reaches, x, jnp.nan)

        result["norm_errn"] = norm - crossing(n_sigma**2, -1)
        result["norm_errp"] = crossing(n_sigma**2, +1) - norm
        result["norm_ul"] = crossing(n_sigma_ul**2, +1)
    return result


def _linear_guess(counts, background, model):
    """The amplitude of the Gaussian approximation (counts - background weighted by the
    background), a start close to the Poisson root."""
    weight = 1.0 / jnp.maximum(background, 1e-3)
    return jnp.sum(model * (counts - background) * weight, axis=0) / jnp.maximum(jnp.sum(model**2 * weight, axis=0), 1e-300)
