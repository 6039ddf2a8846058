"""Gamma-ray benchmark: joint 3D fits with fitax.gamma and Gammapy 2.1 + iminuit, same data.

Datasets: the simulated CTA-like MapDatasets of ``../shared/data/gamma/sim`` (15 reco x 25
true energies, 100x100 pixels, PSF and EDisp maps), fitted from the same start models
(``models_start_n*.yaml``): a point source and a Gaussian source (power laws) plus one
background norm per dataset. N = 1 (10 free parameters) and N = 10 (19); ``--large`` adds
N = 50 (59), made of the ten files each used five times under different names (the N=50
set of the shared README is not shipped).

Gammapy runs as its users run it, ``Fit().run(datasets)`` (Minuit MIGRAD + HESSE) on freshly
read datasets, in its 'global' evaluation mode and its default 'local' mode ('local' stops
early on these data: stat 12523 with background norm 1.21 for N=1, see the shared README;
values and errors are compared with 'global'). One Gammapy fit takes ~15-130 s here, so
Gammapy is timed ONCE per mode (its first run in the process, file reading excluded).

fitax runs ``fitax.gamma.fit`` with its defaults, each time on ``Datasets`` read anew from
the files (file reading excluded, as for Gammapy), after clearing fitax.gamma's in-process
host caches (functools caches of grids and stacked arrays): no PSF kernel, energy
dispersion, sky grid or device array survives from an earlier fit, so every timed fit pays
for binding the datasets to the models (the IRF work Gammapy does inside its fit). Columns:

* fitax first - compile [s]: the first fit in the process (fresh datasets) minus the compile
  time JAX reports during it: the single-run figure comparable to Gammapy's single run;
* fitax [s]: median of ``--repeats`` further fits, each on fresh datasets (binding included);
* bind [s]: median time of binding fresh datasets to the start models alone (host-side IRF
  look-ups, PSF kernels, stacking to the device), i.e. the part of "fitax [s]" that is not
  the compiled fit; recompile [s]: JAX compile time during those repeats (should be 0);
* compile [s]: JAX's trace + lowering + XLA compile events during the first fit;
* ratios: Gammapy's single run / fitax's median, and / fitax's first run minus compile;
* shell cold / warm [s]: ``fitax gamma fit --datasets ... --models ... --out TMP --no-plots``
  in a new process (import, read, fit, write models.yaml and results.ecsv), with an empty
  ``FITAX_CACHE_DIR`` (cold) and re-run with it filled (warm); goal: warm <= 1.5 s + 2 x
  fitax [s]; Gammapy shell [s]: the same job (read, fit in 'global' mode, write the models)
  as a Gammapy script in a new process, for the ratio users see from the shell.

Both report stat_sum in Gammapy's convention.

Run: ``python benchmarks/gamma_fit.py [--large] [--repeats 5] [--skip-gammapy]
[--skip-gammapy-local] [--no-shell] [--json PATH]``; ``--quick``: N = 1 only, one repeat,
Gammapy 'global' only. A full run (N = 1, 10, both Gammapy modes) takes ~10-15 min on 2 cores,
most of it Gammapy (N = 10 global ~120 s, local ~80 s, and the global script once more from the
shell); ``--large`` adds ~15 min.
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import yaml

import fitax.gamma as fg

sys.path.insert(0, str(Path(__file__).parent))
from _common import CompileClock, goal_line, goal_met, machine_summary, print_table, shell_times, timed, write_json  # noqa: E402

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


def gammapy_job(datasets_path: str, models_path: str, mode: str, out: str) -> None:
    """What a Gammapy user runs as a script: read, fit, write the fitted models (the
    reference for the shell column)."""
    import gammapy.datasets.map as gammapy_map
    from gammapy.datasets import Datasets
    from gammapy.modeling import Fit
    from gammapy.modeling.models import Models

    gammapy_map.EVALUATION_MODE = mode
    datasets = Datasets.read(datasets_path)
    datasets.models = Models.read(models_path)
    result = Fit().run(datasets)
    datasets.models.write(Path(out) / "models.yaml", overwrite=True)
    print(result.total_stat, result.success)


def _bind_function():
    """fitax.gamma's public binding step (datasets + models -> device groups), wherever the
    package keeps it; None if it has none."""
    for module, name in (("fitax.gamma", "bind"), ("fitax.gamma.likelihood", "bind"), ("fitax.gamma.datasets", "bind")):
        try:
            function = getattr(importlib.import_module(module), name, None)
        except ImportError:
            continue
        if callable(function):
            return function
    return None


def clear_host_caches() -> int:
    """Clear every functools cache of the fitax.gamma modules (grids and stacked arrays
    kept for repeated fits of the same datasets), so a timed fit pays for them as Gammapy
    does; returns how many were cleared. Compiled programs live in JAX's caches, not here."""
    cleared = 0
    for name, module in list(sys.modules.items()):
        if not name.startswith("fitax.gamma") or module is None:
            continue
        for value in list(vars(module).values()):
            if callable(getattr(value, "cache_clear", None)) and getattr(value, "__module__", "") == name:
                value.cache_clear()
                cleared += 1
    return cleared


