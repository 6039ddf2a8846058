"""YAML I/O, the dataset writer, bad input and ``fitax gamma fit`` end to end, on small
simulated observations (fast; no shared data needed)."""

import numpy as np
import pytest
import yaml
from astropy.coordinates import SkyCoord
from astropy.table import Table

import fitax.gamma as fg
from fitax.cli import main
from fitax.gamma.demo import demo_models
from fitax.gamma.simulate import simulate_observation, write_datasets


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """Two 40x40-pixel observations of the demo sources, written as Gammapy files."""
    folder = tmp_path_factory.mktemp("sim")
    truth = demo_models(["a", "b"], [1.0, 0.9])
    rng = np.random.default_rng(3)
    datasets = fg.Datasets([
        simulate_observation(truth, name, SkyCoord(x, 0.0, unit="deg", frame="galactic"), npix=40, rng=rng)
        for name, x in (("a", -0.2), ("b", 0.2))
    ])
    datasets_path = write_datasets(datasets, folder)
    models_path = fg.write_models(truth, folder / "models.yaml")
    return folder, datasets_path, models_path, truth


def test_models_yaml_round_trip_keeps_values_bounds_frozen_and_links(tmp_path):
    models = demo_models(["a", "b"], [1.0, 0.9])
    from fitax.parameters import freeze, tie

    models = tie(freeze(models, "point.spectral.index"), "b-bkg.norm", "a-bkg.norm")
    path = fg.write_models(models, tmp_path / "models.yaml", errors={"extended.spatial.sigma": 0.01})
    again = fg.read_models(path)
    for name, parameter in models.parameters.items():
        other = again.parameters[name]
        assert float(other.value) == pytest.approx(float(parameter.value), rel=1e-12), name
        assert (other.min, other.max, other.frozen, other.unit) == (parameter.min, parameter.max, parameter.frozen, parameter.unit)
    assert again.parameters["b-bkg.norm"].tied_to == "a-bkg.norm"
    text = yaml.safe_load(path.read_text())
    sigma = next(p for p in text["components"][1]["spatial"]["parameters"] if p["name"] == "sigma")
    assert sigma["error"] == 0.01


def test_models_yaml_converts_units(tmp_path):
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump({"components": [{
        "name": "src", "type": "SkyModel",
        "spectral": {"type": "pl", "parameters": [{"name": "amplitude", "value": 1e-7, "unit": "GeV-1 s-1 m-2"},
                                                  {"name": "reference", "value": 1000.0, "unit": "GeV"}]},
        "spatial": {"type": "gauss", "frame": "galactic", "parameters": [{"name": "sigma", "value": 6.0, "unit": "arcmin"}]},
    }]}))
    model = fg.read_models(path)["src"]
    assert float(model.spectral.amplitude.value) == pytest.approx(1e-7 * 1e3 * 1e-4)  # per TeV, per cm2
    assert float(model.spectral.reference.value) == pytest.approx(1.0)
    assert float(model.spatial.sigma.value) == pytest.approx(0.1)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["spectral"].update(type="MagicSpectralModel"), "unknown model type 'MagicSpectralModel'"),
    (lambda c: c["spectral"]["parameters"].append({"name": "amplitude", "value": 1e-12, "unit": "furlong"}),
     "parameter 'amplitude': unknown unit 'furlong'"),
    (lambda c: c["spectral"]["parameters"].append({"name": "amplitude", "value": 1e-12, "unit": "deg"}),
     "parameter 'amplitude': unit 'deg' cannot be converted"),
    (lambda c: c["spatial"]["parameters"].append({"name": "radius", "value": 1.0}), "has no parameter 'radius'"),
    (lambda c: c["spectral"]["parameters"].append({"name": "index", "value": "two"}), "value must be a finite number"),
    (lambda c: c.update(type="TemplateNPredModel"), "unknown component type 'TemplateNPredModel'"),
    (lambda c: c.update(temporal={"type": "PhaseCurveTemplateTemporalModel", "parameters": []}),
     "temporal: unknown model type 'PhaseCurveTemplateTemporalModel'"),
    (lambda c: c.update(temporal={"type": "LightCurveTemplateTemporalModel", "parameters": []}),
     "temporal: a LightCurveTemplateTemporalModel needs a 'filename'"),
    (lambda c: c.update(spectrum={"type": "PowerLawSpectralModel"}), "unknown key 'spectrum'"),
    (lambda c: c["spectral"]["parameters"].append({"name": "index", "value": 2.0, "prior": {"type": "LogUniformPrior", "parameters": []}}),
     "parameter 'index': prior of type 'LogUniformPrior' is not supported"),
    (lambda c: c["spectral"]["parameters"].append({"name": "index", "value": 2.0, "prior": {
        "type": "GaussianPrior", "parameters": [{"name": "mu", "value": 2.0}, {"name": "sigma", "value": 0.0}]}}),
     "GaussianPrior: sigma must be > 0"),
    (lambda c: c["spectral"]["parameters"].append({"name": "index", "value": 2.0, "prior": {
        "type": "GaussianPrior", "parameters": [{"name": "mu", "value": 2.0}, {"name": "sigm", "value": 0.1}]}}),
     "a GaussianPrior has no parameter 'sigm'"),
    (lambda c: c["spectral"]["parameters"].append({"name": "index", "value": 2.0, "prior": "gauss"}), "prior must be a mapping"),
    (lambda c: c.update(apply_irf={"psf": False}), "apply_irf = {'psf': False} is not supported"),
])
def test_bad_models_yaml_names_file_model_and_parameter(tmp_path, edit, message):
    component = {"name": "src", "type": "SkyModel", "spectral": {"type": "PowerLawSpectralModel", "parameters": []},
                 "spatial": {"type": "PointSpatialModel", "frame": "galactic", "parameters": []}}
    edit(component)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"components": [component]}))
    with pytest.raises(ValueError) as error:
        fg.read_models(path)
    assert message in str(error.value) and "bad.yaml" in str(error.value)


