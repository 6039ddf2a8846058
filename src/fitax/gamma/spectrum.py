"""1D on-off spectra (``SpectrumDatasetOnOff``, WStat) as Gammapy reads them from OGIP files.

An on-off spectrum is on counts, off counts and their exposure ratio ``alpha`` per
reconstructed-energy bin, with an effective area x livetime per true-energy bin and an
energy-dispersion matrix. Its predicted signal is

    npred_sig(E) = sum over E_true of edisp(E_true -> E) x exposure(E_true) x integral of the spectrum

and its statistic is WStat (the background profiled out bin by bin), summed over the safe
bins (OGIP ``QUALITY == 0``). Spectra of equal binning are stacked like map datasets, so
a joint fit of many observations compiles once.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from astropy.io import fits
from astropy.table import Table
from jaxtyping import Array, Bool, Float

from ..stats import wstat_terms
from .models import Models, SkyModel

__all__ = ["SpectrumDatasetOnOff", "read_ogip"]


@dataclasses.dataclass(frozen=True, repr=False)
class SpectrumDatasetOnOff:
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

    @classmethod
    def read(cls, path, name: str | None = None) -> "SpectrumDatasetOnOff":
        """Read an OGIP PHA file and the ARF, RMF and background files it names."""
        return read_ogip(path, name)

    @property
    def shape(self) -> tuple:
        return self.counts.shape

    def npred_signal(self, models: Models) -> np.ndarray:
        from .datasets import Datasets

        return Datasets([self]).npred(models)[0]

    def stat_sum(self, models: Models) -> float:
        from .datasets import Datasets

        return Datasets([self]).stat_sum(models)

    def __repr__(self) -> str:
        return (f"SpectrumDatasetOnOff({self.name!r}: {len(self.counts)} x {len(self.exposure)} (true) energies, "
                f"{self.counts[self.mask].sum():.0f} on / {self.counts_off[self.mask].sum():.0f} off counts in the safe range, "
                f"livetime {self.livetime:.0f} s)")


def _energy_column(table: Table, name: str, where: str) -> np.ndarray:
    if name not in table.colnames:
        raise ValueError(f"{where}: expected a column {name}, found {table.colnames}")
    column = table[name]
    return np.asarray(column.quantity.to_value("TeV") if column.unit else column, float)


def _open(path: Path, what: str):
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file ({what})")
    try:
        return fits.open(path)
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
    return SpectrumDatasetOnOff(
        name=name or _observation_name(header, path), counts=counts, counts_off=counts_off, alpha=alpha,
        exposure=area * livetime, edisp=edisp, mask=mask, energy_edges=energy_edges, energy_true_edges=energy_true_edges,
        livetime=livetime, source_files=(path, *files.values()),
    )


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


class _SpectrumGroup(eqx.Module):
    """On-off spectra of identical binning, stacked along a leading axis."""

    counts: Float[Array, "n e"]
    counts_off: Float[Array, "n e"]
    alpha: Float[Array, "n e"]
    exposure: Float[Array, "n et"]
    edisp: Float[Array, "n et e"]
    mask: Bool[Array, "n e"]
    energy_true_edges: Float[Array, " et1"]
    names: tuple[str, ...] = eqx.field(static=True)
    source_names: tuple[str, ...] = eqx.field(static=True)
    applies: tuple[tuple[float, ...], ...] = eqx.field(static=True)
    data_constant: float = eqx.field(static=True)  # 0: fitax's WStat deviance form is Gammapy's
    positions: tuple = eqx.field(static=True)

    def npred(self, models: Models) -> Float[Array, "n e"]:
        edges = self.energy_true_edges
        total = jnp.zeros_like(self.counts)
        for name, applies in zip(self.source_names, self.applies):
            flux = models[name].spectral.integral(edges[:-1], edges[1:])
            total = total + jnp.asarray(applies)[:, None] * jnp.einsum("nt,nte->ne", self.exposure * flux[None], self.edisp)
        return total

    def stat(self, models: Models) -> Float[Array, ""]:
        terms = wstat_terms(self.counts, self.counts_off, self.alpha, self.npred(models))
        return jnp.sum(jnp.where(self.mask, terms, 0.0))


def bind_spectra(members: list[SpectrumDatasetOnOff], sources: list[SkyModel]) -> _SpectrumGroup:
    stack = lambda name: jnp.asarray(np.stack([getattr(d, name) for d in members]))  # noqa: E731
    return _SpectrumGroup(
        counts=stack("counts"), counts_off=stack("counts_off"), alpha=stack("alpha"), exposure=stack("exposure"),
        edisp=stack("edisp"), mask=stack("mask"), energy_true_edges=jnp.asarray(members[0].energy_true_edges),
        names=tuple(d.name for d in members), source_names=tuple(s.name for s in sources),
        applies=tuple(tuple(float(s.applies_to(d.name)) for d in members) for s in sources),
        data_constant=0.0, positions=tuple(None for _ in sources),
    )


def spectrum_key(dataset: SpectrumDatasetOnOff) -> tuple:
    return ("spectrum", dataset.counts.shape, tuple(np.round(dataset.energy_true_edges, 12)))

