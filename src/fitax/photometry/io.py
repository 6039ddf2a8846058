"""FITS input and output for photometry, with errors that name the file and HDU."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table

from ..io import atomic_write, check_not_input, open_fits

__all__ = ["read_image", "read_image_header", "write_catalog", "update_image_header", "image_hdu_index", "celestial_wcs", "read_mask", "bad_pixels", "informational_bits",
           "MASK_EXTENSIONS"]

MASK_EXTENSIONS = ("MASK", "BPM", "DQ", "MSK", "FLAGS")
"""Extension names under which survey images carry their pixel masks (fitax, DECam, HST/JWST,
ZTF and others), tried in this order."""
_INFORMATIONAL_PLANE = re.compile(r"DETECT|OBJECT|SOURCE POSITION")
"""Mask planes that mark where sources are, not bad pixels: ZTF's bit 1 'CONTAINS SEXTRACTOR
DETECTION' and bit 11 'CONTAINS PSF-EXTRACTED SOURCE POSITION' (the bits ZTF's recommended
bad-pixel mask 6141 leaves out; 'GHOST/HALO FROM BRIGHT SOURCE' stay bad), LSST's 'DETECTED'."""


def image_hdu_index(hdul, path) -> int:
    """Index of the first HDU holding a 2-d image (plain or tile-compressed)."""
    for i, hdu in enumerate(hdul):
        if isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)) and hdu.header.get("NAXIS", 0) == 2:
            return i
    raise ValueError(f"{path}: no 2-d image HDU found (HDUs: {[h.name for h in hdul]})")


def read_image(path: str | Path) -> tuple[np.ndarray, fits.Header]:
    """The first 2-d image of a FITS file as float64, with its header."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with open_fits(path) as hdul:
            index = image_hdu_index(hdul, path)
            data = np.asarray(hdul[index].data, dtype=np.float64)
            header = hdul[index].header.copy()
    except (OSError, TypeError, EOFError) as error:
        raise ValueError(f"{path}: not a readable FITS image (truncated or corrupt?): {error}") from error
    return data, header


def read_image_header(path: str | Path) -> fits.Header:
    """The header of the first 2-d image of a FITS file (its data is not read)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with open_fits(path) as hdul:
            return hdul[image_hdu_index(hdul, path)].header.copy()
    except (OSError, TypeError, EOFError) as error:
        raise ValueError(f"{path}: not a readable FITS image (truncated or corrupt?): {error}") from error


def write_catalog(table: Table, path, inputs=()) -> Path:
    """Write a catalog as FITS atomically, refusing to overwrite any of ``inputs``."""
    check_not_input(path, inputs)
    # FITS has no 'electron' unit that astropy will write; keep the units as TUNITn strings
    units = {name: str(table[name].unit) for name in table.colnames if table[name].unit is not None}
    plain = table.copy(copy_data=False)
    for name in units:
        plain[name].unit = None
    hdu = fits.table_to_hdu(plain)
    for i, name in enumerate(plain.colnames, start=1):
        if name in units:
            hdu.header[f"TUNIT{i}"] = units[name]
    return atomic_write(path, lambda tmp: fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(tmp, overwrite=True))


def celestial_wcs(header: fits.Header):
    """The header's celestial WCS, or None. astropy.wcs is imported only for a header with
    axis types: it brings astropy.coordinates, most of a second of start-up."""
    if not any(key.startswith("CTYPE") for key in header):
        return None
    from astropy.wcs import WCS

    with np.errstate(all="ignore"):
        wcs = WCS(header)
    return wcs.celestial if wcs.has_celestial else None


