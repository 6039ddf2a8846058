"""Flux points: fitax against Gammapy 2.1's FluxPointsEstimator, on the same files, in one run.

The 4 H.E.S.S. DR1 Crab runs are reduced by ``fitax gamma reduce`` (one dataset per run, 5 x 5
deg of 0.04 deg pixels, 12 energy bins 0.7-30 TeV), read by both; both estimate the flux
points of the Crab (a point source with a power law) in 6 bins with the same models.yaml,
all optional quantities (Gammapy's ``selection_optional="all"``: asymmetric errors, upper
limits, likelihood scans), ``reoptimize=False``; the script checks they agree (norms, errors
and upper limits within 1e-3 relative, TS within 1e-2).

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
    return FluxPointsEstimator(energy_edges=ENERGY_EDGES * u.TeV, source="crab", selection_optional="all").run(read)


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


def _gammapy_job(datasets: str, models: str, out: str) -> None:
    _gammapy(Path(datasets), Path(models)).write(Path(out) / "flux_points.fits", overwrite=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "gamma" / "hess-dl3-dr1"), help="the DR1 data store")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shell", action="store_true", help="also time the command line against a Gammapy script")
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
        first = _timed(lambda: _fitax(datasets, models))
        ours, theirs = _fitax(datasets, models), _gammapy(datasets, models)
        worst = _worst(ours, theirs)
        fitax_times, gammapy_times = [], []
        for _ in range(args.repeats):
            fitax_times.append(_timed(lambda: _fitax(datasets, models)))
            gammapy_times.append(_timed(lambda: _gammapy(datasets, models)))
        fitax_s, gammapy_s = statistics.median(fitax_times), statistics.median(gammapy_times)
        row = {"task": f"flux points, {len(ENERGY_EDGES) - 1} bins, 4 runs, all optional quantities (read + estimate)",
               "fitax_s": fitax_s, "gammapy_s": gammapy_s, "ratio": gammapy_s / fitax_s, "fitax_compile_s": max(first - fitax_s, 0.0),
               "worst_norm": max(v for k, v in worst.items() if k != "ts_abs"), "worst_ts_abs": worst.get("ts_abs")}  # fmt: skip
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
    print_table(
        [row],
        [("task", "task", "s"), ("fitax_s", "fitax s", ".3f"), ("gammapy_s", "Gammapy s", ".2f"), ("ratio", "ratio", ".0f"),
         ("fitax_compile_s", "compile s", ".2f"), ("fitax_shell_s", "fitax shell s", ".2f"), ("gammapy_shell_s", "Gammapy shell s", ".2f"),
         ("shell_ratio", "shell ratio", ".1f"), ("worst_norm", "worst rel. diff", ".1e"), ("worst_ts_abs", "worst TS diff", ".1e")],
        title=f"Flux points, median of {args.repeats} after a warm-up, interleaved (datasets read anew each time, both sides)",
    )  # fmt: skip
    write_json(args.json, {"gamma_estimators": [row]})
    return 0 if row["worst_norm"] < 1e-3 and (row["worst_ts_abs"] or 0) < 1e-2 else 1


if __name__ == "__main__":
    raise SystemExit(main())
