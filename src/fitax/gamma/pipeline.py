"""The file-to-result jobs of fitax.gamma: DL3 runs to datasets (:func:`reduce_files`, ``fitax
gamma reduce``), and a fit: read Gammapy's files, fit, write the results.

``fitax gamma fit`` and ``fitax gamma demo`` both run :func:`fit_files`; as
:mod:`fitax.photometry.pipeline`, it is the unit of work a script or a cluster job can call.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from pathlib import Path

from ..io import atomic_write, check_not_input
from ._common import gammapy_yaml
from .datasets import read_datasets
from .fit import fit, sample, ts
from .mapdataset import MapDataset
from .modelio import read_models, write_models, write_results
from .models import FoVBackgroundModel, Models

__all__ = ["excess_map_files", "fit_files", "flux_points_files", "light_curve_files", "npred_files", "reduce_files"]


@contextlib.contextmanager
def _elapsed(label: str):
    """Show the time elapsed while a long computation (one compiled call, which reports no
    progress of its own) runs; on a terminal only."""
    if not sys.stderr.isatty():
        yield
        return
    from tqdm import tqdm

    done = threading.Event()
    bar = tqdm(desc=label, bar_format="{desc}: {elapsed} elapsed", leave=False)

    def tick():
        while not done.wait(0.5):
            bar.refresh()

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        bar.close()


def fit_files(datasets_path, models_path, out, ts_sources=(), plots: bool = True, num_samples: int = 0, seed: int = 0,
              psf_mode: str | None = None):
    """What ``fitax gamma fit`` does: read, fit, write ``out/models.yaml``,
    ``out/results.ecsv`` and the plots; returns the :class:`fitax.FitResult`.

    ``psf_mode`` (``"centre"`` or ``"position"``) overrides every sky model's
    :attr:`~fitax.gamma.SkyModel.psf_mode` (``None``: as ``models.yaml`` says).

    ``num_samples`` > 0: then draw that many posterior samples per chain (4 chains, as
    many warm-up iterations) from the fit (:func:`fitax.gamma.sample`), and write their
    summary ``out/posterior.ecsv`` (name, mean, std, q16, q50, q84, r_hat, ess per free
    parameter) and, with the plots, ``out/corner.png``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder")
    outputs = {name: out / name for name in ("models.yaml", "results.ecsv", "maps.png", "spectrum.png", "posterior.ecsv", "corner.png")}
    datasets = read_datasets(datasets_path, progress=True)
    inputs = [datasets_path, models_path] + [path for d in datasets for path in d.source_files]
    for path in outputs.values():
        check_not_input(path, inputs)
    models = _with_psf_mode(read_models(models_path), psf_mode)
    free = sum(p.is_free for p in models.parameters.values())
    print(f"Fitting {free} free parameters of {len(models)} models to {len(datasets)} dataset(s) "
          "(the first fit on this machine compiles the likelihood; the compiled code is cached)...", flush=True)
    start = time.perf_counter()
    with _elapsed("fitting"):
        result = fit(datasets, models)
    print(f"Fit done in {time.perf_counter() - start:.1f} s: {result.n_iterations} steps, {result.n_hessians} exact Hessians.")
    print(result)
    write_models(result.params, outputs["models.yaml"], errors=result.errors)
    write_results(result, outputs["results.ecsv"])
    written = [outputs["models.yaml"], outputs["results.ecsv"]]
    for source in ts_sources:
        # the null fit starts where the fit with the source started, so that both look up
        # the IRFs at the same positions
        test = ts(datasets, models, source, fitted=result)
        print(f"TS of {source}: {test.ts:.1f} ({test.significance:.1f} sigma for {test.df} degrees of freedom)")
    if plots:
        from .plots import plot_maps, plot_spectrum

        maps = [d for d in datasets if isinstance(d, MapDataset)]
        if maps:
            written.append(plot_maps(type(datasets)(maps), result.params, outputs["maps.png"]))
        written.append(plot_spectrum(datasets, result.params, result, outputs["spectrum.png"]))
    if num_samples > 0:
        print(f"Sampling the posterior: 4 chains of {num_samples} draws after {num_samples} warm-up iterations...", flush=True)
        start = time.perf_counter()
        with _elapsed("sampling"):
            samples = sample(datasets, result, num_samples=num_samples, seed=seed)
        print(f"Sampling done in {time.perf_counter() - start:.1f} s.")
        print(samples)
        samples.write(outputs["posterior.ecsv"])
        written.append(outputs["posterior.ecsv"])
        if plots:
            figure = samples.plot_corner()
            written.append(atomic_write(outputs["corner.png"], lambda tmp: figure.savefig(tmp, dpi=100, format="png")))
    print("Wrote " + ", ".join(str(p) for p in written))
    return result


