"""1D on-off reduction (fitax.gamma.spectrum_reduce, ``fitax gamma reduce`` with ``type: 1d``)
against Gammapy 2.1's SpectrumDatasetMaker, ReflectedRegionsBackgroundMaker, SafeMaskMaker,
Datasets.stack_reduce and high-level Analysis on H.E.S.S. DR1 runs.

Tolerances: counts, off counts, numbers of OFF regions and safe masks identical; OFF-region
centres within 1e-9 deg; exposure (with the PSF containment) and energy dispersion within 1e-12
relative (measured 8e-15: the same interpolation in float64); stacked spectra within 1e-6
(Gammapy stacks in float32, measured 1.1e-7); the fitted spectrum within 0.05 sigma and its
errors within 1%.
"""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from astropy import units as u
from astropy.coordinates import SkyCoord

from conftest import shared_data
from fitax.cli import main

gammapy = pytest.importorskip("gammapy", reason="Gammapy (test extra) not installed")

CRAB = SkyCoord(83.633, 22.014, unit="deg")
METHODS = ["aeff-default", "aeff-max", "edisp-bias", "offset-max"]


def _exclusion_mask_file(path):
    """A Gammapy exclusion mask (False near a star 1 deg from the Crab) written as Gammapy does."""
    from gammapy.maps import WcsGeom
    from regions import CircleSkyRegion

    geom = WcsGeom.create(skydir=CRAB, binsz=0.02, width=5.0, frame="icrs")
    mask = ~geom.region_mask([CircleSkyRegion(SkyCoord(84.4, 21.2, unit="deg"), 0.3 * u.deg)])
    mask.write(path)
    return mask


@pytest.mark.parametrize(("obs_id", "centre", "radius", "settings"), [
    (23523, CRAB, 0.11, {}),
    (23592, CRAB, 0.11, {"min_distance": 0.2 * u.rad, "angle_increment": 0.05 * u.rad}),
    (23526, CRAB, 0.3, {"min_distance_input": 0.3 * u.rad, "max_region_number": 3}),
    (20136, SkyCoord(320.33, -1.19, unit="deg", frame="galactic"), 0.2, {}),
])  # fmt: skip
def test_reflected_regions_equal_gammapys(obs_id, centre, radius, settings, tmp_path):
    from gammapy.data import DataStore as GammapyDataStore
    from gammapy.makers import ReflectedRegionsFinder as TheirFinder, WobbleRegionsFinder as TheirWobble
    from regions import CircleSkyRegion

    from fitax.gamma.dl3 import DataStore
    from fitax.gamma.io import read_sky_mask
    from fitax.gamma.spectrum_reduce import ReflectedRegionsFinder, WobbleRegionsFinder

    hess = shared_data("gamma", "hess-dl3-dr1")
    run = GammapyDataStore.from_dir(hess).obs(obs_id)
    pointing = DataStore.from_dir(hess).observation(obs_id).pointing
    on = CircleSkyRegion(centre, radius * u.deg)
    mask = _exclusion_mask_file(tmp_path / "exclusion.fits")
    cases = [(TheirFinder(**settings), ReflectedRegionsFinder(**settings), None, None),
             (TheirFinder(**settings), ReflectedRegionsFinder(**settings), mask, read_sky_mask(tmp_path / "exclusion.fits")),
             (TheirWobble(n_off_regions=3), WobbleRegionsFinder(n_off_regions=3), mask, read_sky_mask(tmp_path / "exclusion.fits"))]
    counts = []
    for theirs, ours, their_mask, our_mask in cases:
        expected, _ = theirs.run(on, run.get_pointing_icrs(run.tmid), their_mask)
        found, _ = ours.run(on, pointing, our_mask)
        assert len(found) == len(expected) > 0
        separation = max(a.center.separation(b.center).deg for a, b in zip(found, expected))
        assert separation < 1e-9 and max(abs((a.radius - b.radius).to_value("deg")) for a, b in zip(found, expected)) < 1e-12
        counts.append(len(found))
    if obs_id == 23523:  # the star is 0.8 deg from this run's pointing, where its regions fall: the mask removes some
        assert counts[1] < counts[0]


