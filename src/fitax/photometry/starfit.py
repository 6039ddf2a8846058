"""PSF photometry of many stars at once: free fits (flux, x, y, local background) through
:func:`fitax.fit_batch`, and forced photometry (fixed positions) as a linear solve.

Each star is fitted on its own stamp (``fit_shape x fit_shape`` pixels around the rounded
input position) with a chi2 whose variance is the noise model *predicted from the initial
estimates* (sky + star + read noise), held fixed during the fit: weighting by the data's own
counts would bias fluxes low (low pixels get more weight), and letting the variance follow the
model inside the fit adds a ``log V`` term that biases them too.

Blends are handled by damped iterative neighbour subtraction (see :func:`fit_stars`).

Flags (bits, after photutils' ``PSFPhotometry``):

====  =============================================================================
1     one or more pixels of the stamp are masked (outside the image, non-finite, or
      flagged by ``mask``, e.g. saturated)
2     the fitted centre lies outside the image
4     the fitted flux is <= 0 (fluxes are not bounded, so faint stars stay unbiased)
8     the fit did not converge
16    no covariance: the Hessian is not positive definite, errors are NaN
32    the fitted centre moved more than ``max_shift`` pixels from the input position
      (typically a faint star captured by a bright neighbour)
64    outlier pixels (e.g. cosmic rays) were rejected and the star fitted without them;
      informational: the measurement stands (not part of ``FAILURE_FLAGS``)
128   the star is the fainter of a pair closer than one PSF FWHM in the input catalog:
      unresolvable with free positions; its brighter neighbour's flux includes it
====  =============================================================================
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from astropy.table import Table
from jaxtyping import Float

from .. import programs
from ..batch import fit_batch
from ..parameters import Parameter
from ..stats import chi2
from .psf import GaussianPSF, ImagePSF, MoffatPSF, psf_as_data
from .stamps import batches, check_positions, cut_stamps, initial_estimates, pad_batch, predicted_variance, prf_stamps
from .gridded import GriddedPSF
from .varying import PerStarPSF, VaryingPSF, take_stars

__all__ = ["cut_stamps", "fit_stars", "flag_summary", "FLAG_MEANINGS", "forced_photometry", "render_stars", "FLAG_MASKED", "FLAG_OUTSIDE", "FLAG_NONPOSITIVE_FLUX",
           "FLAG_NOT_CONVERGED", "FLAG_NO_COVARIANCE", "FLAG_MOVED", "FLAG_OUTLIER_PIXELS", "FLAG_UNRESOLVED", "FAILURE_FLAGS"]

FLAG_MASKED = 1
FLAG_OUTSIDE = 2
FLAG_NONPOSITIVE_FLUX = 4
FLAG_NOT_CONVERGED = 8
FLAG_NO_COVARIANCE = 16
FLAG_MOVED = 32
FLAG_OUTLIER_PIXELS = 64
FLAG_UNRESOLVED = 128
CONTAMINATION_SIGMA = 0.05
"""Neighbours that would move a star's flux by more than this many sigma trigger its refits."""
FAILURE_FLAGS = (
    FLAG_MASKED | FLAG_OUTSIDE | FLAG_NONPOSITIVE_FLUX | FLAG_NOT_CONVERGED | FLAG_NO_COVARIANCE | FLAG_MOVED
    | FLAG_UNRESOLVED
)
FLAG_MEANINGS = {
    FLAG_MASKED: "masked pixels in the stamp", FLAG_OUTSIDE: "centre outside the image", FLAG_NONPOSITIVE_FLUX: "flux <= 0",
    FLAG_NOT_CONVERGED: "not converged", FLAG_NO_COVARIANCE: "no covariance", FLAG_MOVED: "centre moved too far",
    FLAG_OUTLIER_PIXELS: "outlier pixels rejected (informational)", FLAG_UNRESOLVED: "unresolved pair",
}
"""Short cause of each flag bit, as the CLI reports them."""


