"""1D spectra, as Gammapy reads them: on-off spectra (``SpectrumDatasetOnOff``, WStat) from
OGIP files or Gammapy's own FITS format, and spectra with a background template
(``SpectrumDataset``, Cash) from Gammapy's FITS format.

A spectrum is counts per reconstructed-energy bin, with an effective area x livetime per
true-energy bin and an energy-dispersion matrix; an on-off spectrum adds off counts and
their exposure ratio ``alpha``, a ``SpectrumDataset`` a background spectrum. The predicted
signal is

    npred_sig(E) = sum over E_true of edisp(E_true -> E) x exposure(E_true) x integral of the spectrum

and the statistic, summed over the safe bins, is WStat (the background profiled out bin by
bin) for on-off spectra and Cash with ``npred_sig + background x norm (E / E_ref)^-tilt``
(a ``FoVBackgroundModel`` of the dataset, if any) otherwise. Spectra of equal binning are
stacked like map datasets (:mod:`fitax.gamma.spectrum_group`), so a joint fit of many
observations compiles once.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from astropy.table import Table

from astropy.time import Time

from ..io import open_fits
from .io import read_gti
from .irf import diagonal_edisp
from .likelihood import npred, stat_sum
from .models import Models, SkyModel
from .spectrum_group import SpectrumGroup, bind_spectra

__all__ = ["SpectrumDataset", "SpectrumDatasetOnOff", "read_ogip", "read_spectrum_dataset"]


class _Spectrum:
    """What 1D datasets share: their predicted signal and statistic, and the dataset
    protocol of :mod:`fitax.gamma.likelihood` (spectra of equal binning and kind are
    stacked into one :class:`fitax.gamma.spectrum_group.SpectrumGroup`)."""

    counts: np.ndarray
    energy_true_edges: np.ndarray

    @property
    def shape(self) -> tuple:
        return self.counts.shape

    def npred_signal(self, models: Models) -> np.ndarray:
        """Predicted signal counts ``(energy,)``."""
        return npred([self], models)[0]

    def stat_sum(self, models: Models) -> float:
        """The statistic (WStat or Cash) over the safe bins, in Gammapy's convention."""
        return stat_sum([self], models)

    def group_key(self) -> tuple:
        return ("spectrum", type(self).__name__, self.counts.shape, tuple(np.round(self.energy_true_edges, 12)))

    @staticmethod
    def check_models(datasets: list, sources: list[SkyModel]) -> None:
        """Any sky model applies to a spectrum (its spatial model, if any, is not used)."""

    def bind_group(self, members: list, sources: list[SkyModel], shard: bool) -> SpectrumGroup:
        """The members stacked, on-off (WStat) or with a background spectrum (Cash)."""
        return bind_spectra(members, sources, on_off=isinstance(self, SpectrumDatasetOnOff))


@dataclasses.dataclass(frozen=True, repr=False)
class SpectrumDatasetOnOff(_Spectrum):
    """On-off counts ``(energy,)`` with ``alpha`` (on/off exposure ratio), the exposure
    ``(energy_true,)`` [cm2 s] and the energy dispersion ``(energy_true, energy)``."""

    name: str
    counts: np.ndarray
    counts_off: np.ndarray
    alpha: np.ndarray
    exposure: np.ndarray
    edisp: np.ndarray
    mask: np.ndarray
    energy_edges: np.ndarray
    energy_true_edges: np.ndarray
    livetime: float
    source_files: tuple[Path, ...] = ()
    gti: Time | None = None
    """The good time intervals ``(n, 2)`` where the file gives them (light curves place the
    spectrum in time by them)."""

    @classmethod
    def read(cls, path, name: str | None = None) -> "SpectrumDatasetOnOff":
        """Read an OGIP PHA file (and the ARF, RMF and background files it names) or a
        file in Gammapy's own format (``SpectrumDatasetOnOff.write(format="gadf")``)."""
        if _is_ogip(path):
            return read_ogip(path, name)
        dataset = read_spectrum_dataset(path, name)
        if not isinstance(dataset, SpectrumDatasetOnOff):
            raise ValueError(f"{path}: no COUNTS_OFF HDU; this is a SpectrumDataset, not an on-off spectrum")
        return dataset

    def __repr__(self) -> str:
        livetime = f", livetime {self.livetime:.0f} s" if np.isfinite(self.livetime) else ""
        return (f"SpectrumDatasetOnOff({self.name!r}: {len(self.counts)} x {len(self.exposure)} (true) energies, "
                f"{self.counts[self.mask].sum():.0f} on / {self.counts_off[self.mask].sum():.0f} off counts in the safe range"
                f"{livetime})")


