"""fitax.hep against pyhf 0.7.6 on the same workspaces, in one run.

Tasks, each on the ATLAS sbottom workspace (RegionA, patch 1300_205_60, code4/code4p as
``pyhf cls``) and on pyhf's ``uncorrelated_background`` example:

* ``fit``: one maximum-likelihood fit (pyhf ``mle.fit``; fitax ``mle_fit``);
* ``hypotest``: one asymptotic q~ CLs test at mu = 1 with the expected band;
* ``limit``: observed + expected upper limits (pyhf ``upper_limit`` with its toms748 scan at
  its default rtol 1e-4; fitax ``upper_limit``, Brent at 1e-8);
* ``patchset``: the q~ hypotest at mu = 1 of every point of a 20-point patchset (the signal
  yields of the workspace's patch scaled by 0.25-4, histosys and staterror data with them), the
  patched models built inside the timing on both sides (fitax ``hypotest_patchset``, its
  points stacked; pyhf one ``hypotest`` per patched model, as its users loop);
* ``toys``: a toy-based q~ hypotest with ``--ntoys`` toys per hypothesis (``4 ntoys`` fits);
  for pyhf up to the observed CLs (its expected band needs ``numpy.percentile(interpolation=)``,
  which NumPy 2 removed). ``fits/s`` counts the ``4 ntoys`` fits the test needs; fitax runs
  ``8 ntoys`` (each fit from two starts, the toy's generating parameters and the initial
  values, keeping the lower minimum: see ``ToyCalculator.toy_statistics``).

Backends: fitax; pyhf numpy + scipy, jax + scipy, jax + minuit.

What the times include:

* warm: median wall time of ``--repeats`` calls after one untimed call in the same process
  (model built, programs compiled); the model and data are built once, outside the timing,
  for every backend alike.
* cold: wall time of a fresh Python process that imports the library, reads the workspace,
  builds the model and runs the task once (``python hep_infer.py --one TASK --backend B``):
  what a user waits for. fitax's child runs with an empty persistent compilation cache (as
  the ``fitax`` command line's first run on a machine); pyhf has no such cache.

``--quick`` runs the sbottom workspace only, 10 toys, one repeat, pyhf's limit left out (minutes
under load) and the cold process only for the hypotest: a smoke test, not a measurement. On the shared 2-core machine say in any report that times were taken under load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_summary, print_table, write_json  # noqa: E402

DATA = Path(os.environ.get("FITAX_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "hep"
CODE4 = {"normsys": {"interpcode": "code4"}, "histosys": {"interpcode": "code4p"}}
TASKS = ("fit", "hypotest", "limit", "patchset", "toys")
PATCHSET_SCALES = tuple(float(x) for x in __import__("numpy").geomspace(0.25, 4.0, 20))
BACKENDS = ("fitax", "numpy+scipy", "jax+scipy", "jax+minuit")


def simple_spec() -> dict:
    """pyhf.simplemodels.uncorrelated_background (its docs' example) as a workspace."""
    samples = [
        {"name": "signal", "data": [12.0, 11.0], "modifiers": [{"name": "mu", "type": "normfactor", "data": None}]},
        {"name": "background", "data": [50.0, 52.0], "modifiers": [{"name": "uncorr_bkguncrt", "type": "shapesys", "data": [3.0, 7.0]}]},
    ]
    return {
        "channels": [{"name": "singlechannel", "samples": samples}],
        "observations": [{"name": "singlechannel", "data": [51.0, 48.0]}],
        "measurements": [{"name": "Measurement", "config": {"poi": "mu", "parameters": []}}],
        "version": "1.0.0",
    }


def _scaled(value, scale: float):
    """``value`` (a patch operation's value) with yields and absolute uncertainties scaled."""
    if isinstance(value, dict):
        return {k: [x * scale for x in v] if k in ("data", "hi_data", "lo_data") and isinstance(v, list) else _scaled(v, scale)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_scaled(v, scale) for v in value]
    return value


def patchset_points(name: str) -> list[tuple[str, tuple[float], list]]:
    """``(name, values, operations)`` of each point of the benchmark's patchset."""
    if name == "sbottom":
        base = json.loads((DATA / "sbottom_RegionA_patch_1300_205_60.json").read_text())
    else:
        base = [{"op": "replace", "path": "/channels/0/samples/0/data", "value": simple_spec()["channels"][0]["samples"][0]["data"]}]
    return [(f"point_{i}", (scale,), [{**op, "value": _scaled(op.get("value"), scale)} if "value" in op else op for op in base])
            for i, scale in enumerate(PATCHSET_SCALES)]


def workspace_spec(name: str) -> tuple[dict, list]:
    if name == "sbottom":
        spec = json.loads((DATA / "sbottom_RegionA_BkgOnly.json").read_text())
        return spec, [json.loads((DATA / "sbottom_RegionA_patch_1300_205_60.json").read_text())]
    return simple_spec(), []


# ------------------------------------------------------------------------------ one task
def fitax_runner(workspace: str, ntoys: int):
    import fitax.hep as hep
    from fitax.hep import infer
    from fitax.hep.patchsets import hypotest_patchset
    from fitax.hep.workspace import Patch

    spec, patches = workspace_spec(workspace)
    background_only = hep.Workspace(spec)
    points = [Patch(*point) for point in patchset_points(workspace)]
    ws = background_only
    for patch in patches:
        ws = ws.patch(patch)
    settings = CODE4
    model = ws.model(modifier_settings=settings)
    data = ws.data(model)

    def run(task):
        if task == "fit":
            result = infer.mle_fit(data, model)
            return {"value": result.twice_nll, "converged": result.converged}
        if task == "hypotest":
            result = infer.hypotest(1.0, data, model)
            return {"value": result.cls_obs, "converged": result.converged}
        if task == "limit":
            result = infer.upper_limit(data, model)
            return {"value": result.observed, "converged": result.converged}
        if task == "patchset":
            result = hypotest_patchset(background_only, points, modifier_settings=settings, progress=False)
            return {"value": float(result.cls_obs.sum()), "converged": bool(result.converged.all())}
        result = infer.hypotest(1.0, data, model, calctype="toybased", ntoys=ntoys)
        return {"value": result.cls_obs, "converged": result.converged}

    return run


def pyhf_runner(workspace: str, backend: str, ntoys: int):
    import pyhf

    tensorlib, optimizer = backend.split("+")
    pyhf.set_backend(tensorlib, pyhf.optimize.minuit_optimizer() if optimizer == "minuit" else pyhf.optimize.scipy_optimizer())
    spec, patches = workspace_spec(workspace)
    ws = pyhf.Workspace(spec)
    settings = CODE4
    model = ws.model(patches=patches, modifier_settings=settings)
    data = ws.data(model)

    def run(task):
        if task == "fit":
            _, twice_nll = pyhf.infer.mle.fit(data, model, return_fitted_val=True)
            return {"value": float(twice_nll), "converged": None}
        if task == "hypotest":
            obs, _ = pyhf.infer.hypotest(1.0, data, model, test_stat="qtilde", return_expected_set=True)
            return {"value": float(obs), "converged": None}
        if task == "limit":
            obs, _ = pyhf.infer.intervals.upper_limits.upper_limit(data, model)
            return {"value": float(obs), "converged": None}
        if task == "patchset":
            total = 0.0
            for _, _, operations in patchset_points(workspace):
                point = ws.model(patches=[operations], modifier_settings=settings)
                obs, _ = pyhf.infer.hypotest(1.0, ws.data(point), point, test_stat="qtilde", return_expected_set=True)
                total += float(obs)
            return {"value": total, "converged": None}
        # pyhf 0.7.6's toy expected band calls numpy.percentile(interpolation=...), gone in
        # NumPy 2: time what its hypotest does up to the observed CLs (all toy fits).
        calculator = pyhf.infer.utils.create_calculator("toybased", data, model, ntoys=ntoys, track_progress=False)
        teststat = calculator.teststatistic(1.0)
        signal, background = calculator.distributions(1.0)
        _, _, cls = calculator.pvalues(teststat, signal, background)
        return {"value": float(cls), "converged": None}

    return run


def runner(workspace: str, backend: str, ntoys: int):
    return fitax_runner(workspace, ntoys) if backend == "fitax" else pyhf_runner(workspace, backend, ntoys)


# ---------------------------------------------------------------------------- measurement
def warm_time(run, task: str, repeats: int) -> tuple[dict, float]:
    outcome = run(task)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        outcome = run(task)
        seconds.append(time.perf_counter() - start)
    return outcome, statistics.median(seconds)


def cold_time(workspace: str, backend: str, task: str, ntoys: int) -> float:
    cmd = [sys.executable, __file__, "--one", task, "--backend", backend, "--workspace", workspace, "--ntoys", str(ntoys)]
    with tempfile.TemporaryDirectory(prefix="fitax-hep-bench-") as cache:
        start = time.perf_counter()
        done = subprocess.run(cmd, env={**os.environ, "FITAX_CACHE_DIR": cache}, capture_output=True, text=True)
        seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}")
    return seconds


