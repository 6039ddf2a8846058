"""Many images, one catalog each: the unit of work (:func:`process_file`), resumable and
failure-tolerant, and its execution in this process or over Dask workers.

Dask (``dask.distributed``) runs the images on a local cluster of single-threaded worker
processes (``workers``), or on an existing cluster (``scheduler`` address); it was chosen over
a process pool because the same call then spreads a survey over many machines. Each worker of
the local cluster pins JAX to one CPU device (``FITAX_CPU_DEVICES=1``, inherited from this
process); start the workers of a remote cluster with that variable set and one thread each
(``dask worker --nthreads 1``). Workers use the on-disk program and compilation caches
(:mod:`fitax.programs`), so only the first image of each worker pays for tracing.

Example:
    >>> from fitax.photometry.many import StageTimes
    >>> StageTimes({"read": 0.5, "psf": 1.0}).total
    1.5
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import resource
import time
from pathlib import Path

import numpy as np

__all__ = ["ImageOutcome", "StageTimes", "RunReport", "process_file", "run_many", "STAGES"]

STAGES = ("read", "detect", "psf", "stars", "apertures", "zero point", "write")
"""Stages of one image, in order, as :class:`StageTimes` reports them."""
_ZERO_POINT_KEYS = ("MAGZP", "MAGZPUNC", "MAGZPRMS", "NMATCHES", "CLRCOEFF", "CLRCOUNC", "PCOLOR")


@dataclasses.dataclass(frozen=True)
class StageTimes:
    """Seconds per stage of :data:`STAGES` (absent stages did not run)."""

    seconds: dict

    @property
    def total(self) -> float:
        return float(sum(self.seconds.values()))

    def __add__(self, other: "StageTimes") -> "StageTimes":
        keys = [s for s in STAGES if s in self.seconds or s in other.seconds]
        return StageTimes({k: self.seconds.get(k, 0.0) + other.seconds.get(k, 0.0) for k in keys})

    def __str__(self) -> str:
        return ", ".join(f"{k} {v:.2f}" for k, v in self.seconds.items())


@dataclasses.dataclass(frozen=True)
class ImageOutcome:
    """What happened to one image: ``status`` is ``"done"``, ``"skipped"`` (its catalog was
    already made with the same options) or ``"failed"``; ``text`` is the one-line report."""

    image: str
    status: str
    text: str
    times: StageTimes
    peak_memory_mb: float


def _options_key(image_path: str, options: dict) -> str:
    """What a finished catalog was made from: the options and the image's header (without
    the zero-point cards ``update_header`` writes, so a re-run still recognises it)."""
    from .io import read_image_header

    from .. import __version__

    header = read_image_header(image_path)
    cards = [(key, str(value)) for key, value in header.items() if key not in _ZERO_POINT_KEYS]
    described = {k: _describe(v) for k, v in sorted(options.items())
                 if k not in ("overwrite", "residual", "model", "update_header", "save_psf_grid")}
    return hashlib.sha256(json.dumps([__version__, described, cards], default=str).encode()).hexdigest()[:16]


def _describe(value):
    """An option as the key of :func:`_options_key`: tables (source lists, reference
    catalogues) and PSF grids by their content, so a changed file is a changed option."""
    from astropy.table import Table

    from .gridded import GriddedPSF

    if isinstance(value, Table):
        content = b"".join(np.asarray(value[name]).tobytes() for name in value.colnames)
        return [value.meta.get("SOURCE"), value.colnames, hashlib.sha256(content).hexdigest()[:16]]
    if isinstance(value, GriddedPSF):
        return [value.source, hashlib.sha256(np.asarray(value.data).tobytes()).hexdigest()[:16], value.grid_x, value.grid_y]
    return value


def _image_zero_point_cards(catalog_meta) -> dict:
    """The zero-point cards of a catalog as the image header should carry them: ``MAGZP`` for
    the image's units (DN when the image was read with a gain, ``IMGGAIN``)."""
    cards = {k: catalog_meta[k] for k in _ZERO_POINT_KEYS if k in catalog_meta}
    if "MAGZP" in cards and "IMGGAIN" in catalog_meta:
        cards["MAGZP"] = float(cards["MAGZP"]) - 2.5 * np.log10(float(catalog_meta["IMGGAIN"]))
    return cards


