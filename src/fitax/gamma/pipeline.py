"""The file-to-result job of a gamma-ray fit: read Gammapy's files, fit, write the results.

``fitax gamma fit`` and ``fitax gamma demo`` both run :func:`fit_files`; as
:mod:`fitax.photometry.pipeline`, it is the unit of work a script or a cluster job can call.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from pathlib import Path

from ..io import atomic_write, check_not_input
from .datasets import read_datasets
from .fit import fit, sample, ts
from .mapdataset import MapDataset
from .modelio import read_models, write_models, write_results

__all__ = ["fit_files"]


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


def fit_files(datasets_path, models_path, out, ts_sources=(), plots: bool = True, num_samples: int = 0, seed: int = 0):
    """What ``fitax gamma fit`` does: read, fit, write ``out/models.yaml``,
    ``out/results.ecsv`` and the plots; returns the :class:`fitax.FitResult`.

    ``num_samples`` > 0: then draw that many posterior samples per chain (4 chains, as
    many warm-up iterations) from the fit (:func:`fitax.gamma.sample`), and write their
    summary ``out/posterior.ecsv`` (name, mean, std, q16, q50, q84, r_hat, ess per free
    parameter) and, with the plots, ``out/corner.png``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder")
    outputs = {name: out / name for name in ("models.yaml", "results.ecsv", "maps.png", "spectrum.png", "posterior.ecsv", "corner.png")}
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
        from .plots import plot_maps, plot_spectrum

        maps = [d for d in datasets if isinstance(d, MapDataset)]
        if maps:
            written.append(plot_maps(type(datasets)(maps), result.params, outputs["maps.png"]))
        written.append(plot_spectrum(datasets, result.params, result, outputs["spectrum.png"]))
    if num_samples > 0:
        print(f"Sampling the posterior: 4 chains of {num_samples} draws after {num_samples} warm-up iterations...", flush=True)
        start = time.perf_counter()
        with _elapsed("sampling"):
            samples = sample(datasets, result, num_samples=num_samples, seed=seed)
        print(f"Sampling done in {time.perf_counter() - start:.1f} s.")
        print(samples)
        samples.write(outputs["posterior.ecsv"])
        written.append(outputs["posterior.ecsv"])
        if plots:
            figure = samples.plot_corner()
            written.append(atomic_write(outputs["corner.png"], lambda tmp: figure.savefig(tmp, dpi=100, format="png")))
    print("Wrote " + ", ".join(str(p) for p in written))
    return result
