"""Batch fit benchmark: 1000 Moffat PSF fits to 15x15 stamps, fitax.fit_batch vs scipy.

Each fit has 4 free parameters (flux, x, y, background) of a pixel-integrated Moffat star
(gamma 2.45 px, alpha 3) with a chi2 using the Poisson + read-noise variance. The stamps
come from ``fitax.photometry.simulate.simulate_stamps``. The reference is what users write: a Python loop
of ``scipy.optimize.least_squares`` (default TRF method, default 2-point Jacobian) over a
NumPy model with the same 4x4 Gauss-Legendre pixel integration, from the same starts.

Threads: scipy's loop runs on one core (these arrays are too small for BLAS threads). fitax
runs as imported: one JAX device per core, problems split over them (``fitax.fit_batch``
default, ``lax.map`` per device); the single-device rows show the per-core speed.

Run: ``python benchmarks/batch_fit.py [--n 1000]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import fitax
from fitax.photometry.simulate import simulate_stamps, stamp_model

GAMMA, ALPHA = 2.45, 3.0

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import machine_summary, print_table, timed  # noqa: E402

SIZE = 15


def numpy_model(q, size=SIZE, points=4):
    flux, x, y, bkg = q
    nodes, weights = np.polynomial.legendre.leggauss(points)
    sub = (np.arange(size)[:, None] + 0.5 * nodes[None, :]).ravel()
    w = np.tile(0.5 * weights, size)
    r2 = (sub[:, None] - y) ** 2 + (sub[None, :] - x) ** 2
    profile = (ALPHA - 1) / (np.pi * GAMMA**2) * (1 + r2 / GAMMA**2) ** -ALPHA
    pixels = (profile * w[:, None] * w[None, :]).reshape(size, points, size, points).sum(axis=(1, 3))
    return flux * pixels + bkg


def starts(truth):
    return np.stack([truth["flux"] * 0.8, truth["x"] + 0.3, truth["y"] - 0.3, np.full(truth["flux"].size, 5.0)], axis=1)


def run_scipy(stamps, variance, start):
    from scipy.optimize import least_squares

    out = np.empty_like(start)
    t0 = time.perf_counter()
    for i in range(len(stamps)):
        sigma = np.sqrt(variance[i])
        out[i] = least_squares(lambda q: ((stamps[i] - numpy_model(q)) / sigma).ravel(), start[i]).x
    return out, time.perf_counter() - t0


def chi2(p, data):
    stamp, variance = data
    model = stamp_model(p["flux"].value, p["x"].value, p["y"].value, p["bkg"].value, SIZE, GAMMA, ALPHA)
    return fitax.stats.chi2(stamp, model, jnp.sqrt(variance))


def run_fitax(stamps, variance, start, vectorize):
    params = {k: fitax.Parameter(start[:, i]) for i, k in enumerate(("flux", "x", "y", "bkg"))}
    params["flux"] = fitax.Parameter(start[:, 0], min=0.0)
    data = (jnp.asarray(stamps), jnp.asarray(variance))
    result, first = timed(fitax.fit_batch, chi2, params, data, vectorize=vectorize)
    runs = [timed(fitax.fit_batch, chi2, params, data, vectorize=vectorize)[1] for _ in range(3)]
    run = float(np.median(runs))
    values = np.stack([result.values[k] for k in ("flux", "x", "y", "bkg")], axis=1)
    return result, values, run, first - run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--single-device", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.single_device:  # child process: one device, print fits/s only
        stamps, truth, variance = simulate_stamps(args.n, SIZE, seed=0)
        _, _, run, _ = run_fitax(stamps, variance, starts(truth), "map")
        print(args.n / run)
        return
    print(machine_summary())
    stamps, truth, variance = simulate_stamps(args.n, SIZE, seed=0)
    start = starts(truth)
    print(f"{args.n} stamps of {SIZE}x{SIZE} pixels, 4 free parameters each")
    reference, scipy_time = run_scipy(stamps, variance, start)
    rows = [{"method": "scipy least_squares loop (1 core)", "rate": args.n / scipy_time, "compile": 0.0, "converged": args.n}]
    for vectorize in ("map", "vmap"):
        result, values, run, compile_time = run_fitax(stamps, variance, start, vectorize)
        sigma = np.stack([result.errors[k] for k in ("flux", "x", "y", "bkg")], axis=1)
        rows.append({
            "method": f"fitax fit_batch {vectorize} ({jax.device_count()} devices)",
            "rate": args.n / run, "compile": compile_time, "converged": int(result.converged.sum()),
            "diff": float(np.max(np.abs(values - reference) / sigma)),
        })
    single = subprocess.run(
        [sys.executable, __file__, "--n", str(args.n), "--single-device"], capture_output=True, text=True, check=True,
        env={**os.environ, "FITAX_CPU_DEVICES": "1"},
    )
    rows.append({"method": "fitax fit_batch map (1 device)", "rate": float(single.stdout.strip().splitlines()[-1]), "compile": None, "converged": None})
    for row in rows:
        row["ratio"] = row["rate"] / rows[0]["rate"]
    print_table(rows, [("method", "method", "s"), ("rate", "fits/s", ".0f"), ("ratio", "x scipy", ".1f"),
                       ("compile", "compile [s]", ".1f"), ("converged", "converged", "d"),
                       ("diff", "max |fitax - scipy| / error", ".1e")])


if __name__ == "__main__":
    main()
