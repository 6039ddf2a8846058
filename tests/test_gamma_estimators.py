"""Flux points and light curves (``fitax.gamma.estimators``, ``fitax gamma estimate``) against
Gammapy 2.1's ``FluxPointsEstimator`` and ``LightCurveEstimator`` (``selection_optional=["errn-errp", "ul", "scan"]``)
on the same files: H.E.S.S. DR1 Crab and PKS 2155-304 runs reduced by ``fitax gamma reduce``,
the same models.

Tolerances (the issue's): norms, errors and upper limits within 1e-3 relative, TS within 1e-2
absolute; measured 4e-5, 3e-5, 2e-7 and 2e-5 (Gammapy's Minuit stops within its tolerance;
fitax solves each bin's one-dimensional problem to 1e-10).
"""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from conftest import shared_data
from fitax.cli import main

CRAB = {"name": "crab", "type": "SkyModel",
        "spectral": {"type": "PowerLawSpectralModel", "parameters": [
            {"name": "index", "value": 2.6}, {"name": "amplitude", "value": 4.5e-11, "unit": "cm-2 s-1 TeV-1"},
            {"name": "reference", "value": 1.0, "unit": "TeV"}]},
        "spatial": {"type": "PointSpatialModel", "frame": "icrs", "parameters": [
            {"name": "lon_0", "value": 83.621, "unit": "deg"}, {"name": "lat_0", "value": 22.024, "unit": "deg"}]}}  # fmt: skip


@pytest.fixture(scope="module")
def crab_files(tmp_path_factory):
    """Two Crab runs reduced on 3 x 3 deg (0.04 deg pixels, 6 bins 0.7-20 TeV, the first below
    the runs' safe threshold), and models with background norms other than 1."""
    hess = shared_data("gamma", "hess-dl3-dr1")
    folder = tmp_path_factory.mktemp("crab")
    config = {
        "observations": {"datastore": str(hess), "obs_ids": [23523, 23526]},
        "datasets": {"type": "3d", "stack": False,
                     "geom": {"wcs": {"skydir": {"frame": "icrs", "lon": "83.633 deg", "lat": "22.014 deg"}, "binsize": "0.04 deg",
                                      "width": {"width": "3 deg", "height": "3 deg"}},
                              "axes": {"energy": {"min": "0.7 TeV", "max": "20 TeV", "nbins": 6},
                                       "energy_true": {"min": "0.5 TeV", "max": "30 TeV", "nbins": 12}}},
                     "safe_mask": {"methods": ["aeff-default", "offset-max"], "parameters": {"offset_max": "2.0 deg"}}},
    }  # fmt: skip
    (folder / "analysis.yaml").write_text(yaml.safe_dump(config))
    assert main(["gamma", "reduce", str(folder / "analysis.yaml"), "--out", str(folder / "reduced")]) == 0
    backgrounds = [{"type": "FoVBackgroundModel", "datasets_names": [name], "spectral": {"type": "PowerLawNormSpectralModel", "parameters": [
        {"name": "norm", "value": norm}, {"name": "tilt", "value": 0.0, "frozen": True}, {"name": "reference", "value": 1.0, "unit": "TeV",
                                                                                           "frozen": True}]}}
                   for name, norm in (("obs_23523", 0.93), ("obs_23526", 0.99))]  # fmt: skip
    (folder / "models.yaml").write_text(yaml.safe_dump({"components": [CRAB, *backgrounds]}))
    far = yaml.safe_load(yaml.safe_dump(CRAB))
    far["spatial"]["parameters"][0]["value"] = 100.0  # 16 deg from the runs
    (folder / "far.yaml").write_text(yaml.safe_dump({"components": [far, *backgrounds]}))
    return folder


