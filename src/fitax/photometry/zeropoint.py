"""Photometric zero point of an image against a reference catalogue (Gaia- or PS1-like, a
local FITS/CSV file: no network): sky matching through the image WCS, a fit of ``MAGZP`` and a
colour term with iterative robust clipping, and the header keywords ZTF/IPAC calibrated images
carry (``MAGZP, MAGZPUNC, MAGZPRMS, CLRCOEFF, CLRCOUNC, NMATCHES, PCOLOR``).

The model, per matched star with instrumental magnitude ``m_inst = -2.5 log10(flux / e-)``:
``m_ref = MAGZP + m_inst + CLRCOEFF * colour``; ``MAGZP`` is the zero point at colour 0, and
the catalog's ``mag = MAGZP + m_inst`` (add ``CLRCOEFF * colour`` for a star of known colour).

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> m_inst = rng.uniform(-12, -8, 200)
    >>> colour = rng.uniform(0, 1.5, 200)
    >>> m_ref = 26.3 + m_inst + 0.05 * colour + rng.normal(0, 0.01, 200)
    >>> zp = fit_zero_point(m_inst, np.full(200, 0.01), m_ref, colour=colour)
    >>> round(zp.magzp, 2), round(zp.colour_coeff, 2), zp.n_used   # one point of 200 beyond 3 sigma
    (26.3, 0.05, 199)
"""

from __future__ import annotations

import dataclasses
import re
from typing import NamedTuple

import numpy as np
from astropy.table import Table

from .io import celestial_wcs
from .sources import SKY_COLUMNS, find_column, float_column, sky_degrees

__all__ = ["ZeroPoint", "fit_zero_point", "read_reference", "reference_magnitudes", "match_to_reference", "checked_matches", "Matches", "calibrate_catalog",
           "instrumental_magnitudes"]

POGSON = 2.5 / np.log(10)


@dataclasses.dataclass(frozen=True)
class ZeroPoint:
    """A fitted zero point: ``magzp`` [mag] and its uncertainty, the RMS of the retained
    residuals, the colour coefficient (0 without a colour) and which matches were kept."""

    magzp: float
    magzp_unc: float
    rms: float
    colour_coeff: float
    colour_unc: float
    n_matches: int
    n_used: int
    used: np.ndarray

    def header_cards(self, colour_name: str | None = None) -> dict:
        """The keywords as ZTF/IPAC write them."""
        cards = {"MAGZP": self.magzp, "MAGZPUNC": self.magzp_unc, "MAGZPRMS": self.rms, "NMATCHES": self.n_matches,
                 "NZPUSED": self.n_used}
        if colour_name is not None:
            cards |= {"CLRCOEFF": self.colour_coeff, "CLRCOUNC": self.colour_unc, "PCOLOR": colour_name}
        return cards


