"""FITS input and output for photometry, with errors that name the file and HDU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table

from ..io import atomic_write, check_not_input, open_fits

__all__ = ["read_image", "write_catalog", "image_hdu_index"]


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
