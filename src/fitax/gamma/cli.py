"""``fitax gamma fit`` and ``fitax gamma demo``: Gammapy-style 3D fits from the shell."""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
import time
from pathlib import Path

__all__ = ["add_parser", "run"]


def add_parser(commands) -> None:
    gamma = commands.add_parser("gamma", help="gamma-ray likelihood fits of Gammapy datasets and models")
    sub = gamma.add_subparsers(dest="gamma_command", metavar="STEP", required=True)
    fit = sub.add_parser("fit", help="fit models.yaml to the datasets of datasets.yaml (jointly)")
    fit.add_argument("--datasets", required=True, help="Gammapy datasets.yaml (MapDataset, SpectrumDataset or SpectrumDatasetOnOff files)")
    fit.add_argument("--models", required=True, help="Gammapy models.yaml with the start values")
    fit.add_argument("--out", required=True, help="output folder: models.yaml, results.ecsv, maps.png, spectrum.png")
    fit.add_argument("--ts", nargs="*", default=[], metavar="SOURCE", help="also compute the TS of these sources")
    fit.add_argument("--no-plots", action="store_true", help="skip the plots")
    demo = sub.add_parser("demo", help="simulate datasets, fit them, write the results and plots")
    demo.add_argument("--out", default="results/gamma", help="output folder (default: results/gamma)")
    demo.add_argument("--datasets", type=int, default=3, help="number of simulated observations (default: 3)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")


@contextlib.contextmanager
def _elapsed(label: str):
    """Show the time elapsed while a long computation (one compiled call, which reports no
    progress of its own) runs; on a terminal only."""
    if not sys.stderr.isatty():
        yield
        return
    from tqdm import tqdm

    done = threading.Event()
    bar = tqdm(desc=label, bar_format="{desc}: {elapsed} elapsed", leave=False)

    def tick():
        while not done.wait(0.5):
            bar.refresh()

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        bar.close()


def fit_files(datasets_path, models_path, out, ts_sources=(), plots: bool = True):
    """What ``fitax gamma fit`` does: read, fit, write ``out/models.yaml``,
    ``out/results.ecsv`` and the plots; returns the :class:`fitax.FitResult`."""
    from ..io import check_not_input
    from .fit import fit, ts
    from .modelio import read_datasets, read_models, write_models, write_results

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder")
    outputs = {name: out / name for name in ("models.yaml", "results.ecsv", "maps.png", "spectrum.png")}
    datasets = read_datasets(datasets_path, progress=True)
    inputs = [datasets_path, models_path] + [path for d in datasets for path in d.source_files]
    for path in outputs.values():
        check_not_input(path, inputs)
    models = read_models(models_path)
    free = sum(p.is_free for p in models.parameters.values())
    print(f"Fitting {free} free parameters of {len(models)} models to {len(datasets)} dataset(s) "
          "(the first fit on this machine compiles the likelihood; the compiled code is cached)...", flush=True)
    start = time.perf_counter()
    with _elapsed("fitting"):
        result = fit(datasets, models)
    print(f"Fit done in {time.perf_counter() - start:.1f} s: {result.n_iterations} steps, {result.n_hessians} exact Hessians.")
    print(result)
    write_models(result.params, outputs["models.yaml"], errors=result.errors)
    write_results(result, outputs["results.ecsv"])
    written = [outputs["models.yaml"], outputs["results.ecsv"]]
    for source in ts_sources:
        # the null fit starts where the fit with the source started, so that both look up
        # the IRFs at the same positions
        test = ts(datasets, models, source, fitted=result)
        print(f"TS of {source}: {test.ts:.1f} ({test.significance:.1f} sigma for {test.df} degrees of freedom)")
    if plots:
        from .datasets import MapDataset
        from .plots import plot_maps, plot_spectrum

        maps = [d for d in datasets if isinstance(d, MapDataset)]
        if maps:
            written.append(plot_maps(type(datasets)(maps), result.params, outputs["maps.png"]))
        written.append(plot_spectrum(datasets, result.params, result, outputs["spectrum.png"]))
    print("Wrote " + ", ".join(str(p) for p in written))
    return result


def _fit(args: argparse.Namespace) -> int:
    result = fit_files(args.datasets, args.models, args.out, args.ts, plots=not args.no_plots)
    if not result.converged:
        print(f"fitax gamma fit: the fit did not converge: {result.message}", file=sys.stderr)
        return 1
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        if args.gamma_command == "demo":
            from .demo import run_gamma_demo

            run_gamma_demo(args.out, n_datasets=args.datasets, seed=args.seed)
            return 0
        return _fit(args)
    except (ValueError, FileNotFoundError, KeyError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"fitax gamma {args.gamma_command}: error: {message}", file=sys.stderr)
        return 2
