"""Simulated calibrated CCD images (electrons) with stars of known flux and position."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from astropy.table import Table

from .psf import MoffatPSF, moffat_prf
from .varying import VaryingPSF

__all__ = ["simulate_image", "simulate_raw_frames", "simulate_stamps", "stamp_model"]


def _power_law_fluxes(rng, n: int, low: float, high: float, slope: float) -> np.ndarray:
    """Draw from ``p(F) ~ F^-slope`` on ``[low, high]`` by inverting its CDF."""
    k = 1.0 - slope
    u = rng.uniform(size=n)
    return (low**k + u * (high**k - low**k)) ** (1.0 / k)


def simulate_image(
    shape: tuple[int, int] = (512, 512),
    n_stars: int = 200,
    *,
    gamma: float = 2.45,
    alpha: float = 3.0,
    sky: float = 200.0,
    read_noise: float = 10.0,
    flux_range: tuple[float, float] = (300.0, 1e7),
    flux_slope: float = 1.75,
    saturation: float | None = None,
    cosmic_rays: int = 0,
    edge: int = 5,
    seed: int = 0,
    psf=None,
) -> tuple[np.ndarray, Table]:
    """A calibrated image in electrons: Moffat stars on a flat sky, Poisson + read noise.

    Returns ``(image, truth)`` where ``truth`` has columns ``id``, ``x``, ``y`` (0-based
    pixel centres) and ``flux`` [e-]. Stars are drawn from ``p(F) ~ F^-flux_slope`` at
    uniform positions at least ``edge`` pixels inside the image; each is rendered over a
    41 x 41 box (the PRF outside it is < 1e-5 of the flux). ``saturation`` clips pixels;
    ``cosmic_rays`` short tracks (2-4 pixels of 500-5000 e-) are added after the noise;
    ``psf`` (a :class:`MoffatPSF`, :class:`GaussianPSF` or a spatially varying
    :class:`~fitax.photometry.varying.VaryingPSF`) overrides ``gamma, alpha``.
    """
    psf = MoffatPSF(gamma, alpha) if psf is None else psf
    rng = np.random.default_rng(seed)
    ny, nx = shape
    x = rng.uniform(edge, nx - 1 - edge, n_stars)
    y = rng.uniform(edge, ny - 1 - edge, n_stars)
    flux = _power_law_fluxes(rng, n_stars, *flux_range, flux_slope)

    half = 20
    offsets = np.arange(-half, half + 1)
    ix, iy = np.round(x).astype(int), np.round(y).astype(int)
    cols = ix[:, None, None] + offsets[None, None, :]
    rows = iy[:, None, None] + offsets[None, :, None]
    if isinstance(psf, VaryingPSF):  # each star the PSF at its position
        stars = psf.at(x, y)
        prf = jax.vmap(lambda cx, cy, p: p.prf(offsets[None, :] - cx, offsets[:, None] - cy), in_axes=(0, 0, stars.in_axes()))(
            jnp.asarray(x - ix), jnp.asarray(y - iy), stars.psf)
    else:
        prf = jax.vmap(lambda cx, cy: psf.prf(offsets[None, :] - cx, offsets[:, None] - cy))(
            jnp.asarray(x - ix), jnp.asarray(y - iy)
        )
    contribution = flux[:, None, None] * np.asarray(prf)
    rows_b, cols_b = np.broadcast_arrays(rows, cols)
    inside = (rows_b >= 0) & (rows_b < ny) & (cols_b >= 0) & (cols_b < nx)
    expected = np.full(shape, float(sky))
    np.add.at(expected, (rows_b[inside], cols_b[inside]), contribution[inside])

    image = rng.poisson(expected).astype(float) + rng.normal(0.0, read_noise, shape)
    for _ in range(cosmic_rays):
        row, col = rng.integers(0, ny), rng.integers(0, nx)
        length, vertical = rng.integers(2, 5), rng.random() < 0.5
        rr = np.clip(row + (np.arange(length) if vertical else 0), 0, ny - 1)
        cc = np.clip(col + (0 if vertical else np.arange(length)), 0, nx - 1)
        image[rr, cc] += rng.uniform(500, 5000, length)
    if saturation is not None:
        image = np.minimum(image, saturation)
    truth = Table({"id": np.arange(n_stars), "x": x, "y": y, "flux": flux})
    truth["flux"].unit = "electron"
    return image, truth


def stamp_model(flux, x, y, background, size: int, gamma: float = 2.45, alpha: float = 3.0):
    """One star on a ``size x size`` stamp: ``flux`` x Moffat PRF centred at stamp-local
    ``(x, y)`` (0-based pixel centres) + ``background``."""
    grid = jnp.arange(size, dtype=float)
    return flux * moffat_prf(grid[None, :] - x, grid[:, None] - y, gamma, alpha) + background


def simulate_stamps(
    n: int, size: int = 15, *, gamma: float = 2.45, alpha: float = 3.0, read_noise: float = 10.0, seed: int = 0
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """``n`` single-star stamps with Poisson + read noise; returns ``(stamps, truth, variance)``.

    Fluxes are log-uniform on 1e3-1e5 electrons, centres within 1 pixel of the stamp centre,
    background 10 electrons per pixel; ``variance`` is the noise model (expected electrons
    plus read noise squared).
    """
    rng = np.random.default_rng(seed)
    truth = {
        "flux": 10 ** rng.uniform(3, 5, n),
        "x": (size - 1) / 2 + rng.uniform(-1, 1, n),
        "y": (size - 1) / 2 + rng.uniform(-1, 1, n),
        "bkg": np.full(n, 10.0),
    }
    expected = np.asarray(
        jax.vmap(lambda f, x, y, b: stamp_model(f, x, y, b, size, gamma, alpha))(*(jnp.asarray(truth[k]) for k in ("flux", "x", "y", "bkg")))
    )
    stamps = rng.poisson(expected) + rng.normal(0, read_noise, expected.shape)
    return stamps, truth, expected + read_noise**2


def simulate_raw_frames(
    folder,
    shape: tuple[int, int] = (600, 640),
    n_stars: int = 300,
    *,
    n_bias: int = 5,
    n_flat: int = 5,
    gain: float = 6.2,
    read_noise: float = 10.0,
    bias_level: float = 1000.0,
    flat_level: float = 30000.0,
    magzp: float = 26.0,
    cosmic_rays: int = 20,
    flux_range: tuple[float, float] = (300.0, 1e7),
    seed: int = 0,
    psf=None,
) -> dict:
    """Write a ZTF-like set of raw frames [ADU, uint16] to ``folder``: a science frame with
    a celestial WCS, ``GAIN``, ``READNOI``, ``SATURATE`` and ``MAGZP``, ``n_bias`` bias frames
    (bias level with a column pattern) and ``n_flat`` flat frames (vignetting and 0.5% pixel
    response). The science image has stars, sky, Poisson and read noise, cosmic rays and
    saturation at 65535 ADU.

    Returns ``{"science": path, "bias": [paths], "flat": [paths], "truth": Table}`` where the
    truth fluxes are in the electrons a calibration with a median-normalised master flat
    yields (the true flux times the flat's median).
    """
    from pathlib import Path

    from astropy.io import fits

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ny, nx = shape
    columns = bias_level + 3.0 * np.sin(np.arange(nx) / 7.0)
    yy, xx = np.mgrid[:ny, :nx]
    flat = 1.0 - 0.1 * (((xx - nx / 2) / nx) ** 2 + ((yy - ny / 2) / ny) ** 2) + rng.normal(0, 0.005, shape)

    def write(name, adu, **header):
        path = folder / name
        hdu = fits.PrimaryHDU(np.clip(np.round(adu), 0, 65535).astype(np.uint16))
        hdu.header.update(header)
        hdu.writeto(path, overwrite=True)
        return path

    biases = [write(f"bias_{i:02d}.fits", columns + rng.normal(0, read_noise / gain, shape)) for i in range(n_bias)]
    flats = [
        write(f"flat_{i:02d}.fits", columns + rng.poisson(flat_level * flat) / gain + rng.normal(0, read_noise / gain, shape))
        for i in range(n_flat)
    ]
    image, truth = simulate_image(shape, n_stars, read_noise=read_noise, cosmic_rays=cosmic_rays, flux_range=flux_range, seed=seed + 1, psf=psf)
    wcs = {"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRPIX1": nx / 2 + 0.5, "CRPIX2": ny / 2 + 0.5,
           "CRVAL1": 150.0, "CRVAL2": 2.0, "CDELT1": -1.0 / 3600, "CDELT2": 1.0 / 3600, "CUNIT1": "deg", "CUNIT2": "deg"}
    science = write("science.fits", columns + image * flat / gain, GAIN=gain, READNOI=read_noise, SATURATE=65535.0,
                    MAGZP=magzp, BUNIT="adu", **wcs)
    truth["flux"] *= np.median(flat)
    return {"science": science, "bias": biases, "flat": flats, "truth": truth}