def test_flux_points_equal_gammapys_estimator(crab_files, tmp_path):
    pytest.importorskip("gammapy", reason="Gammapy (test extra) not installed")
    import astropy.units as u
    from gammapy.datasets import Datasets
    from gammapy.estimators import FluxPoints, FluxPointsEstimator
    from gammapy.modeling.models import Models

    edges = [0.7, 1.5, 3.0, 20.0]
    assert main(["gamma", "estimate", "flux-points", "--datasets", str(crab_files / "reduced" / "datasets.yaml"),
                 "--models", str(crab_files / "models.yaml"), "--out", str(tmp_path), "--source", "crab",
                 "--energy-edges", ",".join(map(str, edges))]) == 0  # fmt: skip
    assert (tmp_path / "flux_points.png").stat().st_size > 10_000
    ours = FluxPoints.read(tmp_path / "flux_points.fits").to_table(sed_type="likelihood")

    datasets = Datasets.read(crab_files / "reduced" / "datasets.yaml")
    datasets.models = Models.read(crab_files / "models.yaml")
    theirs = FluxPointsEstimator(energy_edges=edges * u.TeV, source="crab", selection_optional=["errn-errp", "ul", "scan"]).run(datasets)
    theirs = theirs.to_table(sed_type="likelihood")
    assert len(ours) == len(theirs) == 3
    np.testing.assert_allclose(ours["e_min"].quantity.to_value("TeV"), theirs["e_min"].quantity.to_value("TeV"), rtol=1e-12)
    np.testing.assert_allclose(ours["e_max"].quantity.to_value("TeV"), theirs["e_max"].quantity.to_value("TeV"), rtol=1e-12)
    for key in ("ref_dnde", "ref_flux", "ref_eflux"):
        np.testing.assert_allclose(ours[key].quantity.value, theirs[key].quantity.to_value(ours[key].unit), rtol=1e-9, err_msg=key)
    for key in ("norm", "norm_err", "norm_errn", "norm_errp", "norm_ul", "npred", "npred_excess"):
        np.testing.assert_allclose(np.asarray(ours[key]), np.asarray(theirs[key]), rtol=1e-3, err_msg=key)
    np.testing.assert_allclose(ours["ts"], theirs["ts"], rtol=0, atol=1e-2)
    np.testing.assert_allclose(ours["stat_null"], theirs["stat_null"], rtol=1e-9)
    np.testing.assert_allclose(ours["stat_scan"], theirs["stat_scan"], rtol=0, atol=1e-2)
    np.testing.assert_array_equal(ours["counts"], theirs["counts"])
    # the first bin (0.7-1.2 TeV) is below both runs' safe energy threshold: NaN norms, as Gammapy's
    assert np.isnan(ours["norm"][0]) and ours["stat"][0] == 0
    assert np.all(ours["ts"][1:] > 25) and np.ptp(ours["norm"][1:]) > 0.01  # detected in the other bins, with different norms


def _with_background_norms_frozen(path, out):
    content = yaml.safe_load(path.read_text())
    for component in content["components"]:
        if component["type"] == "FoVBackgroundModel":
            component["spectral"]["parameters"][0]["frozen"] = True
    out.write_text(yaml.safe_dump(content))
    return out


def test_reoptimized_flux_points_with_nothing_else_free_are_the_plain_ones(crab_files, tmp_path):
    """``reoptimize=True`` (general fits per bin: the source's spectrum scaled by a norm, the
    profile crossings and the scan by refits) with every other parameter frozen must give
    the flux points of the one-dimensional solve: norms, errors and limits within 1e-3 (the
    fits stop at an EDM of 1e-6, the crossings at 1e-4 in the statistic), TS and statistics
    within 1e-6."""
    import astropy.units as u

    import fitax.gamma as fg
    from fitax.gamma.estimators import flux_points

    datasets = fg.read_datasets(crab_files / "reduced" / "datasets.yaml")
    models = fg.read_models(_with_background_norms_frozen(crab_files / "models.yaml", tmp_path / "frozen.yaml"))
    edges = [0.7, 1.5, 3.0, 20.0] * u.TeV
    plain = flux_points(datasets, models, "crab", edges).table
    refitted = flux_points(datasets, models, "crab", edges, reoptimize=True).table
    for key in ("norm", "norm_err", "norm_errn", "norm_errp", "norm_ul", "npred", "npred_excess"):
        np.testing.assert_allclose(np.asarray(refitted[key], float), np.asarray(plain[key], float), rtol=1e-3, err_msg=key)
    for key in ("ts", "stat", "stat_null", "stat_scan"):
        np.testing.assert_allclose(np.asarray(refitted[key], float), np.asarray(plain[key], float), rtol=1e-6, err_msg=key)
    np.testing.assert_array_equal(refitted["counts"], plain["counts"])
    # another model tied to the source: the flux points freeze the source, so that is refused by name, not left dangling
    other = fg.SkyModel(fg.PowerLawSpectralModel(index=2.6, amplitude=1e-13), fg.PointSpatialModel(83.0, 22.5), name="other")
    from fitax.parameters import tie

    linked = tie(fg.Models([*models, other]), "other.spectral.index", "crab.spectral.index")
    with pytest.raises(ValueError, match=r"\['other.spectral.index'\] are tied to source 'crab'"):
        flux_points(datasets, linked, "crab", edges, reoptimize=True)