@dataclasses.dataclass(frozen=True, repr=False)
class SpectrumDataset(_Spectrum):
    """Counts ``(energy,)`` with a background spectrum ``(energy,)`` (predicted counts),
    the exposure ``(energy_true,)`` [cm2 s] and the energy dispersion ``(energy_true,
    energy)``; fitted with Cash."""

    name: str
    counts: np.ndarray
    background: np.ndarray
    exposure: np.ndarray
    edisp: np.ndarray
    mask: np.ndarray
    energy_edges: np.ndarray
    energy_true_edges: np.ndarray
    source_files: tuple[Path, ...] = ()
    gti: Time | None = None

    @classmethod
    def read(cls, path, name: str | None = None) -> "SpectrumDataset":
        """Read a file written by Gammapy's ``SpectrumDataset.write``."""
        dataset = read_spectrum_dataset(path, name)
        if not isinstance(dataset, SpectrumDataset):
            raise ValueError(f"{path}: has off counts (COUNTS_OFF); read it as a SpectrumDatasetOnOff")
        return dataset

    def __repr__(self) -> str:
        return (f"SpectrumDataset({self.name!r}: {len(self.counts)} x {len(self.exposure)} (true) energies, "
                f"{self.counts[self.mask].sum():.0f} counts and {self.background[self.mask].sum():.1f} background in the safe range)")


def _energy_column(table: Table, name: str, where: str) -> np.ndarray:
    if name not in table.colnames:
        raise ValueError(f"{where}: expected a column {name}, found {table.colnames}")
    column = table[name]
    return np.asarray(column.quantity.to_value("TeV") if column.unit else column, float)


def _open(path: Path, what: str):
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file ({what})")
    try:
        return open_fits(path)
    except (OSError, TypeError, ValueError) as error:
        raise ValueError(f"{path}: not a readable FITS file: {error}") from error


def _spectrum(path: Path, what: str):
    with _open(path, what) as hdul:
        if "SPECTRUM" not in hdul:
            raise ValueError(f"{path}: missing HDU SPECTRUM ({what})")
        table = Table.read(hdul["SPECTRUM"])
        header = hdul["SPECTRUM"].header
        ebounds = Table.read(hdul["EBOUNDS"]) if "EBOUNDS" in hdul else None
    if "COUNTS" not in table.colnames:
        raise ValueError(f"{path}[SPECTRUM]: no COUNTS column")

    def per_bin(name, default=1.0):
        if name in table.colnames:
            return np.asarray(table[name], float)
        return np.full(len(table), float(header.get(name, default)))

    return table, header, ebounds, per_bin


