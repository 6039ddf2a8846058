"""Gammapy's ``models.yaml`` and the results table (``datasets.yaml``: :mod:`fitax.gamma.datasets`).

Reading needs no Gammapy. Parameters are converted from the units in the file to the
models' fixed units with astropy; anything fitax cannot represent (an unknown model
type, a unit of the wrong dimension, a parameter the model does not have) is an error
naming the file, the model and the parameter. A parameter without ``frozen``/``min``/``max``
takes the model's default, as in Gammapy. Parameters sharing a ``link`` label are tied.
Written files are Gammapy-readable and are written atomically, never over an input.
"""

from __future__ import annotations

import os
from pathlib import Path

import astropy.units as u
import numpy as np
import yaml

from ..fit import FitResult
from ..io import atomic_write
from ..parameters import GaussianPrior, Parameter, UniformPrior, parameters_dict, tie
from . import spatial as spatial_models
from . import spectral as spectral_models
from ._common import gammapy_yaml, load_yaml
from .models import PSF_MODES, FoVBackgroundModel, Models, SkyModel
from .temporal import TEMPORAL_TAGS, TIME_SCALES, LightCurveTemplateTemporalModel
from .template import TemplateSpatialModel

__all__ = ["read_models", "write_models", "write_results", "SPECTRAL_TAGS", "SPATIAL_TAGS"]

SPECTRAL_TAGS = {
    ("PowerLawSpectralModel", "pl"): spectral_models.PowerLawSpectralModel,
    ("PowerLaw2SpectralModel", "pl-2"): spectral_models.PowerLaw2SpectralModel,
    ("LogParabolaSpectralModel", "lp"): spectral_models.LogParabolaSpectralModel,
    ("ExpCutoffPowerLawSpectralModel", "ecpl"): spectral_models.ExpCutoffPowerLawSpectralModel,
    ("BrokenPowerLawSpectralModel", "bpl"): spectral_models.BrokenPowerLawSpectralModel,
    ("SmoothBrokenPowerLawSpectralModel", "sbpl"): spectral_models.SmoothBrokenPowerLawSpectralModel,
    ("ConstantSpectralModel", "const"): spectral_models.ConstantSpectralModel,
    ("PowerLawNormSpectralModel", "pl-norm"): spectral_models.PowerLawNormSpectralModel,
}
SPATIAL_TAGS = {
    ("PointSpatialModel", "point"): spatial_models.PointSpatialModel,
    ("GaussianSpatialModel", "gauss"): spatial_models.GaussianSpatialModel,
    ("DiskSpatialModel", "disk"): spatial_models.DiskSpatialModel,
    ("ShellSpatialModel", "shell"): spatial_models.ShellSpatialModel,
    ("ConstantSpatialModel", "const"): spatial_models.ConstantSpatialModel,
}
_BACKGROUND_SPECTRAL = ("PowerLawNormSpectralModel", "pl-norm")
_UNIT_ALIASES = {"": u.dimensionless_unscaled}


def _lookup_class(tags: dict, tag: str, where: str):
    for names, cls in tags.items():
        if tag in names:
            return cls
    known = sorted(name for names in tags for name in names[:1])
    raise ValueError(f"{where}: unknown model type {tag!r}; fitax knows {known}")


def _convert(value, unit: str | None, target: str | None, where: str) -> float:
    source = u.Unit(unit) if unit else u.dimensionless_unscaled
    try:
        return float((value * source).to_value(u.Unit(target) if target else u.dimensionless_unscaled))
    except u.UnitConversionError as error:
        raise ValueError(f"{where}: unit {unit!r} cannot be converted to {target or 'dimensionless'!r}") from error