def fit_zero_point(m_inst, m_inst_err, m_ref, m_ref_err=None, *, colour=None, clip_sigma: float = 3.0, max_iterations: int = 20) -> ZeroPoint:
    """Weighted least squares of ``m_ref - m_inst = MAGZP (+ CLRCOEFF colour)`` with
    iterative clipping of residuals beyond ``clip_sigma`` robust (MAD) standard deviations.

    The uncertainties are the fit's, scaled by sqrt(reduced chi2) when the scatter exceeds the
    stated errors (reference catalogues underestimate theirs).
    """
    m_inst, m_inst_err, m_ref = (np.asarray(a, float) for a in (m_inst, m_inst_err, m_ref))
    ref_err = np.zeros_like(m_ref) if m_ref_err is None else np.nan_to_num(np.asarray(m_ref_err, float), nan=0.0)
    has_colour = colour is not None
    colour = np.zeros_like(m_ref) if colour is None else np.asarray(colour, float)
    finite = np.isfinite(m_inst) & np.isfinite(m_inst_err) & np.isfinite(m_ref) & np.isfinite(colour) & (m_inst_err > 0)
    needed = 3 if has_colour else 2
    if finite.sum() < needed:
        raise ValueError(f"zero point: {finite.sum()} usable matched star(s), need at least {needed}")
    delta = m_ref - m_inst
    sigma = np.sqrt(m_inst_err**2 + ref_err**2)
    design = np.c_[np.ones_like(delta), colour] if has_colour else np.ones((len(delta), 1))
    keep = finite.copy()
    for _ in range(max_iterations):
        theta, covariance = _weighted_fit(design[keep], delta[keep], sigma[keep])
        residual = delta - design @ theta
        width = 1.4826 * np.median(np.abs(residual[keep] - np.median(residual[keep])))
        new = finite & (np.abs(residual) <= clip_sigma * max(width, 1e-6))
        if (new == keep).all() or new.sum() < needed:
            break
        keep = new
    theta, covariance = _weighted_fit(design[keep], delta[keep], sigma[keep])
    residual = (delta - design @ theta)[keep]
    dof = max(int(keep.sum()) - design.shape[1], 1)
    scale = max(float(np.sum((residual / sigma[keep]) ** 2)) / dof, 1.0)
    errors = np.sqrt(np.diag(covariance) * scale)
    return ZeroPoint(
        magzp=float(theta[0]), magzp_unc=float(errors[0]), rms=float(np.sqrt(np.mean(residual**2))),
        colour_coeff=float(theta[1]) if has_colour else 0.0, colour_unc=float(errors[1]) if has_colour else 0.0,
        n_matches=int(finite.sum()), n_used=int(keep.sum()), used=keep,
    )


def _weighted_fit(design, values, sigma):
    w = 1.0 / sigma**2
    normal = design.T @ (design * w[:, None])
    covariance = np.linalg.inv(normal)
    return covariance @ (design.T @ (w * values)), covariance


def read_reference(path) -> Table:
    """A reference catalogue file (FITS, CSV, ECSV, VOTable), with a clear error."""
    try:
        table = Table.read(path)
    except (OSError, ValueError) as error:
        raise ValueError(f"reference catalogue {path}: not a readable table (FITS, CSV, ECSV): {error}") from error
    if len(table) == 0:
        raise ValueError(f"reference catalogue {path}: no rows")
    table.meta["SOURCE"] = f"reference catalogue {path}"
    return table


_ERROR_PATTERNS = ("{}_err", "{}_error", "e_{}", "{}err", "{}_unc", "{}_sigma", "err_{}")


def reference_magnitudes(reference: Table, magnitude: str | None = None, colour: str | None = None):
    """``(name, mag, mag_err or None, colour_name or None, colour or None)`` from the reference
    catalogue. ``magnitude`` names the column (default: the only column whose name ends in
    ``mag``); ``colour`` is a column name or ``A-B`` with two magnitude columns."""
    source = reference.meta.get("SOURCE", "reference catalogue")
    if magnitude is None:
        candidates = [c for c in reference.colnames if c.lower().endswith("mag") and not re.match(r"(e_|err)", c.lower())]
        if len(candidates) != 1:
            raise ValueError(f"{source}: {'several' if candidates else 'no'} magnitude column(s) {candidates}; "
                             f"name one with --ref-mag (columns: {reference.colnames})")
        magnitude = candidates[0]
    name = find_column(reference, magnitude)
    if name is None:
        raise ValueError(f"{source}: no magnitude column {magnitude!r}; columns are {reference.colnames}")
    mag = float_column(reference, name)
    error_name = next((find_column(reference, p.format(name)) for p in _ERROR_PATTERNS if find_column(reference, p.format(name))), None)
    mag_err = float_column(reference, error_name) if error_name else None
    if colour is None:
        return name, mag, mag_err, None, None
    single = find_column(reference, colour)
    if single is not None:
        return name, mag, mag_err, single, float_column(reference, single)
    parts = colour.split("-")
    found = [find_column(reference, p) for p in parts] if len(parts) == 2 else [None]
    if None in found:
        raise ValueError(f"{source}: colour {colour!r} is neither a column nor 'A-B' of two columns; columns are {reference.colnames}")
    return name, mag, mag_err, colour, float_column(reference, found[0]) - float_column(reference, found[1])


