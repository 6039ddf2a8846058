"""Temporal models (fitax.gamma.temporal) against Gammapy 2.1: each model's average over good
time intervals against Gammapy's ``TemporalModel.integral`` (and quadrature, where Gammapy's
sine integral is wrong), the predicted counts of on-off spectra and of a map dataset of
H.E.S.S. runs on three nights, and a fit with a time-dependent flux.

Light-curve templates: values against Gammapy's at and beyond the nodes, averages against
quadrature and Gammapy's sum with many points, and predicted counts against a template of a
straight line given as Gammapy's LinearTemporalModel (Gammapy's own template average is ~1%
high: shown).

Tolerances: averages within 1e-9 relative (measured 1e-12: closed forms on both sides; MJDs
of 5e4 d leave ~1e-11 d); template values 1e-12, Gammapy's 2001-point template sums made
trapezoidal 1e-6 (their error ~h^2); statistics within 1e-6 relative; fitted values within 0.05 sigma,
errors within 1%.
"""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.time import Time

import fitax.gamma as fg
from conftest import shared_data
from fitax.gamma import temporal

gammapy = pytest.importorskip("gammapy", reason="Gammapy (test extra) not installed")

# three runs' worth of intervals over four nights, in TT as DL3 files give them
GTI = Time(np.array([[53343.92, 53343.94], [53343.95, 53343.97], [53345.96, 53345.98], [53347.91, 53347.93]]), format="mjd", scale="tt")

MODELS = [
    ("ConstantTemporalModel", {}, "utc"),
    ("LinearTemporalModel", {"alpha": 1.2, "beta": -0.15, "t_ref": 53345.0}, "utc"),
    ("ExpDecayTemporalModel", {"t0": 1.7, "t_ref": 53343.5}, "tt"),
    ("GaussianTemporalModel", {"t_ref": 53345.4, "sigma": 1.3}, "utc"),
    ("PowerLawTemporalModel", {"alpha": -0.7, "t_ref": 53343.0, "t0": 0.5}, "utc"),
    ("PowerLawTemporalModel", {"alpha": -1.0, "t_ref": 53343.0, "t0": 0.5}, "utc"),
]
UNITS = {"t_ref": "d", "t0": "d", "sigma": "d", "beta": "d-1", "omega": "rad d-1"}


def _theirs(kind: str, values: dict, scale: str):
    from gammapy.modeling.models import Model

    parameters = [{"name": k, "value": v, "unit": UNITS.get(k, "")} for k, v in values.items()]
    return Model.from_dict({"temporal": {"type": kind, "parameters": parameters, "scale": scale}})


def _ours(kind: str, values: dict, scale: str):
    cls = next(c for tags, c in temporal.TEMPORAL_TAGS.items() if kind in tags)
    return cls(**values, scale=scale)


@pytest.mark.parametrize(("kind", "values", "scale"), MODELS)
def test_averages_over_good_time_equal_gammapys_integrals(kind, values, scale):
    expected = float(np.sum(_theirs(kind, values, scale).integral(GTI[:, 0], GTI[:, 1])))
    model = _ours(kind, values, scale)
    intervals = temporal.temporal_intervals(fg.SkyModel(fg.PowerLawSpectralModel(), name="s", temporal_model=model), [GTI], ["d"])[0]
    assert float(model.mean(intervals)) == pytest.approx(expected, rel=1e-9)
    padded = np.concatenate([intervals, np.full((3, 2), intervals[-1, 1])])  # zero-length padding adds nothing
    assert float(model.mean(padded)) == pytest.approx(expected, rel=1e-12)
    if kind != "ConstantTemporalModel":
        assert abs(expected - 1) > 1e-3  # the model varies over these nights


def test_averages_count_leap_seconds_as_elapsed_time():
    """Runs a week after the leap second of 2005-12-31, a UTC ``t_ref`` before it: Gammapy's
    ``Time`` differences count the leap second, and so must the average (it was 1.2e-5 off)."""
    gti = Time(np.array([[53740.9, 53740.92], [53742.9, 53742.95]]), format="mjd", scale="tt")
    for kind, values in (("ExpDecayTemporalModel", {"t0": 0.5, "t_ref": 53733.5}), ("LinearTemporalModel", {"alpha": 1.0, "beta": 0.3,
                                                                                                            "t_ref": 53733.5})):
        expected = float(np.sum(_theirs(kind, values, "utc").integral(gti[:, 0], gti[:, 1])))
        model = _ours(kind, values, "utc")
        intervals = temporal.temporal_intervals(fg.SkyModel(fg.PowerLawSpectralModel(), name="s", temporal_model=model), [gti], ["d"])[0]
        assert float(model.mean(intervals)) == pytest.approx(expected, rel=1e-9), kind


