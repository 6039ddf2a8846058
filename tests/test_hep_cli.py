"""``fitax hep cls | fit | limit`` against ``pyhf cls`` / ``pyhf fit`` (pyhf 0.7.6's click CLI run
in-process) on small workspaces."""

from __future__ import annotations

import json

import numpy as np
import pytest

from test_hep_infer import simple_spec

pyhf = pytest.importorskip("pyhf")
from click.testing import CliRunner  # noqa: E402
from pyhf.cli.infer import cls as pyhf_cls, fit as pyhf_fit  # noqa: E402

from fitax.cli import main  # noqa: E402
from fitax.hep import cli as fitax_cli  # noqa: E402


@pytest.fixture
def workspace(tmp_path):
    """A workspace with a shapesys and a normsys (so the CLI's code4 setting matters) and a
    patch that changes the signal, as HEPData's signal patches do."""
    spec = simple_spec(obs=(60.0, 64.0))
    spec["channels"][0]["samples"][1]["modifiers"].append({"name": "norm", "type": "normsys", "data": {"hi": 1.08, "lo": 0.95}})
    path = tmp_path / "ws.json"
    path.write_text(json.dumps(spec))
    patch = [{"op": "replace", "path": "/channels/0/samples/0/data", "value": [10.0, 14.0]}]
    patch_path = tmp_path / "patch.json"
    patch_path.write_text(json.dumps(patch))
    return path, patch_path


def run_fitax(capsys, argv):
    status = main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_cls_prints_pyhf_keys_and_values(workspace, capsys):
    """The keys of ``pyhf cls``, plus ``converged`` and the fitted minima; the numbers of
    pyhf's hypotest on the model ``pyhf cls`` builds (code4/code4p), with Minuit at tolerance
    1e-8, strategy 2, within 1e-6 relative (pyhf's default SLSQP is ~7e-6 off; at tolerance
    1e-12 its CLs_exp[-2 sigma] was 1.3e-6 off with scipy 1.17, where Minuit agrees to 2e-7)."""
    path, patch = workspace
    reference = CliRunner().invoke(pyhf_cls, [str(path), "-p", str(patch), "--test-poi", "1.5"])
    assert reference.exit_code == 0, reference.output
    status, out, _ = run_fitax(capsys, ["hep", "cls", str(path), "-p", str(patch), "--test-poi", "1.5"])
    assert status == 0
    result = json.loads(out)
    assert set(json.loads(reference.output)) <= set(result)
    assert result["converged"] is True
    assert set(result["twice_nll"]) == {"free_data", "fixed_data", "asimov_generation", "free_asimov", "fixed_asimov"}
    pyhf.set_backend("numpy", pyhf.optimize.minuit_optimizer(tolerance=1e-8, strategy=2))
    try:
        pws = pyhf.Workspace(json.loads(path.read_text()))
        pmodel = pws.model(patches=[json.loads(patch.read_text())], modifier_settings=fitax_cli.PYHF_CLI_MODIFIER_SETTINGS)
        obs, exp = pyhf.infer.hypotest(1.5, pws.data(pmodel), pmodel, return_expected_set=True)
    finally:
        pyhf.set_backend("numpy", pyhf.optimize.scipy_optimizer())
    assert result["CLs_obs"] == pytest.approx(float(obs), rel=1e-6)
    np.testing.assert_allclose(result["CLs_exp"], np.asarray(exp, float), rtol=1e-6)


def test_cls_toybased_reports_toy_failures(workspace, capsys):
    path, _ = workspace
    status, out, _ = run_fitax(capsys, ["hep", "cls", str(path), "--calctype", "toybased", "--ntoys", "50"])
    result = json.loads(out)
    assert status == 0 and result["converged"] is True
    assert result["n_toys_failed"] == 0
    assert 0 < result["CLs_obs"] <= 1.5


