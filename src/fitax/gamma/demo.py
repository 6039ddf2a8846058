"""``fitax gamma demo``: simulate observations, write them as Gammapy files, fit them jointly;
then, where the shared H.E.S.S. DR1 data are found, the Crab from DL3 to flux points.

Everything ``fitax gamma fit`` does, on data with known truth and without network or
Gammapy: a point source and a Gaussian source seen in ``n_datasets`` pointings (each with
its own background normalisation), written as MapDataset FITS files with a
``datasets.yaml``, true and start ``models.yaml``; then the joint fit, the results table,
plots, and the fitted values against the truth. The DL3 part is what ``fitax gamma reduce``,
``fit`` and ``estimate flux-points`` do with a Gammapy analysis configuration: four Crab runs
reduced to on-off spectra (reflected regions), a power law fitted with WStat, and its SED.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from astropy.coordinates import SkyCoord

from .datasets import Datasets
from .models import FoVBackgroundModel, Models, SkyModel
from .modelio import write_models
from .pipeline import fit_files, flux_points_files, reduce_files
from .simulate import simulate_observation, write_datasets
from .spatial import GaussianSpatialModel, PointSpatialModel
from .spectral import PowerLawSpectralModel

__all__ = ["run_gamma_demo", "demo_models"]


def demo_models(names: list[str], norms: list[float]) -> Models:
    """The simulated truth: two sources and a background model per observation."""
    return Models([
        SkyModel(PowerLawSpectralModel(index=2.4, amplitude=1e-11), PointSpatialModel(0.1, 0.15, frame="galactic"), name="point"),
        SkyModel(PowerLawSpectralModel(index=2.2, amplitude=1e-11), GaussianSpatialModel(-0.2, -0.1, 0.15, frame="galactic"),
                 name="extended"),
        *[FoVBackgroundModel(name, norm=norm) for name, norm in zip(names, norms)],
    ])


def _start(truth: Models) -> Models:
    from ..parameters import set_values

    return set_values(truth, {
        "point.spectral.index": 2.0, "point.spectral.amplitude": 5e-12, "point.spatial.lon_0": 0.13,
        "point.spatial.lat_0": 0.12, "extended.spectral.index": 2.0, "extended.spectral.amplitude": 5e-12,
        "extended.spatial.lon_0": -0.15, "extended.spatial.lat_0": -0.05, "extended.spatial.sigma": 0.25,
        **{f"{m.name}.norm": 1.0 for m in truth if isinstance(m, FoVBackgroundModel)},
    })


def run_gamma_demo(out: str | Path = "results/gamma", n_datasets: int = 3, seed: int = 0):
    """Run the demo into ``out``; returns the fit result."""
    if n_datasets < 1:
        raise ValueError(f"--datasets must be at least 1, got {n_datasets}")
    out = Path(out)
    rng = np.random.default_rng(seed)
    names = [f"obs{i:03d}" for i in range(n_datasets)]
    norms = list(1.0 + 0.05 * rng.standard_normal(n_datasets))
    truth = demo_models(names, norms)
    angles = 2 * np.pi * np.arange(n_datasets) / max(n_datasets, 1)
    start = time.perf_counter()
    datasets = Datasets([
        simulate_observation(truth, name, SkyCoord(0.4 * np.cos(a), 0.4 * np.sin(a), unit="deg", frame="galactic"), rng=rng)
        for name, a in zip(names, angles)
    ])
    data = out / "data"
    datasets_path = write_datasets(datasets, data)
    write_models(truth, data / "models_true.yaml")
    models_path = write_models(_start(truth), data / "models_start.yaml")
    print(f"Simulated {n_datasets} observations of 5 h ({sum(int(d.counts.sum()) for d in datasets)} counts) in "
          f"{time.perf_counter() - start:.1f} s; wrote {datasets_path} and the true/start models.yaml.\n")
    result = fit_files(datasets_path, models_path, out, ts_sources=("extended",))
    print("\nFitted against simulated truth:")
    true_values = truth.parameters
    print(f"  {'parameter':<28} {'truth':>11} {'fitted':>11} {'error':>10} {'pull':>6}")
    for name in result.free_names:
        value, error, expected = result.values[name], result.errors[name], float(true_values[name].value)
        print(f"  {name:<28} {expected:>11.4g} {value:>11.4g} {error:>10.3g} {(value - expected) / error:>6.2f}")
    store = Path(os.environ.get("FITAX_SHARED_DATA", Path.cwd().parent / "shared" / "data")) / "gamma" / "hess-dl3-dr1"
    if store.exists():
        crab_from_dl3(store, out / "crab")
    else:
        print(f"\n(No H.E.S.S. DR1 data store at {store}: the DL3 part is skipped; set FITAX_SHARED_DATA to the shared data folder.)")
    magic = store.parent / "magic" / "rad_max" / "data"
    if magic.exists():
        crab_point_like(magic, out / "crab_magic")
    return result


CRAB_CONFIG = {
    "datasets": {"type": "1d", "stack": False, "containment_correction": True, "background": {"method": "reflected"},
                 "on_region": {"frame": "icrs", "lon": "83.633 deg", "lat": "22.014 deg", "radius": "0.11 deg"},
                 "geom": {"axes": {"energy": {"min": "0.5 TeV", "max": "40 TeV", "nbins": 12},
                                   "energy_true": {"min": "0.3 TeV", "max": "60 TeV", "nbins": 20}}},
                 "safe_mask": {"methods": ["aeff-default", "aeff-max"], "parameters": {"aeff_percent": 10}}},
}  # fmt: skip
CRAB_MODEL = {"components": [{"name": "crab", "type": "SkyModel", "spectral": {"type": "PowerLawSpectralModel", "parameters": [
    {"name": "index", "value": 2.5}, {"name": "amplitude", "value": 3e-11, "unit": "cm-2 s-1 TeV-1"},
    {"name": "reference", "value": 1.0, "unit": "TeV"}]}}]}  # fmt: skip


def crab_from_dl3(store: Path, out: Path):
    """Four DR1 Crab runs from DL3 to flux points, as the command line does them:
    ``out/analysis.yaml`` (Gammapy's configuration), ``out/spectra`` (on-off spectra),
    ``out/fit`` (the power law, ``spectrum.png``) and ``out/sed`` (``flux_points.png``)."""
    import yaml

    out.mkdir(parents=True, exist_ok=True)
    config = {"observations": {"datastore": str(store), "obs_ids": [23523, 23526, 23559, 23592]}, **CRAB_CONFIG}
    (out / "analysis.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (out / "models_start.yaml").write_text(yaml.safe_dump(CRAB_MODEL, sort_keys=False))
    start = time.perf_counter()
    datasets_path = reduce_files(out / "analysis.yaml", out / "spectra", progress=False)
    print(f"\nThe Crab from DL3: 4 H.E.S.S. DR1 runs reduced to on-off spectra (reflected regions) in {time.perf_counter() - start:.1f} s; "
          f"{datasets_path}")
    result = fit_files(datasets_path, out / "models_start.yaml", out / "fit")
    points = flux_points_files(datasets_path, out / "fit" / "models.yaml", out / "sed", "crab", [0.7, 1.0, 2.0, 4.0, 10.0, 30.0])
    print(f"Flux points: {points}")
    return result


CRAB_LOG_PARABOLA = {"components": [{"name": "crab", "type": "SkyModel", "spectral": {"type": "LogParabolaSpectralModel", "parameters": [
    {"name": "amplitude", "value": 4e-11, "unit": "cm-2 s-1 TeV-1"}, {"name": "reference", "value": 1.0, "unit": "TeV"},
    {"name": "alpha", "value": 2.5}, {"name": "beta", "value": 0.1}]}}]}  # fmt: skip


def crab_point_like(store: Path, out: Path):
    """The two MAGIC Crab runs with point-like IRFs (an energy-dependent cut, RAD_MAX): on-off
    spectra at a point ON region with 3 wobble OFF points (``out/spectra``), a log-parabola fit
    (``out/fit``) and flux points (``out/sed``)."""
    import astropy.units as u
    import yaml

    from .pipeline import point_like_spectra_files

    out.mkdir(parents=True, exist_ok=True)
    (out / "models_start.yaml").write_text(yaml.safe_dump(CRAB_LOG_PARABOLA, sort_keys=False))
    start = time.perf_counter()
    datasets_path = point_like_spectra_files(store, SkyCoord(83.633, 22.014, unit="deg"), np.geomspace(0.05, 50, 21) * u.TeV,
                                             np.geomspace(0.01, 100, 31) * u.TeV, out / "spectra", n_off_regions=3,
                                             safe_mask_methods=("aeff-max", "edisp-bias"))
    print(f"\nThe Crab with point-like IRFs: 2 MAGIC runs reduced to on-off spectra (RAD_MAX cut, 3 wobble OFF points) in "
          f"{time.perf_counter() - start:.1f} s; {datasets_path}")
    result = fit_files(datasets_path, out / "models_start.yaml", out / "fit")
    points = flux_points_files(datasets_path, out / "fit" / "models.yaml", out / "sed", "crab", [0.08, 0.15, 0.3, 0.6, 1.2, 2.5, 5.0, 10.0])
    print(f"Flux points: {points}")
    return result
