"""Star fits with a grid of ePSFs (a PSF that changes across the image): fitax's
``GriddedPSF`` against photutils 3.0 ``PSFPhotometry`` with its ``GriddedPSFModel``, on the
same image, the same grid and the same initial positions.

Data: a simulated ``--size`` square image with ``--stars`` stars (1e3-1e6 e-, sky 200 e-, read
noise 10 e-) under a Gaussian PSF whose FWHM changes by ~20% across the field, and a
``--grid`` x ``--grid`` grid of the true ePSFs (x4 oversampled, 21 px), given to both.
Initial positions: truth + 0.3 px scatter.

photutils: ``PSFPhotometry(GriddedPSFModel, fit_shape 11, SourceGrouper(8), TRFLSQFitter,
aperture_radius 4, LocalBackground(6, 12, MMMBackground))`` with the data variance as error;
fitax: ``fit_stars(psf=GriddedPSF)`` (flux, position and local background per star, model
variance, neighbour subtraction) on the JAX CPU devices. Each side: one untimed warm-up call on
the full data, then ``--repeats`` timed calls (median); the grid object is built once outside
the timing for both (photutils' model, fitax's GriddedPSF), each call interpolates per star.

Also: fitax's compile time (JAX's compile events during the warm-up call) and the shell time
of ``fitax phot run IMAGE --catalog POSITIONS --psf-grid GRID`` (a new process, cold and warm
program cache), which includes reading, the fit and writing the catalog.

Run: ``python benchmarks/photometry_gridded.py [--size 2048] [--stars 2000] [--grid 5]
[--repeats 1] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import jax
import numpy as np
from astropy.io import fits
from astropy.table import Table

sys.path.insert(0, str(Path(__file__).parent))
from _common import CompileClock, machine_summary, median_of, shell_times, timed, write_json  # noqa: E402
from photometry import accuracy  # noqa: E402

from fitax.photometry.gridded import GriddedPSF, write_gridded_psf  # noqa: E402
from fitax.photometry.simulate import simulate_image  # noqa: E402
from fitax.photometry.starfit import fit_stars  # noqa: E402
from fitax.photometry.varying import VaryingPSF  # noqa: E402

READ_NOISE = 10.0


def photutils_fit(image, grid: GriddedPSF, x0, y0, repeats: int):
    from astropy.modeling.fitting import TRFLSQFitter
    from astropy.nddata import NDData
    from photutils.background import LocalBackground, MMMBackground
    from photutils.psf import GriddedPSFModel, PSFPhotometry, SourceGrouper

    tables = np.asarray(grid.data)[:, 2:-2, 2:-2]
    positions = [(x, y) for y in grid.grid_y for x in grid.grid_x]
    model = GriddedPSFModel(NDData(tables, meta={"grid_xypos": positions, "oversampling": grid.oversampling}))
    error = np.sqrt(np.maximum(image, 0.0) + READ_NOISE**2)

    def call():
        phot = PSFPhotometry(model, 11, grouper=SourceGrouper(min_separation=8), fitter=TRFLSQFitter(), aperture_radius=4,
                             local_bkg_estimator=LocalBackground(6, 12, bkg_estimator=MMMBackground()))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return phot(image, error=error, init_params=Table({"x": x0, "y": y0}))

    _, warm = timed(call)
    result, seconds, _ = median_of(call, repeats)
    result.sort("id")
    catalog = Table({"flux": result["flux_fit"], "flux_err": result["flux_err"], "x": result["x_fit"], "y": result["y_fit"]})
    return catalog, np.asarray(result["flags"]) == 0, seconds, warm


def fitax_fit(image, grid: GriddedPSF, x0, y0, repeats: int):
    with CompileClock() as clock:
        _, warm = timed(fit_stars, image, x0, y0, psf=grid, read_noise=READ_NOISE)
    catalog, seconds, _ = median_of(lambda: fit_stars(image, x0, y0, psf=grid, read_noise=READ_NOISE), repeats)
    return catalog, np.asarray(catalog["flags"]) == 0, seconds, warm, clock.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--stars", type=int, default=2000)
    parser.add_argument("--grid", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--no-shell", action="store_true", help="skip the shell (CLI) timing")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    print(machine_summary())
    shape = (args.size, args.size)
    true_psf = VaryingPSF.from_function(
        "gaussian", lambda u, v: {"sigma_x": 1.45 + 0.15 * u + 0.05 * v, "sigma_y": 1.4 + 0.13 * v, "rho": 0.08 * u}, degree=1, shape=shape)
    low, high = true_psf.fwhm_range(shape)
    image, truth = simulate_image(shape, args.stars, psf=true_psf, flux_range=(1e3, 1e6), seed=7)
    grid = GriddedPSF.from_function(true_psf.at_point, image_shape=shape, grid_shape=(args.grid, args.grid), size=21)
    rng = np.random.default_rng(8)
    x0, y0 = truth["x"] + rng.normal(0, 0.3, len(truth)), truth["y"] + rng.normal(0, 0.3, len(truth))
    print(f"{args.size}^2 image, {args.stars} stars, FWHM {low:.2f}-{high:.2f} px ({100 * (high / low - 1):.0f}% across), "
          f"{args.grid} x {args.grid} ePSF grid")

    ours, ours_ok, ours_s, ours_warm, compile_s = fitax_fit(image, grid, x0, y0, args.repeats)
    theirs, theirs_ok, theirs_s, theirs_warm = photutils_fit(image, grid, x0, y0, args.repeats)
    rows = []
    # accuracy on the stars both leave unflagged (a code that flags its hard stars would look
    # better on its own selection); fitax runs on every JAX CPU device, photutils on one core
    both = ours_ok & theirs_ok
    for name, catalog, ok, seconds, warm, cores in (("fitax GriddedPSF", ours, ours_ok, ours_s, ours_warm, jax.device_count()),
                                                   ("photutils GriddedPSFModel", theirs, theirs_ok, theirs_s, theirs_warm, 1)):
        rows.append({"code": name, "stars": args.stars, "size": args.size, "grid": args.grid, "seconds": seconds, "cores": cores,
                     "warm_up_seconds": warm, "stars_per_s": args.stars / seconds, **accuracy(catalog, truth, both),
                     "flagged": int((~ok).sum())})
    rows[0]["speedup"] = theirs_s / ours_s
    rows[0]["speedup_per_core"] = rows[0]["speedup"] / rows[0]["cores"]
    rows[0]["compile_s"] = compile_s

    if not args.no_shell:
        with tempfile.TemporaryDirectory(prefix="fitax-gridded-") as folder:
            folder = Path(folder)
            header = fits.Header({"GAIN": 1.0, "BUNIT": "electron", "READNOI": READ_NOISE})
            fits.PrimaryHDU(image.astype(np.float32), header).writeto(folder / "image.fits")
            Table({"x": x0, "y": y0}).write(folder / "stars.csv")
            write_gridded_psf(grid, folder / "grid.fits")
            cold, warm = shell_times([sys.executable, "-m", "fitax.cli", "phot", "run", str(folder / "image.fits"), "--catalog",
                                      str(folder / "stars.csv"), "--psf-grid", str(folder / "grid.fits"), "-o", str(folder / "cat.fits"),
                                      "--overwrite"])
        rows[0]["shell_cold_s"], rows[0]["shell_warm_s"] = cold, warm

    print("\nTimed: star fits only (image in memory, grid built), median of", args.repeats, "after one warm-up call each;")
    print(f"accuracy on the {int(both.sum())} stars both codes leave unflagged")
    print(f"{'':28} {'cores':>5} {'s':>7} {'stars/s':>8} {'x ph.':>6} {'x ph./core':>10} {'median flux err (>1e4)':>23} "
          f"{'pos RMS (>1e4)':>15} {'flagged':>8}")
    for r in rows:
        print(f"{r['code']:28} {r['cores']:5d} {r['seconds']:7.2f} {r['stars_per_s']:8.0f} {r.get('speedup', float('nan')):6.1f} "
              f"{r.get('speedup_per_core', float('nan')):10.1f} {100 * r['median_rel']:+22.3f}% {r.get('pos_rms', float('nan')):13.4f} px "
              f"{r['flagged']:8d}")
    print(f"fitax compile (first call): {compile_s:.1f} s")
    if "shell_cold_s" in rows[0]:
        print(f"fitax phot run --psf-grid from the shell: {rows[0]['shell_cold_s']:.1f} s cold, {rows[0]['shell_warm_s']:.1f} s warm")
    if args.json:
        write_json(args.json, {"photometry_gridded": rows})


if __name__ == "__main__":
    main()