def flag_summary(flags) -> str:
    """How many stars carry each flag, e.g. ``"12 failed (9 masked pixels in the stamp, 3
    unresolved pair); 5 informational (5 outlier pixels rejected (informational))"``.
    A star with several bits counts under each."""
    flags = np.asarray(flags)
    failed = int(np.sum(flags & FAILURE_FLAGS != 0))
    informational = int(np.sum((flags != 0) & (flags & FAILURE_FLAGS == 0)))
    def causes(bits):
        counts = [(int(np.sum(flags & bit != 0)), text) for bit, text in FLAG_MEANINGS.items() if bit & bits]
        return ", ".join(f"{n} {text}" for n, text in counts if n)
    text = f"{failed} failed" + (f" ({causes(FAILURE_FLAGS)})" if failed else "")
    if informational:
        text += f"; {informational} with only informational flags"
    return text


@dataclasses.dataclass(frozen=True)
class _StarObjective:
    """``chi2`` of one star on its stamp; hashable by the (static) stamp size, so every call
    with the same size reuses the compiled fit. The PSF is data (``shared``)."""

    size: int

    def __call__(self, p, data, shared=None):
        stamp, variance, good, *own = data  # a fourth item: this star's own PSF
        psf = own[0] if own else shared
        grid = jnp.arange(self.size, dtype=float)
        prf = psf.prf(grid[None, :] - p["x"].value, grid[:, None] - p["y"].value)
        return chi2(stamp, p["flux"].value * prf + p["bkg"].value, jnp.sqrt(variance), good)


def _prepare(image, x, y, fit_shape, psf, mask):
    """Checked inputs, the PSF as data, stamps and first estimates shared by free and forced
    photometry."""
    image, x, y = check_positions(image, x, y)
    if not isinstance(psf, (MoffatPSF, GaussianPSF, ImagePSF, VaryingPSF, GriddedPSF)):
        raise TypeError(f"psf must be a MoffatPSF, GaussianPSF, ImagePSF, VaryingPSF or GriddedPSF, got {type(psf).__name__}")
    psf = psf.at(x, y) if isinstance(psf, (VaryingPSF, GriddedPSF)) else psf_as_data(psf)
    size = int(fit_shape)
    cut = cut_stamps(image, x, y, size, mask)
    estimates = initial_estimates(cut[0], cut[1], size, psf)
    return image, x, y, size, psf, cut, estimates


def _finish_catalog(table: Table) -> Table:
    table["flux"].unit = table["flux_err"].unit = table["local_bkg"].unit = "electron"
    table.meta["PIXCONV"] = "0-based pixel centres; x = column, y = row"
    return table


def render_stars(shape, flux, x, y, *, psf, half: int = 15) -> np.ndarray:
    """Image of the given stars (no background): each PRF rendered over a ``2 half + 1`` box."""
    flux, x, y = (np.asarray(a, dtype=float) for a in (flux, x, y))
    offsets = np.arange(-half, half + 1)
    ix, iy = np.round(x).astype(int), np.round(y).astype(int)
    psf = psf.at(x, y) if isinstance(psf, (VaryingPSF, GriddedPSF)) else psf_as_data(psf)
    prf = prf_stamps(x - ix + half, y - iy + half, 2 * half + 1, psf)
    rows, cols = np.broadcast_arrays(iy[:, None, None] + offsets[None, :, None], ix[:, None, None] + offsets[None, None, :])
    inside = (rows >= 0) & (rows < shape[0]) & (cols >= 0) & (cols < shape[1])
    flat_index = rows[inside] * shape[1] + cols[inside]
    values = (flux[:, None, None] * prf)[inside]
    return np.bincount(flat_index, weights=values, minlength=shape[0] * shape[1]).reshape(shape)