def test_sine_average_is_the_integral_where_gammapys_is_not():
    """Gammapy's ``SineTemporalModel.integral`` takes ``sin`` where the antiderivative of
    ``1 + amp sin(omega (t - t_ref))`` has ``-cos / omega``: against quadrature fitax is
    right to 1e-9 and Gammapy off by 10%."""
    from scipy.integrate import quad

    values = {"amp": 0.6, "omega": 1.3, "t_ref": 53344.0}
    model = _ours("SineTemporalModel", values, "tt")
    mjd = GTI.tt.mjd
    truth = sum(quad(lambda t: float(model(t)), a, b, epsabs=0, epsrel=1e-13)[0] for a, b in mjd) / np.sum(mjd[:, 1] - mjd[:, 0])
    assert float(model.mean(mjd)) == pytest.approx(truth, rel=1e-9)
    theirs = float(np.sum(_theirs("SineTemporalModel", values, "tt").integral(GTI[:, 0], GTI[:, 1])))
    assert abs(theirs - truth) > 0.05 * truth


@pytest.fixture(scope="module")
def spectra(tmp_path_factory):
    """On-off spectra of four Crab runs on three nights, written by fitax and read by both
    (their ``datasets.yaml``)."""
    return _spectra(tmp_path_factory.mktemp("spectra"))


def _spectra(tmp_path) -> tuple:
    from regions import CircleSkyRegion

    from fitax.gamma.dl3 import DataStore
    from fitax.gamma.io import write_spectrum_onoff
    from fitax.gamma.spectrum_reduce import spectrum_onoff_file

    store = DataStore.from_dir(shared_data("gamma", "hess-dl3-dr1"))
    on = CircleSkyRegion(SkyCoord(83.633, 22.014, unit="deg"), 0.11 * u.deg)
    entries = []
    for obs_id in (23523, 23526, 23559, 23592):
        spectrum = spectrum_onoff_file(store.observation(obs_id), on, np.geomspace(0.5, 40, 13) * u.TeV, np.geomspace(0.3, 60, 21) * u.TeV,
                                       containment_correction=True)
        write_spectrum_onoff(spectrum, tmp_path / f"pha_{spectrum.name}.fits")
        entries.append({"name": spectrum.name, "type": "SpectrumDatasetOnOff", "filename": f"pha_{spectrum.name}.fits"})
    path = tmp_path / "datasets.yaml"
    path.write_text(yaml.safe_dump({"datasets": entries}))
    return path


def _models_file(path, temporal_part: dict, spatial: bool = False):
    component = {"name": "crab", "type": "SkyModel", "spectral": {"type": "PowerLawSpectralModel", "parameters": [
        {"name": "index", "value": 2.6}, {"name": "amplitude", "value": 4.4e-11, "unit": "TeV-1 s-1 cm-2"},
        {"name": "reference", "value": 1.0, "unit": "TeV"}]}, "temporal": temporal_part}  # fmt: skip
    if spatial:
        component["spatial"] = {"type": "PointSpatialModel", "frame": "icrs", "parameters": [
            {"name": "lon_0", "value": 83.633, "unit": "deg"}, {"name": "lat_0", "value": 22.014, "unit": "deg"}]}  # fmt: skip
    path.write_text(yaml.safe_dump({"components": [component]}))
    return path


