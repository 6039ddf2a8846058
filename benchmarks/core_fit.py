"""Core fit benchmark: fitax vs iminuit vs scipy on Poisson counts cubes with K sources.

The problem is ``fitax.examples.blob_cube``: 20 x 100 x 100 counts, K Gaussian sources with
power-law spectra (amplitude, index, x, y, sigma each) and a background norm, Cash statistic:
5K + 1 free parameters. All three optimisers minimise the *same* jitted JAX objective with
the same bounds and get its exact JAX gradient, fused with the value where their API allows:
scipy through ``minimize(..., jac=True)`` on a jitted ``value_and_grad``; iminuit through a
one-point cache (MIGRAD asks for the value, then the gradient at the same point: the value
call computes both and the gradient call reads the cache). Every method gets the same
warm-up (one untimed run of the same fit, which compiles its JAX programs) and the same
number of timed repeats (median), each from fresh objects (a new Minuit, a new cache).

Table 1 (per K, the benchmark's ordinary start; blob_cube's first guesses):

* in-process [s]: median wall time of the minimisation once compiled;
* compile [s]: JAX's trace + lowering + XLA compile events during the warm-up (fitax: the
  whole fit; iminuit/scipy: their jitted objective);
* errors [s]: time to parameter errors (fitax: included in the fit, exact Hessian; iminuit:
  HESSE; scipy's L-BFGS-B gives none);
* stat - best: final statistic minus the best of all methods (goal: fitax within 0.01);
* converged: each library's own verdict (fitax: EDM at a positive-definite exact Hessian;
  iminuit: ``valid``; scipy: ``success``, which L-BFGS-B reports on its relative-reduction
  test even far from the minimum when amplitudes ~1e-11 sit next to O(1) parameters);
* shell cold / warm [s] (fitax only): ``python core_fit.py --one-fit K`` in a new process
  (import, simulate the cube, compile or load, fit), with empty caches and re-run.

Table 2 (hard starts, issue 16 section 2): the K = 50 cube from starts further off (from the
truth: positions +- 0.7 px, log-sigma +- 0.15, log-amplitude +- 0.3, index +- 0.2, Gaussian
scatter; background norm 1.2), several seeds; per fit: wall time, final stat, stat minus the
best any method reached for that seed, steps, exact Hessians, gradient evaluations; iminuit
runs MIGRAD with strategy 0 (no HESSE). ``--sparsity`` adds a fitax row that passes
``hessian_sparsity=``, computed from the problem's structure (two sources interact only if
their Gaussians overlap, see :func:`blob_sparsity`; the background norm touches all):
an advantage iminuit cannot use, stated in the row's name.

Threads: XLA runs each objective/gradient evaluation on all cores for every library; the
optimisers' own loops are single-threaded (iminuit's C++ MIGRAD, scipy's Fortran L-BFGS-B,
fitax's compiled loop).

Run: ``python benchmarks/core_fit.py [--k 1 10 50] [--seeds 0 1 2] [--repeats 3]
[--hard-repeats 1] [--sparsity] [--no-shell] [--json PATH]``; ``--quick`` for a smoke test
(K = 1 and 3, hard starts on K = 3, one repeat). A full run takes ~30-40 min on 2 cores
(the hard-start fits and iminuit at K = 50 dominate).
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import numpy as np

import fitax
from fitax.examples import blob_cube, blob_cube_stat

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import (  # noqa: E402
    CompileClock, enable_compilation_cache, goal_line, goal_met, machine_summary, median_of, print_table, shell_times, timed,
    write_json,
)

# Hard starts (issue 16, section 2): scatter of the start around the truth.
HARD_SCATTER = {"x": 0.7, "y": 0.7, "log_sigma": 0.15, "log_amplitude": 0.3, "index": 0.2}
# Two sources interact (non-zero Hessian block) when their Gaussians overlap: centres closer
# than this many combined widths, plus room for the fit to move them.
INTERACTION_SIGMAS = 6.0
MAX_MOVE_PX = 2.0


def hard_start(truth, start, seed: int):
    """``start`` with values drawn around ``truth`` with :data:`HARD_SCATTER` (same bounds)."""
    rng = np.random.default_rng(1000 + seed)
    values = {}
    for i, blob in enumerate(truth.blobs):
        x, y = float(blob.x.value), float(blob.y.value)
        values[f"blobs.{i}.x"] = x + rng.normal(0, HARD_SCATTER["x"])
        values[f"blobs.{i}.y"] = y + rng.normal(0, HARD_SCATTER["y"])
        values[f"blobs.{i}.sigma"] = float(blob.sigma.value) * np.exp(rng.normal(0, HARD_SCATTER["log_sigma"]))
        values[f"blobs.{i}.amplitude"] = float(blob.amplitude.value) * np.exp(rng.normal(0, HARD_SCATTER["log_amplitude"]))
        values[f"blobs.{i}.index"] = float(blob.index.value) + rng.normal(0, HARD_SCATTER["index"])
    return fitax.set_values(start, values)


def blob_sparsity(start) -> np.ndarray:
    """Hessian pattern of a blob cube over its free parameters: the parameters of sources
    ``i`` and ``j`` share non-zero second derivatives only where both sources put counts,
    i.e. when their centres are closer than ``INTERACTION_SIGMAS * hypot(sigma_i, sigma_j)``
    (widths taken 1.5x the start's) plus ``2 * MAX_MOVE_PX``; a Gaussian's tail beyond 6
    combined widths holds ~1e-8 of its counts. The background norm touches every source."""
    names = fitax.free_parameter_names(start)
    centres = np.array([[float(b.x.value), float(b.y.value)] for b in start.blobs])
    widths = 1.5 * np.array([float(b.sigma.value) for b in start.blobs])
    distance = np.hypot(*(centres[:, None, :] - centres[None, :, :]).transpose(2, 0, 1))
    reach = INTERACTION_SIGMAS * np.hypot(widths[:, None], widths[None, :]) + 2 * MAX_MOVE_PX
    sources_interact = distance < reach
    owner = np.array([int(n.split(".")[1]) if n.startswith("blobs.") else -1 for n in names])
    blob = owner >= 0
    pattern = np.ones((len(names), len(names)), bool)
    pattern[np.ix_(blob, blob)] = sources_interact[np.ix_(owner[blob], owner[blob])]
    return pattern


def fitax_row(result, seconds: float, method: str) -> dict:
    return {
        "method": method, "fit": seconds, "errors": 0.0, "stat": float(result.stat), "converged": bool(result.converged),
        "steps": int(result.n_iterations), "hessians": int(result.n_hessians),
        "gradients": int(getattr(result, "n_gradients", result.n_evaluations)), "n_eval": int(result.n_evaluations),
    }


def run_fitax(start, data, repeats: int, sparsity: bool, warmup_start=None) -> dict:
    """Warm-up (compiles; ``warmup_start`` if given, else the same start), then ``repeats``
    timed fits."""
    kwargs = {"hessian_sparsity": blob_sparsity(start)} if sparsity else {}
    with CompileClock() as clock:
        _, first = timed(fitax.fit, blob_cube_stat, start if warmup_start is None else warmup_start, args=data, **kwargs)
    with CompileClock() as again:
        result, seconds, _ = median_of(lambda: fitax.fit(blob_cube_stat, start, args=data, **kwargs), repeats)
    name = "fitax (newton, hessian_sparsity from the sources' overlaps)" if sparsity else "fitax (newton)"
    return {**fitax_row(result, seconds, name), "compile": clock.seconds, "first": first, "recompile": again.seconds}


def free_values(params) -> np.ndarray:
    """The free parameters' values, in fitax's order (that of ``hessian_sparsity``)."""
    parameters = fitax.parameters_dict(params)
    return np.array([float(parameters[n].value) for n in fitax.free_parameter_names(params)])


class JaxObjective:
    """The fitax objective as a function of the free parameters' physical values, jitted
    for the reference optimisers: ``value_and_grad(v) -> (float, ndarray)``; ``bounds``
    are the Parameters' own."""

    def __init__(self, start, data):
        self.names = fitax.free_parameter_names(start)
        parameters = fitax.parameters_dict(start)
        self.bounds = [(parameters[n].min, parameters[n].max) for n in self.names]
        self.v0 = free_values(start)

        def physical(v):
            return blob_cube_stat(fitax.set_values(start, dict(zip(self.names, v))), data)

        self._value_and_grad = jax.jit(jax.value_and_grad(physical))

    def value_and_grad(self, v):
        value, grad = self._value_and_grad(v)
        return float(value), np.asarray(grad)


class OnePointCache:
    """``fcn`` and ``grad`` for iminuit from one fused value-and-gradient per point: MIGRAD
    calls ``fcn(x)`` then ``grad(x)`` at the same ``x``, so the second reads the cache.
    ``n_passes`` counts fused evaluations (each a value and a gradient)."""

    def __init__(self, value_and_grad):
        self._value_and_grad = value_and_grad
        self._x = None
        self.n_passes = 0

    def _at(self, x):
        if self._x is None or not np.array_equal(x, self._x):
            self._value, self._grad = self._value_and_grad(x)
            self._x = np.array(x, copy=True)
            self.n_passes += 1

    def fcn(self, x):
        self._at(x)
        return self._value

    def grad(self, x):
        self._at(x)
        return self._grad


def _migrad(objective: JaxObjective, v0, strategy: int | None, hesse: bool):
    from iminuit import Minuit

    cache = OnePointCache(objective.value_and_grad)
    minuit = Minuit(cache.fcn, v0, grad=cache.grad, name=objective.names)
    minuit.errordef = 1.0
    if strategy is not None:
        minuit.strategy = strategy
    for i, limits in enumerate(objective.bounds):
        minuit.limits[i] = limits
    _, fit_time = timed(minuit.migrad)
    hesse_time = timed(minuit.hesse)[1] if hesse else None
    return minuit, cache, fit_time, hesse_time


def run_iminuit(start, data, repeats: int, strategy: int | None = None, hesse: bool = True, warmup_start=None) -> dict:
    with CompileClock() as clock:
        objective = JaxObjective(start, data)
        v_warm = objective.v0 if warmup_start is None else free_values(warmup_start)
        _migrad(objective, v_warm, strategy, hesse)
    runs = [_migrad(objective, objective.v0, strategy, hesse) for _ in range(repeats)]
    fit_time = float(np.median([r[2] for r in runs]))
    hesse_time = float(np.median([r[3] for r in runs])) if hesse else None
    minuit, cache = runs[-1][0], runs[-1][1]
    name = "iminuit (MIGRAD+HESSE)" if hesse else f"iminuit (MIGRAD, strategy {strategy})"
    return {
        "method": name, "compile": clock.seconds, "fit": fit_time, "errors": hesse_time, "stat": float(minuit.fval),
        "n_eval": int(minuit.nfcn), "gradients": int(cache.n_passes), "steps": None, "hessians": None,
        "converged": bool(minuit.valid),
    }


def run_scipy(start, data, repeats: int, warmup_start=None) -> dict:
    from scipy.optimize import minimize

    def solve(v0):
        return minimize(objective.value_and_grad, v0, jac=True, method="L-BFGS-B", bounds=objective.bounds,
                        options={"maxiter": 15000, "maxfun": 30000})

    with CompileClock() as clock:
        objective = JaxObjective(start, data)
        solve(objective.v0 if warmup_start is None else free_values(warmup_start))
    result, seconds, _ = median_of(lambda: solve(objective.v0), repeats)
    return {
        "method": "scipy (L-BFGS-B, jac=True)", "compile": clock.seconds, "fit": seconds, "errors": None,
        "stat": float(result.fun), "n_eval": int(result.nfev), "gradients": int(result.nfev), "steps": int(result.nit),
        "hessians": None, "converged": bool(result.success), "message": str(result.message),
    }


def one_fit(k: int, seed: int, hard_seed: int | None, sparsity: bool) -> None:
    """The job a user re-runs from the shell: one fit of the same problem, with the CLI's caches."""
    enable_compilation_cache()
    truth, start, data = blob_cube(k, seed=seed if hard_seed is None else hard_seed)
    if hard_seed is not None:
        start = hard_start(truth, start, hard_seed)
    kwargs = {"hessian_sparsity": blob_sparsity(start)} if sparsity else {}
    result = fitax.fit(blob_cube_stat, start, args=data, **kwargs)
    print(result.stat, result.converged)


def shell_cmd(k: int, seed: int, hard_seed: int | None, sparsity: bool) -> list[str]:
    cmd = [sys.executable, __file__, "--one-fit", "--k", str(k), "--seed", str(seed)]
    if hard_seed is not None:
        cmd += ["--hard-seed", str(hard_seed)]
    return cmd + (["--sparsity"] if sparsity else [])


def add_shell(row: dict, cmd: list[str]) -> None:
    cold, warm = shell_times(cmd)
    row.update(shell_cold=cold, shell_warm=warm, goal=goal_met(warm, row["fit"]))
    print("  " + goal_line(row["method"], warm, row["fit"]), flush=True)


MAIN_COLUMNS = [("method", "method", "s"), ("fit", "in-process [s]", ".3f"), ("compile", "compile [s]", ".2f"),
                ("shell_cold", "shell cold [s]", ".1f"), ("shell_warm", "shell warm [s]", ".1f"), ("errors", "errors [s]", ".2f"),
                ("delta", "stat - best", ".4f"), ("n_eval", "evaluations", "d"), ("gradients", "gradients", "d"),
                ("hessians", "exact Hessians", "d"), ("converged", "converged", "")]
HARD_COLUMNS = [("seed", "seed", "d"), ("method", "method", "s"), ("fit", "wall [s]", ".2f"), ("stat", "stat", ".3f"),
                ("delta", "stat - best", ".4f"), ("steps", "steps", "d"), ("hessians", "exact Hessians", "d"),
                ("gradients", "gradients", "d"), ("converged", "converged", ""), ("speedup", "iminuit / this", ".1f"),
                ("shell_cold", "shell cold [s]", ".1f"), ("shell_warm", "shell warm [s]", ".1f")]


def ordinary_starts(args) -> tuple[list, list]:
    rows, summary = [], []
    for k in args.k:
        truth, start, data = blob_cube(k, seed=args.seed)
        print(f"\nK = {k}: {5 * k + 1} free parameters, {int(np.asarray(data.counts).sum())} counts in {data.counts.shape}", flush=True)
        block = [run_fitax(start, data, args.repeats, sparsity=False)]
        if args.sparsity and k > 1:
            block.append(run_fitax(start, data, args.repeats, sparsity=True))
        block += [run_iminuit(start, data, args.repeats), run_scipy(start, data, args.repeats)]
        best = min(r["stat"] for r in block)
        for r in block:
            r.update(k=k, delta=r["stat"] - best, total=r["fit"] + (r["errors"] or 0.0))
        if args.shell:
            for r in block:
                if r["method"].startswith("fitax"):
                    add_shell(r, shell_cmd(k, args.seed, None, "sparsity" in r["method"]))
        print_table(block, MAIN_COLUMNS, title=(
            f"K = {k}: in-process = median of {args.repeats} minimisations after one untimed warm-up run each; compile = JAX "
            f"compile events in the warm-up; shell = `core_fit.py --one-fit` in a new process (import, simulate, fit), "
            f"empty caches (cold) and re-run (warm)"))
        minuit = next(r for r in block if r["method"].startswith("iminuit"))
        for ours in (r for r in block if r["method"].startswith("fitax")):
            summary.append({"k": k, "method": ours["method"], "fit_ratio": minuit["fit"] / ours["fit"],
                            "total_ratio": minuit["total"] / ours["total"], "delta": ours["delta"], "compile": ours["compile"]})
        rows += block
    print()
    print_table(summary, [("k", "K", "d"), ("method", "fitax", "s"), ("fit_ratio", "MIGRAD / fitax", ".1f"),
                          ("total_ratio", "MIGRAD+HESSE / fitax", ".1f"), ("delta", "fitax stat - best", ".4f"),
                          ("compile", "fitax compile [s]", ".1f")],
                title="Summary: iminuit time / fitax time, in-process after compilation (fitax's errors, from the exact "
                      "Hessian, are inside its fit time)")
    return rows, summary


def hard_starts(args) -> list:
    k = args.hard_k
    print(f"\nHard starts, K = {k} ({5 * k + 1} free parameters), seeds {args.seeds}: scatter {HARD_SCATTER}", flush=True)
    rows = []
    for seed in args.seeds:
        truth, ordinary, data = blob_cube(k, seed=seed)
        start = hard_start(truth, ordinary, seed)
        # Warm-up (compiles each method's programs) on this cube's ordinary start, once per
        # method; the timed fits start from the hard start.
        block = [run_fitax(start, data, args.hard_repeats, sparsity=False, warmup_start=ordinary)]
        if args.sparsity:
            block.append(run_fitax(start, data, args.hard_repeats, sparsity=True, warmup_start=ordinary))
        block.append(run_iminuit(start, data, args.hard_repeats, strategy=0, hesse=False, warmup_start=ordinary))
        block.append(run_scipy(start, data, args.hard_repeats, warmup_start=ordinary))
        best = min(r["stat"] for r in block)
        minuit = next(r for r in block if r["method"].startswith("iminuit"))
        for r in block:
            r.update(seed=seed, delta=r["stat"] - best, speedup=minuit["fit"] / r["fit"])
        if args.shell and seed == args.seeds[0]:  # the programs are the same for every seed
            for r in block:
                if r["method"].startswith("fitax"):
                    add_shell(r, shell_cmd(k, seed, seed, "sparsity" in r["method"]))
        for r in (r for r in block if r["method"].startswith("fitax")):
            ok = r["delta"] <= 0.01 and r["speedup"] >= 5
            print(f"  goal seed {seed}, {r['method']}: within 0.01 of the best ({r['delta']:.4f}) and >= 5x faster than "
                  f"iminuit ({r['speedup']:.1f}x): {'met' if ok else 'NOT met'}", flush=True)
        rows += block
    print()
    print_table(rows, HARD_COLUMNS, title=(
        f"Hard starts, K = {k}: wall = median of {args.hard_repeats} fit(s) after one untimed warm-up fit per method "
        f"(compiles); iminuit = MIGRAD strategy 0 with the JAX gradient, no HESSE; stat - best = against the best any "
        f"method reached for that seed; gradients = value-and-gradient evaluations; steps = solver iterations; shell "
        f"(first seed only: the compiled programs are the same for every seed) = `core_fit.py --one-fit --hard-seed S` in "
        f"a new process, empty caches (cold) and re-run (warm)"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, nargs="+", default=[1, 10, 50], help="numbers of sources (ordinary starts)")
    parser.add_argument("--seed", type=int, default=0, help="simulation seed of the ordinary-start cubes")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method (median), ordinary starts")
    parser.add_argument("--hard-k", type=int, default=50, help="sources of the hard-start cube")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2], help="hard-start seeds (none: skip)")
    parser.add_argument("--hard-repeats", type=int, default=1, help="timed runs per method (median), hard starts")
    parser.add_argument("--sparsity", action="store_true", help="add fitax rows with hessian_sparsity= from the sources' overlaps")
    parser.add_argument("--no-shell", dest="shell", action="store_false", help="skip the shell (new process) timings")
    parser.add_argument("--json", help="write all rows to this JSON file")
    parser.add_argument("--quick", action="store_true", help="smoke test: K = 1 and 3, hard starts on K = 3, one seed, one repeat")
    parser.add_argument("--one-fit", action="store_true", help=argparse.SUPPRESS)  # child: one fit, CLI caches
    parser.add_argument("--hard-seed", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_fit:
        one_fit(args.k[0], args.seed, args.hard_seed, args.sparsity)
        return
    if args.quick:
        args.k, args.repeats, args.hard_k, args.seeds, args.hard_repeats = [1, 3], 1, 3, [0], 1
    print(machine_summary())
    started = time.perf_counter()
    rows, summary = ordinary_starts(args) if args.k else ([], [])
    hard = hard_starts(args) if args.seeds else []
    print(f"\nbenchmark wall time {time.perf_counter() - started:.0f} s")
    write_json(args.json, {"ordinary_starts": rows, "summary": summary, "hard_starts": hard,
                           "hard_scatter": HARD_SCATTER, "notes": __doc__})


if __name__ == "__main__":
    main()