def _their_spectrum(run, on, energy, energy_true, methods, **safe):
    from gammapy.datasets import SpectrumDataset
    from gammapy.makers import ReflectedRegionsBackgroundMaker, SafeMaskMaker, SpectrumDatasetMaker
    from gammapy.maps import RegionGeom

    reference = SpectrumDataset.create(RegionGeom.create(on, axes=[energy]), energy_axis_true=energy_true, name=str(run.obs_id))
    dataset = SpectrumDatasetMaker(selection=["counts", "exposure", "edisp"], containment_correction=True).run(reference, run)
    dataset = ReflectedRegionsBackgroundMaker().run(dataset, run)
    return SafeMaskMaker(methods=methods, **safe).run(dataset, run)


def test_onoff_spectra_and_their_stack_equal_gammapys(tmp_path):
    """Per run: counts, OFF counts, alpha, exposure with the PSF containment of a 0.11 deg
    region, EDisp and safe masks (edisp-bias at a non-default percentage with the others;
    aeff-max alone at 30 and 60%, where it decides) as Gammapy's makers; written, Gammapy
    reads the same. Stacked: as Gammapy's stack_reduce."""
    from gammapy.data import DataStore as GammapyDataStore
    from gammapy.datasets import Datasets, SpectrumDatasetOnOff
    from gammapy.maps import MapAxis
    from gammapy.utils.regions import compound_region_to_regions
    from regions import CircleSkyRegion

    from fitax.gamma.dl3 import DataStore
    from fitax.gamma.io import write_spectrum_onoff
    from fitax.gamma.reduce import SafeMaskParameters
    from fitax.gamma.spectrum import read_spectrum_dataset
    from fitax.gamma.spectrum_reduce import spectrum_onoff_file, stack_spectra

    hess = shared_data("gamma", "hess-dl3-dr1")
    on = CircleSkyRegion(CRAB, 0.11 * u.deg)
    energy = MapAxis.from_energy_bounds(0.5, 40, 12, "TeV")
    energy_true = MapAxis.from_energy_bounds(0.3, 60, 20, "TeV", name="energy_true")
    theirs, ours = [], []
    for obs_id in (23523, 23526, 23592):
        run = GammapyDataStore.from_dir(hess).obs(obs_id)
        reference = _their_spectrum(run, on, energy, energy_true, METHODS, aeff_percent=20, bias_percent=5, offset_max="2.5 deg")
        spectrum = spectrum_onoff_file(DataStore.from_dir(hess).observation(obs_id), on, energy.edges, energy_true.edges, METHODS,
                                       2.5 * u.deg, SafeMaskParameters(aeff_percent=20, bias_percent=5), containment_correction=True)
        np.testing.assert_array_equal(spectrum.counts, reference.counts.data.ravel())
        np.testing.assert_array_equal(spectrum.counts_off, reference.counts_off.data.ravel())
        np.testing.assert_array_equal(spectrum.alpha, reference.alpha.data.ravel())
        np.testing.assert_allclose(spectrum.exposure, reference.exposure.quantity.to_value("m2 s").ravel(), rtol=1e-12)
        np.testing.assert_allclose(spectrum.edisp, reference.edisp.edisp_map.data[..., 0, 0], rtol=0, atol=1e-12)
        np.testing.assert_array_equal(spectrum.mask_safe, reference.mask_safe.data.ravel())
        assert spectrum.counts.sum() > 100 and 2 <= (~spectrum.mask_safe).sum() < 6  # the thresholds bite

        read = SpectrumDatasetOnOff.read(write_spectrum_onoff(spectrum, tmp_path / f"pha_{spectrum.name}.fits"))
        for name in ("counts", "counts_off", "acceptance", "acceptance_off", "mask_safe"):
            np.testing.assert_array_equal(getattr(read, name).data, getattr(reference, name).data, err_msg=name)
        np.testing.assert_allclose(read.exposure.data, reference.exposure.data, rtol=1e-12)
        off_regions = compound_region_to_regions(read.counts_off.geom.region)
        assert len(off_regions) == len(spectrum.off_regions) == reference.acceptance_off.data[0, 0, 0]
        found = [r.to_sky(spectrum.off_wcs) for r in spectrum.off_regions]
        assert max(a.center.separation(b.center).deg for a, b in zip(off_regions, found)) < 1e-9
        assert read.gti.time_sum.to_value("s") == pytest.approx(reference.gti.time_sum.to_value("s"), abs=1e-6)
        assert read_spectrum_dataset(tmp_path / f"pha_{spectrum.name}.fits").counts.sum() == spectrum.counts.sum()
        theirs.append(reference)
        ours.append(spectrum)

    # aeff-max alone, where it decides: its threshold comes from the exposure after the containment correction
    run = GammapyDataStore.from_dir(hess).obs(23523)
    for percent in (30, 60):
        reference = _their_spectrum(run, on, energy, energy_true, ["aeff-max"], aeff_percent=percent)
        spectrum = spectrum_onoff_file(DataStore.from_dir(hess).observation(23523), on, energy.edges, energy_true.edges, ["aeff-max"],
                                       safe_mask_parameters=SafeMaskParameters(aeff_percent=percent), containment_correction=True)
        np.testing.assert_array_equal(spectrum.mask_safe, reference.mask_safe.data.ravel(), err_msg=f"aeff-max {percent}%")
        assert 1 <= (~spectrum.mask_safe).sum() <= 6

    stacked = Datasets(theirs).stack_reduce(name="stacked")
    read = SpectrumDatasetOnOff.read(write_spectrum_onoff(stack_spectra(ours), tmp_path / "pha_stacked.fits"))
    for name in ("counts", "counts_off", "acceptance", "mask_safe"):
        np.testing.assert_array_equal(getattr(read, name).data, getattr(stacked, name).data, err_msg=name)
    for name in ("acceptance_off", "exposure"):
        np.testing.assert_allclose(getattr(read, name).data, getattr(stacked, name).data, rtol=1e-6, err_msg=name)
    np.testing.assert_allclose(read.edisp.edisp_map.data, stacked.edisp.edisp_map.data, rtol=0, atol=1e-6)
    assert read.gti.time_sum.to_value("s") == pytest.approx(stacked.gti.time_sum.to_value("s"), abs=1e-6)
    assert read.stat_sum() == pytest.approx(stacked.stat_sum(), rel=1e-6)