class Matches(NamedTuple):
    """Matched indices, and how many matches the two lists would give by chance."""

    catalog_index: np.ndarray
    reference_index: np.ndarray
    expected_by_chance: float
    """``n_catalog x n_reference on the image x pi r^2 / image area``: the matches of unrelated
    positions with these densities (a wrong field or WCS gives about this many)."""


def match_to_reference(x, y, reference: Table, header, radius_arcsec: float = 2.0) -> Matches:
    """Mutual nearest neighbours within ``radius_arcsec`` between catalog pixel positions
    ``x, y`` (0-based) and the reference's sky positions projected through the header's WCS
    (whose ``NAXIS1, NAXIS2`` give the image area; else the catalog's bounding box)."""
    from scipy.spatial import cKDTree

    source = reference.meta.get("SOURCE", "reference catalogue")
    wcs = celestial_wcs(header)
    if wcs is None:
        raise ValueError("a zero point needs sky positions, but the image header has no celestial WCS")
    pairs = [(find_column(reference, a), find_column(reference, b)) for a, b in SKY_COLUMNS]
    pairs = [p for p in pairs if None not in p]
    if not pairs:
        raise ValueError(f"{source}: no sky position columns ({', '.join(a + '/' + b for a, b in SKY_COLUMNS)}); columns are {reference.colnames}")
    ra, dec = (sky_degrees(reference, c, source) for c in pairs[0])
    rx, ry = (np.asarray(a, float) for a in wcs.world_to_pixel_values(ra, dec))
    from astropy.wcs.utils import proj_plane_pixel_scales

    radius_px = radius_arcsec / (3600.0 * float(np.mean(proj_plane_pixel_scales(wcs))))
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok_cat = np.flatnonzero(np.isfinite(x) & np.isfinite(y))
    ok_ref = np.flatnonzero(np.isfinite(rx) & np.isfinite(ry))
    if len(ok_cat) == 0 or len(ok_ref) == 0:
        return Matches(np.zeros(0, int), np.zeros(0, int), 0.0)
    cat_points, ref_points = np.c_[x[ok_cat], y[ok_cat]], np.c_[rx[ok_ref], ry[ok_ref]]
    d_cat, to_ref = cKDTree(ref_points).query(cat_points, distance_upper_bound=radius_px)
    _, to_cat = cKDTree(cat_points).query(ref_points)
    matched = np.isfinite(d_cat)
    mutual = matched.copy()
    mutual[matched] = to_cat[to_ref[matched]] == np.flatnonzero(matched)
    if "NAXIS1" in header and "NAXIS2" in header:
        x_range, y_range = (-0.5, header["NAXIS1"] - 0.5), (-0.5, header["NAXIS2"] - 0.5)
    else:
        x_range, y_range = (x[ok_cat].min(), x[ok_cat].max()), (y[ok_cat].min(), y[ok_cat].max())
    area = max((x_range[1] - x_range[0]) * (y_range[1] - y_range[0]), 1.0)
    on_image = np.sum((ref_points[:, 0] >= x_range[0]) & (ref_points[:, 0] <= x_range[1]) & (ref_points[:, 1] >= y_range[0])
                      & (ref_points[:, 1] <= y_range[1]))
    expected = len(ok_cat) * on_image * np.pi * radius_px**2 / area
    return Matches(ok_cat[mutual], ok_ref[to_ref[mutual]], float(expected))