def read_ogip(path, name: str | None = None) -> SpectrumDatasetOnOff:
    """Read an OGIP on-off spectrum: the PHA file ``path`` and the ``ANCRFILE``,
    ``RESPFILE`` and ``BACKFILE`` its header names (relative to its folder)."""
    path = Path(path)
    table, header, ebounds, per_bin = _spectrum(path, "PHA")
    counts = np.asarray(table["COUNTS"], float)
    quality = per_bin("QUALITY", 0.0)
    backscal_on = per_bin("BACKSCAL") * per_bin("AREASCAL")
    livetime = float(header.get("EXPOSURE", np.nan))
    if not np.isfinite(livetime) or livetime <= 0:
        raise ValueError(f"{path}[SPECTRUM]: EXPOSURE keyword (livetime) must be a positive number, got {header.get('EXPOSURE')}")
    if ebounds is None:
        raise ValueError(f"{path}: missing HDU EBOUNDS")
    energy_edges = np.r_[_energy_column(ebounds, "E_MIN", f"{path}[EBOUNDS]"), _energy_column(ebounds, "E_MAX", f"{path}[EBOUNDS]")[-1]]
    files = {}
    for key, what in (("ANCRFILE", "effective area"), ("RESPFILE", "energy dispersion"), ("BACKFILE", "off counts")):
        value = str(header.get(key, "")).strip()
        if not value or value.lower() == "none":
            raise ValueError(f"{path}[SPECTRUM]: keyword {key} (the {what} file) is missing")
        files[key] = path.parent / value

    with _open(files["ANCRFILE"], "effective area") as hdul:
        if "SPECRESP" not in hdul:
            raise ValueError(f"{files['ANCRFILE']}: missing HDU SPECRESP")
        arf = Table.read(hdul["SPECRESP"])
    where = f"{files['ANCRFILE']}[SPECRESP]"
    energy_true_edges = np.r_[_energy_column(arf, "ENERG_LO", where), _energy_column(arf, "ENERG_HI", where)[-1]]
    area = arf["SPECRESP"].quantity.to_value("cm2") if arf["SPECRESP"].unit else np.asarray(arf["SPECRESP"], float)
    area = np.asarray(area, float)

    edisp = _read_rmf(files["RESPFILE"], len(energy_true_edges) - 1, len(counts))
    off_table, _, _, off_bin = _spectrum(files["BACKFILE"], "off counts")
    counts_off = np.asarray(off_table["COUNTS"], float)
    backscal_off = off_bin("BACKSCAL") * off_bin("AREASCAL")
    if len(counts_off) != len(counts):
        raise ValueError(f"{files['BACKFILE']}: {len(counts_off)} channels, the PHA file has {len(counts)}")
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha = np.where(backscal_off > 0, backscal_on / backscal_off, 0.0)
    mask = (quality == 0) & (alpha > 0)
    for label, array in (("COUNTS", counts), ("off COUNTS", counts_off), ("SPECRESP", area)):
        if not np.all(np.isfinite(array)) or np.any(array < 0):
            raise ValueError(f"{path}: {label} must be finite and >= 0")
    with _open(path, "PHA") as hdul:
        gti = read_gti(hdul["GTI"]) if "GTI" in hdul else None
    return SpectrumDatasetOnOff(
        name=name or _observation_name(header, path), counts=counts, counts_off=counts_off, alpha=alpha,
        exposure=area * livetime, edisp=edisp, mask=mask, energy_edges=energy_edges, energy_true_edges=energy_true_edges,
        livetime=livetime, source_files=(path, *files.values()), gti=gti,
    )


def _is_ogip(path) -> bool:
    with _open(Path(path), "spectrum") as hdul:
        return "SPECTRUM" in hdul


def _region_column(hdul, name: str, path: Path, unit: str | None = None, required: bool = True) -> np.ndarray | None:
    """The ``DATA`` of a region map HDU (Gammapy's format for 1D datasets: one row per
    bin of the HDU's first axis), squeezed of its one-pixel sky axes."""
    if name not in hdul:
        if required:
            raise ValueError(f"{path}: missing HDU {name}")
        return None
    hdu = hdul[name]
    if "DATA" not in hdu.columns.names:
        raise ValueError(f"{path}[{name}]: expected a DATA column, found {hdu.columns.names}")
    data = np.asarray(hdu.data["DATA"], float)
    data = data.reshape(data.shape[:2]) if data.ndim == 4 else data.reshape(len(data))
    column_unit = hdu.columns["DATA"].unit
    if unit is not None and column_unit:
        from astropy import units as u

        data = data * u.Unit(column_unit).to(unit)
    if not np.all(np.isfinite(data)):
        raise ValueError(f"{path}[{name}]: DATA has non-finite values")
    return data


def _band_edges(hdul, name: str, low: str, high: str, path: Path) -> np.ndarray:
    """Bin edges [TeV] of the one energy axis of a region map's ``*_BANDS`` table."""
    if name not in hdul:
        raise ValueError(f"{path}: missing HDU {name}")
    table = Table.read(hdul[name])
    where = f"{path}[{name}]"
    return np.r_[_energy_column(table, low, where), _energy_column(table, high, where)[-1]]