def test_psf_containment_of_a_three_gauss_psf_equals_gammapys():
    from gammapy.irf import load_irf_dict_from_file

    from fitax.gamma.dl3 import read_irfs
    from fitax.gamma.spectrum_reduce import psf_containment

    path = shared_data("gamma", "cta-caldb", "Prod5-South-20deg-AverageAz-14MSTs37SSTs.180000s-v0.1.fits.gz")
    theirs = load_irf_dict_from_file(path)["psf"]
    energy = np.geomspace(0.05, 100, 9) * u.TeV
    for radius, offset in ((0.02, 0.5), (0.05, 2.3)):
        expected = np.asarray(theirs.containment(rad=radius * u.deg, offset=offset * u.deg, energy_true=energy))
        ours = psf_containment(read_irfs(path)["psf"], radius * u.deg, offset * u.deg, energy)
        np.testing.assert_allclose(ours, expected, rtol=1e-6)
        assert ours.min() < 0.9 and ours.max() > 0.3  # neither trivially 1 nor 0


def _config(store, **datasets):
    settings = {
        "type": "1d", "stack": False,
        "geom": {"axes": {"energy": {"min": "0.5 TeV", "max": "40 TeV", "nbins": 12}, "energy_true": {"min": "0.3 TeV", "max": "60 TeV", "nbins": 20}}},
        "background": {"method": "reflected", "parameters": {"min_distance": "0.1 rad"}},
        "on_region": {"frame": "icrs", "lon": "83.633 deg", "lat": "22.014 deg", "radius": "0.11 deg"},
        "containment_correction": True,
        "safe_mask": {"methods": ["aeff-default", "aeff-max"], "parameters": {"aeff_percent": 20}},
    }  # fmt: skip
    settings.update(datasets)
    return {"observations": {"datastore": str(store), "obs_ids": [23526, 23523, 23592, 23559]}, "datasets": settings}


