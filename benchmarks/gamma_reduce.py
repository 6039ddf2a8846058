"""fitax.gamma.reduce against Gammapy 2.1's MapDatasetMaker + SafeMaskMaker, in one run.

Both sides reduce the same H.E.S.S. DL3 DR1 runs (default: the four Crab runs) onto the same
WCS geometry: counts, exposure, background and the safe mask (aeff-default, offset-max,
bkg-peak), and the script checks that they agree (counts and masks identical, exposure and
background within 1e-5 relative where above 1e-6 of their maximum: Gammapy interpolates the
background in the file's float32, fitax in float64; measured 1e-6).

What is timed (median of ``--repeats`` after one untimed warm-up, the two sides' repeats
interleaved): reading each run from a data store opened afresh (both read IRFs when first
used and cache them, so each repeat opens a new store for both) and making its four products,
for all runs. Gammapy's empty ``MapDataset`` of each run (which also builds PSF and EDisp maps
that are not filled) is made before its timer starts. fitax's reduction is host NumPy (no JAX
program): its compile time is 0. There is no ``fitax gamma reduce`` command yet, so no shell
time is reported.

Example:
    python benchmarks/gamma_reduce.py --json results/bench/gamma_reduce.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

CRAB_RUNS = (23523, 23526, 23559, 23592)
METHODS = ("aeff-default", "offset-max", "bkg-peak")


def _fitax_reduce(store_path, runs, geometry):
    import astropy.units as u

    from fitax.gamma.dl3 import DataStore
    from fitax.gamma.reduce import background_cube, counts_cube, exposure_cube, safe_mask

    wcs, shape, energy_edges, energy_true_edges, offset_max = geometry
    store = DataStore.from_dir(store_path)
    products = []
    for obs_id in runs:
        observation = store.observation(obs_id)
        background = background_cube(observation, wcs, shape, energy_edges)
        products.append({
            "counts": counts_cube(observation, wcs, shape, energy_edges),
            "exposure": exposure_cube(observation, wcs, shape, energy_true_edges).to_value("m2 s"),
            "background": background,
            "mask": safe_mask(observation, wcs, shape, energy_edges, METHODS, offset_max=offset_max * u.deg, background=background),
        })  # fmt: skip
    return products


def _empty_datasets(runs, geom, energy_true) -> list:
    from gammapy.datasets import MapDataset

    return [MapDataset.create(geom, energy_axis_true=energy_true) for _ in runs]


def _gammapy_reduce(store_path, runs, geom, empty):
    from gammapy.data import DataStore
    from gammapy.makers import MapDatasetMaker, SafeMaskMaker

    store = DataStore.from_dir(store_path)
    maker = MapDatasetMaker(selection=["counts", "exposure", "background"])
    safe = SafeMaskMaker(methods=list(METHODS), offset_max=f"{geom.width.max().to_value('deg') / 2} deg")
    products = []
    for observation, dataset in zip(store.get_observations(runs), empty):
        dataset = safe.run(maker.run(dataset, observation), observation)
        products.append({
            "counts": dataset.counts.data,
            "exposure": dataset.exposure.quantity.to_value("m2 s"),
            "background": dataset.background.data,
            "mask": dataset.mask_safe.data,
        })  # fmt: skip
    return products


def _worst_difference(ours, theirs) -> float:
    import numpy as np

    worst = 0.0
    for a, b in zip(ours, theirs):
        if not (np.array_equal(a["counts"], b["counts"]) and np.array_equal(a["mask"], b["mask"])):
            return float("inf")
        for name in ("exposure", "background"):
            floor = 1e-6 * np.nanmax(b[name])
            relevant = b[name] > floor
            worst = max(worst, float(np.max(np.abs(a[name][relevant] / b[name][relevant] - 1))))
            if np.any(a[name][~relevant] > floor * 1.0001) or not np.array_equal(np.isnan(a[name]), np.isnan(b[name])):
                return float("inf")  # fitax predicts where Gammapy does not
    return worst


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "gamma" / "hess-dl3-dr1"), help="the DR1 data store")
    parser.add_argument("--runs", default=",".join(map(str, CRAB_RUNS)), help="comma-separated obs ids")
    parser.add_argument("--npix", type=int, default=250, help="pixels per side (0.02 deg each)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None, help="write the rows here")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")  # Gammapy's checksum and unit warnings, alike on every repeat

    from astropy.coordinates import SkyCoord
    from gammapy.maps import MapAxis, WcsGeom

    from _common import machine_summary, print_table, write_json

    runs = [int(r) for r in args.runs.split(",")]
    energy = MapAxis.from_energy_bounds(0.5, 50, 10, "TeV")
    energy_true = MapAxis.from_energy_bounds(0.3, 100, 20, "TeV", name="energy_true")
    geom = WcsGeom.create(skydir=SkyCoord(83.633, 22.014, unit="deg"), binsz=0.02, width=args.npix * 0.02, frame="icrs", proj="CAR", axes=[energy])
    offset_max = args.npix * 0.02 / 2
    geometry = (geom.wcs, geom.data_shape[1:], energy.edges, energy_true.edges, offset_max)
    print(machine_summary())
    print(f"runs {runs}; {args.npix}x{args.npix} pixels, {energy.nbin} energy and {energy_true.nbin} true-energy bins")

    ours = _fitax_reduce(args.data, runs, geometry)
    theirs = _gammapy_reduce(args.data, runs, geom, _empty_datasets(runs, geom, energy_true))
    worst = _worst_difference(ours, theirs)
    fitax_times, gammapy_times = [], []
    for _ in range(args.repeats):
        fitax_times.append(_timed(lambda: _fitax_reduce(args.data, runs, geometry)))
        empty = _empty_datasets(runs, geom, energy_true)
        gammapy_times.append(_timed(lambda: _gammapy_reduce(args.data, runs, geom, empty)))
    fitax_s, gammapy_s = statistics.median(fitax_times), statistics.median(gammapy_times)
    rows = [{
        "task": f"reduce {len(runs)} runs (read, counts, exposure, background, safe mask)",
        "fitax_s": fitax_s, "gammapy_s": gammapy_s, "ratio": gammapy_s / fitax_s, "fitax_compile_s": 0.0,
        "worst_relative_difference": worst,
    }]  # fmt: skip
    print_table(
        rows,
        [("task", "task", "s"), ("fitax_s", "fitax s", ".3f"), ("gammapy_s", "Gammapy s", ".3f"), ("ratio", "ratio", ".2f"),
         ("fitax_compile_s", "compile s", ".1f"), ("worst_relative_difference", "worst rel. diff", ".1e")],
        title=f"Data reduction, median of {args.repeats} after a warm-up; no shell time (no `fitax gamma reduce` yet)",
    )  # fmt: skip
    write_json(args.json, {"gamma_reduce": rows})
    return 0 if worst < 1e-5 else 1


if __name__ == "__main__":
    raise SystemExit(main())
