"""Stamps around stars, shared by the star fits (:mod:`.starfit`) and the PSF-shape fit
(:mod:`.psfshape`): checked positions, stamp cutting, first estimates, the noise model, PRFs
on stamps, and the batches every compiled program here runs on.

Every program runs on batches of :data:`BATCHES` stars (full batches of 256, the rest in
batches of 32, the last one padded), so an image, and every later image of any star count,
reuses the same few programs: each traced once per process, and not at all once it is in
the program cache (:mod:`fitax.programs`). Before, each batch size and each refit pass was a
new program (9 traces of the Newton loop, ~10 s of a 17-19 s re-run on a 5000-star
quadrant).
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np

from .. import programs
from .varying import PerStarPSF

__all__ = ["BATCHES", "batches", "pad_batch", "check_positions", "cut_stamps", "initial_estimates", "predicted_variance",
           "prf_boxes", "prf_stamps"]

BATCHES = (256, 32)
"""Stars per compiled call: full batches of the first size, the rest in batches of the
second. 256 makes a 5000-star image 20 calls (dispatch is ~1% of the fit time); 32 bounds the
padding of a refit pass of a few stars to 31 problems (a refit of 10 stars padded to 256
would cost ~80 stars' fits)."""


def batches(n: int) -> list[tuple[int, int, int]]:
    """``(start, stop, size)`` of the batches covering ``n`` items (see :data:`BATCHES`)."""
    large, small = BATCHES
    full = n - n % large
    return ([(start, start + large, large) for start in range(0, full, large)]
            + [(start, min(start + small, n), small) for start in range(full, n, small)])


def pad_batch(a: np.ndarray, length: int) -> np.ndarray:
    """``a`` (leading axis <= ``length``) completed to ``length`` by repeating its last row."""
    a = np.asarray(a)
    return np.concatenate([a, np.repeat(a[-1:], length - len(a), axis=0)]) if len(a) < length else a


def check_positions(image, x, y) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``image`` as a 2-d float array and ``x, y`` as 1-d arrays of the same length inside it
    (0-based pixel centres); a clear error otherwise."""
    image = np.asarray(image, dtype=float)
    if image.ndim != 2:
        raise ValueError(f"image must be 2-d, got shape {image.shape}")
    x, y = np.atleast_1d(np.asarray(x, dtype=float)), np.atleast_1d(np.asarray(y, dtype=float))
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same length, got {x.shape} and {y.shape}")
    ny, nx = image.shape
    outside = ~((x >= -0.5) & (x <= nx - 0.5) & (y >= -0.5) & (y <= ny - 0.5) & np.isfinite(x) & np.isfinite(y))
    if np.any(outside):
        i = int(np.flatnonzero(outside)[0])
        raise ValueError(
            f"{outside.sum()} catalog position(s) lie outside the {nx}x{ny} image, e.g. row {i}: "
            f"x={x[i]:.2f}, y={y[i]:.2f} (0-based pixel centres)"
        )
    return image, x, y


def cut_stamps(image: np.ndarray, x: np.ndarray, y: np.ndarray, size: int, mask: np.ndarray | None = None):
    """Stamps of ``size x size`` pixels centred on the rounded positions (host-side gather).

    Returns ``(stamps, good, origin_x, origin_y)``: pixels outside the image, non-finite or
    masked are 0 in ``stamps`` and False in ``good``; ``origin_*`` is the image coordinate
    of each stamp's pixel ``(0, 0)``.
    """
    if size < 3 or size % 2 == 0:
        raise ValueError(f"fit_shape must be an odd number >= 3, got {size}")
    ny, nx = image.shape
    half = size // 2
    origin_x = np.round(x).astype(int) - half
    origin_y = np.round(y).astype(int) - half
    cols = origin_x[:, None, None] + np.arange(size)[None, None, :]
    rows = origin_y[:, None, None] + np.arange(size)[None, :, None]
    rows, cols = np.broadcast_arrays(rows, cols)
    inside = (rows >= 0) & (rows < ny) & (cols >= 0) & (cols < nx)
    safe_rows, safe_cols = np.clip(rows, 0, ny - 1), np.clip(cols, 0, nx - 1)
    values = image[safe_rows, safe_cols]
    good = inside & np.isfinite(values)
    if mask is not None:
        good &= ~mask[safe_rows, safe_cols]
    return np.where(good, values, 0.0), good, origin_x, origin_y


def prf_boxes(centre_x, centre_y, psf, size: int):
    """PRFs on ``size x size`` boxes of stars at ``(centre_x, centre_y)`` relative to each
    box's middle pixel; pure, for use inside traced code."""
    offsets = jnp.arange(size, dtype=float) - size // 2
    if isinstance(psf, PerStarPSF):  # each star its own PSF
        return jax.vmap(lambda cx, cy, p: p.prf(offsets[None, :] - cx, offsets[:, None] - cy), in_axes=(0, 0, psf.in_axes()))(
            centre_x, centre_y, psf.psf)
    return jax.vmap(lambda cx, cy: psf.prf(offsets[None, :] - cx, offsets[:, None] - cy))(centre_x, centre_y)


_prf_boxes_program = programs.cached(prf_boxes, name="fitax.photometry.prf_boxes")


def prf_stamps(local_x, local_y, size: int, psf) -> np.ndarray:
    """PRFs on ``size x size`` stamps for stamp-local centres (host arrays in and out),
    computed in :func:`batches`. ``psf`` should come from
    :func:`fitax.photometry.psf.psf_as_data` so its values are data, not program keys."""
    centre = size // 2
    local_x, local_y = np.asarray(local_x, dtype=float) - centre, np.asarray(local_y, dtype=float) - centre
    out = np.empty((len(local_x), size, size))
    for start, stop, length in batches(len(local_x)):
        batch_psf = psf
        if isinstance(psf, PerStarPSF):
            batch_psf = PerStarPSF(jax.tree_util.tree_map(lambda a: pad_batch(np.asarray(a)[start:stop], length), psf.psf))
        boxes = _prf_boxes_program(pad_batch(local_x[start:stop], length), pad_batch(local_y[start:stop], length), batch_psf, size)
        out[start:stop] = np.asarray(boxes)[: stop - start]
    return out


def initial_estimates(stamps, good, size: int, psf) -> tuple[np.ndarray, np.ndarray]:
    """Local background (median of the stamp border) and flux (background-subtracted sum
    over the PRF's enclosed fraction), per stamp."""
    border = np.zeros((size, size), dtype=bool)
    border[[0, -1], :] = border[:, [0, -1]] = True
    border_values = np.where(good & border, stamps, np.nan)
    with warnings.catch_warnings():  # a fully masked stamp has no border: flagged later
        warnings.simplefilter("ignore", RuntimeWarning)
        bkg = np.nanmedian(border_values.reshape(len(stamps), -1), axis=1)
    bkg = np.where(np.isfinite(bkg), bkg, 0.0)
    if isinstance(psf, PerStarPSF):
        enclosed = prf_stamps(np.full(len(stamps), size // 2), np.full(len(stamps), size // 2), size, psf).sum(axis=(1, 2))
    else:
        enclosed = float(prf_stamps(np.array([size // 2]), np.array([size // 2]), size, psf).sum())
    flux = np.sum(np.where(good, stamps - bkg[:, None, None], 0.0), axis=(1, 2)) / enclosed
    return bkg, np.maximum(flux, 1.0)


def predicted_variance(flux, prf, bkg, read_noise) -> np.ndarray:
    """Noise model from the initial estimates: expected electrons + read noise squared."""
    expected = flux[:, None, None] * prf + bkg[:, None, None]
    return np.maximum(expected, 0.0) + read_noise**2