def informational_bits(header: fits.Header) -> int:
    """Bits of an integer mask that mark sources rather than bad pixels, read from the plane
    names in the mask's header: LSST's ``MP_<PLANE> = bit`` and ``BITnn = ... / <plane>`` as
    ZTF writes them. Masking them would throw away every star."""
    bits = 0
    for key in header:
        if key.startswith("MP_") and isinstance(header[key], int):
            bit, name = header[key], key[3:]
        elif re.fullmatch(r"BIT\d\d", key):
            bit, name = int(key[3:]), f"{header[key]} {header.comments[key]}"
        else:
            continue
        if 0 <= bit < 64 and _INFORMATIONAL_PLANE.search(name.upper()):
            bits |= 1 << bit
    return bits


def bad_pixels(values: np.ndarray, header: fits.Header, bad_bits: int | None = None) -> tuple[np.ndarray, str]:
    """True where a mask image marks a pixel bad, and how that was decided.

    Boolean and float masks: non-zero is bad. Integer (bit) masks: a pixel is bad when any of
    ``bad_bits`` is set; by default every bit except those the header names as source planes
    (see :func:`informational_bits`).
    """
    values = np.asarray(values)
    if values.dtype.kind not in "iu":
        return values != 0, "non-zero"
    if bad_bits is None:
        ignored = informational_bits(header)
        bad_bits = ~ignored
        rule = "any bit" if not ignored else f"any bit but {', '.join(str(b) for b in range(64) if ignored >> b & 1)} (source planes)"
    else:
        rule = f"bits {', '.join(str(b) for b in range(64) if bad_bits >> b & 1) or 'none'}"
    return (values.astype(np.int64) & bad_bits) != 0, rule


def read_mask(path, shape: tuple[int, int], *, mask_path=None, bad_bits: int | None = None) -> tuple[np.ndarray, str]:
    """The bad-pixel mask of the image at ``path`` and where it came from: the file
    ``mask_path`` if given, else the first of :data:`MASK_EXTENSIONS` in the image's file,
    else ZTF's sibling ``*mskimg.fits`` of a ``*sciimg.fits``; all False if none exists."""
    path = Path(path)
    if mask_path is None and "sciimg" in path.name:
        sibling = path.with_name(path.name.replace("sciimg", "mskimg"))
        mask_path = sibling if sibling.exists() else None
    if mask_path is not None:
        mask_path = Path(mask_path)
        if not mask_path.exists():
            raise FileNotFoundError(f"{mask_path}: no such mask file")
        with open_fits(mask_path) as hdul:
            index = image_hdu_index(hdul, mask_path)
            values, header, origin = np.asarray(hdul[index].data), hdul[index].header, mask_path.name
    else:
        with open_fits(path) as hdul:
            name = next((n for n in MASK_EXTENSIONS if n in hdul), None)
            if name is None:
                return np.zeros(shape, bool), "none"
            values, header, origin = np.asarray(hdul[name].data), hdul[name].header, f"extension {name}"
    if values.shape != tuple(shape):
        raise ValueError(f"{path}: mask ({origin}) has shape {values.shape}, the image {tuple(shape)}")
    bad, rule = bad_pixels(values, header, bad_bits)
    return bad, f"{origin}, {rule}"


def update_image_header(path, cards: dict, remove=()) -> Path:
    """Set ``cards`` in (and delete the keywords ``remove`` from) the header of the image HDU
    of ``path``, rewriting the file atomically (a crash leaves the old file whole). A file the
    user may not write is refused, its permissions are kept, and checksums (``CHECKSUM``,
    ``DATASUM``) are recomputed where the file had them."""
    path = Path(path)
    if not os.access(path, os.W_OK):
        raise PermissionError(f"{path}: the image is not writable; refusing to update its header (run without --update-header)")
    with open_fits(path) as hdul:
        for hdu in hdul:
            hdu.data  # noqa: B018 - load every HDU before the file is replaced
        index = image_hdu_index(hdul, path)
        header = hdul[index].header
        for key in remove:
            header.remove(key, ignore_missing=True, remove_all=True)
        for key, value in cards.items():
            header[key] = value
        checksum = any("CHECKSUM" in hdu.header for hdu in hdul)
        return atomic_write(path, lambda tmp: hdul.writeto(tmp, overwrite=True, checksum=checksum))