def _close_pairs(x, y, radius) -> tuple[np.ndarray, np.ndarray]:
    """All ordered pairs ``(i, j)``, ``i != j``, closer than ``radius`` (grid hashing, O(n))."""
    cell = np.floor(np.c_[x, y] / radius).astype(np.int64)
    buckets: dict[tuple[int, int], list[int]] = {}
    for i, key in enumerate(map(tuple, cell)):
        buckets.setdefault(key, []).append(i)
    first, second = [], []
    for i, (cx, cy) in enumerate(cell):
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                for j in buckets.get((cx + dx, cy + dy), ()):
                    if j != i and (x[i] - x[j]) ** 2 + (y[i] - y[j]) ** 2 < radius**2:
                        first.append(i)
                        second.append(j)
    return np.asarray(first, dtype=int), np.asarray(second, dtype=int)


def _neighbour_light(pairs, flux, origin_x, origin_y, x, y, size, psf) -> np.ndarray:
    """Light of each star's neighbours in its stamp, ``(n, size, size)``: the PRF of each
    pair's source star on its target's stamp (no full-image rendering), summed per target."""
    target, source = pairs
    light = np.zeros((len(x), size, size))
    if target.size:
        weight = np.where(np.isfinite(flux[source]), flux[source], 0.0)
        prf = prf_stamps(x[source] - origin_x[target], y[source] - origin_y[target], size, take_stars(psf, source))
        np.add.at(light, target, weight[:, None, None] * prf)
    return light


@dataclasses.dataclass(frozen=True)
class _StarFits:
    """Fitted values and errors (dicts over ``flux, x, y, bkg``), chi2 and solver status."""

    values: dict[str, np.ndarray]
    errors: dict[str, np.ndarray]
    stat: np.ndarray
    status: np.ndarray