def test_predicted_counts_and_a_fit_with_a_temporal_model_equal_gammapys(spectra, tmp_path):
    """On-off spectra of runs on three nights: the statistic with an exponential decay and a
    Gaussian flare equals Gammapy's (each spectrum scaled by the model's average over its
    GTIs); a fit with a linear trend finds Gammapy's (iminuit's) values and errors; the
    fitted models.yaml keeps the temporal model and Gammapy reads it."""
    from gammapy.datasets import Datasets
    from gammapy.modeling import Fit
    from gammapy.modeling.models import Models

    datasets_path = spectra
    ours = fg.read_datasets(datasets_path)
    for temporal_part in (
        {"type": "ExpDecayTemporalModel", "scale": "tt", "parameters": [{"name": "t0", "value": 1.7, "unit": "d"},
                                                                         {"name": "t_ref", "value": 53343.5, "unit": "d"}]},
        {"type": "GaussianTemporalModel", "parameters": [{"name": "t_ref", "value": 53345.4, "unit": "d"},
                                                          {"name": "sigma", "value": 1.3, "unit": "d"}]},
    ):  # fmt: skip
        path = _models_file(tmp_path / "models.yaml", temporal_part)
        theirs = Datasets.read(datasets_path)
        theirs.models = Models.read(path)
        models = fg.read_models(path)
        assert ours.stat_sum(models) == pytest.approx(theirs.stat_sum(), rel=1e-6)
        expected = [d.npred_signal().data.ravel() for d in theirs]
        for mine, reference in zip(ours.npred(models), expected, strict=True):
            np.testing.assert_allclose(mine, reference, rtol=1e-6, atol=1e-9)

    linear = {"type": "LinearTemporalModel", "parameters": [{"name": "alpha", "value": 1.0, "frozen": True},
                                                            {"name": "beta", "value": 0.0, "unit": "d-1"},
                                                            {"name": "t_ref", "value": 53345.0, "unit": "d"}]}  # fmt: skip
    path = _models_file(tmp_path / "linear.yaml", linear)
    theirs = Datasets.read(datasets_path)
    theirs.models = Models.read(path)
    assert Fit().run(theirs).success
    result = fg.fit(ours, fg.read_models(path))
    assert result.converged
    for parameter in theirs.models.parameters.free_parameters:
        part = "temporal" if parameter.name == "beta" else "spectral"
        name = f"crab.{part}.{parameter.name}"
        assert abs(result.values[name] - parameter.value) < 0.05 * parameter.error, name
        assert result.errors[name] == pytest.approx(parameter.error, rel=0.01), name
    fg.write_models(result.params, tmp_path / "fitted.yaml", errors=result.errors)
    written = Models.read(tmp_path / "fitted.yaml")["crab"].temporal_model
    assert written.tag[0] == "LinearTemporalModel" and written.beta.value == pytest.approx(result.values["crab.temporal.beta"])


def test_map_dataset_npred_with_a_temporal_model_equals_gammapys(tmp_path):
    """A map dataset of two runs on one night stacked (its GTIs: two intervals) and one of
    a run two nights later, a point source decaying exponentially: npred as Gammapy's."""
    from gammapy.datasets import Datasets
    from gammapy.modeling.models import Models

    from fitax.cli import main

    hess = shared_data("gamma", "hess-dl3-dr1")
    config = {"observations": {"datastore": str(hess), "obs_ids": [23523, 23526]},
              "datasets": {"type": "3d", "stack": True,
                           "geom": {"wcs": {"skydir": {"frame": "icrs", "lon": "83.633 deg", "lat": "22.014 deg"}, "binsize": "0.04 deg",
                                            "width": {"width": "2 deg", "height": "2 deg"}, "binsize_irf": "0.2 deg"},
                                    "axes": {"energy": {"min": "1 TeV", "max": "10 TeV", "nbins": 3},
                                             "energy_true": {"min": "0.7 TeV", "max": "12 TeV", "nbins": 6}}}}}  # fmt: skip
    (tmp_path / "analysis.yaml").write_text(yaml.safe_dump(config))
    assert main(["gamma", "reduce", str(tmp_path / "analysis.yaml"), "--out", str(tmp_path / "out")]) == 0
    path = _models_file(tmp_path / "models.yaml", {"type": "ExpDecayTemporalModel", "parameters": [
        {"name": "t0", "value": 0.02, "unit": "d"}, {"name": "t_ref", "value": 53343.9, "unit": "d"}]}, spatial=True)  # fmt: skip
    theirs = Datasets.read(tmp_path / "out" / "datasets.yaml")
    theirs.models = Models.read(path)
    expected = theirs[0].npred().data  # with the background, as fitax's npred
    datasets, models = fg.read_datasets(tmp_path / "out" / "datasets.yaml"), fg.read_models(path)
    ours = datasets.npred(models)[0]
    np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-6 * expected.max())
    source = models["crab"]
    constant = datasets.npred(fg.Models([fg.SkyModel(source.spectral, source.spatial, name="crab")]))[0]
    background = datasets.npred(fg.Models([]))[0]
    assert (ours - background).sum() < 0.6 * (constant - background).sum()  # the decay matters here