def test_reduce_cli_makes_the_spectra_gammapys_analysis_makes_and_fits_them_alike(tmp_path):
    """``fitax gamma reduce`` on a 1d configuration (with an exclusion mask) against Gammapy's
    Analysis on the same YAML, runs in order, then unstacked and stacked: the files Gammapy
    reads hold its spectra; ``fitax gamma fit`` of the unstacked ones finds the power law
    Gammapy (iminuit) fits to the same files, and ``fitax gamma estimate flux-points``
    and ``light-curve`` (per run) Gammapy's flux points and light curve (norms and errors
    within 1e-3, TS within 1e-2)."""
    from gammapy.analysis import Analysis, AnalysisConfig
    from gammapy.datasets import Datasets
    from gammapy.modeling import Fit
    from gammapy.modeling.models import Models

    hess = shared_data("gamma", "hess-dl3-dr1")
    _exclusion_mask_file(tmp_path / "exclusion.fits")
    for stack in (False, True):
        config = _config(hess, stack=stack, background={"method": "reflected", "exclusion": str(tmp_path / "exclusion.fits")})
        path = tmp_path / f"analysis_{stack}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        assert main(["gamma", "reduce", str(path), "--out", str(tmp_path / f"out_{stack}")]) == 0
    analysis = Analysis(AnalysisConfig.read(tmp_path / "analysis_False.yaml"))
    analysis.get_observations()
    analysis.get_datasets()
    ours = Datasets.read(tmp_path / "out_False" / "datasets.yaml")
    assert ours.names == ["obs_23526", "obs_23523", "obs_23592", "obs_23559"]
    for mine, theirs in zip(ours, analysis.datasets, strict=True):
        for name in ("counts", "counts_off", "mask_safe"):
            np.testing.assert_array_equal(getattr(mine, name).data, getattr(theirs, name).data, err_msg=name)
        np.testing.assert_allclose(mine.alpha.data, theirs.alpha.data, rtol=1e-12)
        np.testing.assert_allclose(mine.exposure.data, theirs.exposure.data, rtol=1e-12)
    # stack: true writes the runs' stack (its agreement with Gammapy's stack_reduce: test_onoff_spectra_and_their_stack_equal_gammapys)
    (stacked,) = Datasets.read(tmp_path / "out_True" / "datasets.yaml")
    assert stacked.name == "stacked"
    np.testing.assert_array_equal(stacked.counts.data, Datasets(list(ours)).stack_reduce().counts.data)

    models = {"components": [{"name": "crab", "type": "SkyModel", "spectral": {"type": "PowerLawSpectralModel", "parameters": [
        {"name": "index", "value": 2.5}, {"name": "amplitude", "value": 3e-11, "unit": "TeV-1 s-1 cm-2"},
        {"name": "reference", "value": 1.0, "unit": "TeV"}]}}]}  # fmt: skip
    (tmp_path / "crab.yaml").write_text(yaml.safe_dump(models))
    assert main(["gamma", "fit", "--datasets", str(tmp_path / "out_False" / "datasets.yaml"), "--models", str(tmp_path / "crab.yaml"),
                 "--out", str(tmp_path / "fit"), "--no-plots"]) == 0
    fitted = Models.read(tmp_path / "fit" / "models.yaml")["crab"].spectral_model
    theirs = Datasets.read(tmp_path / "out_False" / "datasets.yaml")  # Gammapy's Analysis names its spectra at random
    theirs.models = Models.read(tmp_path / "crab.yaml")
    assert Fit().run(theirs).success
    for parameter in theirs.models["crab"].spectral_model.parameters.free_parameters:
        ours = fitted.parameters[parameter.name]
        assert abs(ours.value - parameter.value) < 0.05 * parameter.error, parameter.name
        assert ours.error == pytest.approx(parameter.error, rel=0.01), parameter.name
    assert 2.3 < fitted.parameters["index"].value < 2.8

    # flux points of the fitted model on the on-off spectra (WStat), against Gammapy's estimator
    from gammapy.estimators import FluxPoints, FluxPointsEstimator

    edges = [0.7, 1, 2, 4, 10, 30]
    assert main(["gamma", "estimate", "flux-points", "--datasets", str(tmp_path / "out_False" / "datasets.yaml"), "--models",
                 str(tmp_path / "fit" / "models.yaml"), "--source", "crab", "--energy-edges", ",".join(map(str, edges)),
                 "--out", str(tmp_path / "sed"), "--no-plots"]) == 0  # fmt: skip
    ours = FluxPoints.read(tmp_path / "sed" / "flux_points.fits").to_table(sed_type="likelihood")
    theirs.models = Models.read(tmp_path / "fit" / "models.yaml")
    expected = FluxPointsEstimator(energy_edges=edges * u.TeV, source="crab", selection_optional="all").run(theirs).to_table(sed_type="likelihood")
    assert np.all(np.asarray(expected["ts"]) > 25)
    for name in ("norm", "norm_err", "norm_errp", "norm_errn", "norm_ul", "npred", "npred_excess"):
        # measured 1.4e-4 on norm: Minuit stops 3e-6 above the minimum fitax's Newton solve reaches
        np.testing.assert_allclose(np.asarray(ours[name], float), np.asarray(expected[name], float), rtol=1e-3, err_msg=name)
    np.testing.assert_allclose(ours["ts"], expected["ts"], rtol=0, atol=1e-2)
    np.testing.assert_array_equal(ours["counts"], expected["counts"])
    np.testing.assert_allclose(ours["stat_scan"], expected["stat_scan"], rtol=0, atol=1e-6)

    # a light curve per run (the spectra's good time intervals), against Gammapy's estimator
    from gammapy.estimators import LightCurveEstimator

    assert main(["gamma", "estimate", "light-curve", "--datasets", str(tmp_path / "out_False" / "datasets.yaml"), "--models",
                 str(tmp_path / "fit" / "models.yaml"), "--source", "crab", "--energy-edges", "0.7,10", "--out", str(tmp_path / "lc"),
                 "--no-plots"]) == 0  # fmt: skip
    ours = FluxPoints.read(tmp_path / "lc" / "light_curve.fits", format="lightcurve").to_table(sed_type="likelihood", format="lightcurve")
    expected = LightCurveEstimator(energy_edges=[0.7, 10] * u.TeV, source="crab", selection_optional="all").run(theirs)
    expected = expected.to_table(sed_type="likelihood", format="lightcurve")
    assert len(ours) == len(expected) == 4
    np.testing.assert_allclose(ours["time_min"], expected["time_min"], rtol=0, atol=1e-8)
    for name in ("norm", "norm_err", "norm_errn", "norm_errp", "norm_ul", "npred"):
        np.testing.assert_allclose(np.asarray(ours[name], float), np.asarray(expected[name], float), rtol=1e-3, err_msg=name)
    np.testing.assert_allclose(ours["ts"], expected["ts"], rtol=0, atol=1e-2)