def test_fit_matches_pyhf_fit(workspace, capsys, tmp_path):
    """``fitax hep fit`` best-fit values against ``pyhf fit`` (scipy, its default tolerance:
    values within 1e-4), written with ``--output-file``."""
    path, patch = workspace
    reference = CliRunner().invoke(pyhf_fit, [str(path), "-p", str(patch)])
    assert reference.exit_code == 0, reference.output
    expected = json.loads(reference.output)
    out_file = tmp_path / "fit.json"
    status, _, _ = run_fitax(capsys, ["hep", "fit", str(path), "-p", str(patch), "--output-file", str(out_file)])
    result = json.loads(out_file.read_text())
    assert status == 0 and result["converged"] is True
    for name, values in expected["mle_parameters"].items():
        np.testing.assert_allclose(result["mle_parameters"][name], values, atol=1e-4)


def test_limit_writes_limits_and_a_brazil_plot(workspace, capsys, tmp_path):
    path, _ = workspace
    plot = tmp_path / "brazil.png"
    status, out, _ = run_fitax(capsys, ["hep", "limit", str(path), "--plot", str(plot)])
    result = json.loads(out)
    assert status == 0 and result["converged"] is True
    assert len(result["exp_limits"]) == 5 and np.all(np.diff(result["exp_limits"]) > 0)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_fit_that_does_not_converge_is_flagged(tmp_path, capsys):
    """A flat direction (a normfactor on an empty sample): exit status 1, ``"converged":
    false`` in the JSON and a warning on stderr."""
    dead = {"name": "dead", "data": [0.0, 0.0], "modifiers": [{"name": "k_dead", "type": "normfactor", "data": None}]}
    path = tmp_path / "flat.json"
    path.write_text(json.dumps(simple_spec(extra_samples=[dead])))
    status, out, err = run_fitax(capsys, ["hep", "cls", str(path)])
    assert status == 1
    assert json.loads(out)["converged"] is False
    assert "did not converge" in err


def small_signal_spec() -> dict:
    """A signal of 1e-4..3e-4 events per unit of mu over a fixed ttbar background and four
    small samples with shapesys (yields 0.004-0.02): mu's natural scale is thousands, and
    -2 ln L's slope in mu at pyhf's start mu = 1 is 4e-4."""
    rng = np.random.default_rng(0)
    signal = 2e-4 * np.linspace(0.5, 1.5, 6)
    ttbar = np.linspace(20.0, 2.0, 6)
    samples = [{"name": "signal", "data": list(signal), "modifiers": [{"name": "mu", "type": "normfactor", "data": None}]}]
    total = ttbar.copy()
    for i in range(4):
        yields = rng.uniform(0.004, 0.02, 6)
        samples.append({"name": f"minor{i}", "data": list(yields),
                        "modifiers": [{"name": f"shapesys_{i}", "type": "shapesys", "data": list(0.8 * yields)}]})
        total += yields
    samples.append({"name": "ttbar", "data": list(ttbar), "modifiers": [
        {"name": "ttbar_norm", "type": "normfactor", "data": None}, {"name": "lumi", "type": "lumi", "data": None}]})
    parameters = [{"name": "lumi", "auxdata": [1.0], "sigmas": [0.02], "bounds": [[0.9, 1.1]], "inits": [1.0], "fixed": True},
                  {"name": "ttbar_norm", "fixed": True}, {"name": "mu", "bounds": [[0.0, 5e4]]}]
    return {"channels": [{"name": "SR", "samples": samples}],
            "observations": [{"name": "SR", "data": list(np.round(total + 3000.0 * signal))}],
            "measurements": [{"name": "meas", "config": {"poi": "mu", "parameters": parameters}}], "version": "1.0.0"}