def test_a_reoptimized_light_curve_with_nothing_else_free_is_the_plain_one(pks_files, tmp_path):
    """Per run of the PKS 2155-304 flare, with every background norm frozen, ``--reoptimize``
    refits only the norm: the light curve of the one-dimensional solves within 1e-3 (each
    run's fit sees only its own background model)."""
    from gammapy.estimators import FluxPoints

    models = _with_background_norms_frozen(pks_files / "models.yaml", tmp_path / "frozen.yaml")
    arguments = ["gamma", "estimate", "light-curve", "--datasets", str(pks_files / "reduced" / "datasets.yaml"), "--models", str(models),
                 "--source", "pks2155", "--energy-edges", "0.7,10", "--no-plots"]
    assert main([*arguments, "--out", str(tmp_path / "plain")]) == 0
    assert main([*arguments, "--out", str(tmp_path / "refitted"), "--reoptimize"]) == 0
    plain, refitted = (FluxPoints.read(tmp_path / name / "light_curve.fits", format="lightcurve").to_table(sed_type="likelihood", format="lightcurve")
                       for name in ("plain", "refitted"))
    assert len(plain) == len(refitted) >= 3
    for key in ("norm", "norm_err", "norm_errn", "norm_errp", "norm_ul", "ts"):
        np.testing.assert_allclose(np.asarray(refitted[key], float), np.asarray(plain[key], float), rtol=1e-3, err_msg=key)


@pytest.mark.slow  # Gammapy's refits take ~100 s
def test_reoptimized_flux_points_equal_gammapys(crab_files, tmp_path):
    """``fitax gamma estimate flux-points --reoptimize`` with the runs' background norms free
    against Gammapy's ``FluxPointsEstimator(reoptimize=True)``: norms, errors, asymmetric
    errors, upper limits and npred within 1e-3 (measured 5.5e-4: Minuit's tolerance against
    fitax's), TS and the scan within 1e-2 absolute (measured 1e-4); the refitted norms differ
    from the plain ones by several percent (what the test can tell apart)."""
    pytest.importorskip("gammapy", reason="Gammapy (test extra) not installed")
    import astropy.units as u
    from gammapy.datasets import Datasets
    from gammapy.estimators import FluxPoints, FluxPointsEstimator
    from gammapy.modeling.models import Models

    edges = [0.7, 1.5, 3.0, 20.0]
    arguments = ["gamma", "estimate", "flux-points", "--datasets", str(crab_files / "reduced" / "datasets.yaml"), "--models",
                 str(crab_files / "models.yaml"), "--source", "crab", "--energy-edges", ",".join(map(str, edges)), "--no-plots"]
    assert main([*arguments, "--out", str(tmp_path / "refitted"), "--reoptimize"]) == 0
    assert main([*arguments, "--out", str(tmp_path / "plain")]) == 0
    ours = FluxPoints.read(tmp_path / "refitted" / "flux_points.fits").to_table(sed_type="likelihood")
    plain = FluxPoints.read(tmp_path / "plain" / "flux_points.fits").to_table(sed_type="likelihood")
    datasets = Datasets.read(crab_files / "reduced" / "datasets.yaml")
    datasets.models = Models.read(crab_files / "models.yaml")
    theirs = FluxPointsEstimator(energy_edges=edges * u.TeV, source="crab", reoptimize=True,
                                 selection_optional=["errn-errp", "ul", "scan"]).run(datasets).to_table(sed_type="likelihood")
    for key in ("norm", "norm_err", "norm_errn", "norm_errp", "norm_ul", "npred", "npred_excess"):
        np.testing.assert_allclose(np.asarray(ours[key], float), np.asarray(theirs[key], float), rtol=1e-3, err_msg=key)
    for key in ("ts", "stat_scan"):
        np.testing.assert_allclose(np.asarray(ours[key], float), np.asarray(theirs[key], float), rtol=0, atol=1e-2, err_msg=key)
    assert np.nanmax(np.abs(np.asarray(plain["norm"]) / np.asarray(ours["norm"]) - 1)) > 0.01


