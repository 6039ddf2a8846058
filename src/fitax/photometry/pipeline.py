"""One calibrated image in, one catalog out: detection (or a given catalog), PSF-shape fit,
batched star fits, sky coordinates and magnitudes. The CLI (``fitax phot run``) and the
demo call :func:`process_image`; it is also the unit of work to spread over processes or
machines (see the README's Dask recipe).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Literal

import numpy as np
from astropy.io import fits
from astropy.table import Table

from .detect import detect_stars
from .gridded import GriddedPSF
from .io import celestial_wcs
from .psfshape import PSFShape, choose_psf_degree, fit_psf_shape, fit_varying_psf_shape, select_psf_stars
from .sources import carry_input_columns, source_positions
from .aperture import APER_OFF_IMAGE
from .starfit import FLAG_OUTSIDE, fit_stars, render_stars
from .zeropoint import calibrate_catalog, checked_matches, instrumental_magnitudes

__all__ = ["ImageData", "read_calibrated", "process_image", "photometry_columns", "add_apertures", "STAGE_KEYWORDS"]

# FITS keywords (<= 8 characters, distinct) for the fitted PSF shape in catalog headers
_PSF_KEYWORDS = {"gamma": "PSFGAMMA", "alpha": "PSFALPHA", "sigma_x": "PSFSIGX", "sigma_y": "PSFSIGY", "rho": "PSFRHO"}


@dataclasses.dataclass(frozen=True)
class ImageData:
    """A calibrated image [e-] with its mask, header and the read noise it needs.

    ``saturation`` is the level [e-] at and above which pixels were masked (the header's
    ``SATURATE``), ``mask_origin`` says where the rest of the mask came from; ``gain`` [e-/DN]
    is what an image in DN was multiplied by when read (1 for an image in electrons).
    """

    image: np.ndarray
    mask: np.ndarray
    header: fits.Header
    read_noise: float
    name: str = "image"
    saturation: float | None = None
    n_saturated: int = 0
    mask_origin: str = "none"
    gain: float = 1.0


_ELECTRONS = ("electron", "electrons", "e-", "e")


def _gain_to_electrons(path, header: fits.Header) -> float:
    """The factor from the image's units to electrons: 1 for an image in electrons
    (``BUNIT`` electron; or no ``BUNIT`` and no ``GAIN`` other than 1), ``GAIN`` [e-/DN] for a
    calibrated image in data numbers (``BUNIT = 'DN'``, as ZTF's science images). Anything else
    is an error, as guessing would scale every flux: a ``GAIN`` other than 1 without ``BUNIT``
    (detector gain recorded on an image in electrons, or an image in DN?), and ``ADU`` or
    ``counts``, which raw frames carry (``fitax phot calibrate`` makes them electrons)."""
    unit = str(header.get("BUNIT", "")).strip().lower()
    try:
        gain = float(header.get("GAIN", 1.0))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: header GAIN = {header['GAIN']!r} is not a number") from error
    if unit in _ELECTRONS or (not unit and gain == 1.0):
        return 1.0
    if unit == "dn":
        if not gain > 0:
            raise ValueError(f"{path}: the image is in {header['BUNIT']!r} but its header GAIN = {header.get('GAIN')!r} [e-/DN] is not positive")
        return gain
    if not unit:
        raise ValueError(f"{path}: header GAIN = {gain:g} but no BUNIT: is the image in electrons or in DN? Set BUNIT "
                         "('electron' or 'DN'), or run 'fitax phot calibrate' first")
    raise ValueError(f"{path}: BUNIT = {header['BUNIT']!r}; expected a calibrated image in electrons ('electron') or in DN "
                     "('DN', with GAIN [e-/DN]); for a raw frame run 'fitax phot calibrate' first")


def read_calibrated(path, read_noise: float | None = None, *, mask_path=None, bad_bits: int | None = None) -> ImageData:
    """Read a calibrated image (written by ``fitax phot calibrate``, or any image in
    electrons or in DN with ``GAIN``, with ``READNOI`` [e-] in its header) with its bad-pixel
    mask, in electrons.

    An image in DN (``BUNIT = 'DN'``, as ZTF's science images) is multiplied by ``GAIN``; its
    ``SATURATE`` (in the image's units) likewise, and a ``MAGZP`` (for fluxes in DN) becomes
    ``MAGZP + 2.5 log10(GAIN)``, the zero point of the fluxes in electrons that fitax reports.

    The mask combines: the mask image (see :func:`fitax.photometry.io.read_mask`: ``mask_path``,
    a ``MASK``/``BPM``/``DQ``/``MSK``/``FLAGS`` extension or ZTF's sibling ``*mskimg.fits``,
    bit masks read with ``bad_bits``), pixels at or above the header's ``SATURATE`` level (as
    survey images, e.g. ZTF's, declare saturation), and non-finite pixels.
    """
    from .io import read_image, read_mask

    path = Path(path)
    image, header = read_image(path)
    gain = _gain_to_electrons(path, header)
    if gain != 1.0:
        image = image * gain
        if "MAGZP" in header:
            header["MAGZP"] = float(header["MAGZP"]) + 2.5 * np.log10(gain)
    if read_noise is None:
        if "READNOI" not in header:
            raise ValueError(f"{path}: header has no READNOI (read noise, e-); pass read_noise (CLI: --read-noise)")
        read_noise = float(header["READNOI"])
    mask, mask_origin = read_mask(path, image.shape, mask_path=mask_path, bad_bits=bad_bits)
    saturation, n_saturated = None, 0
    if "SATURATE" in header:
        try:
            saturation = float(header["SATURATE"]) * gain
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path}: header SATURATE = {header['SATURATE']!r} is not a number") from error
        with np.errstate(invalid="ignore"):
            saturated = image >= saturation
        n_saturated = int(saturated.sum())
        mask |= saturated
    mask |= ~np.isfinite(image)
    return ImageData(image=np.where(mask, 0.0, image), mask=mask, header=header, read_noise=float(read_noise), name=str(path),
                     saturation=saturation, n_saturated=n_saturated, mask_origin=mask_origin, gain=gain)


def photometry_columns(catalog: Table, header: fits.Header) -> Table:
    """Add ``ra, dec`` [deg] when the header has a celestial WCS and ``mag, mag_err`` when it
    has ``MAGZP`` (``mag = MAGZP - 2.5 log10(flux)``, NaN for flux <= 0)."""
    wcs = celestial_wcs(header)
    if wcs is not None:
        ra, dec = wcs.pixel_to_world_values(np.asarray(catalog["x"]), np.asarray(catalog["y"]))  # 0-based
        catalog["ra"], catalog["dec"] = ra, dec
        catalog["ra"].unit = catalog["dec"].unit = "deg"
    if "MAGZP" in header:
        m_inst, m_inst_err = instrumental_magnitudes(catalog["flux"], catalog["flux_err"])
        catalog["mag"], catalog["mag_err"] = float(header["MAGZP"]) + m_inst, m_inst_err
        catalog["mag"].unit = catalog["mag_err"].unit = "mag"
        catalog.meta["MAGZP"] = float(header["MAGZP"])
    return catalog


def process_image(
    data: ImageData,
    *,
    positions: tuple[np.ndarray, np.ndarray] | None = None,
    sources: Table | None = None,
    position_columns: tuple[str, str] | None = None,
    pixel_origin: int | None = None,
    psf: Literal["moffat", "gaussian"] = "moffat",
    psf_degree: int | Literal["auto"] = "auto",
    psf_grid: GriddedPSF | None = None,
    fit_shape: int = 11,
    threshold: float = 5.0,
    fwhm0: float = 3.0,
    apertures: tuple[float, ...] | None = None,
    annulus: tuple[float, float] | None = None,
    reference: Table | None = None,
    reference_magnitude: str | None = None,
    reference_colour: str | None = None,
    match_radius: float = 2.0,
) -> tuple[Table, PSFShape]:
    """Catalog of one image: stars from ``positions`` (x, y, 0-based), from a source list
    ``sources`` (any table :func:`fitax.photometry.sources.source_positions` reads; every one
    of its columns and rows is carried to the catalog) or detected at ``threshold`` sigma;
    the PSF fitted on the brightest isolated ones, then every star fitted with the PSF at its
    position.

    ``psf_degree``: the polynomial degree of the PSF shape's variation across the image
    (:class:`~fitax.photometry.varying.VaryingPSF`; 0 is a constant PSF), or ``"auto"`` to let
    the data choose among 0-2 (:func:`~fitax.photometry.psfshape.choose_psf_degree`).
    ``psf_grid``: a grid of empirical ePSFs made elsewhere (e.g. read with
    :func:`~fitax.photometry.gridded.read_gridded_psf`) used as it is instead of fitting the
    PSF; it must cover the image.

    Sky sources of ``sources`` that fall outside the image keep their row, with NaN
    measurements and flag 2.

    ``apertures`` (radii in pixels) adds aperture sums at the fitted positions (see
    :func:`add_apertures`; ``annulus`` defaults to 3-6 pixels beyond the largest radius) and
    the PSF-to-aperture correction of the largest. ``reference`` (a catalogue table, see
    :func:`fitax.photometry.zeropoint.calibrate_catalog`) fits the zero point, which then
    replaces the header's ``MAGZP`` in ``mag``.

    Returns ``(catalog, psf_shape)``; the catalog's meta records the PSF, the detection, the
    mask, the saturation level, the aperture correction and the zero point.
    """
    image, mask = data.image, data.mask
    clock = _StageClock()
    if reference is not None and celestial_wcs(data.header) is None:
        raise ValueError(f"{data.name}: a zero point needs sky positions, but the image header has no celestial WCS")
    if positions is not None and sources is not None:
        raise ValueError("give positions or sources, not both")
    located = None
    if sources is not None:
        located = source_positions(sources, data.header, shape=image.shape, columns=position_columns, origin=pixel_origin,
                                   source=str(sources.meta.get("SOURCE", "catalog")))
        if located.inside.sum() < 3:
            raise ValueError(f"{data.name}: only {located.inside.sum()} of the {len(sources)} catalog sources fall on the image; need at least 3")
        x, y = located.x[located.inside], located.y[located.inside]
    elif positions is None:
        found = detect_stars(image, fwhm=fwhm0, read_noise=data.read_noise, threshold=threshold, mask=mask)
        if len(found) < 3:
            raise ValueError(f"{data.name}: only {len(found)} stars detected at {threshold} sigma; need at least 3")
        x, y = np.asarray(found["x"]), np.asarray(found["y"])
    else:
        x, y = (np.asarray(a, dtype=float) for a in positions)
    if reference is not None:  # a catalogue that does not match the image fails before any fitting
        checked_matches(x, y, reference, data.header, match_radius)
    clock.lap("detect")
    if psf_degree != "auto" and psf_degree not in (0, 1, 2, 3):
        raise ValueError(f"psf_degree must be 0-3 or 'auto', got {psf_degree!r}")
    # spare candidates beyond those fitted replace the ones the shape fit rejects (blends);
    # a varying PSF needs more stars, over more of the image
    n_fitted = 40 if psf_degree == 0 else 80
    if psf_grid is not None:
        psf_grid.check_covers(image.shape)
        shape = PSFShape(psf_grid, {}, {}, 0, None)
    else:
        chosen = select_psf_stars(image, x, y, n_max=3 * n_fitted // 2, saturation_mask=mask)
        # the detection FWHM guess only seeds the shape fit; a second detection pass is not needed
        shape = fit_psf_shape(image, x[chosen], y[chosen], read_noise=data.read_noise, kind=psf, mask=mask, fwhm0=fwhm0,
                              max_stars=n_fitted)
        if psf_degree == "auto":
            shape = choose_psf_degree(image, shape, read_noise=data.read_noise, mask=mask)
        elif psf_degree > 0:
            shape = fit_varying_psf_shape(image, shape, degree=psf_degree, read_noise=data.read_noise, mask=mask)
    clock.lap("psf")
    catalog = fit_stars(image, x, y, psf=shape.psf, read_noise=data.read_noise, fit_shape=fit_shape, mask=mask)
    if located is not None:
        catalog = carry_input_columns(_all_rows(catalog, located.inside), sources, located)
    catalog = photometry_columns(catalog, data.header)
    clock.lap("stars")
    if apertures:
        catalog = add_apertures(catalog, data, apertures, annulus, fwhm=shape.fwhm)
        clock.lap("apertures")
    if reference is not None:
        catalog, _ = calibrate_catalog(catalog, data.header, reference, magnitude=reference_magnitude, colour=reference_colour,
                                       radius_arcsec=match_radius)
        clock.lap("zero point")
    catalog.meta.update(
        {"IMAGE": Path(data.name).name, "PSFKIND": "gridded" if psf_grid is not None else psf, "PSFFWHM": round(shape.fwhm, 4), "PSFNSTAR": shape.n_stars, "PSFREJ": shape.rejected,
         **_psf_cards(shape, image.shape),
         "DETECT": "catalog" if positions is not None or sources is not None else f"matched filter, {threshold} sigma",
         "MASK": data.mask_origin, "NMASKED": int(mask.sum()), **clock.cards()}
    )
    if data.saturation is not None:
        catalog.meta["SATURATE"], catalog.meta["NSATPIX"] = data.saturation, data.n_saturated
    if data.gain != 1.0:
        catalog.meta["IMGGAIN"] = data.gain  # the image was in DN: fluxes, SATURATE and MAGZP here are for electrons
    return catalog, shape


class _StageClock:
    """Seconds spent in each stage of :func:`process_image`, for the catalog header
    (``T_DETECT``, ``T_PSF``, ``T_STARS``, ``T_APER``, ``T_ZP``) and the run's breakdown."""

    keywords = {"detect": "T_DETECT", "psf": "T_PSF", "stars": "T_STARS", "apertures": "T_APER", "zero point": "T_ZP"}

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = now - self._last
        self._last = now

    def cards(self) -> dict:
        return {self.keywords[stage]: round(value, 4) for stage, value in self.seconds.items()}


STAGE_KEYWORDS = _StageClock.keywords
"""Catalog header keyword of each stage's time [s]."""


def _psf_cards(shape: PSFShape, image_shape) -> dict:
    """Header keywords of the fitted PSF: the constant shape's parameters, or the degree and
    every polynomial coefficient (``PSFC_<PARAM>_<term>``, linked parameters, terms in the
    order of :func:`~fitax.photometry.varying.polynomial_terms`) and the FWHM range."""
    if isinstance(shape.psf, GriddedPSF):
        return {"PSFGRID": Path(shape.psf.source).name if shape.psf.source else "given", "PSFGRIDN": "{} x {}".format(*shape.psf.grid_shape)}
    if shape.degree == 0:
        return {"PSFDEG": 0, **{_PSF_KEYWORDS[name]: value for name, value in shape.values.items()}}
    low, high = shape.psf.fwhm_range(image_shape)
    cards = {"PSFDEG": shape.degree, "PSFFWMIN": round(low, 4), "PSFFWMAX": round(high, 4),
             "PSFXC": shape.psf.centre[0], "PSFYC": shape.psf.centre[1], "PSFSCALE": shape.psf.scale}
    short = {"sigma_x": "SX", "sigma_y": "SY", "rho": "RHO", "gamma": "GAM", "alpha": "ALP"}
    for name, coefficients in shape.psf.coefficients.items():
        for i, value in enumerate(coefficients):
            cards[f"PSFC{short[name]}{i}"] = float(value)
    return cards


def add_apertures(catalog: Table, data: ImageData, radii, annulus=None, *, fwhm: float) -> Table:
    """Aperture sums (:func:`fitax.photometry.aperture.aperture_photometry`) at each star's
    fitted position (its input position where the fit failed), with the data variance
    ``max(image, 0) + read_noise^2``; and the correction from PSF to aperture flux at the
    largest radius, from unflagged, isolated stars with S/N > 20, in ``catalog.meta``
    (``APCOR``, ``APCORERR``, ``APCORN``, ``APCORRAD``)."""
    from .aperture import aperture_correction, aperture_photometry, radius_label

    radii = tuple(sorted(float(r) for r in radii))
    annulus = (radii[-1] + 3.0, radii[-1] + 6.0) if annulus is None else tuple(annulus)
    x, y = np.asarray(catalog["x"], float), np.asarray(catalog["y"], float)
    if "x_init" in catalog.colnames:
        failed = ~(np.isfinite(x) & np.isfinite(y))
        x, y = np.where(failed, catalog["x_init"], x), np.where(failed, catalog["y_init"], y)
    ny, nx = data.image.shape
    on_image = np.isfinite(x) & np.isfinite(y) & (x >= -0.5) & (x <= nx - 0.5) & (y >= -0.5) & (y <= ny - 0.5)
    variance = np.maximum(data.image, 0.0) + data.read_noise**2
    measured = aperture_photometry(data.image, x[on_image], y[on_image], radii=radii, annulus=annulus, variance=variance, mask=data.mask)
    out = catalog.copy(copy_data=False)
    for name in measured.colnames:
        column = np.asarray(measured[name])
        full = np.full(len(out), np.nan if column.dtype.kind == "f" else APER_OFF_IMAGE, dtype=column.dtype)
        full[on_image] = column
        out[name] = full
        if name != "aper_flags":
            out[name].unit = "electron"
    flux, flux_err = np.asarray(out["flux"], float), np.asarray(out["flux_err"], float)
    largest = radius_label(radii[-1])
    from scipy.spatial import cKDTree

    points = np.c_[np.nan_to_num(x, nan=-1e9), np.nan_to_num(y, nan=-1e9)]
    nearest, _ = cKDTree(points).query(points, k=2)
    isolated = nearest[:, 1] > radii[-1] + 2 * fwhm
    usable = (np.asarray(out["flags"]) == 0) & (np.asarray(out["aper_flags"]) == 0) & isolated & (flux > 20 * flux_err)
    ratio, error, n_used = aperture_correction(flux, out[f"aper_sum_{largest}"], out[f"aper_sum_err_{largest}"], usable)
    out.meta.update(measured.meta)
    out.meta.update({"APCOR": ratio, "APCORERR": error, "APCORN": n_used, "APCORRAD": radii[-1]})
    return out


def _all_rows(catalog: Table, inside: np.ndarray) -> Table:
    """``catalog`` of the sources ``inside`` the image expanded to every source: the others
    unmeasured (NaN, flag 2)."""
    if inside.all():
        return catalog
    full = Table(meta=catalog.meta)
    for name in catalog.colnames:
        column = np.asarray(catalog[name])
        filler = FLAG_OUTSIDE if name == "flags" else (-1 if column.dtype.kind in "iu" else np.nan)
        values = np.full(len(inside), filler, dtype=column.dtype)
        values[inside] = column
        full[name] = values
        full[name].unit = catalog[name].unit
    full["id"] = np.arange(len(inside))
    return full


def residual_image(data: ImageData, catalog: Table, psf) -> np.ndarray:
    """Image minus the fitted stars (each star's local background is not subtracted)."""
    ok = np.isfinite(np.asarray(catalog["flux"]))
    stars = render_stars(data.image.shape, np.asarray(catalog["flux"])[ok], np.asarray(catalog["x"])[ok], np.asarray(catalog["y"])[ok], psf=psf)
    return data.image - stars
