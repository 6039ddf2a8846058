"""fitax's data reduction against Gammapy 2.1's MapDatasetMaker + SafeMaskMaker, in one run.

Both sides reduce the same H.E.S.S. DL3 DR1 runs (default: the four Crab runs) onto the same
WCS geometry: counts, exposure, background, PSF map, EDisp kernel map (0.2 deg IRF grid) and
the safe mask (aeff-default, offset-max, bkg-peak), and the script checks that they agree
(counts and masks identical, the rest within 1e-5 relative where above 1e-6 of their maximum:
Gammapy interpolates some IRFs in the file's float32, fitax in float64; measured 1e-6).

What is timed, in process (median of ``--repeats`` after one untimed warm-up, the two sides'
repeats interleaved): reading each run from a data store opened afresh (both read IRFs when
first used and cache them, so each repeat opens a new store for both) and making its six
products, for all runs. Gammapy's empty ``MapDataset`` of each run is made before its timer
starts. fitax's reduction is host NumPy (no JAX program): its compile time is 0.

1D on-off spectra, in process, timed the same way: each run's counts in a 0.11 deg ON region
on the Crab, OFF counts in reflected regions, exposure with the PSF containment correction,
EDisp and the safe mask (aeff-default, aeff-max, edisp-bias), fitax's ``spectrum_onoff_file``
against Gammapy's ``SpectrumDatasetMaker`` + ``ReflectedRegionsBackgroundMaker`` +
``SafeMaskMaker`` (its empty ``SpectrumDataset`` made before the timer); they must agree
(counts, OFF counts, alpha and masks identical, exposure and EDisp within 1e-9).

From the shell (``--shell``): the same runs and geometry as a Gammapy ``AnalysisConfig``
(3d, ``stack: false``: per-run cutouts of 2 x offset_max; and the 1d on-off reduction),
``fitax gamma reduce CONFIG --out`` against ``gammapy analysis run --filename CONFIG --out``,
each writing its datasets; one untimed run of each first (file cache), then the median of
``--repeats`` (interleaved).

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
ONOFF_METHODS = ("aeff-default", "aeff-max", "edisp-bias")
ON_REGION = {"frame": "icrs", "lon": "83.633 deg", "lat": "22.014 deg", "radius": "0.11 deg"}


def _fitax_reduce(store_path, runs, geometry, offset_max):
    import astropy.units as u

    from fitax.gamma.dl3 import DataStore
    from fitax.gamma.makers import map_dataset_file

    store = DataStore.from_dir(store_path)
    products = []
    for obs_id in runs:
        dataset = map_dataset_file(store.observation(obs_id), geometry, METHODS, offset_max * u.deg)
        products.append({"counts": dataset.counts, "exposure": dataset.exposure, "background": dataset.background, "psf": dataset.psf,
                         "edisp": dataset.edisp, "mask": dataset.mask_safe})  # fmt: skip
    return products


def _on_region():
    import astropy.units as u
    from astropy.coordinates import SkyCoord
    from regions import CircleSkyRegion

    return CircleSkyRegion(SkyCoord(ON_REGION["lon"], ON_REGION["lat"], frame=ON_REGION["frame"]), u.Quantity(ON_REGION["radius"]))


def _fitax_spectra(store_path, runs, energy_edges, energy_true_edges):
    import numpy as np

    from fitax.gamma.dl3 import DataStore
    from fitax.gamma.spectrum_reduce import spectrum_onoff_file

    store = DataStore.from_dir(store_path)
    spectra = [spectrum_onoff_file(store.observation(obs_id), _on_region(), energy_edges, energy_true_edges, ONOFF_METHODS,
                                   containment_correction=True) for obs_id in runs]  # fmt: skip
    return [{"counts": s.counts, "counts_off": s.counts_off, "alpha": s.alpha, "mask": s.mask_safe, "exposure": s.exposure,
             "edisp": s.edisp[..., None, None] * np.ones(1)} for s in spectra]  # fmt: skip


def _empty_spectra(runs, energy, energy_true) -> list:
    from gammapy.datasets import SpectrumDataset
    from gammapy.maps import RegionGeom

    return [SpectrumDataset.create(RegionGeom.create(_on_region(), axes=[energy]), energy_axis_true=energy_true) for _ in runs]


def _gammapy_spectra(store_path, runs, empty):
    from gammapy.data import DataStore
    from gammapy.makers import ReflectedRegionsBackgroundMaker, SafeMaskMaker, SpectrumDatasetMaker

    store = DataStore.from_dir(store_path)
    maker = SpectrumDatasetMaker(selection=["counts", "exposure", "edisp"], containment_correction=True)
    background, safe = ReflectedRegionsBackgroundMaker(), SafeMaskMaker(methods=list(ONOFF_METHODS))
    products = []
    for observation, dataset in zip(store.get_observations(runs), empty):
        dataset = safe.run(background.run(maker.run(dataset, observation), observation), observation)
        products.append({"counts": dataset.counts.data.ravel(), "counts_off": dataset.counts_off.data.ravel(), "alpha": dataset.alpha.data.ravel(),
                         "mask": dataset.mask_safe.data.ravel(), "exposure": dataset.exposure.quantity.to_value("m2 s").ravel(),
                         "edisp": dataset.edisp.edisp_map.data})  # fmt: skip
    return products


def _spectra_difference(ours, theirs) -> float:
    import numpy as np

    worst = 0.0
    for a, b in zip(ours, theirs, strict=True):
        if not all(np.array_equal(a[name], b[name]) for name in ("counts", "counts_off", "alpha", "mask")):
            return float("inf")
        worst = max(worst, float(np.max(np.abs(a["exposure"] / b["exposure"] - 1))), float(np.max(np.abs(a["edisp"] - b["edisp"]))))
    return worst


def _empty_datasets(runs, geom, energy_true) -> list:
    from gammapy.datasets import MapDataset

    return [MapDataset.create(geom, energy_axis_true=energy_true) for _ in runs]


def _gammapy_reduce(store_path, runs, geom, empty):
    from gammapy.data import DataStore
    from gammapy.makers import MapDatasetMaker, SafeMaskMaker

    store = DataStore.from_dir(store_path)
    maker = MapDatasetMaker()
    safe = SafeMaskMaker(methods=list(METHODS), offset_max=f"{geom.width.max().to_value('deg') / 2} deg")
    products = []
    for observation, dataset in zip(store.get_observations(runs), empty):
        dataset = safe.run(maker.run(dataset, observation), observation)
        products.append({
            "counts": dataset.counts.data,
            "exposure": dataset.exposure.quantity.to_value("m2 s"),
            "background": dataset.background.data,
            "psf": dataset.psf.psf_map.quantity.to_value("deg-2"),
            "edisp": dataset.edisp.edisp_map.data,
            "mask": dataset.mask_safe.data,
        })  # fmt: skip
    return products


def _worst_difference(ours, theirs) -> float:
    import numpy as np

    worst = 0.0
    for a, b in zip(ours, theirs):
        if not (np.array_equal(a["counts"], b["counts"]) and np.array_equal(a["mask"], b["mask"])):
            return float("inf")
        for name in ("exposure", "background", "psf", "edisp"):
            floor = 1e-6 * np.nanmax(b[name])
            relevant = b[name] > floor
            worst = max(worst, float(np.max(np.abs(a[name][relevant] / b[name][relevant] - 1))))
            if np.any(a[name][~relevant] > floor * 1.0001) or not np.array_equal(np.isnan(a[name]), np.isnan(b[name])):
                return float("inf")  # fitax predicts where Gammapy does not
    return worst


def _config(path: Path, store_path, runs, npix: int, offset_max: float, onoff: bool = False) -> Path:
    import yaml

    if onoff:
        settings = {
            "observations": {"datastore": str(Path(store_path).resolve()), "obs_ids": runs},
            "datasets": {"type": "1d", "stack": False, "background": {"method": "reflected"}, "on_region": ON_REGION,
                         "containment_correction": True, "geom": {"axes": {"energy": {"min": "0.5 TeV", "max": "40 TeV", "nbins": 12},
                                                                            "energy_true": {"min": "0.3 TeV", "max": "60 TeV", "nbins": 20}}},
                         "safe_mask": {"methods": list(ONOFF_METHODS)}},
        }  # fmt: skip
        path.write_text(yaml.safe_dump(settings, sort_keys=False))
        return path
    settings = {
        "observations": {"datastore": str(Path(store_path).resolve()), "obs_ids": runs},
        "datasets": {"type": "3d", "stack": False,
                     "geom": {"wcs": {"skydir": {"frame": "icrs", "lon": "83.633 deg", "lat": "22.014 deg"}, "binsize": "0.02 deg",
                                      "width": {"width": f"{npix * 0.02} deg", "height": f"{npix * 0.02} deg"}, "binsize_irf": "0.2 deg"},
                              "selection": {"offset_max": f"{offset_max} deg"},
                              "axes": {"energy": {"min": "0.5 TeV", "max": "50 TeV", "nbins": 10},
                                       "energy_true": {"min": "0.3 TeV", "max": "100 TeV", "nbins": 20}}},
                     "safe_mask": {"methods": list(METHODS), "parameters": {"offset_max": f"{offset_max} deg"}}},
    }  # fmt: skip
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return path


def _shell_times(config: Path, folder: Path, repeats: int) -> tuple[float, float]:
    """Median wall seconds of ``fitax gamma reduce`` and ``gammapy analysis run`` on ``config``."""
    import shutil
    import subprocess

    bin_dir = Path(sys.executable).parent
    commands = {
        "fitax": [str(bin_dir / "fitax"), "gamma", "reduce", str(config), "--out", str(folder / "fitax")],
        "gammapy": [str(bin_dir / "gammapy"), "analysis", "run", "--filename", str(config), "--out", str(folder / "gammapy"), "--overwrite"],
    }  # fmt: skip
    times = {name: [] for name in commands}
    for attempt in range(repeats + 1):
        for name, command in commands.items():
            shutil.rmtree(folder / name, ignore_errors=True)
            start = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True)
            elapsed = time.perf_counter() - start
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
            if attempt:
                times[name].append(elapsed)
    return statistics.median(times["fitax"]), statistics.median(times["gammapy"])


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
    parser.add_argument("--shell", action="store_true", help="also time fitax gamma reduce against gammapy analysis run")
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
    from fitax.gamma.makers import MapGeometry

    geometry = MapGeometry(geom.wcs, geom.data_shape[1:], energy.edges, energy_true.edges)
    print(machine_summary())
    print(f"runs {runs}; {args.npix}x{args.npix} pixels, {energy.nbin} energy and {energy_true.nbin} true-energy bins")

    ours = _fitax_reduce(args.data, runs, geometry, offset_max)
    theirs = _gammapy_reduce(args.data, runs, geom, _empty_datasets(runs, geom, energy_true))
    worst = _worst_difference(ours, theirs)
    fitax_times, gammapy_times = [], []
    for _ in range(args.repeats):
        fitax_times.append(_timed(lambda: _fitax_reduce(args.data, runs, geometry, offset_max)))
        empty = _empty_datasets(runs, geom, energy_true)
        gammapy_times.append(_timed(lambda: _gammapy_reduce(args.data, runs, geom, empty)))
    fitax_s, gammapy_s = statistics.median(fitax_times), statistics.median(gammapy_times)
    rows = [{
        "task": f"reduce {len(runs)} runs in process (read; counts, exposure, background, PSF, EDisp, safe mask)",
        "fitax_s": fitax_s, "gammapy_s": gammapy_s, "ratio": gammapy_s / fitax_s, "fitax_compile_s": 0.0,
        "worst_relative_difference": worst,
    }]  # fmt: skip
    spectrum_energy = MapAxis.from_energy_bounds(0.5, 40, 12, "TeV")
    spectrum_true = MapAxis.from_energy_bounds(0.3, 60, 20, "TeV", name="energy_true")
    spectra_worst = _spectra_difference(_fitax_spectra(args.data, runs, spectrum_energy.edges, spectrum_true.edges),
                                        _gammapy_spectra(args.data, runs, _empty_spectra(runs, spectrum_energy, spectrum_true)))
    fitax_times, gammapy_times = [], []
    for _ in range(args.repeats):
        fitax_times.append(_timed(lambda: _fitax_spectra(args.data, runs, spectrum_energy.edges, spectrum_true.edges)))
        empty = _empty_spectra(runs, spectrum_energy, spectrum_true)
        gammapy_times.append(_timed(lambda: _gammapy_spectra(args.data, runs, empty)))
    fitax_s, gammapy_s = statistics.median(fitax_times), statistics.median(gammapy_times)
    rows.append({"task": f"1D on-off spectra of {len(runs)} runs in process (read; ON/reflected OFF counts, exposure x containment, EDisp, "
                         "safe mask)", "fitax_s": fitax_s, "gammapy_s": gammapy_s, "ratio": gammapy_s / fitax_s, "fitax_compile_s": 0.0,
                 "worst_relative_difference": spectra_worst})  # fmt: skip
    if args.shell:
        import tempfile

        for onoff in (False, True):
            with tempfile.TemporaryDirectory(prefix="fitax-bench-reduce-") as folder:
                config = _config(Path(folder) / "analysis.yaml", args.data, runs, args.npix, offset_max, onoff=onoff)
                fitax_shell, gammapy_shell = _shell_times(config, Path(folder), args.repeats)
            what = "1d on-off spectra" if onoff else "per-run cutouts"
            rows.append({"task": f"shell: fitax gamma reduce vs gammapy analysis run ({len(runs)} runs, {what}, files written)",
                         "fitax_s": fitax_shell, "gammapy_s": gammapy_shell, "ratio": gammapy_shell / fitax_shell, "fitax_compile_s": 0.0,
                         "worst_relative_difference": None})  # fmt: skip
    print_table(
        rows,
        [("task", "task", "s"), ("fitax_s", "fitax s", ".3f"), ("gammapy_s", "Gammapy s", ".3f"), ("ratio", "ratio", ".2f"),
         ("fitax_compile_s", "compile s", ".1f"), ("worst_relative_difference", "worst rel. diff", ".1e")],
        title=f"Data reduction, median of {args.repeats} after a warm-up (compile: none, host NumPy)",
    )  # fmt: skip
    write_json(args.json, {"gamma_reduce": rows})
    return 0 if worst < 1e-5 and spectra_worst < 1e-9 else 1


if __name__ == "__main__":
    raise SystemExit(main())
