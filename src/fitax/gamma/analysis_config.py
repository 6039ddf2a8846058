"""Gammapy's high-level analysis configuration (``AnalysisConfig`` YAML): the ``observations``
and ``datasets`` sections, read into what fitax's data reduction needs.

Keys, defaults and meanings are Gammapy 2.1's, so a configuration a user already has runs
unchanged: 3D map datasets (``type: 3d``) or 1D on-off spectra with reflected regions
(``type: 1d``), of whole runs or of the runs cut to ``obs_time`` intervals. A key Gammapy does
not know, or one whose setting fitax cannot reproduce yet (ring backgrounds, a safe-mask
``position``, point-like ON regions), is an
error naming the key; nothing is silently ignored except the sections a data reduction does
not use (``general``, ``fit``, ``flux_points``, ``excess_map``, ``light_curve``, and the
``metadata`` Gammapy's ``AnalysisConfig.write`` adds), the 1D-only keys of a 3D analysis
(``on_region``, ``containment_correction``) and the sky geometry and ``map_selection`` of a
1D one, as Gammapy ignores them.

Example:
    >>> config = read_analysis_config("config.yaml")  # doctest: +SKIP
    >>> config.obs_ids, config.geometry.shape  # doctest: +SKIP
    ([23523, 23526], (125, 125))
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.wcs import WCS

from ._common import load_yaml
from .dl3 import DataStore
from .geometry import coarse_wcs
from .makers import BINSZ_IRF, MapGeometry
from .reduce import SAFE_MASK_METHODS, SafeMaskParameters
from .spectrum_reduce import ONOFF_SAFE_MASK_METHODS, ReflectedRegionsFinder

__all__ = ["ReductionConfig", "SpectrumReductionConfig", "read_analysis_config"]

_SECTIONS = {"general", "observations", "datasets", "fit", "flux_points", "excess_map", "light_curve", "metadata"}
_IRF_TYPES = ("events", "gti", "aeff", "bkg", "edisp", "psf", "rad_max")
_MAP_SELECTION = ("counts", "exposure", "background", "psf", "edisp")


@dataclasses.dataclass(frozen=True)
class ReductionConfig:
    """A 3D data reduction: the data store, the runs (in the configured order), the geometry,
    the safe-mask methods and their ``offset_max``, the cutout radius around each pointing
    (``geom.selection.offset_max``), the IRFs a run must have, and whether the runs' datasets
    are stacked into one."""

    datastore: DataStore
    obs_ids: list[int]
    geometry: MapGeometry
    safe_mask_methods: tuple[str, ...]
    safe_mask_offset_max: u.Quantity
    safe_mask_parameters: SafeMaskParameters
    offset_max: u.Quantity
    required_irf: tuple[str, ...]
    map_selection: tuple[str, ...]
    stack: bool
    fov_background: dict | None = None
    """``{"min_counts", "min_npred_background", "exclusion"}`` with ``background.method:
    fov_background`` (``exclusion``: a sky image and its WCS, True where pixels may be used, or
    ``None``); ``None`` without a background maker."""
    time_intervals: tuple | None = None
    """``observations.obs_time``: ``((start, stop), ...)`` (astropy ``Time``), the runs cut to
    each (Gammapy's ``Observations.select_time``), or ``None``."""


@dataclasses.dataclass(frozen=True)
class SpectrumReductionConfig:
    """A 1D on-off reduction: the data store, the runs (in the configured order), the circular
    ON region, the energy axes, the safe mask, whether the exposure is corrected for the PSF's
    containment, the reflected-regions finder and its exclusion mask, the IRFs a run must
    have, and whether the spectra are stacked into one."""

    datastore: DataStore
    obs_ids: list[int]
    on_region: object
    energy_edges: u.Quantity
    energy_true_edges: u.Quantity
    safe_mask_methods: tuple[str, ...]
    safe_mask_offset_max: u.Quantity
    safe_mask_parameters: SafeMaskParameters
    containment_correction: bool
    finder: ReflectedRegionsFinder
    exclusion: tuple | None
    required_irf: tuple[str, ...]
    stack: bool
    time_intervals: tuple | None = None


class _Section:
    """One mapping of the configuration, with the keys it may have; reading a key records it,
    and ``done()`` makes any other key an error naming its full path."""

    def __init__(self, content, path: str, known: set[str], source: Path):
        if content is None:
            content = {}
        if not isinstance(content, dict):
            raise ValueError(f"{source}: '{path}' must be a mapping, got {content!r}")
        unknown = sorted(set(content) - known)
        if unknown:
            raise ValueError(f"{source}: unknown key '{path}.{unknown[0]}' (Gammapy's AnalysisConfig has {sorted(known)})")
        self.content, self.path, self.source = content, path, source

    def get(self, key: str, default=None):
        value = self.content.get(key)
        return default if value is None else value

    def names(self, key: str, default: list) -> list:
        """A list setting (``obs_ids``, ``methods``, ...): a single value is an error, not a
        list of its characters."""
        value = self.get(key, default)
        if not isinstance(value, list):
            raise ValueError(f"{self.source}: '{self.path}.{key}' = {value!r} must be a list, e.g. [{value!r}]")
        return value

    def positive(self, key: str, unit: str, default=None) -> u.Quantity:
        value = self.quantity(key, unit, default)
        if value is None or not np.isfinite(value.value) or value.value <= 0:
            raise ValueError(f"{self.source}: '{self.path}.{key}' = {self.get(key, default)!r} must be a positive {u.Unit(unit).physical_type}")
        return value

    def count(self, key: str) -> int | None:
        value = self.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{self.source}: '{self.path}.{key}' = {value!r} must be a whole number of bins >= 1")
        return value

    def percent(self, key: str, default: float) -> float:
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 100:
            raise ValueError(f"{self.source}: '{self.path}.{key}' = {value!r} must be a percentage between 0 and 100")
        return float(value)

    def section(self, key: str, known: set[str]) -> "_Section":
        return _Section(self.content.get(key), f"{self.path}.{key}", known, self.source)

    def quantity(self, key: str, unit: str, default=None) -> u.Quantity | None:
        value = self.get(key, default)
        if value is None:
            return None
        try:
            quantity = u.Quantity(value)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{self.source}: '{self.path}.{key}' = {value!r} is not a quantity (e.g. '1 {unit}')") from error
        if quantity.unit == u.dimensionless_unscaled or not quantity.unit.is_equivalent(unit):
            raise ValueError(f"{self.source}: '{self.path}.{key}' = {value!r} needs a unit of {u.Unit(unit).physical_type} (e.g. '1 {unit}')")
        return quantity.to(unit)

    def unsupported(self, key: str, why: str, allowed=(None,)):
        value = self.content.get(key)
        if value not in allowed and not (isinstance(value, (dict, list)) and not value):
            raise ValueError(f"{self.source}: '{self.path}.{key}' = {value!r} is not supported by fitax yet ({why})")


def _energy_edges(section: _Section) -> u.Quantity | None:
    """Gammapy's ``_make_energy_axis``: ``nbins`` log-spaced bins from ``min`` to ``max``
    (``None`` when one is missing)."""
    low, high, nbins = section.quantity("min", "TeV"), section.quantity("max", "TeV"), section.count("nbins")
    if low is None or high is None or nbins is None:
        return None
    if not 0 < low < high:
        raise ValueError(f"{section.source}: '{section.path}' needs 0 < min < max, got {low} and {high}")
    return np.exp(np.linspace(np.log(low.value), np.log(high.value), int(nbins) + 1)) * u.TeV


def _wcs(section: _Section) -> tuple[WCS, tuple[int, int], float]:
    """Gammapy's ``WcsGeom.create`` from the ``geom.wcs`` section: a CAR image of ``width`` x
    ``height`` at ``binsize``, centred on ``skydir``."""
    skydir = section.section("skydir", {"frame", "lon", "lat"})
    frame = skydir.get("frame")
    if frame not in ("icrs", "galactic"):
        raise ValueError(f"{section.source}: '{skydir.path}.frame' = {frame!r}; expected 'icrs' or 'galactic'")
    binsz = section.positive("binsize", "deg", "0.02 deg").value
    size = section.section("width", {"width", "height"})
    width, height = size.positive("width", "deg", "5 deg").value, size.positive("height", "deg", "5 deg").value
    npix = (int(np.rint(width / binsz)), int(np.rint(height / binsz)))
    if min(npix) < 1:
        raise ValueError(f"{section.source}: '{size.path}' ({width} x {height} deg) is less than one {binsz} deg pixel")
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---CAR", "DEC--CAR"] if frame == "icrs" else ["GLON-CAR", "GLAT-CAR"]
    if frame == "icrs":
        wcs.wcs.radesys = "ICRS"
    wcs.wcs.crval = [skydir.quantity("lon", "deg", "0 deg").value, skydir.quantity("lat", "deg", "0 deg").value]
    wcs.wcs.crpix = [(npix[0] + 1) / 2, (npix[1] + 1) / 2]
    wcs.wcs.cdelt = [-binsz, binsz]
    wcs.wcs.set()
    return wcs, (npix[1], npix[0]), section.positive("binsize_irf", "deg", f"{BINSZ_IRF} deg").value


def _fov_background(background: _Section) -> dict | None:
    """The ``background`` section: Gammapy's ``FoVBackgroundMaker`` settings (``method``
    ``scale`` or ``fit``, which agree for a dataset without sources; ``min_counts``,
    ``min_npred_background``; the ``exclusion`` mask file), or ``None`` without a method."""
    method = background.get("method")
    if method is None:
        background.unsupported("exclusion", "no background maker is set to use it")
        return None
    if method != "fov_background":
        why = "only fov_background" if method in ("ring", "reflected") else "not a Gammapy background method"
        raise ValueError(f"{background.source}: '{background.path}.method' = {method!r}: {why} (fitax has fov_background)")
    parameters = background.section("parameters", {"method", "spectral_model", "spatial_model", "min_counts", "min_npred_background", "fit"})
    if parameters.get("method", "scale") not in ("scale", "fit"):
        raise ValueError(f"{background.source}: '{parameters.path}.method' = {parameters.get('method')!r}; expected 'scale' or 'fit'")
    parameters.unsupported("spectral_model", "the FoV background model is a norm (Gammapy's default pl-norm)", allowed=(None, "pl-norm"))
    parameters.unsupported("spatial_model", "the FoV background model has no spatial part")
    parameters.unsupported("fit", "the norm is found in closed form")
    return {"min_counts": float(parameters.get("min_counts", 0)), "min_npred_background": float(parameters.get("min_npred_background", 0)),
            "exclusion": _exclusion(background)}


def _exclusion(background: _Section):
    """The ``background.exclusion`` mask file, read (a sky image and its WCS, True where
    pixels may be used), or ``None``."""
    if background.get("exclusion") is None:
        return None
    from .io import read_sky_mask

    path = Path(os.path.expandvars(str(background.get("exclusion"))))
    if not path.exists() and (background.source.parent / path).exists():
        path = background.source.parent / path
    if not path.exists():
        raise FileNotFoundError(f"{background.source}: '{background.path}.exclusion' = {background.get('exclusion')!r}: no such file")
    return read_sky_mask(path)


def _reflected_background(background: _Section):
    """The ``background`` section of a 1D analysis: Gammapy's ``ReflectedRegionsBackgroundMaker``
    (``method: reflected``) with its finder's ``parameters`` and the ``exclusion`` mask."""
    method = background.get("method")
    if method != "reflected":
        raise ValueError(f"{background.source}: '{background.path}.method' = {method!r}: a 1d analysis takes 'reflected' "
                         "(the OFF counts of reflected regions)")
    parameters = background.section("parameters", {"angle_increment", "min_distance", "min_distance_input", "max_region_number", "binsz"})
    settings = {key: parameters.quantity(key, "rad") for key in ("angle_increment", "min_distance", "min_distance_input")
                if parameters.get(key) is not None}
    if parameters.get("binsz") is not None:
        settings["binsz"] = parameters.positive("binsz", "deg")
    if parameters.get("max_region_number") is not None:
        settings["max_region_number"] = parameters.count("max_region_number")
    try:
        finder = ReflectedRegionsFinder(**settings)
    except ValueError as error:
        raise ValueError(f"{background.source}: '{parameters.path}': {error}") from error
    return finder, _exclusion(background)


def _on_region(datasets: _Section):
    """``datasets.on_region``: Gammapy's circular ON region (``frame``, ``lon``, ``lat``,
    ``radius``)."""
    from astropy.coordinates import SkyCoord
    from regions import CircleSkyRegion

    section = datasets.section("on_region", {"frame", "lon", "lat", "radius"})
    missing = [key for key in ("lon", "lat", "radius") if section.get(key) is None]
    if missing:
        raise ValueError(f"{section.source}: '{section.path}' needs lon, lat and radius for a 1d analysis; {', '.join(missing)} missing "
                         "(Gammapy's configuration has no point ON region for point-like RAD_MAX runs: reduce those with "
                         "fitax.gamma.pipeline.point_like_spectra_files)")
    frame = section.get("frame", "icrs")
    if frame not in ("icrs", "galactic"):
        raise ValueError(f"{section.source}: '{section.path}.frame' = {frame!r}; expected 'icrs' or 'galactic'")
    centre = SkyCoord(section.quantity("lon", "deg"), section.quantity("lat", "deg"), frame=frame)
    return CircleSkyRegion(centre, section.positive("radius", "deg"))


def _time_intervals(section: _Section) -> tuple | None:
    """``observations.obs_time``: ``start`` and ``stop`` (one time each, or lists of as many),
    as Gammapy's ``TimeRangeConfig`` reads them (ISO strings, UTC) or MJD numbers (UTC)."""
    from astropy.time import Time

    start, stop = section.get("start"), section.get("stop")
    if start is None and stop is None:
        return None
    if start is None or stop is None:
        raise ValueError(f"{section.source}: '{section.path}' needs both start and stop")

    def time(v):
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return Time(v, format="mjd", scale="utc")
        if isinstance(v, datetime.datetime):  # YAML timestamps; an offset (Z, +01:00) is applied, as Gammapy's Time(v)
            return Time(v.astimezone(datetime.timezone.utc).replace(tzinfo=None) if v.tzinfo else v, scale="utc")
        return Time(str(v), scale="utc")

    def times(key, value):
        values = value if isinstance(value, list) else [value]
        try:
            return [time(v) for v in values]
        except ValueError as error:
            raise ValueError(f"{section.source}: '{section.path}.{key}' = {value!r} is not a time (e.g. '2004-12-04 22:00:00' or an MJD)") from error

    starts, stops = times("start", start), times("stop", stop)
    if len(starts) != len(stops) or isinstance(start, list) != isinstance(stop, list):
        raise ValueError(f"{section.source}: '{section.path}' has {len(starts)} start(s) and {len(stops)} stop(s); give one of each or lists of as many")
    for low, high in zip(starts, stops):
        if not low < high:
            raise ValueError(f"{section.source}: '{section.path}': start {low.iso} is not before stop {high.iso}")
    return tuple(zip(starts, stops))


def _store_path(value: str, source: Path) -> Path:
    """The data store folder: environment variables expanded (``$GAMMAPY_DATA``), relative to
    the working directory as in Gammapy, else to the configuration file's folder."""
    path = Path(os.path.expanduser(os.path.expandvars(str(value))))
    if not path.is_absolute() and not path.exists() and (source.parent / path).exists():
        path = source.parent / path
    if not path.exists():
        raise FileNotFoundError(f"{source}: 'observations.datastore' = {value!r}: no such data store ({path})")
    return path


def _selected_runs(observations: _Section, store: DataStore) -> list[int]:
    """Gammapy's ``_make_obs_table_selection``: ``obs_ids`` (in their order) or the ids of
    ``obs_file`` or every run, then those pointed within ``obs_cone``."""
    obs_ids, obs_file = observations.names("obs_ids", []), observations.get("obs_file")
    repeated = sorted({int(i) for i in obs_ids if list(obs_ids).count(i) > 1})
    if repeated:
        raise ValueError(f"{observations.source}: 'observations.obs_ids' lists {', '.join(map(str, repeated))} more than once")
    if obs_ids and obs_file:
        raise ValueError(f"{observations.source}: give 'observations.obs_ids' or 'observations.obs_file', not both")
    if obs_file:
        file = Path(os.path.expandvars(str(obs_file)))
        if not file.exists():
            raise FileNotFoundError(f"{observations.source}: 'observations.obs_file' = {obs_file!r}: no such file")
        obs_ids = [int(line.split()[0].strip(",")) for line in file.read_text().splitlines() if line.strip() and not line.startswith("#")]
    ids = [int(i) for i in obs_ids] if obs_ids else store.obs_ids
    cone = observations.section("obs_cone", {"frame", "lon", "lat", "radius"})
    if cone.get("lon") is not None:
        from astropy.coordinates import SkyCoord

        missing = [key for key in ("lat", "radius") if cone.get(key) is None]
        if missing:
            raise ValueError(f"{observations.source}: '{cone.path}' needs lon, lat and radius; {', '.join(missing)} missing")
        centre = SkyCoord(cone.quantity("lon", "deg"), cone.quantity("lat", "deg"), frame=cone.get("frame", "icrs")).icrs
        inside = set(store.select(ids, cone=(centre.ra.deg, centre.dec.deg, cone.positive("radius", "deg").value)))
        ids = [i for i in ids if i in inside]
    else:
        store.select(ids)  # an id missing from the obs-index table is an error naming it
    return ids


def read_analysis_config(path) -> ReductionConfig | SpectrumReductionConfig:
    """Read the ``observations`` and ``datasets`` sections of a Gammapy ``AnalysisConfig``
    YAML file, with Gammapy's defaults: a 3D reduction (``type: 3d``) or a 1D on-off one
    (``type: 1d``, Gammapy's default); errors name the file and key."""
    source = Path(path)
    top = _Section(load_yaml(source), "config", _SECTIONS, source)
    observations = top.section("observations", {"datastore", "obs_ids", "obs_file", "obs_cone", "obs_time", "required_irf"})
    time_intervals = _time_intervals(observations.section("obs_time", {"start", "stop"}))
    datasets = top.section("datasets", {"type", "stack", "geom", "map_selection", "background", "safe_mask", "on_region",
                                        "containment_correction"})  # fmt: skip
    kind = str(datasets.get("type", "1d"))
    if kind not in ("1d", "3d"):
        raise ValueError(f"{source}: 'datasets.type' = {kind!r}; expected '1d' (Gammapy's default) or '3d'")
    stack = datasets.get("stack", True)
    if not isinstance(stack, bool):
        raise ValueError(f"{source}: 'datasets.stack' = {stack!r}; expected true or false")
    background = datasets.section("background", {"method", "exclusion", "parameters"})
    safe = datasets.section("safe_mask", {"methods", "parameters"})
    methods = tuple(safe.names("methods", ["aeff-default"]))
    parameters = safe.section("parameters", {"offset_max", "aeff_percent", "bias_percent", "position", "fixed_offset", "energy_min",
                                             "energy_max", "n_95"})  # fmt: skip
    for key in sorted(set(parameters.content) - {"offset_max", "aeff_percent", "bias_percent", "fixed_offset"}):
        parameters.unsupported(key, "fitax's safe masks take offset_max, aeff_percent, bias_percent and fixed_offset")
    allowed = SAFE_MASK_METHODS if kind == "3d" else ONOFF_SAFE_MASK_METHODS
    for method in methods:
        if method not in allowed:
            why = "not supported yet for on-off spectra" if method in SAFE_MASK_METHODS else "not a Gammapy safe-mask method"
            raise ValueError(f"{source}: 'datasets.safe_mask.methods' has {method!r}: {why} (expected some of {list(allowed)})")
    safe_mask_parameters = SafeMaskParameters(
        aeff_percent=parameters.percent("aeff_percent", 10.0), bias_percent=parameters.percent("bias_percent", 10.0),
        fixed_offset=parameters.quantity("fixed_offset", "deg"),
    )  # fmt: skip
    selection = tuple(datasets.names("map_selection", list(_MAP_SELECTION)))
    unknown = sorted(set(selection) - set(_MAP_SELECTION))
    if unknown:
        raise ValueError(f"{source}: 'datasets.map_selection' has {unknown[0]!r}; expected some of {list(_MAP_SELECTION)}")
    required = tuple(observations.names("required_irf", ["aeff", "edisp", "psf", "bkg"]))
    unknown = sorted(set(required) - set(_IRF_TYPES))
    if unknown:
        raise ValueError(f"{source}: 'observations.required_irf' has {unknown[0]!r}; expected some of {list(_IRF_TYPES)}")

    geom = datasets.section("geom", {"wcs", "selection", "axes"})
    wcs_section = geom.section("wcs", {"skydir", "binsize", "width", "binsize_irf"})
    axes = geom.section("axes", {"energy", "energy_true"})
    energy = _energy_edges(axes.section("energy", {"min", "max", "nbins"}))
    if axes.content.get("energy") is None:
        energy = np.exp(np.linspace(np.log(1.0), np.log(10.0), 6)) * u.TeV
    if energy is None:
        raise ValueError(f"{source}: 'datasets.geom.axes.energy' needs min, max and nbins")
    energy_true = _energy_edges(axes.section("energy_true", {"min", "max", "nbins"}))
    if axes.content.get("energy_true") is None:
        energy_true = np.exp(np.linspace(np.log(0.5), np.log(20.0), 17)) * u.TeV
    if energy_true is None:
        energy_true = energy
    offset_max = geom.section("selection", {"offset_max"}).positive("offset_max", "deg", "2.5 deg")

    store = DataStore.from_dir(_store_path(observations.get("datastore", "$GAMMAPY_DATA/hess-dl3-dr1/"), source))
    common = dict(datastore=store, obs_ids=_selected_runs(observations, store), safe_mask_methods=methods,
                  safe_mask_offset_max=parameters.positive("offset_max", "deg", "3 deg"), safe_mask_parameters=safe_mask_parameters,
                  required_irf=required, stack=stack, time_intervals=time_intervals)
    if kind == "1d":
        # Gammapy's 1d reduction ignores the sky geometry and map_selection (it makes counts, exposure and edisp)
        containment = datasets.get("containment_correction", True)
        if not isinstance(containment, bool):
            raise ValueError(f"{source}: 'datasets.containment_correction' = {containment!r}; expected true or false")
        finder, exclusion = _reflected_background(background)
        return SpectrumReductionConfig(on_region=_on_region(datasets), energy_edges=energy, energy_true_edges=energy_true,
                                       containment_correction=containment, finder=finder, exclusion=exclusion, **common)
    if not {"counts", "exposure"} <= set(selection):
        raise ValueError(f"{source}: 'datasets.map_selection' = {list(selection)}: fitax's datasets always hold counts and exposure; "
                         "list both (background, psf and edisp may be left out)")
    wcs, shape, binsz_irf = _wcs(wcs_section)
    irf_wcs, irf_shape = coarse_wcs(wcs, shape, binsz_irf)
    return ReductionConfig(geometry=MapGeometry(wcs, shape, energy, energy_true, irf_wcs, irf_shape), offset_max=offset_max,
                           map_selection=selection, fov_background=_fov_background(background), **common)
