"""Gamma-ray benchmark: joint 3D fits with fitax.gamma and Gammapy 2.1 + iminuit, same data.

Datasets: the simulated CTA-like MapDatasets of ``../shared/data/gamma/sim`` (15 reco x 25
true energies, 100x100 pixels, PSF and EDisp maps), fitted from the same start models
(``models_start_n*.yaml``): a point source and a Gaussian source (power laws) plus one
background norm per dataset. N = 1 (10 free parameters) and N = 10 (19); ``--large`` adds
N = 50 (59), made of the ten files each used five times under different names (the N=50
set of the shared README is not shipped).

Gammapy runs as its users run it, ``Fit().run(datasets)`` (Minuit MIGRAD + HESSE), in its
default 'local' evaluation mode and in its 'global' mode: 'local' stops early on these
data (stat 12523 with background norm 1.21 for N=1, see the shared README), so values and
errors are compared with 'global'. fitax runs ``fitax.gamma.fit`` with its defaults.
Both report stat_sum in Gammapy's convention.

Printed per N: wall time of the fit after compilation (fitax: median of ``--repeats``
runs), compile time (JAX's own trace + lowering + XLA compile events during the first
call), the statistic of each, the largest |difference| of fitted values in units of
Gammapy's errors, the largest relative difference of the errors, and the ratios of wall
times to both Gammapy modes. Then the end-to-end time of the command ``fitax gamma fit``
(compile included, cold and warm compile cache).

Run: ``python benchmarks/gamma_fit.py [--large] [--skip-gammapy] [--skip-gammapy-local]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import yaml

import fitax.gamma as fg

sys.path.insert(0, str(Path(__file__).parent))
from _common import CompileClock, machine_summary, print_table, timed  # noqa: E402

DATA = Path(os.environ.get("FITAX_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "gamma" / "sim"


def large_inputs(folder: Path, copies: int = 5) -> tuple[Path, Path]:
    """datasets/models YAML for 10 x ``copies`` datasets (each shared file under new names)."""
    datasets = yaml.safe_load((DATA / "datasets_n10.yaml").read_text())["datasets"]
    models = yaml.safe_load((DATA / "models_start_n10.yaml").read_text())
    sources = [c for c in models["components"] if c["type"] == "SkyModel"]
    background = next(c for c in models["components"] if c["type"] == "FoVBackgroundModel")
    entries, components = [], list(sources)
    for copy in range(copies):
        for entry in datasets:
            name = f"{entry['name']}_{copy}"
            entries.append({"name": name, "type": "MapDataset", "filename": str(DATA / entry["filename"])})
            components.append({**background, "datasets_names": [name]})
    datasets_path, models_path = folder / f"datasets_n{10 * copies}.yaml", folder / f"models_start_n{10 * copies}.yaml"
    datasets_path.write_text(yaml.safe_dump({"datasets": entries}))
    models_path.write_text(yaml.safe_dump({"components": components}))
    return datasets_path, models_path


def gammapy_fit(datasets_path: Path, models_path: Path, mode: str) -> dict:
    import gammapy.datasets.map as gammapy_map
    from gammapy.datasets import Datasets
    from gammapy.modeling import Fit
    from gammapy.modeling.models import FoVBackgroundModel, Models

    gammapy_map.EVALUATION_MODE = mode
    datasets = Datasets.read(datasets_path)
    models = Models.read(models_path)
    datasets.models = models
    result, seconds = timed(Fit().run, datasets)
    values, errors = {}, {}
    for model in datasets.models:
        parts = [("", model.spectral_model)] if isinstance(model, FoVBackgroundModel) else [
            (".spectral", model.spectral_model), (".spatial", model.spatial_model)]
        for suffix, component in parts:
            for parameter in component.parameters:
                if not parameter.frozen:
                    values[f"{model.name}{suffix}.{parameter.name}"] = parameter.value
                    errors[f"{model.name}{suffix}.{parameter.name}"] = parameter.error
    return {"seconds": seconds, "stat": float(result.total_stat), "values": values, "errors": errors,
            "success": bool(result.success), "n_evaluations": result.optimize_result.nfev}


def fitax_fit(datasets_path: Path, models_path: Path, repeats: int) -> dict:
    datasets = fg.read_datasets(datasets_path)
    models = fg.read_models(models_path)
    with CompileClock() as clock:
        result, first = timed(fg.fit, datasets, models)
    times = [timed(fg.fit, datasets, models)[1] for _ in range(repeats)]
    seconds = statistics.median(times)
    return {"seconds": seconds, "compile": clock.seconds, "first": first, "stat": result.stat, "result": result,
            "values": {n: result.values[n] for n in result.free_names},
            "errors": {n: result.errors[n] for n in result.free_names}, "converged": result.converged,
            "n_evaluations": result.n_evaluations, "n_hessians": result.n_hessians}


def compare(fitax_row: dict, gammapy_row: dict) -> tuple[float, float, str]:
    """Largest |value difference| / Gammapy error and largest |error ratio - 1|."""
    worst_value, worst_error, where = 0.0, 0.0, ""
    for name, value in gammapy_row["values"].items():
        sigma = gammapy_row["errors"][name]
        shift = abs(fitax_row["values"][name] - value) / sigma
        ratio = abs(fitax_row["errors"][name] / sigma - 1)
        if shift > worst_value:
            worst_value, where = shift, name
        worst_error = max(worst_error, ratio)
    return worst_value, worst_error, where


def cli_time(datasets_path: Path, models_path: Path, cache: Path) -> float:
    with tempfile.TemporaryDirectory() as out:
        env = {**os.environ, "FITAX_CACHE_DIR": str(cache)}
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "fitax.cli", "gamma", "fit", "--datasets", str(datasets_path), "--models",
                        str(models_path), "--out", out, "--no-plots"], check=True, env=env, capture_output=True)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--large", action="store_true", help="also fit N = 50 datasets")
    parser.add_argument("--skip-gammapy", action="store_true", help="fitax only")
    parser.add_argument("--skip-gammapy-local", action="store_true", help="do not time Gammapy's default 'local' mode")
    parser.add_argument("--repeats", type=int, default=7, help="compiled fitax runs per N (median)")
    args = parser.parse_args()
    if not DATA.exists():
        sys.exit(f"shared data not found at {DATA} (set FITAX_SHARED_DATA)")
    warnings.simplefilter("ignore")
    import jax

    print(machine_summary())
    print(f"fitax: {jax.device_count()} JAX CPU device(s); XLA's CPU backend runs each fit's operations on all cores. "
          f"Gammapy: one Python process; NumPy/BLAS as reported above.\n")
    workdir = Path(tempfile.mkdtemp(prefix="fitax-gamma-bench-"))
    cases = [(1, DATA / "datasets_n1.yaml", DATA / "models_start_n1.yaml"),
             (10, DATA / "datasets_n10.yaml", DATA / "models_start_n10.yaml")]
    if args.large:
        cases.append((50, *large_inputs(workdir)))
    rows = []
    for n, datasets_path, models_path in cases:
        ours = fitax_fit(datasets_path, models_path, args.repeats if n < 50 else 1)
        row = {"n": n, "free": len(ours["values"]), "fitax_s": ours["seconds"], "compile_s": ours["compile"],
               "fitax_stat": ours["stat"], "hessians": ours["n_hessians"], "steps": ours["n_evaluations"]}
        print(f"N={n}: fitax {ours['seconds']:.2f} s after {ours['compile']:.1f} s compile (first call {ours['first']:.1f} s), "
              f"stat {ours['stat']:.3f}, converged={ours['converged']}", flush=True)
        if not args.skip_gammapy:
            theirs = gammapy_fit(datasets_path, models_path, "global")
            shift, error_ratio, where = compare(ours, theirs)
            row.update({"gammapy_s": theirs["seconds"], "gammapy_stat": theirs["stat"], "dstat": ours["stat"] - theirs["stat"],
                        "shift": shift, "error_ratio": error_ratio, "ratio": theirs["seconds"] / ours["seconds"],
                        "gammapy_nfev": theirs["n_evaluations"]})
            print(f"      Gammapy (global) {theirs['seconds']:.1f} s, stat {theirs['stat']:.3f}, success={theirs['success']}; "
                  f"largest value shift {shift:.3f} sigma ({where}), largest error difference {100 * error_ratio:.2f}%", flush=True)
            if not args.skip_gammapy_local:
                local = gammapy_fit(datasets_path, models_path, "local")
                row.update({"local_s": local["seconds"], "local_stat": local["stat"], "local_ratio": local["seconds"] / ours["seconds"]})
                print(f"      Gammapy (default 'local') {local['seconds']:.1f} s, stat {local['stat']:.3f} "
                      f"({local['stat'] - ours['stat']:+.3f} from fitax), success={local['success']}", flush=True)
        rows.append(row)
    print()
    print_table(rows, [("n", "N", "d"), ("free", "free", "d"), ("local_s", "Gammapy local [s]", ".1f"),
                       ("gammapy_s", "Gammapy global [s]", ".1f"), ("fitax_s", "fitax [s]", ".2f"), ("local_ratio", "ratio local", ".0f"),
                       ("ratio", "ratio global", ".1f"), ("compile_s", "compile [s]", ".1f"), ("local_stat", "Gammapy local stat", ".3f"),
                       ("gammapy_stat", "Gammapy global stat", ".3f"),
                       ("dstat", "fitax - Gammapy", "+.3f"), ("shift", "max |dvalue|/sigma", ".3f"),
                       ("error_ratio", "max |derror|", ".2%"), ("hessians", "fitax Hessians", "d")])
    print("\nEnd-to-end `fitax gamma fit` (new process, reading files, compile, fit, writing models.yaml/results.ecsv):")
    cache = workdir / "xla-cache"
    for n, datasets_path, models_path in cases[:2]:
        cold = cli_time(datasets_path, models_path, cache / f"n{n}")
        warm = cli_time(datasets_path, models_path, cache / f"n{n}")
        print(f"  N={n}: {cold:.1f} s with an empty compile cache, {warm:.1f} s with the cache filled")


if __name__ == "__main__":
    main()
