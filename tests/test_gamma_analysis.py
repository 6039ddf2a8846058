"""``fitax gamma reduce CONFIG --out DIR`` against Gammapy 2.1's high-level ``Analysis`` run on
the same ``AnalysisConfig`` YAML (H.E.S.S. DL3 DR1 Crab runs), and its errors on bad
configurations.

Tolerances: counts identical; exposure and PSF maps (and their exposures) within 1e-9
relative, background and energy-dispersion kernels within 1e-6 (Gammapy keeps IRF values in
float32), where Gammapy's value is above 1e-6 of its maximum, and within 1e-6 of the maximum
below; safe masks identical; the same cutout geometries, in the configured order.
"""

from __future__ import annotations

import contextlib
import re

import numpy as np
import pytest
import yaml

from conftest import assert_close_where_large, shared_data
from fitax.cli import main


def _config(store, **datasets) -> dict:
    settings = {
        "type": "3d", "stack": False,
        "geom": {"wcs": {"skydir": {"frame": "icrs", "lon": "83.633 deg", "lat": "22.014 deg"}, "binsize": "0.05 deg",
                         "width": {"width": "4 deg", "height": "3.5 deg"}, "binsize_irf": "0.2 deg"},
                 "selection": {"offset_max": "2.0 deg"},
                 "axes": {"energy": {"min": "1 TeV", "max": "10 TeV", "nbins": 4}, "energy_true": {"min": "0.7 TeV", "max": "12 TeV", "nbins": 8}}},
        "safe_mask": {"methods": ["aeff-default", "offset-max"], "parameters": {"offset_max": "2.0 deg"}},
    }  # fmt: skip
    settings.update(datasets)
    return {"observations": {"datastore": str(store), "obs_ids": [23526, 23523]}, "datasets": settings}


def _reduce_both(config: dict, folder):
    """``config`` reduced by ``fitax gamma reduce`` (into ``folder/out``) and by Gammapy's
    ``Analysis``: (Gammapy's datasets, fitax's as Gammapy reads them, with their models)."""
    from gammapy.analysis import Analysis, AnalysisConfig
    from gammapy.datasets import Datasets

    path = _write(folder / "analysis.yaml", config)
    assert main(["gamma", "reduce", str(path), "--out", str(folder / "out")]) == 0
    analysis = Analysis(AnalysisConfig.read(path))
    analysis.get_observations()
    analysis.get_datasets()
    return analysis.datasets, Datasets.read(folder / "out" / "datasets.yaml", filename_models=folder / "out" / "models.yaml")


def _write(path, config: dict):
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.mark.filterwarnings("error:Checksum verification failed")
def test_reduce_cli_makes_the_datasets_gammapys_analysis_makes(tmp_path):
    hess = shared_data("gamma", "hess-dl3-dr1")
    pytest.importorskip("gammapy", reason="Gammapy (test extra) not installed")
    from gammapy.analysis import Analysis, AnalysisConfig
    from gammapy.datasets import Datasets

    from fitax.gamma.datasets import read_datasets

    # the energy thresholds at each run's cutout centre (aeff-max, edisp-bias) fall inside the energy axis
    safe_mask = {"methods": ["aeff-default", "offset-max", "aeff-max", "edisp-bias"],
                 "parameters": {"offset_max": "2.0 deg", "aeff_percent": 40, "bias_percent": 4}}
    config = _write(tmp_path / "analysis.yaml", _config(hess, safe_mask=safe_mask))
    assert main(["gamma", "reduce", str(config), "--out", str(tmp_path / "out")]) == 0
    analysis = Analysis(AnalysisConfig.read(config))
    analysis.get_observations()
    analysis.get_datasets()
    ours = Datasets.read(tmp_path / "out" / "datasets.yaml", filename_models=tmp_path / "out" / "models.yaml")
    assert ours.names == ["obs_23526", "obs_23523"]  # the configured order
    assert [m.tag[0] for m in ours.models] == ["FoVBackgroundModel"] * 2 and ours.models[0].datasets_names == ["obs_23526"]
    for theirs, mine in zip(analysis.datasets, ours, strict=True):
        assert mine.counts.geom == theirs.counts.geom and mine.psf.psf_map.geom == theirs.psf.psf_map.geom
        np.testing.assert_array_equal(mine.counts.data, theirs.counts.data)
        assert_close_where_large(mine.exposure.quantity.to_value("m2 s"), theirs.exposure.quantity.to_value("m2 s"), 1e-9)
        assert_close_where_large(mine.background.data, theirs.background.data, 1e-6)
        assert_close_where_large(mine.psf.psf_map.quantity.to_value("deg-2"), theirs.psf.psf_map.quantity.to_value("deg-2"), 1e-9)
        assert_close_where_large(mine.psf.exposure_map.quantity.to_value("m2 s"), theirs.psf.exposure_map.quantity.to_value("m2 s"), 1e-9)
        assert_close_where_large(mine.edisp.edisp_map.data, theirs.edisp.edisp_map.data, 1e-6)
        np.testing.assert_array_equal(mine.mask_safe.data, theirs.mask_safe.data)
        # the runs' own good time intervals, in time (a light curve selects datasets by them)
        assert np.abs((mine.gti.time_start - theirs.gti.time_start).to_value("s")).max() < 1e-3
        assert np.abs((mine.gti.time_stop - theirs.gti.time_stop).to_value("s")).max() < 1e-3
    assert [d.counts.sum() for d in read_datasets(tmp_path / "out" / "datasets.yaml")] == [d.counts.data.sum() for d in analysis.datasets]
    assert [d.mask_safe.data.any(axis=(1, 2)).tolist() for d in ours] == [[False, False, True, True], [False, False, False, True]]