def test_a_prior_weight_narrows_the_gaussian_as_gammapy_weighs_it(tmp_path):
    """Gammapy adds ``weight x ((value - mu) / sigma)^2`` (and a constant): a weight of 4
    is sigma / 2; a weight of 0 is no prior."""
    component = {"name": "src", "type": "SkyModel", "spectral": {"type": "PowerLawSpectralModel", "parameters": [
        {"name": "index", "value": 2.0, "prior": {"type": "GaussianPrior", "parameters": [{"name": "mu", "value": 2.1},
                                                                                         {"name": "sigma", "value": 0.2}], "weight": 4}},
        {"name": "amplitude", "value": 1e-12, "unit": "cm-2 s-1 TeV-1", "prior": {
            "type": "GaussianPrior", "parameters": [{"name": "mu", "value": 1e-12}, {"name": "sigma", "value": 1e-13}], "weight": 0}}]}}
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump({"components": [component]}))
    spectral = fg.read_models(path)["src"].spectral
    assert spectral.index.prior.mu == pytest.approx(2.1) and spectral.index.prior.sigma == pytest.approx(0.1)
    assert spectral.amplitude.prior is None


def test_model_outside_the_map_is_an_error(simulated):
    _, datasets_path, _, truth = simulated
    datasets = fg.read_datasets(datasets_path)
    far = fg.SkyModel(fg.PowerLawSpectralModel(), fg.PointSpatialModel(30.0, 5.0, frame="galactic"), name="far")
    with pytest.raises(ValueError, match="model 'far' at .* lies outside every dataset map"):
        datasets.npred(truth + [far])
    with pytest.raises(ValueError, match="refers to dataset 'c'"):
        fg.fit(datasets, truth + [fg.FoVBackgroundModel("c")])
    with pytest.raises(ValueError, match="parameter point.spectral.index is nan"):
        from fitax.parameters import set_values

        datasets.npred(set_values(truth, {"point.spectral.index": np.nan}))


@pytest.mark.filterwarnings("error:Checksum verification failed")
def test_written_datasets_are_read_by_gammapy_with_the_same_npred(simulated, monkeypatch):
    pytest.importorskip("gammapy", reason="Gammapy (test extra) not installed")
    import gammapy.datasets.map as gammapy_map
    from gammapy.datasets import Datasets
    from gammapy.modeling.models import Models

    folder, datasets_path, models_path, truth = simulated
    monkeypatch.setattr(gammapy_map, "EVALUATION_MODE", "global")
    theirs = Datasets.read(datasets_path)
    theirs.models = Models.read(models_path)
    ours = fg.read_datasets(datasets_path)
    for mine, their in zip(ours.npred(fg.read_models(models_path)), theirs):
        np.testing.assert_array_equal(fg.MapDataset.read(folder / f"{their.name}.fits.gz").counts, their.counts.data)
        reference = their.npred().data
        significant = reference > 1e-3
        assert np.max(np.abs(mine - reference)[significant] / reference[significant]) < 1e-3
    assert ours.stat_sum(fg.read_models(models_path)) == pytest.approx(theirs.stat_sum(), abs=1e-3)


