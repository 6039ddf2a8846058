"""Flux points and light curves: fitax against Gammapy 2.1's FluxPointsEstimator and
LightCurveEstimator, on the same files, in one run.

The 4 H.E.S.S. DR1 Crab runs are reduced by ``fitax gamma reduce`` (one dataset per run, 5 x 5
deg of 0.04 deg pixels, 12 energy bins 0.7-30 TeV), read by both; both estimate the flux
points of the Crab (a point source with a power law) in 6 bins with the same models.yaml,
the optional quantities fitax computes (Gammapy's ``selection_optional=["errn-errp", "ul",
"scan"]``: asymmetric errors, upper limits, likelihood scans; not "all", which adds
sensitivities), ``reoptimize=False``; the script checks they agree (norms, errors
and upper limits within 1e-3 relative, TS within 1e-2). The light curve: 4 runs of the 2006
PKS 2155-304 flare reduced likewise (4 x 4 deg, 6 bins 0.4-10 TeV, FoV background norms),
one flux point 0.7-10 TeV per run, the same optional quantities. The 1D row: the same 4 Crab
runs reduced to on-off spectra (``type: 1d``, 0.11 deg ON region, reflected regions, 12 bins
0.7-30 TeV), the Crab's power law (no spatial model), flux points in the same 6 bins (WStat).
Excess maps (0.1 deg correlation radius, all energies): the 4 Crab runs stacked on the same 5 x
5 deg grid, with its background template (Cash, FoV norms fitted) and with Gammapy's ring
background (``RingBackgroundMaker``, 0.5-0.8 deg, the Crab excluded, written as a
``MapDatasetOnOff``: WStat); each with Gammapy's default quantities on the whole map (fitax
computes its asymmetric errors and upper limits anyway) and with ``errn-errp`` and ``ul``
on a 2 x 2 deg cutout (Gammapy finds those roots pixel by pixel, ~3 ms each); both must agree
where TS > 1.
With ``--reoptimize``: flux points with Gammapy's ``reoptimize=True`` (the background norms
refitted in every bin, for the TS, the profile crossings and the scan) on two of the Crab runs
reduced on 3 x 3 deg (6 bins 0.7-20 TeV), 3 flux bins; Gammapy takes ~100 s a call.

What is timed, in process: reading the datasets anew (fitax caches IRFs and bindings on its
dataset objects, so each repeat reads fresh files on both sides) and estimating; median of
``--repeats`` after one untimed warm-up, interleaved. fitax's compile time is its first call
minus the median. From the shell (``--shell``): ``fitax gamma estimate flux-points`` (with
its plot skipped) against a Python script doing the same with Gammapy (reading, estimating,
``FluxPoints.write``), each run once untimed, then the median of ``--repeats``, interleaved.

Example:
    python benchmarks/gamma_estimators.py --shell --json results/bench/gamma_estimators.json
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

ENERGY_EDGES = (0.7, 1.0, 1.5, 2.5, 4.0, 8.0, 30.0)
LIGHT_CURVE_EDGES = (0.7, 10.0)
SELECTION = ["errn-errp", "ul", "scan"]  # what fitax computes: Gammapy's "all" would add sensitivities
PKS_RUNS = [33787, 33788, 33789, 33790]
PKS = {"name": "pks2155", "type": "SkyModel",
       "spectral": {"type": "PowerLawSpectralModel", "parameters": [
           {"name": "index", "value": 3.4}, {"name": "amplitude", "value": 1e-10, "unit": "cm-2 s-1 TeV-1"},
           {"name": "reference", "value": 1.0, "unit": "TeV"}]},
       "spatial": {"type": "PointSpatialModel", "frame": "icrs", "parameters": [
           {"name": "lon_0", "value": 329.71694, "unit": "deg"}, {"name": "lat_0", "value": -30.22559, "unit": "deg"}]}}  # fmt: skip


def _reduce(store: str, folder: Path) -> tuple[Path, Path]:
    import yaml

    config = {
        "observations": {"datastore": str(Path(store).resolve()), "obs_ids": [23523, 23526, 23559, 23592]},
        "datasets": {"type": "3d", "stack": False,
                     "geom": {"wcs": {"skydir": {"frame": "icrs", "lon": "83.633 deg", "lat": "22.014 deg"}, "binsize": "0.04 deg",
                                      "width": {"width": "5 deg", "height": "5 deg"}},
                              "axes": {"energy": {"min": "0.7 TeV", "max": "30 TeV", "nbins": 12},
                                       "energy_true": {"min": "0.5 TeV", "max": "50 TeV", "nbins": 20}}},
                     "safe_mask": {"methods": ["aeff-default", "offset-max"], "parameters": {"offset_max": "2.5 deg"}},
                     "background": {"method": "fov_background", "parameters": {"method": "scale"}}},
    }  # fmt: skip
    (folder / "analysis.yaml").write_text(yaml.safe_dump(config))
    from fitax.gamma.pipeline import reduce_files

    datasets = reduce_files(folder / "analysis.yaml", folder / "reduced", progress=False)
    models = yaml.safe_load((folder / "reduced" / "models.yaml").read_text())
    models.pop("checksum", None)
    crab = {"name": "crab", "type": "SkyModel",
            "spectral": {"type": "PowerLawSpectralModel", "parameters": [
                {"name": "index", "value": 2.62}, {"name": "amplitude", "value": 4.9e-11, "unit": "cm-2 s-1 TeV-1"},
                {"name": "reference", "value": 1.0, "unit": "TeV"}]},
            "spatial": {"type": "PointSpatialModel", "frame": "icrs", "parameters": [
                {"name": "lon_0", "value": 83.6209, "unit": "deg"}, {"name": "lat_0", "value": 22.0243, "unit": "deg"}]}}  # fmt: skip
    models["components"].insert(0, crab)
    (folder / "models.yaml").write_text(yaml.safe_dump(models, sort_keys=False))
    return datasets, folder / "models.yaml"


def _reduce_onoff(store: str, folder: Path) -> tuple[Path, Path]:
    import yaml

    config = {
        "observations": {"datastore": str(Path(store).resolve()), "obs_ids": [23523, 23526, 23559, 23592]},
        "datasets": {"type": "1d", "stack": False, "background": {"method": "reflected"}, "containment_correction": True,
                     "on_region": {"frame": "icrs", "lon": "83.633 deg", "lat": "22.014 deg", "radius": "0.11 deg"},
                     "geom": {"axes": {"energy": {"min": "0.7 TeV", "max": "30 TeV", "nbins": 12},
                                       "energy_true": {"min": "0.5 TeV", "max": "50 TeV", "nbins": 20}}},
                     "safe_mask": {"methods": ["aeff-default"]}},
    }  # fmt: skip
    (folder / "onoff.yaml").write_text(yaml.safe_dump(config))
    from fitax.gamma.pipeline import reduce_files

    datasets = reduce_files(folder / "onoff.yaml", folder / "onoff", progress=False)
    crab = {"name": "crab", "type": "SkyModel", "spectral": {"type": "PowerLawSpectralModel", "parameters": [
        {"name": "index", "value": 2.62}, {"name": "amplitude", "value": 4.4e-11, "unit": "cm-2 s-1 TeV-1"},
        {"name": "reference", "value": 1.0, "unit": "TeV"}]}}  # fmt: skip
    (folder / "onoff_models.yaml").write_text(yaml.safe_dump({"components": [crab]}, sort_keys=False))
    return datasets, folder / "onoff_models.yaml"


def _stacked_maps(store: str, folder: Path) -> dict:
    """The 4 Crab runs stacked (Cash: the background template) and with a ring background
    (WStat), whole and cut out to 2 x 2 deg: ``{kind: (datasets.yaml, models.yaml)}``."""
    import yaml
    import astropy.units as u
    from astropy.coordinates import SkyCoord
    from gammapy.datasets import Datasets, MapDataset
    from gammapy.makers import RingBackgroundMaker
    from regions import CircleSkyRegion

    from fitax.gamma.pipeline import reduce_files

    config = yaml.safe_load((folder / "analysis.yaml").read_text())
    config["datasets"]["stack"] = True
    (folder / "stacked.yaml").write_text(yaml.safe_dump(config))
    stacked_path = reduce_files(folder / "stacked.yaml", folder / "stacked", progress=False)
    crab = SkyCoord(83.633, 22.014, unit="deg")
    stacked = MapDataset.read(stacked_path.parent / "stacked.fits")
    exclusion = ~stacked.counts.geom.to_image().region_mask([CircleSkyRegion(crab, 0.3 * u.deg)])
    ring = RingBackgroundMaker(r_in="0.5 deg", width="0.3 deg", exclusion_mask=exclusion).run(stacked)
    stacked_models = folder / "stacked" / "models.yaml"
    empty = folder / "no_models.yaml"
    empty.write_text(yaml.safe_dump({"components": []}))
    files = {"cash": (stacked_path, stacked_models)}
    for name, dataset in (("cash_cutout", stacked.cutout(crab, 2 * u.deg, name="stacked")), ("wstat", ring),
                          ("wstat_cutout", ring.cutout(crab, 2 * u.deg, name="ring"))):
        Datasets([dataset]).write(folder / name / "datasets.yaml")
        files[name] = (folder / name / "datasets.yaml", stacked_models if name.startswith("cash") else empty)
    return files


def _fitax_excess(datasets: Path, models: Path):
    import astropy.units as u

    import fitax.gamma as fg
    from fitax.gamma.estimators import excess_map

    return excess_map(fg.read_datasets(datasets)[0], fg.read_models(models), 0.1 * u.deg).maps


def _gammapy_excess(datasets: Path, models: Path, selection):
    from gammapy.datasets import Datasets
    from gammapy.estimators import ExcessMapEstimator
    from gammapy.modeling.models import Models

    read = Datasets.read(datasets, lazy=False)
    read.models = Models.read(models)
    return ExcessMapEstimator(correlation_radius="0.1 deg", selection_optional=selection).run(read[0])


def _worst_excess(ours, theirs) -> dict:
    import numpy as np

    significant = np.asarray(theirs["ts"].data) > 1
    worst = {}
    for key in ("norm", "norm_err", "norm_errn", "norm_errp", "norm_ul"):
        if key in theirs.available_quantities:
            a, b = np.asarray(ours[key], float), np.asarray(theirs[key].data, float)
            if not np.array_equal(np.isnan(a), np.isnan(b)):
                return {"norm": float("inf")}
            worst[key] = float(np.max(np.abs(a[significant] / b[significant] - 1)))
    worst["ts_abs"] = float(np.max(np.abs(np.asarray(ours["ts"])[significant] - np.asarray(theirs["ts"].data)[significant])))
    return worst


def _reduce_two_runs(store: str, folder: Path) -> tuple[Path, Path]:
    """Two Crab runs on 3 x 3 deg with free background norms and the Crab (the reoptimize row)."""
    import yaml

    from fitax.gamma.pipeline import reduce_files

    config = yaml.safe_load((folder / "analysis.yaml").read_text())
    config["observations"]["obs_ids"] = [23523, 23526]
    config["datasets"]["geom"]["wcs"]["width"] = {"width": "3 deg", "height": "3 deg"}
    config["datasets"]["geom"]["axes"] = {"energy": {"min": "0.7 TeV", "max": "20 TeV", "nbins": 6},
                                          "energy_true": {"min": "0.5 TeV", "max": "30 TeV", "nbins": 12}}
    config["datasets"]["safe_mask"] = {"methods": ["aeff-default", "offset-max"], "parameters": {"offset_max": "2.0 deg"}}
    (folder / "two_runs.yaml").write_text(yaml.safe_dump(config))
    datasets = reduce_files(folder / "two_runs.yaml", folder / "two_runs", progress=False)
    models = yaml.safe_load((folder / "two_runs" / "models.yaml").read_text())
    models.pop("checksum", None)
    models["components"].insert(0, yaml.safe_load((folder / "models.yaml").read_text())["components"][0])
    (folder / "two_runs_models.yaml").write_text(yaml.safe_dump(models, sort_keys=False))
    return datasets, folder / "two_runs_models.yaml"


REOPTIMIZE_EDGES = (1.0, 2.0, 5.0, 20.0)


def _fitax_reoptimized(datasets: Path, models: Path):
    import astropy.units as u

    import fitax.gamma as fg
    from fitax.gamma.estimators import flux_points

    return flux_points(fg.read_datasets(datasets), fg.read_models(models), "crab", REOPTIMIZE_EDGES * u.TeV, reoptimize=True).table


def _gammapy_reoptimized(datasets: Path, models: Path):
    import astropy.units as u
    from gammapy.datasets import Datasets
    from gammapy.estimators import FluxPointsEstimator
    from gammapy.modeling.models import Models

    read = Datasets.read(datasets)
    read.models = Models.read(models)
    return FluxPointsEstimator(energy_edges=REOPTIMIZE_EDGES * u.TeV, source="crab", selection_optional=SELECTION, reoptimize=True).run(read)


def _reduce_pks(store: str, folder: Path) -> tuple[Path, Path]:
    import yaml

    from fitax.gamma.pipeline import reduce_files

    config = {
        "observations": {"datastore": str(Path(store).resolve()), "obs_ids": PKS_RUNS},
        "datasets": {"type": "3d", "stack": False,
                     "geom": {"wcs": {"skydir": {"frame": "icrs", "lon": "329.71694 deg", "lat": "-30.22559 deg"}, "binsize": "0.05 deg",
                                      "width": {"width": "4 deg", "height": "4 deg"}},
                              "axes": {"energy": {"min": "0.4 TeV", "max": "10 TeV", "nbins": 6},
                                       "energy_true": {"min": "0.3 TeV", "max": "20 TeV", "nbins": 12}}},
                     "safe_mask": {"methods": ["aeff-default", "offset-max"], "parameters": {"offset_max": "2.0 deg"}},
                     "background": {"method": "fov_background"}},
    }  # fmt: skip
    (folder / "pks.yaml").write_text(yaml.safe_dump(config))
    datasets = reduce_files(folder / "pks.yaml", folder / "pks", progress=False)
    models = yaml.safe_load((folder / "pks" / "models.yaml").read_text())
    models.pop("checksum", None)
    models["components"].insert(0, PKS)
    (folder / "pks_models.yaml").write_text(yaml.safe_dump(models, sort_keys=False))
    return datasets, folder / "pks_models.yaml"


def _fitax_light_curve(datasets: Path, models: Path):
    import astropy.units as u

    import fitax.gamma as fg
    from fitax.gamma.estimators import light_curve

    return light_curve(fg.read_datasets(datasets), fg.read_models(models), "pks2155", LIGHT_CURVE_EDGES * u.TeV).table


def _gammapy_light_curve(datasets: Path, models: Path):
    import astropy.units as u
    from gammapy.datasets import Datasets
    from gammapy.estimators import LightCurveEstimator
    from gammapy.modeling.models import Models

    read = Datasets.read(datasets)
    read.models = Models.read(models)
    curve = LightCurveEstimator(energy_edges=LIGHT_CURVE_EDGES * u.TeV, source="pks2155", selection_optional=SELECTION).run(read)
    return curve.to_table(sed_type="likelihood", format="lightcurve")


def _worst_light_curve(ours, theirs) -> dict:
    import numpy as np

    worst = {key: float(np.nanmax(np.abs(np.asarray(ours[key], float) / np.asarray(theirs[key], float) - 1)))
             for key in ("norm", "norm_err", "norm_errn", "norm_errp", "norm_ul")}
    worst["ts_abs"] = float(np.nanmax(np.abs(np.asarray(ours["ts"], float) - np.asarray(theirs["ts"], float))))
    return worst


def _fitax(datasets: Path, models: Path):
    import astropy.units as u

    import fitax.gamma as fg
    from fitax.gamma.estimators import flux_points

    return flux_points(fg.read_datasets(datasets), fg.read_models(models), "crab", ENERGY_EDGES * u.TeV).table


def _gammapy(datasets: Path, models: Path):
    import astropy.units as u
    from gammapy.datasets import Datasets
    from gammapy.estimators import FluxPointsEstimator
    from gammapy.modeling.models import Models

    read = Datasets.read(datasets)
    read.models = Models.read(models)
    return FluxPointsEstimator(energy_edges=ENERGY_EDGES * u.TeV, source="crab", selection_optional=SELECTION).run(read)


def _worst(ours, theirs) -> dict:
    import numpy as np

    table = theirs.to_table(sed_type="likelihood")
    worst = {}
    for key in ("norm", "norm_err", "norm_errn", "norm_errp", "norm_ul"):
        a, b = np.asarray(ours[key], float), np.asarray(table[key], float)
        finite = np.isfinite(b)
        if not np.array_equal(finite, np.isfinite(a)):
            return {"norm": float("inf")}
        worst[key] = float(np.max(np.abs(a[finite] / b[finite] - 1)))
    ts_a, ts_b = np.asarray(ours["ts"], float), np.asarray(table["ts"], float)
    finite = np.isfinite(ts_b)
    worst["ts_abs"] = float(np.max(np.abs(ts_a[finite] - ts_b[finite])))
    return worst


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _compared(task: str, ours, theirs, worst, repeats: int) -> dict:
    """One row: both sides once untimed (fitax's first call gives its compile time, the
    median subtracted), their agreement (``worst(ours(), theirs())``: the worst relative
    difference of norms, errors and upper limits, and of TS, absolute), then the medians of
    ``repeats`` interleaved timings."""
    first = _timed(ours)
    differences = worst(ours(), theirs())
    times = {"fitax": [], "gammapy": []}
    for _ in range(repeats):
        times["fitax"].append(_timed(ours))
        times["gammapy"].append(_timed(theirs))
    fitax_s, gammapy_s = statistics.median(times["fitax"]), statistics.median(times["gammapy"])
    return {"task": task, "fitax_s": fitax_s, "gammapy_s": gammapy_s, "ratio": gammapy_s / fitax_s,
            "fitax_compile_s": max(first - fitax_s, 0.0), "worst_norm": max(v for k, v in differences.items() if k != "ts_abs"),
            "worst_ts_abs": differences.get("ts_abs")}  # fmt: skip


def _gammapy_job(datasets: str, models: str, out: str) -> None:
    _gammapy(Path(datasets), Path(models)).write(Path(out) / "flux_points.fits", overwrite=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "gamma" / "hess-dl3-dr1"), help="the DR1 data store")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shell", action="store_true", help="also time the command line against a Gammapy script")
    parser.add_argument("--reoptimize", action="store_true", help="also flux points with reoptimize=True (Gammapy ~100 s a call)")
    parser.add_argument("--json", default=None, help="write the rows here")
    parser.add_argument("--gammapy-job", nargs=3, metavar=("DATASETS", "MODELS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")  # Gammapy's checksum, unit and Minuit warnings, alike on every repeat
    import logging

    logging.disable(logging.WARNING)
    if args.gammapy_job:
        _gammapy_job(*args.gammapy_job)
        return 0

    from _common import machine_summary, print_table, write_json

    print(machine_summary())
    with tempfile.TemporaryDirectory(prefix="fitax-bench-estimators-") as work:
        folder = Path(work)
        datasets, models = _reduce(args.data, folder)
        row = _compared(f"flux points, {len(ENERGY_EDGES) - 1} bins, 4 runs, errn-errp, ul, scan (read + estimate)",
                        lambda: _fitax(datasets, models), lambda: _gammapy(datasets, models), _worst, args.repeats)
        pks_datasets, pks_models = _reduce_pks(args.data, folder)
        curve_row = _compared(f"light curve, {len(PKS_RUNS)} runs, 1 bin each, errn-errp, ul, scan (read + estimate)",
                              lambda: _fitax_light_curve(pks_datasets, pks_models), lambda: _gammapy_light_curve(pks_datasets, pks_models),
                              _worst_light_curve, args.repeats)
        onoff_datasets, onoff_models = _reduce_onoff(args.data, folder)
        onoff_row = _compared(f"flux points of 1D on-off spectra (WStat), {len(ENERGY_EDGES) - 1} bins, 4 runs, errn-errp, ul, scan "
                              "(read + estimate)", lambda: _fitax(onoff_datasets, onoff_models), lambda: _gammapy(onoff_datasets, onoff_models),
                              _worst, args.repeats)
        extra_rows = []
        for kind, (maps_datasets, maps_models) in _stacked_maps(args.data, folder).items():
            selection = ["errn-errp", "ul"] if kind.endswith("cutout") else None
            label = {"cash": "Cash, background template", "wstat": "WStat, ring background"}[kind.split("_")[0]]
            quantities = "2 x 2 deg, errn-errp, ul" if selection else "5 x 5 deg, Gammapy's default quantities"
            extra_rows.append(_compared(f"excess map, {label}, {quantities} (read + estimate)",
                                         lambda d=maps_datasets, m=maps_models: _fitax_excess(d, m),
                                         lambda d=maps_datasets, m=maps_models, s=selection: _gammapy_excess(d, m, s), _worst_excess,
                                         args.repeats))
        if args.reoptimize:
            two_datasets, two_models = _reduce_two_runs(args.data, folder)
            extra_rows.append(_compared(f"flux points, reoptimize=True (background norms refitted), {len(REOPTIMIZE_EDGES) - 1} bins, "
                                         "2 runs, errn-errp, ul, scan (read + estimate)", lambda: _fitax_reoptimized(two_datasets, two_models),
                                         lambda: _gammapy_reoptimized(two_datasets, two_models), _worst, args.repeats))
        if args.shell:
            commands = {
                "fitax": [str(Path(sys.executable).parent / "fitax"), "gamma", "estimate", "flux-points", "--datasets", str(datasets),
                          "--models", str(models), "--out", str(folder / "fitax"), "--source", "crab",
                          "--energy-edges", ",".join(map(str, ENERGY_EDGES)), "--no-plots"],
                "gammapy": [sys.executable, __file__, "--gammapy-job", str(datasets), str(models), str(folder)],
            }  # fmt: skip
            shell = {name: [] for name in commands}
            for attempt in range(args.repeats + 1):
                for name, command in commands.items():
                    elapsed = _timed(lambda: subprocess.run(command, check=True, capture_output=True))
                    if attempt:
                        shell[name].append(elapsed)
            row.update({"fitax_shell_s": statistics.median(shell["fitax"]), "gammapy_shell_s": statistics.median(shell["gammapy"])})
            row["shell_ratio"] = row["gammapy_shell_s"] / row["fitax_shell_s"]
    rows = [row, curve_row, onoff_row, *extra_rows]
    print_table(
        rows,
        [("task", "task", "s"), ("fitax_s", "fitax s", ".3f"), ("gammapy_s", "Gammapy s", ".2f"), ("ratio", "ratio", ".0f"),
         ("fitax_compile_s", "compile s", ".2f"), ("fitax_shell_s", "fitax shell s", ".2f"), ("gammapy_shell_s", "Gammapy shell s", ".2f"),
         ("shell_ratio", "shell ratio", ".1f"), ("worst_norm", "worst rel. diff", ".1e"), ("worst_ts_abs", "worst TS diff", ".1e")],
        title=f"Estimators, median of {args.repeats} after a warm-up, interleaved (datasets read anew each time, both sides)",
    )  # fmt: skip
    write_json(args.json, {"gamma_estimators": rows})
    return 0 if all(r["worst_norm"] < 1e-3 and (r["worst_ts_abs"] or 0) < 1e-2 for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
