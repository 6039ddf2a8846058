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
    pyhf's hypotest on the model ``pyhf cls`` builds (code4/code4p), with SLSQP at tolerance
    1e-12 (at its default, pyhf's own CLs_exp are ~7e-6 off), within 1e-6 relative."""
    path, patch = workspace
    reference = CliRunner().invoke(pyhf_cls, [str(path), "-p", str(patch), "--test-poi", "1.5"])
    assert reference.exit_code == 0, reference.output
    status, out, _ = run_fitax(capsys, ["hep", "cls", str(path), "-p", str(patch), "--test-poi", "1.5"])
    assert status == 0
    result = json.loads(out)
    assert set(json.loads(reference.output)) <= set(result)
    assert result["converged"] is True
    assert set(result["twice_nll"]) == {"free_data", "fixed_data", "asimov_generation", "free_asimov", "fixed_asimov"}
    pyhf.set_backend("numpy", pyhf.optimize.scipy_optimizer(tolerance=1e-12))
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