def test_flux_point_bins_beyond_the_data_are_gammapys_nan_rows(crab_files):
    """Requested bins that snap to no bin of the datasets' axis (0.7-20 TeV) are rows of NaN at
    the requested edges, as Gammapy's; a bin below the safe threshold has stat 0."""
    pytest.importorskip("gammapy", reason="Gammapy (test extra) not installed")
    import astropy.units as u
    from gammapy.datasets import Datasets
    from gammapy.estimators import FluxPointsEstimator
    from gammapy.modeling.models import Models

    import fitax.gamma as fg
    from fitax.gamma.estimators import flux_points

    edges = [0.3, 0.5, 1.5, 20.0, 40.0]
    ours = flux_points(fg.read_datasets(crab_files / "reduced" / "datasets.yaml"), fg.read_models(crab_files / "models.yaml"), "crab",
                       edges * u.TeV).table  # fmt: skip
    datasets = Datasets.read(crab_files / "reduced" / "datasets.yaml")
    datasets.models = Models.read(crab_files / "models.yaml")
    theirs = FluxPointsEstimator(energy_edges=edges * u.TeV, source="crab").run(datasets).to_table(sed_type="likelihood")
    assert len(ours) == len(theirs) == 4
    for key in ("e_min", "e_max"):
        np.testing.assert_allclose(ours[key].quantity.to_value("TeV"), theirs[key].quantity.to_value("TeV"), rtol=1e-12)
    for key in ("norm", "norm_err", "ts", "stat", "npred"):
        np.testing.assert_allclose(np.asarray(ours[key], float), np.asarray(theirs[key], float), rtol=1e-3, err_msg=key)
    assert np.isnan(ours["norm"][[0, 1, 3]]).all() and ours["ts"][2] > 25
    with pytest.warns(UserWarning, match="lie outside the datasets' axis"):
        beyond = flux_points(fg.read_datasets(crab_files / "reduced" / "datasets.yaml"), fg.read_models(crab_files / "models.yaml"),
                             "crab", [50, 100] * u.TeV).table  # fmt: skip
    assert len(beyond) == 1 and np.isnan(beyond["norm"][0])


@pytest.mark.parametrize(("arguments", "message"), [
    (["--source", "vela", "--energy-edges", "1,3"], r"no model 'vela' \(models: crab, obs_23523-bkg, obs_23526-bkg\)"),
    (["--source", "crab", "--energy-edges", "3,1"], r"--energy-edges '3,1': expected at least two increasing values in TeV"),
    (["--source", "crab"], r"flux points need --energy-edges"),
    (["--source", "crab", "--energy-edges", "1,3", "--models", "far.yaml"], r"model 'crab' at 100 22.024 \(icrs\) lies outside every dataset map"),
    (["--source", "crab", "--energy-edges", "1,x"], r"--energy-edges '1,x': expected comma-separated numbers"),
])  # fmt: skip
def test_flux_point_errors_name_the_problem(crab_files, tmp_path, capsys, arguments, message):
    import re

    if "--models" in arguments:  # a models file of the fixture's folder instead of its models.yaml
        at = arguments.index("--models")
        arguments = [*arguments[:at], "--models", str(crab_files / arguments[at + 1]), *arguments[at + 2:]]
    else:
        arguments = [*arguments, "--models", str(crab_files / "models.yaml")]
    code = main(["gamma", "estimate", "flux-points", "--datasets", str(crab_files / "reduced" / "datasets.yaml"),
                 "--out", str(tmp_path / "out"), *arguments])  # fmt: skip
    assert code == 2 and re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "out" / "flux_points.fits").exists()


@pytest.fixture(scope="module")
def pks_files(tmp_path_factory):
    """Three runs of the 2006 PKS 2155-304 flare, reduced with FoV background norms."""
    hess = shared_data("gamma", "hess-dl3-dr1")
    folder = tmp_path_factory.mktemp("pks")
    centre = {"frame": "icrs", "lon": "329.71694 deg", "lat": "-30.22559 deg"}
    config = {
        "observations": {"datastore": str(hess), "obs_ids": [33787, 33788, 33789]},
        "datasets": {"type": "3d", "stack": False,
                     "geom": {"wcs": {"skydir": centre, "binsize": "0.05 deg", "width": {"width": "3 deg", "height": "3 deg"}},
                              "axes": {"energy": {"min": "0.4 TeV", "max": "10 TeV", "nbins": 5},
                                       "energy_true": {"min": "0.3 TeV", "max": "20 TeV", "nbins": 10}}},
                     "background": {"method": "fov_background"},
                     "safe_mask": {"methods": ["aeff-default", "offset-max"], "parameters": {"offset_max": "2.0 deg"}}},
    }  # fmt: skip
    (folder / "analysis.yaml").write_text(yaml.safe_dump(config))
    assert main(["gamma", "reduce", str(folder / "analysis.yaml"), "--out", str(folder / "reduced")]) == 0
    models = yaml.safe_load((folder / "reduced" / "models.yaml").read_text())
    models.pop("checksum")
    pks = {"name": "pks2155", "type": "SkyModel",
           "spectral": {"type": "PowerLawSpectralModel", "parameters": [
               {"name": "index", "value": 3.4}, {"name": "amplitude", "value": 1e-10, "unit": "cm-2 s-1 TeV-1"},
               {"name": "reference", "value": 1.0, "unit": "TeV"}]},
           "spatial": {"type": "PointSpatialModel", "frame": "icrs", "parameters": [
               {"name": "lon_0", "value": 329.71694, "unit": "deg"}, {"name": "lat_0", "value": -30.22559, "unit": "deg"}]}}  # fmt: skip
    (folder / "models.yaml").write_text(yaml.safe_dump({"components": [pks, *models["components"]]}))
    return folder


