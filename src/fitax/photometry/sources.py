"""Input source lists as users have them: positions found under the column names that
photutils, SExtractor and reference catalogues use (with their pixel origins), and every other
column carried unchanged to the output catalog, row for row.

Pixel columns, tried in this order (case-insensitive):

==========================  ======  =================================================
``x, y``                    0-based  fitax, photutils tables
``x_init, y_init``          0-based  photutils ``PSFPhotometry`` init_params
``x_0, y_0``                0-based  photutils < 1.9 init_params
``xcentroid, ycentroid``    0-based  photutils ``DAOStarFinder`` / ``SourceCatalog``
``X_IMAGE, Y_IMAGE``        1-based  SExtractor (FITS convention: first pixel centre is 1)
``XWIN_IMAGE, YWIN_IMAGE``  1-based  SExtractor windowed centroids
==========================  ======  =================================================

With none of these, sky columns ``ra, dec`` (or ``ALPHA_J2000, DELTA_J2000``, ``RAJ2000,
DEJ2000``, ``RA_ICRS, DE_ICRS``; degrees unless the column carries a unit) are projected with
the image's celestial WCS. Sources outside the image (sky sources beyond its edges; pixel
positions of a list made for a larger or mosaicked frame) stay in the catalog, unmeasured and
flagged 2 (outside), so no row and no id is lost.

Example:
    >>> from astropy.table import Table
    >>> table = Table({"NUMBER": [7, 9], "X_IMAGE": [11.0, 21.5], "Y_IMAGE": [5.0, 8.0]})
    >>> positions = source_positions(table)
    >>> positions.x, positions.columns
    (array([10. , 20.5]), 'X_IMAGE, Y_IMAGE (1-based)')
"""

from __future__ import annotations

import dataclasses

import numpy as np
from astropy.table import Table

from .io import celestial_wcs

__all__ = ["SourcePositions", "source_positions", "carry_input_columns", "find_column", "float_column", "sky_degrees", "PIXEL_COLUMNS", "SKY_COLUMNS"]

PIXEL_COLUMNS = (("x", "y", 0), ("x_init", "y_init", 0), ("x_0", "y_0", 0), ("xcentroid", "ycentroid", 0),
                 ("x_image", "y_image", 1), ("xwin_image", "ywin_image", 1))
SKY_COLUMNS = (("ra", "dec"), ("alpha_j2000", "delta_j2000"), ("raj2000", "dej2000"), ("ra_icrs", "de_icrs"))


@dataclasses.dataclass(frozen=True)
class SourcePositions:
    """0-based pixel positions of a source list; ``inside`` is False for sources outside the
    image (their ``x, y`` are still given)."""

    x: np.ndarray
    y: np.ndarray
    inside: np.ndarray
    columns: str
    """Which columns gave the positions, and their convention (recorded in the catalog)."""


def find_column(table: Table, name: str) -> str | None:
    """The column of ``table`` called ``name`` ignoring case (FITS names ignore it), or None."""
    lower = {c.lower(): c for c in table.colnames}
    return lower.get(name.lower())


def float_column(table: Table, name: str) -> np.ndarray:
    """Column ``name`` as floats, blank (masked) cells as NaN: NumPy would turn them into the
    masked array's fill data, e.g. a blank magnitude into 0 mag."""
    return np.asarray(np.ma.filled(np.ma.asarray(table[name], dtype=float), np.nan), dtype=float)


def _numeric(table: Table, name: str, source: str) -> np.ndarray:
    try:
        values = float_column(table, name)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{source}: column {name!r} is not numeric ({table[name].dtype}): {error}") from error
    if values.ndim != 1:
        raise ValueError(f"{source}: column {name!r} must hold one value per row, got shape {values.shape}")
    bad = ~np.isfinite(values)
    if bad.any():
        raise ValueError(f"{source}: column {name!r} has {bad.sum()} non-finite value(s), e.g. row {int(np.flatnonzero(bad)[0])}")
    return values


def sky_degrees(table: Table, name: str, source: str) -> np.ndarray:
    """Column ``name`` in degrees: as given, or converted from the column's angle unit."""
    values = _numeric(table, name, source)
    unit = table[name].unit
    if unit is None:
        return values
    import astropy.units as u

    try:
        return (values * unit).to_value(u.deg)
    except u.UnitConversionError as error:
        raise ValueError(f"{source}: column {name!r} has unit {unit}, expected an angle") from error


