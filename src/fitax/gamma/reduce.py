"""Data reduction of DL3 runs onto a sky geometry, with Gammapy's definitions (its
``MapDatasetMaker`` is the reference): IRF interpolation, counts, exposure and background
cubes.

Host-side NumPy, vectorised over every pixel and energy at once (no per-pixel Python); the
cubes it makes are the data of fitax's compiled likelihoods.

Example:
    >>> obs = DataStore.from_dir("hess-dl3-dr1").observation(23523)  # doctest: +SKIP
    >>> exposure = exposure_cube(obs, wcs, (ny, nx), np.geomspace(0.5, 50, 21) * u.TeV)  # doctest: +SKIP
    >>> exposure.unit  # doctest: +SKIP
    Unit("m2 s")
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import warnings

import numpy as np
from astropy import units as u
from astropy.coordinates import SkyCoord, SkyOffsetFrame

from .dl3 import IRF, IRFAxis, Observation
from .geometry import celestial, pixel_skycoords, solid_angles

__all__ = ["SAFE_MASK_METHODS", "SafeMaskParameters", "aeff_max_energy", "axis_edges", "background_cube", "counts_cube",
           "edisp_bias_energy", "evaluate_irf", "event_energy_bins", "exposure_cube", "fill_missing_energies", "integrate_log_log", "safe_mask", "template_inverse"]


_TINY = np.finfo(np.float32).tiny  # the floor of Gammapy's log scale for the float32 values GADF files hold


def _scale(values: np.ndarray, interp: str) -> np.ndarray:
    return np.log(np.clip(values, _TINY, None)) if interp == "log" else values


def _unscale(values: np.ndarray, interp: str) -> np.ndarray:
    if interp != "log":
        return values
    with np.errstate(over="ignore"):  # extrapolated far beyond the edges, where the IRF is set to 0
        values = np.exp(values)
    return np.where(values <= 2 * np.finfo(values.dtype).tiny, 0.0, values)


def axis_edges(axis: IRFAxis) -> np.ndarray:
    """The axis' bin edges; for node axes, half-way between nodes in the axis' scale and the
    outer ones half a step beyond, a single node its own two edges (Gammapy's
    ``MapAxis.from_nodes``)."""
    if axis.edges is not None:
        return axis.edges.to_value(axis.nodes.unit)
    nodes = _scale(axis.nodes.value, axis.interp)
    if nodes.size == 1:
        return axis.nodes.value[[0, 0]]
    inner = 0.5 * (nodes[1:] + nodes[:-1])
    edges = np.concatenate([[2 * nodes[0] - inner[0]], inner, [2 * nodes[-1] - inner[-1]]])
    return np.exp(edges) if axis.interp == "log" else edges


def evaluate_irf(irf: IRF, column: str | None = None, **coords) -> u.Quantity:
    """``irf`` (its ``column``, default its single value column) at ``coords`` (one Quantity
    per axis name, broadcast together) as Gammapy's ``IRF.evaluate``: linear interpolation
    between the axes' nodes (in log for log axes, e.g. energy, and of the log of background
    rates), extrapolated within the outer bins, negative results clipped to 0, and 0 beyond
    the axes' edges (as ``IRFClass.zero_outside`` says: an energy dispersion only beyond both
    its true energy and migration edges, or its offsets; parametric PSF parameters nowhere,
    as Gammapy's ``evaluate_parameters``).

    Example:
        >>> evaluate_irf(obs.aeff, energy_true=1 * u.TeV, offset=0.5 * u.deg)  # doctest: +SKIP
        <Quantity 3.1e+05 m2>
    """
    values = irf.data if column is None else irf.columns[column]
    spec = irf.spec
    missing = set(irf.axes) - set(coords)
    if missing:
        raise ValueError(f"{irf.hdu_class}: give the coordinates {sorted(missing)} (axes {list(irf.axes)})")
    axes = list(irf.axes.values())
    raw = [np.asarray(u.Quantity(coords[a.name]).to_value(a.nodes.unit), dtype=float) for a in axes]
    shape = np.broadcast_shapes(*(c.shape for c in raw))
    varying = [len(a) > 1 for a in axes]
    points = [_scale(a.nodes.value, a.interp) for a, keep in zip(axes, varying) if keep]
    table = _scale(values.value, spec.values_interp).reshape([len(a) for a, keep in zip(axes, varying) if keep])
    at = [_scale(c, a.interp) for c, a, keep in zip(raw, axes, varying) if keep]
    interpolated = np.broadcast_to(_interpolate_separably(points, table, at), shape)
    interpolated = np.clip(_unscale(interpolated, spec.values_interp), 0.0, None)
    groups = spec.zero_outside_groups
    if not groups:
        return interpolated * values.unit
    outside_axis = {}
    for c, a in zip(raw, axes):
        edges = axis_edges(a)
        outside_axis[a.name] = (c < edges[0]) | (c > edges[-1])
    outside = np.zeros(shape, dtype=bool)
    for group in groups:
        outside |= functools.reduce(np.logical_and, [outside_axis[name] for name in group])
    return np.where(~outside & np.isfinite(interpolated), interpolated, 0.0) * values.unit


def _interpolate_separably(points: list[np.ndarray], table: np.ndarray, coords: list[np.ndarray]) -> np.ndarray:
    """Multilinear interpolation of ``table`` on the grid ``points`` at ``coords`` (one array
    per axis, broadcast together), extrapolated linearly from the outer cells, as scipy's
    ``RegularGridInterpolator(fill_value=None)``; returns the broadcast shape.

    An axis whose coordinates vary along output axes no other coordinate varies along (the
    true energies of a cube against its pixels' offsets) is interpolated on its own, one 1-D
    interpolation of the whole table: an energy dispersion at 20 energies x 160 migrations x
    62500 pixels costs two gathers of the 20 x 160 x 62500 result, not 2^3 weighted corners.
    The remaining axes (coordinates that share output axes, as a background's ``fov_lon`` and
    ``fov_lat``) are combined corner by corner."""
    shape = np.broadcast_shapes(*(np.shape(c) for c in coords))
    ndim = len(shape)
    coords = [np.reshape(c, (1,) * (ndim - np.ndim(c)) + np.shape(c)) for c in coords]
    varies = [tuple(a for a in range(ndim) if c.shape[a] > 1) for c in coords]
    axes = range(len(points))
    alone = [k for k in axes if all(set(varies[k]).isdisjoint(varies[j]) for j in axes if j != k)]
    joint = [k for k in axes if k not in alone]

    def cell_and_weight(nodes: np.ndarray, c: np.ndarray):
        cell = np.clip(np.searchsorted(nodes, c) - 1, 0, nodes.size - 2)
        return cell, (c - nodes[cell]) / (nodes[cell + 1] - nodes[cell])

    result = table
    for k in alone:
        cell, weight = cell_and_weight(points[k], coords[k].ravel())
        lower, upper = np.take(result, cell, axis=k), np.take(result, cell + 1, axis=k)
        weight = weight.reshape([-1 if a == k else 1 for a in range(result.ndim)])
        result = (1.0 - weight) * lower + weight * upper

    joint_axes = sorted({a for k in joint for a in varies[k]})
    if joint:
        joint_shape = tuple(shape[a] for a in joint_axes)
        local = [np.broadcast_to(coords[k], tuple(shape[a] if a in joint_axes else 1 for a in range(ndim))).reshape(joint_shape) for k in joint]
        located = [cell_and_weight(points[k], c) for k, c in zip(joint, local)]
        result = np.moveaxis(result, joint, range(len(joint)))
        table_shape = result.shape[: len(joint)]
        values = result.reshape(int(np.prod(table_shape)), -1)
        strides = np.cumprod((table_shape[1:] + (1,))[::-1])[::-1]
        flat = functools.reduce(np.add, [cell * stride for (cell, _), stride in zip(located, strides)])
        combined = 0.0
        for corner in itertools.product((0, 1), repeat=len(joint)):
            weight = functools.reduce(np.multiply, [w if upper else 1.0 - w for (_, w), upper in zip(located, corner)])
            combined = combined + weight[..., None] * values[flat + int(np.dot(corner, strides))]
        result = combined
    order = joint_axes + [a for k in alone for a in varies[k]]
    result = result.reshape([shape[a] for a in order])
    return np.transpose(result, np.argsort(order)).reshape(shape)


def exposure_cube(observation: Observation, wcs, shape: tuple[int, int], energy_true_edges: u.Quantity) -> u.Quantity:
    """Exposure ``(energy_true, ny, nx)`` [m2 s]: the effective area at each pixel centre's
    offset from the pointing and each true-energy bin's (geometric) centre, times the
    livetime (Gammapy's ``make_map_exposure_true_energy``)."""
    if observation.aeff is None:
        raise ValueError(f"obs {observation.obs_id}: no effective area (aeff) to make an exposure with")
    edges = u.Quantity(energy_true_edges)
    centres = np.sqrt(edges[:-1] * edges[1:])
    offset = pixel_skycoords(wcs, shape).separation(observation.pointing)
    area = evaluate_irf(observation.aeff, energy_true=centres[:, None, None], offset=offset[None])
    return (area * observation.livetime).to("m2 s")


def counts_cube(observation: Observation, wcs, shape: tuple[int, int], energy_edges: u.Quantity) -> np.ndarray:
    """Events per ``(energy, ny, nx)`` bin: each event in the pixel whose centre is nearest in
    pixel coordinates and the energy bin ``[low, high)`` holding its energy; events outside
    the image or the energy range are not counted (Gammapy's ``Map.fill_events``)."""
    events = observation.events
    ny, nx = shape
    edges = u.Quantity(energy_edges).to_value("TeV")
    positions = SkyCoord(events["RA"].quantity, events["DEC"].quantity, frame="icrs")
    x, y = celestial(wcs).world_to_pixel(positions)
    column, row = np.floor(x + 0.5).astype(int), np.floor(y + 0.5).astype(int)
    energy_bin = event_energy_bins(observation, energy_edges)
    keep = (column >= 0) & (column < nx) & (row >= 0) & (row < ny) & (energy_bin >= 0) & (energy_bin < edges.size - 1)
    flat = (energy_bin[keep] * ny + row[keep]) * nx + column[keep]
    return np.bincount(flat, minlength=(edges.size - 1) * ny * nx).reshape(edges.size - 1, ny, nx)


def event_energy_bins(observation: Observation, energy_edges: u.Quantity) -> np.ndarray:
    """Each event's energy bin ``[low, high)``, -1 below the first edge and ``n`` from the
    last (Gammapy's ``Map.fill_events``)."""
    edges = u.Quantity(energy_edges).to_value("TeV")
    return np.searchsorted(edges, observation.events["ENERGY"].quantity.to_value("TeV"), side="right") - 1


def integrate_log_log(values: np.ndarray, x: np.ndarray, axis: int = 0) -> np.ndarray:
    """The integral of ``values`` (given at ``x``, along ``axis``) over each interval of ``x``,
    each interval a power law through its two end values (Gammapy's ``trapz_loglog``): exact
    for power-law spectra; 0 over an interval with no value above 0 at its start, NaN (as in
    Gammapy) over one from 0 to a positive value that spans more than a factor ~2 in ``x``."""
    x, y = np.moveaxis(np.asarray(x, float), axis, 0), np.moveaxis(np.asarray(values, float), axis, 0)
    x_lo, x_hi, y_lo, y_hi = x[:-1], x[1:], y[:-1], y[1:]
    tiny = np.finfo(float).tiny
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        index = -np.log(np.clip(y_lo / y_hi, tiny, None)) / np.log(np.clip(x_lo / x_hi, tiny, None))
        index = np.where(np.isnan(index), np.inf, index)
        slope = 1.0 - index
        integral = y_lo * x_lo / slope * ((x_hi / x_lo) ** slope - 1.0)
    flat = np.isclose(slope, 0.0)
    integral = np.where(flat, y_lo * x_lo * np.log(x_hi / x_lo), integral)
    return np.moveaxis(integral, 0, axis)


def _fov_coordinates(wcs, shape: tuple[int, int], pointing: SkyCoord, reverse_lon: bool) -> tuple[u.Quantity, u.Quantity]:
    """Each pixel centre's field-of-view longitude and latitude, RA/Dec aligned, longitude
    increasing westwards (Gammapy's ``FoVICRSFrame``), or eastwards with ``reverse_lon``."""
    offsets = pixel_skycoords(wcs, shape).transform_to(SkyOffsetFrame(origin=pointing.icrs))
    lon = offsets.lon.wrap_at(180 * u.deg).to(u.deg)
    return (lon if reverse_lon else -lon), offsets.lat.to(u.deg)


def fill_missing_energies(irf: IRF) -> IRF:
    """``irf`` with each zero or non-finite value between valid ones along its energy axis
    replaced by the interpolation of its neighbours (by bin index, in the values' scale: log
    for backgrounds), Gammapy's ``interp_missing_data(axis_name="energy")``, which its
    ``MapDatasetMaker`` applies to every background by default; values before the first or
    after the last valid one are kept."""
    name = next(a for a in irf.axes if a.startswith("energy"))
    axis = list(irf.axes).index(name)
    values = irf.data
    moved = np.moveaxis(values.value, axis, -1)
    columns = moved.reshape(-1, moved.shape[-1]).copy()  # one row per column along energy, written below
    missing = ~np.isfinite(columns) | (columns == 0.0)
    index = np.arange(columns.shape[1])
    valid = ~missing
    first, last = np.argmax(valid, axis=1), index[-1] - np.argmax(valid[:, ::-1], axis=1)
    between = missing & (index > first[:, None]) & (index < last[:, None]) & valid.any(axis=1)[:, None]
    for row in np.flatnonzero(between.any(axis=1)):
        scaled = _scale(columns[row, valid[row]], irf.spec.values_interp)
        filled = np.interp(index[between[row]], index[valid[row]], scaled)
        columns[row, between[row]] = _unscale(filled, irf.spec.values_interp)
    column = next(iter(irf.columns))
    return dataclasses.replace(irf, columns={column: np.moveaxis(columns.reshape(moved.shape), -1, axis) * values.unit})


def _edge_padded(irf: IRF, name: str) -> IRF:
    """``irf`` with one more bin at each end of axis ``name``, holding the edge bins' values,
    the axis' edges (or nodes) extended linearly in its scale (Gammapy's ``IRF.pad(1,
    mode="edge")``)."""
    axis = irf.axes[name]

    def extended(values: np.ndarray) -> np.ndarray:
        scaled = _scale(values, axis.interp)
        scaled = np.concatenate([[2 * scaled[0] - scaled[1]], scaled, [2 * scaled[-1] - scaled[-2]]])
        return _unscale(scaled, axis.interp) if axis.interp == "log" else scaled

    unit = axis.nodes.unit
    if axis.edges is not None:
        edges = extended(axis.edges.to_value(unit))
        nodes = np.sqrt(edges[1:] * edges[:-1]) if axis.interp == "log" else 0.5 * (edges[1:] + edges[:-1])
        padded_axis = IRFAxis(name, nodes * unit, edges * unit, axis.interp)
    else:
        padded_axis = IRFAxis(name, extended(axis.nodes.value) * unit, None, axis.interp)
    index = list(irf.axes).index(name)
    width = [(1, 1) if k == index else (0, 0) for k in range(len(irf.axes))]
    columns = {key: np.pad(values.value, width, mode="edge") * values.unit for key, values in irf.columns.items()}
    return dataclasses.replace(irf, axes={**irf.axes, name: padded_axis}, columns=columns)


def background_cube(observation: Observation, wcs, shape: tuple[int, int], energy_edges: u.Quantity,
                    fill_missing: bool = True) -> np.ndarray:
    """Predicted background counts ``(energy, ny, nx)``: the background rate at each pixel
    centre's field-of-view position, integrated over each reconstructed-energy bin (log-log,
    between the bin's edges), times the pixel's solid angle and the observation's ontime (GADF
    rates are per unit ontime) — Gammapy's ``make_map_background_irf`` without oversampling,
    with the IRF's ``fov_alignment``, on the background its ``MapDatasetMaker`` uses: missing
    rates filled along energy (:func:`fill_missing_energies`, unless ``fill_missing=False``).

    A 2D background (energy, offset) is taken at each pixel's offset from the pointing, its
    offset axis first padded by a bin of edge values at both ends (Gammapy's default
    ``background_pad_offset``). Raises ``ValueError``, not supported yet, for a 3D background
    aligned with Alt/Az (it rotates on the sky during the run)."""
    bkg = observation.bkg
    if bkg is None:
        raise ValueError(f"obs {observation.obs_id}: no background IRF (bkg) to predict a background with")
    radial = "offset" in bkg.axes
    if not radial and bkg.fov_alignment not in ("RADEC", "REVERSE_LON_RADEC"):
        raise ValueError(f"obs {observation.obs_id}: a background aligned with {bkg.fov_alignment} (FOVALIGN) is not supported yet, only RADEC")
    if fill_missing:
        bkg = fill_missing_energies(bkg)
    edges = u.Quantity(energy_edges)[:, None, None]
    if radial:
        offset = pixel_skycoords(wcs, shape).separation(observation.pointing)
        rate = evaluate_irf(_edge_padded(bkg, "offset"), energy=edges, offset=offset[None])
    else:
        lon, lat = _fov_coordinates(wcs, shape, observation.pointing, bkg.fov_alignment == "REVERSE_LON_RADEC")
        rate = evaluate_irf(bkg, energy=edges, fov_lon=lon[None], fov_lat=lat[None])
    integrated = integrate_log_log(rate.value, np.broadcast_to(edges.value, rate.shape), axis=0) * rate.unit * edges.unit
    counts = integrated * solid_angles(wcs, shape) * u.sr * observation.ontime
    return counts.to_value(u.dimensionless_unscaled)


SAFE_MASK_METHODS = ("aeff-default", "aeff-max", "edisp-bias", "offset-max", "bkg-peak")
"""The safe-mask methods of Gammapy's ``SafeMaskMaker`` (with its default DL4 IRFs: the
dataset's exposure and EDisp kernel map)."""


@dataclasses.dataclass(frozen=True)
class SafeMaskParameters:
    """The settings of the energy-threshold safe masks, with Gammapy's ``SafeMaskMaker``
    defaults: ``aeff-max`` keeps energies where the effective area exceeds ``aeff_percent``
    of its maximum, ``edisp-bias`` those above the energy where the reconstruction bias falls
    to ``bias_percent``; both at the geometry's centre, or ``fixed_offset`` north of the
    pointing."""

    aeff_percent: float = 10.0
    bias_percent: float = 10.0
    fixed_offset: u.Quantity | None = None


def _energy_mask(edges: u.Quantity, energy_min=None, energy_max=None) -> np.ndarray:
    """The energy bins wholly within ``[energy_min, energy_max]`` (Gammapy's ``energy_mask``)."""
    low = edges[0] if energy_min is None else energy_min
    high = edges[-1] if energy_max is None else energy_max
    return (edges[:-1] >= low) & (edges[1:] <= high)


def _log_centres(edges: np.ndarray) -> np.ndarray:
    return np.sqrt(edges[1:] * edges[:-1])


def template_inverse(energy: np.ndarray, values: np.ndarray, target: float, energy_min: float, energy_max: float) -> float:
    """The first energy in ``[energy_min, energy_max]`` where ``values`` tabulated at
    ``energy`` and interpolated linearly in log-log (below the float64 ``tiny`` a value is 0)
    equal ``target``, or NaN: Gammapy's ``TemplateSpectralModel.inverse``, which brackets the
    roots on 101 log-spaced energies and solves the first bracket with Brent's method; the same
    brackets keep the same root where the curve crosses ``target`` more than once.

    Example:
        >>> round(template_inverse(np.array([1.0, 10.0]), np.array([1.0, 100.0]), 10.0, 1.0, 10.0), 9)
        3.16227766
    """
    from scipy.optimize import brentq

    tiny = np.finfo(float).tiny
    log_energy, log_values = np.log(energy), np.log(np.clip(values, tiny, None))

    def excess(x):
        value = np.exp(np.interp(np.log(x), log_energy, log_values))
        value = np.where(abs(value) - tiny <= tiny, 0.0, value)
        return 1e12 * (value - target)  # Gammapy's scale, for the same Brent iterates

    x = np.exp(np.linspace(np.log(energy_min), np.log(energy_max), 101))
    signs = np.sign(excess(x))
    changes = np.nonzero(signs[:-1] != signs[1:])[0]
    if changes.size == 0:
        return float("nan")
    root, result = brentq(excess, x[changes[0]], x[changes[0] + 1], full_output=True, disp=False)
    return float(root) if result.converged else float("nan")


def aeff_max_energy(aeff: np.ndarray, energy_true_edges: u.Quantity, aeff_percent: float = 10.0) -> u.Quantity:
    """The ``aeff-max`` threshold: the lowest true energy where the effective area ``aeff``
    (tabulated at the centres of the true-energy bins) rises to ``aeff_percent`` of its
    maximum, or its first positive node if it never crosses; ``None`` where it is 0
    everywhere (Gammapy then masks every bin)."""
    edges = u.Quantity(energy_true_edges).to_value("TeV")
    energy = _log_centres(edges)
    aeff = np.asarray(aeff, float)
    positive = np.nonzero(aeff > 0)[0]
    if positive.size == 0:
        return None
    lowest = energy[positive[0]]
    root = template_inverse(energy, aeff, aeff_percent / 100 * aeff.max(), lowest, energy[-1])
    return (lowest if np.isnan(root) else root) * u.TeV


def edisp_bias_energy(kernel: np.ndarray, energy_true_edges: u.Quantity, energy_edges: u.Quantity, bias_percent: float = 10.0) -> u.Quantity:
    """The ``edisp-bias`` threshold: the reconstructed energy ``(1 + b) E`` at the true energy
    ``E`` above the bias peak where the mean reconstruction bias of the ``(energy_true,
    energy)`` ``kernel`` falls to ``b = bias_percent / 100`` (Gammapy's ``get_bias_energy``:
    the mean reconstructed energy over the bin centres, 0 for an empty row)."""
    true = _log_centres(u.Quantity(energy_true_edges).to_value("TeV"))
    reco = _log_centres(u.Quantity(energy_edges).to_value("TeV"))
    kernel = np.asarray(kernel, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nan_to_num((kernel * reco).sum(axis=-1) / kernel.sum(axis=-1))
    bias = (mean - true) / true
    lowest = true[np.nanargmax(bias)]
    root = template_inverse(true, bias, bias_percent / 100, lowest, true[-1])
    return (lowest if np.isnan(root) else root) * (1 + bias_percent / 100) * u.TeV


def _centre(wcs, shape: tuple[int, int]) -> SkyCoord:
    """The sky position of the image's central pixel coordinate (Gammapy's ``center_skydir``)."""
    from astropy.wcs.utils import wcs_to_celestial_frame

    ny, nx = shape
    lon, lat = celestial(wcs).all_pix2world((nx - 1) / 2, (ny - 1) / 2, 0)
    return SkyCoord(lon, lat, unit="deg", frame=wcs_to_celestial_frame(celestial(wcs)))


def _nearest_pixel(wcs, shape: tuple[int, int], position: SkyCoord) -> tuple[int, int, bool]:
    """``(iy, ix, inside)``: the pixel nearest ``position``, ties to the lower index and a
    position beyond the image taken to its edge (Gammapy's, SciPy's, nearest-neighbour
    lookup, which extrapolates), and whether the position lies on the image."""
    from .geometry import sky_to_pixel

    ny, nx = shape
    x, y = (float(c) for c in sky_to_pixel(wcs, position))
    inside = -0.5 <= x <= nx - 0.5 and -0.5 <= y <= ny - 0.5
    iy, ix = (int(np.clip(np.floor(c) + (c - np.floor(c) > 0.5), 0, n - 1)) for c, n in ((y, ny), (x, nx)))
    return iy, ix, inside


def _mask_position(observation: Observation, parameters: SafeMaskParameters, wcs, shape: tuple[int, int]) -> SkyCoord:
    if parameters.fixed_offset is None:
        return _centre(wcs, shape)
    return observation.pointing.directional_offset_by(0 * u.deg, u.Quantity(parameters.fixed_offset))


def _kernel_at(edisp: np.ndarray, edisp_wcs, position: SkyCoord) -> np.ndarray:
    """The ``(energy_true, energy)`` kernel of the EDisp kernel map's pixel nearest
    ``position``; where that pixel holds no kernel, or the position lies beyond the map, the
    nearest pixel on the sky that holds one (Gammapy's ``_get_nearest_valid_position``)."""
    irf_shape = edisp.shape[-2:]
    iy, ix, inside = _nearest_pixel(edisp_wcs, irf_shape, position)
    valid = np.any(edisp > 0, axis=(0, 1))
    if not (inside and valid[iy, ix]) and valid.any():
        separation = pixel_skycoords(edisp_wcs, irf_shape).separation(position).deg
        iy, ix = np.unravel_index(np.argmin(np.where(valid, separation, np.inf)), irf_shape)
    return edisp[:, :, iy, ix]


def safe_mask(observation: Observation, wcs, shape: tuple[int, int], energy_edges: u.Quantity, methods=("aeff-default",),
              offset_max: u.Quantity = 3 * u.deg, background: np.ndarray | None = None, *,
              parameters: SafeMaskParameters = SafeMaskParameters(), exposure: np.ndarray | None = None,
              energy_true_edges: u.Quantity | None = None, edisp: np.ndarray | None = None, edisp_wcs=None) -> np.ndarray:
    """The ``(energy, ny, nx)`` mask of the bins safe to fit, as Gammapy's ``SafeMaskMaker``:
    the ``and`` of each method's (``aeff-default``: the energy range in the effective area's
    header, ``LO_THRES``/``HI_THRES`` [TeV]; ``offset-max``: pixels closer than ``offset_max``
    to the pointing; ``aeff-max``: energies above the ``exposure`` cube's threshold at the
    centre, :func:`aeff_max_energy`; ``edisp-bias``: energies above the bias threshold of the
    ``edisp`` kernel map (on ``edisp_wcs``) at the centre, :func:`edisp_bias_energy`;
    ``bkg-peak``: energies from the lower edge of the bin where the ``background`` cube's
    spectrum peaks), and, given a ``background``, bins where it is positive and finite.

    Example:
        >>> mask = safe_mask(obs, wcs, shape, edges, methods=("aeff-default", "offset-max"), offset_max=2.5 * u.deg)  # doctest: +SKIP
    """
    methods = tuple(methods)
    unknown = sorted(set(methods) - set(SAFE_MASK_METHODS))
    if unknown:
        raise ValueError(f"safe-mask methods {unknown} are not available; fitax has {list(SAFE_MASK_METHODS)}")
    edges = u.Quantity(energy_edges)
    mask = np.ones((edges.size - 1, *shape), dtype=bool)
    if background is not None:
        background = np.asarray(background)
        if background.shape != mask.shape:
            raise ValueError(f"background has shape {background.shape}, the geometry {mask.shape}")
        mask &= np.isfinite(background) & (background > 0)
    if "offset-max" in methods:
        mask &= (pixel_skycoords(wcs, shape).separation(observation.pointing) < u.Quantity(offset_max))[None]
    if "aeff-default" in methods:
        if observation.aeff is None:
            raise ValueError(f"obs {observation.obs_id}: 'aeff-default' needs an effective area")
        bounds = {}
        for key in ("LO_THRES", "HI_THRES"):
            value = observation.aeff.header.get(key)
            if value:
                bounds[key] = float(value) * u.TeV
            else:
                warnings.warn(f"obs {observation.obs_id}: no {key} in the effective area's header: no safe energy bound from it", stacklevel=2)
        mask &= _energy_mask(edges, bounds.get("LO_THRES"), bounds.get("HI_THRES"))[:, None, None]
    position = _mask_position(observation, parameters, wcs, shape)
    if "aeff-max" in methods:
        if exposure is None or energy_true_edges is None:
            raise ValueError("'aeff-max' needs the exposure cube and its true-energy edges (exposure=, energy_true_edges=)")
        iy, ix, _ = _nearest_pixel(wcs, shape, position)
        threshold = aeff_max_energy(np.asarray(exposure)[:, iy, ix], energy_true_edges, parameters.aeff_percent)
        if threshold is None:
            warnings.warn(f"obs {observation.obs_id}: no exposure at the safe-mask position: every bin masked (as Gammapy)", stacklevel=2)
            mask[:] = False
        else:
            mask &= _energy_mask(edges, threshold)[:, None, None]
    if "edisp-bias" in methods:
        if edisp is None or edisp_wcs is None or energy_true_edges is None:
            raise ValueError("'edisp-bias' needs the EDisp kernel map, its WCS and the true-energy edges (edisp=, edisp_wcs=, energy_true_edges=)")
        kernel = _kernel_at(np.asarray(edisp), edisp_wcs, position)
        mask &= _energy_mask(edges, edisp_bias_energy(kernel, energy_true_edges, edges, parameters.bias_percent))[:, None, None]
    if "bkg-peak" in methods:
        if background is None:
            raise ValueError("'bkg-peak' needs the background cube (background=)")
        peak = int(np.argmax(np.nansum(background, axis=(1, 2))))  # as Gammapy's get_spectrum
        mask &= _energy_mask(edges, edges[peak])[:, None, None]
    return mask
