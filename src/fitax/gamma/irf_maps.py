"""PSF maps and energy-dispersion kernel maps of a run, on a coarse sky grid, with Gammapy's
definitions (``make_psf_map``, ``make_edisp_kernel_map``; its ``MapDatasetMaker`` is the
reference).

An IRF map holds, at each pixel centre of a coarse grid (``coarse_wcs``, 0.2 deg by default,
as Gammapy's ``binsz_irf``), the run's PSF or energy dispersion at that pixel's offset from
the pointing. Host-side NumPy, every pixel and energy at once.

Example:
    >>> wcs_irf, shape_irf = coarse_wcs(wcs, (ny, nx), 0.2)  # doctest: +SKIP
    >>> psf = psf_map(obs.psf, obs.pointing, wcs_irf, shape_irf, true_edges)  # doctest: +SKIP
    >>> psf.shape  # (energy_true, rad, y, x) [deg-2]  # doctest: +SKIP
    (12, 66, 15, 15)
"""

from __future__ import annotations

import dataclasses

import numpy as np
from astropy import units as u
from astropy.coordinates import SkyCoord

from .dl3 import IRF
from .geometry import pixel_skycoords
from .reduce import axis_edges, evaluate_irf

__all__ = ["EDISP_THRESHOLD", "RAD_EDGES", "edisp_kernel_map", "psf_map"]

RAD_EDGES = np.linspace(0.0, 0.66, 67) * u.deg
"""Gammapy's default PSF-map offsets (``RAD_AXIS_DEFAULT``): 66 bins of 0.01 deg."""

EDISP_THRESHOLD = 1e-8
"""Kernel probabilities below this are set to 0 (Gammapy's numerical-artifact threshold)."""


def _centres(edges: u.Quantity, log: bool) -> u.Quantity:
    return np.sqrt(edges[:-1] * edges[1:]) if log else 0.5 * (edges[:-1] + edges[1:])


def _psf_values(psf: IRF, energy: u.Quantity, offset: u.Quantity, rad: u.Quantity) -> np.ndarray:
    """The PSF (unnormalised) at ``energy`` x ``rad`` x ``offset``, shape ``(energy, rad, y, x)``:
    a PSF table interpolated, or a parametric PSF from its interpolated parameters (3-Gauss:
    ``sum_i scale ampl_i / pi exp(-r^2 / 2 sigma_i^2)`` with ``ampl_1 = 1``; King:
    ``(1 - 1/gamma) / (2 pi sigma^2) (1 + r^2 / (2 gamma sigma^2))^-gamma``), as Gammapy's PSF
    classes."""
    energy, rad, offset = energy[:, None, None, None], rad[None, :, None, None], offset[None, None]
    if psf.hdu_class == "psf_table":
        return evaluate_irf(psf, energy_true=energy, offset=offset, rad=rad).value
    # widths written as 0 (where a file has no PSF) are read as 1, as Gammapy does, before interpolating
    columns = {c: np.where(v.value == 0, 1.0, v.value) * v.unit if c.startswith("SIGMA") else v for c, v in psf.columns.items()}
    psf = dataclasses.replace(psf, columns=columns)
    parameters = {column: evaluate_irf(psf, column, energy_true=energy, offset=offset) for column in psf.columns}
    r = rad.to_value("deg")

    def sigma(column: str) -> np.ndarray:
        return parameters[column].to_value("deg")

    if psf.hdu_class == "psf_3gauss":
        scale = parameters["SCALE"].value
        amplitudes = {"SIGMA_1": 1.0, "SIGMA_2": parameters["AMPL_2"].value, "SIGMA_3": parameters["AMPL_3"].value}
        return sum(scale * a / np.pi * np.exp(-0.5 * r**2 / sigma(c) ** 2) for c, a in amplitudes.items())
    if psf.hdu_class == "psf_king":
        width, gamma = sigma("SIGMA"), parameters["GAMMA"].value
        with np.errstate(divide="ignore", invalid="ignore"):
            return (1 - 1 / gamma) / (2 * np.pi * width**2) * (1 + r**2 / (2 * gamma * width**2)) ** -gamma
    raise ValueError(f"a PSF of class {psf.hdu_class} cannot be mapped (psf_table, psf_3gauss, psf_king)")


def psf_map(psf: IRF, pointing: SkyCoord, wcs, shape: tuple[int, int], energy_true_edges: u.Quantity,
            rad_edges: u.Quantity = RAD_EDGES) -> np.ndarray:
    """The PSF ``(energy_true, rad, ny, nx)`` [deg-2] at each pixel centre's offset from
    ``pointing``, each true-energy bin's (geometric) centre and each ``rad`` bin's centre,
    normalised so that ``sum 2 pi rad psf d(rad) = 1`` over the rad bins (0 where the PSF is
    0 everywhere: beyond the IRF's offsets), as Gammapy's ``make_psf_map``."""
    energy = _centres(u.Quantity(energy_true_edges), log=True)
    rad_edges = u.Quantity(rad_edges).to("deg")
    rad = _centres(rad_edges, log=False)
    offset = pixel_skycoords(wcs, shape).separation(pointing)
    values = _psf_values(psf, energy, offset, rad)
    weights = (2 * np.pi * rad.value * np.diff(rad_edges.value))[None, :, None, None]
    total = np.sum(values * weights, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.nan_to_num(values / total)


def edisp_kernel_map(edisp: IRF, pointing: SkyCoord, wcs, shape: tuple[int, int], energy_edges: u.Quantity,
                     energy_true_edges: u.Quantity, threshold: float = EDISP_THRESHOLD) -> np.ndarray:
    """The energy-dispersion kernel ``(energy_true, energy, ny, nx)``: the probability that an
    event of each true-energy bin's centre is reconstructed in each ``energy`` bin, at each
    pixel centre's offset from ``pointing``, as Gammapy's ``make_edisp_kernel_map``: the
    migration density on the IRF's own migration bins (at their centres), normalised over
    them, its cumulative sum interpolated linearly at ``energy edge / true energy`` (0 below
    the first migration edge, the total beyond the last), differenced, and probabilities below
    ``threshold`` set to 0."""
    true = _centres(u.Quantity(energy_true_edges), log=True).to("TeV")
    migra_axis = edisp.axes["migra"]
    migra_edges = axis_edges(migra_axis)
    offset = pixel_skycoords(wcs, shape).separation(pointing)
    density = evaluate_irf(edisp, energy_true=true[:, None, None, None], migra=migra_axis.nodes[None, :, None, None], offset=offset[None, None])
    cumulative = np.cumsum(density.value * np.diff(migra_edges)[None, :, None, None], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cumulative = np.nan_to_num(cumulative / cumulative[:, -1:])
    cumulative = np.concatenate([np.zeros_like(cumulative[:, :1]), cumulative], axis=1)  # at the migration edges

    migra = u.Quantity(energy_edges).to_value("TeV")[None, :] / true.value[:, None]  # (true, reco edges)
    cell = np.clip(np.searchsorted(migra_edges, migra, side="right") - 1, 0, migra_edges.size - 2)
    weight = np.clip((migra - migra_edges[cell]) / (migra_edges[cell + 1] - migra_edges[cell]), 0.0, 1.0)
    rows = np.arange(true.size)[:, None]
    contained = (1 - weight)[..., None, None] * cumulative[rows, cell] + weight[..., None, None] * cumulative[rows, cell + 1]
    kernel = np.clip(np.diff(contained, axis=1), 0.0, None)
    kernel[kernel < threshold] = 0.0
    return kernel