def test_a_dataset_without_good_time_is_fine_where_the_temporal_source_does_not_apply(spectra):
    """A spectrum without GTIs (an OGIP file may have none) beside one with them, and a
    decaying source restricted to the latter: the statistic is finite and the first
    spectrum predicts nothing from the source (it was NaN, 0 x NaN)."""
    import dataclasses

    datasets_path = spectra
    read = fg.read_datasets(datasets_path)
    datasets = fg.Datasets([read[0], dataclasses.replace(read[1], gti=None)])
    source = fg.SkyModel(fg.PowerLawSpectralModel(index=2.6, amplitude=4.4e-11), name="crab", datasets_names=[read[0].name],
                         temporal_model=temporal.ExpDecayTemporalModel(t0=0.05, t_ref=53343.9))
    npred = datasets.npred(fg.Models([source]))
    assert np.isfinite(datasets.stat_sum(fg.Models([source]))) and np.all(npred[1] == 0) and npred[0].sum() > 1
    # a power-law decay is infinite at t_ref and undefined before it: datasets it does not apply to (one without GTIs,
    # one of runs before t_ref) take no part, nor does their gradient
    with_gti = fg.Datasets([read[2], read[0], dataclasses.replace(read[1], gti=None)])  # 23559 is two nights after t_ref
    decay = fg.SkyModel(source.spectral, name="crab", datasets_names=[read[2].name],
                        temporal_model=temporal.PowerLawTemporalModel(alpha=-1.5, t_ref=53344.5, t0=1.0))
    assert np.isfinite(with_gti.stat_sum(fg.Models([decay])))
    from fitax.gamma.fit import fit

    result = fit(with_gti, fg.Models([decay]))
    assert result.converged and np.isfinite(result.errors["crab.spectral.amplitude"])
    with pytest.raises(ValueError, match="carry no good time intervals"):
        datasets.stat_sum(fg.Models([fg.SkyModel(source.spectral, name="crab", temporal_model=source.temporal)]))


def test_a_temporal_model_needs_good_time_intervals_and_a_known_type(tmp_path):
    model = fg.SkyModel(fg.PowerLawSpectralModel(), name="s", temporal_model=temporal.ExpDecayTemporalModel())
    with pytest.raises(ValueError, match=r"model 's' has a temporal model, but datasets \['run1'\] carry no good time intervals"):
        temporal.temporal_intervals(model, [None], ["run1"])
    path = _models_file(tmp_path / "bad.yaml", {"type": "PhaseCurveTemplateTemporalModel", "parameters": []})
    with pytest.raises(ValueError, match="unknown model type 'PhaseCurveTemplateTemporalModel'"):
        fg.read_models(path)
    path = _models_file(tmp_path / "bad.yaml", {"type": "ExpDecayTemporalModel", "scale": "gps", "parameters": []})
    with pytest.raises(ValueError, match="scale 'gps'"):
        fg.read_models(path)


def _template_table(path, times, norms, reference: Time):
    """A light-curve template table as Gammapy writes one (TIME in days after MJDREF)."""
    from astropy.table import Table

    table = Table({"TIME": np.asarray(times, float) * u.d, "NORM": np.asarray(norms, float)})
    table.meta.update({"MJDREFI": int(reference.mjd), "MJDREFF": reference.mjd - int(reference.mjd), "TIMESYS": reference.scale})
    table.write(path)
    return path