def source_positions(table: Table, header=None, *, shape: tuple[int, int] | None = None, columns: tuple[str, str] | None = None,
                     origin: int | None = None, source: str = "catalog") -> SourcePositions:
    """0-based pixel positions of the sources in ``table``.

    Args:
        table: the user's source list.
        header: the image header, whose celestial WCS projects sky columns.
        shape: the image shape ``(ny, nx)``, to mark sources outside it.
        columns: the two position columns to use instead of the automatic choice.
        origin: their pixel origin (0 or 1) instead of the one their names imply (1 for
            SExtractor's ``*_IMAGE``, else 0).
        source: the catalog's name, for error messages.
    """
    if len(table) == 0:
        raise ValueError(f"{source}: the catalog has no rows")
    if columns is not None:
        found = [find_column(table, c) for c in columns]
        missing = [c for c, f in zip(columns, found) if f is None]
        if missing:
            raise ValueError(f"{source}: no column(s) {missing}; columns are {table.colnames}")
        implied = 1 if found[0].lower().endswith("_image") else 0
        pairs = [(found[0], found[1], implied if origin is None else origin)]
    else:
        pairs = [(find_column(table, cx), find_column(table, cy), o if origin is None else origin) for cx, cy, o in PIXEL_COLUMNS]
        pairs = [p for p in pairs if p[0] is not None and p[1] is not None]
    if pairs:
        cx, cy, o = pairs[0]
        x, y = _numeric(table, cx, source) - o, _numeric(table, cy, source) - o
        return SourcePositions(x, y, _inside(x, y, shape), f"{cx}, {cy} ({o}-based)")
    sky = [(find_column(table, cr), find_column(table, cd)) for cr, cd in SKY_COLUMNS]
    sky = [p for p in sky if p[0] is not None and p[1] is not None]
    if not sky:
        names = ", ".join(f"{a}/{b}" for a, b, _ in PIXEL_COLUMNS) + ", " + ", ".join(f"{a}/{b}" for a, b in SKY_COLUMNS)
        raise ValueError(f"{source}: no position columns; expected one of {names} (case-insensitive), got {table.colnames}")
    cr, cd = sky[0]
    wcs = celestial_wcs(header) if header is not None else None
    if wcs is None:
        raise ValueError(f"{source}: positions are given only as sky coordinates ({cr}, {cd}) but the image has no celestial WCS; "
                         "give pixel columns x, y")
    x, y = wcs.world_to_pixel_values(sky_degrees(table, cr, source), sky_degrees(table, cd, source))
    x, y = np.asarray(x, float), np.asarray(y, float)
    return SourcePositions(x, y, _inside(x, y, shape), f"{cr}, {cd} (sky, deg, through the image WCS)")


def _inside(x: np.ndarray, y: np.ndarray, shape: tuple[int, int] | None) -> np.ndarray:
    """Whether each position is finite and on the image (pixel edges included)."""
    inside = np.isfinite(x) & np.isfinite(y)
    if shape is not None:
        ny, nx = shape
        inside &= (x >= -0.5) & (x <= nx - 0.5) & (y >= -0.5) & (y <= ny - 0.5)
    return inside


def carry_input_columns(catalog: Table, table: Table, positions: SourcePositions) -> Table:
    """``catalog`` (one row per input row, same order) with the input positions as
    ``x_init, y_init`` and every input column appended; an input ``id`` replaces the row
    numbers, and input columns whose names clash with the catalog's (FITS names are
    case-insensitive) are renamed ``<name>_input``."""
    if len(catalog) != len(table):
        raise ValueError(f"catalog has {len(catalog)} rows, the input {len(table)}: rows must correspond one to one")
    out = catalog.copy(copy_data=False)
    out["x_init"], out["y_init"] = positions.x, positions.y
    id_column = find_column(table, "id")
    if id_column is not None:
        out["id"] = table[id_column]
    taken = {c.lower() for c in out.colnames}
    for name in table.colnames:
        if name == id_column:
            continue
        new = name if name.lower() not in taken else f"{name}_input"
        while new.lower() in taken:
            new += "_"
        out[new] = table[name]
        taken.add(new.lower())
    out.meta["POSCOLS"] = positions.columns
    return out