@pytest.mark.parametrize("time_bins", [pytest.param(None, marks=pytest.mark.slow), "53945.85,53945.875,53945.9"])
def test_light_curve_equals_gammapys_estimator(pks_files, tmp_path, time_bins):
    """Per run (the default: one interval per good time interval) and in two time bins (the
    second holding one run, the first none whole: left out, as Gammapy does)."""
    pytest.importorskip("gammapy", reason="Gammapy (test extra) not installed")
    import astropy.units as u
    from astropy.time import Time
    from gammapy.datasets import Datasets
    from gammapy.estimators import FluxPoints, LightCurveEstimator
    from gammapy.modeling.models import Models

    options = [] if time_bins is None else ["--time-bins", time_bins]
    assert main(["gamma", "estimate", "light-curve", "--datasets", str(pks_files / "reduced" / "datasets.yaml"), "--models",
                 str(pks_files / "models.yaml"), "--out", str(tmp_path), "--source", "pks2155", "--energy-edges", "0.7,10", *options]) == 0
    assert (tmp_path / "light_curve.png").stat().st_size > 10_000
    ours = FluxPoints.read(tmp_path / "light_curve.fits", format="lightcurve").to_table(sed_type="likelihood", format="lightcurve")

    datasets = Datasets.read(pks_files / "reduced" / "datasets.yaml")
    datasets.models = Models.read(pks_files / "models.yaml")
    intervals = None
    if time_bins is not None:
        edges = Time([float(t) for t in time_bins.split(",")], format="mjd", scale="tt")
        intervals = list(zip(edges[:-1], edges[1:]))
    theirs = LightCurveEstimator(energy_edges=[0.7, 10] * u.TeV, source="pks2155", time_intervals=intervals, selection_optional=["errn-errp", "ul", "scan"])
    theirs = theirs.run(datasets).to_table(sed_type="likelihood", format="lightcurve")
    assert len(ours) == len(theirs) == (3 if time_bins is None else 1)
    np.testing.assert_allclose(ours["time_min"], theirs["time_min"], rtol=0, atol=1e-8)
    np.testing.assert_allclose(ours["time_max"], theirs["time_max"], rtol=0, atol=1e-8)
    for key in ("norm", "norm_err", "norm_errn", "norm_errp", "norm_ul", "npred"):
        np.testing.assert_allclose(np.asarray(ours[key]), np.asarray(theirs[key]), rtol=1e-3, err_msg=key)
    np.testing.assert_allclose(ours["ts"], theirs["ts"], rtol=0, atol=1e-2)
    np.testing.assert_array_equal(np.asarray(ours["counts"]), np.asarray(theirs["counts"]))  # NaN for runs outside an interval
    assert np.all(np.asarray(ours["ts"]) > 100)