def fresh(datasets_path: Path, models_path: Path):
    """Datasets and models read anew from the files, with fitax.gamma's host caches cleared."""
    clear_host_caches()
    return fg.read_datasets(datasets_path), fg.read_models(models_path)


def fitax_fit(datasets_path: Path, models_path: Path, repeats: int) -> dict:
    (datasets, models), read_time = timed(fresh, datasets_path, models_path)
    with CompileClock() as clock:
        result, first = timed(fg.fit, datasets, models)
    bind = _bind_function()
    times, bind_times = [], []
    with CompileClock() as again:
        for _ in range(repeats):
            if bind is not None:
                datasets, models = fresh(datasets_path, models_path)
                bind_times.append(timed(bind, datasets, models)[1])
            datasets, models = fresh(datasets_path, models_path)
            result, seconds = timed(fg.fit, datasets, models)
            times.append(seconds)
    return {"seconds": statistics.median(times), "bind": statistics.median(bind_times) if bind_times else None,
            "compile": clock.seconds, "first": first, "first_minus_compile": first - clock.seconds, "recompile": again.seconds,
            "read": read_time, "stat": result.stat, "result": result,
            "values": {n: result.values[n] for n in result.free_names},
            "errors": {n: result.errors[n] for n in result.free_names}, "converged": result.converged,
            "n_evaluations": result.n_evaluations, "n_iterations": result.n_iterations, "n_hessians": result.n_hessians}


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