def test_stacked_reduction_is_gammapys_stacked_dataset(tmp_path):
    """``stack: true`` (Gammapy's default): the runs' cutouts added into the geometry within
    their safe masks, PSF and EDisp kernel maps averaged with their exposures where each run is
    safe (the EDisp's weights from the linearly interpolated mask, as Gammapy), the union of
    the masks. Gammapy keeps the stack in float32: within 1e-6 (measured 4e-7)."""
    hess = shared_data("gamma", "hess-dl3-dr1")
    pytest.importorskip("gammapy", reason="Gammapy (test extra) not installed")
    config = _config(hess, stack=True)
    config["observations"]["obs_ids"] = [23523, 23526, 23559]
    (theirs,), (mine,) = _reduce_both(config, tmp_path)
    assert mine.name == "stacked" and mine.counts.geom == theirs.counts.geom and mine.edisp.edisp_map.geom == theirs.edisp.edisp_map.geom
    np.testing.assert_array_equal(mine.counts.data, theirs.counts.data)
    np.testing.assert_array_equal(mine.mask_safe.data, theirs.mask_safe.data)
    for ours, reference, unit in ((mine.exposure, theirs.exposure, "m2 s"), (mine.background, theirs.background, ""),
                                  (mine.psf.psf_map, theirs.psf.psf_map, "deg-2"), (mine.psf.exposure_map, theirs.psf.exposure_map, "m2 s"),
                                  (mine.edisp.edisp_map, theirs.edisp.edisp_map, ""), (mine.edisp.exposure_map, theirs.edisp.exposure_map, "m2 s")):
        assert_close_where_large(ours.quantity.to_value(unit), reference.quantity.to_value(unit), 1e-6)
    assert mine.gti.time_sum.to_value("s") == pytest.approx(theirs.gti.time_sum.to_value("s"), rel=1e-9)
    assert np.abs((mine.gti.time_start - theirs.gti.time_start).to_value("s")).max() < 1e-3


def _exclusion_file(path, radius: float = 0.3):
    """An exclusion mask around the Crab (0 within ``radius`` deg), as Gammapy writes one, in
    Galactic TAN (not the datasets' ICRS CAR) and 2.6 x 2.6 deg, smaller than the runs' cutouts:
    pixels beyond it are not used either."""
    from astropy.coordinates import SkyCoord
    from astropy.io import fits
    from astropy.wcs import WCS

    wcs = WCS(naxis=2)
    wcs.wcs.ctype, wcs.wcs.crval, wcs.wcs.crpix, wcs.wcs.cdelt = ["GLON-TAN", "GLAT-TAN"], [184.5575, -5.7844], [65.5, 65.5], [-0.02, 0.02]
    y, x = np.mgrid[:130, :130]
    allowed = wcs.pixel_to_world(x, y).separation(SkyCoord(83.633, 22.014, unit="deg")).deg > radius
    fits.PrimaryHDU(allowed.astype(np.uint8), header=wcs.to_header()).writeto(path)
    return path


