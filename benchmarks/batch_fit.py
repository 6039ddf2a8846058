"""Batch fit benchmark: N Moffat PSF fits to 15x15 stamps, fitax.fit_batch vs scipy.

Each fit has 4 free parameters (flux, x, y, background) of a pixel-integrated Moffat star
(gamma 2.45 px, alpha 3) with a chi2 using the Poisson + read-noise variance of the
simulation (the same weights for both). The stamps come from
``fitax.photometry.simulate.simulate_stamps``. The reference is what users write: a Python loop
of ``scipy.optimize.least_squares`` (default TRF method, default 2-point Jacobian) over a
NumPy model with the same 4x4 Gauss-Legendre pixel integration, from the same starts.

Timed (table header says it again): every method gets one untimed warm-up run of the whole
batch (fitax: compiles) and the median of ``--repeats`` timed runs; fits/s = N / that
median. Converged: scipy counts a problem only if ``result.success`` and ``result.status >
0`` (1-4: a gtol/ftol/xtol test passed; 0 = evaluation limit, -1 = bad input); fitax counts
``result.converged`` (EDM below tolerance at a positive-definite exact Hessian). The value
difference is taken over problems both call converged. Shell times: ``python batch_fit.py
--one-fit --n N`` in a new process (import, simulate, fit_batch once), empty caches (cold)
and re-run (warm).

Threads: scipy's loop runs on one core (these arrays are too small for BLAS threads). fitax
runs as imported: one JAX device per core, problems split over them (``fitax.fit_batch``
default, ``lax.map`` per device); the single-device row (its own process, compile excluded)
shows the per-core speed.

Run: ``python benchmarks/batch_fit.py [--n 1000] [--repeats 3] [--no-shell] [--json PATH]``;
``--quick``: 100 stamps, one repeat. A full run takes ~3-4 min on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

import fitax
from fitax.photometry.simulate import simulate_stamps, stamp_model

GAMMA, ALPHA = 2.45, 3.0

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import (  # noqa: E402
    CompileClock, enable_compilation_cache, goal_line, goal_met, machine_summary, median_of, print_table, shell_times, timed,
    write_json,
)

SIZE = 15
NAMES = ("flux", "x", "y", "bkg")


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


def scipy_loop(stamps, variance, start):
    """``(values, converged)``: one ``least_squares`` per stamp; converged = success and status > 0."""
    from scipy.optimize import least_squares

    values, converged = np.empty_like(start), np.zeros(len(stamps), bool)
    for i in range(len(stamps)):
        sigma = np.sqrt(variance[i])
        result = least_squares(lambda q: ((stamps[i] - numpy_model(q)) / sigma).ravel(), start[i])
        values[i] = result.x
        converged[i] = bool(result.success) and result.status > 0
    return values, converged


def run_scipy(stamps, variance, start, repeats: int) -> tuple[dict, np.ndarray, np.ndarray]:
    scipy_loop(stamps, variance, start)  # warm-up, as fitax gets
    (values, converged), seconds, _ = median_of(lambda: scipy_loop(stamps, variance, start), repeats)
    row = {"method": "scipy least_squares loop (1 core)", "seconds": seconds, "rate": len(stamps) / seconds, "compile": None,
           "converged": int(converged.sum())}
    return row, values, converged


def chi2(p, data):
    stamp, variance = data
    model = stamp_model(p["flux"].value, p["x"].value, p["y"].value, p["bkg"].value, SIZE, GAMMA, ALPHA)
    return fitax.stats.chi2(stamp, model, jnp.sqrt(variance))


def batch_problem(stamps, variance, start):
    params = {k: fitax.Parameter(start[:, i]) for i, k in enumerate(NAMES)}
    params["flux"] = fitax.Parameter(start[:, 0], min=0.0)
    return params, (jnp.asarray(stamps), jnp.asarray(variance))


def run_fitax(stamps, variance, start, vectorize: str, repeats: int):
    params, data = batch_problem(stamps, variance, start)
    with CompileClock() as clock:
        timed(fitax.fit_batch, chi2, params, data, vectorize=vectorize)
    result, seconds, _ = median_of(lambda: fitax.fit_batch(chi2, params, data, vectorize=vectorize), repeats)
    values = np.stack([result.values[k] for k in NAMES], axis=1)
    return result, values, seconds, clock.seconds


def one_fit(n: int, vectorize: str) -> None:
    """The job a user re-runs from the shell: simulate the stamps, fit them once (CLI caches on)."""
    enable_compilation_cache()
    stamps, truth, variance = simulate_stamps(n, SIZE, seed=0)
    params, data = batch_problem(stamps, variance, starts(truth))
    result = fitax.fit_batch(chi2, params, data, vectorize=vectorize)
    print(int(result.converged.sum()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="number of stamps")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method (median), after one warm-up run each")
    parser.add_argument("--no-shell", dest="shell", action="store_false", help="skip the shell (new process) timings")
    parser.add_argument("--json", help="write the rows to this JSON file")
    parser.add_argument("--quick", action="store_true", help="smoke test: 100 stamps, one repeat")
    parser.add_argument("--single-device", action="store_true", help=argparse.SUPPRESS)  # child: one device, fits/s only
    parser.add_argument("--one-fit", action="store_true", help=argparse.SUPPRESS)  # child: one job, CLI caches
    args = parser.parse_args()
    if args.quick:
        args.n, args.repeats = 100, 1
    if args.one_fit:
        one_fit(args.n, "map")
        return
    if args.single_device:
        stamps, truth, variance = simulate_stamps(args.n, SIZE, seed=0)
        _, _, seconds, _ = run_fitax(stamps, variance, starts(truth), "map", args.repeats)
        print(args.n / seconds)
        return
    print(machine_summary())
    stamps, truth, variance = simulate_stamps(args.n, SIZE, seed=0)
    start = starts(truth)
    print(f"{args.n} stamps of {SIZE}x{SIZE} pixels, 4 free parameters each", flush=True)
    scipy_row, reference, scipy_ok = run_scipy(stamps, variance, start, args.repeats)
    rows = [scipy_row]
    for vectorize in ("map", "vmap"):
        result, values, seconds, compile_time = run_fitax(stamps, variance, start, vectorize, args.repeats)
        sigma = np.stack([result.errors[k] for k in NAMES], axis=1)
        both = scipy_ok & np.asarray(result.converged)
        rows.append({
            "method": f"fitax fit_batch {vectorize} ({jax.device_count()} devices)", "seconds": seconds,
            "rate": args.n / seconds, "compile": compile_time, "converged": int(np.sum(result.converged)),
            "diff": float(np.max(np.abs(values - reference)[both] / sigma[both])) if both.any() else None,
        })
    single = subprocess.run(
        [sys.executable, __file__, "--n", str(args.n), "--repeats", str(args.repeats), "--single-device"],
        capture_output=True, text=True, check=True, env={**os.environ, "FITAX_CPU_DEVICES": "1"},
    )
    rows.append({"method": "fitax fit_batch map (1 device)", "rate": float(single.stdout.strip().splitlines()[-1])})
    for row in rows:
        row["ratio"] = row["rate"] / rows[0]["rate"]
    if args.shell:
        ours = rows[1]
        ours["shell_cold"], ours["shell_warm"] = shell_times([sys.executable, __file__, "--one-fit", "--n", str(args.n)])
        ours["goal"] = goal_met(ours["shell_warm"], ours["seconds"])
        print(goal_line(ours["method"], ours["shell_warm"], ours["seconds"]))
    print_table(
        rows,
        [("method", "method", "s"), ("rate", "fits/s", ".0f"), ("ratio", "x scipy", ".1f"), ("seconds", "in-process [s]", ".3f"),
         ("compile", "compile [s]", ".1f"), ("shell_cold", "shell cold [s]", ".1f"), ("shell_warm", "shell warm [s]", ".1f"),
         ("converged", "converged", "d"), ("diff", "max |fitax - scipy| / error", ".1e")],
        title=(f"{args.n} fits: in-process = median of {args.repeats} runs of the whole batch after one untimed warm-up run "
               f"each (fitax: compiles); compile = JAX compile events in the warm-up; shell = `batch_fit.py --one-fit` in a new "
               f"process, empty caches (cold) and re-run (warm); converged: scipy success and status > 0, fitax "
               f"result.converged; difference over problems both converged"),
    )
    write_json(args.json, {"rows": rows, "n": args.n, "repeats": args.repeats, "notes": __doc__})


if __name__ == "__main__":
    main()