def _extra_outputs(out: str, options: dict) -> dict[str, Path]:
    """The files besides the catalog ``out`` that ``options`` ask for, by kind."""
    wanted = {"residual": options["residual"], "model": options["model"], "psfgrid": options["save_psf_grid"] and options["psf_grid"] is None}
    return {kind: Path(out).with_name(f"{Path(out).stem}_{kind}.fits") for kind, asked in wanted.items() if asked}


def _finished(image_path: str, out: str, key: str, options: dict) -> bool:
    """Whether ``out`` is a whole catalog made with the options ``key`` (catalogs are written
    atomically and last, so a readable one is complete) and every other output asked for now
    exists: the residual and model images, the PSF grid, the zero point in the image header."""
    if not Path(out).exists() or not all(path.exists() for path in _extra_outputs(out, options).values()):
        return False
    from astropy.io import fits

    from .io import read_image_header

    try:
        with fits.open(out) as hdul:
            catalog_header = hdul[1].header
            if catalog_header.get("FITAXOPT") != key:
                return False
    except (OSError, IndexError, ValueError):
        return False
    if options["reference"] is not None and options["update_header"]:
        written, expected = read_image_header(image_path).get("MAGZP"), _image_zero_point_cards(catalog_header).get("MAGZP")
        return written is not None and expected is not None and abs(written - expected) < 1e-9  # FITS cards round floats
    return True