def cli_command(datasets_path: Path, models_path: Path, out: str) -> list[str]:
    return [sys.executable, "-m", "fitax.cli", "gamma", "fit", "--datasets", str(datasets_path), "--models", str(models_path),
            "--out", out, "--no-plots"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--large", action="store_true", help="also fit N = 50 datasets")
    parser.add_argument("--skip-gammapy", action="store_true", help="fitax only")
    parser.add_argument("--skip-gammapy-local", action="store_true", help="do not time Gammapy's default 'local' mode")
    parser.add_argument("--repeats", type=int, default=5, help="timed fitax fits per N after the first, each on fresh datasets (median)")
    parser.add_argument("--no-shell", dest="shell", action="store_false", help="skip the `fitax gamma fit` shell timings")
    parser.add_argument("--json", help="write the rows to this JSON file")
    parser.add_argument("--quick", action="store_true", help="smoke test: N = 1, one repeat, Gammapy 'global' only")
    parser.add_argument("--gammapy-job", nargs=4, metavar=("DATASETS", "MODELS", "MODE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.gammapy_job:
        warnings.simplefilter("ignore")
        gammapy_job(*args.gammapy_job)
        return
    if args.quick:
        args.repeats, args.skip_gammapy_local = 1, True
    if not DATA.exists():
        sys.exit(f"shared data not found at {DATA} (set FITAX_SHARED_DATA)")
    warnings.simplefilter("ignore")
    import jax

    print(machine_summary())
    print(f"fitax: {jax.device_count()} JAX CPU device(s); XLA's CPU backend runs each fit's operations on all cores. "
          f"Gammapy: one Python process; NumPy/BLAS as reported above.\n")
    workdir = Path(tempfile.mkdtemp(prefix="fitax-gamma-bench-"))
    cases = [(1, DATA / "datasets_n1.yaml", DATA / "models_start_n1.yaml")]
    if not args.quick:
        cases.append((10, DATA / "datasets_n10.yaml", DATA / "models_start_n10.yaml"))
    if args.large:
        cases.append((50, *large_inputs(workdir)))
    rows = []
    for n, datasets_path, models_path in cases:
        ours = fitax_fit(datasets_path, models_path, args.repeats if n < 50 else max(1, args.repeats // 2))
        row = {"n": n, "free": len(ours["values"]), "fitax_s": ours["seconds"], "first_s": ours["first_minus_compile"],
               "bind_s": ours["bind"], "compile_s": ours["compile"], "recompile_s": ours["recompile"], "read_s": ours["read"],
               "fitax_stat": ours["stat"], "hessians": ours["n_hessians"], "steps": ours["n_iterations"],
               "evaluations": ours["n_evaluations"], "converged": ours["converged"]}
        print(f"N={n}: fitax {ours['seconds']:.3f} s on fresh datasets (binding {ours['bind'] or float('nan'):.3f} s of it), "
              f"first fit {ours['first']:.1f} s of which {ours['compile']:.1f} s compile, stat {ours['stat']:.3f}, "
              f"converged={ours['converged']}", flush=True)
        if not args.skip_gammapy:
            theirs = gammapy_fit(datasets_path, models_path, "global")
            shift, error_ratio, where = compare(ours, theirs)
            row.update({"gammapy_s": theirs["seconds"], "gammapy_stat": theirs["stat"], "dstat": ours["stat"] - theirs["stat"],
                        "shift": shift, "error_ratio": error_ratio, "ratio": theirs["seconds"] / ours["seconds"],
                        "ratio_first": theirs["seconds"] / ours["first_minus_compile"], "gammapy_nfev": theirs["n_evaluations"]})
            print(f"      Gammapy (global) {theirs['seconds']:.1f} s, stat {theirs['stat']:.3f}, success={theirs['success']}; "
                  f"largest value shift {shift:.3f} sigma ({where}), largest error difference {100 * error_ratio:.2f}%", flush=True)
            if not args.skip_gammapy_local:
                local = gammapy_fit(datasets_path, models_path, "local")
                row.update({"local_s": local["seconds"], "local_stat": local["stat"], "local_ratio": local["seconds"] / ours["seconds"]})
                print(f"      Gammapy (default 'local') {local['seconds']:.1f} s, stat {local['stat']:.3f} "
                      f"({local['stat'] - ours['stat']:+.3f} from fitax), success={local['success']}", flush=True)
        if args.shell:
            with tempfile.TemporaryDirectory(dir=workdir) as out:
                row["shell_cold"], row["shell_warm"] = shell_times(cli_command(datasets_path, models_path, out))
            row["goal"] = goal_met(row["shell_warm"], row["fitax_s"])
            print("      " + goal_line("`fitax gamma fit`", row["shell_warm"], row["fitax_s"]), flush=True)
            if not args.skip_gammapy:
                with tempfile.TemporaryDirectory(dir=workdir) as out:
                    _, row["gammapy_shell"] = timed(subprocess.run, [sys.executable, __file__, "--gammapy-job", str(datasets_path),
                                                                     str(models_path), "global", out], check=True, capture_output=True)
                row["shell_ratio"] = row["gammapy_shell"] / row["shell_warm"]
                print(f"      Gammapy script (global) in a new process: {row['gammapy_shell']:.1f} s, "
                      f"{row['shell_ratio']:.1f}x the warm `fitax gamma fit`", flush=True)
        rows.append(row)
    print()
    print_table(rows, [("n", "N", "d"), ("free", "free", "d"), ("local_s", "Gammapy local x1 [s]", ".1f"),
                       ("gammapy_s", "Gammapy global x1 [s]", ".1f"), ("first_s", "fitax first - compile [s]", ".3f"),
                       ("fitax_s", "fitax [s]", ".3f"), ("bind_s", "bind [s]", ".3f"), ("compile_s", "compile [s]", ".1f"),
                       ("recompile_s", "recompile [s]", ".1f"), ("shell_cold", "shell cold [s]", ".1f"),
                       ("shell_warm", "shell warm [s]", ".1f"), ("gammapy_shell", "Gammapy shell [s]", ".1f"),
                       ("local_ratio", "ratio local", ".0f"), ("ratio", "ratio global", ".1f"),
                       ("ratio_first", "ratio global (first)", ".1f"), ("shell_ratio", "ratio shell", ".1f")],
                title=(f"Time: Gammapy = one Fit().run per mode on freshly read datasets; fitax [s] = median of {args.repeats} "
                       f"fits, each on datasets read anew with host caches cleared (binding included; file reading excluded "
                       f"for both); first - compile = fitax's first fit minus JAX's compile events in it; bind = binding "
                       f"alone (part of fitax [s]); shell = `fitax gamma fit ... --no-plots` in a new process, empty cache "
                       f"(cold) and re-run (warm); Gammapy shell = the same job as a Gammapy script in a new process ('global'); "
                       f"ratio = Gammapy / fitax [s]; ratio (first) = Gammapy / (first - compile); ratio shell = Gammapy shell / "
                       f"fitax shell warm"))
    print()
    print_table(rows, [("n", "N", "d"), ("local_stat", "Gammapy local stat", ".3f"), ("gammapy_stat", "Gammapy global stat", ".3f"),
                       ("dstat", "fitax - Gammapy", "+.3f"), ("shift", "max |dvalue|/sigma", ".3f"),
                       ("error_ratio", "max |derror|", ".2%"), ("steps", "fitax steps", "d"), ("hessians", "fitax Hessians", "d"),
                       ("evaluations", "fitax evaluations", "d"), ("gammapy_nfev", "Gammapy evaluations", "d")],
                title="Agreement (values compared with Gammapy 'global')")
    write_json(args.json, {"rows": rows, "repeats": args.repeats, "notes": __doc__})


if __name__ == "__main__":
    main()