@pytest.mark.parametrize(("change", "message"), [
    ({"on_region": {"frame": "icrs", "lon": "83.6 deg", "lat": "22.0 deg"}}, r"'config.datasets.on_region' needs lon, lat and radius .* radius missing"),
    ({"background": {"method": "fov_background"}}, r"'config.datasets.background.method' = 'fov_background': a 1d analysis takes 'reflected'"),
    ({"safe_mask": {"methods": ["bkg-peak"]}}, r"'bkg-peak': not supported yet for on-off spectra"),
    ({"background": {"method": "reflected", "parameters": {"angle_increment": "0 rad"}}}, r"angle_increment = 0.0 rad must be positive"),
    ({"background": {"method": "reflected", "parameters": {"n_off_regions": 3}}}, r"unknown key 'config.datasets.background.parameters.n_off_regions'"),
    ({"containment_correction": "yes"}, r"'datasets.containment_correction' = 'yes'; expected true or false"),
])  # fmt: skip
def test_bad_1d_configurations_are_errors_naming_the_key_and_write_nothing(tmp_path, capsys, change, message):
    hess = shared_data("gamma", "hess-dl3-dr1")
    config = _config(hess, **change)
    path = tmp_path / "analysis.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["gamma", "reduce", str(path), "--out", str(tmp_path / "out")]) == 2
    import re

    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_a_wstat_flux_point_of_an_off_less_bin_finds_the_minimum():
    """3 ON counts, no OFF counts (the top bin of many IACT spectra): while the profiled
    background is 0 the statistic is linear in the norm (zero curvature, where Newton's method
    stopped at its start, norm 1); the minimum, found by brute force on Gammapy's wstat, is at
    norm 30 with TS 14.39."""
    from gammapy.stats import wstat

    from fitax.gamma.estimators import NORM_SCAN, _bin_result, _OnOffPiece

    result = _bin_result([_OnOffPiece.of([3.0], [0.0], [0.1], [0.0], [0.1])], 1.0, 2.0, NORM_SCAN)
    norms = np.linspace(0, 60, 600001)
    statistic = wstat(3, 0, 0.1, 0.1 * norms)
    assert result["success"] and result["norm"] == pytest.approx(norms[np.argmin(statistic)], abs=1e-4)
    assert result["ts"] == pytest.approx(statistic[0] - statistic.min(), rel=1e-9) and not result["is_ul"]


