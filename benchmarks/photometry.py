"""Photometry benchmark: fitax.photometry vs photutils PSFPhotometry on the shared ZTF-like
quadrants (3080 x 3072, 1000 and 5000 stars), same calibrated image, same initial positions.

* Calibration: the raw frame with the reference master bias/flat (fitax.photometry.calibrate).
* Initial positions: the truth catalog plus 0.3 px Gaussian scatter, for both libraries.
* photutils as the shared data's README measured it: ``PSFPhotometry`` with ``ImagePSF``
  (the shared x4 oversampled PRF), fit_shape 11, ``SourceGrouper(8)``, TRF fitter, and a
  local background from a 6-12 px annulus (``LocalBackground`` with ``MMMBackground``;
  without it photutils fits no background and the sky inflates fluxes by ~50%). Forced
  photometry: x_0, y_0 fixed and no grouping (photutils 3.0 fails with a reshape error when
  fixed positions are fitted in groups): photutils still runs its iterative TRF fitter on
  the flux, while fitax's ``forced_photometry`` is one weighted linear solve per star (flux
  and background), so the forced rows compare different algorithms for the same answer.
  One core (Python loop).
* Weights: fitax weights pixels by its model variance (read noise^2 + predicted star +
  background counts; its API takes no variance image). photutils is run twice: with
  ``error`` from the data variance of the calibration (what its users pass), and with
  ``error`` from a model variance built like fitax's (read noise^2 + a smooth sky from
  ``Background2D`` + fitax's fitted stars rendered), so one photutils row has the same
  weights as fitax.
* fitax: its PSF shape is fitted from the image (``fit_psf_shape``), not read from the
  headers; ``fit_stars`` (flux, x, y, local background; damped neighbour subtraction) and
  ``forced_photometry``. Default set-up: one JAX device per core (2 here).

Timed (the tables say it again): every library and mode gets one untimed warm-up call
(fitax: compiles; its compile time is JAX's compile events in that call) and the median of
``--repeats`` timed calls; stars/s = N / that median; PSF shape fit excluded for both.
Time to result (fitax): ``process_image`` (PSF shape fit + star fit from given positions) on
the calibrated image in-process (median after warm-up), its compile (JAX compile events the
first time the PSF-shape fit and the star fit ran in the process), and ``fitax phot run
IMAGE --catalog POSITIONS -o OUT`` in a new process (read, fit the PSF and the stars, write
the catalog), empty ``FITAX_CACHE_DIR`` (cold) and re-run (warm).

Accuracy for both, on stars without failure flags (photutils: flags 0; fitax: no bit of
``FAILURE_FLAGS``, i.e. flag 64 "cosmic-ray pixels rejected" counts as a good measurement):
median relative flux error and position RMS for stars above 1e4 e-, robust std of flux
pulls.

Run: ``python benchmarks/photometry.py [--n 1000 5000] [--repeats 3] [--master-frames 20]
[--no-shell] [--json PATH]``; ``--quick``: N = 1000, one repeat, masters from 2 frames. A
full run takes ~40-50 min on 2 cores (photutils: 4 calls x 2 weightings per mode; N = 5000
free ~55 s a call).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table

from fitax.photometry.calibrate import calibrate
from fitax.photometry.io import read_image
from fitax.photometry.pipeline import process_image, read_calibrated
from fitax.photometry.psfshape import fit_psf_shape, select_psf_stars
from fitax.photometry.starfit import FAILURE_FLAGS, fit_stars, forced_photometry, render_stars

sys.path.insert(0, str(Path(__file__).parent))
from _common import (  # noqa: E402
    CompileClock, goal_line, goal_met, machine_summary, median_of, print_table, shell_times, timed, write_json,
)

DATA = Path(os.environ.get("FITAX_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "photometry"


def robust_std(a):
    a = np.asarray(a)[np.isfinite(a)]
    return 1.4826 * np.median(np.abs(a - np.median(a)))


def accuracy(catalog, truth, ok):
    bright = ok & (np.asarray(truth["flux"]) > 1e4)
    rel = (np.asarray(catalog["flux"]) - truth["flux"]) / truth["flux"]
    with np.errstate(divide="ignore", invalid="ignore"):  # photutils reports some zero errors
        pulls = (np.asarray(catalog["flux"]) - truth["flux"]) / np.asarray(catalog["flux_err"])
    row = {"median_rel": float(np.median(rel[bright])), "pull_std": robust_std(pulls[ok]), "bad": int((~ok).sum())}
    if "x" in catalog.colnames and not catalog.meta.get("forced"):
        d2 = (np.asarray(catalog["x"]) - truth["x"]) ** 2 + (np.asarray(catalog["y"]) - truth["y"]) ** 2
        row["pos_rms"] = float(np.sqrt(np.mean(d2[bright]) / 2))
    return row


def run_photutils(image, error, mask, x0, y0, forced, repeats):
    """``(catalog, good, median seconds)``: one untimed warm-up call, then ``repeats`` timed."""
    from astropy.modeling.fitting import TRFLSQFitter
    from photutils.background import LocalBackground, MMMBackground
    from photutils.psf import ImagePSF, PSFPhotometry, SourceGrouper

    psf = ImagePSF(fits.getdata(DATA / "prf_moffat_os4.fits").astype(float), oversampling=4)
    if forced:
        psf.x_0.fixed = True
        psf.y_0.fixed = True

    def call():
        # photutils fits no background by itself: the sky is removed per star from an annulus.
        phot = PSFPhotometry(
            psf, 11, grouper=None if forced else SourceGrouper(min_separation=8), fitter=TRFLSQFitter(), aperture_radius=4,
            local_bkg_estimator=LocalBackground(6, 12, bkg_estimator=MMMBackground()),
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return phot(image, mask=mask, error=error, init_params=Table({"x": x0, "y": y0}))

    call()
    result, seconds, _ = median_of(call, repeats)
    result.sort("id")  # photutils orders rows by group; its ids follow init_params (1-based)
    columns = {"flux": result["flux_fit"], "flux_err": result["flux_err"]}
    if not forced:
        columns.update(x=result["x_fit"], y=result["y_fit"])
    catalog = Table(columns)
    return catalog, np.asarray(result["flags"]) == 0, seconds


def model_variance(image, mask, catalog, psf, read_noise):
    """Per-pixel variance as fitax models it: read noise^2 + sky + stars, with the stars
    rendered from fitax's fitted catalog and the sky a smooth ``Background2D`` of the image
    without them."""
    from photutils.background import Background2D, MedianBackground

    ok = np.isfinite(np.asarray(catalog["flux"]))
    stars = render_stars(image.shape, np.asarray(catalog["flux"])[ok], np.asarray(catalog["x"])[ok],
                         np.asarray(catalog["y"])[ok], psf=psf)
    sky = Background2D(image - stars, 64, filter_size=3, mask=mask, bkg_estimator=MedianBackground()).background
    return read_noise**2 + np.maximum(sky + stars, 0.0)


def _peak_traced(fn, *args, **kwargs):
    """``(result, seconds, peak MB)``: NumPy reports its buffers to tracemalloc."""
    import tracemalloc

    tracemalloc.start()
    result, seconds = timed(fn, *args, **kwargs)
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return result, seconds, peak


def bench_masters(n_frames: int) -> list[dict]:
    """Master bias and flat from ``n_frames`` simulated 3080 x 3072 uint16 frames on disk:
    fitax (streamed by row blocks) against the plain NumPy recipe (stack all, median)."""
    from fitax.photometry.calibrate import master_bias, master_flat

    rng = np.random.default_rng(1)
    shape = (3080, 3072)
    with tempfile.TemporaryDirectory() as folder:
        bias_paths, flat_paths = [], []
        for i in range(n_frames):
            bias_paths.append(Path(folder) / f"bias{i}.fits")
            fits.PrimaryHDU(rng.normal(1000, 2, shape).astype(np.uint16)).writeto(bias_paths[-1])
            flat_paths.append(Path(folder) / f"flat{i}.fits")
            fits.PrimaryHDU((1000 + rng.normal(20000, 150, shape)).astype(np.uint16)).writeto(flat_paths[-1])

        def numpy_bias(paths):
            return np.median(np.stack([fits.getdata(p).astype(np.float64) for p in paths]), axis=0)

        def numpy_flat(paths, bias):
            frames = np.stack([fits.getdata(p).astype(np.float64) - bias for p in paths])
            frames /= np.median(frames, axis=(1, 2), keepdims=True)
            flat = np.median(frames, axis=0)
            return flat / np.median(flat)

        ours_bias, t_bias, m_bias = _peak_traced(master_bias, bias_paths)
        ref_bias, t_nbias, m_nbias = _peak_traced(numpy_bias, bias_paths)
        ours_flat, t_flat, m_flat = _peak_traced(master_flat, flat_paths, ours_bias)
        ref_flat, t_nflat, m_nflat = _peak_traced(numpy_flat, flat_paths, ref_bias)
    rows = [
        {"what": "master bias", "ours": t_bias, "ref": t_nbias, "mem": m_bias, "ref_mem": m_nbias, "diff": float(np.max(np.abs(ours_bias - ref_bias)))},
        {"what": "master flat", "ours": t_flat, "ref": t_nflat, "mem": m_flat, "ref_mem": m_nflat, "diff": float(np.max(np.abs(ours_flat - ref_flat)))},
    ]
    print()
    print_table(rows, [("what", "", "s"), ("ours", "fitax [s]", ".1f"), ("ref", "NumPy [s]", ".1f"), ("mem", "fitax peak [MB]", ".0f"),
                       ("ref_mem", "NumPy peak [MB]", ".0f"), ("diff", "max |difference|", ".2g")],
                title=f"masters from {n_frames} frames of {shape[0]}x{shape[1]} (uint16 FITS on disk; NumPy: stack all, median; one "
                      f"cold call each)")
    return rows


def fitax_call(fn, image, xs, ys, kw, repeats):
    """``(catalog, median seconds, compile seconds)``: one untimed warm-up call (compiles), then ``repeats`` timed."""
    with CompileClock() as clock:
        fn(image, xs, ys, **kw)
    catalog, seconds, _ = median_of(lambda: fn(image, xs, ys, **kw), repeats)
    return catalog, seconds, clock.seconds


MODES = {False: "free", True: "forced (fitax: linear solve; photutils: TRF fit)"}


def time_to_result(image, mask, header, read_noise, x0, y0, repeats, shell, folder: Path) -> dict:
    """fitax's whole image job (PSF shape + star fits from given positions): in-process,
    compile, and the ``fitax phot run`` command cold and warm."""
    image_path, positions_path, out = folder / "calibrated.fits", folder / "positions.fits", folder / "catalog.fits"
    calibrated = header.copy()
    for key in ("SATURATE", "BZERO", "BSCALE"):
        calibrated.remove(key, ignore_missing=True)
    calibrated["GAIN"], calibrated["BUNIT"], calibrated["READNOI"] = 1.0, "electron", read_noise
    fits.HDUList([fits.PrimaryHDU(image.astype(np.float32), calibrated),
                  fits.ImageHDU(mask.astype(np.uint8), name="MASK")]).writeto(image_path, overwrite=True)
    Table({"x": x0, "y": y0}).write(positions_path, overwrite=True)
    data = read_calibrated(image_path)
    with CompileClock() as clock:
        process_image(data, positions=(x0, y0))
    _, seconds, _ = median_of(lambda: process_image(data, positions=(x0, y0)), repeats)
    row = {"job": "process_image / `fitax phot run --catalog`", "in_process": seconds, "compile": clock.seconds}
    if shell:
        row["shell_cold"], row["shell_warm"] = shell_times([sys.executable, "-m", "fitax.cli", "phot", "run", str(image_path),
                                                            "--catalog", str(positions_path), "-o", str(out)])
        row["goal"] = goal_met(row["shell_warm"], seconds)
        print("  " + goal_line("`fitax phot run`", row["shell_warm"], seconds), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per library and mode (median), after one warm-up each")
    parser.add_argument("--master-frames", type=int, default=20, help="frames per master in the calibration benchmark (0: skip)")
    parser.add_argument("--no-shell", dest="shell", action="store_false", help="skip the `fitax phot run` shell timings")
    parser.add_argument("--json", help="write the rows to this JSON file")
    parser.add_argument("--quick", action="store_true", help="smoke test: N = 1000, one repeat, masters from 2 frames")
    args = parser.parse_args()
    if args.quick:
        args.n, args.repeats, args.master_frames = [1000], 1, 2
    if not DATA.exists():
        sys.exit(f"shared photometry data not found at {DATA} (set FITAX_SHARED_DATA)")
    print(machine_summary())
    bias, _ = read_image(DATA / "master_bias_ref.fits.fz")
    flat, _ = read_image(DATA / "master_flat_ref.fits.fz")
    folder = Path(tempfile.mkdtemp(prefix="fitax-phot-bench-"))
    tables = {"fits": [], "time_to_result": []}
    for n in args.n:
        (raw, header), read_time = timed(read_image, DATA / f"raw_sci_moffat_n{n}.fits.fz")
        truth = Table.read(DATA / f"truth_moffat_n{n}.fits", hdu=1)
        read_noise = float(header["READNOI"])
        (image, variance, mask), calib_time = timed(
            calibrate, raw, bias, flat, gain=float(header["GAIN"]), read_noise=read_noise, saturation=float(header["SATURATE"])
        )
        rng = np.random.default_rng(0)
        x0 = np.asarray(truth["x"]) + rng.normal(0, 0.3, n)
        y0 = np.asarray(truth["y"]) + rng.normal(0, 0.3, n)
        chosen = select_psf_stars(image, x0, y0, saturation_mask=mask)
        with CompileClock() as shape_clock:
            shape, shape_time = timed(fit_psf_shape, image, x0[chosen], y0[chosen], read_noise=read_noise, mask=mask)
        kw = dict(psf=shape.psf, read_noise=read_noise, mask=mask)
        print(f"\nN = {n}: read {read_time:.1f} s, calibrate {calib_time:.2f} s, PSF shape fit {shape_time:.1f} s "
              f"(incl. {shape_clock.seconds:.1f} s compile) -> {shape}", flush=True)
        rows, model_error = [], None
        for forced in (False, True):
            fn = forced_photometry if forced else fit_stars
            xs, ys = (np.asarray(truth["x"]), np.asarray(truth["y"])) if forced else (x0, y0)
            catalog, seconds, compile_time = fitax_call(fn, image, xs, ys, kw, args.repeats)
            catalog.meta["forced"] = forced
            ours_ok = (np.asarray(catalog["flags"]) & FAILURE_FLAGS) == 0
            ours = {"n": n, "library": "fitax", "weights": "model variance", "mode": MODES[forced], "seconds": seconds,
                    "rate": n / seconds, "compile": compile_time, **accuracy(catalog, truth, ours_ok)}
            if model_error is None:  # from the free fit's stars
                model_error = np.sqrt(model_variance(image, mask, catalog, shape.psf, read_noise))
            refs = []
            for weights, error in (("data variance", np.sqrt(variance)), ("model variance", model_error)):
                ref_catalog, ref_ok, ref_seconds = run_photutils(image, error, mask, xs, ys, forced, args.repeats)
                ref = {"n": n, "library": "photutils", "weights": weights, "mode": ours["mode"], "seconds": ref_seconds,
                       "rate": n / ref_seconds, **accuracy(ref_catalog, truth, ref_ok)}
                if not forced:
                    # the same stars for both: good in both catalogs
                    ref["pos_rms_common"] = accuracy(ref_catalog, truth, ours_ok & ref_ok)["pos_rms"]
                    ref["fitax_pos_rms_common"] = accuracy(catalog, truth, ours_ok & ref_ok)["pos_rms"]
                refs.append(ref)
            if not forced:
                bright = ours_ok & (np.asarray(truth["flux"]) > 1e4)
                expected = np.sqrt(np.mean(np.asarray(catalog["x_err"])[bright] ** 2 + np.asarray(catalog["y_err"])[bright] ** 2) / 2)
                print(f"  fitax position RMS expected from its own errors (>1e4 e-): {expected:.4f} px")
            for ref in refs:
                ref["ratio"] = ours["rate"] / ref["rate"]
            ours["ratio"] = ours["rate"] / refs[0]["rate"]
            ours["ratio_same_weights"] = ours["rate"] / refs[1]["rate"]
            rows += [ours, *refs]
        print_table(rows, [("library", "library", "s"), ("mode", "mode", "s"), ("weights", "weights", "s"),
                           ("rate", "stars/s", ".0f"), ("seconds", "in-process [s]", ".2f"), ("compile", "compile [s]", ".1f"),
                           ("ratio", "fitax x (data-variance photutils)", ".1f"),
                           ("ratio_same_weights", "fitax x (model-variance photutils)", ".1f"),
                           ("median_rel", "median rel err >1e4", "+.4%"), ("pull_std", "pull robust std", ".3f"),
                           ("pos_rms", "pos RMS >1e4 [px]", ".5f"), ("pos_rms_common", "same stars", ".5f"),
                           ("fitax_pos_rms_common", "fitax on them", ".5f"), ("bad", "flagged", "d")],
                    title=(f"N = {n}: in-process = median of {args.repeats} calls after one untimed warm-up call each, for both "
                           f"libraries (PSF shape fit excluded); compile = JAX compile events in fitax's warm-up; forced rows "
                           f"compare fitax's linear solve with photutils' iterative TRF fit; weights: fitax always uses its "
                           f"model variance, photutils is run with the data variance and with the same model variance"))
        tables["fits"] += rows
        whole = calib_time + rows[0]["seconds"]
        print(f"whole quadrant, calibrate + {n}-star free fit (compiled, PSF shape known): {whole:.1f} s")
        job = {"n": n, **time_to_result(image, mask, header, read_noise, x0, y0, args.repeats, args.shell, folder)}
        # the job's programs were first compiled above (PSF shape fit, free star fit): count those
        job["compile"] += shape_clock.seconds + rows[0]["compile"]
        print_table([job], [("n", "N", "d"), ("job", "job", "s"), ("in_process", "in-process [s]", ".2f"), ("compile", "compile [s]", ".1f"),
                            ("shell_cold", "shell cold [s]", ".1f"), ("shell_warm", "shell warm [s]", ".1f")],
                    title=(f"Time to result (fitax), N = {n}: in-process = median of {args.repeats} process_image calls (PSF shape "
                           f"+ star fits from the given positions) after a warm-up; compile = JAX compile events the first time "
                           f"the PSF-shape fit and the star fit ran in this process; shell = `fitax phot run IMAGE --catalog "
                           f"POSITIONS -o OUT` in a new process, empty cache (cold) and re-run (warm)"))
        tables["time_to_result"].append(job)
    print(f"\npeak resident memory of this process (photometry): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    if args.master_frames:
        tables["masters"] = bench_masters(args.master_frames)
    write_json(args.json, {**tables, "repeats": args.repeats, "notes": __doc__})


if __name__ == "__main__":
    main()
