"""Simulated CTA-like observations, written in Gammapy's MapDataset format.

Instrument (analytic, chosen to resemble a CTA-like array at a few TeV, not any real one):

* effective area ``A(E) = 3e5 m2 (E / 1 TeV)^0.3 / (1 + (0.2 TeV / E)^2)`` times a Gaussian
  acceptance of 2 deg width around the pointing;
* PSF: a Gaussian of ``sigma(E) = 0.08 deg (E / 1 TeV)^-0.25`` (0.03 to 0.15 deg), wider by
  ``(1 + 0.1 offset^2)`` away from the pointing (so the PSF depends on the position), on a
  coarse grid as a PSF map;
* energy dispersion: log-normal with 10% resolution;
* background: ``1e-2 (E / 1 TeV)^-2.7`` counts TeV-1 deg-2 s-1 times the acceptance.

Counts are Poisson draws of fitax's own npred of the true models, so fits of them test
fitax against known truth, and the files are a test of the writer against Gammapy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.coordinates import SkyCoord
from astropy.wcs import WCS
from jax.scipy.special import ndtr

from ._common import gammapy_yaml
from .datasets import Datasets
from .mapdataset import MapDataset
from .io import MapDatasetFile, write_map_dataset
from .models import Models

__all__ = ["simulate_observation", "make_geometry", "write_datasets"]

_RAD_EDGES = np.linspace(0.0, 0.66, 67)


def make_geometry(centre: tuple[float, float] = (0.0, 0.0), npix: int = 80, binsz: float = 0.02, frame: str = "galactic") -> WCS:
    """A CAR WCS of ``npix x npix`` pixels of ``binsz`` deg centred on ``centre``."""
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["GLON-CAR", "GLAT-CAR"] if frame == "galactic" else ["RA---CAR", "DEC--CAR"]
    wcs.wcs.crval = list(centre)
    wcs.wcs.crpix = [(npix + 1) / 2, (npix + 1) / 2]
    wcs.wcs.cdelt = [-binsz, binsz]
    wcs.wcs.cunit = ["deg", "deg"]
    return wcs


def _offsets(wcs: WCS, shape, pointing: SkyCoord) -> np.ndarray:
    ny, nx = shape
    x, y = np.meshgrid(np.arange(nx), np.arange(ny))
    return wcs.pixel_to_world(x, y).separation(pointing).deg


def _psf_sigma(energy: np.ndarray, offset: np.ndarray, widening: float) -> np.ndarray:
    return np.clip(0.08 * energy**-0.25, 0.03, 0.15)[:, None, None] * (1 + widening * offset**2)[None]


def simulate_observation(
    models: Models,
    name: str,
    pointing: SkyCoord,
    livetime: float = 18000.0,
    *,
    wcs: WCS | None = None,
    npix: int = 80,
    energy_edges: np.ndarray | None = None,
    energy_true_edges: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
    psf_widening: float = 0.1,
    psf_nodes: int = 4,
) -> MapDataset:
    """One observation of ``models`` (sources and this dataset's background model) with
    the analytic instrument above; ``livetime`` in seconds. The PSF widens by a factor
    ``1 + psf_widening offset^2`` (offset in deg) and is tabulated on ``psf_nodes x
    psf_nodes`` positions across the map."""
    rng = np.random.default_rng(0) if rng is None else rng
    energy_edges = np.geomspace(0.5, 50.0, 13) if energy_edges is None else np.asarray(energy_edges, float)
    energy_true_edges = np.geomspace(0.3, 100.0, 21) if energy_true_edges is None else np.asarray(energy_true_edges, float)
    wcs = make_geometry(npix=npix) if wcs is None else wcs
    shape = (npix, npix)
    centres_true = np.sqrt(energy_true_edges[1:] * energy_true_edges[:-1])
    centres = np.sqrt(energy_edges[1:] * energy_edges[:-1])
    offset = _offsets(wcs, shape, pointing)
    acceptance = np.exp(-0.5 * (offset / 2.0) ** 2)
    area = 3e5 * centres_true**0.3 / (1 + (0.2 / centres_true) ** 2)
    exposure = area[:, None, None] * livetime * acceptance[None]
    pixel_area = float(np.abs(wcs.wcs.cdelt).prod())
    background = (1e-2 * centres**-2.7 * np.diff(energy_edges))[:, None, None] * pixel_area * livetime * acceptance[None]

    irf_wcs = make_geometry(tuple(wcs.wcs.crval), npix=psf_nodes, binsz=npix * float(abs(wcs.wcs.cdelt[0])) / psf_nodes,
                            frame=_frame(wcs))
    irf_offset = _offsets(irf_wcs, (psf_nodes, psf_nodes), pointing)
    rad = 0.5 * (_RAD_EDGES[1:] + _RAD_EDGES[:-1])
    sigma = _psf_sigma(centres_true, irf_offset, psf_widening)  # (true, nodes, nodes)
    psf = np.exp(-0.5 * (rad[None, :, None, None] / sigma[:, None]) ** 2) / (2 * np.pi * sigma[:, None] ** 2)
    log_edges = np.log(energy_edges)
    cdf = np.asarray(ndtr((log_edges[None, :] - np.log(centres_true)[:, None]) / 0.1))
    migration = np.diff(cdf, axis=1)  # (true, reco)
    edisp = np.broadcast_to(migration[:, :, None, None], migration.shape + (psf_nodes, psf_nodes)).copy()
    contents = MapDatasetFile(
        name=name, path=None, counts=np.zeros((len(centres),) + shape), exposure=exposure, background=background,
        mask_safe=np.ones((len(centres),) + shape, bool), mask_fit=None, energy_edges=energy_edges,
        energy_true_edges=energy_true_edges, wcs=wcs, psf=psf, psf_rad=rad, psf_rad_edges=_RAD_EDGES,
        psf_energy_true=centres_true, psf_wcs=irf_wcs, edisp=edisp, edisp_wcs=irf_wcs, livetime=livetime,
    )
    expected = MapDataset.from_file_contents(contents, name).npred(models)
    counts = rng.poisson(expected).astype(float)
    return MapDataset.from_file_contents(_replace(contents, counts=counts), name)


def _replace(contents: MapDatasetFile, **changes) -> MapDatasetFile:
    import dataclasses

    return dataclasses.replace(contents, **changes)


def _frame(wcs: WCS) -> str:
    return "galactic" if wcs.wcs.ctype[0].startswith("GLON") else "icrs"


def write_datasets(datasets: Datasets, folder) -> Path:
    """Write each dataset as ``<name>.fits.gz`` and a ``datasets.yaml`` listing them (with
    Gammapy's checksum)."""

    from ..io import atomic_write

    folder = Path(folder)
    entries = []
    for dataset in datasets:
        filename = f"{dataset.name}.fits.gz"
        write_map_dataset(_replace(dataset.irfs, counts=dataset.counts, name=dataset.name), folder / filename)
        entries.append({"name": dataset.name, "type": "MapDataset", "filename": filename})
    text = gammapy_yaml({"datasets": entries})
    return atomic_write(folder / "datasets.yaml", lambda tmp: tmp.write_text(text))
