"""Reading Gammapy's ``MapDataset`` FITS files without Gammapy (the I/O edge of fitax.gamma).

Gammapy writes one HDU per map (``COUNTS``, ``EXPOSURE``, ``BACKGROUND``, ``MASK_SAFE``,
``PSF``, ``EDISP``, ...) and, for each, a ``<NAME>_BANDS`` table with its non-spatial axes
(reco energy ``E_MIN/E_MAX``, true energy ``ENERGY_TRUE_MIN/MAX``, PSF offsets ``RAD``).
:func:`read_map_dataset` returns plain NumPy arrays and an astropy WCS, after checking that
the pieces fit together; every error names the file and the HDU.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import astropy.units as u
from astropy.io import fits
from astropy.table import Table
from astropy.time import Time
from astropy.wcs import WCS

from ..io import atomic_write, open_fits
from .psf_kernel_map import PSFKernelMap

__all__ = ["MapDatasetFile", "bands_hdu", "map_image_hdu", "psf_kernel_map_hdus", "read_map_dataset", "read_gti", "read_psf_kernel_map", "read_sky_mask",
           "region_map_hdus", "write_map_dataset", "write_psf_kernel_map", "write_spectrum_onoff"]


@dataclasses.dataclass(frozen=True)
class MapDatasetFile:
    """The contents of a Gammapy MapDataset file as arrays (shapes ``(energy, y, x)``).

    ``energy_edges`` [TeV] belong to ``counts``/``background``/``mask_safe``,
    ``energy_true_edges`` [TeV] to ``exposure`` [m2 s] and the energy dispersion.
    ``psf`` is ``(psf_energy_true, rad, py, px)`` [deg-2] at true energies
    ``psf_energy_true`` [TeV] (Fermi-LAT files have their own PSF energy nodes) and offsets
    ``psf_rad`` [deg] (bin edges ``psf_rad_edges``), on its own coarse sky grid
    ``psf_wcs``; ``edisp`` is ``(energy_true, energy, ey, ex)`` (the probability of each
    reco bin) on ``edisp_wcs``. A PSF or EDISP stored as a table for one sky region (as
    Gammapy writes them for Fermi-LAT) has ``py = px = 1`` and ``psf_wcs``/``edisp_wcs``
    ``None``: it holds everywhere. Missing optional maps are ``None``. ``psf_exposure`` and
    ``edisp_exposure`` ``(energy_true, 1, y, x)`` [m2 s] are the exposures on the IRF maps'
    grids that Gammapy weights them with when it stacks runs (written, not read).
    ``livetime`` [s] is the summed good time intervals (the ``GTI`` HDU's, Gammapy's
    ``gti.time_sum``: the ontime; the exposure already holds the dead-time correction), and
    ``gti`` those intervals' starts and stops (astropy ``Time``, ``(n, 2)``) where they are known.
    ``psf_kernel_map`` is an asymmetric PSF (kernels per position, see
    :mod:`fitax.gamma.psf_kernel_map`) where the file has one; it then replaces ``psf``,
    which stays for Gammapy (a radial approximation). ``counts_off``, ``acceptance`` and
    ``acceptance_off`` ``(energy, y, x)`` are a ``MapDatasetOnOff``'s (Gammapy's ring
    background), ``None`` in other files.
    """

    name: str
    path: Path | None
    counts: np.ndarray
    exposure: np.ndarray
    background: np.ndarray | None
    mask_safe: np.ndarray | None
    mask_fit: np.ndarray | None
    energy_edges: np.ndarray
    energy_true_edges: np.ndarray
    wcs: WCS
    psf: np.ndarray | None
    psf_rad: np.ndarray | None
    psf_rad_edges: np.ndarray | None
    psf_energy_true: np.ndarray | None
    psf_wcs: WCS | None
    edisp: np.ndarray | None
    edisp_wcs: WCS | None
    livetime: float | None
    psf_exposure: np.ndarray | None = None
    edisp_exposure: np.ndarray | None = None
    gti: Time | None = None
    psf_kernel_map: PSFKernelMap | None = None
    counts_off: np.ndarray | None = None
    acceptance: np.ndarray | None = None
    acceptance_off: np.ndarray | None = None

    def __repr__(self) -> str:
        ne, ny, nx = self.counts.shape
        parts = [f"{ne} reco x {len(self.energy_true_edges) - 1} true energies, {ny}x{nx} pixels",
                 f"counts {self.counts.sum():.0f}", "PSF" if self.psf is not None else "no PSF",
                 "EDISP" if self.edisp is not None else "no EDISP"]
        if self.psf_kernel_map is not None:
            parts.insert(3, "asymmetric PSF kernel map")
        return f"MapDatasetFile({self.name!r}: {', '.join(parts)})"


_GTI_REFERENCE = Time(51910, 7.428703703703703e-4, format="mjd", scale="tt")  # Gammapy's, 2001-01-01 00:00:00 TT


def _time_reference(header) -> Time:
    """A GTI's time reference: MJDREFI + MJDREFF (or MJDREF) in TIMESYS, Gammapy's 2001-01-01
    (TT) if the header gives none."""
    scale = str(header.get("TIMESYS", "tt")).lower()
    if "MJDREFI" in header:
        return Time(float(header["MJDREFI"]), float(header.get("MJDREFF", 0.0)), format="mjd", scale=scale)
    if "MJDREF" in header:
        return Time(float(header["MJDREF"]), format="mjd", scale=scale)
    return _GTI_REFERENCE


def read_gti(hdu) -> Time:
    """A GTI table HDU's ``(n, 2)`` starts and stops, as absolute times."""
    table = Table.read(hdu)
    seconds = np.stack([table["START"].quantity.to_value("s"), table["STOP"].quantity.to_value("s")], axis=-1)
    return _time_reference(hdu.header) + u.Quantity(seconds, "s")