def test_a_light_curve_of_stacked_runs_is_one_interval(pks_files, tmp_path):
    """A stacked dataset (``stack: true``, Gammapy's default) carries every run's good time
    intervals: by default it is one time bin, from its first good time to its last, as in
    Gammapy (not one bin per interval, which no whole dataset fits in)."""
    pytest.importorskip("gammapy", reason="Gammapy (test extra) not installed")
    import astropy.units as u
    from gammapy.datasets import Datasets
    from gammapy.estimators import LightCurveEstimator
    from gammapy.modeling.models import Models

    import fitax.gamma as fg
    from fitax.gamma.estimators import light_curve

    config = yaml.safe_load((pks_files / "analysis.yaml").read_text())
    config["datasets"]["stack"] = True
    config["datasets"].pop("background")
    (tmp_path / "stacked.yaml").write_text(yaml.safe_dump(config))
    assert main(["gamma", "reduce", str(tmp_path / "stacked.yaml"), "--out", str(tmp_path / "stacked")]) == 0
    models = yaml.safe_load((pks_files / "models.yaml").read_text())
    models["components"] = [models["components"][0], {"type": "FoVBackgroundModel", "datasets_names": ["stacked"]}]
    (tmp_path / "models.yaml").write_text(yaml.safe_dump(models))
    ours = light_curve(fg.read_datasets(tmp_path / "stacked" / "datasets.yaml"), fg.read_models(tmp_path / "models.yaml"), "pks2155",
                       [0.7, 10] * u.TeV).table  # fmt: skip
    datasets = Datasets.read(tmp_path / "stacked" / "datasets.yaml")
    datasets.models = Models.read(tmp_path / "models.yaml")
    theirs = LightCurveEstimator(energy_edges=[0.7, 10] * u.TeV, source="pks2155").run(datasets).to_table(sed_type="likelihood",
                                                                                                           format="lightcurve")
    assert len(ours) == len(theirs) == 1
    np.testing.assert_allclose(ours["time_min"], theirs["time_min"], atol=1e-8)
    np.testing.assert_allclose(ours["time_max"], theirs["time_max"], atol=1e-8)
    np.testing.assert_allclose(np.asarray(ours["norm"]), np.asarray(theirs["norm"]), rtol=1e-3)


@pytest.fixture(scope="module")
def crab_stacked(crab_files, tmp_path_factory):
    """The two Crab runs of ``crab_files`` reduced into one stacked dataset."""
    folder = tmp_path_factory.mktemp("stacked")
    config = yaml.safe_load((crab_files / "analysis.yaml").read_text())
    config["datasets"]["stack"] = True
    (folder / "stacked.yaml").write_text(yaml.safe_dump(config))
    assert main(["gamma", "reduce", str(folder / "stacked.yaml"), "--out", str(folder)]) == 0
    return folder / "datasets.yaml"


def test_excess_map_equals_gammapys_estimator(crab_stacked, tmp_path):
    """``fitax gamma estimate excess-map`` on the two Crab runs stacked, against Gammapy's
    ``ExcessMapEstimator(correlation_radius="0.15 deg")`` per pixel where TS > 1: within 1e-3
    (measured 3e-4 for upper limits: Gammapy's float32 maps; 5e-7 for the rest); NaN outside
    the safe pixels, as Gammapy; written as Gammapy writes its FluxMaps (the same HDUs; its
    ``FluxMaps.read`` and ``Map.read`` read them)."""
    pytest.importorskip("gammapy", reason="Gammapy (test extra) not installed")
    from gammapy.datasets import Datasets
    from gammapy.estimators import ExcessMapEstimator
    from gammapy.maps import Map
    from gammapy.modeling.models import Models

    background = {"components": [{"type": "FoVBackgroundModel", "datasets_names": ["stacked"], "spectral": {
        "type": "PowerLawNormSpectralModel", "parameters": [{"name": "norm", "value": 0.95}, {"name": "tilt", "value": 0.0, "frozen": True},
                                                            {"name": "reference", "value": 1.0, "unit": "TeV", "frozen": True}]}}]}  # fmt: skip
    (tmp_path / "models.yaml").write_text(yaml.safe_dump(background))
    assert main(["gamma", "estimate", "excess-map", "--datasets", str(crab_stacked), "--models",
                 str(tmp_path / "models.yaml"), "--out", str(tmp_path / "maps"), "--correlation-radius", "0.15deg"]) == 0  # fmt: skip
    assert (tmp_path / "maps" / "excess_map.png").stat().st_size > 10_000

    datasets = Datasets.read(crab_stacked)
    datasets.models = Models.read(tmp_path / "models.yaml")
    theirs = ExcessMapEstimator(correlation_radius="0.15 deg", selection_optional=["errn-errp", "ul"]).run(datasets[0])
    significant = np.asarray(theirs.ts.data[0]) > 1
    assert significant.sum() > 50
    for name in ("counts", "npred_excess", "ts", "sqrt_ts", "norm", "norm_err", "norm_errn", "norm_errp", "norm_ul"):
        ours = Map.read(tmp_path / "maps" / "excess_map.fits", hdu=name.upper())
        reference = getattr(theirs, name).data
        assert ours.geom.data_shape == reference.shape
        np.testing.assert_array_equal(np.isnan(ours.data), np.isnan(reference), err_msg=name)
        np.testing.assert_allclose(ours.data[0][significant], reference[0][significant], rtol=1e-3, err_msg=name)
    # Gammapy's FluxMaps format: the HDUs of Gammapy's own file, read back by Gammapy
    from astropy.io import fits
    from gammapy.estimators import FluxMaps

    theirs.write(tmp_path / "gammapy.fits", overwrite=True)
    with fits.open(tmp_path / "gammapy.fits") as expected, fits.open(tmp_path / "maps" / "excess_map.fits") as written:
        assert [hdu.name for hdu in written] == [hdu.name for hdu in expected]
        np.testing.assert_array_equal(written["IS_UL"].data, expected["IS_UL"].data)
    read = FluxMaps.read(tmp_path / "maps" / "excess_map.fits")
    np.testing.assert_allclose(read.sqrt_ts.data[0][significant], theirs.sqrt_ts.data[0][significant], rtol=1e-3)


