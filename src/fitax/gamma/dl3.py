"""DL3 data in the GADF format: a data store over ``hdu-index`` / ``obs-index`` tables, and each
observation's events, good time intervals and instrument response functions (IRFs).

The I/O edge of the data reduction: everything here is host-side astropy/NumPy, read once per
observation. Vocabulary, axis names and axis order are Gammapy's: each IRF class has its
required axes (effective area ``(energy_true, offset)``, energy dispersion ``(energy_true,
migra, offset)``, PSF table ``(energy_true, offset, rad)``, background 3D ``(energy, fov_lon,
fov_lat)``, ...), and its value array is read in that order, either from the FITS (``TDIM``)
order GADF specifies or, where only that matches the axes' lengths, as stored in C order, as
H.E.S.S. DR1 and CTA background files hold it. DR1 backgrounds also run their longitudes
eastwards (``IRF.fov_alignment`` ``REVERSE_LON_RADEC``, as Gammapy reads SASH-written files).
That reading (Gammapy's) is the one the data support: of the 8 ways to lay a DR1 background
on the sky, events of 11 empty-field runs are most likely under it, by 56 in log-likelihood
over the next and 207 over GADF's column order (``tests/test_gamma_dl3.py``).

Example:
    >>> store = DataStore.from_dir("hess-dl3-dr1")  # doctest: +SKIP
    >>> ids = store.select(cone=(83.633, 22.014, 3.0))  # the Crab runs  # doctest: +SKIP
    >>> obs = store.observation(ids[0])  # doctest: +SKIP
    >>> obs.aeff.axes["energy_true"].edges.unit, obs.aeff.data.shape  # doctest: +SKIP
    (Unit("TeV"), (96, 6))
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.table import Table
from astropy.time import Time

__all__ = ["DL3Error", "DataStore", "IRF", "IRFAxis", "IRFClass", "Observation", "IRF_AXES", "IRF_CLASSES", "read_irfs"]


class DL3Error(ValueError):
    """A data store, file or HDU that is missing or not what GADF specifies."""


IRF_AXES = {
    "ENERG": ("energy_true", "log"), "ETRUE": ("energy_true", "log"), "THETA": ("offset", "lin"), "MIGRA": ("migra", "lin"),
    "RAD": ("rad", "lin"), "DETX": ("fov_lon", "lin"), "DETY": ("fov_lat", "lin"),
}  # fmt: skip
"""Gammapy's name and interpolation of each GADF column-pair axis (``ENERG`` of a background or
RAD_MAX table is reconstructed energy: ``energy``)."""


_INDEX_FILES = {"hdu": ("hdu-index.fits.gz", "hdu-index.fits"), "obs": ("obs-index.fits.gz", "obs-index.fits")}
_IRF_TYPES = ("aeff", "edisp", "psf", "bkg", "rad_max")


@dataclasses.dataclass(frozen=True)
class IRFClass:
    """What an IRF class holds and how Gammapy interpolates it: its axes (in data order), its
    value columns (one of each tuple: alternatives, the first GADF's name), the interpolation
    of its values (``log`` for backgrounds) and where it is 0: beyond the edges of every axis
    of one of the ``zero_outside`` groups (``None``: each axis a group; an energy dispersion
    is extrapolated in true energy within its migration range; parametric PSF parameters
    everywhere, ``()``)."""

    axes: tuple[str, ...]
    columns: tuple[tuple[str, ...], ...]
    values_interp: str = "lin"
    zero_outside: tuple[tuple[str, ...], ...] | None = None
    default_unit: str | None = None
    stored_order: bool = False
    """Whether a value array only its stored (C) order fits is read so (backgrounds, as
    H.E.S.S. DR1 writes them; Gammapy's ``BackgroundIRF.from_table``)."""

    @property
    def zero_outside_groups(self) -> tuple[tuple[str, ...], ...]:
        return tuple((a,) for a in self.axes) if self.zero_outside is None else self.zero_outside


_PSF_AXES = ("energy_true", "offset")
IRF_CLASSES = {
    "aeff_2d": IRFClass(("energy_true", "offset"), (("EFFAREA",),)),
    "edisp_2d": IRFClass(("energy_true", "migra", "offset"), (("MATRIX",),), zero_outside=(("energy_true", "migra"), ("offset",))),
    "psf_table": IRFClass(("energy_true", "offset", "rad"), (("RPSF",),)),
    "psf_3gauss": IRFClass(_PSF_AXES, tuple((c,) for c in ("SCALE", "SIGMA_1", "SIGMA_2", "SIGMA_3", "AMPL_2", "AMPL_3")), zero_outside=()),
    "psf_king": IRFClass(_PSF_AXES, (("SIGMA",), ("GAMMA",)), zero_outside=()),
    "bkg_2d": IRFClass(("energy", "offset"), (("BKG", "BGD"),), "log", default_unit="s-1 MeV-1 sr-1", stored_order=True),
    "bkg_3d": IRFClass(("energy", "fov_lon", "fov_lat"), (("BKG", "BGD"),), "log", default_unit="s-1 MeV-1 sr-1", stored_order=True),
    "rad_max_2d": IRFClass(("energy", "offset"), (("RAD_MAX",),)),
}  # fmt: skip
"""The IRF classes (GADF ``HDUCLAS4``, lower case) fitax reads, as Gammapy 2.1 defines them
(``required_axes``, ``IRF_DL3_HDU_SPECIFICATION``, ``default_interp_kwargs``); a CTA
background written as ``BGD`` (1DC) is read as Gammapy does, and a missing or unreadable
background unit is taken as Gammapy's ``s-1 MeV-1 sr-1``, with a warning."""

@dataclasses.dataclass(frozen=True)
class IRFAxis:
    """One axis of an IRF: ``nodes`` where its values are given (bin centres, geometric for
    ``log`` axes, as Gammapy's ``MapAxis.center``), and ``edges``, or ``None`` where the table
    gives the nodes themselves (GADF ``X_LO == X_HI``, as the H.E.S.S. DR1 offsets)."""

    name: str
    nodes: u.Quantity
    edges: u.Quantity | None
    interp: str

    def __len__(self) -> int:
        return len(self.nodes)


@dataclasses.dataclass(frozen=True)
class IRF:
    """One IRF HDU: its class (a key of ``IRF_CLASSES``), its axes (in data-axis order) and its
    value columns, each with the axes' shape.

    ``data`` is the single value column of most IRFs (``EFFAREA``, ``MATRIX``, ``RPSF``,
    ``BKG``, ``RAD_MAX``); parametric PSFs have several (``columns``). Columns a class does
    not define (as CTA's ``EFFAREA_RECO``) are not read."""

    hdu_class: str
    axes: dict[str, IRFAxis]
    columns: dict[str, u.Quantity]
    header: fits.Header = dataclasses.field(repr=False)
    fov_alignment: str = "RADEC"
    """How a background's ``fov_lon``/``fov_lat`` lie on the sky (GADF ``FOVALIGN``):
    ``RADEC``, longitude increasing westwards (Gammapy's ``FoVICRSFrame``),
    ``REVERSE_LON_RADEC``, eastwards (H.E.S.S. DR1, as Gammapy reads it), or ``ALTAZ``."""

    @property
    def spec(self) -> IRFClass:
        return IRF_CLASSES[self.hdu_class]

    @property
    def data(self) -> u.Quantity:
        if len(self.columns) != 1:
            raise DL3Error(f"{self.hdu_class} has several value columns ({', '.join(self.columns)}): read .columns")
        return next(iter(self.columns.values()))

    def __repr__(self) -> str:
        axes = ", ".join(f"{a.name}: {len(a)} {a.nodes[0].value:g}-{a.nodes[-1].value:g} {a.nodes.unit}" for a in self.axes.values())
        return f"IRF({self.hdu_class}; {axes}; columns {', '.join(self.columns)})"


class _ReadOnFirstUse:
    """An observation's IRF of the attribute's name (``aeff``, ...), read from its
    ``irf_locations`` when first used and kept (``None`` where the data store has none)."""

    def __set_name__(self, owner, name: str) -> None:
        self.name = name

    def __get__(self, observation, owner=None):
        if observation is None:
            return self
        if self.name not in observation.__dict__:  # the frozen dataclass's own cache, as functools.cached_property
            observation.__dict__[self.name] = observation._irf(self.name)
        return observation.__dict__[self.name]


@dataclasses.dataclass(frozen=True)
class Observation:
    """One run: its id, pointing, times, events (astropy Table with the event header as
    ``meta``), good time intervals and IRFs (``None`` where the data store has none).

    Each IRF is read from ``irf_locations`` (``{type: (file, HDU name, HDU class)}``) when it
    is first used, as Gammapy's observations do: a reduction that needs no PSF does not read
    one."""

    obs_id: int
    pointing: SkyCoord
    events: Table = dataclasses.field(repr=False)
    gti: Table = dataclasses.field(repr=False)
    irf_locations: dict = dataclasses.field(repr=False, default_factory=dict)

    def _irf(self, hdu_type: str) -> IRF | None:
        location = self.irf_locations.get(hdu_type)
        if location is None:
            return None
        irf = _read_hdu(self.obs_id, hdu_type, *location)
        if hdu_type == "bkg" and _reverse_lon_background(self.events.meta):
            irf = dataclasses.replace(irf, fov_alignment="REVERSE_LON_RADEC")
        return irf

    aeff = _ReadOnFirstUse()
    edisp = _ReadOnFirstUse()
    psf = _ReadOnFirstUse()
    bkg = _ReadOnFirstUse()
    rad_max = _ReadOnFirstUse()

    @property
    def ontime(self) -> u.Quantity:
        """The summed good time intervals (Gammapy's ``observation_time_duration``)."""
        return u.Quantity(np.sum(np.asarray(self.gti["STOP"], dtype=float) - np.asarray(self.gti["START"], dtype=float)), "s")

    @property
    def livetime(self) -> u.Quantity:
        """``ontime x DEADC`` (the EVENTS header's dead-time correction, 1 if absent), as
        Gammapy's ``observation_live_time_duration``; exposures use it."""
        return self.ontime * float(self.events.meta.get("DEADC", 1.0))

    @property
    def gti_times(self) -> Time:
        """The good time intervals as times ``(n, 2)``: start and stop."""
        reference = _time_reference(self.gti.meta, f"GTI of obs {self.obs_id}")
        seconds = np.stack([np.asarray(self.gti["START"], float), np.asarray(self.gti["STOP"], float)], axis=-1)
        return reference + u.Quantity(seconds, "s")

    @property
    def time_start(self) -> Time:
        return _time_reference(self.gti.meta, f"GTI of obs {self.obs_id}") + u.Quantity(self.gti["START"].min(), "s")

    @property
    def time_stop(self) -> Time:
        return _time_reference(self.gti.meta, f"GTI of obs {self.obs_id}") + u.Quantity(self.gti["STOP"].max(), "s")

    def overlaps(self, start: Time, stop: Time) -> bool:
        """Whether the run's first good time interval overlaps ``[start, stop)`` (the test
        Gammapy's ``Observations.select_time`` makes, with ``tstart``/``tstop`` of that interval)."""
        reference = _time_reference(self.gti.meta, f"GTI of obs {self.obs_id}")
        first_start, first_stop = (reference + u.Quantity(float(self.gti[column][0]), "s") for column in ("START", "STOP"))
        return bool(first_start <= stop and first_stop > start)

    def select_time(self, start: Time, stop: Time) -> "Observation":
        """The run within ``[start, stop)``, as Gammapy's ``Observation.select_time``: the
        events of those times and the good time intervals that overlap it, cropped to it (so
        the ontime, livetime, exposure and background shrink with it); IRFs read already are
        kept."""
        where = f"obs {self.obs_id}"
        gti_reference = _time_reference(self.gti.meta, f"GTI of {where}")
        low, high = ((t - gti_reference).to_value("s") for t in (start, stop))
        gti_start, gti_stop = np.asarray(self.gti["START"], float), np.asarray(self.gti["STOP"], float)
        gti = self.gti[(gti_start <= high) & (gti_stop > low)]
        gti["START"] = np.clip(np.asarray(gti["START"], float), low, high)
        gti["STOP"] = np.clip(np.asarray(gti["STOP"], float), low, high)
        if len(gti) == 0:
            raise ValueError(f"{where}: no good time between {start.isot} and {stop.isot}")
        event_reference = _time_reference(self.events.meta, f"EVENTS of {where}")
        time = event_reference + self.events["TIME"].quantity
        events = self.events[(time >= start) & (time < stop)]
        selected = Observation(self.obs_id, self.pointing, events, gti, self.irf_locations)
        selected.__dict__.update({name: value for name, value in self.__dict__.items() if name in _IRF_TYPES})
        return selected

    def __repr__(self) -> str:
        irfs = [name for name in _IRF_TYPES if name in self.irf_locations]
        return (f"Observation({self.obs_id}: {len(self.events)} events, livetime {self.livetime.to_value('min'):.1f} min, "
                f"pointing RA {self.pointing.ra.deg:.3f} Dec {self.pointing.dec.deg:.3f} deg; IRFs {', '.join(irfs)})")  # fmt: skip


class DataStore:
    """The runs of a GADF data store: ``hdu-index`` (where each run's HDUs are) and
    ``obs-index`` (pointing, times, ... per run) in one folder.

    Example:
        >>> store = DataStore.from_dir("hess-dl3-dr1")  # doctest: +SKIP
        >>> store  # doctest: +SKIP
        DataStore(hess-dl3-dr1: 105 observations)
    """

    def __init__(self, base: Path, hdu_table: Table, obs_table: Table, hdu_path: Path, obs_path: Path):
        self.base = base
        self.hdu_table = hdu_table
        self.obs_table = obs_table
        self._hdu_path = hdu_path
        self._obs_path = obs_path

    @classmethod
    def from_dir(cls, path) -> DataStore:
        base = Path(path)
        if not base.is_dir():
            raise DL3Error(f"{base}: no such data store folder")
        tables = {}
        paths = {}
        for kind, names in _INDEX_FILES.items():
            found = [base / name for name in names if (base / name).exists()]
            if not found:
                raise DL3Error(f"{base}: no {kind}-index table ({' or '.join(names)})")
            paths[kind] = found[0]
            tables[kind] = Table.read(found[0])
        _require_columns(tables["hdu"], ("OBS_ID", "HDU_TYPE", "HDU_CLASS", "FILE_DIR", "FILE_NAME", "HDU_NAME"), paths["hdu"])
        _require_columns(tables["obs"], ("OBS_ID", "RA_PNT", "DEC_PNT"), paths["obs"])
        for column in ("HDU_TYPE", "HDU_CLASS"):
            tables["hdu"][column] = np.char.lower(np.char.strip(np.asarray(tables["hdu"][column], dtype=str)))
        return cls(base, tables["hdu"], tables["obs"], paths["hdu"], paths["obs"])

    @property
    def obs_ids(self) -> list[int]:
        return [int(i) for i in self.obs_table["OBS_ID"]]

    def __repr__(self) -> str:
        return f"DataStore({self.base}: {len(self.obs_table)} observations)"

    def select(self, obs_ids=None, cone: tuple[float, float, float] | None = None, time: tuple | None = None) -> list[int]:
        """Ids of the runs (in ``obs-index`` order) that are in ``obs_ids``, whose pointing is
        within ``cone = (ra, dec, radius)`` (deg, ICRS; strictly inside, as Gammapy's
        ``select_sky_circle``) and that lie entirely within ``time = (start, stop)``
        (astropy Times, or ISO strings; as Gammapy's ``select_time_range``)."""
        keep = np.ones(len(self.obs_table), dtype=bool)
        if obs_ids is not None:
            wanted = [int(i) for i in np.atleast_1d(obs_ids)]
            missing = sorted(set(wanted) - set(self.obs_ids))
            if missing:
                raise DL3Error(f"{self._obs_path}: obs {', '.join(map(str, missing))} not in the obs-index table")
            keep &= np.isin(np.asarray(self.obs_table["OBS_ID"]), wanted)
        if cone is not None:
            ra, dec, radius = cone
            pointing = SkyCoord(self.obs_table["RA_PNT"], self.obs_table["DEC_PNT"], unit="deg", frame="icrs")
            keep &= pointing.separation(SkyCoord(ra, dec, unit="deg", frame="icrs")).deg < radius
        if time is not None:
            start, stop = (Time(t) for t in time)
            _require_columns(self.obs_table, ("TSTART", "TSTOP"), self._obs_path)
            reference = _time_reference(self.obs_table.meta, str(self._obs_path))
            begins = reference + u.Quantity(np.asarray(self.obs_table["TSTART"], dtype=float), "s")
            ends = reference + u.Quantity(np.asarray(self.obs_table["TSTOP"], dtype=float), "s")
            keep &= (start <= begins) & (stop >= ends)
        return [int(i) for i in np.asarray(self.obs_table["OBS_ID"])[keep]]

    def hdu_location(self, obs_id: int, hdu_type: str) -> tuple[Path, str, str] | None:
        """``(file, HDU name, HDU class)`` of one run's HDU of ``hdu_type`` (``events``,
        ``gti``, ``aeff``, ...), or ``None`` if the index lists none."""
        rows = self.hdu_table[(np.asarray(self.hdu_table["OBS_ID"]) == obs_id) & (np.asarray(self.hdu_table["HDU_TYPE"]) == hdu_type)]
        if len(rows) == 0:
            return None
        if len(rows) > 1:
            raise DL3Error(f"{self._hdu_path}: obs {obs_id} lists {len(rows)} {hdu_type} HDUs (expected one)")
        row = rows[0]
        folder = self.base / str(self.hdu_table.meta.get("BASE_DIR", "")).strip() / str(row["FILE_DIR"]).strip()
        return folder / str(row["FILE_NAME"]).strip(), str(row["HDU_NAME"]).strip(), str(row["HDU_CLASS"])

    def observation(self, obs_id: int) -> Observation:
        """Read one run's events and GTI (required); its IRFs are read when first used, from
        the files the index lists (each checked to exist now)."""
        obs_id = int(obs_id)
        if obs_id not in set(int(i) for i in self.hdu_table["OBS_ID"]):
            raise DL3Error(f"{self._hdu_path}: obs {obs_id} is not in the hdu-index table")
        hdus, irf_locations = {}, {}
        for hdu_type in ("events", "gti") + _IRF_TYPES:
            location = self.hdu_location(obs_id, hdu_type)
            if location is None:
                if hdu_type in ("events", "gti"):
                    raise DL3Error(f"{self._hdu_path}: obs {obs_id} has no {hdu_type} HDU (an observation needs events and GTIs)")
                continue
            if hdu_type in ("events", "gti"):
                hdus[hdu_type] = _read_hdu(obs_id, hdu_type, *location)
            elif not location[0].exists():
                raise DL3Error(f"obs {obs_id}: {hdu_type} HDU {location[1]!r} of {location[0]}: no such file")
            else:
                irf_locations[hdu_type] = location
        events, gti = hdus.pop("events"), hdus.pop("gti")
        if len(gti) == 0:
            raise DL3Error(f"obs {obs_id}: its GTI table has no intervals")
        meta = events.meta
        try:
            pointing = SkyCoord(meta["RA_PNT"], meta["DEC_PNT"], unit="deg", frame="icrs")
        except KeyError as error:
            raise DL3Error(f"obs {obs_id}: the EVENTS header has no {error.args[0]} (the pointing)") from None
        return Observation(obs_id, pointing, events, gti, irf_locations)


_IRF_HDUCLAS2 = {"EFF_AREA": "aeff", "EDISP": "edisp", "PSF": "psf", "RPSF": "psf", "BKG": "bkg", "RAD_MAX": "rad_max"}


def read_irfs(path) -> dict[str, IRF]:
    """Every IRF HDU of one GADF file (as CTA's ``caldb`` files ship them), by type (``aeff``,
    ``edisp``, ``psf``, ``bkg``, ``rad_max``; from ``HDUCLAS2``, the class from ``HDUCLAS4``).

    Example:
        >>> irfs = read_irfs("Prod5-South-20deg-AverageAz-14MSTs37SSTs.180000s-v0.1.fits.gz")  # doctest: +SKIP
        >>> irfs["psf"].hdu_class, list(irfs["psf"].columns)  # doctest: +SKIP
        ('psf_3gauss', ['SCALE', 'SIGMA_1', 'SIGMA_2', 'SIGMA_3', 'AMPL_2', 'AMPL_3'])
    """
    path = Path(path)
    if not path.exists():
        raise DL3Error(f"{path}: no such file")
    irfs: dict[str, IRF] = {}
    try:
        hdul = fits.open(os.fspath(path), memmap=False)
    except OSError as error:
        raise DL3Error(f"{path}: not a readable FITS file ({error})") from error
    with hdul:
        for hdu in hdul[1:]:
            kind = _IRF_HDUCLAS2.get(str(hdu.header.get("HDUCLAS2", "")).strip().upper())
            if kind is None:
                continue
            where = f"{path}: HDU {hdu.name!r}"
            if kind in irfs:
                raise DL3Error(f"{where}: a second {kind} IRF in one file")
            irfs[kind] = _read_irf(hdu, str(hdu.header.get("HDUCLAS4", kind)).strip().lower(), where)
    if not irfs:
        raise DL3Error(f"{path}: no IRF HDU (HDUCLAS2 one of {', '.join(_IRF_HDUCLAS2)})")
    return irfs


def _reverse_lon_background(events_header) -> bool:
    """H.E.S.S. DL3 written by SASH at HDUVERS 0.2 (the DR1) has background longitudes reversed
    against GADF's RADEC (Gammapy 2.1 reads them so; events of empty DR1 fields favour it)."""
    return str(events_header.get("CREATOR", "")).strip() == "SASH FITS::EventListWriter" and str(events_header.get("HDUVERS", "")).strip() == "0.2"


def _require_columns(table: Table, columns, where) -> None:
    missing = [c for c in columns if c not in table.colnames]
    if missing:
        raise DL3Error(f"{where}: no column {', '.join(missing)}")


def _time_reference(meta, where: str) -> Time:
    """GADF's time reference: MJDREFI + MJDREFF in TIMESYS (default TT)."""
    try:
        mjd = float(meta["MJDREFI"]) + float(meta["MJDREFF"])
    except KeyError:
        if "MJDREF" not in meta:
            raise DL3Error(f"{where}: no MJDREFI/MJDREFF (or MJDREF) time reference") from None
        mjd = float(meta["MJDREF"])
    return Time(mjd, format="mjd", scale=str(meta.get("TIMESYS", "tt")).lower())


_EVENT_UNITS = {"RA": "deg", "DEC": "deg", "TIME": "s", "ENERGY": None}


def _events(table: Table, where: str) -> Table:
    """The event list, its sky coordinates and times in GADF's units where the file gives none
    (with a warning); an energy must say its unit."""
    _require_columns(table, tuple(_EVENT_UNITS), where)
    for column, default in _EVENT_UNITS.items():
        unit = table[column].unit
        if unit is not None and not isinstance(unit, u.UnrecognizedUnit):
            continue
        if default is None:
            raise DL3Error(f"{where}: column {column} needs a unit (TUNIT, e.g. TeV), it has {str(unit) if unit is not None else 'none'}")
        warnings.warn(f"{where}: column {column} has no readable unit; taken as {default} (GADF)", stacklevel=4)
        table[column].unit = default
    return table


def _read_hdu(obs_id: int, hdu_type: str, path: Path, name: str, hdu_class: str):
    where = f"obs {obs_id}: {hdu_type} HDU {name!r} of {path}"
    if not path.exists():
        raise DL3Error(f"{where}: no such file")
    try:
        with fits.open(os.fspath(path), memmap=False) as hdul:
            if name not in hdul:
                raise DL3Error(f"{where}: the file has no such HDU (it has {', '.join(h.name for h in hdul[1:])})")
            hdu = hdul[name]
            if hdu_type == "events":
                return _events(Table.read(hdu), where)
            if hdu_type == "gti":
                table = Table.read(hdu)
                _require_columns(table, ("START", "STOP"), where)
                return table
            return _read_irf(hdu, hdu_class, where)
    except OSError as error:
        raise DL3Error(f"{where}: not a readable FITS file ({error})") from error


def _unit(table: Table, column: str, where: str, default: str | None = None) -> u.UnitBase:
    unit = table[column].unit
    if unit is None or isinstance(unit, u.UnrecognizedUnit):
        if default is not None:
            problem = "no unit" if unit is None else f"an unreadable unit {str(unit)!r}"
            warnings.warn(f"{where}: column {column} has {problem}; taken as {default} (as Gammapy)", stacklevel=4)
            return u.Unit(default)
        if isinstance(unit, u.UnrecognizedUnit):
            raise DL3Error(f"{where}: column {column} has the unit {str(unit)!r}, which astropy cannot read")
        return u.dimensionless_unscaled
    return unit


def _read_axis(table: Table, row, stem: str, name: str, where: str) -> IRFAxis:
    interp = IRF_AXES.get(stem, (name, "lin"))[1]
    lo, hi = (np.atleast_1d(np.asarray(row[stem + side], dtype=float)) * _unit(table, stem + side, where) for side in ("_LO", "_HI"))
    unit = lo.unit
    if lo.ndim != 1 or lo.shape != hi.shape or np.any(np.diff(lo.value) <= 0):
        raise DL3Error(f"{where}: axis {stem} must be increasing {stem}_LO and {stem}_HI of one length")
    hi = hi.to(unit)
    if np.allclose(lo.value, hi.value):
        return IRFAxis(name, lo, None, interp)
    if np.any(hi <= lo):
        raise DL3Error(f"{where}: axis {stem} needs {stem}_LO < {stem}_HI (or equal, for nodes)")
    edges = np.append(lo.value, hi.value[-1]) * unit
    nodes = np.sqrt(edges[:-1] * edges[1:]) if interp == "log" else 0.5 * (edges[:-1] + edges[1:])
    return IRFAxis(name, nodes, edges, interp)


def _oriented(values: np.ndarray, shape: tuple[int, ...], column: str, where: str, stored_order: bool) -> np.ndarray:
    """A stored value array with its axes in the class's order: GADF's FITS (``TDIM``) order,
    which astropy returns reversed, or, where the class allows it (``IRFClass.stored_order``)
    and only that order matches the axes' lengths, the order as stored."""
    if values.T.shape == shape:
        if stored_order and values.ndim > 1 and values.shape == shape:
            warnings.warn(f"{where}: column {column}'s axes {shape} read in FITS order; stored order would fit too (as Gammapy)", stacklevel=4)
        return values.T
    if stored_order and values.shape == shape:
        return values
    if values.ndim == 1 and len(shape) > 1 and values.size == int(np.prod(shape)):
        raise DL3Error(f"{where}: column {column} has no TDIM keyword: the order of its {values.size} values over the axes {shape} is unknown")
    raise DL3Error(f"{where}: column {column} has shape {values.T.shape} (FITS order), its axes need {shape}")


def _read_irf(hdu, hdu_class: str, where: str) -> IRF:
    """The IRF of a GADF binary table of one row: ``X_LO``/``X_HI`` column pairs are the axes,
    the class's value columns the data."""
    kind = IRF_CLASSES.get(hdu_class)
    if kind is None:
        raise DL3Error(f"{where}: IRF class {hdu_class!r} is not one of {', '.join(IRF_CLASSES)}")
    table = Table.read(hdu)
    if len(table) != 1:
        raise DL3Error(f"{where}: an IRF table has one row, this one {len(table)}")
    row = table[0]
    stems = {}
    for column in table.colnames:
        stem = column[:-3]
        if column.endswith("_LO") and stem + "_HI" in table.colnames:
            name = IRF_AXES.get(stem, (stem.lower(),))[0]
            stems["energy" if name == "energy_true" and "energy" in kind.axes else name] = stem
    if sorted(stems) != sorted(kind.axes):
        found = ", ".join(f"{stem} ({name})" for name, stem in stems.items()) or "none"
        raise DL3Error(f"{where}: an IRF of class {hdu_class} has the axes {', '.join(kind.axes)}; its *_LO/*_HI columns give {found}")
    axes = {name: _read_axis(table, row, stems[name], name, where) for name in kind.axes}
    shape = tuple(len(a) for a in axes.values())
    columns = {}
    for alternatives in kind.columns:
        found = [c for c in alternatives if c in table.colnames]
        if not found:
            raise DL3Error(f"{where}: an IRF of class {hdu_class} needs a column {' or '.join(alternatives)}")
        column = found[0]
        values = _oriented(np.asarray(row[column], dtype=float), shape, column, where, kind.stored_order)
        columns[column] = values * _unit(table, column, where, kind.default_unit)
    return IRF(hdu_class, axes, columns, hdu.header.copy(), str(hdu.header.get("FOVALIGN", "RADEC")).strip().upper())
