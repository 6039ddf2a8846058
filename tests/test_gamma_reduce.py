"""Counts and exposure cubes (fitax.gamma.reduce) against Gammapy 2.1's MapDatasetMaker on
H.E.S.S. DL3 DR1 runs.

Tolerance: counts identical; exposure within 1e-9 relative where it is above 1e-6 of its
maximum (measured 2e-11: the same interpolation in float64); each IRF class evaluated off its
nodes within 1e-6 relative of Gammapy's ``evaluate`` (which interpolates some IRFs in the
float32 of the file; fitax in float64).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord

from conftest import assert_close_where_large, shared_data
from fitax.gamma.dl3 import DataStore, read_irfs
from fitax.gamma.reduce import (
    background_cube, counts_cube, evaluate_irf, exposure_cube, fill_missing_energies, integrate_log_log, safe_mask,
)
from fitax.gamma.geometry import coarse_wcs, pixel_skycoords
from fitax.gamma.irf_maps import edisp_kernel_map, psf_map
from fitax.gamma.makers import MapGeometry, make_map_datasets, map_dataset_file

# (run, centre, frame, projection): the Crab in ICRS/CAR, MSH 15-52 in Galactic/TAN
CASES = [(23523, (83.633, 22.014), "icrs", "CAR"), (20136, (320.33, -1.19), "galactic", "TAN")]


@pytest.mark.parametrize(("obs_id", "centre", "frame", "projection"), CASES)
def test_counts_exposure_background_and_safe_masks_equal_gammapy(obs_id, centre, frame, projection):
    hess = shared_data("gamma", "hess-dl3-dr1")
    pytest.importorskip("gammapy", reason="Gammapy (test extra) not installed")
    from gammapy.data import DataStore as GammapyDataStore
    from gammapy.datasets import MapDataset
    from gammapy.makers import MapDatasetMaker, SafeMaskMaker
    from gammapy.maps import MapAxis, WcsGeom

    energy = MapAxis.from_energy_bounds(0.5, 50, 10, "TeV")
    energy_true = MapAxis.from_energy_bounds(0.3, 100, 20, "TeV", name="energy_true")
    geom = WcsGeom.create(skydir=SkyCoord(*centre, unit="deg", frame=frame), binsz=0.02, width=(4.0, 3.0), frame=frame, proj=projection, axes=[energy])
    reference = MapDatasetMaker(selection=["counts", "exposure", "background"]).run(
        MapDataset.create(geom, energy_axis_true=energy_true), GammapyDataStore.from_dir(hess).obs(obs_id)
    )
    observation = DataStore.from_dir(hess).observation(obs_id)
    shape = geom.data_shape[1:]

    counts = counts_cube(observation, geom.wcs, shape, energy.edges)
    np.testing.assert_array_equal(counts, reference.counts.data)
    assert counts.sum() > 100

    exposure = exposure_cube(observation, geom.wcs, shape, energy_true.edges)
    expected = reference.exposure.quantity.to_value("m2 s")
    relevant = expected > 1e-6 * expected.max()
    assert exposure.unit == u.Unit("m2 s") and relevant.sum() > 0.5 * expected.size
    np.testing.assert_allclose(exposure.value[relevant], expected[relevant], rtol=1e-9)
    assert np.all(exposure.value[~relevant] <= 1e-6 * expected.max() * 1.0001)

    background = background_cube(observation, geom.wcs, shape, energy.edges)
    expected = reference.background.data
    assert background.shape == expected.shape and 0.1 * counts.sum() < background.sum() < 10 * counts.sum()
    np.testing.assert_allclose(background, expected, rtol=RTOL_FLOAT32, atol=1e-9 * expected.max())

    for methods in (["aeff-default"], ["offset-max"], ["bkg-peak"], ["aeff-default", "offset-max", "bkg-peak"]):
        expected = SafeMaskMaker(methods=methods, offset_max="1.7 deg").run(reference.copy(), GammapyDataStore.from_dir(hess).obs(obs_id)).mask_safe.data
        mask = safe_mask(observation, geom.wcs, shape, energy.edges, methods, offset_max=1.7 * u.deg, background=background)
        np.testing.assert_array_equal(mask, expected, err_msg=str(methods))
        assert 0 < mask.sum() < mask.size
    # From below the background's energies (0.1 TeV: NaN where a bin rises from 0, as in Gammapy,
    # which bkg-peak and the positive-background mask skip) to beyond HI_THRES (100 TeV).
    wide = MapAxis.from_edges([0.09, 0.45, 2, 10, 50, 300], unit="TeV", name="energy", interp="log")
    small = WcsGeom.create(skydir=SkyCoord(*centre, unit="deg", frame=frame), binsz=0.5, width=1.0, frame=frame, axes=[wide])
    run = GammapyDataStore.from_dir(hess).obs(obs_id)
    methods = ["aeff-default", "bkg-peak"]
    wide_reference = MapDatasetMaker(selection=["exposure", "background"]).run(MapDataset.create(small), run)
    background = background_cube(observation, small.wcs, small.data_shape[1:], wide.edges)
    assert np.isnan(background[0]).all()
    np.testing.assert_allclose(background, wide_reference.background.data, rtol=RTOL_FLOAT32, equal_nan=True)
    # (bkg-peak's NaN-skipping sum is not what this checks: the NaN bin is below the peak and
    # masked as non-positive either way)
    expected = SafeMaskMaker(methods=methods).run(wide_reference, run).mask_safe.data
    mask = safe_mask(observation, small.wcs, small.data_shape[1:], wide.edges, methods, background=background)
    np.testing.assert_array_equal(mask, expected)
    assert not mask[0].any() and not mask[-1].any() and mask[2].all()


RTOL_FLOAT32 = 1e-6  # Gammapy keeps some IRFs' values or nodes in the file's float32 (measured up to 2e-6 relative at values 1e-9 of the maximum), fitax float64

# Coordinates between and beyond each IRF's nodes, one axis per row of the broadcast grid.
OFF_NODES = {
    "energy_true": np.geomspace(0.005, 200, 29) * u.TeV,
    "energy": np.geomspace(0.005, 200, 29) * u.TeV,
    "offset": np.linspace(-0.1, 3.0, 13) * u.deg,
    "migra": np.linspace(0.0, 3.5, 11),
    "rad": np.linspace(0.0, 0.8, 9) * u.deg,
    "fov_lon": np.linspace(-3.0, 2.8, 9) * u.deg,
    "fov_lat": np.linspace(-2.9, 3.1, 7) * u.deg,
}


def _grid(names):
    return {name: OFF_NODES[name].reshape([-1 if i == k else 1 for k in range(len(names))]) for i, name in enumerate(names)}


@pytest.mark.parametrize("name", ["aeff", "edisp", "psf", "bkg"])
def test_irf_interpolation_equals_gammapy_off_the_nodes(name):
    """Between and beyond the nodes (extrapolated within the outer bins, 0 beyond the edges,
    the background's rates in log), on axes given as nodes (DR1 offsets) and as bins."""
    hess = shared_data("gamma", "hess-dl3-dr1")
    pytest.importorskip("gammapy", reason="Gammapy (test extra) not installed")
    from gammapy.data import DataStore as GammapyDataStore

    irf = getattr(DataStore.from_dir(hess).observation(23523), name)
    reference = getattr(GammapyDataStore.from_dir(hess).obs(23523), name)
    coords = _grid(list(irf.axes))
    ours = evaluate_irf(irf, **coords)
    theirs = reference.evaluate(**coords)
    scale = np.abs(theirs.value).max()
    rtol = 1e-10 if name == "aeff" else RTOL_FLOAT32
    np.testing.assert_allclose(ours.to_value(theirs.unit), theirs.value, rtol=rtol, atol=1e-9 * scale)
    assert np.any(ours.value == 0) and np.mean(ours.value > 0) > 0.15


def test_parametric_psf_and_cta_background_equal_gammapy_off_the_nodes():
    """CTA's 3-Gauss PSF parameters (extrapolated beyond the edges, not 0) and background."""
    path = shared_data("gamma", "cta-caldb", "Prod5-South-20deg-AverageAz-14MSTs37SSTs.180000s-v0.1.fits.gz")
    irf_module = pytest.importorskip("gammapy.irf", reason="Gammapy (test extra) not installed")
    theirs = irf_module.load_irf_dict_from_file(path)
    ours = read_irfs(path)
    coords = _grid(["energy_true", "offset"])
    parameters = theirs["psf"].evaluate_parameters(**coords)
    # Gammapy reads a zero width (an unused Gaussian) as 1 deg before it interpolates
    columns = {c: np.where(v.value == 0, 1.0, v.value) * v.unit if c.startswith("SIGMA") else v for c, v in ours["psf"].columns.items()}
    psf = dataclasses.replace(ours["psf"], columns=columns)
    for column in psf.columns:
        expected = parameters[column.lower()]
        values = evaluate_irf(psf, column, **coords).to_value(expected.unit)
        np.testing.assert_allclose(values, expected.value, rtol=RTOL_FLOAT32, atol=1e-14, err_msg=column)
    beyond = (coords["energy_true"] > psf.axes["energy_true"].edges[-1]) | (coords["offset"] > psf.axes["offset"].edges[-1])
    assert np.all(evaluate_irf(psf, "SCALE", **coords)[np.broadcast_to(beyond, values.shape)] > 0)  # extrapolated, not 0
    bkg = _grid(list(ours["bkg"].axes))
    expected = theirs["bkg"].evaluate(**bkg)
    np.testing.assert_allclose(evaluate_irf(ours["bkg"], **bkg).to_value(expected.unit), expected.value, rtol=RTOL_FLOAT32, atol=1e-9 * expected.value.max())


def test_irf_evaluation_needs_every_axis():
    aeff = DataStore.from_dir(shared_data("gamma", "hess-dl3-dr1")).observation(23523).aeff
    with pytest.raises(ValueError, match=r"give the coordinates \['offset'\]"):
        evaluate_irf(aeff, energy_true=1 * u.TeV)


def test_log_log_integration_is_exact_for_power_laws():
    """Analytic integrals of power laws (index 2.7, and 1 where the closed form changes), 0 over
    an interval starting at 0, along any axis."""
    edges = np.geomspace(0.1, 100, 7)
    for index in (2.7, 1.0, -0.5):
        values = 3.0 * edges**-index
        expected = 3.0 * (np.log(edges[1:] / edges[:-1]) if index == 1 else (edges[1:] ** (1 - index) - edges[:-1] ** (1 - index)) / (1 - index))
        np.testing.assert_allclose(integrate_log_log(values, edges), expected, rtol=1e-12)
    grid = np.stack([edges**-2.0, np.zeros_like(edges)], axis=1)
    integral = integrate_log_log(grid, np.broadcast_to(edges[:, None], grid.shape), axis=0)
    np.testing.assert_allclose(integral[:, 0], 1 / edges[:-1] - 1 / edges[1:], rtol=1e-12)
    assert np.all(integral[:, 1] == 0)


def test_safe_mask_refuses_what_it_cannot_do():
    observation = DataStore.from_dir(shared_data("gamma", "hess-dl3-dr1")).observation(23523)
    from astropy.wcs import WCS

    wcs = WCS(naxis=2)
    wcs.wcs.ctype, wcs.wcs.crval, wcs.wcs.cdelt, wcs.wcs.crpix = ["RA---CAR", "DEC--CAR"], [83.6, 22.0], [-0.1, 0.1], [5.5, 5.5]
    edges = np.geomspace(0.5, 50, 5) * u.TeV
    with pytest.raises(ValueError, match=r"safe-mask methods \['edisp_bias'\] are not available"):
        safe_mask(observation, wcs, (10, 10), edges, ["aeff-default", "edisp_bias"])
    with pytest.raises(ValueError, match="'edisp-bias' needs the EDisp kernel map"):
        safe_mask(observation, wcs, (10, 10), edges, ["aeff-default", "edisp-bias"])
    with pytest.raises(ValueError, match="'aeff-max' needs the exposure cube"):
        safe_mask(observation, wcs, (10, 10), edges, ["aeff-max"])
    with pytest.raises(ValueError, match="'bkg-peak' needs the background cube"):
        safe_mask(observation, wcs, (10, 10), edges, ["bkg-peak"])


@pytest.mark.parametrize(("obs_id", "centre", "frame"), [(23523, (83.633, 22.014), "icrs"), (20136, (320.33, -1.19), "galactic")])
def test_energy_threshold_safe_masks_equal_gammapy(obs_id, centre, frame):
    """``aeff-max`` and ``edisp-bias`` (Gammapy's defaults, other percentages, and at a fixed
    offset from the pointing: 2 deg north, where the aeff-max threshold moves a bin in both
    runs, beyond the Crab map's edge, which Gammapy's nearest-pixel lookup clamps to) on a
    60 x 50 geometry, whose centre falls between pixels: the thresholds within 1e-9 relative
    of Gammapy's (the same root finder on the same curves; the kernels agree to float32), the
    masks identical, and each threshold inside the energy axis."""
    hess = shared_data("gamma", "hess-dl3-dr1")
    pytest.importorskip("gammapy", reason="Gammapy (test extra) not installed")
    from gammapy.data import DataStore as GammapyDataStore
    from gammapy.datasets import MapDataset
    from gammapy.makers import MapDatasetMaker, SafeMaskMaker
    from gammapy.maps import MapAxis, WcsGeom
    from gammapy.modeling.models import TemplateSpectralModel

    from fitax.gamma.reduce import SafeMaskParameters, aeff_max_energy, edisp_bias_energy

    energy = MapAxis.from_energy_bounds(0.1, 50, 24, "TeV")
    energy_true = MapAxis.from_energy_bounds(0.05, 100, 30, "TeV", name="energy_true")
    geom = WcsGeom.create(skydir=SkyCoord(*centre, unit="deg", frame=frame), binsz=0.05, width=(3.0, 2.5), frame=frame, axes=[energy])
    run = GammapyDataStore.from_dir(hess).obs(obs_id)
    reference = MapDatasetMaker().run(MapDataset.create(geom, energy_axis_true=energy_true), run)
    observation = DataStore.from_dir(hess).observation(obs_id)
    shape = geom.data_shape[1:]
    contents = map_dataset_file(observation, MapGeometry(geom.wcs, shape, energy.edges, energy_true.edges, *coarse_wcs(geom.wcs, shape, 0.2)),
                                ("offset-max",))
    valid = np.isfinite(reference.background.data) & (reference.background.data > 0)
    for methods, settings in [(["aeff-max"], {}), (["edisp-bias"], {}), (["aeff-max"], {"aeff_percent": 3}), (["edisp-bias"], {"bias_percent": 3}),
                              (["aeff-max"], {"fixed_offset": 2.0 * u.deg}), (["aeff-max", "edisp-bias"], {"fixed_offset": 2.0 * u.deg})]:
        expected = SafeMaskMaker(methods=methods, **settings).run(reference.copy(), run).mask_safe.data & valid
        mask = safe_mask(observation, geom.wcs, shape, energy.edges, methods, background=contents.background, exposure=contents.exposure,
                         energy_true_edges=energy_true.edges, edisp=contents.edisp, edisp_wcs=contents.edisp_wcs,
                         parameters=SafeMaskParameters(**settings))
        np.testing.assert_array_equal(mask, expected, err_msg=f"{methods} {settings}")
        assert 2 < (~mask.any(axis=(1, 2))).sum() < 12  # the threshold cuts inside the axis

    aeff = reference.exposure.get_spectrum(geom.center_skydir) / reference.exposure.meta["livetime"]
    template = TemplateSpectralModel.from_region_map(aeff)
    lowest = template.energy[np.nonzero(template.values > 0)[0][0]]
    expected = template.inverse(0.1 * aeff.quantity.max(), energy_min=lowest, energy_max=template.energy[-1])[0]
    iy, ix = (np.array(shape) - 1) // 2  # the centre's nearest pixel (ties to the lower index)
    assert aeff_max_energy(contents.exposure[:, iy, ix], energy_true.edges).to_value("TeV") == pytest.approx(expected.to_value("TeV"), rel=1e-9)
    kernel = reference.edisp.get_edisp_kernel(position=geom.center_skydir)
    ours = edisp_bias_energy(kernel.data, energy_true.edges, energy.edges, 10.0).to_value("TeV")
    assert ours == pytest.approx(kernel.get_bias_energy(0.1)[0].to_value("TeV"), rel=1e-9)


def test_template_inverse_takes_the_first_crossing_gammapy_brackets():
    """A curve that rises through the target and falls back through it: the rising crossing
    (Gammapy's first root), the node where the curve starts above it, and NaN if it never gets
    there; against Gammapy's TemplateSpectralModel.inverse within 1e-10."""
    pytest.importorskip("gammapy", reason="Gammapy (test extra) not installed")
    from gammapy.modeling.models import TemplateSpectralModel

    from fitax.gamma.reduce import template_inverse

    energy = np.geomspace(0.1, 100, 13)
    values = np.array([0, 1e-3, 0.05, 0.3, 0.9, 1.0, 0.95, 0.8, 0.5, 0.2, 0.05, 0.01, 0.0])
    model = TemplateSpectralModel(energy=energy * u.TeV, values=values * u.Unit("m2"))
    for target, low, high in [(0.2, 0.1, 100), (0.5, 0.6, 100), (0.02, 1.0, 100), (2.0, 0.1, 100)]:
        expected = model.inverse(target * u.m**2, energy_min=low * u.TeV, energy_max=high * u.TeV)[0].to_value("TeV")
        ours = template_inverse(energy, values, target, low, high)
        assert (np.isnan(ours) and np.isnan(expected)) or ours == pytest.approx(expected, rel=1e-10), (target, ours, expected)
    assert np.isnan(template_inverse(energy, values, 2.0, 0.1, 100))


def test_a_2d_background_is_predicted_as_gammapy_does(tmp_path):
    """A radial (energy, offset) background (GADF ``bkg_2d``, none in the shared data: made
    here with Gammapy and written beside a CTA effective area), on a Galactic geometry 9 x 8
    deg around the pointing, beyond the IRF's 4 deg of offsets: Gammapy pads the offset axis
    by a bin of edge values, so the prediction reaches 4.5 deg. Within 1e-9 (measured 2e-13)."""
    pytest.importorskip("gammapy", reason="Gammapy (test extra) not installed")
    import types

    from astropy.io import fits
    from gammapy.data import FixedPointingInfo, Observation
    from gammapy.datasets import MapDataset
    from gammapy.irf import Background2D, load_irf_dict_from_file
    from gammapy.makers import MapDatasetMaker
    from gammapy.maps import MapAxis, WcsGeom

    energy = MapAxis.from_energy_bounds(0.1, 100, 12, "TeV")
    offset = MapAxis.from_edges(np.linspace(0, 4, 9), unit="deg", name="offset")
    e, o = energy.center[:, None].to_value("TeV"), offset.center[None].to_value("deg")
    hdu = Background2D(axes=[energy, offset], data=1e-4 * e**-2.7 * np.exp(-(o**2) / 4.5) * (1 + 0.1 * np.sin(3 * o)),
                       unit="s-1 MeV-1 sr-1").to_table_hdu()  # fmt: skip
    hdu.name = "BACKGROUND"
    cta = shared_data("gamma", "cta-caldb", "Prod5-South-20deg-AverageAz-14MSTs37SSTs.180000s-v0.1.fits.gz")
    with fits.open(cta) as hdul:
        fits.HDUList([fits.PrimaryHDU(), hdul["EFFECTIVE AREA"].copy(), hdu]).writeto(tmp_path / "irfs.fits")
    pointing = SkyCoord(83.6, 22.0, unit="deg")
    run = Observation.create(pointing=FixedPointingInfo(fixed_icrs=pointing), livetime=1 * u.h, irfs=load_irf_dict_from_file(tmp_path / "irfs.fits"))
    axis = MapAxis.from_energy_bounds(0.3, 50, 8, "TeV")
    geom = WcsGeom.create(skydir=pointing, binsz=0.1, width=(9, 8), frame="galactic", axes=[axis])
    expected = MapDatasetMaker(selection=["background"]).run(MapDataset.create(geom), run).background.data

    observation = types.SimpleNamespace(bkg=read_irfs(tmp_path / "irfs.fits")["bkg"], pointing=pointing, ontime=1 * u.h, obs_id=1)
    background = background_cube(observation, geom.wcs, geom.data_shape[1:], axis.edges)
    assert_close_where_large(background, expected, 1e-9)
    offsets = pixel_skycoords(geom.wcs, geom.data_shape[1:]).separation(pointing).deg
    assert np.all(background[:, (offsets > 4.0) & (offsets < 4.45)] > 0) and np.all(background[:, offsets > 4.55] == 0)


def test_missing_background_rates_are_filled_along_energy_as_gammapy():
    """Gammapy's MapDatasetMaker fills a background's zero rates between valid energies
    (``interp_missing_data``) before it predicts counts: run 23526 has such holes."""
    hess = shared_data("gamma", "hess-dl3-dr1")
    pytest.importorskip("gammapy", reason="Gammapy (test extra) not installed")
    from gammapy.data import DataStore as GammapyDataStore

    ours = DataStore.from_dir(hess).observation(23526).bkg
    reference = GammapyDataStore.from_dir(hess).obs(23526).bkg
    reference.interp_missing_data(axis_name="energy")
    filled = fill_missing_energies(ours)
    changed = filled.data.value != ours.data.value
    assert changed.sum() == 3 and np.all(ours.data.value[changed] == 0)  # 3 holes, at the edge of the FoV
    np.testing.assert_allclose(filled.data.to_value(reference.unit), reference.data, rtol=RTOL_FLOAT32, atol=0)


def test_reduced_run_written_as_a_map_dataset_is_what_gammapy_makes(tmp_path):
    """A run reduced and written (fitax.gamma.io.write_map_dataset) reads back in Gammapy as
    the MapDataset its makers make: counts, exposure, background, PSF and EDisp kernel maps
    (with their exposures), safe mask, livetime."""
    hess = shared_data("gamma", "hess-dl3-dr1")
    pytest.importorskip("gammapy", reason="Gammapy (test extra) not installed")
    from gammapy.data import DataStore as GammapyDataStore
    from gammapy.datasets import MapDataset
    from gammapy.makers import MapDatasetMaker, SafeMaskMaker
    from gammapy.maps import MapAxis, WcsGeom

    from fitax.gamma.io import read_map_dataset, write_map_dataset

    energy = MapAxis.from_energy_bounds(0.5, 50, 6, "TeV")
    energy_true = MapAxis.from_energy_bounds(0.3, 100, 12, "TeV", name="energy_true")
    geom = WcsGeom.create(skydir=SkyCoord(83.633, 22.014, unit="deg"), binsz=0.05, width=(3.0, 2.5), frame="icrs", axes=[energy])
    methods = ("aeff-default", "offset-max", "bkg-peak")
    run = GammapyDataStore.from_dir(hess).obs(23523)
    reference = MapDatasetMaker().run(MapDataset.create(geom, energy_axis_true=energy_true), run)
    reference = SafeMaskMaker(methods=list(methods), offset_max="1.4 deg").run(reference, run)

    observation = DataStore.from_dir(hess).observation(23523)
    geometry = MapGeometry(geom.wcs, geom.data_shape[1:], energy.edges, energy_true.edges)
    contents = map_dataset_file(observation, geometry, methods, offset_max=1.4 * u.deg)
    path = write_map_dataset(contents, tmp_path / "obs_23523.fits.gz")
    read = MapDataset.read(path)
    np.testing.assert_array_equal(read.counts.data, reference.counts.data)
    np.testing.assert_allclose(read.exposure.quantity.to_value("m2 s"), reference.exposure.quantity.to_value("m2 s"), rtol=1e-9)
    np.testing.assert_allclose(read.background.data, reference.background.data, rtol=RTOL_FLOAT32)
    assert read.psf.psf_map.geom == reference.psf.psf_map.geom and read.edisp.edisp_map.geom == reference.edisp.edisp_map.geom
    assert_close_where_large(read.psf.psf_map.quantity.to_value("deg-2"), reference.psf.psf_map.quantity.to_value("deg-2"), 1e-10)
    assert_close_where_large(read.edisp.edisp_map.data, reference.edisp.edisp_map.data, RTOL_FLOAT32)
    for ours, theirs in ((read.psf.exposure_map, reference.psf.exposure_map), (read.edisp.exposure_map, reference.edisp.exposure_map)):
        assert ours.geom.data_shape == theirs.geom.data_shape
        np.testing.assert_allclose(ours.quantity.to_value("m2 s"), theirs.quantity.to_value("m2 s"), rtol=1e-9)
    np.testing.assert_array_equal(read.mask_safe.data, reference.mask_safe.data)
    assert 0 < read.mask_safe.data.sum() < read.mask_safe.data.size
    assert read.gti.time_sum.to_value("s") == pytest.approx(reference.gti.time_sum.to_value("s"), rel=1e-12)
    assert read_map_dataset(path).counts.sum() == reference.counts.data.sum() > 100


@pytest.mark.slow  # a long comparison, run by make test-slow (CI runs both): make test stays under 15 min
def test_psf_and_edisp_maps_of_a_cta_three_gauss_psf_equal_gammapy():
    """CTA Prod5 South (3-Gauss PSF, widths written as 0 below its energy range, edisp_2d), a
    Galactic TAN geometry 9 x 7 deg around an offset pointing, beyond the IRFs' offsets."""
    path = shared_data("gamma", "cta-caldb", "Prod5-South-20deg-AverageAz-14MSTs37SSTs.180000s-v0.1.fits.gz")
    pytest.importorskip("gammapy", reason="Gammapy (test extra) not installed")
    from gammapy.data import FixedPointingInfo, Observation
    from gammapy.datasets import MapDataset
    from gammapy.irf import load_irf_dict_from_file
    from gammapy.makers import MapDatasetMaker
    from gammapy.maps import MapAxis, WcsGeom

    pointing = SkyCoord(2.0, 1.0, unit="deg", frame="galactic").icrs
    run = Observation.create(pointing=FixedPointingInfo(fixed_icrs=pointing), livetime=1 * u.h, irfs=load_irf_dict_from_file(path))
    energy = MapAxis.from_energy_bounds(0.05, 100, 8, "TeV")
    energy_true = MapAxis.from_energy_bounds(0.03, 200, 14, "TeV", name="energy_true")
    geom = WcsGeom.create(skydir=SkyCoord(0, 0, unit="deg", frame="galactic"), binsz=0.05, width=(9.0, 7.0), frame="galactic", proj="TAN",
                          axes=[energy])
    reference = MapDatasetMaker(selection=["psf", "edisp"]).run(MapDataset.create(geom, energy_axis_true=energy_true), run)

    irfs = read_irfs(path)
    wcs, shape = coarse_wcs(geom.wcs, geom.data_shape[1:], 0.2)
    assert reference.psf.psf_map.geom.data_shape[2:] == shape
    psf = psf_map(irfs["psf"], pointing, wcs, shape, energy_true.edges)
    edisp = edisp_kernel_map(irfs["edisp"], pointing, wcs, shape, energy.edges, energy_true.edges)
    assert_close_where_large(psf, reference.psf.psf_map.quantity.to_value("deg-2"), 1e-10)
    assert_close_where_large(edisp, reference.edisp.edisp_map.data, RTOL_FLOAT32)
    # beyond the IRFs' 6 deg offsets: no dispersion, but a PSF at some energies (parametric PSFs are extrapolated
    # everywhere, as in Gammapy)
    beyond = pixel_skycoords(wcs, shape).separation(pointing) > 6 * u.deg
    assert beyond.sum() > 10 and np.all(edisp[..., beyond] == 0) and np.any(psf[:, 0, beyond] > 0)


def test_a_geometry_that_misses_the_run_is_a_clear_error():
    from astropy.wcs import WCS

    observation = DataStore.from_dir(shared_data("gamma", "hess-dl3-dr1")).observation(23523)
    wcs = WCS(naxis=2)
    wcs.wcs.ctype, wcs.wcs.crval, wcs.wcs.cdelt, wcs.wcs.crpix = ["RA---CAR", "DEC--CAR"], [150.0, -30.0], [-0.1, 0.1], [5.5, 5.5]
    edges = np.geomspace(0.5, 50, 5) * u.TeV
    with pytest.raises(ValueError, match=r"obs 23523: the geometry \(10x10 pixels\) has no exposure from this run; its pointing \(RA 83.63"):
        map_dataset_file(observation, MapGeometry(wcs, (10, 10), edges, edges))


def test_stacking_a_run_twice_counts_its_good_time_once():
    """Stacked good time intervals are their union (Gammapy's ``GTI.union``): overlapping
    intervals count once, while counts add."""
    from fitax.gamma.stacking import stack_map_datasets

    observation = DataStore.from_dir(shared_data("gamma", "hess-dl3-dr1")).observation(23523)
    geometry = MapGeometry(*_small_geometry())
    run = map_dataset_file(observation, geometry, ("offset-max",), offset_max=1.0 * u.deg)
    stacked = stack_map_datasets(geometry, [run, run])
    assert stacked.gti.shape == (1, 2) and stacked.livetime == pytest.approx(run.livetime, rel=1e-12)
    np.testing.assert_array_equal(stacked.counts, 2 * run.counts * run.mask_safe)


def _small_geometry():
    from astropy.wcs import WCS

    wcs = WCS(naxis=2)
    wcs.wcs.ctype, wcs.wcs.crval, wcs.wcs.cdelt, wcs.wcs.crpix = ["RA---CAR", "DEC--CAR"], [83.633, 22.014], [-0.05, 0.05], [20.5, 20.5]
    return wcs, (40, 40), np.geomspace(1, 10, 4) * u.TeV, np.geomspace(0.7, 15, 7) * u.TeV


def test_a_stack_too_large_for_memory_is_made_on_the_runs_bounding_box():
    """Where the stacked cubes on the whole geometry would pass the limit (an all-sky
    geometry: ~74 GB at 0.02 deg), the runs are stacked on the part of the same pixel grid
    their cutouts cover: every array equals the whole stack's there, and nothing of the whole
    stack lies outside it."""
    import warnings

    from fitax.gamma.stacking import stack_map_datasets, stacked_bytes, stacking_geometry

    store = DataStore.from_dir(shared_data("gamma", "hess-dl3-dr1"))
    wcs, _, energy, true = _small_geometry()
    wcs.wcs.crpix = [60.5, 60.5]
    geometry = MapGeometry(wcs, (120, 120), energy, true)  # 6 x 6 deg around the Crab
    runs = make_map_datasets(store, [23523, 23526], geometry, ("offset-max",), 1.0 * u.deg, offset_max=1.0 * u.deg)
    whole = stack_map_datasets(geometry, runs)
    with pytest.warns(UserWarning, match=r"stacking on the runs' \d+ x \d+ pixels of the 120 x 120 geometry"):
        cropped_geometry = stacking_geometry(geometry, runs, limit=stacked_bytes(geometry) - 1)
    assert np.prod(cropped_geometry.shape) < 0.5 * np.prod(geometry.shape)
    cropped = stack_map_datasets(cropped_geometry, runs)
    x0, y0 = (int(round(v)) for v in np.asarray(geometry.wcs.wcs.crpix) - cropped_geometry.wcs.wcs.crpix)
    ny, nx = cropped_geometry.shape
    for name in ("counts", "exposure", "background", "mask_safe"):
        full, part = getattr(whole, name), getattr(cropped, name)
        np.testing.assert_array_equal(part, full[..., y0:y0 + ny, x0:x0 + nx], err_msg=name)
        outside = full.copy()
        outside[..., y0:y0 + ny, x0:x0 + nx] = 0
        assert not outside.any(), name
    ix0, iy0 = (int(round(v)) for v in np.asarray(geometry.irf_wcs.wcs.crpix) - cropped_geometry.irf_wcs.wcs.crpix)
    iny, inx = cropped_geometry.irf_shape
    np.testing.assert_array_equal(cropped.psf, whole.psf[..., iy0:iy0 + iny, ix0:ix0 + inx])
    np.testing.assert_allclose(cropped.edisp, whole.edisp[..., iy0:iy0 + iny, ix0:ix0 + inx], rtol=0, atol=1e-15)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert stacking_geometry(geometry, runs) is geometry  # small enough: the whole geometry, as Gammapy