def one_task(args) -> int:
    """Child process of a cold measurement: import, build, run the task once."""
    if args.backend == "fitax":
        from fitax.cli import enable_compilation_cache

        enable_compilation_cache()
    runner(args.workspace, args.backend, args.ntoys)(args.one)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: sbottom, 10 toys, one repeat, no pyhf limit, cold hypotest only")
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--ntoys", type=int, default=1000, help="toys per hypothesis (default 1000)")
    parser.add_argument("--repeats", type=int, default=5, help="warm repeats (median)")
    parser.add_argument("--no-cold", action="store_true", help="skip the fresh-process measurements")
    parser.add_argument("--json", default=None, help="write the rows here")
    parser.add_argument("--one", choices=TASKS, help=argparse.SUPPRESS)
    parser.add_argument("--backend", choices=BACKENDS, default="fitax", help=argparse.SUPPRESS)
    parser.add_argument("--workspace", default="sbottom", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return one_task(args)
    workspaces = ("sbottom",) if args.quick else ("sbottom", "simple")
    ntoys = 10 if args.quick else args.ntoys
    repeats = 1 if args.quick else args.repeats
    print(machine_summary())
    rows = []
    for workspace in workspaces:
        for backend in args.backends:
            run = runner(workspace, backend, ntoys)
            for task in args.tasks:
                if args.quick and backend != "fitax" and task == "limit":
                    continue
                row = {"workspace": workspace, "backend": backend, "task": task}
                try:
                    outcome, row["warm_s"] = warm_time(run, task, repeats)
                    row.update(outcome)
                except Exception as error:  # a pyhf backend that fails on a task is a result too
                    row["error"] = f"{type(error).__name__}: {error}"[:120]
                cold = not args.no_cold and (task == "hypotest" or not args.quick)
                if cold and "error" not in row:
                    try:
                        row["cold_s"] = cold_time(workspace, backend, task, ntoys)
                    except RuntimeError as error:
                        row["error"] = f"cold: {error}"[:120]
                rows.append(row)
                print(f"  {workspace:8s} {backend:12s} {task:9s} warm {row.get('warm_s', float('nan')):9.4f} s  "
                      f"cold {row.get('cold_s', float('nan')):8.2f} s  value {row.get('value', float('nan')):.8g}  {row.get('error', '')}",
                      flush=True)
    for row in rows:
        ours = next((r for r in rows if r["workspace"] == row["workspace"] and r["task"] == row["task"] and r["backend"] == "fitax"), {})
        for kind in ("warm_s", "cold_s"):
            if row.get(kind) and ours.get(kind):
                row[kind.replace("_s", "_ratio")] = row[kind] / ours[kind]
        if row["task"] == "toys" and row.get("warm_s"):
            row["fits_per_s"] = 4 * ntoys / row["warm_s"]
    title = (f"\nwarm: median of {repeats} in-process calls after one untimed; cold: fresh process (import, model, compile, "
             f"task); ratio = pyhf / fitax; toys: {ntoys} per hypothesis, {4 * ntoys} fits")
    columns = [("workspace", "workspace", "s"), ("task", "task", "s"), ("backend", "backend", "s"), ("warm_s", "warm s", ".4f"),
               ("warm_ratio", "warm x", ".1f"), ("cold_s", "cold s", ".2f"), ("cold_ratio", "cold x", ".2f"),
               ("fits_per_s", "fits/s", ".0f"), ("value", "value", ".8g"), ("converged", "converged", "")]
    print_table(rows, columns, title)
    errors = [r for r in rows if r.get("error")]
    for row in errors:
        print(f"{row['workspace']} {row['backend']} {row['task']}: {row['error']}")
    write_json(args.json, {"hep_infer": rows, "ntoys": ntoys, "repeats": repeats, "quick": args.quick})
    return 0


if __name__ == "__main__":
    sys.exit(main())
