"""``fitax demo``: the core in one run on simulated data.

Simulates a gamma-ray-like counts cube with point-ish sources on a background, fits all
source and background parameters, tests the faintest source, profiles the background norm,
and writes a results table and plots.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np

from . import examples
from .fit import fit
from .io import atomic_write
from .parameters import parameters_dict
from .profile import confidence_interval, ts


def run_demo(out: str | Path = "results", n_sources: int = 10, seed: int = 0) -> dict:
    """Run the demo, write ``out/demo_results.ecsv`` and ``out/demo_*.png``; returns a summary."""
    out = Path(out)
    truth, start, data = examples.blob_cube(n_sources, seed=seed)
    n_counts = int(np.asarray(data.counts).sum())
    print(f"Simulated a {'x'.join(map(str, data.counts.shape))} counts cube: {n_sources} sources "
          f"on a background, {n_counts} counts.")

    t0 = time.perf_counter()
    result = fit(examples.blob_cube_stat, start, args=data)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = fit(examples.blob_cube_stat, start, args=data)
    again = time.perf_counter() - t0
    print(f"\nFit of {len(result.free_names)} free parameters: {first:.1f} s including compilation, "
          f"{again:.2f} s once compiled ({result.n_evaluations} evaluations, {result.n_hessians} exact Hessians).")
    print(result)

    fluxes = [result.values[f"blobs.{i}.amplitude"] for i in range(n_sources)]
    faintest = int(np.argmin(fluxes))
    test = ts(examples.blob_cube_stat, result.params, {f"blobs.{faintest}.amplitude": 0.0}, args=data)
    print(f"\nFaintest source (blobs.{faintest}): TS = {test.ts:.1f}, {test.significance:.1f} sigma (Wilks, 1 dof).")
    interval = confidence_interval(examples.blob_cube_stat, result.params, "bkg_norm", args=data, result=result)
    print(f"Background norm: {interval.value:.4f} -{interval.errors[0]:.4f} +{interval.errors[1]:.4f} "
          f"(profile likelihood, 1 sigma); Hessian error {result.errors['bkg_norm']:.4f}.")

    true_values = {n: float(np.asarray(p.value)) for n, p in parameters_dict(truth).items()}
    pulls = np.array([(result.values[n] - true_values[n]) / result.errors[n] for n in result.free_names])
    print(f"Pulls (fit - truth) / error over {pulls.size} parameters: mean {pulls.mean():+.2f}, std {pulls.std():.2f}.")

    table = result.to_table()
    table["true_value"] = [true_values[n] for n in table["name"]]
    table.meta.update(stat=result.stat, converged=result.converged, ts_faintest=test.ts)
    atomic_write(out / "demo_results.ecsv", lambda tmp: table.write(tmp, format="ascii.ecsv", overwrite=True))
    _plot(out, data, result, pulls)
    print(f"\nWrote {out / 'demo_results.ecsv'}, {out / 'demo_maps.png'} and {out / 'demo_pulls.png'}.")
    return {"result": result, "ts": test, "interval": interval, "pulls": pulls}


def _plot(out: Path, data, result, pulls) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(data.counts).sum(axis=0)
    npred = np.asarray(jax.jit(examples.blob_cube_npred)(result.params, data)).sum(axis=0)
    residual = (counts - npred) / np.sqrt(np.maximum(npred, 1e-9))
    fig, axes = plt.subplots(1, 3, figsize=(13, 4), constrained_layout=True)
    for ax, image, title, cmap in [
        (axes[0], counts, "counts (all energies)", "viridis"),
        (axes[1], npred, "fitted model (npred)", "viridis"),
        (axes[2], residual, "residual (counts - npred) / sqrt(npred)", "RdBu_r"),
    ]:
        kwargs = {"vmin": -4, "vmax": 4} if cmap == "RdBu_r" else {}
        im = ax.imshow(image, origin="lower", cmap=cmap, **kwargs)
        ax.set_title(title)
        ax.set_xlabel("x [pix]")
        fig.colorbar(im, ax=ax, shrink=0.8)
    axes[0].set_ylabel("y [pix]")
    atomic_write(out / "demo_maps.png", lambda tmp: fig.savefig(tmp, dpi=110))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 4), constrained_layout=True)
    grid = np.linspace(-4, 4, 200)
    ax.hist(pulls, bins=np.linspace(-4, 4, 25), density=True, alpha=0.7, label=f"{pulls.size} parameters")
    ax.plot(grid, np.exp(-0.5 * grid**2) / np.sqrt(2 * np.pi), "k-", label="N(0, 1)")
    ax.set_xlabel("(fitted - true) / error")
    ax.set_ylabel("density")
    ax.set_title("Do the errors describe the scatter?")
    ax.legend()
    atomic_write(out / "demo_pulls.png", lambda tmp: fig.savefig(tmp, dpi=110))
    plt.close(fig)