def _prior(entry, unit: str | None, target: str | None, where: str):
    """A parameter's Gammapy ``prior``: ``GaussianPrior`` (its ``weight`` folded into sigma:
    Gammapy adds ``weight x -2 log N(value; mu, sigma)``, the same up to a constant; weight 0
    is no prior) or ``UniformPrior`` (the parameter's bounds, as in Gammapy); ``mu``,
    ``sigma``, ``min`` and ``max`` in their own unit, else the parameter's."""
    if entry is None or entry == "":
        return None
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: prior must be a mapping with type, parameters and weight, got {entry!r}")
    kind = entry.get("type")
    names = {"GaussianPrior": ("mu", "sigma"), "UniformPrior": ("min", "max")}
    if kind not in names:
        raise ValueError(f"{where}: prior of type {kind!r} is not supported; fitax has GaussianPrior and UniformPrior")
    entries = entry.get("parameters") or []
    if not isinstance(entries, list) or not all(isinstance(p, dict) and isinstance(p.get("name"), str) for p in entries):
        raise ValueError(f"{where}: prior parameters must be a list of mappings with a name, got {entries!r}")
    given = {p["name"]: p for p in entries}
    unknown = sorted(set(given) - set(names[kind]))
    if unknown:
        raise ValueError(f"{where}: a {kind} has no parameter {unknown[0]!r} (it has {list(names[kind])})")
    values = {}
    for name, default in zip(names[kind], (0.0, 1.0)):  # Gammapy's defaults: mu 0, sigma 1; min 0, max 1
        parameter = given.get(name, {})
        value = parameter.get("value", default)
        if not isinstance(value, (int, float)) or not np.isfinite(value):
            raise ValueError(f"{where}: prior parameter {name!r} must be a finite number, got {value!r}")
        values[name] = _convert(value, parameter.get("unit") or unit, target, f"{where}: prior parameter {name!r}")
    weight = entry.get("weight", 1.0)
    if not isinstance(weight, (int, float)) or not weight >= 0:
        raise ValueError(f"{where}: prior weight must be a number >= 0, got {weight!r}")
    try:
        if kind == "GaussianPrior":
            return GaussianPrior(values["mu"], values["sigma"] / np.sqrt(weight)) if weight > 0 else None
        return UniformPrior(values["min"], values["max"])
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from error


def _prior_entry(prior, unit: str | None) -> dict:
    """The Gammapy YAML of a fitax prior."""
    names = ("mu", "sigma") if isinstance(prior, GaussianPrior) else ("min", "max")
    parameters = [{"name": name, "value": float(getattr(prior, name)), "unit": unit or ""} for name in names]
    return {"type": type(prior).__name__, "parameters": parameters, "weight": 1.0}


def _build(cls, entries: list, where: str, frame: str | None = None, links: dict | None = None, prefix: str = "", scale: str | None = None):
    """An instance of ``cls`` with the parameters listed in ``entries`` (the rest default),
    in ``frame`` (spatial models) or time ``scale`` (temporal models)."""
    options = {key: value for key, value in (("frame", frame), ("scale", scale)) if value is not None}
    defaults = cls(**options)
    kwargs = {}
    for entry in entries or []:
        name = entry.get("name")
        default = getattr(defaults, name, None) if name else None
        if not isinstance(default, Parameter):
            known = list(parameters_dict(defaults))
            raise ValueError(f"{where}: {cls.__name__} has no parameter {name!r} (parameters: {known})")
        here = f"{where}, parameter {name!r}"
        unit = entry.get("unit") or None
        try:
            u.Unit(unit or "")
        except ValueError as error:
            raise ValueError(f"{here}: unknown unit {unit!r}") from error
        value = entry.get("value")
        if not isinstance(value, (int, float)) or not np.isfinite(value):
            raise ValueError(f"{here}: value must be a finite number, got {value!r}")
        bound = {}
        for key in ("min", "max"):
            given = entry.get(key)
            if given is not None and np.isfinite(given):
                bound[key] = _convert(given, unit, default.unit, here)
            else:
                bound[key] = getattr(default, key)
        prior = _prior(entry.get("prior"), unit, default.unit, here)
        if isinstance(prior, UniformPrior):  # Gammapy's parameter bounds are then the prior's
            bound = {"min": prior.min, "max": prior.max}
        kwargs[name] = Parameter(
            _convert(value, unit, default.unit, here), min=bound["min"], max=bound["max"],
            frozen=bool(entry.get("frozen", default.frozen)), unit=default.unit, prior=prior,
        )
        if links is not None and entry.get("link"):
            links.setdefault(entry["link"], []).append(f"{prefix}.{name}")
    kwargs.update(options)
    try:
        return cls(**kwargs)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from error


