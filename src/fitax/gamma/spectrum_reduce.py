"""1D on-off spectra from DL3 runs, with Gammapy's definitions: the counts in a circular ON
region, off counts in reflected (or wobble) regions, the exposure and energy dispersion at the
region's centre, the PSF containment correction, safe masks, and stacking (Gammapy's
``SpectrumDatasetMaker``, ``ReflectedRegionsBackgroundMaker``, ``SafeMaskMaker`` and
``Datasets.stack_reduce`` are the references). Runs with point-like IRFs (a ``RAD_MAX``
table, as MAGIC and LST write them) take a point as ON region: an event counts where it lies
within the cut radius of its energy (Gammapy's ``select_rad_max``), in ON and in wobble OFF
points alike.

Regions are the ``regions`` package's, as Gammapy's: the reflected regions are found as
Gammapy's ``ReflectedRegionsFinder`` finds them, rotating the ON region in pixels of a TAN
image centred on the pointing (0.01 deg pixels), so the same pixels decide the same regions;
events are in a region by the same pixel test Gammapy makes.

Example:
    >>> obs = DataStore.from_dir("hess-dl3-dr1").observation(23523)  # doctest: +SKIP
    >>> on = CircleSkyRegion(SkyCoord(83.633, 22.014, unit="deg"), 0.11 * u.deg)  # doctest: +SKIP
    >>> spectrum = spectrum_onoff_file(obs, on, np.geomspace(0.5, 40, 13) * u.TeV, np.geomspace(0.3, 60, 21) * u.TeV)  # doctest: +SKIP
    >>> spectrum.counts.sum(), spectrum.counts_off.sum(), spectrum.acceptance_off  # doctest: +SKIP
    (96, 78, 12)
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.time import Time
from astropy.wcs import WCS
from astropy.wcs.utils import celestial_frame_to_wcs

from .dl3 import IRF, IRFAxis, Observation
from .geometry import nearest_pixel_values
from .irf_maps import edisp_kernel_map
from .reduce import SafeMaskParameters, axis_edges, evaluate_irf, event_energy_bins, exposure_cube, safe_mask
from .stacking import gti_union

__all__ = ["ReflectedRegionsFinder", "SpectrumOnOffFile", "WobbleRegionsFinder", "psf_containment", "rad_max_at", "spectrum_onoff_file",
           "stack_spectra"]

_FULL_CIRCLE = 2 * np.pi


def _tan_wcs(centre: SkyCoord, frame: str, binsz: float, npix: int) -> WCS:
    """Gammapy's ``WcsGeom.create(skydir=centre, binsz=binsz, npix=npix, frame=frame,
    proj="TAN").wcs``."""
    frame_object = SkyCoord(np.nan, np.nan, unit="deg", frame=frame).frame
    wcs = celestial_frame_to_wcs(frame_object, projection="TAN")
    centre = centre.transform_to(frame)
    wcs.wcs.crpix = [(npix + 1) / 2, (npix + 1) / 2]
    wcs.wcs.crval = [centre.spherical.lon.wrap_at(360 * u.deg).deg, centre.spherical.lat.deg]
    wcs.wcs.cdelt = [-binsz, binsz]
    wcs.array_shape = (npix, npix)
    wcs.wcs.datfix()
    return wcs


def _frame_name(position: SkyCoord) -> str:
    return position.frame.name


@dataclasses.dataclass(frozen=True, kw_only=True)
class _RegionsFinder:
    binsz: u.Quantity = 0.01 * u.deg

    def __post_init__(self):
        if not u.Quantity(self.binsz).to_value("deg") > 0:
            raise ValueError(f"binsz = {self.binsz} must be a positive angle")

    def reference(self, region, center: SkyCoord):
        """The TAN image the regions are found on: centred on ``center``, in the region's
        frame, 4 times the region's distance from it plus 0.3 deg wide; with the pixel of
        ``center`` and the region in its pixels."""
        from regions import PixCoord

        binsz = u.Quantity(self.binsz).to_value("deg")
        width = 4 * region.center.separation(center).deg + 0.3
        wcs = _tan_wcs(center, _frame_name(region.center), binsz, int(np.rint(width / binsz)))
        return wcs, PixCoord.from_sky(center, wcs), region.to_pixel(wcs)

    def run(self, region, center: SkyCoord, exclusion=None):
        """The OFF regions of ``region`` about ``center`` (sky regions, as Gammapy's finders
        return them) and the WCS they were found on."""
        regions, wcs = self.find(region, center, exclusion)
        return [r.to_sky(wcs) for r in regions], wcs

    @staticmethod
    def excluded_pixels(wcs, exclusion):
        """The pixels of ``wcs``'s image an ``exclusion`` ``(mask, mask_wcs)`` (True where
        pixels may be used) excludes, the mask taken at each pixel centre (outside it: usable)."""
        from regions import PixCoord

        ny, nx = wcs.array_shape
        if exclusion is None:
            return PixCoord(np.zeros(0), np.zeros(0))
        mask, mask_wcs = exclusion
        usable = nearest_pixel_values(np.asarray(mask, bool), mask_wcs, wcs, (ny, nx), fill=True).astype(bool)
        rows, columns = np.nonzero(~usable)
        return PixCoord(columns, rows)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReflectedRegionsFinder(_RegionsFinder):
    """Gammapy's ``ReflectedRegionsFinder``: copies of the ON region rotated about the
    pointing, starting ``min_distance_input`` beyond the region's own angular size, each next
    one the region's size (plus ``min_distance``) further on, or ``angle_increment`` further
    where a copy would touch an excluded pixel; at most ``max_region_number``."""

    angle_increment: u.Quantity = 0.1 * u.rad
    min_distance: u.Quantity = 0 * u.rad
    min_distance_input: u.Quantity = 0.1 * u.rad
    max_region_number: int = 10000

    def __post_init__(self):
        super().__post_init__()
        if u.Quantity(self.angle_increment).to_value("rad") <= 0:
            raise ValueError(f"angle_increment = {self.angle_increment} must be positive")

    def find(self, region, center: SkyCoord, exclusion=None):
        """The reflected regions of ``region`` about ``center``, in pixels of the WCS they were
        found on, and that WCS (:meth:`run` gives them on the sky).

        Example:
            >>> from regions import CircleSkyRegion
            >>> on = CircleSkyRegion(SkyCoord(80.2, 23.5, unit="deg"), 0.4 * u.deg)
            >>> regions, wcs = ReflectedRegionsFinder(min_distance_input=1 * u.rad).run(on, SkyCoord(83.2, 22.7, unit="deg"))
            >>> len(regions)
            14
            >>> [round(float(v), 6) for v in (regions[0].center.ra.deg, regions[0].center.dec.deg)]
            [83.19879, 25.57301]
        """
        from regions import CircleSkyRegion

        if not isinstance(region, CircleSkyRegion):
            raise TypeError(f"reflected regions are found for circular ON regions, got {type(region).__name__}")
        wcs, center_pixel, region_pixels = self.reference(region, center)
        excluded = self.excluded_pixels(wcs, exclusion)
        size = self._angular_size(region_pixels, wcs, center_pixel)
        angle_min = size + u.Quantity(self.min_distance).to_value("rad")
        angle_max = _FULL_CIRCLE - angle_min - u.Quantity(self.min_distance_input).to_value("rad")
        increment = u.Quantity(self.angle_increment).to_value("rad")
        regions = []
        angle = angle_min + u.Quantity(self.min_distance_input).to_value("rad")
        while angle < angle_max:
            candidate = region_pixels.rotate(center_pixel, angle * u.rad)
            if not np.any(candidate.contains(excluded)):
                regions.append(candidate)
                if len(regions) >= self.max_region_number:
                    break
                angle += angle_min
            else:
                angle += increment
        return regions, wcs

    @staticmethod
    def _angular_size(region_pixels, wcs, center_pixel) -> float:
        """The angle [rad] the region's pixels (those whose centres it contains) span as seen
        from the centre pixel; the rotation centre lies outside the region."""
        from regions import PixCoord

        ny, nx = wcs.array_shape
        rows, columns = np.mgrid[:ny, :nx]
        inside = region_pixels.contains(PixCoord(columns.ravel(), rows.ravel()))
        if not inside.any():
            raise ValueError("the ON region covers no 0.01 deg pixel of the reflected-regions image")
        angles = np.arctan2(center_pixel.x - columns.ravel()[inside], center_pixel.y - rows.ravel()[inside])
        size = angles.max() - angles.min()
        if size > np.pi:
            wrapped = np.where(angles >= 0, angles - _FULL_CIRCLE, angles)  # astropy's wrap_at(0 rad): [-2 pi, 0)
            size = wrapped.max() - wrapped.min()
        return float(size)


@dataclasses.dataclass(frozen=True, kw_only=True)
class WobbleRegionsFinder(_RegionsFinder):
    """Gammapy's ``WobbleRegionsFinder``: ``n_off_regions`` copies of the ON region at equal
    angles about the pointing, less those touching an excluded pixel (a point: within a pixel
    of one); none if they overlap (points: checked with the run's cut radius, RAD_MAX, by
    :func:`spectrum_onoff_file`)."""

    n_off_regions: int = 1

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.n_off_regions, bool) or not isinstance(self.n_off_regions, int) or self.n_off_regions < 1:
            raise ValueError(f"n_off_regions = {self.n_off_regions!r} must be a whole number >= 1")

    def find(self, region, center: SkyCoord, exclusion=None):
        """The wobble regions of ``region`` about ``center``, in pixels of the WCS they were
        found on, and that WCS."""
        from regions import PointSkyRegion

        wcs, center_pixel, region_pixels = self.reference(region, center)
        excluded = self.excluded_pixels(wcs, exclusion)
        point = isinstance(region, PointSkyRegion)
        positions = self.n_off_regions + 1
        regions = []
        for step in range(1, positions):
            candidate = region_pixels.rotate(center_pixel, step * _FULL_CIRCLE / positions * u.rad)
            if exclusion is None:
                regions.append(candidate)
            elif not np.any(excluded.separation(candidate.center) < 1 if point else candidate.contains(excluded)):
                regions.append(candidate)  # a point is excluded within a pixel of an excluded pixel (Gammapy's test)
        if point:  # points overlap where their cut radii do: checked with the run's RAD_MAX
            return regions, wcs
        masks = [r.to_mask().to_image(wcs.array_shape) > 0 for r in regions]
        if any(np.any(a & b) for i, a in enumerate(masks) for b in masks[i + 1:]):
            warnings.warn("wobble OFF regions overlap: none used (use fewer or smaller regions)", stacklevel=2)
            return [], wcs
        return regions, wcs


def psf_containment(psf: IRF, radius: u.Quantity, offset: u.Quantity, energy_true: u.Quantity) -> np.ndarray:
    """The fraction of the PSF within ``radius`` at ``offset`` and each ``energy_true``, as
    Gammapy's ``PSF.containment``: for a PSF table the cumulative sum of ``2 pi rad PSF
    d(rad)`` over its rad bins, interpolated at ``radius`` (not renormalised); for 3-Gauss
    and King PSFs their closed forms.

    Example:
        >>> psf_containment(obs.psf, 0.11 * u.deg, 0.5 * u.deg, [1, 10] * u.TeV)  # doctest: +SKIP
        array([0.71, 0.83])
    """
    energy_true, radius = u.Quantity(energy_true), u.Quantity(radius)
    if psf.hdu_class == "psf_table":
        rad = psf.axes["rad"]
        edges = axis_edges(rad) * rad.nodes.unit
        weights = (2 * np.pi * rad.nodes * np.diff(edges)).to_value("sr")
        data = np.cumsum(psf.data.to_value("sr-1") * weights, axis=list(psf.axes).index("rad"))
        shifted = IRFAxis("rad", edges[1:], None, rad.interp)  # the sum's nodes: the bins' upper edges
        cumulative = dataclasses.replace(psf, axes={**psf.axes, "rad": shifted}, columns={"RPSF": data * u.one})
        return evaluate_irf(cumulative, energy_true=energy_true, offset=offset, rad=radius).to_value("")
    parameters = {name: evaluate_irf(psf, name, energy_true=energy_true, offset=offset) for name in psf.columns}
    r = radius.to_value("deg")
    if psf.hdu_class == "psf_3gauss":
        sigmas = [parameters[f"SIGMA_{k}"].to_value("deg") for k in (1, 2, 3)]
        amplitudes = [1.0, parameters["AMPL_2"].value, parameters["AMPL_3"].value]
        norms = [2 * parameters["SCALE"].value * a * s**2 for a, s in zip(amplitudes, sigmas)]
        total = sum(norms)
        with np.errstate(invalid="ignore", divide="ignore"):
            return sum(n / total * (1 - np.exp(-0.5 * r**2 / s**2)) for n, s in zip(norms, sigmas))
    if psf.hdu_class == "psf_king":
        sigma, gamma = parameters["SIGMA"].to_value("deg"), parameters["GAMMA"].value
        return 1 - (1 + r**2 / (2 * gamma * sigma**2)) ** (1 - gamma)
    raise ValueError(f"no PSF containment for a {psf.hdu_class} PSF")


def _region_counts(observation: Observation, regions, wcs, energy_edges: u.Quantity) -> np.ndarray:
    """Events per energy bin within any of the pixel ``regions`` of ``wcs`` (Gammapy's pixel
    test)."""
    from regions import PixCoord

    events = observation.events
    pixels = PixCoord.from_sky(SkyCoord(events["RA"].quantity, events["DEC"].quantity, frame="icrs"), wcs)
    inside = np.zeros(len(events), bool)
    for region in regions:
        inside |= region.contains(pixels)
    bins = event_energy_bins(observation, energy_edges)
    n = len(energy_edges) - 1
    keep = inside & (bins >= 0) & (bins < n)
    return np.bincount(bins[keep], minlength=n)


def _region_wcs(region) -> WCS:
    """The TAN WCS of Gammapy's ``RegionGeom`` of a circle or a point (0.1 deg pixels around
    its centre)."""
    binsz = 0.1
    radius = getattr(region, "radius", 0 * u.deg)
    npix = int(np.ceil(2 * radius.to_value("deg") / binsz + 1))
    return _tan_wcs(region.center, _frame_name(region.center), binsz, npix)


def rad_max_at(rad_max: IRF, energy: u.Quantity, offset: u.Quantity) -> u.Quantity:
    """The cut radius of a ``RAD_MAX`` table for events of ``energy`` at ``offset``, as
    Gammapy's ``EventList.select_rad_max`` takes it: the nearest node of each axis (in the
    axis' scale: log energies), 0 beyond the axes' edges.

    Example:
        >>> rad_max_at(obs.rad_max, [0.1, 1.0] * u.TeV, 0.4 * u.deg)  # doctest: +SKIP
        <Quantity [0.224, 0.1] deg>
    """
    coords = {"energy": energy, "offset": offset}
    missing = set(rad_max.axes) - set(coords)
    if missing:
        raise ValueError(f"{rad_max.hdu_class}: axes {sorted(missing)}; a RAD_MAX table has energy and offset axes")
    shape = np.broadcast_shapes(*(np.shape(u.Quantity(c)) for c in coords.values()))
    index, outside = [], np.zeros(shape, bool)
    for axis in rad_max.axes.values():
        value = np.broadcast_to(np.asarray(u.Quantity(coords[axis.name]).to_value(axis.nodes.unit), float), shape)
        scale = np.log if axis.interp == "log" else np.asarray
        nodes = scale(axis.nodes.value)
        middles = 0.5 * (nodes[1:] + nodes[:-1])
        with np.errstate(divide="ignore", invalid="ignore"):  # non-positive energies: outside, 0 below
            index.append(np.searchsorted(middles, scale(value)))
        edges = axis_edges(axis)
        outside |= (value < edges[0]) | (value > edges[-1])
    table = rad_max.data.to_value("deg").reshape([len(a.nodes) for a in rad_max.axes.values()])
    return np.where(outside, 0.0, table[tuple(index)]) * u.deg


def _rad_max_counts(observation: Observation, positions: list[SkyCoord], energy_edges: u.Quantity) -> np.ndarray:
    """Events per energy bin within the cut radius of their energy (at each position's
    offset) of any of ``positions`` (Gammapy's ``make_counts_rad_max`` and
    ``make_counts_off_rad_max``: an event near two positions counts for each)."""
    events = observation.events
    radec = SkyCoord(events["RA"].quantity, events["DEC"].quantity, frame="icrs")
    energy = events["ENERGY"].quantity
    bins = event_energy_bins(observation, energy_edges)
    n = len(energy_edges) - 1
    counts = np.zeros(n, int)
    for position in positions:
        inside = position.separation(radec) <= rad_max_at(observation.rad_max, energy, position.separation(observation.pointing))
        keep = inside & (bins >= 0) & (bins < n)
        counts += np.bincount(bins[keep], minlength=n)
    return counts


def _cut_radii_overlap(observation: Observation, positions: list[SkyCoord], energy_edges: u.Quantity) -> bool:
    """Whether any two of ``positions`` are closer than twice the cut radius at the first's
    offset in an energy bin of the table that meets ``energy_edges`` (Gammapy's
    ``are_regions_overlapping_rad_max``)."""
    from itertools import combinations

    rad_max = observation.rad_max
    energy_axis = rad_max.axes["energy"]
    edges = axis_edges(energy_axis) * energy_axis.nodes.unit
    low, high = u.Quantity(energy_edges)[[0, -1]]
    meets = (edges[1:] >= low) & (edges[:-1] <= high)
    radii = evaluate_irf(rad_max, energy=energy_axis.nodes, offset=positions[0].separation(observation.pointing))[meets]
    separations = u.Quantity([a.separation(b) for a, b in combinations(positions, 2)])
    return bool(np.any(separations[None, :] < 2 * radii[:, None]))


@dataclasses.dataclass(frozen=True)
class SpectrumOnOffFile:
    """A 1D on-off spectrum as Gammapy's ``SpectrumDatasetOnOff`` holds it: counts and
    ``counts_off`` per energy bin, their ``acceptance`` and ``acceptance_off`` (alpha =
    acceptance / acceptance_off), exposure [m2 s] per true-energy bin, the ``(energy_true,
    energy)`` dispersion with its exposure, the safe mask, the ON region (on the sky) and its
    WCS, the OFF regions (in pixels of the WCS they were found on) and that WCS, livetime [s],
    good time intervals, and the runs' ids and pointings; written by :func:`fitax.gamma.io.write_spectrum_onoff`."""

    name: str
    counts: np.ndarray
    counts_off: np.ndarray
    acceptance: np.ndarray
    acceptance_off: np.ndarray
    exposure: np.ndarray
    edisp: np.ndarray
    edisp_exposure: np.ndarray
    mask_safe: np.ndarray
    energy_edges: np.ndarray
    energy_true_edges: np.ndarray
    on_region: object
    on_wcs: WCS
    off_regions: tuple
    off_wcs: WCS | None
    livetime: float
    gti: Time | None
    obs_ids: tuple[int, ...] = ()
    pointings: tuple = ()

    @property
    def alpha(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.acceptance_off > 0, self.acceptance / self.acceptance_off, 0.0)

    def __repr__(self) -> str:
        return (f"SpectrumOnOffFile({self.name}: {len(self.counts)} energies, {int(self.counts.sum())} on, "
                f"{int(self.counts_off.sum())} off in {len(self.off_regions)} regions, {int(self.mask_safe.sum())} safe bins)")