def test_a_cash_flux_point_without_counted_signal_bins_is_not_moved():
    """Cash is flat-curved only where the source reaches no counted bin (counts 1, 1, 1 where
    it predicts nothing, none where it does): it falls without bound as the norm goes
    negative, so there is no minimum to bracket; the solve stops at its start, unsuccessful."""
    from fitax.gamma.estimators import NORM_SCAN, _bin_result, _CashPiece

    piece = _CashPiece.of([1, 1, 1, 0, 0, 0], [1.0, 1.0, 1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.5, 0.5, 0.5])
    result = _bin_result([piece], 1.0, 2.0, NORM_SCAN)
    assert result["norm"] == 1.0 and not result["success"]


@pytest.mark.parametrize("n_off", [1, 3])
def test_point_like_spectra_with_a_rad_max_cut_equal_gammapys(n_off, tmp_path):
    """The two MAGIC runs with point-like IRFs and an energy-dependent cut (RAD_MAX): a point
    ON region on the Crab and ``n_off`` wobble OFF points, against Gammapy's
    SpectrumDatasetMaker + ReflectedRegionsBackgroundMaker(WobbleRegionsFinder) +
    SafeMaskMaker: counts, OFF counts, alpha and masks identical, exposure and energy
    dispersion within 1e-12; the spectra written (``point_like_spectra_files``), read by
    Gammapy, and fitted jointly (WStat) as Gammapy fits them (0.05 sigma, errors 1%)."""
    from gammapy.data import DataStore as GammapyStore
    from gammapy.datasets import Datasets, SpectrumDataset
    from gammapy.makers import ReflectedRegionsBackgroundMaker, SafeMaskMaker, SpectrumDatasetMaker
    from gammapy.makers import WobbleRegionsFinder as GammapyWobble
    from gammapy.maps import MapAxis, RegionGeom
    from gammapy.modeling import Fit
    from gammapy.modeling.models import Models
    from regions import PointSkyRegion

    import fitax.gamma as fg
    from fitax.gamma.dl3 import DataStore
    from fitax.gamma.pipeline import point_like_spectra_files
    from fitax.gamma.spectrum_reduce import WobbleRegionsFinder, spectrum_onoff_file

    path = shared_data("gamma", "magic", "rad_max", "data")
    on = PointSkyRegion(CRAB)
    energy, energy_true = np.geomspace(0.05, 50, 21) * u.TeV, np.geomspace(0.01, 100, 31) * u.TeV
    methods = ["aeff-default", "aeff-max", "edisp-bias"]
    store, their_store = DataStore.from_dir(path), GammapyStore.from_dir(path)
    for obs_id in their_store.obs_ids:
        ours = spectrum_onoff_file(store.observation(obs_id), on, energy, energy_true, methods, finder=WobbleRegionsFinder(n_off_regions=n_off))
        observation = their_store.obs(obs_id, required_irf="point-like")
        empty = SpectrumDataset.create(RegionGeom.create(on, axes=[MapAxis.from_edges(energy, name="energy", interp="log")]),
                                       energy_axis_true=MapAxis.from_edges(energy_true, name="energy_true", interp="log"))
        dataset = SpectrumDatasetMaker(selection=["counts", "exposure", "edisp"]).run(empty, observation)
        dataset = ReflectedRegionsBackgroundMaker(region_finder=GammapyWobble(n_off_regions=n_off)).run(dataset, observation)
        dataset = SafeMaskMaker(methods=methods).run(dataset, observation)
        for name in ("counts", "counts_off", "alpha", "mask_safe"):
            np.testing.assert_array_equal(getattr(ours, name), getattr(dataset, name).data.ravel(), err_msg=f"{obs_id} {name}")
        np.testing.assert_allclose(ours.exposure, dataset.exposure.quantity.to_value("m2 s").ravel(), rtol=1e-12)
        np.testing.assert_allclose(ours.edisp, dataset.edisp.edisp_map.data[..., 0, 0], rtol=0, atol=1e-12)
        assert ours.counts.sum() > 700 and ours.counts_off.sum() > 300 * n_off
    datasets_path = point_like_spectra_files(path, CRAB, energy, energy_true, tmp_path / "spectra", n_off_regions=n_off,
                                             safe_mask_methods=methods)
    theirs = Datasets.read(datasets_path)
    model = {"name": "crab", "type": "SkyModel", "spectral": {"type": "LogParabolaSpectralModel", "parameters": [
        {"name": "amplitude", "value": 4e-11, "unit": "cm-2 s-1 TeV-1"}, {"name": "reference", "value": 1.0, "unit": "TeV"},
        {"name": "alpha", "value": 2.5}, {"name": "beta", "value": 0.1}]}}  # fmt: skip
    (tmp_path / "models.yaml").write_text(yaml.safe_dump({"components": [model]}))
    theirs.models = Models.read(tmp_path / "models.yaml")
    assert Fit().run(theirs).success
    result = fg.fit(fg.read_datasets(datasets_path), fg.read_models(tmp_path / "models.yaml"))
    assert result.converged
    for parameter in theirs.models.parameters.free_parameters:
        name = f"crab.spectral.{parameter.name}"
        assert abs(result.values[name] - parameter.value) < 0.05 * parameter.error, name
        assert result.errors[name] == pytest.approx(parameter.error, rel=0.01), name