def test_where_pyhfs_default_fit_returns_its_start_fitax_finds_the_minimum(tmp_path, capsys):
    """pyhf's default fit (numpy + SLSQP) stops at its start here and reports success: SLSQP's
    first quasi-Newton model is the identity, so a step of the gradient's size (1e-3) changes
    -2 ln L by less than its tolerance. ``pyhf cls --test-poi 6000`` then prints CLs_obs 0.475
    where the true value is 0.332 (pyhf with Minuit, tolerance 1e-8, strategy 2).
    ``fitax hep cls`` gives the true value within 1e-6, its free fit is 0.44 lower in
    -2 ln L than pyhf's, and it reports every fit converged."""
    path = tmp_path / "small_signal.json"
    spec = small_signal_spec()
    path.write_text(json.dumps(spec))
    pyhf.set_backend("numpy", pyhf.optimize.scipy_optimizer())
    pws = pyhf.Workspace(spec)
    pmodel = pws.model(modifier_settings=fitax_cli.PYHF_CLI_MODIFIER_SETTINGS)
    pdata = pws.data(pmodel)
    start = np.asarray(pmodel.config.suggested_init())
    slsqp_best, slsqp_twice_nll = pyhf.infer.mle.fit(pdata, pmodel, return_fitted_val=True)
    assert np.max(np.abs(slsqp_best - start)) < 0.01
    default = CliRunner().invoke(pyhf_cls, [str(path), "--test-poi", "6000"])
    assert default.exit_code == 0, default.output

    status, out, _ = run_fitax(capsys, ["hep", "cls", str(path), "--test-poi", "6000"])
    result = json.loads(out)
    assert status == 0 and result["converged"] is True and result["warnings"] == []
    assert result["twice_nll"]["free_data"] < float(slsqp_twice_nll) - 0.4

    pyhf.set_backend("numpy", pyhf.optimize.minuit_optimizer(tolerance=1e-8, strategy=2))
    try:
        minuit_best, minuit_twice_nll = pyhf.infer.mle.fit(pdata, pmodel, return_fitted_val=True)
        obs, exp = pyhf.infer.hypotest(6000.0, pdata, pmodel, return_expected_set=True)
    finally:
        pyhf.set_backend("numpy", pyhf.optimize.scipy_optimizer())
    assert minuit_best[pmodel.config.poi_index] > 2000.0
    assert result["twice_nll"]["free_data"] == pytest.approx(float(minuit_twice_nll), abs=1e-6)
    assert result["CLs_obs"] == pytest.approx(float(obs), rel=1e-6)
    np.testing.assert_allclose(result["CLs_exp"], np.asarray(exp, float), rtol=1e-6)
    assert json.loads(default.output)["CLs_obs"] > float(obs) + 0.1


def test_bad_inputs_name_the_problem(workspace, tmp_path, capsys):
    path, _ = workspace
    status, _, err = run_fitax(capsys, ["hep", "cls", str(tmp_path / "missing.json")])
    assert status == 2 and "missing.json" in err
    bad_patch = tmp_path / "bad_patch.json"
    bad_patch.write_text(json.dumps([{"op": "remove", "path": "/channels/7"}]))
    status, _, err = run_fitax(capsys, ["hep", "cls", str(path), "-p", str(bad_patch)])
    assert status == 2 and err
    status, _, err = run_fitax(capsys, ["hep", "fit", str(path), "--modifier-settings", "{not json"])
    assert status == 2 and "--modifier-settings" in err


def _patchset(spec, signals):
    """A pyhf patchset for ``spec``: one point per (m1, m2) -> signal yields entry."""
    from fitax.hep import Workspace

    return {
        "metadata": {"name": "grid", "description": "test grid", "digests": {"sha256": Workspace(spec).digest()}, "labels": ["m1", "m2"],
                     "references": {"hepdata": "ins0000000"}},
        "patches": [
            {"metadata": {"name": f"p_{m1}_{m2}", "values": [m1, m2]},
             "patch": [{"op": "replace", "path": "/channels/0/samples/0/data", "value": list(signal)}]}
            for (m1, m2), signal in signals.items()
        ],
        "version": "1.0.0",
    }


