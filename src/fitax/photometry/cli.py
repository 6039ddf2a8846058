"""``fitax phot calibrate`` and ``fitax phot run``: the photometry pipeline from the shell.

Many images in one call are processed one after another in this process (the compiled fits
are reused: every image runs the same programs), or over ``--workers`` processes (each loads
them from the cache under ``FITAX_CACHE_DIR``, see :mod:`fitax.programs`); for many machines
use the Dask recipe in the README, with :func:`fitax.photometry.process_image` as the task.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
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
    run_p.add_argument("--catalog", help="FITS table of positions (x, y: 0-based pixel centres) instead of detection")
    run_p.add_argument("--psf", choices=("moffat", "gaussian"), default="moffat", help="PSF model (default: moffat)")
    run_p.add_argument("-o", "--out", required=True, help="catalog file (one image) or folder (several)")
    run_p.add_argument("--threshold", type=float, default=5.0, help="detection threshold [sigma] (default: 5)")
    run_p.add_argument("--fit-shape", type=int, default=11, help="stamp size [pixels, odd] (default: 11)")
    run_p.add_argument("--read-noise", type=float, help="e- (default: header READNOI)")
    run_p.add_argument("--residual", action="store_true", help="also write <catalog>_residual.fits (image minus stars)")
    run_p.add_argument("--model", action="store_true", help="also write <catalog>_model.fits (the fitted stars)")
    run_p.add_argument("--workers", type=int, default=1, help="processes for many images (default: 1)")
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
    done = int(30 * i / n)
    print(f"\r[{'#' * done}{'.' * (30 - done)}] {i}/{n}  {time.perf_counter() - start:6.1f} s  {text[:60]:<60}",
          end="\n" if i == n else "", file=sys.stderr, flush=True)


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


def _run_one(image_path: str, out: str, options: dict) -> str:
    """One image end to end (also the unit of work of ``--workers`` processes)."""
    from astropy.io import fits

    from ..io import atomic_write
    from .io import write_catalog
    from .pipeline import process_image, read_calibrated, residual_image

    data = read_calibrated(image_path, options["read_noise"])
    catalog, shape = process_image(data, positions=options["positions"], psf=options["psf"], fit_shape=options["fit_shape"], threshold=options["threshold"])
    write_catalog(catalog, out, inputs=[image_path])
    if options["residual"] or options["model"]:
        residual = residual_image(data, catalog, shape.psf)
        for wanted, suffix, image in ((options["residual"], "_residual", residual), (options["model"], "_model", data.image - residual)):
            if wanted:
                hdu = fits.PrimaryHDU(image.astype(np.float32), data.header)
                atomic_write(Path(out).with_name(Path(out).stem + suffix + ".fits"), lambda tmp, hdu=hdu: hdu.writeto(tmp, overwrite=True))
    n_bad = int(np.sum(np.asarray(catalog["flags"]) != 0))
    return f"{Path(image_path).name}: {len(catalog)} stars ({n_bad} flagged), FWHM {shape.fwhm:.2f} px"


def _read_positions(path: str):
    from astropy.table import Table

    try:
        table = Table.read(path)
    except (OSError, ValueError) as error:
        raise ValueError(f"--catalog {path}: not a readable table: {error}") from error
    missing = [c for c in ("x", "y") if c not in table.colnames]
    if missing:
        raise ValueError(f"--catalog {path}: missing column(s) {missing}; expected x, y (0-based pixel centres), got {table.colnames}")
    return np.asarray(table["x"], float), np.asarray(table["y"], float)


def _run(args) -> int:
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    outputs = _outputs(args.images, args.out, "_cat.fits")
    options = dict(positions=_read_positions(args.catalog) if args.catalog else None, psf=args.psf, fit_shape=args.fit_shape,
                   threshold=args.threshold, read_noise=args.read_noise, residual=args.residual, model=args.model)
    start = time.perf_counter()
    if args.workers == 1 or len(args.images) == 1:
        for i, (image, out) in enumerate(zip(args.images, outputs)):
            _progress(i + 1, len(args.images), _run_one(image, str(out), options), start)
        return 0
    # one JAX CPU device per worker, so the workers share the cores instead of oversubscribing
    os.environ.setdefault("FITAX_CPU_DEVICES", "1")
    # spawn, not fork: a forked JAX runtime can deadlock
    from ..programs import enable_compilation_cache

    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn"), initializer=enable_compilation_cache) as pool:
        futures = [pool.submit(_run_one, image, str(out), options) for image, out in zip(args.images, outputs)]
        for i, future in enumerate(futures):
            _progress(i + 1, len(futures), future.result(), start)
    return 0


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
