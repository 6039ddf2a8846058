"""On-off spectra (OGIP, WStat) against Gammapy 2.1 on the joint-Crab spectra of five instruments."""

import glob

import numpy as np
import pytest
import yaml
from conftest import shared_data

import fitax.gamma as fg

gammapy = pytest.importorskip("gammapy", reason="Gammapy (test extra) not installed")

CRAB = {"components": [{"name": "crab", "type": "SkyModel", "spectral": {"type": "LogParabolaSpectralModel", "parameters": [
    {"name": "amplitude", "value": 3.8e-11, "unit": "TeV-1 s-1 cm-2"}, {"name": "reference", "value": 1.0, "unit": "TeV"},
    {"name": "alpha", "value": 2.4}, {"name": "beta", "value": 0.2}]}}]}


@pytest.fixture()
def precise_gammapy(monkeypatch):
    from gammapy.modeling.models import spectral

    defaults = list(spectral.integrate_spectrum.__defaults__)
    defaults[0] = 10_000
    monkeypatch.setattr(spectral.integrate_spectrum, "__defaults__", tuple(defaults))


def _pha_files():
    folder = shared_data("gamma", "joint-crab", "spectra")
    return sorted(glob.glob(str(folder / "*" / "pha_*.fits")))


def test_npred_signal_and_wstat_match_gammapy_for_every_instrument(tmp_path, precise_gammapy):
    from gammapy.datasets import SpectrumDatasetOnOff
    from gammapy.modeling.models import Models

    models_path = tmp_path / "models.yaml"
    models_path.write_text(yaml.safe_dump(CRAB))
    models = fg.read_models(models_path)
    files = _pha_files()
    assert len(files) == 10  # FACT, Fermi-LAT, H.E.S.S. x4, MAGIC x2, VERITAS x2
    for path in files:
        theirs = SpectrumDatasetOnOff.read(path)
        theirs.models = Models.read(models_path)
        ours = fg.SpectrumDatasetOnOff.read(path)
        np.testing.assert_array_equal(ours.mask, theirs.mask_safe.data.ravel())
        np.testing.assert_allclose(ours.alpha, theirs.alpha.data.ravel(), rtol=1e-12)
        reference = theirs.npred_signal().data.ravel()
        significant = reference > 1e-3
        npred = ours.npred_signal(models)
        assert np.max(np.abs(npred - reference)[significant] / reference[significant]) < 1e-6, path
        assert ours.stat_sum(models) == pytest.approx(theirs.stat_sum(), abs=1e-3), path


def test_joint_hess_fit_matches_gammapy_iminuit(tmp_path):
    from gammapy.datasets import Datasets, SpectrumDatasetOnOff
    from gammapy.modeling import Fit
    from gammapy.modeling.models import Models

    files = [f for f in _pha_files() if "/hess/" in f]
    models_path = tmp_path / "models.yaml"
    models_path.write_text(yaml.safe_dump(CRAB))
    datasets_path = tmp_path / "datasets.yaml"
    datasets_path.write_text(yaml.safe_dump({"datasets": [{"name": f"hess{i}", "type": "SpectrumDatasetOnOff", "filename": f}
                                                          for i, f in enumerate(files)]}))
    theirs = Datasets([SpectrumDatasetOnOff.read(f, name=f"hess{i}") for i, f in enumerate(files)])
    theirs.models = Models.read(models_path)
    fit_result = Fit().run(theirs)
    assert fit_result.success
    ours = fg.fit(fg.read_datasets(datasets_path), fg.read_models(models_path))
    assert ours.converged
    # measured -9e-6; Gammapy's default 100-per-decade trapezoid for the log-parabola and
    # Minuit's EDM < 2e-4 stopping allow up to ~1e-3
    assert ours.stat == pytest.approx(fit_result.total_stat, abs=1e-3)
    for parameter in theirs.models["crab"].spectral_model.parameters.free_parameters:
        name = f"crab.spectral.{parameter.name}"
        assert abs(ours.values[name] - parameter.value) < 0.05 * parameter.error, name
        assert ours.errors[name] == pytest.approx(parameter.error, rel=0.03), name


def test_bad_ogip_files_are_clear_errors(tmp_path):
    from astropy.io import fits

    source = _pha_files()[2]
    with fits.open(source) as hdul:
        hdul = fits.HDUList([h.copy() for h in hdul])
    del hdul["SPECTRUM"].header["ANCRFILE"]
    broken = tmp_path / "pha_broken.fits"
    hdul.writeto(broken)
    with pytest.raises(ValueError, match="pha_broken.fits.*ANCRFILE"):
        fg.SpectrumDatasetOnOff.read(broken)
    hdul["SPECTRUM"].header["ANCRFILE"] = "arf_missing.fits"
    hdul.writeto(tmp_path / "pha_missing.fits")
    with pytest.raises(FileNotFoundError, match="arf_missing.fits: no such file"):
        fg.SpectrumDatasetOnOff.read(tmp_path / "pha_missing.fits")