def test_light_curve_template_values_and_averages_equal_gammapys(tmp_path):
    """A template of seven nodes (reference time in TT) read by both: values between, before
    and after the nodes (extrapolated, clipped at 0) equal Gammapy's; the average over four
    GTIs, one beyond the last node where the extrapolation is below 0, is the integral
    (quadrature) and the limit of Gammapy's sum, whose default of 100 points is ~1% high."""
    from gammapy.modeling.models import LightCurveTemplateTemporalModel
    from scipy.integrate import quad

    path = _template_table(tmp_path / "lc.fits", [0.3, 0.45, 1.0, 2.4, 2.5, 3.6, 4.0], [1.5, 0.2, 0.7, 2.0, 0.1, 1.2, 0.4],
                           Time(53343.5, format="mjd", scale="tt"))
    theirs = LightCurveTemplateTemporalModel.read(path)
    component = _models_file(tmp_path / "models.yaml", {"type": "LightCurveTemplateTemporalModel", "filename": "lc.fits"})
    ours = fg.read_models(component)["crab"].temporal
    assert ours.t_ref.value == theirs.t_ref.value
    after = np.array([-1.0, 0.1, 0.3, 0.4, 1.7, 2.45, 3.9, 4.1, 4.15, 6.0])
    expected = theirs(theirs.reference_time + after * u.d).value
    np.testing.assert_allclose(ours(theirs.t_ref.value + after), expected, rtol=1e-12, atol=1e-12)
    assert expected[-1] == 0 and expected[0] > 0  # clipped after, extrapolated before

    intervals = temporal.temporal_intervals(fg.SkyModel(fg.PowerLawSpectralModel(), name="s", temporal_model=ours), [GTI], ["d"])[0]
    average = float(ours.mean(intervals))
    kinks = list(theirs.t_ref.value + np.array([0.3, 0.45, 1.0, 2.4, 2.5, 3.6, 4.0, 4.2]))
    integrals = [quad(lambda t: float(ours(t)), a, b, points=[k for k in kinks if a < k < b] or None, epsabs=0, epsrel=1e-13)[0]
                 for a, b in intervals]
    assert average == pytest.approx(sum(integrals) / np.sum(intervals[:, 1] - intervals[:, 0]), rel=1e-10)
    assert integrals[-1] == 0 and average > 0.2
    # Gammapy sums n points spaced by h = 1/(n - 1) of each interval (given UTC times: its evaluator passes the GTIs'
    # TT times, read as UTC, 65 s late); less h (f(start) + f(stop)) / 2 that is the trapezoid rule, within ~h^2 of the integral
    utc, n = GTI.utc, 2001
    sums = theirs.integral(utc[:, 0], utc[:, 1], oversampling_factor=n)
    ends = theirs(utc[:, 0]).value + theirs(utc[:, 1]).value
    steps = (utc[:, 1] - utc[:, 0]).to_value("d") / (n - 1)
    trapezoid = float(np.sum(sums - steps * ends / 2 / np.sum((utc[:, 1] - utc[:, 0]).to_value("d"))))
    assert trapezoid == pytest.approx(average, rel=1e-6)
    default = float(np.sum(theirs.integral(GTI[:, 0], GTI[:, 1])))
    assert abs(default / average - 1) > 3e-3


def test_predicted_counts_with_a_light_curve_template_equal_the_straight_line_it_samples(spectra, tmp_path):
    """A template sampling ``1.2 - 0.15 (t - t_ref)`` at two nodes predicts, through
    models.yaml, the counts Gammapy predicts with that LinearTemporalModel (Gammapy's own
    template is ~1% higher) and fits as the line does; fitax writes the template back where
    Gammapy reads it."""
    from gammapy.datasets import Datasets
    from gammapy.modeling.models import Models

    t_ref = Time(53345.0, format="mjd", scale="utc")
    (tmp_path / "templates").mkdir()
    _template_table(tmp_path / "templates" / "line.fits", [-5.0, 5.0], [1.2 + 0.15 * 5, 1.2 - 0.15 * 5], t_ref)
    datasets_path = spectra
    template = _models_file(tmp_path / "template.yaml", {"type": "LightCurveTemplateTemporalModel", "filename": "templates/line.fits"})
    line = _models_file(tmp_path / "line.yaml", {"type": "LinearTemporalModel", "parameters": [
        {"name": "alpha", "value": 1.2, "frozen": True}, {"name": "beta", "value": -0.15, "unit": "d-1", "frozen": True},
        {"name": "t_ref", "value": 53345.0, "unit": "d"}]})
    theirs = Datasets.read(datasets_path)
    theirs.models = Models.read(line)
    expected = [d.npred_signal().data.ravel() for d in theirs]
    ours, models = fg.read_datasets(datasets_path), fg.read_models(template)
    for mine, reference in zip(ours.npred(models), expected, strict=True):
        np.testing.assert_allclose(mine, reference, rtol=1e-6, atol=1e-9)
    assert ours.stat_sum(models) == pytest.approx(theirs.stat_sum(), rel=1e-6)
    fitted, fitted_line = fg.fit(ours, models), fg.fit(ours, fg.read_models(line))
    assert fitted.converged and fitted.values["crab.spectral.amplitude"] == pytest.approx(fitted_line.values["crab.spectral.amplitude"], rel=1e-6)

    fg.write_models(models, tmp_path / "written.yaml")
    written = Models.read(tmp_path / "written.yaml")["crab"].temporal_model
    assert written.tag[0] == "LightCurveTemplateTemporalModel" and written.t_ref.value == pytest.approx(53345.0, abs=1e-9)
    theirs.models = Models.read(tmp_path / "written.yaml")
    gammapy_template = [d.npred_signal().data.sum() for d in theirs]
    assert min(g / e.sum() for g, e in zip(gammapy_template, expected)) > 1.003


