"""Spectral models against Gammapy 2.1 (same names, parameters and units) and scipy quad."""

import jax
import numpy as np
import pytest
from scipy import integrate

from fitax.gamma import spectral

EDGES = np.geomspace(0.1, 100.0, 16)  # TeV, decade-wide bins and narrower

CASES = {
    "PowerLawSpectralModel": dict(index=2.3, amplitude=2e-11, reference=1.0),
    "PowerLaw2SpectralModel": dict(amplitude=3e-12, index=2.6, emin=0.2, emax=50.0),
    "LogParabolaSpectralModel": dict(amplitude=4e-12, reference=1.0, alpha=2.2, beta=0.15),
    "ExpCutoffPowerLawSpectralModel": dict(index=1.8, amplitude=5e-12, reference=1.0, lambda_=0.08, alpha=1.3),
    "BrokenPowerLawSpectralModel": dict(index1=1.7, index2=2.9, amplitude=6e-12, ebreak=1.7),
    "SmoothBrokenPowerLawSpectralModel": dict(index1=1.7, index2=2.9, amplitude=6e-12, ebreak=1.7, reference=1.0, beta=0.7),
    "ConstantSpectralModel": dict(const=3e-13),
}


def _ours(name):
    return getattr(spectral, name)(**CASES[name])


@pytest.mark.parametrize("name", list(CASES))
def test_matches_gammapy(name):
    models = pytest.importorskip("gammapy.modeling.models", reason="Gammapy (test extra) not installed")
    import astropy.units as u

    theirs = getattr(models, name)()
    for key, value in CASES[name].items():
        getattr(theirs, key).value = value  # Gammapy's default units are ours (TeV, cm-2 s-1 TeV-1)
    energy = np.geomspace(0.1, 100, 37)
    np.testing.assert_allclose(_ours(name)(energy), theirs(energy * u.TeV).to_value("cm-2 s-1 TeV-1"), rtol=1e-10)
    reference = theirs.integral(EDGES[:-1] * u.TeV, EDGES[1:] * u.TeV).to_value("cm-2 s-1")
    # Gammapy integrates models without a closed form by a log-log trapezoid (100 points per
    # decade, 20 on these bins): off the exact integral (scipy quad, test below) by up to
    # 7.5e-4 for the cut-off power law and 1e-4 across a sharp break
    analytic = hasattr(theirs, "evaluate_integral")
    np.testing.assert_allclose(_ours(name).integral(EDGES[:-1], EDGES[1:]), reference, rtol=1e-9 if analytic else 1e-3)


@pytest.mark.parametrize("name", list(CASES))
def test_integral_matches_quad_and_is_differentiable(name):
    model = _ours(name)
    ours = np.asarray(model.integral(EDGES[:-1], EDGES[1:]))
    for low, high, value in zip(EDGES[:-1], EDGES[1:], ours):
        points = [CASES[name]["ebreak"]] if "ebreak" in CASES[name] and low < CASES[name]["ebreak"] < high else None
        exact, _ = integrate.quad(lambda e: float(model(e)), low, high, epsrel=1e-12, points=points)
        assert value == pytest.approx(exact, rel=1e-7)
    # every free parameter has a finite gradient of the total flux, equal to finite differences
    total = lambda m: m.integral(EDGES[:-1], EDGES[1:]).sum()  # noqa: E731
    grads = jax.grad(total)(model)
    for key in CASES[name]:
        parameter = getattr(model, key)
        if parameter.frozen:
            continue
        step = 1e-6 * max(abs(parameter.value), 1e-3)
        shifted = lambda d: total(type(model)(**{**CASES[name], key: CASES[name][key] + d}))  # noqa: E731
        numeric = (shifted(step) - shifted(-step)) / (2 * step)
        assert float(getattr(grads, key).value) == pytest.approx(float(numeric), rel=1e-5, abs=1e-30)