def read_spectrum_dataset(path, name: str | None = None) -> "SpectrumDataset | SpectrumDatasetOnOff":
    """Read a 1D dataset written by Gammapy (``SpectrumDataset.write``, or
    ``SpectrumDatasetOnOff.write(format="gadf")``): region maps stored as tables, one row
    per energy bin; an on-off spectrum when it has ``COUNTS_OFF``."""
    path = Path(path)
    with _open(path, "spectrum dataset") as hdul:
        counts = _region_column(hdul, "COUNTS", path)
        energy_edges = _band_edges(hdul, "COUNTS_BANDS", "E_MIN", "E_MAX", path)
        exposure = _region_column(hdul, "EXPOSURE", path, unit="cm2 s")
        energy_true_edges = _band_edges(hdul, "EXPOSURE_BANDS", "ENERGY_TRUE_MIN", "ENERGY_TRUE_MAX", path)
        edisp = _region_column(hdul, "EDISP", path, required=False)
        mask = _region_column(hdul, "MASK_SAFE", path, required=False)
        if "MASK_FIT" in hdul:
            mask = (np.ones_like(counts) if mask is None else mask) * _region_column(hdul, "MASK_FIT", path)
        mask = np.ones(len(counts), bool) if mask is None else mask.astype(bool)
        counts_off = _region_column(hdul, "COUNTS_OFF", path, required=False)
        acceptance = _region_column(hdul, "ACCEPTANCE", path, required=counts_off is not None)
        acceptance_off = _region_column(hdul, "ACCEPTANCE_OFF", path, required=counts_off is not None)
        background = _region_column(hdul, "BACKGROUND", path, required=False)
        livetime = float(hdul["EXPOSURE"].header.get("LIVETIME", np.nan))
        gti = read_gti(hdul["GTI"]) if "GTI" in hdul else None
    if len(counts) != len(energy_edges) - 1 or len(exposure) != len(energy_true_edges) - 1:
        raise ValueError(f"{path}: COUNTS has {len(counts)} bins for {len(energy_edges) - 1} energies, EXPOSURE "
                         f"{len(exposure)} for {len(energy_true_edges) - 1} true energies")
    if edisp is None:
        edisp = diagonal_edisp(energy_true_edges, energy_edges)
    elif edisp.shape != (len(exposure), len(counts)):
        raise ValueError(f"{path}[EDISP]: shape {edisp.shape}, expected (true energies, energies) = {(len(exposure), len(counts))}")
    for label, array in (("COUNTS", counts), ("EXPOSURE", exposure), ("COUNTS_OFF", counts_off), ("BACKGROUND", background)):
        if array is not None and np.any(array < 0):
            raise ValueError(f"{path}[{label}]: values must be >= 0")
    name = name or path.name.split(".")[0]
    common = dict(name=name, counts=counts, exposure=exposure, edisp=edisp, energy_edges=energy_edges,
                  energy_true_edges=energy_true_edges, source_files=(path,))
    if counts_off is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            alpha = np.where(acceptance_off > 0, acceptance / acceptance_off, 0.0)
        return SpectrumDatasetOnOff(counts_off=counts_off, alpha=alpha, mask=mask & (alpha > 0), livetime=livetime, gti=gti, **common)
    return SpectrumDataset(background=np.zeros_like(counts) if background is None else background, mask=mask, gti=gti, **common)


def _observation_name(header, path: Path) -> str:
    """``OBS_ID`` when it is one observation's number, else the file name (stacked spectra
    carry a list of observations there)."""
    obs_id = str(header.get("OBS_ID", "")).strip()
    return obs_id if obs_id.isdigit() else path.name.split(".")[0]


def _read_rmf(path: Path, n_true: int, n_reco: int) -> np.ndarray:
    """The dense ``(energy_true, energy)`` matrix of an OGIP RMF (grouped, sparse rows)."""
    with _open(path, "energy dispersion") as hdul:
        name = "MATRIX" if "MATRIX" in hdul else "SPECRESP MATRIX" if "SPECRESP MATRIX" in hdul else None
        if name is None:
            raise ValueError(f"{path}: missing HDU MATRIX")
        hdu = hdul[name]
        first_channel = int(hdu.header.get("TLMIN4", 0))
        data = hdu.data
        matrix = np.zeros((len(data), n_reco))
        for row, (groups, starts, widths, values) in enumerate(zip(data["N_GRP"], data["F_CHAN"], data["N_CHAN"], data["MATRIX"])):
            values = np.atleast_1d(values)
            offset = 0
            for start, width in zip(np.atleast_1d(starts)[:groups], np.atleast_1d(widths)[:groups]):
                begin = int(start) - first_channel
                matrix[row, begin:begin + int(width)] = values[offset:offset + int(width)]
                offset += int(width)
    if matrix.shape[0] != n_true:
        raise ValueError(f"{path}[MATRIX]: {matrix.shape[0]} true-energy rows, the ARF has {n_true}")
    return matrix