def read_models(path) -> Models:
    """Read a Gammapy ``models.yaml`` into :class:`Models`.

    Example:
        >>> from fitax.gamma import read_models
        >>> read_models("../shared/data/gamma/sim/models_start_n1.yaml")  # doctest: +SKIP
        Models (3): ...
    """
    path = Path(path)
    content = load_yaml(path)
    components = content.get("components")
    if not isinstance(components, list):
        raise ValueError(f"{path}: expected a list under 'components'")
    models, links = [], {}
    for index, component in enumerate(components):
        tag = component.get("type")
        name = component.get("name")
        where = f"{path}: component {name or index!r}"
        if tag == "SkyModel":
            if not name:
                raise ValueError(f"{where}: a SkyModel needs a name")
            if component.get("apply_irf") not in (None, {}) and not (isinstance(component["apply_irf"], dict)
                                                                     and all(v is True for v in component["apply_irf"].values())):
                raise ValueError(f"{where}: apply_irf = {component['apply_irf']!r} is not supported by fitax yet (every IRF is applied)")
            unknown = sorted(set(component) - {"name", "type", "spectral", "spatial", "temporal", "datasets_names", "psf_mode", "apply_irf"})
            if unknown:
                raise ValueError(f"{where}: unknown key {unknown[0]!r} (a SkyModel has name, type, spectral, spatial, temporal, "
                                 "datasets_names and fitax's psf_mode)")
            if "spectral" not in component:
                raise ValueError(f"{where}: no 'spectral' model")
            spectral_part, spatial_part = component["spectral"], component.get("spatial")
            spectral = _build(_lookup_class(SPECTRAL_TAGS, spectral_part.get("type"), where),
                              spectral_part.get("parameters"), f"{where} spectral", links=links, prefix=f"{name}.spectral")
            spatial = None
            if spatial_part is not None and spatial_part.get("type") in ("TemplateSpatialModel", "template"):
                spatial = _read_template(spatial_part, path, where)
            elif spatial_part is not None:
                frame = spatial_part.get("frame", "icrs")
                spatial = _build(_lookup_class(SPATIAL_TAGS, spatial_part.get("type"), where), spatial_part.get("parameters"),
                                 f"{where} spatial", frame=frame, links=links, prefix=f"{name}.spatial")
            temporal, temporal_part = None, component.get("temporal")
            if temporal_part is not None:
                scale = temporal_part.get("scale", "utc")
                if scale not in TIME_SCALES:
                    raise ValueError(f"{where} temporal: scale {scale!r}; expected one of {list(TIME_SCALES)}")
                temporal_class = _lookup_class(TEMPORAL_TAGS, temporal_part.get("type"), f"{where} temporal")
                if temporal_class is LightCurveTemplateTemporalModel:
                    temporal = _read_light_curve_template(temporal_part, path, f"{where} temporal")
                else:
                    temporal = _build(temporal_class, temporal_part.get("parameters"), f"{where} temporal", links=links,
                                      prefix=f"{name}.temporal", scale=scale)
            psf_mode = component.get("psf_mode", "centre")
            if psf_mode not in PSF_MODES:
                raise ValueError(f"{where}: psf_mode {psf_mode!r}; expected one of {PSF_MODES}")
            models.append(SkyModel(spectral, spatial, name=name, datasets_names=component.get("datasets_names"),
                                   psf_mode=psf_mode, temporal_model=temporal))
        elif tag == "FoVBackgroundModel":
            names = component.get("datasets_names") or []
            if len(names) != 1:
                raise ValueError(f"{where}: a FoVBackgroundModel needs exactly one entry in datasets_names, got {names}")
            spectral_part = component.get("spectral", {"type": _BACKGROUND_SPECTRAL[0], "parameters": []})
            if spectral_part.get("type") not in _BACKGROUND_SPECTRAL:
                raise ValueError(f"{where}: background spectral model {spectral_part.get('type')!r}; fitax supports "
                                 f"{_BACKGROUND_SPECTRAL[0]}")
            background = _build(_BackgroundDefaults, spectral_part.get("parameters"), f"{where} spectral", links=links,
                                prefix=f"{names[0]}-bkg")
            models.append(FoVBackgroundModel(names[0], norm=background.norm, tilt=background.tilt, reference=background.reference))
        else:
            raise ValueError(f"{where}: unknown component type {tag!r}; fitax reads SkyModel and FoVBackgroundModel")
    result = Models(models)
    for label, names in links.items():
        source = label if label in names else names[0]
        for name in names:
            if name != source:
                result = tie(result, name, source)
    return result


