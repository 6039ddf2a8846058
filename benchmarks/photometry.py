"""Photometry benchmark: fitax.photometry vs photutils PSFPhotometry on the shared ZTF-like
quadrants (3080 x 3072, 1000 and 5000 stars), same calibrated image, same initial positions.

* Calibration: the raw frame with the reference master bias/flat (fitax.photometry.calibrate).
* Initial positions: the truth catalog plus 0.3 px Gaussian scatter, for both libraries.
* photutils as the shared data's README measured it: ``PSFPhotometry`` with ``ImagePSF``
  (the shared x4 oversampled PRF), fit_shape 11, ``SourceGrouper(8)``, TRF fitter, errors
  from the variance, and a local background from a 6-12 px annulus (``LocalBackground``
  with ``MMMBackground``; without it photutils fits no background and the sky inflates
  fluxes by ~50%). Forced photometry: x_0, y_0 fixed and no grouping (photutils 3.0 fails
  with a reshape error when fixed positions are fitted in groups). One core (Python loop).
* fitax: its PSF shape is fitted from the image (``fit_psf_shape``), not read from the
  headers; ``fit_stars`` (flux, x, y, local background; damped neighbour subtraction) and
  ``forced_photometry``. Default set-up: one JAX device per core (2 here). Times after
  compilation; compile reported separately.

Accuracy for both, on stars without failure flags (photutils: flags 0; fitax: no bit of
``FAILURE_FLAGS``, i.e. flag 64 "cosmic-ray pixels rejected" counts as a good measurement): median relative flux error and position RMS for
stars above 1e4 e-, robust std of flux pulls. Run: ``python benchmarks/photometry.py``.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from astropy.table import Table

from fitax.photometry.calibrate import calibrate
from fitax.photometry.io import read_image
from fitax.photometry.psfshape import fit_psf_shape, select_psf_stars
from fitax.photometry.starfit import FAILURE_FLAGS, fit_stars, forced_photometry

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine_summary, print_table, timed  # noqa: E402

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


def run_photutils(image, variance, mask, x0, y0, forced):
    from astropy.io import fits
    from astropy.modeling.fitting import TRFLSQFitter
    from photutils.background import LocalBackground, MMMBackground
    from photutils.psf import ImagePSF, PSFPhotometry, SourceGrouper

    psf = ImagePSF(fits.getdata(DATA / "prf_moffat_os4.fits").astype(float), oversampling=4)
    if forced:
        psf.x_0.fixed = True
        psf.y_0.fixed = True
    # photutils fits no background by itself: the sky is removed per star from an annulus.
    phot = PSFPhotometry(
        psf, 11, grouper=None if forced else SourceGrouper(min_separation=8), fitter=TRFLSQFitter(), aperture_radius=4,
        local_bkg_estimator=LocalBackground(6, 12, bkg_estimator=MMMBackground()),
    )
    init = Table({"x": x0, "y": y0})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result, seconds = timed(phot, image, mask=mask, error=np.sqrt(variance), init_params=init)
    result.sort("id")  # photutils orders rows by group; its ids follow init_params (1-based)
    columns = {"flux": result["flux_fit"], "flux_err": result["flux_err"]}
    if not forced:
        columns.update(x=result["x_fit"], y=result["y_fit"])
    catalog = Table(columns)
    return catalog, np.asarray(result["flags"]) == 0, seconds


def _peak_traced(fn, *args, **kwargs):
    """``(result, seconds, peak MB)``: NumPy reports its buffers to tracemalloc."""
    import tracemalloc

    tracemalloc.start()
    result, seconds = timed(fn, *args, **kwargs)
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return result, seconds, peak


def bench_masters(n_frames: int) -> None:
    """Master bias and flat from ``n_frames`` simulated 3080 x 3072 uint16 frames on disk:
    fitax (streamed by row blocks) against the plain NumPy recipe (stack all, median)."""
    import tempfile

    from astropy.io import fits

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
    print(f"\nmasters from {n_frames} frames of {shape[0]}x{shape[1]} (uint16 FITS on disk; NumPy: stack all, median):")
    print_table(
        [
            {"what": "master bias", "ours": t_bias, "ref": t_nbias, "mem": m_bias, "ref_mem": m_nbias, "diff": float(np.max(np.abs(ours_bias - ref_bias)))},
            {"what": "master flat", "ours": t_flat, "ref": t_nflat, "mem": m_flat, "ref_mem": m_nflat, "diff": float(np.max(np.abs(ours_flat - ref_flat)))},
        ],
        [("what", "", "s"), ("ours", "fitax [s]", ".1f"), ("ref", "NumPy [s]", ".1f"), ("mem", "fitax peak [MB]", ".0f"),
         ("ref_mem", "NumPy peak [MB]", ".0f"), ("diff", "max |difference|", ".2g")],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--master-frames", type=int, default=20, help="frames per master in the calibration benchmark (0: skip)")
    args = parser.parse_args()
    if not DATA.exists():
        sys.exit(f"shared photometry data not found at {DATA} (set FITAX_SHARED_DATA)")
    print(machine_summary())
    bias, _ = read_image(DATA / "master_bias_ref.fits.fz")
    flat, _ = read_image(DATA / "master_flat_ref.fits.fz")
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
        shape, shape_time = timed(fit_psf_shape, image, x0[chosen], y0[chosen], read_noise=read_noise, mask=mask)
        kw = dict(psf=shape.psf, read_noise=read_noise, mask=mask)
        print(f"\nN = {n}: read {read_time:.1f} s, calibrate {calib_time:.2f} s, PSF shape fit {shape_time:.1f} s "
              f"(incl. compile) -> {shape}")
        rows = []
        for forced in (False, True):
            fn = forced_photometry if forced else fit_stars
            xs, ys = (truth["x"], truth["y"]) if forced else (x0, y0)
            _, first = timed(fn, image, xs, ys, **kw)
            # median of 3 timed runs (photutils, at 10-40 s a run, is timed once)
            runs = [timed(fn, image, xs, ys, **kw) for _ in range(3)]
            catalog, seconds = runs[0][0], float(np.median([t for _, t in runs]))
            catalog.meta["forced"] = forced
            ours_ok = (np.asarray(catalog["flags"]) & FAILURE_FLAGS) == 0
            ours = {"library": "fitax", "mode": "forced" if forced else "free", "rate": n / seconds,
                    "compile": first - seconds, **accuracy(catalog, truth, ours_ok)}
            ref_catalog, ref_ok, ref_seconds = run_photutils(image, variance, mask, np.asarray(xs), np.asarray(ys), forced)
            ref = {"library": "photutils", "mode": ours["mode"], "rate": n / ref_seconds, **accuracy(ref_catalog, truth, ref_ok)}
            if not forced:
                # the same stars for both: good in both catalogs
                ours["pos_rms_common"] = accuracy(catalog, truth, ours_ok & ref_ok)["pos_rms"]
                ref["pos_rms_common"] = accuracy(ref_catalog, truth, ours_ok & ref_ok)["pos_rms"]
                bright = ours_ok & (np.asarray(truth["flux"]) > 1e4)
                expected = np.sqrt(np.mean(np.asarray(catalog["x_err"])[bright] ** 2 + np.asarray(catalog["y_err"])[bright] ** 2) / 2)
                print(f"  fitax position RMS expected from its own errors (>1e4 e-): {expected:.4f} px")
            ours["ratio"] = ours["rate"] / ref["rate"]
            rows += [ours, ref]
        print_table(rows, [("library", "library", "s"), ("mode", "mode", "s"), ("rate", "stars/s", ".0f"), ("ratio", "x photutils", ".1f"),
                           ("compile", "compile [s]", ".1f"), ("median_rel", "median rel err >1e4", "+.4%"),
                           ("pull_std", "pull robust std", ".3f"), ("pos_rms", "pos RMS >1e4 [px]", ".5f"),
                           ("pos_rms_common", "same stars", ".5f"), ("bad", "flagged", "d")])
        whole = calib_time + n / rows[0]["rate"]
        print(f"whole quadrant, calibrate + {n}-star free fit (compiled, PSF shape known): {whole:.1f} s")
    print(f"\npeak resident memory of this process (photometry): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    if args.master_frames:
        bench_masters(args.master_frames)


if __name__ == "__main__":
    main()
