"""Many quadrants through ``fitax phot run``: throughput per core and parallel efficiency
from 1 to 2 Dask workers, with the per-stage breakdown.

Data: ``--images`` simulated calibrated quadrants (``--size`` square, ``--stars`` Moffat stars
of 1e3-1e6 e-, sky 200 e-, read noise 10 e-, a celestial WCS), written once to a temporary
folder (not timed). Each run is what a user waits for from the shell: ``fitax phot run
DIR/*.fits -o OUT --overwrite --workers W --report R`` in a new process, with a warm program
cache (one untimed run of 2 images fills ``FITAX_CACHE_DIR`` first; each timed run starts from
its own copy of that cache, so no run inherits programs another compiled). The 1-worker run is
pinned to one core (``taskset -c 0``): quadrants/hour/core is then a per-core figure, not two
cores' work. Parallel efficiency = (T1 / TW) / W, where the 1-worker run is what ``--workers
1`` does, images one after another in the command's own process (no Dask), and W > 1 adds the
Dask cluster's start-up and task traffic to its time. Apertures and zero points are not
asked for: the timed work is reading, detection, PSF and star fits and writing (``T_APER`` and
``T_ZP`` in a catalog's header time those stages where a run asks for them).

Reported per run: wall time, quadrants/hour, quadrants/hour/core, seconds per quadrant per
core, mean seconds per stage inside the workers (read, detect, PSF, stars, write), and the
peak memory of a worker. The goal (issue 15): <= 2 s per quadrant per core end to end.
There is no reference library here: photutils' per-image cost is compared in
``benchmarks/photometry.py``.

Run: ``python benchmarks/photometry_many.py [--images 64] [--size 1024] [--stars 400]
[--workers 1 2] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

sys.path.insert(0, str(Path(__file__).parent))
from _common import write_json  # noqa: E402

from fitax.photometry.simulate import simulate_image  # noqa: E402


def write_quadrants(folder: Path, n: int, size: int, stars: int) -> list[Path]:
    paths = []
    for i in range(n):
        image, _ = simulate_image((size, size), stars, flux_range=(1e3, 1e6), seed=100 + i)
        wcs = WCS(naxis=2)
        wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        wcs.wcs.crval = [10.0 + i, 20.0]
        wcs.wcs.crpix = [size / 2, size / 2]
        wcs.wcs.cdelt = [-1.0 / 3600, 1.0 / 3600]
        header = wcs.to_header()
        header.update(GAIN=1.0, BUNIT="electron", READNOI=10.0)
        path = folder / f"quadrant_{i:03d}.fits"
        fits.PrimaryHDU(image.astype(np.float32), header).writeto(path)
        paths.append(path)
    return paths


def run_cli(images, out: Path, workers: int, report: Path, env: dict, pin: bool) -> float:
    command = [sys.executable, "-m", "fitax.cli", "phot", "run", *map(str, images), "-o", str(out), "--overwrite",
               "--workers", str(workers), "--report", str(report)]
    if pin:
        command = ["taskset", "-c", "0", *command]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"fitax phot run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--stars", type=int, default=400)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fitax_many_"))
    try:
        start = time.perf_counter()
        (work / "images").mkdir()
        images = write_quadrants(work / "images", args.images, args.size, args.stars)
        print(f"{len(images)} quadrants of {args.size}^2 with {args.stars} stars written in {time.perf_counter() - start:.0f} s (not timed)")
        env = {**os.environ, "FITAX_CACHE_DIR": str(work / "cache")}
        (work / "warm").mkdir()
        warm = run_cli(images[:2], work / "warm", 1, work / "warm.json", env, pin=True)
        print(f"warm-up (fills the program cache, untimed): {warm:.1f} s for 2 quadrants")
        rows, base = [], None
        for workers in args.workers:
            out = work / f"out_{workers}"
            out.mkdir()
            # every run starts from the same warm cache: a copy of what the warm-up left
            shutil.copytree(work / "cache", work / f"cache_{workers}")
            run_env = {**env, "FITAX_CACHE_DIR": str(work / f"cache_{workers}")}
            seconds = run_cli(images, out, workers, work / f"report_{workers}.json", run_env, pin=workers == 1)
            report = json.loads((work / f"report_{workers}.json").read_text())
            base = seconds if workers == 1 else base
            per_core = 3600 * len(images) / seconds / workers
            row = {"workers": workers, "quadrants": len(images), "size": args.size, "stars": args.stars, "wall_s": seconds,
                   "quadrants_per_hour": 3600 * len(images) / seconds, "quadrants_per_hour_per_core": per_core,
                   "s_per_quadrant_per_core": 3600 / per_core,
                   "parallel_efficiency": (base / seconds) / workers if base else float("nan"),
                   "stage_means_s": report["stage_means"], "peak_worker_memory_mb": report["peak_memory_mb"],
                   "failed": sum(i["status"] == "failed" for i in report["images"])}
            rows.append(row)
        print("\nTimed: `fitax phot run` over all quadrants from the shell (new process, warm program cache); "
              "1 worker pinned to one core")
        print(f"{'workers':>7} {'wall [s]':>9} {'quad/h':>8} {'quad/h/core':>11} {'s/quad/core':>11} {'efficiency':>10} "
              f"{'peak MB':>8}  stage means [s]")
        for r in rows:
            stages = ", ".join(f"{k} {v:.2f}" for k, v in r["stage_means_s"].items())
            print(f"{r['workers']:>7} {r['wall_s']:>9.1f} {r['quadrants_per_hour']:>8.0f} {r['quadrants_per_hour_per_core']:>11.0f} "
                  f"{r['s_per_quadrant_per_core']:>11.2f} {r['parallel_efficiency']:>10.2f} {r['peak_worker_memory_mb']:>8.0f}  {stages}")
        print("goal: <= 2 s per quadrant per core end to end")
        if args.json:
            write_json(args.json, {"photometry_many": rows})
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