def test_cli_fit_end_to_end(simulated, tmp_path, capsys):
    _, datasets_path, models_path, truth = simulated
    out = tmp_path / "fit"
    code = main(["gamma", "fit", "--datasets", str(datasets_path), "--models", str(models_path), "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    for name in ("models.yaml", "results.ecsv", "maps.png", "spectrum.png"):
        assert (out / name).stat().st_size > 0, name
    table = Table.read(out / "results.ecsv")
    assert list(table.colnames) == ["name", "value", "error", "unit", "frozen"]
    assert len(table.meta["covariance"]) == len(table.meta["free_parameters"])
    fitted = fg.read_models(out / "models.yaml")
    for row in table:
        assert float(fitted.parameters[row["name"]].value) == pytest.approx(row["value"], rel=1e-12)
        if not row["frozen"]:
            pull = (row["value"] - float(truth.parameters[row["name"]].value)) / row["error"]
            assert abs(pull) < 4, row["name"]


def test_cli_refuses_to_overwrite_inputs_and_reports_missing_files(simulated, tmp_path, capsys):
    folder, datasets_path, models_path, _ = simulated
    before = models_path.read_bytes()
    code = main(["gamma", "fit", "--datasets", str(datasets_path), "--models", str(models_path), "--out", str(folder)])
    assert code == 2
    assert "refusing to write" in capsys.readouterr().err
    assert models_path.read_bytes() == before
    code = main(["gamma", "fit", "--datasets", str(tmp_path / "none.yaml"), "--models", str(models_path), "--out", str(tmp_path)])
    assert code == 2
    assert "none.yaml: no such file" in capsys.readouterr().err


@pytest.mark.slow  # `make demo` runs it too
def test_gamma_demo_runs_and_recovers_the_truth(tmp_path, capsys):
    assert main(["gamma", "demo", "--out", str(tmp_path), "--datasets", "2", "--seed", "1"]) == 0
    for name in ("models.yaml", "results.ecsv", "maps.png", "spectrum.png", "data/datasets.yaml", "data/obs000.fits.gz",
                 "data/models_true.yaml", "data/models_start.yaml"):
        assert (tmp_path / name).exists(), name
    table = Table.read(tmp_path / "results.ecsv")
    truth = fg.read_models(tmp_path / "data" / "models_true.yaml").parameters
    pulls = [(row["value"] - float(truth[row["name"]].value)) / row["error"] for row in table if not row["frozen"]]
    assert max(abs(p) for p in pulls) < 4
    assert "TS of extended" in capsys.readouterr().out


@pytest.mark.slow  # 48 s; the sampler itself is checked in make test by tests/test_sample.py
def test_cli_fit_with_posterior_samples(simulated, tmp_path, capsys):
    """``--sample 25``: after the fit, 4 NUTS chains of 25 draws write posterior.ecsv (name,
    mean, std, q16, q50, q84, r_hat, ess per free parameter) and corner.png. What is checked
    here is the wiring (files, columns, one row per fitted parameter, each row's draws about
    its own parameter: within 1 sigma of the fitted value, and a std within a factor 2 of the
    error); the posterior's agreement with the fit to Monte Carlo precision is tested on
    ``fitax.gamma.sample``, which the command calls, in tests/test_sample.py (100 draws per
    chain took 72 s here and checked nothing more about the command)."""
    _, datasets_path, models_path, _ = simulated
    out = tmp_path / "fit"
    code = main(["gamma", "fit", "--datasets", str(datasets_path), "--models", str(models_path), "--out", str(out),
                 "--sample", "25"])
    assert code == 0, capsys.readouterr().err
    assert "r_hat" in capsys.readouterr().out
    assert (out / "corner.png").stat().st_size > 0
    posterior = Table.read(out / "posterior.ecsv")
    assert list(posterior.colnames) == ["name", "mean", "std", "q16", "q50", "q84", "r_hat", "ess"]
    results = Table.read(out / "results.ecsv")
    fitted = {row["name"]: (row["value"], row["error"]) for row in results if not row["frozen"]}
    assert set(posterior["name"]) == set(fitted)
    for row in posterior:
        value, error = fitted[row["name"]]
        assert np.isfinite(row["r_hat"]) and row["ess"] > 0, row["name"]
        assert abs(row["mean"] - value) < error, row["name"]
        assert 0.5 * error < row["std"] < 2 * error, row["name"]
        assert row["q16"] < row["q50"] < row["q84"]


def test_simulated_counts_hold_only_the_models_of_their_dataset():
    """A source restricted to another dataset and another dataset's background are not
    simulated; a source restricted to this one and this background (norm 1.5) are. Sums
    within 4 Poisson sigma of npred, where the other dataset's source would add ~3000
    counts (the other background is 0.4 instead of 1.5 of ~5000)."""
    from fitax.gamma.spatial import PointSpatialModel
    from fitax.gamma.spectral import PowerLawSpectralModel

    def source(name, dataset):
        return fg.SkyModel(PowerLawSpectralModel(index=2.4, amplitude=1e-11), PointSpatialModel(0.1, 0.15, frame="galactic"),
                        name=name, datasets_names=[dataset])

    mine = fg.Models([source("mine", "a"), fg.FoVBackgroundModel("a", norm=1.5)])
    everything = fg.Models([*mine, source("theirs", "b"), fg.FoVBackgroundModel("b", norm=0.4)])
    dataset = simulate_observation(everything, "a", SkyCoord(0.0, 0.0, unit="deg", frame="galactic"), npix=40,
                                   rng=np.random.default_rng(5))
    expected = float(np.sum(dataset.npred(mine)))
    theirs = float(np.sum(dataset.npred(fg.Models([source("theirs", "a")]))))
    assert theirs > 10 * np.sqrt(expected)
    assert abs(float(np.sum(dataset.counts)) - expected) < 4 * np.sqrt(expected)