ONOFF_SAFE_MASK_METHODS = ("aeff-default", "aeff-max", "edisp-bias", "offset-max")
"""The safe masks of 1D on-off spectra (``bkg-peak`` needs a background model)."""


def spectrum_onoff_file(observation: Observation, on_region, energy_edges: u.Quantity, energy_true_edges: u.Quantity,
                        safe_mask_methods=("aeff-default",), offset_max: u.Quantity = 3 * u.deg,
                        safe_mask_parameters: SafeMaskParameters = SafeMaskParameters(), containment_correction: bool = False,
                        finder=None, exclusion=None, name: str | None = None) -> SpectrumOnOffFile | None:
    """One run reduced to an on-off spectrum, as Gammapy's ``SpectrumDatasetMaker``
    (``use_region_center=True``; ``containment_correction`` multiplies the exposure by the
    PSF's containment within the region's radius), ``ReflectedRegionsBackgroundMaker`` (with
    ``finder``, default :class:`ReflectedRegionsFinder`, and the ``exclusion`` ``(mask,
    wcs)``, True where pixels may be used) and ``SafeMaskMaker``. ``None``, with a warning,
    where no OFF region is found (Gammapy leaves such a run out).

    Example:
        >>> spectrum_onoff_file(obs, on, edges, true_edges, containment_correction=True)  # doctest: +SKIP
        SpectrumOnOffFile(obs_23523: 12 energies, 96 on, 78 off in 12 regions, 10 safe bins)
    """
    from regions import CircleSkyRegion, PointSkyRegion

    point_like = "rad_max" in observation.irf_locations
    aeff = observation.aeff
    if not point_like and aeff is not None and str(aeff.header.get("HDUCLAS3", "")).upper() == "POINT-LIKE":
        raise ValueError(f"obs {observation.obs_id}: its effective area is point-like (HDUCLAS3 = POINT-LIKE, a fixed cut RAD_MAX = "
                         f"{aeff.header.get('RAD_MAX', '?')} in its header) without a RAD_MAX table; fitax reduces point-like runs with a "
                         "RAD_MAX table only")
    if point_like and not isinstance(on_region, PointSkyRegion):
        raise ValueError(f"obs {observation.obs_id}: its IRFs are point-like (RAD_MAX, an energy-dependent cut radius): the ON region must "
                         f"be a point (regions.PointSkyRegion), as in Gammapy, got {type(on_region).__name__}; Gammapy's analysis "
                         "configuration has none: reduce such runs with fitax.gamma.pipeline.point_like_spectra_files")
    if not point_like and not isinstance(on_region, CircleSkyRegion):
        raise TypeError(f"the ON region must be a circle (regions.CircleSkyRegion), got {type(on_region).__name__}"
                        + (f" (a point needs point-like IRFs with a RAD_MAX table; obs {observation.obs_id} has none)"
                           if isinstance(on_region, PointSkyRegion) else ""))
    if point_like and containment_correction:
        raise ValueError(f"obs {observation.obs_id}: no containment correction with point-like IRFs (their effective area holds the cut)")
    if point_like and not isinstance(finder, WobbleRegionsFinder):
        raise ValueError(f"obs {observation.obs_id}: a point ON region takes its OFF points from a WobbleRegionsFinder, as in Gammapy's "
                         "point-like analyses")
    unsupported = sorted(set(safe_mask_methods) - set(ONOFF_SAFE_MASK_METHODS))
    if unsupported:
        raise ValueError(f"safe-mask methods {unsupported} do not apply to on-off spectra; use some of {list(ONOFF_SAFE_MASK_METHODS)}")
    name = name or f"obs_{observation.obs_id}"
    pointing = observation.pointing
    finder = ReflectedRegionsFinder() if finder is None else finder
    off_regions, off_wcs = finder.find(on_region, pointing, exclusion)
    energy_edges, energy_true_edges = u.Quantity(energy_edges, "TeV"), u.Quantity(energy_true_edges, "TeV")
    if point_like:
        offset = on_region.center.separation(pointing)
        offsets = observation.rad_max.axes["offset"]
        low, high = axis_edges(offsets)[[0, -1]] * offsets.nodes.unit
        if not low <= offset <= high:
            warnings.warn(f"obs {observation.obs_id} left out: the ON point is {offset.to_value('deg'):.3f} deg from the pointing, outside "
                          f"the offsets of its cut radii (RAD_MAX: {low.to_value('deg'):.3f}-{high.to_value('deg'):.3f} deg), where it "
                          "has no events and no exposure", stacklevel=2)
            return None
    if point_like and off_regions:
        off_positions = [r.to_sky(off_wcs).center for r in off_regions]
        if _cut_radii_overlap(observation, [on_region.center, *off_positions], energy_edges):
            warnings.warn(f"obs {observation.obs_id}: the ON and OFF points lie within twice the cut radius (RAD_MAX) of each other "
                          "(use fewer OFF points)", stacklevel=2)
            off_regions = []
    if not off_regions:
        warnings.warn(f"obs {observation.obs_id} left out: no OFF region found (the ON region holds the pointing, or every copy of "
                      "it touches the exclusion mask; as Gammapy)", stacklevel=2)
        return None
    centre_wcs = _tan_wcs(on_region.center, _frame_name(on_region.center), 0.01, 1)  # one pixel, its centre the region's
    exposure = exposure_cube(observation, centre_wcs, (1, 1), energy_true_edges).to_value("m2 s")
    edisp_exposure = exposure[:, None]
    if containment_correction:
        if observation.psf is None:
            raise ValueError(f"obs {observation.obs_id}: containment_correction needs a PSF; the run has none")
        true_centres = np.sqrt(energy_true_edges[1:] * energy_true_edges[:-1])
        offset = on_region.center.separation(pointing)
        exposure = exposure * psf_containment(observation.psf, on_region.radius, offset, true_centres)[:, None, None]
    if observation.edisp is None:
        raise ValueError(f"obs {observation.obs_id}: an on-off spectrum needs an energy dispersion; the run has none")
    edisp = edisp_kernel_map(observation.edisp, pointing, centre_wcs, (1, 1), energy_edges, energy_true_edges)
    # a region's IRFs are its centre's, wherever fixed_offset points (Gammapy's RegionNDMap.get_spectrum)
    parameters = dataclasses.replace(safe_mask_parameters, fixed_offset=None)
    mask = safe_mask(observation, centre_wcs, (1, 1), energy_edges, safe_mask_methods, offset_max=offset_max, parameters=parameters,
                     exposure=exposure, energy_true_edges=energy_true_edges, edisp=edisp, edisp_wcs=centre_wcs)
    n = len(energy_edges) - 1
    on_wcs = _region_wcs(on_region)
    if point_like:
        counts = _rad_max_counts(observation, [on_region.center], energy_edges)
        counts_off = _rad_max_counts(observation, off_positions, energy_edges)
    else:
        counts = _region_counts(observation, [on_region.to_pixel(on_wcs)], on_wcs, energy_edges)
        counts_off = _region_counts(observation, off_regions, off_wcs, energy_edges)
    return SpectrumOnOffFile(
        name=name, counts=counts, counts_off=counts_off, acceptance=np.ones(n),
        acceptance_off=np.full(n, float(len(off_regions))), exposure=exposure[:, 0, 0], edisp=edisp[:, :, 0, 0],
        edisp_exposure=edisp_exposure[:, 0, 0, 0], mask_safe=mask[:, 0, 0], energy_edges=energy_edges.to_value("TeV"),
        energy_true_edges=energy_true_edges.to_value("TeV"), on_region=on_region, on_wcs=on_wcs, off_regions=tuple(off_regions),
        off_wcs=off_wcs, livetime=float(observation.livetime.to_value("s")), gti=observation.gti_times, obs_ids=(observation.obs_id,),
        pointings=(pointing,),
    )  # fmt: skip