def _padding_problem(size: int, psf, read_noise: float) -> dict[str, np.ndarray]:
    """The problem that completes a partial batch: a noise-free star started at its exact
    solution, which converges at its first Hessian (measured: 0 Newton steps, ~1/3 of a real
    star's fit time), where repeating a real star would cost a whole fit."""
    centre, flux, bkg = float(size // 2), 1e4, 1e2
    psf = take_stars(psf, [0])
    prf = prf_stamps(np.array([centre]), np.array([centre]), size, psf)
    own = {"psf": psf.psf} if isinstance(psf, PerStarPSF) else {}
    return own | {
        "stamp": (flux * prf + bkg)[0], "variance": predicted_variance(np.array([flux]), prf, np.array([bkg]), read_noise)[0],
        "good": np.ones((size, size), bool), "flux": np.array(flux), "x": np.array(centre), "y": np.array(centre), "bkg": np.array(bkg),
    }


def _fit_stamps(stamps, good, prf, local_x, local_y, flux0, bkg0, *, size, psf, read_noise, padding) -> _StarFits:
    """Batched fits of ``flux * PRF + bkg`` to each stamp, from the given starts; ``prf``
    holds the stamps' PRFs at the starts (for the noise model). One :func:`fitax.fit_batch`
    call per batch of :func:`~fitax.photometry.stamps.batches`, the last one completed with
    ``padding`` problems, so every pass runs the same two compiled programs.

    No bounds: a flux bound at 0 biases faint stars (photutils does not bound either; flux
    <= 0 is flagged) and bound transforms cost ~40% more time per fit (measured: 7.2 -> 5.1
    Newton steps and 1.48 -> 0.80 s for 5000 stars); a centre that wanders off is flagged
    by the caller instead.
    """
    problems = {"stamp": stamps, "variance": predicted_variance(flux0, prf, bkg0, read_noise), "good": good,
                "flux": flux0, "x": local_x, "y": local_y, "bkg": bkg0}
    own = isinstance(psf, PerStarPSF)
    n = len(stamps)
    names = ("flux", "x", "y", "bkg")
    values, errors = {k: np.empty(n) for k in names}, {k: np.empty(n) for k in names}
    stat, status = np.empty(n), np.empty(n, dtype=int)
    for start, stop, length in batches(n):
        extra = length - (stop - start)
        batch = {k: np.concatenate([np.asarray(v[start:stop], dtype=padding[k].dtype), np.repeat(padding[k][None], extra, axis=0)])
                 for k, v in problems.items()}
        data = (batch["stamp"], batch["variance"], batch["good"])
        if own:
            data += (jax.tree_util.tree_map(lambda a, pad: np.concatenate([np.asarray(a)[start:stop], np.repeat(np.asarray(pad), extra, axis=0)]),
                                            psf.psf, padding["psf"]),)
        # EDM < 1e-4 (chi2 units) leaves every parameter within ~0.01 sigma of the minimum:
        # far below the errors, and ~7% fewer Newton steps than the core's default 1e-6
        result = fit_batch(_StarObjective(size), {k: Parameter(batch[k]) for k in names}, data, shared=None if own else psf, tol=1e-4)
        for k in names:
            values[k][start:stop], errors[k][start:stop] = result.values[k][: stop - start], result.errors[k][: stop - start]
        stat[start:stop], status[start:stop] = result.stat[: stop - start], result.status[: stop - start]
    return _StarFits(values, errors, stat, status)


def _sharp_outliers(residual, noise, threshold: float, sharpness: float = 2.5):
    """Pixels ``threshold`` sigma above the model *and* ``sharpness`` times brighter than the
    mean residual of their four neighbours: sharper than any star (a PSF-wide mismatch, such
    as an imperfectly subtracted blend, has neighbours nearly as bright), i.e. cosmic rays and
    hot pixels. Masking those keeps an unconverged blend from losing its core pixels."""
    padded = np.pad(residual, ((0, 0), (1, 1), (1, 1)))
    around = 0.25 * (padded[:, :-2, 1:-1] + padded[:, 2:, 1:-1] + padded[:, 1:-1, :-2] + padded[:, 1:-1, 2:])
    return (residual > threshold * noise) & (residual > sharpness * np.maximum(around, 0.0))


def fit_stars(
    image: Float[np.ndarray, "ny nx"],
    x: Float[np.ndarray, " n"],
    y: Float[np.ndarray, " n"],
    *,
    psf: MoffatPSF | GaussianPSF | ImagePSF | VaryingPSF | GriddedPSF,
    read_noise: float,
    fit_shape: int = 11,
    mask: np.ndarray | None = None,
    max_shift: float = 1.5,
    neighbour_passes: int = 6,
    outlier_sigma: float = 6.0,
) -> Table:
    """Fit flux, position and local background of every star in one compiled batch.

    Blends: after a first fit of all stars, the stars whose neighbours' light would shift
    their flux by more than ``CONTAMINATION_SIGMA`` (0.05) sigma are fitted again on stamps from which those neighbours'
    fitted models have been subtracted, ``neighbour_passes`` times (damped iterative
    neighbour subtraction; a pair 4.5 pixels apart with a 3:1 flux ratio needs ~6). We chose
    subtraction over fitting groups jointly because groups have variable sizes, which would
    break the one-compiled-batch, static-shape design; at survey densities the isolated
    majority is fitted once and only the contaminated few are refitted.

    Outliers: pixels more than ``outlier_sigma`` above the final model and sharper than a star
    (cosmic rays, which a star fit would otherwise chase) are masked and their stars fitted
    again from the start; those rows get flag 64.

    Args:
        image: calibrated image in electrons.
        x, y: initial positions (0-based pixel centres).
        psf: the PSF (:class:`MoffatPSF`, :class:`GaussianPSF` or an empirical
            :class:`ImagePSF`), e.g. from :func:`fitax.photometry.fit_psf_shape`; or one that
            changes across the image (:class:`~fitax.photometry.varying.VaryingPSF`, a grid of
            ePSFs :class:`~fitax.photometry.gridded.GriddedPSF`): each star is fitted with the
            PSF at its input position.
        read_noise: read noise [electrons] for the noise model.
        fit_shape: stamp size (odd).
        mask: boolean image, True where pixels must be ignored (saturated, bad columns, ...).
        max_shift: how far [pixels] a centre may move from its input position; stars that
            move further are flagged (32) and left out of the neighbour models.
        neighbour_passes: passes of neighbour subtraction (0: none).
        outlier_sigma: threshold of the outlier-pixel rejection (``inf``: none).

    Returns:
        Table with ``id, x, y, x_err, y_err, flux, flux_err, local_bkg, reduced_chi2,
        flags`` (flux in electrons).
    """
    image, x, y, size, psf, (stamps, good, origin_x, origin_y), (bkg0, flux0) = _prepare(image, x, y, fit_shape, psf, mask)
    start_x, start_y = x - origin_x, y - origin_y
    prf0 = prf_stamps(start_x, start_y, size, psf)
    fit = functools.partial(_fit_stamps, size=size, psf=psf, read_noise=read_noise, padding=_padding_problem(size, psf, read_noise))
    result = fit(stamps, good, prf0, start_x, start_y, flux0, bkg0)
    values = {k: np.array(v) for k, v in result.values.items()}
    errors = {k: np.array(v) for k, v in result.errors.items()}
    stat, status = np.array(result.stat), np.array(result.status)
    def moved_too_far(local_x, local_y):
        """Centres more than ``max_shift`` from their input (a faint star captured by a
        neighbour, or lost in the noise)."""
        return (np.abs(local_x - start_x) > max_shift) | (np.abs(local_y - start_y) > max_shift) | ~np.isfinite(local_x + local_y)

    # The fainter star of a pair closer than one FWHM cannot be separated with free
    # positions (the pair trades light and position freely): it is flagged, and neither
    # subtracted nor refitted, so its brighter neighbour measures the blend (photutils fits
    # both in one group and splits the light arbitrarily, unflagged).
    close_i, close_j = _close_pairs(x, y, psf.fwhm)
    fitted = np.where(np.isfinite(values["flux"]), values["flux"], -np.inf)
    unresolved = np.zeros(len(x), bool)
    unresolved[close_i[fitted[close_i] < fitted[close_j]]] = True

    def trusted_flux():
        """Fluxes of the fits fit to subtract: converged, not captured by a neighbour (centre
        moved too far), resolved, finite; 0 for the others."""
        ok = (status == 0) & ~moved_too_far(values["x"], values["y"]) & np.isfinite(values["flux"]) & ~unresolved
        return np.where(ok, values["flux"], 0.0)

    def refit(idx, cleaned, good_idx, from_start):
        """Fit stars ``idx`` again on ``cleaned`` stamps; untrusted stars and ``from_start``
        restart from the first estimates."""
        restart = from_start | (trusted_flux()[idx] == 0)
        start = lambda k, first: np.where(restart, first[idx], values[k][idx])  # noqa: E731
        local_x, local_y = start("x", start_x), start("y", start_y)
        own_psf = take_stars(psf, idx)
        redone = fit(cleaned, good_idx, prf_stamps(local_x, local_y, size, own_psf), local_x, local_y,
                     start("flux", flux0), start("bkg", bkg0), psf=own_psf)
        change = np.abs(redone.values["flux"] - values["flux"][idx])
        for k in values:
            values[k][idx], errors[k][idx] = redone.values[k], redone.errors[k]
        stat[idx], status[idx], good[idx] = redone.stat, redone.status, good_idx
        return change, redone.errors["flux"]

    def light(flux):
        return _neighbour_light(pairs, flux, origin_x, origin_y, values["x"] + origin_x, values["y"] + origin_y, size, psf)

    pairs = _close_pairs(values["x"] + origin_x, values["y"] + origin_y, 1.5 * size)
    # Contamination is judged from all fits, trusted or not: a neighbour captured by this star
    # (moved too far) is not subtracted yet but will be once its refit is trusted.
    # A star needs the neighbour passes when its neighbours' light would move its fitted flux
    # by more than 0.05 sigma: the flux part of a weighted linear fit of that light with the
    # star's own PRF and a background (cheap, exact to first order).
    fitted_flux = np.where(np.isfinite(values["flux"]), np.maximum(values["flux"], 0.0), 0.0)
    variance0 = predicted_variance(flux0, prf0, bkg0, read_noise)  # the first fit's noise model
    weights = np.where(good, 1.0 / variance0, 0.0)
    flux_shift, _, shift_cov, _ = _weighted_linear_fits(light(fitted_flux), weights, prf_stamps(values["x"], values["y"], size, psf))
    contaminated = ~(np.abs(flux_shift) <= CONTAMINATION_SIGMA * np.sqrt(np.abs(shift_cov[:, 0, 0])))
    idx = np.flatnonzero(contaminated & ~unresolved) if neighbour_passes else np.zeros(0, int)
    previous = trusted_flux()
    for _ in range(neighbour_passes if idx.size else 0):
        # Subtracting each star's latest flux is a Jacobi iteration, which oscillates for
        # overlapping pairs (each star alternately takes and gives back the shared light);
        # averaging with the previous estimate (under-relaxation) damps that.
        current = trusted_flux()
        neighbours = light(0.5 * (current + previous))
        previous = current
        change, flux_err = refit(idx, stamps[idx] - neighbours[idx] * good[idx], good[idx], False)
        # Stars whose flux has settled (< 0.05 sigma change) leave the iteration; their
        # neighbours keep being subtracted with the settled values.
        idx = idx[~(change <= 0.05 * np.where(np.isfinite(flux_err), flux_err, 0.0))]
        if idx.size == 0:
            break

    # The noise model was predicted from the first estimates (flux from a sum, PRF centred at
    # the input position); for stars whose own light dominates their central pixel that
    # weighting is visibly off-centre, so they are fitted once more with the noise model of
    # their fit (iteratively reweighted least squares; improves bright-star positions).
    neighbours = light(trusted_flux())
    centre_light = values["flux"] * np.max(prf0, axis=(1, 2))
    bright = np.flatnonzero((centre_light > values["bkg"] + read_noise**2) & (trusted_flux() > 0) & ~unresolved)
    if bright.size:
        refit(bright, stamps[bright] - neighbours[bright] * good[bright], good[bright], False)
        neighbours = light(trusted_flux())
    model = values["flux"][:, None, None] * prf_stamps(values["x"], values["y"], size, psf) + values["bkg"][:, None, None]
    outliers = _sharp_outliers(np.where(good, stamps - neighbours - model, 0.0), np.sqrt(variance0), outlier_sigma)
    has_outliers = outliers.any(axis=(1, 2))
    if has_outliers.any():
        idx = np.flatnonzero(has_outliers)
        refit(idx, (stamps[idx] - neighbours[idx]) * ~outliers[idx], good[idx] & ~outliers[idx], True)

    moved = moved_too_far(values["x"], values["y"])
    values["x"] += origin_x
    values["y"] += origin_y
    ny, nx = image.shape
    flags = np.zeros(len(x), dtype=np.int32)
    flags |= np.where(~(good | outliers).all(axis=(1, 2)), FLAG_MASKED, 0)
    flags |= np.where((values["x"] < -0.5) | (values["x"] > nx - 0.5) | (values["y"] < -0.5) | (values["y"] > ny - 0.5), FLAG_OUTSIDE, 0)
    flags |= np.where(~(values["flux"] > 0), FLAG_NONPOSITIVE_FLUX, 0)
    flags |= np.where(status != 0, FLAG_NOT_CONVERGED, 0)
    flags |= np.where(~np.isfinite(errors["flux"]), FLAG_NO_COVARIANCE, 0)
    flags |= np.where(moved, FLAG_MOVED, 0)
    flags |= np.where(has_outliers, FLAG_OUTLIER_PIXELS, 0)
    flags |= np.where(unresolved, FLAG_UNRESOLVED, 0)
    table = Table({
        "id": np.arange(len(x)),
        "x": values["x"], "y": values["y"],
        "x_err": errors["x"], "y_err": errors["y"],
        "flux": values["flux"], "flux_err": errors["flux"],
        "local_bkg": values["bkg"],
        "reduced_chi2": stat / np.maximum(good.sum(axis=(1, 2)) - 4, 1),
        "flags": flags,
    })
    return _finish_catalog(table)


def _weighted_linear_fit(stamps, weights, prf):
    """Per star: weighted least squares of ``stamp = flux * prf + bkg``; returns
    ``(flux, bkg, covariance, chi2)``."""
    design = jnp.stack([prf, jnp.ones_like(prf)], axis=-1).reshape(prf.shape[0], -1, 2)
    w = weights.reshape(prf.shape[0], -1)
    d = stamps.reshape(prf.shape[0], -1)
    normal = jnp.einsum("npi,np,npj->nij", design, w, design)
    rhs = jnp.einsum("npi,np,np->ni", design, w, d)
    cov = jnp.linalg.inv(normal)
    theta = jnp.einsum("nij,nj->ni", cov, rhs)
    residual = d - jnp.einsum("npi,ni->np", design, theta)
    return theta[:, 0], theta[:, 1], cov, jnp.sum(w * residual**2, axis=1)


_weighted_linear_fit_program = programs.cached(_weighted_linear_fit, name="fitax.photometry.weighted_linear_fit")


def _weighted_linear_fits(stamps, weights, prf) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_weighted_linear_fit` of every star, in :func:`~fitax.photometry.stamps.batches`."""
    n = len(stamps)
    out = (np.empty(n), np.empty(n), np.empty((n, 2, 2)), np.empty(n))
    for start, stop, length in batches(n):
        batch = _weighted_linear_fit_program(*(pad_batch(a[start:stop], length) for a in (stamps, weights, prf)))
        for whole, part in zip(out, batch):
            whole[start:stop] = np.asarray(part)[: stop - start]
    return out


def forced_photometry(
    image: Float[np.ndarray, "ny nx"],
    x: Float[np.ndarray, " n"],
    y: Float[np.ndarray, " n"],
    *,
    psf: MoffatPSF | GaussianPSF | ImagePSF,
    read_noise: float,
    fit_shape: int = 11,
    mask: np.ndarray | None = None,
) -> Table:
    """Flux and local background at fixed positions: one weighted linear solve per star.

    Same noise model and flags as :func:`fit_stars` (bits 2 and 8 cannot occur: nothing moves
    and nothing iterates). Columns: ``id, x, y, flux, flux_err, local_bkg, reduced_chi2, flags``.
    """
    image, x, y, size, psf, (stamps, good, origin_x, origin_y), (bkg0, flux0) = _prepare(image, x, y, fit_shape, psf, mask)
    prf = prf_stamps(x - origin_x, y - origin_y, size, psf)
    weights = np.where(good, 1.0 / predicted_variance(flux0, prf, bkg0, read_noise), 0.0)
    flux, bkg, cov, stat = _weighted_linear_fits(stamps, weights, prf)
    flux_err = np.sqrt(cov[:, 0, 0])
    flags = np.zeros(len(x), dtype=np.int32)
    flags |= np.where(~good.all(axis=(1, 2)), FLAG_MASKED, 0)
    flags |= np.where(flux <= 0, FLAG_NONPOSITIVE_FLUX, 0)
    flags |= np.where(~np.isfinite(flux_err), FLAG_NO_COVARIANCE, 0)
    table = Table({
        "id": np.arange(len(x)), "x": x, "y": y, "flux": flux, "flux_err": flux_err, "local_bkg": bkg,
        "reduced_chi2": stat / np.maximum(good.sum(axis=(1, 2)) - 2, 1), "flags": flags,
    })
    return _finish_catalog(table)