def test_patchset_gives_each_points_pyhf_hypotest_and_an_exclusion_plot(workspace, capsys, tmp_path):
    """Every point of the patchset against pyhf's hypotest on the same patched model (SLSQP
    at tolerance 1e-12): CLs_obs within 1e-6 relative, the band within 1e-5 (its far tail,
    ~1e-7 for the most excluded point, moves by d(ln CLs) ~ sqrt(q_A) d(sqrt(q_A)): a 1e-6
    difference in a fitted minimum gives 2.5e-6 there); the exclusion plot is written."""
    path, _ = workspace
    spec = json.loads(path.read_text())
    signals = {(100, 10): (30.0, 28.0), (200, 10): (12.0, 11.0), (100, 50): (20.0, 25.0), (200, 50): (4.0, 6.0)}
    patchset_path = tmp_path / "patchset.json"
    patchset_path.write_text(json.dumps(_patchset(spec, signals)))
    plot = tmp_path / "exclusion.png"
    status, out, err = run_fitax(capsys, ["hep", "patchset", str(path), str(patchset_path), "--plot", str(plot)])
    assert status == 0, err
    result = json.loads(out)
    assert result["labels"] == ["m1", "m2"] and result["converged"] is True
    assert [p["name"] for p in result["points"]] == [f"p_{m1}_{m2}" for m1, m2 in signals]
    assert plot.stat().st_size > 10_000
    pyhf.set_backend("numpy", pyhf.optimize.scipy_optimizer(tolerance=1e-12))
    try:
        for point in result["points"]:
            patch = next(p["patch"] for p in _patchset(spec, signals)["patches"] if p["metadata"]["name"] == point["name"])
            pws = pyhf.Workspace(spec)
            pmodel = pws.model(patches=[patch], modifier_settings=fitax_cli.PYHF_CLI_MODIFIER_SETTINGS)
            obs, exp = pyhf.infer.hypotest(1.0, pws.data(pmodel), pmodel, return_expected_set=True)
            assert point["CLs_obs"] == pytest.approx(float(obs), rel=1e-6)
            np.testing.assert_allclose(point["CLs_exp"], np.asarray(exp, float), rtol=1e-5)
    finally:
        pyhf.set_backend("numpy", pyhf.optimize.scipy_optimizer())


def test_patchset_for_another_workspace_is_refused(workspace, capsys, tmp_path):
    path, _ = workspace
    spec = json.loads(path.read_text())
    other = json.loads(json.dumps(spec))
    other["observations"][0]["data"] = [1.0, 2.0]
    patchset_path = tmp_path / "patchset.json"
    patchset_path.write_text(json.dumps(_patchset(other, {(1, 2): (3.0, 4.0)})))
    status, _, err = run_fitax(capsys, ["hep", "patchset", str(path), str(patchset_path)])
    assert status == 2 and "the patchset is for another workspace" in err


def test_ranking_prints_the_impacts_and_writes_the_plot(workspace, capsys, tmp_path):
    """The CLI prints what :func:`fitax.hep.infer.ranking` computes (tested against pyhf's
    conditional fits in test_hep_infer), largest post-fit impact first."""
    from fitax.hep import Workspace, infer

    path, patch = workspace
    plot = tmp_path / "ranking.png"
    status, out, err = run_fitax(capsys, ["hep", "ranking", str(path), "-p", str(patch), "--plot", str(plot)])
    assert status == 0, err
    result = json.loads(out)
    assert result["converged"] is True and plot.stat().st_size > 10_000
    ws = Workspace.read(path).patch(json.loads(patch.read_text()))
    model = ws.model(modifier_settings=fitax_cli.PYHF_CLI_MODIFIER_SETTINGS)
    expected = infer.ranking(ws.data(model), model).to_dict()
    assert [r["parameter"] for r in result["ranking"]] == [r["parameter"] for r in expected]
    for got, want in zip(result["ranking"], expected):
        assert got["postfit_up"] == pytest.approx(want["postfit_up"], rel=1e-9, abs=1e-12)
    impacts = [max(abs(r["postfit_up"]), abs(r["postfit_down"])) for r in result["ranking"]]
    assert impacts == sorted(impacts, reverse=True)


@pytest.mark.slow
def test_demo_writes_every_result(tmp_path, capsys):
    """``fitax hep demo`` on the shared sbottom workspace: every file, and the CLs of pyhf's
    regression test (1e-5, see test_hep_infer)."""
    from conftest import shared_data

    shared_data("hep", "sbottom_RegionA_BkgOnly.json")
    status, out, _ = run_fitax(capsys, ["hep", "demo", "--out", str(tmp_path)])
    assert status == 0
    summary = json.loads(out)
    assert summary["converged"] is True and summary["points"] == 9
    assert summary["CLs_obs"] == pytest.approx(0.24443627759085326, rel=1e-5)
    for name in ("fit.json", "cls.json", "limit.json", "brazil.png", "ranking.json", "ranking.png", "patchset_cls.json", "exclusion.png"):
        assert (tmp_path / name).stat().st_size > 0, name
