"""Simulated CTA-like observations, written in Gammapy's MapDataset format.

Instrument (analytic, chosen to resemble a CTA-like array at a few TeV, not any real one):

* effective area ``A(E) = 3e5 m2 (E / 1 TeV)^0.3 / (1 + (0.2 TeV / E)^2)`` times a Gaussian
  acceptance of 2 deg width around the pointing;
* PSF: a Gaussian of ``sigma(E) = 0.08 deg (E / 1 TeV)^-0.25`` (0.03 to 0.15 deg), wider by
  ``(1 + 0.1 offset^2)`` away from the pointing (so the PSF depends on the position), on a
  coarse grid as a PSF map; optionally elongated (``psf_elongation``: the ratio of the major
  to the minor width, their geometric mean being ``sigma``) with the major axis pointing
  away from the pointing, as the PSF of an off-axis source: then written as an asymmetric
  PSF kernel map (:mod:`fitax.gamma.psf_kernel_map`) next to a radial PSF map of width
  ``sigma`` that Gammapy reads;
* energy dispersion: log-normal with 10% resolution;
* background: ``1e-2 (E / 1 TeV)^-2.7`` counts TeV-1 deg-2 s-1 times the acceptance.

Event types (:data:`EVENT_TYPES`, as CTA's PSF quartiles) split an observation's events
into classes with their own PSF width, energy resolution, effective area and background:
each becomes a dataset of its own (``obs007_et2``), fitted jointly.

Counts are Poisson draws of fitax's own npred of the true models, so fits of them test
fitax against known truth, and the files are a test of the writer against Gammapy.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
from astropy.coordinates import SkyCoord
from astropy.wcs import WCS
from jax.scipy.special import ndtr

from ._common import gammapy_yaml
from .datasets import Datasets
from .mapdataset import MapDataset
from .io import MapDatasetFile, write_map_dataset
from .models import FoVBackgroundModel, Models, SkyModel
from .psf_kernel_map import PSFKernelMap

__all__ = ["simulate_observation", "make_geometry", "write_datasets", "EventType", "EVENT_TYPES", "survey_models",
           "start_models", "simulate_survey", "simulate_files"]

_RAD_EDGES = np.linspace(0.0, 0.66, 67)
_MIN_SURVEY_NPIX = 40


@dataclasses.dataclass(frozen=True)
class EventType:
    """A class of events: PSF width and energy resolution relative to the instrument
    above, and its shares of the effective area and of the background."""

    psf_scale: float
    resolution: float
    area_share: float
    background_share: float


# from the best-reconstructed quarter of the events to the worst: sharper PSF, less
# background (PSF-quartile event types); the shares add up to 1
EVENT_TYPES = (EventType(0.7, 0.08, 0.25, 0.15), EventType(0.9, 0.10, 0.25, 0.2),
               EventType(1.1, 0.12, 0.25, 0.25), EventType(1.4, 0.15, 0.25, 0.4))


def make_geometry(centre: tuple[float, float] = (0.0, 0.0), npix: int = 80, binsz: float = 0.02, frame: str = "galactic") -> WCS:
    """A CAR WCS of ``npix x npix`` pixels of ``binsz`` deg centred on ``centre``."""
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["GLON-CAR", "GLAT-CAR"] if frame == "galactic" else ["RA---CAR", "DEC--CAR"]
    wcs.wcs.crval = list(centre)
    wcs.wcs.crpix = [(npix + 1) / 2, (npix + 1) / 2]
    wcs.wcs.cdelt = [-binsz, binsz]
    wcs.wcs.cunit = ["deg", "deg"]
    return wcs


def _offsets(wcs: WCS, shape, pointing: SkyCoord) -> np.ndarray:
    ny, nx = shape
    x, y = np.meshgrid(np.arange(nx), np.arange(ny))
    return wcs.pixel_to_world(x, y).separation(pointing).deg


def _psf_sigma(energy: np.ndarray, offset: np.ndarray, widening: float) -> np.ndarray:
    return np.clip(0.08 * energy**-0.25, 0.03, 0.15)[:, None, None] * (1 + widening * offset**2)[None]


def simulate_observation(
    models: Models,
    name: str,
    pointing: SkyCoord,
    livetime: float = 18000.0,
    *,
    wcs: WCS | None = None,
    npix: int = 80,
    energy_edges: np.ndarray | None = None,
    energy_true_edges: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
    psf_widening: float = 0.1,
    psf_nodes: int = 4,
    event_type: EventType | None = None,
    psf_elongation: float = 1.0,
) -> MapDataset:
    """One observation of ``models`` (sources and this dataset's background model) with
    the analytic instrument above; ``livetime`` in seconds. The PSF widens by a factor
    ``1 + psf_widening offset^2`` (offset in deg) and is tabulated on ``psf_nodes x
    psf_nodes`` positions across the map. ``event_type``: only that class of the events
    (default: all of them). ``psf_elongation`` > 1: an elongated PSF whose major axis points
    away from the pointing (major / minor width; an asymmetric PSF kernel map)."""
    if not psf_elongation >= 1:
        raise ValueError(f"psf_elongation is the ratio of the major to the minor PSF width (>= 1), got {psf_elongation}")
    event_type = EventType(1.0, 0.1, 1.0, 1.0) if event_type is None else event_type
    rng = np.random.default_rng(0) if rng is None else rng
    energy_edges = np.geomspace(0.5, 50.0, 13) if energy_edges is None else np.asarray(energy_edges, float)
    energy_true_edges = np.geomspace(0.3, 100.0, 21) if energy_true_edges is None else np.asarray(energy_true_edges, float)
    wcs = make_geometry(npix=npix) if wcs is None else wcs
    shape = (npix, npix)
    centres_true = np.sqrt(energy_true_edges[1:] * energy_true_edges[:-1])
    centres = np.sqrt(energy_edges[1:] * energy_edges[:-1])
    offset = _offsets(wcs, shape, pointing)
    acceptance = np.exp(-0.5 * (offset / 2.0) ** 2)
    area = 3e5 * centres_true**0.3 / (1 + (0.2 / centres_true) ** 2)
    exposure = event_type.area_share * area[:, None, None] * livetime * acceptance[None]
    pixel_area = float(np.abs(wcs.wcs.cdelt).prod())
    background = event_type.background_share * (1e-2 * centres**-2.7 * np.diff(energy_edges))[:, None, None] * pixel_area * livetime * acceptance[None]

    irf_wcs = make_geometry(tuple(wcs.wcs.crval), npix=psf_nodes, binsz=npix * float(abs(wcs.wcs.cdelt[0])) / psf_nodes,
                            frame=_frame(wcs))
    irf_offset = _offsets(irf_wcs, (psf_nodes, psf_nodes), pointing)
    rad = 0.5 * (_RAD_EDGES[1:] + _RAD_EDGES[:-1])
    sigma = event_type.psf_scale * _psf_sigma(centres_true, irf_offset, psf_widening)  # (true, nodes, nodes)
    psf = np.exp(-0.5 * (rad[None, :, None, None] / sigma[:, None]) ** 2) / (2 * np.pi * sigma[:, None] ** 2)
    log_edges = np.log(energy_edges)
    cdf = np.asarray(ndtr((log_edges[None, :] - np.log(centres_true)[:, None]) / event_type.resolution))
    migration = np.diff(cdf, axis=1)  # (true, reco)
    edisp = np.broadcast_to(migration[:, :, None, None], migration.shape + (psf_nodes, psf_nodes)).copy()
    kernel_map = None
    if psf_elongation > 1:
        node_x, node_y = np.meshgrid(np.arange(psf_nodes), np.arange(psf_nodes))
        away = pointing.position_angle(irf_wcs.pixel_to_world(node_x, node_y)).deg
        stretch = np.sqrt(psf_elongation)
        kernel_map = PSFKernelMap.elliptical_gaussian(sigma * stretch, sigma / stretch, away, energy_true_edges, irf_wcs,
                                                      wcs.wcs.cdelt)
    contents = MapDatasetFile(
        name=name, path=None, counts=np.zeros((len(centres),) + shape), exposure=exposure, background=background,
        mask_safe=np.ones((len(centres),) + shape, bool), mask_fit=None, energy_edges=energy_edges,
        energy_true_edges=energy_true_edges, wcs=wcs, psf=psf, psf_rad=rad, psf_rad_edges=_RAD_EDGES,
        psf_energy_true=centres_true, psf_wcs=irf_wcs, edisp=edisp, edisp_wcs=irf_wcs, livetime=livetime,
        psf_kernel_map=kernel_map,
    )
    counts = rng.poisson(_expected_counts(contents, name, models)).astype(float)
    return MapDataset.from_file_contents(_replace(contents, counts=counts), name)


_SIMULATED = "simulated"


def _expected_counts(contents: MapDatasetFile, name: str, models: Models) -> np.ndarray:
    """npred of ``models`` on the dataset ``name``, computed under one fixed dataset name: the
    names are static in a bound group, so each dataset of a survey compiled anew when it was
    predicted under its own (1.06 s a dataset of a 12-observation survey, 0.77 s now)."""

    def renamed(model):
        if isinstance(model, FoVBackgroundModel):
            return FoVBackgroundModel(_SIMULATED, model.norm, model.tilt, model.reference)
        return SkyModel(model.spectral, model.spatial, model.name, None, model.psf_mode, model.temporal)

    own = [renamed(m) for m in models
           if (m.dataset_name == name if isinstance(m, FoVBackgroundModel) else m.applies_to(name))]
    return MapDataset.from_file_contents(contents, _SIMULATED).npred(Models(own))


def _replace(contents: MapDatasetFile, **changes) -> MapDatasetFile:
    return dataclasses.replace(contents, **changes)


def _frame(wcs: WCS) -> str:
    return "galactic" if wcs.wcs.ctype[0].startswith("GLON") else "icrs"


def write_datasets(datasets: Datasets, folder) -> Path:
    """Write each dataset as ``<name>.fits.gz`` and a ``datasets.yaml`` listing them (with
    Gammapy's checksum)."""

    from ..io import atomic_write

    folder = Path(folder)
    entries = []
    for dataset in datasets:
        filename = f"{dataset.name}.fits.gz"
        write_map_dataset(_replace(dataset.irfs, counts=dataset.counts, name=dataset.name), folder / filename)
        entries.append({"name": dataset.name, "type": "MapDataset", "filename": filename})
    text = gammapy_yaml({"datasets": entries})
    return atomic_write(folder / "datasets.yaml", lambda tmp: tmp.write_text(text))


def survey_models(dataset_names: list[str], rng: np.random.Generator, psf_mode: str = "position") -> Models:
    """The truth of a simulated survey of the Galactic-centre region: a point source, a
    Gaussian and a large disk (the extended ones with ``psf_mode``: by default spread
    with the PSF of each position), the Gaussian's and the disk's spectral index tied (one
    population), and per dataset a background model with free norm and tilt near 1 and 0."""
    from ..parameters import thaw, tie
    from .spatial import DiskSpatialModel, GaussianSpatialModel, PointSpatialModel
    from .spectral import PowerLawSpectralModel

    sources = [
        SkyModel(PowerLawSpectralModel(index=2.4, amplitude=1e-11), PointSpatialModel(0.1, 0.15, frame="galactic"), name="point"),
        SkyModel(PowerLawSpectralModel(index=2.2, amplitude=1e-11), GaussianSpatialModel(-0.2, -0.1, 0.15, frame="galactic"),
                 name="gauss", psf_mode=psf_mode),
        SkyModel(PowerLawSpectralModel(index=2.2, amplitude=2e-11), DiskSpatialModel(0.25, -0.25, 0.3, edge_width=0.3, frame="galactic"),
                 name="disk", psf_mode=psf_mode),
    ]
    backgrounds = [FoVBackgroundModel(name, norm=1 + 0.05 * rng.standard_normal(), tilt=0.03 * rng.standard_normal())
                   for name in dataset_names]
    models = thaw(Models(sources + backgrounds), *[f"{b.name}.tilt" for b in backgrounds])
    return tie(models, "disk.spectral.index", "gauss.spectral.index")


def start_models(truth: Models, rng: np.random.Generator) -> Models:
    """The truth perturbed as a fit would start from it: positions by ~0.03 deg, sizes by
    ~15%, indices by ~0.2, amplitudes by ~30%; background norms 1 and tilts 0."""
    from ..parameters import set_values

    changes = {}
    for name, parameter in truth.parameters.items():
        if parameter.frozen or parameter.tied_to is not None:
            continue
        value = float(parameter.value)
        if name.endswith((".lon_0", ".lat_0")):
            changes[name] = value + 0.03 * rng.standard_normal()
        elif name.endswith((".sigma", ".r_0")):
            changes[name] = value * np.exp(0.15 * rng.standard_normal())
        elif name.endswith(".index"):
            changes[name] = value + 0.2 * rng.standard_normal()
        elif name.endswith(".amplitude"):
            changes[name] = value * np.exp(0.3 * rng.standard_normal())
        elif name.endswith("-bkg.norm"):
            changes[name] = 1.0
        elif name.endswith("-bkg.tilt"):
            changes[name] = 0.0
    return set_values(truth, changes)


def simulate_survey(n_obs: int, event_types: int = 1, seed: int = 0, npix: int = 60, livetime: float = 18000.0,
                    progress: bool = False, psf_mode: str = "position", psf_elongation: float = 1.0) -> tuple[Datasets, Models]:
    """``n_obs`` observations of ``livetime`` seconds around the Galactic centre (pointings on
    rings 0.5-0.9 deg from it), each split into ``event_types`` datasets (the first of
    :data:`EVENT_TYPES`, or all events for 1), and their true models (:func:`survey_models`
    with ``psf_mode``), with a PSF elongated by ``psf_elongation``. With 1 h, an event type of 100 x 4 held ~240 counts, too few to fix
    its background tilt (one ran away in the fit); 5 h give ~1200."""
    if n_obs < 1:
        raise ValueError(f"--n-obs must be at least 1, got {n_obs}")
    if not 1 <= event_types <= len(EVENT_TYPES):
        raise ValueError(f"--event-types must be between 1 and {len(EVENT_TYPES)}, got {event_types}")
    if not psf_elongation >= 1:
        raise ValueError(f"--psf-elongation is the ratio of the PSF's major to minor width, at least 1, got {psf_elongation}")
    if npix < _MIN_SURVEY_NPIX:
        raise ValueError(f"--npix must be at least {_MIN_SURVEY_NPIX} (the sources lie up to 0.55 deg from the centre, "
                         f"pixels are 0.03 deg), got {npix}")
    rng = np.random.default_rng(seed)
    types = [None] if event_types == 1 else list(EVENT_TYPES[:event_types])
    if event_types > 1:  # the chosen classes hold all the events
        total_area = sum(t.area_share for t in types)
        total_background = sum(t.background_share for t in types)
        types = [EventType(t.psf_scale, t.resolution, t.area_share / total_area, t.background_share / total_background)
                 for t in types]
    names = [f"obs{i:03d}" if event_types == 1 else f"obs{i:03d}_et{k}" for i in range(n_obs) for k in range(event_types)]
    truth = survey_models(names, rng, psf_mode)
    wcs = make_geometry(npix=npix, binsz=0.03)
    datasets = []
    from tqdm import tqdm

    bar = tqdm(total=len(names), desc="simulating datasets", disable=not progress, leave=False)
    for i in range(n_obs):
        angle, radius = 2.4 * i, 0.5 + 0.4 * (i % 3) / 2
        pointing = SkyCoord(radius * np.cos(angle), radius * np.sin(angle), unit="deg", frame="galactic")
        for k, event_type in enumerate(types):
            name = names[i * event_types + k]
            datasets.append(simulate_observation(truth, name, pointing, livetime, wcs=wcs, npix=npix, rng=rng,
                                                 psf_widening=0.3, event_type=event_type, psf_elongation=psf_elongation))
            bar.update()
    bar.close()
    return Datasets(datasets), truth


def simulate_files(out, n_obs: int, event_types: int = 1, seed: int = 0, npix: int = 60, psf_mode: str = "position",
                   psf_elongation: float = 1.0) -> Path:
    """What ``fitax gamma simulate`` does: :func:`simulate_survey` written to ``out`` as
    Gammapy files: one MapDataset per observation and event type, ``datasets.yaml``,
    ``models_true.yaml`` and a perturbed ``models_start.yaml`` that ``fitax gamma fit``
    takes as it is (``psf_mode``: the extended sources', in the truth and in the start;
    ``psf_elongation`` > 1: an asymmetric PSF, written as a kernel map in each file).
    Returns the ``datasets.yaml`` path.

    Example:
        >>> simulate_files("survey", n_obs=10, event_types=4)  # doctest: +SKIP
        PosixPath('survey/datasets.yaml')
    """
    import sys

    from .modelio import write_models

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder")
    start = time.perf_counter()
    datasets, truth = simulate_survey(n_obs, event_types, seed, npix, progress=sys.stderr.isatty(), psf_mode=psf_mode,
                                      psf_elongation=psf_elongation)
    path = write_datasets(datasets, out)
    write_models(truth, out / "models_true.yaml")
    write_models(start_models(truth, np.random.default_rng(seed + 1)), out / "models_start.yaml")
    free = sum(p.is_free for p in truth.parameters.values())
    print(f"Simulated {len(datasets)} datasets ({n_obs} observations x {event_types} event types, "
          f"{sum(int(d.counts.sum()) for d in datasets)} counts, {free} free parameters) in "
          f"{time.perf_counter() - start:.1f} s: {path}, models_true.yaml, models_start.yaml")
    return path

