"""One calibrated image in, one catalog out: detection (or a given catalog), PSF-shape fit,
batched star fits, sky coordinates and magnitudes. The CLI (``fitax phot run``) and the
demo call :func:`process_image`; it is also the unit of work to spread over processes or
machines (see the README's Dask recipe).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import numpy as np
from astropy.io import fits
from astropy.table import Table

from ..io import open_fits
from .detect import detect_stars
from .psfshape import PSFShape, fit_psf_shape, select_psf_stars
from .starfit import fit_stars, render_stars

__all__ = ["ImageData", "read_calibrated", "process_image", "photometry_columns"]

POGSON = 2.5 / np.log(10)
# FITS keywords (<= 8 characters, distinct) for the fitted PSF shape in catalog headers
_PSF_KEYWORDS = {"gamma": "PSFGAMMA", "alpha": "PSFALPHA", "sigma_x": "PSFSIGX", "sigma_y": "PSFSIGY", "rho": "PSFRHO"}


@dataclasses.dataclass(frozen=True)
class ImageData:
    """A calibrated image [e-] with its mask, header and the read noise it needs."""

    image: np.ndarray
    mask: np.ndarray
    header: fits.Header
    read_noise: float
    name: str = "image"


def read_calibrated(path, read_noise: float | None = None) -> ImageData:
    """Read a calibrated image (written by ``fitax phot calibrate`` or any image in
    electrons with ``READNOI`` in its header) and its ``MASK`` extension if present."""
    from .io import read_image

    path = Path(path)
    image, header = read_image(path)
    mask = np.zeros(image.shape, dtype=bool)
    with open_fits(path) as hdul:
        if "MASK" in hdul:
            mask = np.asarray(hdul["MASK"].data, dtype=bool)
            if mask.shape != image.shape:
                raise ValueError(f"{path}: MASK extension has shape {mask.shape}, the image {image.shape}")
    if header.get("GAIN", 1.0) != 1.0 or str(header.get("BUNIT", "electron")).lower() not in ("electron", "electrons", "e-"):
        raise ValueError(
            f"{path}: expected a calibrated image in electrons (GAIN = 1, BUNIT = 'electron'), got GAIN = "
            f"{header.get('GAIN')}, BUNIT = {header.get('BUNIT')!r}; run 'fitax phot calibrate' first"
        )
    if read_noise is None:
        if "READNOI" not in header:
            raise ValueError(f"{path}: header has no READNOI (read noise, e-); pass read_noise (CLI: --read-noise)")
        read_noise = float(header["READNOI"])
    mask |= ~np.isfinite(image)
    return ImageData(image=np.where(mask, 0.0, image), mask=mask, header=header, read_noise=float(read_noise), name=str(path))


def _celestial_wcs(header: fits.Header):
    """The header's celestial WCS, or None. astropy.wcs is imported only for a header with
    axis types: it brings astropy.coordinates, most of a second of start-up."""
    if not any(key.startswith("CTYPE") for key in header):
        return None
    from astropy.wcs import WCS

    with np.errstate(all="ignore"):
        wcs = WCS(header)
    return wcs.celestial if wcs.has_celestial else None


def photometry_columns(catalog: Table, header: fits.Header) -> Table:
    """Add ``ra, dec`` [deg] when the header has a celestial WCS and ``mag, mag_err`` when it
    has ``MAGZP`` (``mag = MAGZP - 2.5 log10(flux)``, NaN for flux <= 0)."""
    wcs = _celestial_wcs(header)
    if wcs is not None:
        ra, dec = wcs.pixel_to_world_values(np.asarray(catalog["x"]), np.asarray(catalog["y"]))  # 0-based
        catalog["ra"], catalog["dec"] = ra, dec
        catalog["ra"].unit = catalog["dec"].unit = "deg"
    if "MAGZP" in header:
        flux, error = np.asarray(catalog["flux"]), np.asarray(catalog["flux_err"])
        positive = flux > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            catalog["mag"] = np.where(positive, float(header["MAGZP"]) - 2.5 * np.log10(np.where(positive, flux, 1.0)), np.nan)
            catalog["mag_err"] = np.where(positive, POGSON * error / flux, np.nan)
        catalog["mag"].unit = catalog["mag_err"].unit = "mag"
        catalog.meta["MAGZP"] = float(header["MAGZP"])
    return catalog


def process_image(
    data: ImageData,
    *,
    positions: tuple[np.ndarray, np.ndarray] | None = None,
    psf: Literal["moffat", "gaussian"] = "moffat",
    fit_shape: int = 11,
    threshold: float = 5.0,
    fwhm0: float = 3.0,
) -> tuple[Table, PSFShape]:
    """Catalog of one image: stars from ``positions`` (x, y, 0-based) or detected at
    ``threshold`` sigma, PSF fitted on the brightest isolated ones, then every star fitted.

    Returns ``(catalog, psf_shape)``; the catalog's meta records the PSF and the detection.
    """
    image, mask = data.image, data.mask
    if positions is None:
        found = detect_stars(image, fwhm=fwhm0, read_noise=data.read_noise, threshold=threshold, mask=mask)
        if len(found) < 3:
            raise ValueError(f"{data.name}: only {len(found)} stars detected at {threshold} sigma; need at least 3")
        x, y = np.asarray(found["x"]), np.asarray(found["y"])
    else:
        x, y = (np.asarray(a, dtype=float) for a in positions)
    chosen = select_psf_stars(image, x, y, saturation_mask=mask)
    # the detection FWHM guess only seeds the shape fit; a second detection pass is not needed
    shape = fit_psf_shape(image, x[chosen], y[chosen], read_noise=data.read_noise, kind=psf, mask=mask, fwhm0=fwhm0)
    catalog = fit_stars(image, x, y, psf=shape.psf, read_noise=data.read_noise, fit_shape=fit_shape, mask=mask)
    catalog = photometry_columns(catalog, data.header)
    catalog.meta.update(
        {"IMAGE": Path(data.name).name, "PSFKIND": psf, "PSFFWHM": round(shape.fwhm, 4),
         **{_PSF_KEYWORDS[name]: value for name, value in shape.values.items()},
         "DETECT": "catalog" if positions is not None else f"matched filter, {threshold} sigma"}
    )
    return catalog, shape


def residual_image(data: ImageData, catalog: Table, psf) -> np.ndarray:
    """Image minus the fitted stars (each star's local background is not subtracted)."""
    ok = np.isfinite(np.asarray(catalog["flux"]))
    stars = render_stars(data.image.shape, np.asarray(catalog["flux"])[ok], np.asarray(catalog["x"])[ok], np.asarray(catalog["y"])[ok], psf=psf)
    return data.image - stars