def test_wstat_excess_map_of_a_ring_background_equals_gammapys(crab_stacked, tmp_path):
    """The stacked Crab runs with Gammapy's ring background (``RingBackgroundMaker``, the
    Crab excluded) cut out around the Crab and written as a ``MapDatasetOnOff``: ``fitax gamma estimate excess-map`` with
    a source predicting part of the Crab's counts against Gammapy's ``ExcessMapEstimator``
    (WStat, OFF counts correlated) per pixel where TS > 1, within 1e-3 (measured 6e-5 for
    upper limits, 4e-6 for the rest: Gammapy's float32 maps); the same NaN pixels, a block of
    them set by a fit mask. Where no OFF count lies within the radius, no value. Fitting the
    on-off maps is refused by name, and so is reading the file as a plain MapDataset."""
    pytest.importorskip("gammapy", reason="Gammapy (test extra) not installed")
    import astropy.units as u
    from astropy.coordinates import SkyCoord
    from gammapy.datasets import Datasets, MapDataset
    from gammapy.estimators import ExcessMapEstimator
    from gammapy.makers import RingBackgroundMaker
    from gammapy.maps import Map
    from gammapy.modeling.models import Models
    from regions import CircleSkyRegion

    import fitax.gamma as fg

    stacked = MapDataset.read(crab_stacked.parent / "stacked.fits")
    exclusion = ~stacked.counts.geom.to_image().region_mask([CircleSkyRegion(SkyCoord(83.633, 22.014, unit="deg"), 0.3 * u.deg)])
    crab = SkyCoord(83.633, 22.014, unit="deg")
    ring = RingBackgroundMaker(r_in="0.5 deg", width="0.3 deg", exclusion_mask=exclusion).run(stacked)
    on_off = ring.cutout(crab, 1.4 * u.deg, name="ring")  # Gammapy's estimator takes ~3 ms per pixel
    fit_mask = np.ones(on_off.counts.data.shape, bool)
    fit_mask[:, 5:12, 20:30] = False  # pixels left out of the estimate (NaN) and out of their neighbours' sums
    on_off.mask_fit = Map.from_geom(on_off.counts.geom, data=fit_mask)
    Datasets([on_off]).write(tmp_path / "ring" / "datasets.yaml")
    faint = yaml.safe_load(yaml.safe_dump(CRAB))
    faint["spectral"]["parameters"][1]["value"] = 1.5e-11  # a third of the Crab: the rest is excess
    (tmp_path / "models.yaml").write_text(yaml.safe_dump({"components": [faint]}))
    assert main(["gamma", "estimate", "excess-map", "--datasets", str(tmp_path / "ring" / "datasets.yaml"), "--models",
                 str(tmp_path / "models.yaml"), "--out", str(tmp_path / "maps"), "--no-plots"]) == 0  # fmt: skip

    theirs_datasets = Datasets.read(tmp_path / "ring" / "datasets.yaml", lazy=False)
    theirs_datasets.models = Models.read(tmp_path / "models.yaml")
    theirs = ExcessMapEstimator(correlation_radius="0.1 deg", selection_optional=["errn-errp", "ul"]).run(theirs_datasets[0])
    significant = np.asarray(theirs.ts.data[0]) > 1
    assert significant.sum() > 50 and np.nanmax(theirs.sqrt_ts.data) > 10
    for name in ("counts", "npred_excess", "ts", "sqrt_ts", "norm", "norm_err", "norm_errn", "norm_errp", "norm_ul"):
        ours = Map.read(tmp_path / "maps" / "excess_map.fits", hdu=name.upper()).data
        reference = getattr(theirs, name).data
        np.testing.assert_array_equal(np.isnan(ours), np.isnan(reference), err_msg=name)
        np.testing.assert_allclose(ours[0][significant], reference[0][significant], rtol=1e-3, err_msg=name)

    # without --models: no sources (nothing to compile), as Gammapy's estimator on the dataset without models
    assert main(["gamma", "estimate", "excess-map", "--datasets", str(tmp_path / "ring" / "datasets.yaml"), "--out", str(tmp_path / "plain"),
                 "--no-plots"]) == 0  # fmt: skip
    plain = ExcessMapEstimator(correlation_radius="0.1 deg").run(Datasets.read(tmp_path / "ring" / "datasets.yaml", lazy=False)[0])
    ours = Map.read(tmp_path / "plain" / "excess_map.fits", hdu="TS").data
    significant = np.asarray(plain.ts.data[0]) > 1
    np.testing.assert_allclose(ours[0][significant], plain.ts.data[0][significant], rtol=1e-3)
    assert np.nanmax(plain.ts.data) > 1.5 * np.nanmax(theirs.ts.data)  # the source's prediction mattered above
    # no OFF count within the radius: no value (Gammapy divides FFT noise by FFT noise there)
    no_off = on_off.copy(name="no_off")
    no_off.counts_off.data[:, 20:34, 0:14] = 0
    Datasets([no_off]).write(tmp_path / "no_off" / "datasets.yaml")
    assert main(["gamma", "estimate", "excess-map", "--datasets", str(tmp_path / "no_off" / "datasets.yaml"), "--out", str(tmp_path / "no_off"),
                 "--no-plots"]) == 0  # fmt: skip
    blank = Map.read(tmp_path / "no_off" / "excess_map.fits", hdu="SQRT_TS").data[0]
    assert np.all(np.isnan(blank[22:32, 0:12])) and np.isfinite(blank[5:15, 5:15]).all()
    from fitax.gamma.ts_map import ts_map

    with pytest.raises(ValueError, match="is not a MapDataset"):
        ts_map(fg.read_datasets(tmp_path / "ring" / "datasets.yaml")[0], fg.Models([]))
    with pytest.raises(ValueError, match=r"on-off maps \(MapDatasetOnOff\).*does not fit"):
        fg.fit(fg.read_datasets(tmp_path / "ring" / "datasets.yaml"), fg.read_models(tmp_path / "models.yaml"))
    with pytest.raises(ValueError, match="read it as a MapDatasetOnOff"):
        fg.MapDataset.read(tmp_path / "ring" / yaml.safe_load((tmp_path / "ring" / "datasets.yaml").read_text())["datasets"][0]["filename"])