@pytest.mark.parametrize("stack", [False, True])
def test_fov_background_norms_are_gammapys(tmp_path, stack):
    """``background: {method: fov_background, exclusion: FILE}``: each run's norm (counts over
    background in its safe, not excluded bins) and error as Gammapy's FoVBackgroundMaker
    (measured 3e-8 relative; Gammapy sums in float32), in models.yaml; stacked, each run's
    background scaled by its norm before stacking (within 1e-6). A run whose norm fails
    (``min_counts`` above its counts) loses its safe mask, as in Gammapy."""
    hess = shared_data("gamma", "hess-dl3-dr1")
    pytest.importorskip("gammapy", reason="Gammapy (test extra) not installed")
    background = {"method": "fov_background", "exclusion": str(_exclusion_file(tmp_path / "exclusion.fits")), "parameters": {"method": "scale"}}
    config = _config(hess, stack=stack, background=background)
    config["observations"]["obs_ids"] = [23523, 23526, 23559]
    reference, ours = _reduce_both(config, tmp_path)
    for theirs, mine in zip(reference, ours, strict=True):
        assert_close_where_large(mine.background.data, theirs.background.data, 1e-6)
        np.testing.assert_array_equal(mine.mask_safe.data, theirs.mask_safe.data)
        if not stack:
            norm, reference = ours.models[f"{mine.name}-bkg"].spectral_model.norm, theirs.models[f"{theirs.name}-bkg"].spectral_model.norm
            assert norm.value == pytest.approx(reference.value, rel=1e-6) and norm.value != pytest.approx(1.0, abs=1e-3)
            assert norm.error == pytest.approx(reference.error, rel=1e-6)

    background["parameters"]["min_counts"] = 1e9
    (tmp_path / "failed").mkdir()
    with pytest.warns(UserWarning, match="the FoV background norm failed"):
        reference, ours = _reduce_both(_config(hess, stack=stack, background=background), tmp_path / "failed")
    assert not any(d.mask_safe.data.any() for d in ours) and not any(d.mask_safe.data.any() for d in reference)


@pytest.mark.parametrize(("change", "message"), [
    ({"datasets": {"geom": {"wcs": {"binsz": "0.05 deg"}}}}, r"unknown key 'config.datasets.geom.wcs.binsz'"),
    ({"datasets": {"stack": "yes"}}, r"'datasets.stack' = 'yes'; expected true or false"),
    ({"datasets": {"type": "2d"}}, r"'datasets.type' = '2d'; expected '1d'"),
    ({"datasets": {"background": {"method": "ring"}}}, r"'config.datasets.background.method' = 'ring': only fov_background"),
    ({"datasets": {"background": {"exclusion": "mask.fits"}}}, r"'config.datasets.background.exclusion' = 'mask.fits' is not supported by fitax yet \(no background maker"),
    ({"datasets": {"safe_mask": {"methods": ["edisp_bias"]}}}, r"'edisp_bias': not a Gammapy safe-mask method"),
    ({"datasets": {"safe_mask": {"parameters": {"aeff_percent": 150}}}}, r"'config.datasets.safe_mask.parameters.aeff_percent' = 150 must be a percentage"),
    ({"datasets": {"safe_mask": {"parameters": {"position": "83.6 22.0"}}}}, r"'config.datasets.safe_mask.parameters.position' .* not supported"),
    ({"datasets": {"geom": {"wcs": {"binsize": 0.05}}}}, r"'config.datasets.geom.wcs.binsize' = 0.05 needs a unit of angle"),
    ({"observations": {"obs_ids": [23523, 99999]}}, r"obs 99999 not in the obs-index table"),
    ({"observations": {"datastore": "/nowhere/hess"}}, r"'observations.datastore' = '/nowhere/hess': no such data store"),
    ({"datasets": {"geom": {"wcs": {"skydir": {"frame": "icrs", "lon": "150 deg", "lat": "-30 deg"}}}}}, r"every run \(obs_23526, obs_23523\) misses the geometry"),
    ({"datasets": {"geom": {"wcs": {"binsize_irf": "0 deg"}}}}, r"'config.datasets.geom.wcs.binsize_irf' = '0 deg' must be a positive angle"),
    ({"datasets": {"safe_mask": {"methods": "offset-max"}}}, r"'config.datasets.safe_mask.methods' = 'offset-max' must be a list"),
    ({"datasets": {"map_selection": ["counts", "background"]}}, r"always hold counts and exposure"),
    ({"observations": {"obs_ids": "23523"}}, r"'config.observations.obs_ids' = '23523' must be a list"),
    ({"observations": {"obs_ids": [23523, 23523]}}, r"'observations.obs_ids' lists 23523 more than once"),
    ({"observations": {"obs_ids": [], "obs_cone": {"frame": "icrs", "lon": "83.6 deg", "lat": "22 deg"}}},
     r"'config.observations.obs_cone' needs lon, lat and radius; radius missing"),
])  # fmt: skip
def test_bad_configurations_are_errors_naming_the_key_and_write_nothing(tmp_path, capsys, change, message):
    hess = shared_data("gamma", "hess-dl3-dr1")
    config = _config(hess)
    for section, settings in change.items():
        for key, value in settings.items():
            if key == "geom":
                config[section]["geom"]["wcs"] = {**config[section]["geom"]["wcs"], **value["wcs"]}
            else:
                config[section][key] = value
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="left out") if "misses" in message else contextlib.nullcontext():
        code = main(["gamma", "reduce", str(_write(tmp_path / "analysis.yaml", config)), "--out", str(out)])
    assert code == 2
    assert re.search(message, capsys.readouterr().err)
    assert not out.exists()