def test_point_like_onoff_errors_and_overlapping_cut_radii():
    """Ten OFF points 0.4 deg from the pointing lie closer than twice the low-energy cut
    radius (0.39 deg): Gammapy finds no OFF region (its dataset masked out), fitax leaves the
    run out with a warning. A circle ON region with point-like IRFs, a point without them,
    a containment correction and reflected regions for a point are errors saying why."""
    from gammapy.data import DataStore as GammapyStore
    from gammapy.datasets import SpectrumDataset
    from gammapy.makers import ReflectedRegionsBackgroundMaker, SpectrumDatasetMaker
    from gammapy.makers import WobbleRegionsFinder as GammapyWobble
    from gammapy.maps import MapAxis, RegionGeom
    from regions import CircleSkyRegion, PointSkyRegion

    from fitax.gamma.dl3 import DataStore
    from fitax.gamma.spectrum_reduce import WobbleRegionsFinder, spectrum_onoff_file

    path = shared_data("gamma", "magic", "rad_max", "data")
    energy, energy_true = np.geomspace(0.05, 50, 11) * u.TeV, np.geomspace(0.01, 100, 16) * u.TeV
    store = DataStore.from_dir(path)
    observation = store.observation(store.obs_ids[0])
    point = PointSkyRegion(CRAB)
    with pytest.warns(UserWarning, match="within twice the cut radius"):
        assert spectrum_onoff_file(observation, point, energy, energy_true, finder=WobbleRegionsFinder(n_off_regions=10)) is None
    their_observation = GammapyStore.from_dir(path).obs(store.obs_ids[0], required_irf="point-like")
    empty = SpectrumDataset.create(RegionGeom.create(point, axes=[MapAxis.from_edges(energy, name="energy", interp="log")]),
                                   energy_axis_true=MapAxis.from_edges(energy_true, name="energy_true", interp="log"))
    dataset = SpectrumDatasetMaker(selection=["counts"]).run(empty, their_observation)
    dataset = ReflectedRegionsBackgroundMaker(region_finder=GammapyWobble(n_off_regions=10)).run(dataset, their_observation)
    assert dataset.counts_off is None and not dataset.mask_safe.data.any()
    with pytest.raises(ValueError, match=r"point-like \(RAD_MAX.*must be a point"):
        spectrum_onoff_file(observation, CircleSkyRegion(CRAB, 0.3 * u.deg), energy, energy_true)
    with pytest.raises(ValueError, match="no containment correction with point-like IRFs"):
        spectrum_onoff_file(observation, point, energy, energy_true, containment_correction=True, finder=WobbleRegionsFinder())
    with pytest.raises(ValueError, match="WobbleRegionsFinder"):
        spectrum_onoff_file(observation, point, energy, energy_true)
    hess = DataStore.from_dir(shared_data("gamma", "hess-dl3-dr1")).observation(23523)
    with pytest.raises(TypeError, match="a point needs point-like IRFs with a RAD_MAX table"):
        spectrum_onoff_file(hess, point, energy, energy_true, finder=WobbleRegionsFinder())
    far = PointSkyRegion(SkyCoord(83.633, 22.2, unit="deg"))  # 0.54 deg from the pointing; the cuts are given at 0.39-0.41 deg
    with pytest.warns(UserWarning, match="outside the offsets of its cut radii"):
        assert spectrum_onoff_file(observation, far, energy, energy_true, finder=WobbleRegionsFinder()) is None