def _with_psf_mode(models: Models, psf_mode: str | None) -> Models:
    return models if psf_mode is None else models.with_psf_mode(psf_mode)


def npred_files(datasets_path, models_path, out, psf_mode: str | None = None) -> list[Path]:
    """What ``fitax gamma npred`` does: each map dataset's predicted counts (sources and
    background) written as ``out/<dataset>_npred.fits``, a Gammapy map file
    (``Map.read`` reads it: the cube in the primary HDU, its energy axis in
    ``PRIMARY_BANDS``); ``psf_mode`` overrides the models' as in :func:`fit_files`.

    Example:
        >>> npred_files("sim/datasets.yaml", "sim/models_true.yaml", "npred", psf_mode="position")  # doctest: +SKIP
        [PosixPath('npred/obs000_npred.fits'), ...]
    """
    from astropy.io import fits

    from .io import bands_hdu, map_image_hdu

    out = _output_folder(out)
    datasets = read_datasets(datasets_path, progress=sys.stderr.isatty())
    models = _with_psf_mode(read_models(models_path), psf_mode)
    maps = [d for d in datasets if isinstance(d, MapDataset)]
    if not maps:
        raise ValueError(f"{datasets_path}: no MapDataset to predict counts for (npred maps need sky maps)")
    inputs = [datasets_path, models_path] + [path for d in datasets for path in d.source_files]
    paths = [out / f"{dataset.name}_npred.fits" for dataset in maps]
    for path in paths:
        check_not_input(path, inputs)
    out.mkdir(parents=True, exist_ok=True)
    # all at once: datasets of the same shapes are one stacked group, compiled once
    for dataset, path, npred in zip(maps, paths, type(datasets)(maps).npred(models)):
        bands = bands_hdu("PRIMARY", [("ENERGY", dataset.energy_edges, "log")])
        image = map_image_hdu("PRIMARY", npred, dataset.wcs, bands)
        hdus = fits.HDUList([fits.PrimaryHDU(image.data, header=image.header), bands])
        atomic_write(path, lambda tmp, hdus=hdus: hdus.writeto(tmp, output_verify="exception"))
        print(f"{dataset.name}: {npred.sum():.6g} predicted counts -> {path}")
    return paths