def test_a_light_curve_template_in_seconds_or_hours_is_read_as_gammapy_reads_it(tmp_path):
    """TIME in seconds (the column's unit) and in hours (no unit, ``TIMEUNIT``): the same
    values as Gammapy's reading; a template made in code has no file to write into models.yaml."""
    from astropy.table import Table
    from gammapy.modeling.models import LightCurveTemplateTemporalModel

    hours = np.array([0.0, 6.0, 30.0, 50.0])
    norms = np.array([0.5, 2.0, 1.0, 0.2])
    seconds = Table({"TIME": hours * 3600 * u.s, "NORM": norms})
    unitless = Table({"TIME": hours, "NORM": norms})
    unitless.meta["TIMEUNIT"] = "h"
    for name, table in (("seconds.fits", seconds), ("hours.fits", unitless)):
        table.meta.update({"MJDREFI": 53343, "MJDREFF": 0.5, "TIMESYS": "tt"})
        table.write(tmp_path / name)
        theirs = LightCurveTemplateTemporalModel.read(tmp_path / name)
        ours = fg.read_models(_models_file(tmp_path / "m.yaml", {"type": "LightCurveTemplateTemporalModel", "filename": name}))["crab"].temporal
        after = np.array([0.1, 0.5, 1.5, 2.2])
        np.testing.assert_allclose(ours(theirs.t_ref.value + after), theirs(theirs.reference_time + after * u.d).value, rtol=1e-12, err_msg=name)
    made = fg.SkyModel(fg.PowerLawSpectralModel(), name="s", temporal_model=temporal.LightCurveTemplateTemporalModel(hours / 24, norms))
    with pytest.raises(ValueError, match="made in code, not read from a file"):
        fg.write_models(fg.Models([made]), tmp_path / "made.yaml")
    assert not (tmp_path / "made.yaml").exists()


def test_a_light_curve_template_names_what_is_wrong_with_its_file(tmp_path):
    reference = Time(53345.0, format="mjd", scale="utc")
    cases = {
        "missing.fits": (None, "no such file"),
        "nonorm.fits": ({"TIME": [0.0, 1.0] * u.d, "FLUX": [1.0, 2.0]}, r"without column\(s\) \['NORM'\]"),
        "noref.fits": ({"TIME": [0.0, 1.0] * u.d, "NORM": [1.0, 2.0]}, "MJDREFI"),
        "unsorted.fits": ({"TIME": [1.0, 0.0] * u.d, "NORM": [1.0, 2.0]}, "times must increase strictly"),
        "nounit.fits": ({"TIME": [0.0, 1.0], "NORM": [1.0, 2.0]}, "no time unit"),
    }
    from astropy.table import Table

    for name, (columns, message) in cases.items():
        if columns is not None:
            table = Table(columns)
            if name != "noref.fits":
                table.meta.update({"MJDREFI": 53345, "MJDREFF": 0.0, "TIMESYS": reference.scale})
            table.write(tmp_path / name)
        path = _models_file(tmp_path / "m.yaml", {"type": "LightCurveTemplateTemporalModel", "filename": name})
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            fg.read_models(path)
    path = _models_file(tmp_path / "m.yaml", {"type": "LightCurveTemplateTemporalModel", "filename": "unsorted.fits", "format": "map"})
    with pytest.raises(ValueError, match="format 'map'"):
        fg.read_models(path)