@pytest.mark.slow
def test_crab_from_dl3_to_fit_agrees_with_gammapy(tmp_path):
    """Config -> ``fitax gamma reduce`` -> ``fitax gamma fit`` on the 4 H.E.S.S. DR1 Crab runs
    (one dataset per run, a point source with a power law and a FoV background norm per run)
    against Gammapy's ``Analysis`` datasets fitted by Gammapy's ``Fit``: every free parameter
    within 0.05 of its error (measured 0.004), errors within 3% (measured 1%), background norms
    within 1e-3 (measured 2e-4)."""
    hess = shared_data("gamma", "hess-dl3-dr1")
    pytest.importorskip("gammapy", reason="Gammapy (test extra) not installed")
    from gammapy.analysis import Analysis, AnalysisConfig
    from gammapy.modeling import Fit
    from gammapy.modeling.models import FoVBackgroundModel, Models, PointSpatialModel, PowerLawSpectralModel, SkyModel

    config = _config(hess)
    config["observations"]["obs_ids"] = [23523, 23526, 23559, 23592]
    config["datasets"]["geom"]["wcs"].update(binsize="0.04 deg", width={"width": "5 deg", "height": "5 deg"})
    config["datasets"]["geom"]["selection"]["offset_max"] = "2.5 deg"
    config["datasets"]["safe_mask"] = {"methods": ["offset-max"], "parameters": {"offset_max": "2.5 deg"}}
    config = _write(tmp_path / "analysis.yaml", config)
    assert main(["gamma", "reduce", str(config), "--out", str(tmp_path / "reduced")]) == 0

    crab = SkyModel(name="crab", spectral_model=PowerLawSpectralModel(index=2.5, amplitude="3e-11 cm-2 s-1 TeV-1", reference="1 TeV"),
                    spatial_model=PointSpatialModel(lon_0="83.62 deg", lat_0="22.03 deg", frame="icrs"))
    names = [f"obs_{i}" for i in (23523, 23526, 23559, 23592)]
    Models([crab] + [FoVBackgroundModel(dataset_name=n) for n in names]).write(tmp_path / "start.yaml")
    assert main(["gamma", "fit", "--datasets", str(tmp_path / "reduced" / "datasets.yaml"), "--models", str(tmp_path / "start.yaml"),
                 "--out", str(tmp_path / "fit"), "--no-plots"]) == 0  # fmt: skip
    ours = Models.read(tmp_path / "fit" / "models.yaml")

    analysis = Analysis(AnalysisConfig.read(config))
    analysis.get_observations()
    analysis.get_datasets()
    theirs = Models([crab.copy(name="crab")] + [FoVBackgroundModel(dataset_name=d.name) for d in analysis.datasets])
    analysis.datasets.models = theirs
    assert Fit().run(analysis.datasets).success
    for parameter in theirs["crab"].parameters.free_parameters:
        mine = ours["crab"].parameters[parameter.name]
        assert abs(mine.value - parameter.value) < 0.05 * parameter.error, parameter.name
        assert mine.error == pytest.approx(parameter.error, rel=0.03), parameter.name
    np.testing.assert_allclose([m.spectral_model.norm.value for m in ours[1:]], [m.spectral_model.norm.value for m in theirs[1:]], rtol=1e-3)


