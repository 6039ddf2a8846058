"""Gamma-ray benchmark at survey scale: joint fits of many observations x event types, and
the cost of the position-dependent PSF.

Data: ``fitax gamma simulate`` surveys (60x60 pixels of 0.03 deg, 12 reco x 20 true
energies, a point source, a Gaussian and a 0.3 deg disk with tied indices, a background
norm and tilt per dataset), simulated once into ``--data`` and re-used. The scale fits use
the PSF at each source's centre (simulated so too), as Gammapy does.

Table "scale", one row per N observations x K event types, each in a process of its own
(so that its peak memory is its own):

* fit [s]: ``fitax.gamma.fit`` from ``models_start.yaml`` on datasets read anew from the
  files (file reading excluded; fitax's host caches cleared), after one fit that compiled;
  compile [s]: JAX's trace, lowering and XLA time during that first fit (from JAX's
  compile events); first fit [s]: that first fit's wall time;
* evaluations, steps, Hessians of the timed fit; parameters: free parameters;
* peak MB: the process's peak resident memory; MB/dataset: (peak - peak after reading the
  datasets but before fitting) / datasets: what the fit holds per dataset;
* Gammapy [s]: ``Fit().run`` (MIGRAD + HESSE, 'global' evaluation mode: its default
  'local' mode stops early on such data, see gamma_fit.py) on the same files and start
  models, timed once (its first run; reading excluded); ratio: against fitax's fit [s],
  and against its first fit minus its compile time (the single-run comparison); stat -
  Gammapy's: the difference of the minima (Gammapy's Cash convention); at N = 10 by default
  and N = 50 with ``--large``. Beyond, Gammapy's time is extrapolated linearly in the
  number of datasets from its N = 10 (and 50) runs: a joint fit's evaluations scale with
  the datasets and MIGRAD's evaluation count with the parameters, so linear is a lower bound.

Table "position PSF": one dataset with the disk alone; the compiled Cash statistic and its
gradient (``jax.value_and_grad``), median of 20 calls after one compiling call, with the
disk convolved with the PSF of its centre and with that of each pixel; M is the
largest number of components at a true energy, terms their number over all true
energies (one forward FFT each), terms compiled that number rounded up to a multiple of 8
(what the compiled function holds). Goal: position <= (M + 1) x centre. A second row with
the PSF elongated 2x along the direction to the pointing (an asymmetric kernel map).

Table "kernel map": an asymmetric PSF kernel map of 1.5 GB dense float64, built from its
elliptical-Gaussian definition chunk by chunk: build time, peak of the allocations Python
traces (NumPy arrays included), memory held and dense.

Run: ``python benchmarks/gamma_scale.py [--sizes 10x1,50x1,100x1,100x4] [--large]
[--skip-gammapy] [--data DIR] [--json PATH]``. Simulating N = 100 x 4 takes ~5 min once.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import CompileClock, machine_summary, print_table, timed, write_json  # noqa: E402
from gamma_fit import clear_host_caches  # noqa: E402


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def survey(data: Path, n_obs: int, event_types: int) -> Path:
    """The simulated survey's folder (simulated on first use)."""
    from fitax.gamma.simulate import simulate_files

    folder = data / f"n{n_obs}x{event_types}-centre"
    if not (folder / "models_start.yaml").exists():
        simulate_files(folder, n_obs, event_types, seed=0, psf_mode="centre")
    return folder


def one_size(folder: Path) -> dict:
    """Fit one survey (in this process): the row of the scale table."""
    import fitax.gamma as fg

    datasets, models = fg.read_datasets(folder / "datasets.yaml"), fg.read_models(folder / "models_start.yaml")
    before = _peak_mb()
    with CompileClock() as clock:
        _, first_seconds = timed(fg.fit, datasets, models)
    del datasets
    clear_host_caches()  # the stacked arrays of the first fit's datasets: not counted twice
    datasets, models = fg.read_datasets(folder / "datasets.yaml"), fg.read_models(folder / "models_start.yaml")
    with CompileClock() as again:
        result, seconds = timed(fg.fit, datasets, models)
    peak = _peak_mb()
    return {"datasets": len(datasets), "parameters": len(result.free_names), "fit_s": seconds, "compile_s": clock.seconds,
            "first_s": first_seconds, "recompile_s": again.seconds, "evaluations": result.n_evaluations,
            "steps": result.n_iterations, "hessians": result.n_hessians, "converged": bool(result.converged),
            "stat": float(result.stat), "peak_mb": peak, "mb_per_dataset": (peak - before) / len(datasets)}


