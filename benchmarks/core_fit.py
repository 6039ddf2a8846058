"""Core fit benchmark: fitax vs iminuit vs scipy on Poisson counts cubes with K sources.

The problem is ``fitax.examples.blob_cube``: 20 x 100 x 100 counts, K Gaussian sources with
power-law spectra (amplitude, index, x, y, sigma each) and a background norm, Cash statistic:
5K + 1 free parameters. All three optimisers minimise the *same* jitted JAX objective and get
its exact JAX gradient; bounds are the same. Reported per K:

* compile: fitax's one-off XLA compilation of the whole fit; for iminuit/scipy, compiling the
  jitted objective and gradient they call.
* fit [s]: wall time of the minimisation once compiled (median of repeats for fast runs).
* errors [s]: time to get parameter errors (fitax: included in the fit, exact Hessian;
  iminuit: HESSE; scipy L-BFGS-B gives none).
* stat - best: final statistic minus the best of the three (goal: fitax within 0.01).
* ratio: iminuit time / fitax time (fit only, and fit + errors).

Threads: XLA runs each objective/gradient evaluation on all cores for every library; the
optimisers' own loops are single-threaded (iminuit's C++ MIGRAD, scipy's Fortran L-BFGS-B,
fitax's compiled loop).

Run: ``python benchmarks/core_fit.py`` (K = 1, 10, 50; ~6 minutes, iminuit at K = 50 dominates)
or ``--k 1 10`` for a subset.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import jax
import numpy as np

import fitax
from fitax.examples import blob_cube, blob_cube_stat

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import machine_summary, print_table, timed  # noqa: E402


def run_fitax(start, data, repeats):
    result, first = timed(fitax.fit, blob_cube_stat, start, args=data)
    times = [timed(fitax.fit, blob_cube_stat, start, args=data)[1] for _ in range(repeats)]
    run = statistics.median(times)
    return {
        "method": "fitax (newton)",
        "compile": first - run,
        "fit": run,
        "errors": 0.0,
        "stat": result.stat,
        "n_eval": result.n_evaluations,
        "converged": result.converged,
    }


def _jitted_objective(start, data):
    space = fitax.ParameterSpace.from_params(start)

    def physical(v):
        return blob_cube_stat(space.with_values(start, v), data)

    fun, grad = jax.jit(physical), jax.jit(jax.grad(physical))
    v0 = np.asarray(space.values(start))
    t0 = time.perf_counter()
    jax.block_until_ready((fun(v0), grad(v0)))
    compile_time = time.perf_counter() - t0
    return (lambda v: float(fun(v))), (lambda v: np.asarray(grad(v))), v0, space.bounds, compile_time, list(space.names)


def run_iminuit(start, data):
    from iminuit import Minuit

    fun, grad, v0, bounds, compile_time, names = _jitted_objective(start, data)
    minuit = Minuit(fun, v0, grad=grad, name=names)
    minuit.errordef = 1.0
    for i, limits in enumerate(bounds):
        minuit.limits[i] = limits
    _, fit_time = timed(minuit.migrad)
    _, hesse_time = timed(minuit.hesse)
    return {
        "method": "iminuit (MIGRAD+HESSE)",
        "compile": compile_time,
        "fit": fit_time,
        "errors": hesse_time,
        "stat": minuit.fval,
        "n_eval": minuit.nfcn,
        "converged": minuit.valid,
    }


def run_scipy(start, data):
    from scipy.optimize import minimize

    fun, grad, v0, bounds, compile_time, _ = _jitted_objective(start, data)
    result, fit_time = timed(minimize, fun, v0, jac=grad, method="L-BFGS-B", bounds=bounds, options={"maxiter": 15000, "maxfun": 30000})
    return {
        "method": "scipy (L-BFGS-B)",
        "compile": compile_time,
        "fit": fit_time,
        "errors": None,
        "stat": result.fun,
        "n_eval": result.nfev,
        "converged": result.success,
    }


def cli_time() -> float:
    """End-to-end wall time of ``fitax demo`` as a user runs it (imports and compilation included)."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fitax.cli", "demo", "--out", "/tmp/fitax-bench-demo"], check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, nargs="+", default=[1, 10, 50], help="numbers of sources")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(machine_summary())
    summary = []
    for k in args.k:
        truth, start, data = blob_cube(k, seed=args.seed)
        print(f"\nK = {k}: {5 * k + 1} free parameters, {int(np.asarray(data.counts).sum())} counts in {data.counts.shape}")
        rows = [run_fitax(start, data, repeats=5 if k < 50 else 2), run_iminuit(start, data), run_scipy(start, data)]
        best = min(r["stat"] for r in rows)
        for r in rows:
            r["delta"] = r["stat"] - best
            r["total"] = r["fit"] + (r["errors"] or 0.0)
        print_table(
            rows,
            [("method", "method", "s"), ("compile", "compile [s]", ".2f"), ("fit", "fit [s]", ".3f"), ("errors", "errors [s]", ".2f"),
             ("delta", "stat - best", ".4f"), ("n_eval", "evaluations", "d"), ("converged", "converged", "")],
        )
        ours, minuit = rows[0], rows[1]
        summary.append({"k": k, "fit_ratio": minuit["fit"] / ours["fit"], "total_ratio": minuit["total"] / ours["total"],
                        "delta": ours["delta"], "compile": ours["compile"]})
    print("\nSummary: iminuit time / fitax time (fitax errors from the exact Hessian are included in its fit time)")
    print_table(summary, [("k", "K", "d"), ("fit_ratio", "MIGRAD / fitax", ".1f"), ("total_ratio", "MIGRAD+HESSE / fitax", ".1f"),
                          ("delta", "fitax stat - best", ".4f"), ("compile", "fitax compile [s]", ".1f")])
    print(f"\nEnd to end `fitax demo` (K = 10, fit + TS + profile interval + plots, compile included): {cli_time():.1f} s")


if __name__ == "__main__":
    main()