def _output_folder(out) -> Path:
    """``out`` as a folder to write into, checked before any work: an existing file there is an
    error, not a traceback after the computation."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder")
    return out


def _estimator_inputs(datasets_path, models_path, out, filename: str):
    """The output folder (checked before any work, never one of the inputs' files), the
    datasets and the models of an estimator job (none without ``models_path``)."""
    out = _output_folder(out)
    check_not_input(out / filename, [datasets_path] + ([] if models_path is None else [models_path]))
    models = Models([]) if models_path is None else read_models(models_path)
    return out, read_datasets(datasets_path, progress=sys.stderr.isatty()), models


def _fov_background_norms(datasets: list, settings: dict) -> dict:
    """Each dataset's FoV background ``(norm, error)``, ``None`` (with a warning) where
    Gammapy's maker fails."""
    import warnings

    from .geometry import nearest_pixel_values
    from .makers import fov_background_norm

    norms = {}
    for dataset in datasets:
        exclusion = None
        if settings["exclusion"] is not None:
            image, image_wcs = settings["exclusion"]
            exclusion = nearest_pixel_values(image, image_wcs, dataset.wcs, dataset.counts.shape[1:], fill=False)
        norms[dataset.name] = fov_background_norm(dataset, exclusion, settings["min_counts"], settings["min_npred_background"])
        if norms[dataset.name] is None:
            warnings.warn(f"{dataset.name}: the FoV background norm failed (too few counts or background outside the exclusion mask); "
                          "its safe mask is set to False, as Gammapy does", stacklevel=3)
    return norms


class _NamedObservations:
    """``(name, observation)`` of each run, or, with ``time_intervals``, of each run that
    overlaps each interval, cut to it (Gammapy's ``Observations.select_time``: intervals in
    order, then runs), named ``obs_<id>``, with the interval's index where a run is cut more
    than once; none overlapping is an error. Runs are read as they are reduced, one at a
    time (the overlaps are found first, each run read and let go)."""

    def __init__(self, store, runs: list[int], time_intervals):
        self.store, self.time_intervals = store, time_intervals
        if time_intervals is None:
            self.cuts = [(None, obs_id) for obs_id in runs]
            return
        overlapping = {obs_id: [store.observation(obs_id).overlaps(start, stop) for start, stop in time_intervals] for obs_id in runs}
        self.cuts = [(k, obs_id) for k in range(len(time_intervals)) for obs_id in runs if overlapping[obs_id][k]]
        if not self.cuts:
            raise ValueError(f"no selected run ({', '.join(map(str, runs))}) has good time within observations.obs_time")

    def __len__(self) -> int:
        return len(self.cuts)

    def __iter__(self):
        repeated = {obs_id for _, obs_id in self.cuts if sum(other == obs_id for _, other in self.cuts) > 1}
        for k, obs_id in self.cuts:
            observation = self.store.observation(obs_id)
            if k is not None:
                observation = observation.select_time(*self.time_intervals[k])
            yield (f"obs_{obs_id}_{k}" if obs_id in repeated else f"obs_{obs_id}"), observation


def _reduce_spectra(config, observations: list, progress) -> list:
    """The on-off spectra of the named ``observations`` (1D configuration), those without an
    OFF region left out (as Gammapy), stacked into one if the configuration says so."""
    from .spectrum_reduce import spectrum_onoff_file, stack_spectra

    spectra = []
    for name, observation in observations:
        spectrum = spectrum_onoff_file(
            observation, config.on_region, config.energy_edges, config.energy_true_edges, config.safe_mask_methods,
            config.safe_mask_offset_max, config.safe_mask_parameters, config.containment_correction, config.finder, config.exclusion,
            name=name,
        )  # fmt: skip
        if spectrum is not None:
            spectra.append(spectrum)
        progress()
    if not spectra:
        raise ValueError(f"no OFF region found for any of the {len(observations)} runs (outside the exclusion mask): no spectrum made")
    return [stack_spectra(spectra)] if config.stack else spectra


def _write_spectra(spectra: list, out: Path) -> Path:
    """``out/pha_<name>.fits`` per spectrum, ``models.yaml`` (no background models: WStat
    profiles the background) and ``datasets.yaml`` last, as Gammapy's ``Datasets.write``."""
    from .io import write_spectrum_onoff

    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for spectrum in spectra:
        filename = f"pha_{spectrum.name}.fits"
        write_spectrum_onoff(spectrum, out / filename)
        entries.append({"name": spectrum.name, "type": "SpectrumDatasetOnOff", "filename": filename})
    write_models(Models([]), out / "models.yaml")
    text = gammapy_yaml({"datasets": entries})
    return atomic_write(out / "datasets.yaml", lambda tmp: tmp.write_text(text))


def point_like_spectra_files(store_path, position, energy_edges, energy_true_edges, out, *, obs_ids=None, n_off_regions: int = 1,
                             safe_mask_methods=("aeff-default",)) -> Path:
    """On-off spectra of point-like runs (a ``RAD_MAX`` cut, as MAGIC and LST write them) at
    ``position`` (a point ON region, ``n_off_regions`` wobble OFF points), written to ``out``
    as :func:`reduce_files` writes 1D spectra (``pha_<name>.fits``, ``models.yaml``,
    ``datasets.yaml`` last): what Gammapy's configuration cannot express. ``obs_ids``: default
    every run of the data store. Runs whose ON and OFF points lie within twice a cut radius
    are left out with a warning. Returns the ``datasets.yaml`` path.

    Example:
        >>> point_like_spectra_files("magic/rad_max/data", SkyCoord(83.633, 22.014, unit="deg"),
        ...                          np.geomspace(0.05, 50, 21) * u.TeV, np.geomspace(0.01, 100, 31) * u.TeV, "magic")  # doctest: +SKIP
        PosixPath('magic/datasets.yaml')
    """
    from regions import PointSkyRegion

    from .dl3 import DataStore
    from .spectrum_reduce import WobbleRegionsFinder, spectrum_onoff_file

    store = DataStore.from_dir(store_path)
    finder = WobbleRegionsFinder(n_off_regions=n_off_regions)
    runs = store.obs_ids if obs_ids is None else list(obs_ids)
    spectra = [s for obs_id in runs if (s := spectrum_onoff_file(store.observation(obs_id), PointSkyRegion(position), energy_edges,
                                                                   energy_true_edges, safe_mask_methods, finder=finder)) is not None]
    if not spectra:
        raise ValueError(f"{store_path}: no spectrum made (every run's OFF points lie within twice its cut radius of the ON point)")
    return _write_spectra(spectra, Path(out))


def reduce_files(config_path, out, progress: bool | None = None) -> Path:
    """Reduce the runs a Gammapy ``AnalysisConfig`` YAML selects and write them to ``out`` as
    Gammapy's ``Datasets.write(path, filename_models=...)`` does. 3D: one dataset per run cut
    out around its pointing, as Gammapy's high-level analysis (or with ``stack: true`` these
    stacked into one named ``stacked``), one MapDataset file per dataset and ``models.yaml``
    with each dataset's ``FoVBackgroundModel``; 1D: an on-off spectrum per run (or stacked)
    with reflected-region OFF counts, ``pha_<name>.fits`` each. ``datasets.yaml`` lists them
    in the order of the configured runs. Runs without one of the configured ``required_irf`` are
    left out with a warning (Gammapy's ``skip_missing``). Every dataset is made before any
    file is written, each file atomically, ``datasets.yaml`` last. Returns its path.

    Example:
        >>> reduce_files("analysis.yaml", "crab")  # doctest: +SKIP
        PosixPath('crab/datasets.yaml')
    """
    import dataclasses
    import warnings

    import numpy as np
    from tqdm import tqdm

    from .analysis_config import SpectrumReductionConfig, read_analysis_config
    from .io import write_map_dataset
    from .makers import make_map_datasets

    out = _output_folder(out)
    config = read_analysis_config(config_path)
    store, runs = config.datastore, []
    for obs_id in config.obs_ids:
        missing = [kind for kind in config.required_irf if store.hdu_location(obs_id, kind) is None]
        if missing:
            warnings.warn(f"obs {obs_id} left out: the data store has no {', '.join(missing)} for it (observations.required_irf)", stacklevel=2)
        else:
            runs.append(obs_id)
    if not runs:
        point_like = [obs_id for obs_id in config.obs_ids if store.hdu_location(obs_id, "rad_max") is not None]
        hint = (f"; runs {point_like} have point-like IRFs (RAD_MAX), which Gammapy's configuration cannot reduce: use "
                "fitax.gamma.pipeline.point_like_spectra_files") if point_like else ""
        raise ValueError(f"{config_path}: no run selected (of {len(config.obs_ids)} matching the observation selection) has every "
                         f"required IRF{hint}")
    observations = _NamedObservations(store, runs, config.time_intervals)
    bar = tqdm(total=len(observations), desc="reducing runs", unit="run", disable=not sys.stderr.isatty() if progress is None else not progress)
    if isinstance(config, SpectrumReductionConfig):
        with bar:
            return _write_spectra(_reduce_spectra(config, observations, lambda: bar.update(1)), out)
    with bar:
        datasets = make_map_datasets(store, runs, config.geometry, config.safe_mask_methods, config.safe_mask_offset_max,
                                     offset_max=config.offset_max, progress=lambda name: bar.update(1),
                                     safe_mask_parameters=config.safe_mask_parameters, observations=observations)
    dropped = {"background": {"background": None}, "psf": {"psf": None, "psf_exposure": None},
               "edisp": {"edisp": None, "edisp_exposure": None}}  # fmt: skip
    norms = _fov_background_norms(datasets, config.fov_background) if config.fov_background is not None else {}
    failed = {name for name, norm in norms.items() if norm is None}
    datasets = [dataclasses.replace(d, mask_safe=np.zeros_like(d.mask_safe)) if d.name in failed else d for d in datasets]
    if config.stack:
        from .stacking import stack_map_datasets, stacking_geometry

        # Gammapy stacks each run's background scaled by its FoV norm
        datasets = [stack_map_datasets(stacking_geometry(config.geometry, datasets),
                                       [dataclasses.replace(d, background=d.background * norms[d.name][0]) if norms.get(d.name) else d
                                        for d in datasets])]
        norms = {}
    for kind, fields in dropped.items():
        if kind not in config.map_selection:
            datasets = [dataclasses.replace(d, **fields) for d in datasets]
    models = Models([FoVBackgroundModel(d.name, norm=norms[d.name][0]) if norms.get(d.name) else FoVBackgroundModel(d.name) for d in datasets])
    errors = {f"{name}-bkg.norm": norm[1] for name, norm in norms.items() if norm is not None}
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for dataset in datasets:
        filename = f"{dataset.name}.fits"  # uncompressed, as Gammapy writes them: gzip would take longer than the reduction
        write_map_dataset(dataset, out / filename)
        entries.append({"name": dataset.name, "type": "MapDataset", "filename": filename})
    write_models(models, out / "models.yaml", errors=errors)
    text = gammapy_yaml({"datasets": entries})
    return atomic_write(out / "datasets.yaml", lambda tmp: tmp.write_text(text))


def flux_points_files(datasets_path, models_path, out, source: str, energy_edges, plots: bool = True, reoptimize: bool = False) -> Path:
    """Flux points of ``source`` (:func:`fitax.gamma.estimators.flux_points`) from Gammapy's
    files, written to ``out/flux_points.fits`` (readable by Gammapy's ``FluxPoints.read``)
    with the SED plot ``out/flux_points.png``; returns the FITS path.

    Example:
        >>> flux_points_files("datasets.yaml", "fit/models.yaml", "sed", "crab", [1, 3, 10])  # doctest: +SKIP
        PosixPath('sed/flux_points.fits')
    """
    import astropy.units as u

    from .estimators import flux_points
    from .plots import plot_flux_points

    out, datasets, models = _estimator_inputs(datasets_path, models_path, out, "flux_points.fits")
    points = flux_points(datasets, models, source, u.Quantity(energy_edges, "TeV"), reoptimize=reoptimize)
    out.mkdir(parents=True, exist_ok=True)
    path = points.write(out / "flux_points.fits")
    if plots:
        plot_flux_points(points, models[source], out / "flux_points.png")
    return path


def light_curve_files(datasets_path, models_path, out, source: str, energy_edges, time_bins=None, plots: bool = True,
                      reoptimize: bool = False) -> Path:
    """The light curve of ``source`` (:func:`fitax.gamma.estimators.light_curve`) from
    Gammapy's files: per run (each good time interval), or in the contiguous ``time_bins``
    [MJD, TT]; written to ``out/light_curve.fits`` (Gammapy's ``lightcurve`` format) with
    ``out/light_curve.png``; returns the FITS path.

    Example:
        >>> light_curve_files("datasets.yaml", "fit/models.yaml", "lc", "pks2155", [0.7, 10])  # doctest: +SKIP
        PosixPath('lc/light_curve.fits')
    """
    import astropy.units as u
    from astropy.time import Time

    from .estimators import light_curve
    from .plots import plot_light_curve

    out, datasets, models = _estimator_inputs(datasets_path, models_path, out, "light_curve.fits")
    intervals = None
    if time_bins is not None:
        edges = Time(time_bins, format="mjd", scale="tt")
        intervals = list(zip(edges[:-1], edges[1:]))
    curve = light_curve(datasets, models, source, u.Quantity(energy_edges, "TeV"), intervals, reoptimize=reoptimize)
    out.mkdir(parents=True, exist_ok=True)
    path = curve.write(out / "light_curve.fits")
    if plots:
        plot_light_curve(curve, out / "light_curve.png")
    return path


def excess_map_files(datasets_path, models_path, out, correlation_radius: float, energy_edges=None, plots: bool = True) -> Path:
    """Excess and significance maps (:func:`fitax.gamma.estimators.excess_map`) of the single
    (stacked) dataset of Gammapy's files, the background predicted by the models (``None``: no
    sources, the background template as it is; an on-off dataset's background is measured), written to
    ``out/excess_map.fits`` with ``out/excess_map.png``; returns the FITS path.

    Example:
        >>> excess_map_files("stacked/datasets.yaml", "stacked/models.yaml", "maps", 0.1)  # doctest: +SKIP
        PosixPath('maps/excess_map.fits')
    """
    import astropy.units as u

    from .estimators import excess_map
    from .plots import plot_excess_map

    out, datasets, models = _estimator_inputs(datasets_path, models_path, out, "excess_map.fits")
    if len(datasets) != 1:
        raise ValueError(f"{datasets_path}: an excess map is made of one dataset, found {len(datasets)} ({', '.join(datasets.names)}); "
                         "stack the runs first (fitax gamma reduce with stack: true), as Gammapy asks")
    maps = excess_map(datasets[0], models, correlation_radius * u.deg,
                      None if energy_edges is None else u.Quantity(energy_edges, "TeV"))
    out.mkdir(parents=True, exist_ok=True)
    path = maps.write(out / "excess_map.fits")
    if plots:
        plot_excess_map(maps, out / "excess_map.png")
    return path


def ts_map_files(datasets_path, models_path, out, kernel: str = "point", index: float = 2.0, kernel_width: float = 1.0,
                 energy_edges=None, errors: bool = False, plots: bool = True) -> Path:
    """TS maps (:func:`fitax.gamma.ts_map.ts_map`) of the datasets of Gammapy's files (one, or
    several on one sky grid fitted jointly) on top of the models' predicted counts, written to
    ``out/ts_map.fits`` (Gammapy's ``FluxMaps`` format, with ``out/ts_map_model.yaml``) and
    ``out/ts_map.png``; ``kernel`` is ``"point"`` or ``"gaussian:0.1deg"``; returns the FITS path.

    Example:
        >>> ts_map_files("stacked/datasets.yaml", "stacked/models.yaml", "maps", kernel="gaussian:0.1deg")  # doctest: +SKIP
        PosixPath('maps/ts_map.fits')
    """
    import astropy.units as u

    from .plots import plot_ts_map
    from .ts_map import kernel_model, ts_map

    kind, _, width = kernel.partition(":")
    if kind not in ("point", "gaussian") or (kind == "gaussian") != bool(width):
        raise ValueError(f"--kernel {kernel!r}: expected 'point' or 'gaussian:WIDTH', e.g. gaussian:0.1deg")
    sigma = None
    if width:
        try:
            sigma = float(u.Quantity(width).to_value("deg"))
        except (ValueError, TypeError, u.UnitsError) as error:
            raise ValueError(f"--kernel {kernel!r}: the Gaussian width must be an angle, e.g. gaussian:0.1deg") from error
    source = kernel_model(kind, index=index, sigma=sigma)
    out, datasets, models = _estimator_inputs(datasets_path, models_path, out, "ts_map.fits")
    maps = ts_map(datasets, models, source, kernel_width * u.deg, None if energy_edges is None else u.Quantity(energy_edges, "TeV"),
                  errors=errors)
    out.mkdir(parents=True, exist_ok=True)
    path = maps.write(out / "ts_map.fits")
    if plots:
        plot_ts_map(maps, out / "ts_map.png")
    return path