def checked_matches(x, y, reference: Table, header, radius_arcsec: float = 2.0) -> Matches:
    """:func:`match_to_reference`, raising a ValueError that names the catalogue when it does
    not match the image: no star within ``radius_arcsec``, or no more matches than chance
    gives (5 sigma). Also run on the detected or input positions before any fitting, so that
    an image with a wrong WCS or field fails in a fraction of a second."""
    source = reference.meta.get("SOURCE", "reference catalogue")
    matches = match_to_reference(x, y, reference, header, radius_arcsec)
    n_matched, by_chance = len(matches.catalog_index), matches.expected_by_chance
    if n_matched == 0:
        raise ValueError(f"{source}: no reference star within {radius_arcsec:g} arcsec of any of the {len(x)} catalog stars "
                         "(does the catalogue cover this image? is the WCS right?)")
    # a wrong field or WCS still matches some stars by chance: require clearly more (5 sigma)
    if n_matched <= by_chance + 5 * np.sqrt(by_chance):
        raise ValueError(f"{source}: {n_matched} stars match within {radius_arcsec:g} arcsec, no more than chance gives with these "
                         f"star densities ({by_chance:.1f} expected): the catalogue does not match this image (is the WCS right?)")
    return matches


def instrumental_magnitudes(flux, flux_err) -> tuple[np.ndarray, np.ndarray]:
    """``-2.5 log10(flux)`` and its error ``(2.5 / ln 10) flux_err / flux``; NaN where the
    flux is not positive.

    Example:
        >>> instrumental_magnitudes(np.array([100.0, -1.0]), np.array([1.0, 1.0]))[0]
        array([-5., nan])
    """
    flux, flux_err = np.asarray(flux, float), np.asarray(flux_err, float)
    positive = flux > 0
    safe = np.where(positive, flux, 1.0)
    return np.where(positive, -2.5 * np.log10(safe), np.nan), np.where(positive, POGSON * flux_err / safe, np.nan)


def calibrate_catalog(catalog: Table, header, reference: Table, *, magnitude: str | None = None, colour: str | None = None,
                      radius_arcsec: float = 2.0, usable=None) -> tuple[Table, ZeroPoint]:
    """Fit the zero point of ``catalog`` (PSF fluxes in e-) against ``reference`` and add
    ``mag, mag_err`` (instrumental + MAGZP), ``ref_mag`` (and ``ref_colour``) of matched
    stars, ``zp_used``; the keywords go to ``catalog.meta``. ``usable`` (default: flags == 0)
    selects the stars allowed into the fit."""
    mag_name, ref_mag, ref_err, colour_name, ref_colour = reference_magnitudes(reference, magnitude, colour)
    flux, flux_err = np.asarray(catalog["flux"], float), np.asarray(catalog["flux_err"], float)
    usable = (np.asarray(catalog["flags"]) == 0) if usable is None else np.array(usable, bool)
    usable &= (flux > 0) & np.isfinite(flux_err)
    idx_cat, idx_ref, _ = checked_matches(catalog["x"], catalog["y"], reference, header, radius_arcsec)
    keep = usable[idx_cat]
    idx_cat, idx_ref = idx_cat[keep], idx_ref[keep]
    m_inst, m_inst_err = instrumental_magnitudes(flux, flux_err)
    zero_point = fit_zero_point(m_inst[idx_cat], m_inst_err[idx_cat], ref_mag[idx_ref], None if ref_err is None else ref_err[idx_ref],
                                colour=None if ref_colour is None else ref_colour[idx_ref])
    out = catalog.copy(copy_data=False)
    out["mag"], out["mag_err"] = zero_point.magzp + m_inst, m_inst_err
    out["mag"].unit = out["mag_err"].unit = "mag"
    out["ref_mag"] = np.full(len(out), np.nan)
    out["ref_mag"][idx_cat] = ref_mag[idx_ref]
    if ref_colour is not None:
        out["ref_colour"] = np.full(len(out), np.nan)
        out["ref_colour"][idx_cat] = ref_colour[idx_ref]
    used = np.zeros(len(out), bool)
    used[idx_cat[zero_point.used]] = True
    out["zp_used"] = used
    out.meta.update(zero_point.header_cards(colour_name))
    out.meta["ZPREFMAG"] = mag_name
    return out, zero_point