def test_wstat_pixel_statistics_equal_gammapys_on_a_grid_of_counts():
    """The per-pixel WStat quantities of on-off excess maps against Gammapy's
    ``WStatCountsStatistic`` (its brentq roots per element) on a grid that holds what maps
    rarely do: no ON or no OFF counts, alpha 0 or above 1, large predicted signals. Within
    1e-5 (measured 1.3e-6, brentq's own tolerance), the same NaN entries (no root in Gammapy's range: errn
    is then n_on).
    With no ON counts and alpha >= 1, Newton's steps from the envelope slope crawl; the
    safeguarded steps still converge."""
    import itertools

    from gammapy.stats import WStatCountsStatistic

    from fitax.gamma.estimators import _wstat_excess_maps

    grid = itertools.product([0, 1, 2, 5, 30, 400], [0, 1, 3, 10, 100, 5000], [0.0, 0.01, 0.1, 1.0, 5.0], [0.0, 0.5, 3.0, 50.0])
    n_on, n_off, alpha, mu_sig = (np.array(values, float) for values in zip(*grid))
    ours = _wstat_excess_maps(n_on, n_off, alpha, mu_sig, 1.0, 2.0)
    statistic = WStatCountsStatistic(n_on, n_off, alpha, mu_sig)
    theirs = {"npred_excess": statistic.n_sig, "ts": statistic.ts, "sqrt_ts": statistic.sqrt_ts, "norm_err": statistic.error,
              "norm_errn": statistic.compute_errn(1.0), "norm_errp": statistic.compute_errp(1.0), "norm_ul": statistic.compute_upper_limit(2.0)}
    for name, expected in theirs.items():
        np.testing.assert_array_equal(np.isnan(ours[name]), np.isnan(expected), err_msg=name)
        finite = ~np.isnan(expected)
        np.testing.assert_allclose(ours[name][finite], expected[finite], rtol=1e-5, atol=1e-5, err_msg=name)
    assert np.isnan(theirs["norm_errp"]).any() and (theirs["norm_errn"] == n_on).any()  # the grid reaches the no-root rules