def _edges(table: Table, low: str, high: str, where: str) -> np.ndarray:
    if low not in table.colnames or high not in table.colnames:
        raise ValueError(f"{where}: expected columns {low} and {high}, found {table.colnames}")
    lo = np.asarray(table[low].quantity.to_value("TeV") if table[low].unit else table[low], float)
    hi = np.asarray(table[high].quantity.to_value("TeV") if table[high].unit else table[high], float)
    lo, index = np.unique(lo, return_index=True)
    hi = hi[index]
    if not (np.all(np.diff(lo) > 0) and np.allclose(lo[1:], hi[:-1], rtol=1e-9)):
        raise ValueError(f"{where}: energy bins are not contiguous and increasing")
    return np.r_[lo, hi[-1]]


def _column(table: Table, name: str, unit: str, where: str) -> np.ndarray:
    """The distinct values of a BANDS column in ``unit`` (one per bin of that axis)."""
    if name not in table.colnames:
        raise ValueError(f"{where}: expected a column {name}, found {table.colnames}")
    column = table[name]
    values = column.quantity.to_value(unit) if column.unit else np.asarray(column, float)
    return np.unique(np.asarray(values, float))


def _to_per_deg2(hdu, path) -> float:
    unit = hdu.header.get("BUNIT")
    if unit is None and isinstance(hdu, fits.BinTableHDU):
        unit = hdu.columns["DATA"].unit
    try:
        return float(u.Unit(unit or "deg-2").to("deg-2"))
    except (ValueError, u.UnitConversionError) as error:
        raise ValueError(f"{path}[PSF]: unit {unit!r} is not a surface density (expected deg-2 or sr-1)") from error


def _irf_map(hdul, name, band_table: Table, axes: tuple[str, str], path, image):
    """An IRF map ``(axis0, axis1, y, x)`` and its sky WCS, from an image HDU or from the
    one-region table form (one row per bin, the axes' values in the BANDS table)."""
    hdu = hdul[name]
    if not isinstance(hdu, fits.BinTableHDU):
        data = image(name)
        if data.ndim != 4:
            raise ValueError(f"{path}[{name}]: expected a 4-d map, got shape {data.shape}")
        return data, WCS(hdu.header).celestial
    where = f"{path}[{name}_BANDS]"
    indices = []
    for axis in axes:
        if axis not in band_table.colnames:
            raise ValueError(f"{where}: expected a column {axis}, found {band_table.colnames}")
        values = np.asarray(band_table[axis], float)
        indices.append(np.searchsorted(np.unique(values), values))
    table = Table.read(hdu)
    # Gammapy writes one value per row, or (after a cutout) one row per outer-axis bin holding
    # the inner axis as a vector: either way the values in row-major order follow the BANDS rows
    values = np.asarray(table["DATA"], float).ravel() if "DATA" in table.colnames else None
    if values is None or values.size != len(band_table):
        raise ValueError(f"{path}[{name}]: expected a DATA column with one value per row of {name}_BANDS ({len(band_table)})")
    data = np.zeros((indices[0].max() + 1, indices[1].max() + 1, 1, 1))
    data[indices[0], indices[1], 0, 0] = values
    return data, None