def _read_template(spatial_part: dict, path: Path, where: str) -> TemplateSpatialModel:
    filename = spatial_part.get("filename")
    if not filename:
        raise ValueError(f"{where}: a TemplateSpatialModel needs a 'filename'")
    location = Path(filename)
    if not location.is_absolute() and (path.parent / location).exists():
        location = path.parent / location
    model = TemplateSpatialModel.read(location, normalize=bool(spatial_part.get("normalize", True)))
    for entry in spatial_part.get("parameters") or []:
        if entry.get("name") in ("lon_0", "lat_0") and entry.get("frozen", True) is False:
            raise ValueError(f"{where}: parameter {entry['name']!r}: a template's position cannot be fitted in fitax")
    return model


def _read_light_curve_template(temporal_part: dict, path: Path, where: str) -> LightCurveTemplateTemporalModel:
    """Gammapy's light-curve template from its table (``TIME`` after the reference time
    ``MJDREFI + MJDREFF`` in ``TIMESYS``, default UTC; ``NORM``): as Gammapy's
    ``LightCurveTemplateTemporalModel.read``, the file decides ``t_ref`` and the YAML's
    parameters are not read. A relative ``filename`` is looked up next to the models file,
    then in the working folder."""
    from astropy.table import Table
    from astropy.time import Time

    filename, file_format = temporal_part.get("filename"), temporal_part.get("format", "table")
    if not filename:
        raise ValueError(f"{where}: a LightCurveTemplateTemporalModel needs a 'filename'")
    if file_format != "table":
        raise ValueError(f"{where}: format {file_format!r} (an energy-dependent template map) is not supported; fitax reads 'table'")
    location = Path(os.path.expandvars(str(filename)))
    if not location.is_absolute() and (path.parent / location).exists():
        location = path.parent / location
    if not location.exists():
        raise FileNotFoundError(f"{where}: light-curve template {location}: no such file")
    try:
        table = Table.read(location)
    except (OSError, ValueError) as error:
        raise ValueError(f"{where}: light-curve template {location}: not a readable table ({error})") from error
    columns = {name.upper(): name for name in table.colnames}
    missing = [name for name in ("TIME", "NORM") if name not in columns]
    if missing:
        raise ValueError(f"{location}: light-curve template without column(s) {missing} (columns: {table.colnames})")
    meta = {key.upper(): value for key, value in table.meta.items()}
    time = table[columns["TIME"]]
    unit = time.unit if time.unit is not None and time.unit.is_equivalent(u.d) else meta.get("TIMEUNIT")
    if unit is None:
        raise ValueError(f"{location}: the TIME column has no time unit and the header no TIMEUNIT")
    norm = table[columns["NORM"]]
    if norm.unit is not None and not norm.unit.is_equivalent(u.dimensionless_unscaled):
        raise ValueError(f"{location}: NORM must be a unitless factor, got unit {norm.unit}")
    try:
        reference = Time(float(meta["MJDREFI"]), float(meta["MJDREFF"]), format="mjd", scale=str(meta.get("TIMESYS", "utc")).lower())
        nodes = u.Quantity(np.asarray(time, float), unit).to_value(u.d)
    except KeyError as error:
        raise ValueError(f"{location}: header keyword {error.args[0]} (the reference time) missing") from error
    except ValueError as error:
        raise ValueError(f"{location}: reference time or time unit: {error}") from error
    return LightCurveTemplateTemporalModel(nodes, np.asarray(norm, float), reference.utc.mjd, filename=str(location.resolve()))


class _BackgroundDefaults:
    """The parameters of Gammapy's PowerLawNormSpectralModel with their defaults."""

    def __init__(self, norm=None, tilt=None, reference=None):
        default = FoVBackgroundModel("_")
        self.norm = norm if norm is not None else default.norm
        self.tilt = tilt if tilt is not None else default.tilt
        self.reference = reference if reference is not None else default.reference


def _tag(model) -> str:
    return type(model).__name__