def stack_spectra(spectra: list[SpectrumOnOffFile], name: str = "stacked") -> SpectrumOnOffFile:
    """The on-off spectra stacked as Gammapy's ``Datasets.stack_reduce`` stacks them: counts,
    off counts and acceptances added within each spectrum's safe mask, the stacked
    ``acceptance_off`` such that alpha is the off-count-weighted mean of the spectra's (where
    no off count is left, the mean over all bins), exposure and livetime of spectra with a safe
    bin added, the dispersion averaged with its exposure over the safe reconstructed
    energies, the masks' union, the good time intervals' union; the ON region (and WCS) of the
    first, which the off counts now refer to, as in Gammapy.

    Example:
        >>> stack_spectra([spectrum_onoff_file(obs, on, edges, true_edges) for obs in runs])  # doctest: +SKIP
        SpectrumOnOffFile(stacked: 12 energies, 424 on, 977 off in 1 regions, 10 safe bins)
    """
    if not spectra:
        raise ValueError("no spectra to stack")
    first = spectra[0]
    for spectrum in spectra[1:]:
        if not (np.array_equal(spectrum.energy_edges, first.energy_edges) and np.array_equal(spectrum.energy_true_edges, first.energy_true_edges)):
            raise ValueError(f"{spectrum.name}: its energy axes differ from {first.name}'s; spectra stack on the same axes")
    counts = np.zeros_like(first.counts, float)
    counts_off, acceptance, acceptance_off = (np.zeros_like(first.counts, float) for _ in range(3))
    exposure, livetime = np.zeros_like(first.exposure), 0.0
    edisp_sum, edisp_exposure = np.zeros_like(first.edisp), np.zeros_like(first.edisp_exposure)
    mask = np.zeros_like(first.mask_safe, bool)
    for spectrum in spectra:
        safe = spectrum.mask_safe.astype(float)
        alpha = np.where(acceptance_off > 0, acceptance / np.where(acceptance_off > 0, acceptance_off, 1.0), 0.0)
        total_acceptance = acceptance + spectrum.acceptance * safe
        total_off = counts_off + spectrum.counts_off * safe
        total_alpha = alpha * counts_off + spectrum.alpha * spectrum.counts_off * safe
        with np.errstate(divide="ignore", invalid="ignore"):
            acceptance_off = total_acceptance * total_off / total_alpha
            average_alpha = total_alpha.sum() / total_off.sum()
            acceptance_off = np.where(total_off == 0, total_acceptance / average_alpha, acceptance_off)
        acceptance, counts_off = total_acceptance, total_off
        counts += spectrum.counts * safe
        used = float(spectrum.mask_safe.any())
        exposure += spectrum.exposure * used
        livetime += spectrum.livetime * used
        edisp_sum += spectrum.edisp * spectrum.edisp_exposure[:, None] * safe[None, :]
        edisp_exposure += spectrum.edisp_exposure * used
        mask |= spectrum.mask_safe.astype(bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        edisp = np.nan_to_num(edisp_sum / edisp_exposure[:, None])
    gtis = [s.gti for s in spectra if s.gti is not None]
    return dataclasses.replace(
        first, name=name, counts=counts, counts_off=counts_off, acceptance=acceptance, acceptance_off=np.nan_to_num(acceptance_off),
        exposure=exposure, edisp=edisp, edisp_exposure=edisp_exposure, mask_safe=mask, off_regions=(first.on_region.to_pixel(first.on_wcs),),
        off_wcs=first.on_wcs, livetime=livetime, gti=gti_union(gtis) if gtis else None,
        obs_ids=tuple(i for s in spectra for i in s.obs_ids), pointings=tuple(p for s in spectra for p in s.pointings),
    )  # fmt: skip