def test_a_point_like_run_without_its_rad_max_table_is_refused(tmp_path):
    """A MAGIC run whose index lists no RAD_MAX table (a fixed cut in a header, or a lost HDU):
    its point-like effective area must not be used as full-enclosure with a circle."""
    import shutil

    from astropy.table import Table
    from regions import CircleSkyRegion

    from fitax.gamma.dl3 import DataStore
    from fitax.gamma.spectrum_reduce import spectrum_onoff_file

    source = shared_data("gamma", "magic", "rad_max", "data")
    for path in source.iterdir():
        shutil.copy(path, tmp_path / path.name)
    index = Table.read(tmp_path / "hdu-index.fits.gz")
    index[[str(t).strip() != "rad_max" for t in index["HDU_TYPE"]]].write(tmp_path / "hdu-index.fits.gz", overwrite=True)
    store = DataStore.from_dir(tmp_path)
    with pytest.raises(ValueError, match=r"point-like \(HDUCLAS3 = POINT-LIKE.*without a RAD_MAX table"):
        spectrum_onoff_file(store.observation(store.obs_ids[0]), CircleSkyRegion(CRAB, 0.1 * u.deg), np.geomspace(0.1, 10, 5) * u.TeV,
                            np.geomspace(0.05, 20, 9) * u.TeV)


def test_cut_radii_are_gammapys_nearest_nodes_and_zero_beyond_the_table():
    """``rad_max_at`` against Gammapy's ``RadMax2D.evaluate(method="nearest")`` on a MAGIC table
    (0.01-100 TeV, offsets 0.39-0.41 deg): at energies between, on and beyond the nodes and
    edges, and offsets inside and outside the table (0 there), identical."""
    from gammapy.data import DataStore as GammapyStore

    from fitax.gamma.dl3 import DataStore
    from fitax.gamma.spectrum_reduce import rad_max_at

    path = shared_data("gamma", "magic", "rad_max", "data")
    obs_id = DataStore.from_dir(path).obs_ids[0]
    ours = DataStore.from_dir(path).observation(obs_id).rad_max
    theirs = GammapyStore.from_dir(path).obs(obs_id, required_irf="point-like").rad_max
    energy = np.concatenate([[0.001, 0.005, 0.01, 100.0, 150.0], np.geomspace(0.0101, 99, 500)]) * u.TeV
    for offset in (0.0, 0.38, 0.39, 0.4, 0.41, 0.42) * u.deg:
        expected = theirs.evaluate(method="nearest", energy=energy, offset=offset).to_value("deg")
        np.testing.assert_array_equal(rad_max_at(ours, energy, offset).to_value("deg"), expected, err_msg=str(offset))
    assert np.all(rad_max_at(ours, [0.005, 150.0] * u.TeV, 0.4 * u.deg) == 0) and np.all(rad_max_at(ours, energy, 0.42 * u.deg) == 0)