_ON_OFF_MAPS = ("COUNTS_OFF", "ACCEPTANCE", "ACCEPTANCE_OFF")


def read_map_dataset(path) -> MapDatasetFile:
    """Read a MapDataset written by Gammapy (``MapDataset.write``), checking shapes, units
    and values.

    Example:
        >>> from fitax.gamma.io import read_map_dataset
        >>> read_map_dataset("../shared/data/gamma/sim/obs000.fits.gz")  # doctest: +SKIP
        MapDatasetFile('obs000.fits.gz': 15 reco x 25 true energies, 100x100 pixels, counts ..., PSF, EDISP)
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        hdul = open_fits(path)
    except (OSError, fits.VerifyError, TypeError, EOFError) as error:
        raise ValueError(f"{path}: not a readable FITS file (truncated or corrupt?): {error}") from error
    with hdul:
        names = [h.name for h in hdul]

        def image(name: str, required: bool = True):
            if name not in names:
                if required:
                    raise ValueError(f"{path}: missing HDU {name} (HDUs present: {names})")
                return None
            try:
                return np.asarray(hdul[name].data, dtype=float)
            except (OSError, TypeError, ValueError) as error:
                raise ValueError(f"{path}[{name}]: cannot read the data (truncated file?): {error}") from error

        def bands(name: str) -> Table:
            if f"{name}_BANDS" not in names:
                raise ValueError(f"{path}: missing HDU {name}_BANDS describing the axes of {name}")
            return Table.read(hdul[f"{name}_BANDS"])

        counts = image("COUNTS")
        exposure = image("EXPOSURE")
        background = image("BACKGROUND", required=False)
        mask_safe = image("MASK_SAFE", required=False)
        mask_fit = image("MASK_FIT", required=False)
        energy_edges = _edges(bands("COUNTS"), "E_MIN", "E_MAX", f"{path}[COUNTS_BANDS]")
        energy_true_edges = _edges(bands("EXPOSURE"), "ENERGY_TRUE_MIN", "ENERGY_TRUE_MAX", f"{path}[EXPOSURE_BANDS]")
        wcs = WCS(hdul["COUNTS"].header).celestial
        exposure_wcs = WCS(hdul["EXPOSURE"].header).celestial
        unit = hdul["EXPOSURE"].header.get("BUNIT", "m2 s")

        if counts.ndim != 3 or counts.shape[0] != len(energy_edges) - 1:
            raise ValueError(f"{path}[COUNTS]: shape {counts.shape} does not match {len(energy_edges) - 1} energy bins in COUNTS_BANDS")
        if exposure.ndim != 3 or exposure.shape[0] != len(energy_true_edges) - 1:
            raise ValueError(f"{path}[EXPOSURE]: shape {exposure.shape} does not match {len(energy_true_edges) - 1} true-energy bins")
        if exposure.shape[1:] != counts.shape[1:] or not np.allclose(exposure_wcs.wcs.cdelt, wcs.wcs.cdelt) or not np.allclose(
            exposure_wcs.wcs.crval, wcs.wcs.crval
        ) or not np.allclose(exposure_wcs.wcs.crpix, wcs.wcs.crpix):
            raise ValueError(f"{path}[EXPOSURE]: sky geometry {exposure.shape[1:]} differs from COUNTS {counts.shape[1:]} (shape or WCS)")
        if not np.all(np.isfinite(exposure)) or np.any(exposure < 0):
            bad = int(np.sum(~np.isfinite(exposure) | (exposure < 0)))
            raise ValueError(f"{path}[EXPOSURE]: {bad} pixels are NaN or negative; exposure must be finite and >= 0")
        if str(unit).replace(" ", "") not in ("m2s", "cm2s", "m2.s", "cm2.s"):
            raise ValueError(f"{path}[EXPOSURE]: unit {unit!r}; expected 'm2 s' or 'cm2 s'")
        if "cm2" in str(unit):
            exposure = exposure * 1e-4
        # a MapDatasetOnOff's OFF counts and acceptances (RingBackgroundMaker's): all three or none
        off_maps = {name: image(name, required=False) for name in _ON_OFF_MAPS}
        present = [name for name, array in off_maps.items() if array is not None]
        if present and len(present) != len(_ON_OFF_MAPS):
            raise ValueError(f"{path}: an on-off map dataset needs HDUs {list(_ON_OFF_MAPS)}, found only {present}")
        for name, array in (("BACKGROUND", background), ("MASK_SAFE", mask_safe), ("MASK_FIT", mask_fit), *off_maps.items()):
            if array is not None and array.shape != counts.shape:
                raise ValueError(f"{path}[{name}]: shape {array.shape} differs from COUNTS {counts.shape}")
        if background is not None and (not np.all(np.isfinite(background)) or np.any(background < 0)):
            raise ValueError(f"{path}[BACKGROUND]: background must be finite and >= 0")
        for name, array in off_maps.items():  # made by FFT convolutions (Gammapy's ring): -1e-15 is a zero
            if array is not None and (not np.all(np.isfinite(array)) or np.any(array < -1e-6 * max(float(np.max(array)), 1.0))):
                raise ValueError(f"{path}[{name}]: values must be finite and >= 0")

        n_true, n_reco = len(energy_true_edges) - 1, len(energy_edges) - 1
        psf = psf_rad = psf_rad_edges = psf_energy_true = psf_wcs = None
        if "PSF" in names:
            psf_bands = bands("PSF")
            where = f"{path}[PSF_BANDS]"
            psf_rad = _column(psf_bands, "RAD", "deg", where)
            psf_rad_edges = np.r_[_column(psf_bands, "RAD_MIN", "deg", where), _column(psf_bands, "RAD_MAX", "deg", where)[-1]]
            psf_energy_true = _column(psf_bands, "ENERGY_TRUE", "TeV", where)
            psf, psf_wcs = _irf_map(hdul, "PSF", psf_bands, ("ENERGY_TRUE", "RAD"), path, image)
            psf = psf * _to_per_deg2(hdul["PSF"], path)
            if psf.shape[:2] != (len(psf_energy_true), len(psf_rad)):
                raise ValueError(f"{path}[PSF]: shape {psf.shape}; expected ({len(psf_energy_true)}, {len(psf_rad)}, y, x) from PSF_BANDS")
            if not np.all(np.isfinite(psf)) or np.any(psf < 0):
                raise ValueError(f"{path}[PSF]: PSF values must be finite and >= 0")
        edisp = edisp_wcs = None
        if "EDISP" in names:
            edisp, edisp_wcs = _irf_map(hdul, "EDISP", bands("EDISP"), ("ENERGY_TRUE", "ENERGY"), path, image)
            if edisp.shape[:2] != (n_true, n_reco):
                raise ValueError(f"{path}[EDISP]: shape {edisp.shape}; expected ({n_true}, {n_reco}, y, x)")
        livetime = gti = None
        if "GTI" in names:
            gti = read_gti(hdul["GTI"])
            livetime = float(np.sum((gti[:, 1] - gti[:, 0]).to_value("s")))
        kernel_map = None
        if _KERNEL_COMPONENTS in names:
            kernel_map = _psf_kernel_map(hdul, path)
            if not np.allclose(kernel_map.energy_true_edges, energy_true_edges, rtol=1e-6):
                raise ValueError(f"{path}[{_KERNEL_TERMS}]: the kernel map's true-energy bins differ from EXPOSURE_BANDS'")
            scale = np.asarray(wcs.wcs.cdelt, float)
            if not np.allclose(kernel_map.pixel_scale, scale, rtol=1e-6):
                raise ValueError(f"{path}[{_KERNEL_COMPONENTS}]: kernel pixels CDELT {kernel_map.pixel_scale.tolist()} differ "
                                 f"from the maps' {scale.tolist()} (the kernels must be in the maps' pixels)")
    return MapDatasetFile(
        name=path.name, path=path, counts=counts, exposure=exposure, background=background,
        mask_safe=None if mask_safe is None else mask_safe.astype(bool),
        mask_fit=None if mask_fit is None else mask_fit.astype(bool), energy_edges=energy_edges,
        energy_true_edges=energy_true_edges, wcs=wcs, psf=psf, psf_rad=psf_rad, psf_rad_edges=psf_rad_edges,
        psf_energy_true=psf_energy_true, psf_wcs=psf_wcs, edisp=edisp,
        edisp_wcs=edisp_wcs, livetime=livetime, gti=gti, psf_kernel_map=kernel_map,
        counts_off=off_maps["COUNTS_OFF"], acceptance=off_maps["ACCEPTANCE"], acceptance_off=off_maps["ACCEPTANCE_OFF"],
    )


# The asymmetric PSF kernel map's HDUs (in a MapDataset file, which Gammapy reads ignoring
# them, or on their own). COMPONENTS is an image (terms, k, k) whose WCS is the kernel's, as
# Gammapy's PSFKernel (centred on offset 0, the maps' CDELT); COEFFICIENTS an image (terms,
# ny, nx) on the node grid's WCS, each plane a sky map of one term's weight; TERMS the table
# of the terms' true-energy bins (Gammapy's BANDS columns) and their index within the bin.
_KERNEL_COMPONENTS, _KERNEL_COEFFICIENTS, _KERNEL_TERMS = "PSF_KERNEL_COMPONENTS", "PSF_KERNEL_COEFFICIENTS", "PSF_KERNEL_TERMS"


def psf_kernel_map_hdus(kernel_map: PSFKernelMap) -> list:
    """The three HDUs of ``kernel_map`` (``PSF_KERNEL_COMPONENTS``, ``PSF_KERNEL_COEFFICIENTS``,
    ``PSF_KERNEL_TERMS``)."""
    edges = kernel_map.energy_true_edges
    of = kernel_map.energy_of
    within = np.array([int(np.sum(of[:t] == of[t])) for t in range(len(of))])
    terms = Table({"CHANNEL": np.arange(len(of)), "ENERGY_TRUE": np.sqrt(edges[of] * edges[of + 1]),
                   "ENERGY_TRUE_MIN": edges[of], "ENERGY_TRUE_MAX": edges[of + 1], "COMPONENT": within},
                  units={"ENERGY_TRUE": "TeV", "ENERGY_TRUE_MIN": "TeV", "ENERGY_TRUE_MAX": "TeV"})
    terms_hdu = fits.table_to_hdu(terms)
    terms_hdu.name = _KERNEL_TERMS
    size = kernel_map.kernel_size
    kernel_header = fits.Header()
    for axis, ctype in enumerate(kernel_map.node_wcs.wcs.ctype, start=1):
        kernel_header[f"CTYPE{axis}"] = ctype
        kernel_header[f"CRPIX{axis}"] = (size + 1) / 2
        kernel_header[f"CRVAL{axis}"] = 0.0
        kernel_header[f"CDELT{axis}"] = float(kernel_map.pixel_scale[axis - 1])
        kernel_header[f"CUNIT{axis}"] = "deg"
    kernel_header.update({"HDUCLAS1": "PSF_KERNEL_MAP", "HDUCLAS2": "COMPONENTS", "TOLERANC": kernel_map.tolerance,
                          "BANDSHDU": _KERNEL_TERMS})
    node_header = kernel_map.node_wcs.to_header()
    node_header.update({"HDUCLAS1": "PSF_KERNEL_MAP", "HDUCLAS2": "COEFFICIENTS", "BANDSHDU": _KERNEL_TERMS})
    return [fits.ImageHDU(kernel_map.components, header=kernel_header, name=_KERNEL_COMPONENTS),
            fits.ImageHDU(kernel_map.coefficients, header=node_header, name=_KERNEL_COEFFICIENTS), terms_hdu]


def _psf_kernel_map(hdul, path) -> PSFKernelMap:
    names = [h.name for h in hdul]
    for name in (_KERNEL_COMPONENTS, _KERNEL_COEFFICIENTS, _KERNEL_TERMS):
        if name not in names:
            raise ValueError(f"{path}: missing HDU {name} of the PSF kernel map (HDUs present: {names})")
    components = np.asarray(hdul[_KERNEL_COMPONENTS].data, float)
    coefficients = np.asarray(hdul[_KERNEL_COEFFICIENTS].data, float)
    terms = Table.read(hdul[_KERNEL_TERMS])
    where = f"{path}[{_KERNEL_TERMS}]"
    energy_true_edges = _edges(terms, "ENERGY_TRUE_MIN", "ENERGY_TRUE_MAX", where)
    low = terms["ENERGY_TRUE_MIN"].quantity.to_value("TeV") if terms["ENERGY_TRUE_MIN"].unit else np.asarray(terms["ENERGY_TRUE_MIN"])
    energy_of = np.searchsorted(energy_true_edges, np.asarray(low, float) * (1 + 1e-9)) - 1
    for name, array in ((_KERNEL_COMPONENTS, components), (_KERNEL_COEFFICIENTS, coefficients)):
        if array.ndim != 3 or len(array) != len(terms):
            raise ValueError(f"{path}[{name}]: shape {array.shape}; expected ({len(terms)}, ., .), one plane per row of {_KERNEL_TERMS}")
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{path}[{name}]: values must be finite")
    header = hdul[_KERNEL_COMPONENTS].header
    try:
        pixel_scale = np.array([float(header["CDELT1"]), float(header["CDELT2"])])
        return PSFKernelMap(components=components, energy_of=energy_of.astype(np.int32), coefficients=coefficients,
                            energy_true_edges=energy_true_edges, node_wcs=WCS(hdul[_KERNEL_COEFFICIENTS].header).celestial,
                            pixel_scale=pixel_scale, tolerance=float(header.get("TOLERANC", np.nan)))
    except KeyError as error:
        raise ValueError(f"{path}[{_KERNEL_COMPONENTS}]: missing header keyword {error} (the kernel pixels' size)") from error
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error


def read_psf_kernel_map(path) -> PSFKernelMap:
    """An asymmetric PSF kernel map from a FITS file (its own, or a MapDataset's) holding the
    ``PSF_KERNEL_*`` HDUs."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        hdul = open_fits(path)
    except (OSError, fits.VerifyError, TypeError, EOFError) as error:
        raise ValueError(f"{path}: not a readable FITS file (truncated or corrupt?): {error}") from error
    with hdul:
        return _psf_kernel_map(hdul, path)


def write_psf_kernel_map(kernel_map: PSFKernelMap, path) -> Path:
    """Write ``kernel_map`` as a FITS file of its own (atomically)."""
    hdulist = fits.HDUList([fits.PrimaryHDU()] + psf_kernel_map_hdus(kernel_map))
    return atomic_write(path, lambda tmp: hdulist.writeto(tmp, overwrite=True))


def bands_hdu(name: str, axes: list[tuple[str, np.ndarray, str]]) -> fits.BinTableHDU:
    """A ``<NAME>_BANDS`` table: one row per bin of the non-spatial axes (first axis
    fastest), with the centre and edges of each; ``axes`` are ``(column, edges, interp)``."""
    grids = np.meshgrid(*[np.arange(len(edges) - 1) for _, edges, _ in axes], indexing="ij")
    index = [g.T.ravel() for g in grids]  # first axis varies fastest
    columns = {"CHANNEL": np.arange(index[0].size)}
    header = fits.Header()
    for number, ((column, edges, interp), rows) in enumerate(zip(axes, index), start=1):
        low, high = (column + "_MIN", column + "_MAX") if column != "ENERGY" else ("E_MIN", "E_MAX")
        centre = np.sqrt(edges[:-1] * edges[1:]) if interp == "log" else 0.5 * (edges[:-1] + edges[1:])
        columns[column] = centre[rows]
        columns[low] = edges[:-1][rows]
        columns[high] = edges[1:][rows]
        header[f"AXCOLS{number}"] = f"{low},{high}"
        header[f"INTERP{number}"] = interp
    table = Table(columns)
    for key in columns:
        if key != "CHANNEL":
            table[key].unit = "deg" if key.startswith("RAD") else "TeV"
    hdu = fits.table_to_hdu(table)
    hdu.header.update(header)
    hdu.name = f"{name}_BANDS"
    return hdu


def map_image_hdu(name: str, data: np.ndarray, wcs: WCS, bands: fits.BinTableHDU, unit: str = "") -> fits.ImageHDU:
    """An image HDU of a Gammapy map: the celestial WCS and the axes of ``bands``."""
    header = wcs.celestial.to_header()
    for key in ("AXCOLS1", "INTERP1", "AXCOLS2", "INTERP2"):
        if key in bands.header:
            header[key] = bands.header[key]
    header["WCSSHAPE"] = "(" + ",".join(str(n) for n in data.shape[::-1]) + ")"
    header["BANDSHDU"] = bands.name
    header["BUNIT"] = unit
    return fits.ImageHDU(data, header=header, name=name)


def write_map_dataset(contents: MapDatasetFile, path) -> Path:
    """Write a MapDataset file in Gammapy's format (readable by ``MapDataset.read`` and by
    :func:`read_map_dataset`), atomically. PSF and energy dispersion must be maps with a
    sky grid (``psf_wcs``/``edisp_wcs``)."""
    reco = [("ENERGY", contents.energy_edges, "log")]
    true = [("ENERGY_TRUE", contents.energy_true_edges, "log")]
    hdus = [fits.PrimaryHDU(header=fits.Header([("NAME", contents.name), ("CREATOR", "fitax")]))]

    def add(name, data, wcs, axes, unit=""):
        bands = bands_hdu(name, axes)
        hdus.extend([map_image_hdu(name, data, wcs, bands, unit), bands])

    add("COUNTS", contents.counts, contents.wcs, reco)
    add("EXPOSURE", contents.exposure, contents.wcs, true, "m2 s")
    if contents.background is not None:
        add("BACKGROUND", contents.background, contents.wcs, reco)
    if contents.edisp is not None:
        add("EDISP", contents.edisp, contents.edisp_wcs, reco + true)
        if contents.edisp_exposure is not None:
            whole_range = [("ENERGY", contents.energy_edges[[0, -1]], "log")]
            add("EDISP_EXPOSURE", contents.edisp_exposure, contents.edisp_wcs, whole_range + true, "m2 s")
    if contents.psf is not None:
        if len(contents.psf_energy_true) != len(contents.energy_true_edges) - 1:
            raise ValueError("write_map_dataset: the PSF must be tabulated at the exposure's true energies")
        add("PSF", contents.psf, contents.psf_wcs, [("RAD", contents.psf_rad_edges, "lin")] + true, "deg-2")
        if contents.psf_exposure is not None:
            add("PSF_EXPOSURE", contents.psf_exposure, contents.psf_wcs, [("RAD", contents.psf_rad_edges[[0, -1]], "lin")] + true, "m2 s")
    if contents.psf_kernel_map is not None:
        hdus.extend(psf_kernel_map_hdus(contents.psf_kernel_map))
    for name, mask in (("MASK_SAFE", contents.mask_safe), ("MASK_FIT", contents.mask_fit)):
        if mask is not None:
            add(name, mask.astype(np.int64), contents.wcs, reco)
    if contents.gti is not None or contents.livetime is not None:
        hdus.append(_gti_hdu(contents.gti, contents.livetime))
    hdulist = fits.HDUList(hdus)
    return atomic_write(path, lambda tmp: hdulist.writeto(tmp, overwrite=True))


def _gti_hdu(gti: Time | None, livetime: float | None) -> fits.BinTableHDU:
    """Gammapy's GTI table: times relative to its reference, 2001-01-01 (TT); without known
    times, one interval of the livetime from it."""
    seconds = (gti - _GTI_REFERENCE).to_value("s") if gti is not None else np.array([[0.0, livetime]])
    table = Table({"START": seconds[:, 0], "STOP": seconds[:, 1]}, units={"START": "s", "STOP": "s"})
    hdu = fits.table_to_hdu(table)
    hdu.name = "GTI"
    hdu.header.update({"MJDREFI": 51910, "MJDREFF": 7.428703703703703e-4, "TIMESYS": "TT", "TIMEUNIT": "s", "TIMEREF": "LOCAL"})
    return hdu


def _region_hdu(name: str, regions, wcs: WCS) -> fits.BinTableHDU:
    """A ``<NAME>_REGION`` table: the pixel ``regions`` of ``wcs`` (the ``regions`` package's
    FITS serialisation), with the WCS and its image shape in the header (Gammapy's
    ``RegionGeom``)."""
    from regions import Regions

    table = Regions(list(regions)).serialize(format="fits")
    header = wcs.to_header()
    ny, nx = wcs.array_shape
    header["WCSSHAPE"] = f"({nx},{ny})"
    hdu = fits.BinTableHDU(table, name=f"{name}_REGION")
    hdu.header.update(header)
    return hdu


def region_map_hdus(name: str, data: np.ndarray, axes: list[tuple[str, np.ndarray, str]], regions, wcs: WCS, unit: str = "",
                    header: dict | None = None) -> list[fits.BinTableHDU]:
    """The three HDUs of a Gammapy ``RegionNDMap``: ``NAME`` (one row per bin of the last
    of ``axes``' dimensions in ``data``, a ``DATA`` cell of the rest with the one-pixel sky
    axes), ``NAME_BANDS`` and ``NAME_REGION`` (``regions`` in pixels of ``wcs``)."""
    bands = bands_hdu(name, axes)
    data = np.asarray(data)
    cells = data.reshape(data.shape + (1, 1))
    table = Table({"CHANNEL": np.arange(len(cells), dtype=np.int16), "DATA": cells})
    table["DATA"].unit = unit
    hdu = fits.table_to_hdu(table)
    hdu.name = name
    for key in ("AXCOLS1", "INTERP1", "AXCOLS2", "INTERP2"):
        if key in bands.header:
            hdu.header[key] = bands.header[key]
    hdu.header.update(header or {})
    return [hdu, bands, _region_hdu(name, regions, wcs)]


def write_spectrum_onoff(contents, path) -> Path:
    """Write an on-off spectrum (:class:`fitax.gamma.spectrum_reduce.SpectrumOnOffFile`) as
    Gammapy's ``SpectrumDatasetOnOff.write`` does (its default ``gadf`` format: region maps as
    tables), readable by Gammapy and :func:`fitax.gamma.spectrum.read_spectrum_dataset`;
    atomically."""
    reco = [("ENERGY", contents.energy_edges, "log")]
    true = [("ENERGY_TRUE", contents.energy_true_edges, "log")]
    on = ([contents.on_region.to_pixel(contents.on_wcs)], contents.on_wcs)
    hdus = [fits.PrimaryHDU(header=fits.Header([("NAME", contents.name), ("CREATOR", "fitax")]))]
    hdus += region_map_hdus("COUNTS", contents.counts, reco, *on)
    hdus += region_map_hdus("EXPOSURE", contents.exposure, true, *on, unit="m2 s", header={"LIVETIME": contents.livetime})
    hdus += region_map_hdus("EDISP", contents.edisp, reco + true, *on)
    whole_range = [("ENERGY", contents.energy_edges[[0, -1]], "log")]
    hdus += region_map_hdus("EDISP_EXPOSURE", contents.edisp_exposure[:, None], whole_range + true, *on, unit="m2 s")
    hdus += region_map_hdus("MASK_SAFE", contents.mask_safe.astype(bool), reco, *on)
    hdus.append(_gti_hdu(contents.gti, contents.livetime))
    hdus += region_map_hdus("COUNTS_OFF", contents.counts_off, reco, contents.off_regions, contents.off_wcs)
    hdus += region_map_hdus("ACCEPTANCE", contents.acceptance, reco, *on)
    hdus += region_map_hdus("ACCEPTANCE_OFF", contents.acceptance_off, reco, contents.off_regions, contents.off_wcs)
    hdulist = fits.HDUList(hdus)
    return atomic_write(path, lambda tmp: hdulist.writeto(tmp, overwrite=True))


def read_sky_mask(path) -> tuple[np.ndarray, WCS]:
    """A sky mask image (as Gammapy's ``Map.write`` of an exclusion mask: the first image HDU
    with data, 2D, non-zero where pixels may be used) and its celestial WCS; a 3D mask with
    one plane is taken as 2D."""
    path = Path(path)
    try:
        hdul = open_fits(path)
    except (OSError, fits.VerifyError, TypeError, EOFError) as error:
        raise ValueError(f"{path}: not a readable FITS file: {error}") from error
    with hdul:
        hdu = next((h for h in hdul if h.is_image and h.data is not None), None)
        if hdu is None:
            raise ValueError(f"{path}: no image HDU with data (expected a sky mask)")
        data = np.asarray(hdu.data)
        if data.ndim == 3 and data.shape[0] == 1:
            data = data[0]
        if data.ndim != 2:
            raise ValueError(f"{path}[{hdu.name}]: a sky mask is a 2D image, this one has shape {data.shape}")
        wcs = WCS(hdu.header).celestial
        if not wcs.has_celestial:
            raise ValueError(f"{path}[{hdu.name}]: the mask has no celestial WCS")
        return data != 0, wcs