def _peak_memory_mb() -> float:
    """This process's peak resident memory [MB] (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def process_file(image_path: str, out: str, options: dict, *, raise_errors: bool = False) -> ImageOutcome:
    """One image file to one catalog file, with ``options`` as ``fitax phot run`` builds
    them. A failure (unreadable image, no WCS for a zero point, ...) becomes a ``"failed"``
    outcome unless ``raise_errors``."""
    from .pipeline import STAGE_KEYWORDS

    start = time.perf_counter()
    try:
        key = _options_key(image_path, options)
        if not options["overwrite"] and _finished(image_path, out, key, options):
            return ImageOutcome(image_path, "skipped", f"{Path(image_path).name}: skipped, {Path(out).name} exists with the same "
                                "options (--overwrite to redo)", StageTimes({}), _peak_memory_mb())
        text, catalog, read, write = _process(image_path, out, options, key)
    except Exception as error:  # noqa: BLE001 - one image's failure, whatever it is, must not stop a survey run
        if raise_errors:
            raise
        expected = isinstance(error, (ValueError, FileNotFoundError, RuntimeError, OSError))
        reason = str(error) if expected else f"{type(error).__name__}: {error} (unexpected: please report it)"
        return ImageOutcome(image_path, "failed", f"{Path(image_path).name}: FAILED: {reason}",
                            StageTimes({"read": time.perf_counter() - start}), _peak_memory_mb())
    seconds = {"read": read, **{stage: float(catalog.meta[k]) for stage, k in STAGE_KEYWORDS.items() if k in catalog.meta}, "write": write}
    return ImageOutcome(image_path, "done", text, StageTimes({s: seconds[s] for s in STAGES if s in seconds}), _peak_memory_mb())


def _process(image_path: str, out: str, options: dict, key: str):
    from astropy.io import fits

    from ..io import atomic_write
    from .gridded import GriddedPSF, write_gridded_psf
    from .io import update_image_header, write_catalog
    from .pipeline import process_image, read_calibrated, residual_image
    from .starfit import flag_summary
    from .varying import VaryingPSF

    t0 = time.perf_counter()
    data = read_calibrated(image_path, options["read_noise"], mask_path=options["mask"], bad_bits=options["bad_bits"])
    read = time.perf_counter() - t0
    catalog, shape = process_image(
        data, sources=options["sources"], position_columns=options["position_columns"], pixel_origin=options["pixel_origin"],
        psf=options["psf"], psf_degree=options["psf_degree"], psf_grid=options["psf_grid"], fit_shape=options["fit_shape"], threshold=options["threshold"],
        apertures=options["apertures"], annulus=options["annulus"], reference=options["reference"],
        reference_magnitude=options["ref_mag"], reference_colour=options["ref_colour"], match_radius=options["match_radius"])
    catalog.meta["FITAXOPT"] = key
    t0 = time.perf_counter()
    extra = _extra_outputs(out, options)
    if options["residual"] or options["model"]:
        residual = residual_image(data, catalog, shape.psf)
        for name, image in (("residual", residual), ("model", data.image - residual)):
            if name in extra:
                hdu = fits.PrimaryHDU(image.astype(np.float32), data.header)
                atomic_write(extra[name], lambda tmp, hdu=hdu: hdu.writeto(tmp, overwrite=True))
    if "psfgrid" in extra:
        fitted = shape.psf.at_point if isinstance(shape.psf, VaryingPSF) else (lambda x, y: shape.psf)
        write_gridded_psf(GriddedPSF.from_function(fitted, image_shape=data.image.shape), extra["psfgrid"], overwrite=True)
    meta = catalog.meta
    if options["reference"] is not None and options["update_header"]:
        # cards of an earlier run that this one does not write (a colour term) must not survive
        update_image_header(image_path, _image_zero_point_cards(meta), remove=[k for k in _ZERO_POINT_KEYS if k not in meta])
    # the catalog last: its presence tells a re-run that everything of this image was done
    write_catalog(catalog, out, inputs=[image_path])
    write = time.perf_counter() - t0
    if isinstance(shape.psf, GriddedPSF):
        width = f"PSF grid {meta['PSFGRID']} ({meta['PSFGRIDN']}), FWHM <= {shape.fwhm:.2f} px"
    elif shape.degree == 0:
        width = f"FWHM {shape.fwhm:.2f} px"
    else:
        width = f"FWHM {meta['PSFFWMIN']:.2f}-{meta['PSFFWMAX']:.2f} px (degree {shape.degree})"
    notes = [f"{len(catalog)} stars, {flag_summary(catalog['flags'])}", width,
             f"{int(data.mask.sum())} masked px" + (f" ({data.n_saturated} >= SATURATE)" if data.saturation is not None else "")]
    if options["apertures"]:
        notes.append(f"APCOR {meta['APCOR']:.4f} +- {meta['APCORERR']:.4f} ({meta['APCORN']} stars)")
    if options["reference"] is not None:
        notes.append(f"MAGZP {meta['MAGZP']:.4f} +- {meta['MAGZPUNC']:.4f} (rms {meta['MAGZPRMS']:.3f}, {meta['NZPUSED']}/{meta['NMATCHES']} matches)")
    return f"{Path(image_path).name}: " + "; ".join(notes), catalog, read, write


def _worker_task(image_path: str, out: str, options: dict) -> ImageOutcome:
    """:func:`process_file` in a Dask worker: the program caches on first."""
    from ..programs import enable_compilation_cache

    enable_compilation_cache()
    return process_file(image_path, out, options)


@dataclasses.dataclass(frozen=True)
class RunReport:
    """A run over many images: every outcome, the wall time and the number of workers."""

    outcomes: tuple[ImageOutcome, ...]
    seconds: float
    workers: int

    @property
    def failures(self) -> list[ImageOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    @property
    def images_per_hour(self) -> float:
        done = sum(o.status == "done" for o in self.outcomes)
        return 3600.0 * done / self.seconds if self.seconds > 0 else float("nan")

    def stage_means(self) -> dict:
        """Mean seconds per processed image in each stage."""
        done = [o for o in self.outcomes if o.status == "done"]
        total = sum((o.times for o in done), StageTimes({}))
        return {k: v / len(done) for k, v in total.seconds.items()} if done else {}

    def to_dict(self) -> dict:
        """The report as JSON-ready data (``fitax phot run --report``)."""
        return {"seconds": self.seconds, "workers": self.workers, "images_per_hour": self.images_per_hour,
                "stage_means": self.stage_means(), "peak_memory_mb": max((o.peak_memory_mb for o in self.outcomes), default=0.0),
                "images": [{"image": o.image, "status": o.status, "text": o.text, "stages": o.times.seconds,
                            "peak_memory_mb": o.peak_memory_mb} for o in self.outcomes]}

    def summary(self) -> str:
        """Stage times summed over the processed images, throughput and memory."""
        done = [o for o in self.outcomes if o.status == "done"]
        lines = [f"{len(done)} processed, {sum(o.status == 'skipped' for o in self.outcomes)} skipped, {len(self.failures)} failed "
                 f"in {self.seconds:.1f} s on {self.workers} worker(s): {self.images_per_hour:.0f} images/hour"]
        if done:
            lines.append("seconds per image by stage (mean): " + ", ".join(f"{k} {v:.2f}" for k, v in self.stage_means().items()))
            lines.append(f"peak memory per worker: {max(o.peak_memory_mb for o in self.outcomes):.0f} MB")
        return "\n".join(lines)


def run_many(images, outputs, options: dict, *, workers: int = 1, scheduler: str | None = None, progress=None) -> RunReport:
    """Process ``images`` into ``outputs`` (same order): in this process when ``workers`` is 1
    and no ``scheduler`` is given, else as Dask tasks on a local cluster of ``workers``
    single-threaded processes or on the cluster at ``scheduler``. ``progress(i, n,
    outcome)`` is called as each image finishes (in completion order)."""
    start = time.perf_counter()
    outcomes = []
    if workers == 1 and scheduler is None:
        for i, (image, out) in enumerate(zip(images, outputs)):
            outcomes.append(process_file(str(image), str(out), options))
            if progress:
                progress(i + 1, len(images), outcomes[-1])
        return RunReport(tuple(outcomes), time.perf_counter() - start, 1)
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError as error:  # a dependency of fitax; only a broken install lacks it
        raise RuntimeError(f"many images over several workers need dask.distributed: {error}") from error
    # one JAX CPU device per worker: the workers share the cores instead of oversubscribing
    os.environ.setdefault("FITAX_CPU_DEVICES", "1")
    cluster = None
    if scheduler is None:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=40)
    try:
        with Client(cluster if cluster is not None else scheduler) as client:
            n_workers = len(client.scheduler_info()["workers"])
            shared = client.scatter([options], broadcast=True)[0]
            futures = client.map(_worker_task, [str(i) for i in images], [str(o) for o in outputs], [shared] * len(images), pure=False)
            images_of = {future.key: str(image) for future, image in zip(futures, images)}
            for i, future in enumerate(as_completed(futures)):
                try:
                    outcome = future.result()
                except Exception as error:  # noqa: BLE001 - a worker that died: that image failed, the run goes on
                    image = images_of[future.key]
                    outcome = ImageOutcome(image, "failed", f"{Path(image).name}: FAILED: worker lost ({type(error).__name__}: {error})",
                                           StageTimes({}), 0.0)
                outcomes.append(outcome)
                if progress:
                    progress(i + 1, len(images), outcomes[-1])
    finally:
        if cluster is not None:
            cluster.close()
    order = {str(image): k for k, image in enumerate(images)}
    outcomes.sort(key=lambda o: order[o.image])
    return RunReport(tuple(outcomes), time.perf_counter() - start, n_workers)