def test_a_configuration_gammapy_wrote_is_read(tmp_path):
    """``AnalysisConfig.write`` adds a ``metadata`` section (Gammapy's reader drops it)."""
    hess = shared_data("gamma", "hess-dl3-dr1")
    pytest.importorskip("gammapy", reason="Gammapy (test extra) not installed")
    from gammapy.analysis import AnalysisConfig

    config = AnalysisConfig.read(_write(tmp_path / "mine.yaml", _config(hess)))
    config.write(tmp_path / "gammapy.yaml")
    assert "metadata" in yaml.safe_load((tmp_path / "gammapy.yaml").read_text())
    assert main(["gamma", "reduce", str(tmp_path / "gammapy.yaml"), "--out", str(tmp_path / "out")]) == 0
    assert [d["name"] for d in yaml.safe_load((tmp_path / "out" / "datasets.yaml").read_text())["datasets"]] == ["obs_23526", "obs_23523"]


def test_an_output_that_is_a_file_is_refused_before_any_work(tmp_path, capsys):
    hess = shared_data("gamma", "hess-dl3-dr1")
    (tmp_path / "out").write_text("a file")
    assert main(["gamma", "reduce", str(_write(tmp_path / "analysis.yaml", _config(hess))), "--out", str(tmp_path / "out")]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["1d", "3d"])
def test_runs_cut_to_obs_time_intervals_as_gammapys_analysis(tmp_path, kind):
    """``observations.obs_time`` with two intervals: the first cuts run 23523 at its start,
    22:10 (and leaves out 23526, which starts after it), the second cuts 23559 at its end,
    23:30. Each run's events,
    good time, exposure and background are those of its cut, as Gammapy's
    ``Observations.select_time``: counts identical, exposure within 1e-9, background 1e-6."""
    hess = shared_data("gamma", "hess-dl3-dr1")
    pytest.importorskip("gammapy", reason="Gammapy (test extra) not installed")
    config = _config(hess, type=kind, on_region={"frame": "icrs", "lon": "83.633 deg", "lat": "22.014 deg", "radius": "0.11 deg"})
    if kind == "1d":
        config["datasets"]["background"] = {"method": "reflected"}
    config["observations"]["obs_ids"] = [23523, 23526, 23559]
    import datetime

    # YAML timestamps with offsets (23:10 at UTC+1 is 22:10 UTC) as starts, strings as stops
    starts = [datetime.datetime(2004, 12, 4, 23, 10, tzinfo=datetime.timezone(datetime.timedelta(hours=1))),
              datetime.datetime(2004, 12, 6, 22, 0, tzinfo=datetime.timezone.utc)]
    config["observations"]["obs_time"] = {"start": starts, "stop": ["2004-12-04 22:50:00", "2004-12-06 23:30:00"]}
    theirs, ours = _reduce_both(config, tmp_path)
    assert ours.names == ["obs_23523", "obs_23559"] and len(theirs) == 2
    for mine, reference in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(mine.counts.data, reference.counts.data)
        np.testing.assert_allclose(mine.exposure.data, reference.exposure.data, rtol=1e-9)
        if kind == "3d":
            assert_close_where_large(mine.background.data, reference.background.data, 1e-6)
        assert mine.gti.time_sum.to_value("s") == pytest.approx(reference.gti.time_sum.to_value("s"), abs=1e-5)
    assert 1400 < ours[0].gti.time_sum.to_value("s") < 1600  # 23523's 1687 s cut at 22:10


@pytest.mark.parametrize(("obs_time", "message"), [
    ({"start": "2004-12-04 22:10:00"}, r"'config.observations.obs_time' needs both start and stop"),
    ({"start": "2004-12-05", "stop": "2004-12-04"}, r"start 2004-12-05 00:00:00.000 is not before stop"),
    ({"start": "yesterday", "stop": "2004-12-04"}, r"'config.observations.obs_time.start' = 'yesterday' is not a time"),
    ({"start": ["2004-12-04", "2004-12-05"], "stop": "2004-12-06"}, r"2 start\(s\) and 1 stop\(s\)"),
    ({"start": "2010-01-01", "stop": "2010-01-02"}, r"no selected run \(23526, 23523\) has good time within observations.obs_time"),
])  # fmt: skip
def test_bad_obs_time_is_an_error_naming_the_key(tmp_path, capsys, obs_time, message):
    config = _config(shared_data("gamma", "hess-dl3-dr1"))
    config["observations"]["obs_time"] = obs_time
    path = _write(tmp_path / "analysis.yaml", config)
    assert main(["gamma", "reduce", str(path), "--out", str(tmp_path / "out")]) == 2
    import re

    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "out").exists()