def _parameter_entries(model, errors: dict[str, float], prefix: str, link_sources: set[str]) -> list[dict]:
    """YAML entries of ``model``'s parameters; a tied parameter and the one it is tied to
    share a ``link`` label (the latter's dotted name)."""
    entries = []
    for name, parameter in parameters_dict(model).items():
        entry = {"name": name, "value": float(parameter.value)}
        if parameter.unit:
            entry["unit"] = parameter.unit
        error = errors.get(f"{prefix}.{name}")
        if error is not None and not parameter.frozen:
            entry["error"] = float(error)
        if parameter.min is not None:
            entry["min"] = parameter.min
        if parameter.max is not None:
            entry["max"] = parameter.max
        entry["frozen"] = bool(parameter.frozen)
        if parameter.prior is not None:
            entry["prior"] = _prior_entry(parameter.prior, parameter.unit)
        if parameter.tied_to is not None:
            entry["link"] = parameter.tied_to
        elif f"{prefix}.{name}" in link_sources:
            entry["link"] = f"{prefix}.{name}"
        entries.append(entry)
    return entries


def models_to_dict(models: Models, errors: dict[str, float] | None = None) -> dict:
    """The Gammapy YAML structure of ``models`` (with fitted ``errors`` by dotted name)."""
    errors = errors or {}
    link_sources = {p.tied_to for p in models.parameters.values() if p.tied_to is not None}
    components = []
    for model in models:
        if isinstance(model, SkyModel):
            component = {"name": model.name, "type": "SkyModel",
                         "spectral": {"type": _tag(model.spectral),
                                      "parameters": _parameter_entries(model.spectral, errors, f"{model.name}.spectral", link_sources)}}
            if isinstance(model.spatial, TemplateSpatialModel):
                component["spatial"] = {"type": "TemplateSpatialModel", "frame": model.spatial.frame,
                                        "filename": str(model.spatial.template.filename),
                                        "normalize": model.spatial.template.normalize,
                                        "parameters": _parameter_entries(model.spatial, errors, f"{model.name}.spatial", link_sources)}
            elif model.spatial is not None:
                component["spatial"] = {"type": _tag(model.spatial), "frame": model.spatial.frame,
                                        "parameters": _parameter_entries(model.spatial, errors, f"{model.name}.spatial", link_sources)}
            if model.temporal is not None:
                component["temporal"] = {"type": _tag(model.temporal), "scale": model.temporal.scale,
                                         "parameters": _parameter_entries(model.temporal, errors, f"{model.name}.temporal", link_sources)}
                if isinstance(model.temporal, LightCurveTemplateTemporalModel):
                    if not model.temporal.filename:
                        raise ValueError(f"model {model.name!r}: its light-curve template was made in code, not read from a file; "
                                         "give it a filename (the TIME/NORM table models.yaml refers to)")
                    component["temporal"].update({"filename": model.temporal.filename, "format": "table", "unit": ""})
            if model.datasets_names is not None:
                component["datasets_names"] = list(model.datasets_names)
            if model.psf_mode != "centre":
                component["psf_mode"] = model.psf_mode  # fitax's key; Gammapy ignores it
        else:
            component = {"type": "FoVBackgroundModel", "datasets_names": [model.dataset_name],
                         "spectral": {"type": _BACKGROUND_SPECTRAL[0],
                                      "parameters": _parameter_entries(model, errors, model.name, link_sources)}}
        components.append(component)
    return {"components": components}


def write_models(models: Models, path, errors: dict[str, float] | None = None) -> Path:
    """Write ``models`` as a Gammapy-readable ``models.yaml`` (atomically)."""
    text = gammapy_yaml(models_to_dict(models, errors))
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def write_results(result: FitResult, path) -> Path:
    """Write a fit's parameters as an ECSV table (name, value, error, unit, frozen), with
    the free parameters' names, covariance, statistic and convergence in its metadata."""
    table = result.to_table()
    table.meta.update({
        "stat_sum": float(result.stat), "converged": bool(result.converged), "message": result.message,
        "free_parameters": list(result.free_names), "covariance": np.asarray(result.covariance).tolist(),
    })
    return atomic_write(path, lambda tmp: table.write(tmp, format="ascii.ecsv", overwrite=True))
