"""``fitax phot calibrate`` and ``fitax phot run``: the photometry pipeline from the shell.

Many images in one call are processed one after another in this process (the compiled fits
are reused: every image runs the same programs), or as Dask tasks over ``--workers`` local
processes or the cluster at ``--scheduler`` (see :mod:`fitax.photometry.many`). One image that
fails is reported and the rest are processed; a re-run skips images whose catalog was already
made with the same options; the run ends with its per-stage times, throughput and memory.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["add_parser", "run"]


def add_parser(commands) -> None:
    phot = commands.add_parser("phot", help="survey-image calibration and PSF photometry")
    sub = phot.add_subparsers(dest="phot_command", metavar="STEP", required=True)
    cal = sub.add_parser("calibrate", help="master bias/flat, then raw frames -> electrons (+ MASK extension)")
    cal.add_argument("raw", nargs="*", help="raw frame(s) [ADU]; one raw frame may follow the --flat list "
                     "(the last file named), several go before the options")
    cal.add_argument("--bias", nargs="+", required=True, help="bias frames (or one master bias)")
    cal.add_argument("--flat", nargs="+", required=True, help="flat frames (or one master flat)")
    cal.add_argument("-o", "--out", required=True, help="output file (one raw frame) or folder (several)")
    cal.add_argument("--gain", type=float, help="e-/ADU (default: header GAIN)")
    cal.add_argument("--read-noise", type=float, help="e- (default: header READNOI)")
    cal.add_argument("--saturation", type=float, help="ADU (default: header SATURATE)")
    cal.add_argument("--sigma-clip", type=float, default=None, help="sigma-clip the master combination at this many sigma")
    run_p = sub.add_parser("run", help="PSF photometry of calibrated image(s) -> catalog(s)")
    run_p.add_argument("images", nargs="+", help="calibrated image(s) [e-]")
    run_p.add_argument("--catalog", help="source list (FITS, CSV, ECSV) instead of detection: x, y (0-based), X_IMAGE, Y_IMAGE "
                       "(SExtractor, 1-based), photutils' names, or ra, dec with the image WCS; every column is carried to the output")
    run_p.add_argument("--position-columns", metavar="X,Y", help="the catalog's two position columns (default: found by name)")
    run_p.add_argument("--pixel-origin", type=int, choices=(0, 1), help="pixel origin of those columns (default: 1 for *_IMAGE, else 0)")
    run_p.add_argument("--mask", help="bad-pixel mask image for one image (default: a MASK/BPM/DQ/MSK/FLAGS extension, "
                       "or ZTF's sibling *mskimg.fits)")
    run_p.add_argument("--mask-bits", metavar="BITS", help="comma-separated bit numbers of an integer mask that mark bad pixels, "
                       "e.g. 0,2-10,12 (default: every bit but the source planes the mask header names, e.g. ZTF's bits 1 and 11)")
    run_p.add_argument("--psf", choices=("moffat", "gaussian"), default="moffat", help="PSF model (default: moffat)")
    run_p.add_argument("--psf-degree", default="auto", choices=("auto", "0", "1", "2", "3"),
                       help="polynomial degree of the PSF shape's variation across the image; 0: constant "
                       "(default: auto, the data choose 0-2)")
    run_p.add_argument("--psf-grid", metavar="FILE", help="use this grid of ePSFs (photutils GriddedPSFModel / WebbPSF FITS "
                       "layout: DET_YX<i>, OVERSAMP) instead of fitting the PSF; it must cover the image")
    run_p.add_argument("--save-psf-grid", action="store_true", help="also write the fitted PSF as a 3 x 3 grid of ePSFs, "
                       "<catalog>_psfgrid.fits, in the WebbPSF layout (DET_YX = '(y, x)'; photutils up to 3.0 reads it as (x, y), "
                       "transposing the grid positions)")
    run_p.add_argument("-o", "--out", required=True, help="catalog file (one image) or folder (several)")
    run_p.add_argument("--threshold", type=float, default=5.0, help="detection threshold [sigma] (default: 5)")
    run_p.add_argument("--fit-shape", type=int, default=11, help="stamp size [pixels, odd] (default: 11)")
    run_p.add_argument("--read-noise", type=float, help="e- (default: header READNOI)")
    run_p.add_argument("--apertures", metavar="R1,R2,...", help="also aperture photometry at these radii [pixels], e.g. 3,5,8, "
                       "with the PSF-to-aperture correction of the largest")
    run_p.add_argument("--annulus", metavar="RIN,ROUT", help="local background annulus [pixels] (default: largest radius + 3, + 6)")
    run_p.add_argument("--reference", metavar="CATALOG", help="reference catalogue (FITS/CSV with ra, dec, magnitudes) to fit "
                       "the zero point MAGZP (needs the image WCS)")
    run_p.add_argument("--ref-mag", help="the reference's magnitude column (default: the only column ending in 'mag')")
    run_p.add_argument("--ref-colour", help="colour for the colour term: a column, or A-B of two magnitude columns (e.g. g-r)")
    run_p.add_argument("--match-radius", type=float, default=2.0, help="sky match radius [arcsec] (default: 2)")
    run_p.add_argument("--update-header", action="store_true", help="also write the zero point keywords into each image's header "
                       "(atomic rewrite)")
    run_p.add_argument("--overwrite", action="store_true", help="redo images whose catalog exists (default: skip those made with "
                       "the same options)")
    run_p.add_argument("--residual", action="store_true", help="also write <catalog>_residual.fits (image minus stars)")
    run_p.add_argument("--model", action="store_true", help="also write <catalog>_model.fits (the fitted stars)")
    run_p.add_argument("--workers", type=int, default=1, help="Dask worker processes on this machine for many images (default: 1, "
                       "in this process)")
    run_p.add_argument("--report", metavar="FILE.json", help="also write the run's report: each image's status, stage times "
                       "and message, throughput, memory")
    run_p.add_argument("--scheduler", metavar="ADDRESS", help="run the images on this Dask cluster (e.g. tcp://host:8786) instead")
    demo = sub.add_parser("demo", help="simulate raw frames, calibrate, detect, fit; write a catalog and plots")
    demo.add_argument("--out", default="results/photometry", help="output folder (default: results/photometry)")
    demo.add_argument("--stars", type=int, default=2000, help="number of simulated stars (default: 2000)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")


def _outputs(inputs: list[str], out: str, suffix: str) -> list[Path]:
    out = Path(out)
    if len(inputs) == 1 and not out.is_dir():
        return [out]
    if out.exists() and not out.is_dir():
        raise ValueError(f"-o {out}: with {len(inputs)} inputs, -o must be a folder")
    names = [Path(p).name.split(".")[0] + suffix for p in inputs]
    if len(set(names)) != len(names):
        raise ValueError("input file names collide once their extensions are dropped; process them separately")
    return [out / n for n in names]


def _progress(i: int, n: int, text: str, start: float) -> None:
    """One line per finished image: a bar, the count, the elapsed time and its summary."""
    done = int(30 * i / n)
    print(f"[{'#' * done}{'.' * (30 - done)}] {i}/{n}  {time.perf_counter() - start:6.1f} s  {text}", file=sys.stderr, flush=True)


def _master(paths: list[str], build):
    from .io import read_image

    if len(paths) == 1:
        return read_image(paths[0])[0]  # already a master
    return build(paths)


def _split_trailing_raw(args, argv: list[str]) -> None:
    """``--bias B*.fits --flat F*.fits RAW.fits`` (the documented form): the greedy list
    option swallowed the raw frame, which is the last file of the last list given."""
    if args.raw:
        return
    last = max(("--bias", "--flat"), key=lambda opt: max((i for i, a in enumerate(argv) if a == opt), default=-1))
    files = getattr(args, last.lstrip("-"))
    if len(files) < 2:
        raise ValueError(f"no raw frame given (after {last} {files[0]!r}); name the raw frame(s) before the options")
    args.raw = [files.pop()]


def _calibrate(args) -> int:
    from astropy.io import fits

    from ..io import atomic_write, check_not_input
    from .calibrate import calibrate, master_bias, master_flat
    from .io import read_image

    inputs = [*args.raw, *args.bias, *args.flat]
    outputs = _outputs(args.raw, args.out, "_cal.fits")
    for path in outputs:
        check_not_input(path, inputs)
    bias = _master(args.bias, lambda p: master_bias(p, sigma_clip=args.sigma_clip))
    flat = _master(args.flat, lambda p: master_flat(p, bias, sigma_clip=args.sigma_clip))
    start = time.perf_counter()
    for i, (raw_path, out) in enumerate(zip(args.raw, outputs)):
        raw, header = read_image(raw_path)

        def need(key, value):
            if value is not None:
                return value
            if key not in header:
                raise ValueError(f"{raw_path}: header has no {key}; pass it on the command line")
            return float(header[key])

        gain, read_noise = need("GAIN", args.gain), need("READNOI", args.read_noise)
        saturation = args.saturation if args.saturation is not None else header.get("SATURATE")
        image, _, mask = calibrate(raw, bias, flat, gain=gain, read_noise=read_noise, saturation=saturation)
        out_header = header.copy()
        for key in ("SATURATE", "BZERO", "BSCALE"):
            out_header.remove(key, ignore_missing=True)
        out_header["GAIN"] = (1.0, "calibrated: electrons")
        out_header["BUNIT"] = "electron"
        out_header["READNOI"] = (read_noise, "read noise [e-]")
        out_header["HISTORY"] = f"fitax phot calibrate: gain {gain} e-/ADU, {len(args.bias)} bias, {len(args.flat)} flat"
        hdus = fits.HDUList([fits.PrimaryHDU(image.astype(np.float32), out_header), fits.ImageHDU(mask.astype(np.uint8), name="MASK")])
        atomic_write(out, lambda tmp: hdus.writeto(tmp, overwrite=True))
        _progress(i + 1, len(args.raw), f"{Path(raw_path).name} -> {out.name} ({mask.sum()} masked pixels)", start)
    return 0


def _read_sources(path: str):
    from astropy.table import Table

    try:
        table = Table.read(path)
    except (OSError, ValueError) as error:
        raise ValueError(f"--catalog {path}: not a readable table (FITS, CSV, ECSV): {error}") from error
    table.meta["SOURCE"] = f"--catalog {path}"
    return table


def _bits(text: str) -> int:
    """``"0,2-4"`` -> 0b11101."""
    bits = 0
    try:
        for part in text.split(","):
            low, _, high = part.strip().partition("-")
            low, high = int(low), int(high or low)
            if not 0 <= low <= high < 64:
                raise ValueError
            for bit in range(low, high + 1):
                bits |= 1 << bit
    except ValueError:
        raise ValueError(f"--mask-bits {text!r}: expected comma-separated bit numbers 0-63 or increasing ranges, e.g. 0,2-10,12") from None
    return bits


def _run(args) -> int:
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    outputs = _outputs(args.images, args.out, "_cat.fits")
    if args.mask and len(args.images) > 1:
        raise ValueError("--mask names one mask image; with several images give each its MASK extension (or ZTF *mskimg.fits siblings)")
    if (args.position_columns or args.pixel_origin is not None) and not args.catalog:
        raise ValueError("--position-columns and --pixel-origin describe a --catalog; none was given")
    columns = None
    if args.position_columns:
        columns = tuple(c.strip() for c in args.position_columns.split(","))
        if len(columns) != 2:
            raise ValueError(f"--position-columns {args.position_columns!r}: expected two names, X,Y")
    if args.update_header and not args.reference:
        raise ValueError("--update-header writes the zero point found with --reference; none was given")
    reference = None
    if args.reference:
        from .zeropoint import read_reference, reference_magnitudes

        reference = read_reference(args.reference)
        reference_magnitudes(reference, args.ref_mag, args.ref_colour)  # its columns are checked before any image is fitted
    psf_grid = None
    if args.psf_grid:
        from .gridded import read_gridded_psf

        psf_grid = read_gridded_psf(args.psf_grid)
    options = dict(sources=_read_sources(args.catalog) if args.catalog else None, position_columns=columns, pixel_origin=args.pixel_origin,
                   mask=args.mask, bad_bits=_bits(args.mask_bits) if args.mask_bits else None, psf=args.psf,
                   psf_grid=psf_grid, save_psf_grid=args.save_psf_grid, psf_degree=args.psf_degree if args.psf_degree == "auto" else int(args.psf_degree),
                   fit_shape=args.fit_shape, threshold=args.threshold, read_noise=args.read_noise, residual=args.residual, model=args.model,
                   apertures=_radii(args.apertures, "--apertures") if args.apertures else None,
                   annulus=_radii(args.annulus, "--annulus", count=2) if args.annulus else None,
                   reference=reference, ref_mag=args.ref_mag, ref_colour=args.ref_colour, match_radius=args.match_radius,
                   update_header=args.update_header, overwrite=args.overwrite)
    from .many import process_file, run_many

    start = time.perf_counter()
    if len(args.images) == 1 and args.scheduler is None:  # its error is the command's error
        _progress(1, 1, process_file(args.images[0], str(outputs[0]), options, raise_errors=True).text, start)
        return 0
    report = run_many(args.images, outputs, options, workers=args.workers, scheduler=args.scheduler,
                      progress=lambda i, n, outcome: _progress(i, n, outcome.text, start))
    print(report.summary(), file=sys.stderr)
    if args.report:
        from ..io import atomic_write

        atomic_write(args.report, lambda tmp: tmp.write_text(json.dumps(report.to_dict(), indent=1)))
    if not report.failures:
        return 0
    print(f"fitax phot run: {len(report.failures)} of {len(args.images)} image(s) failed:", *(o.text for o in report.failures),
          sep="\n  ", file=sys.stderr)
    return 1


def _radii(text: str, option: str, count: int | None = None) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) < 0 or (count is not None and len(values) != count):
        raise ValueError(f"{option} {text!r}: expected {count or 'one or more'} comma-separated radii in pixels, e.g. 3,5,8")
    return values


def run(args: argparse.Namespace, argv: list[str]) -> int:
    try:
        if args.phot_command == "calibrate":
            _split_trailing_raw(args, argv)
            return _calibrate(args)
        if args.phot_command == "demo":
            from .demo import run_phot_demo

            run_phot_demo(args.out, n_stars=args.stars, seed=args.seed)
            return 0
        return _run(args)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"fitax phot {args.phot_command}: error: {error}", file=sys.stderr)
        return 2