def gammapy_fit(folder: Path) -> dict:
    import gammapy.datasets.map as gammapy_map
    from gammapy.datasets import Datasets
    from gammapy.modeling import Fit
    from gammapy.modeling.models import Models

    gammapy_map.EVALUATION_MODE = "global"
    datasets = Datasets.read(folder / "datasets.yaml")
    datasets.models = Models.read(folder / "models_start.yaml")
    result, seconds = timed(Fit().run, datasets)
    return {"gammapy_s": seconds, "gammapy_stat": float(result.total_stat), "gammapy_success": bool(result.success)}


def position_cost(elongation: float = 1.0) -> dict:
    """Cash + gradient of one dataset's disk, centre kernel vs the PSF of each pixel (a round
    PSF map, or with ``elongation`` > 1 an asymmetric kernel map)."""
    import jax
    import numpy as np
    from astropy.coordinates import SkyCoord

    import fitax.gamma as fg
    from fitax.gamma.datasets import bind, stat_sum_groups
    from fitax.gamma.psf_position import position_psf
    from fitax.gamma.simulate import make_geometry, simulate_observation
    from fitax.parameters import ParameterSpace

    wcs = make_geometry(npix=60, binsz=0.03)
    disk = fg.SkyModel(fg.PowerLawSpectralModel(index=2.2, amplitude=2e-11),
                       fg.DiskSpatialModel(0.25, -0.25, 0.3, edge_width=0.3, frame="galactic"), name="disk")
    dataset = simulate_observation(fg.Models([disk, fg.FoVBackgroundModel("obs")]), "obs",
                                   SkyCoord(0.7, 0.4, unit="deg", frame="galactic"), 3600.0, wcs=wcs, npix=60, psf_widening=0.3,
                                   psf_elongation=elongation)
    decomposition = position_psf(dataset, np.arange(dataset.exposure.shape[0]))
    row = {"psf": "round (PSF map)" if elongation == 1 else f"elongated {elongation:g}x (kernel map)", "rank_max": decomposition.rank, "terms": decomposition.n_terms, "terms_compiled": -(-decomposition.n_terms // 8) * 8,
           "energies": dataset.exposure.shape[0]}
    for mode in ("centre", "position"):
        models = fg.Models([disk.with_psf_mode(mode), fg.FoVBackgroundModel("obs")])
        groups = bind(fg.Datasets([dataset]), models)
        space = ParameterSpace.from_params(models)
        values = jax.numpy.asarray(space.values(models))
        function = jax.jit(jax.value_and_grad(lambda v: stat_sum_groups(space.with_values(models, v), groups)))
        jax.block_until_ready(function(values))
        times = []
        for _ in range(20):
            _, seconds = timed(lambda: jax.block_until_ready(function(values)))
            times.append(seconds)
        row[f"{mode}_ms"] = 1e3 * statistics.median(times)
    row["ratio"] = row["position_ms"] / row["centre_ms"]
    row["bound"] = row["rank_max"] + 1
    return row


def kernel_map_memory() -> dict:
    """Build an asymmetric kernel map of 40 x 40 nodes x 20 true energies x 77 x 77 pixels
    (1.5 GB dense in float64), its kernels turning through 180 deg and widening 2x across
    the grid; peak of Python-traced allocations (tracemalloc: NumPy's arrays included)."""
    import tracemalloc

    import numpy as np
    from astropy.wcs import WCS

    from fitax.gamma import PSFKernelMap
    from fitax.gamma.simulate import make_geometry

    y, x = np.mgrid[0:40, 0:40]
    major = 0.1 * (1 + (x + y) / 78)[None] * np.linspace(1.0, 0.5, 20)[:, None, None]
    node_wcs = WCS(make_geometry(npix=40, binsz=0.05).to_header())
    tracemalloc.start()
    kernel_map, seconds = timed(PSFKernelMap.elliptical_gaussian, major, major / 1.5, 180.0 * x / 39, np.geomspace(0.3, 100.0, 21),
                                node_wcs, [-0.02, 0.02])
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"map": repr(kernel_map), "build_s": seconds, "peak_mb": peak / 1e6, "held_mb": kernel_map.nbytes / 1e6,
            "dense_mb": kernel_map.dense_nbytes / 1e6, "terms": len(kernel_map.components)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10x1,50x1,100x1,100x4", help="N x K (observations x event types), comma-separated")
    parser.add_argument("--large", action="store_true", help="also run Gammapy at N = 50")
    parser.add_argument("--skip-gammapy", action="store_true")
    parser.add_argument("--data", default=None, help="folder for the simulated surveys (default: a temporary one)")
    parser.add_argument("--json", default=None, help="write the rows to this JSON file")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: fit one survey folder, print its row
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_size(Path(args.one))))
        return
    print(machine_summary())
    with tempfile.TemporaryDirectory(prefix="fitax-scale-") as temporary:
        data = Path(args.data or temporary)
        rows = []
        for size in args.sizes.split(","):
            n_obs, event_types = (int(v) for v in size.split("x"))
            folder, simulate_seconds = timed(survey, data, n_obs, event_types)
            done = subprocess.run([sys.executable, __file__, "--one", str(folder)], capture_output=True, text=True,
                                  env={**os.environ})
            if done.returncode != 0:
                raise RuntimeError(f"fitting {folder} failed:\n{done.stderr[-3000:]}")
            row = {"size": size, "simulate_s": simulate_seconds, **json.loads(done.stdout.strip().splitlines()[-1])}
            if not args.skip_gammapy and (n_obs == 10 or (n_obs == 50 and args.large)) and event_types == 1:
                row.update(gammapy_fit(folder))
                row["ratio"] = row["gammapy_s"] / row["fit_s"]
                row["ratio_first"] = row["gammapy_s"] / (row["first_s"] - row["compile_s"])
                row["stat_minus_gammapy"] = row["stat"] - row["gammapy_stat"]
            rows.append(row)
            print(f"{size}: fit {row['fit_s']:.1f} s, compile {row['compile_s']:.1f} s, {row['parameters']} parameters, "
                  f"peak {row['peak_mb']:.0f} MB", flush=True)
    measured = [r for r in rows if r.get("gammapy_s")]
    if measured:
        per_dataset = max(r["gammapy_s"] / r["datasets"] for r in measured)
        for row in rows:
            if not row.get("gammapy_s"):
                row["gammapy_extrapolated_s"] = per_dataset * row["datasets"]
                row["ratio_extrapolated"] = row["gammapy_extrapolated_s"] / row["fit_s"]
    print_table(rows, [("size", "N x K", "s"), ("datasets", "datasets", "d"), ("parameters", "parameters", "d"),
                       ("fit_s", "fit [s]", ".2f"), ("compile_s", "compile [s]", ".1f"),
                       ("first_s", "first fit [s]", ".1f"), ("evaluations", "evals", "d"),
                       ("steps", "steps", "d"), ("hessians", "Hessians", "d"), ("converged", "converged", ""),
                       ("peak_mb", "peak MB", ".0f"), ("mb_per_dataset", "MB/dataset", ".1f"),
                       ("gammapy_s", "Gammapy [s]", ".1f"), ("ratio", "ratio", ".1f"),
                       ("ratio_first", "ratio (first - compile)", ".1f"), ("stat_minus_gammapy", "stat - Gammapy's", ".3f"),
                       ("gammapy_extrapolated_s", "Gammapy extrap. [s]", ".0f"), ("ratio_extrapolated", "ratio extrap.", ".1f")],
                title="\nJoint fits (fit: second fit in the process, fresh datasets, binding included; compile: first fit's)")
    costs = [position_cost(), position_cost(elongation=2.0)]
    print_table(costs, [("psf", "PSF", "s"), ("centre_ms", "centre [ms]", ".2f"), ("position_ms", "position [ms]", ".2f"), ("ratio", "ratio", ".1f"),
                         ("rank_max", "M", "d"), ("terms", "terms", "d"), ("terms_compiled", "terms compiled", "d"),
                         ("bound", "goal (M + 1)", "d")],
                title="\nPosition-dependent PSF: Cash + gradient of one 60x60x12 dataset with a 0.3 deg disk (median of 20)")
    memory = kernel_map_memory()
    print_table([memory], [("build_s", "build [s]", ".1f"), ("peak_mb", "peak traced MB", ".0f"), ("held_mb", "held MB", ".1f"),
                           ("dense_mb", "dense MB", ".0f"), ("terms", "terms", "d")],
                title=f"\nAsymmetric PSF kernel map, built chunk by chunk: {memory['map']}")
    write_json(args.json, {"scale": rows, "position_psf": costs, "kernel_map": [memory]})


if __name__ == "__main__":
    main()
