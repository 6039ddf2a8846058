"""Toy problems with known truth, shared by the demo, the tests and the benchmarks.

:func:`blob_cube` is a small gamma-ray-like analysis: a counts cube (energy x y x x) holding
``K`` sources with power-law spectra and Gaussian shapes on a background template, fitted with
the Cash statistic. Its amplitudes are fluxes (~1e-11 cm-2 s-1 TeV-1) next to O(1) indices
and pixel positions, the kind of scale mix that trips up naive optimisers.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .parameters import Parameter
from .stats import cash

__all__ = ["Blob", "BlobCube", "BlobCubeData", "blob_cube", "blob_cube_npred", "blob_cube_stat"]

EXPOSURE = 5e13  # cm2 s: a 1e-11 cm-2 s-1 TeV-1 source then gives ~1e3 counts


class Blob(eqx.Module):
    """One source: power-law spectrum times a circular Gaussian (pixel units)."""

    amplitude: Parameter  # cm-2 s-1 TeV-1 at 1 TeV
    index: Parameter
    x: Parameter  # pixel column of the centre
    y: Parameter  # pixel row of the centre
    sigma: Parameter  # pixels


class BlobCube(eqx.Module):
    """The model: ``K`` blobs and a background normalisation."""

    blobs: tuple[Blob, ...]
    bkg_norm: Parameter


class BlobCubeData(eqx.Module):
    """Observed counts and the fixed inputs of the model."""

    counts: Float[Array, "n_e n_y n_x"]
    background: Float[Array, "n_e n_y n_x"]
    energy_edges: Float[Array, " n_e_plus_1"]  # TeV


def _pixel_profile(centre: Float[Array, " k"], sigma: Float[Array, " k"], n: int) -> Float[Array, "k n"]:
    """Fraction of a 1-d Gaussian falling in each pixel ``[i - 0.5, i + 0.5]``, exactly (erf)."""
    edges = jnp.arange(n + 1) - 0.5
    cdf = jax.scipy.special.ndtr((edges[None, :] - centre[:, None]) / sigma[:, None])
    return jnp.diff(cdf, axis=1)


def _powerlaw_bin_integral(index: Float[Array, " k"], edges: Float[Array, " e1"]) -> Float[Array, "k e"]:
    """Integral of ``E**-index`` over each energy bin (analytic, with the index = 1 limit)."""
    g = 1.0 - index[:, None]
    log_e = jnp.log(edges)[None, :]
    near_one = jnp.abs(g) < 1e-8
    safe_g = jnp.where(near_one, 1.0, g)
    antiderivative = jnp.where(near_one, log_e, jnp.exp(safe_g * log_e) / safe_g)
    return jnp.diff(antiderivative, axis=1)


def blob_cube_npred(model: BlobCube, data: BlobCubeData) -> Float[Array, "n_e n_y n_x"]:
    """Predicted counts. Sources are separable (spectrum x row profile x column profile), so
    the sum over sources is one contraction instead of ``K`` full cubes."""
    n_e, n_y, n_x = data.counts.shape
    stack = lambda field: jnp.stack([getattr(b, field).value for b in model.blobs])  # noqa: E731
    amplitude, index, x, y, sigma = (stack(f) for f in ("amplitude", "index", "x", "y", "sigma"))
    spectra = EXPOSURE * amplitude[:, None] * _powerlaw_bin_integral(index, data.energy_edges)
    rows = _pixel_profile(y, sigma, n_y)
    cols = _pixel_profile(x, sigma, n_x)
    sources = jnp.einsum("ke,ky,kx->eyx", spectra, rows, cols)
    return model.bkg_norm.value * data.background + sources


def blob_cube_stat(model: BlobCube, data: BlobCubeData) -> Float[Array, ""]:
    """Cash statistic of the model given the data (the objective to minimise)."""
    return cash(data.counts, blob_cube_npred(model, data))


def _make_model(amplitude, index, x, y, sigma, bkg_norm, n_pix) -> BlobCube:
    blobs = tuple(
        Blob(
            amplitude=Parameter(a, min=0.0, unit="cm-2 s-1 TeV-1"),
            index=Parameter(g),
            x=Parameter(xx, min=-0.5, max=n_pix - 0.5, unit="pix"),
            y=Parameter(yy, min=-0.5, max=n_pix - 0.5, unit="pix"),
            sigma=Parameter(s, min=0.3, unit="pix"),
        )
        for a, g, xx, yy, s in zip(amplitude, index, x, y, sigma)
    )
    return BlobCube(blobs=blobs, bkg_norm=Parameter(bkg_norm, min=0.0))


def _separated_positions(rng, n: int, low: float, high: float, min_separation: float) -> np.ndarray:
    positions = np.empty((0, 2))
    for _ in range(100 * n):
        if len(positions) == n:
            return positions
        candidate = rng.uniform(low, high, 2)
        if np.all(np.hypot(*(positions - candidate).T) >= min_separation):
            positions = np.vstack([positions, candidate])
    raise ValueError(f"cannot place {n} sources {min_separation} pixels apart in [{low}, {high}]^2")


def blob_cube(
    n_sources: int, *, n_energy: int = 20, n_pix: int = 100, min_separation: float = 8.0, seed: int = 0
) -> tuple[BlobCube, BlobCube, BlobCubeData]:
    """Simulate a counts cube; returns ``(truth, start, data)``.

    Sources have amplitudes 0.5-5e-11 cm-2 s-1 TeV-1 (a few hundred to a few thousand
    counts), indices 1.8-3, widths 1.5-4 pixels, at least 8 pixels from the edges and
    ``min_separation`` pixels from each other (0 allows blends, whose nearly degenerate
    parameters make numerical Hessians, e.g. Minuit's HESSE, unreliable). The start
    model is the truth perturbed by typical "first guess" errors: amplitudes x0.6-1.5, index
    +-0.3, positions +-1 pixel, widths x0.7-1.4, background norm 1.2.
    """
    rng = np.random.default_rng(seed)
    k = n_sources
    positions = _separated_positions(rng, k, 8, n_pix - 8, min_separation)
    truth_values = dict(
        amplitude=10 ** rng.uniform(np.log10(5e-12), np.log10(5e-11), k),
        index=rng.uniform(1.8, 3.0, k),
        x=positions[:, 0],
        y=positions[:, 1],
        sigma=rng.uniform(1.5, 4.0, k),
    )
    start_values = dict(
        amplitude=truth_values["amplitude"] * rng.uniform(0.6, 1.5, k),
        index=truth_values["index"] + rng.uniform(-0.3, 0.3, k),
        x=truth_values["x"] + rng.uniform(-1, 1, k),
        y=truth_values["y"] + rng.uniform(-1, 1, k),
        sigma=truth_values["sigma"] * rng.uniform(0.7, 1.4, k),
    )
    truth = _make_model(**truth_values, bkg_norm=1.0, n_pix=n_pix)
    start = _make_model(**start_values, bkg_norm=1.2, n_pix=n_pix)

    energy_edges = np.geomspace(0.5, 50.0, n_energy + 1)
    centres = np.sqrt(energy_edges[:-1] * energy_edges[1:])
    yy, xx = np.mgrid[:n_pix, :n_pix]
    spatial = 1.0 + 0.3 * (xx / n_pix) - 0.2 * (yy / n_pix)
    spectrum = 2.0 * centres**-1.5 * np.diff(energy_edges)
    background = spectrum[:, None, None] * spatial[None] / spatial.mean()
    template = BlobCubeData(
        counts=jnp.zeros((n_energy, n_pix, n_pix)),
        background=jnp.asarray(background),
        energy_edges=jnp.asarray(energy_edges),
    )
    # One compiled program rather than ~40 eagerly dispatched operations, each lowered anew
    # in every process: this is most of a re-run's set-up time.
    expected = np.asarray(jax.jit(blob_cube_npred)(truth, template))
    counts = rng.poisson(expected).astype(float)
    data = BlobCubeData(counts=jnp.asarray(counts), background=template.background, energy_edges=template.energy_edges)
    return truth, start, data

