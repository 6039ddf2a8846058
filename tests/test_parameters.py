"""Parameter pytrees: names, ties, bounds transforms, and errors on mismatched structures."""

import astropy.units as u
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fitax
from fitax.parameters import ParameterSpace


class Spectrum(eqx.Module):
    amplitude: fitax.Parameter
    index: fitax.Parameter


def _model():
    return {
        "crab": Spectrum(fitax.Parameter(3e-11, min=0, unit="cm-2 s-1 TeV-1"), fitax.Parameter(2.5, min=1, max=4)),
        "bkg": [fitax.Parameter(1.0, frozen=True), fitax.Parameter(0.0, prior=fitax.GaussianPrior(0.0, 0.1))],
    }


def test_dotted_names_and_free_parameters():
    model = _model()
    assert fitax.parameter_names(model) == ["bkg.0", "bkg.1", "crab.amplitude", "crab.index"]
    assert fitax.free_parameter_names(model) == ["bkg.1", "crab.amplitude", "crab.index"]


def test_quantity_values_and_repr():
    p = fitax.Parameter(2e-11 * u.Unit("cm-2 s-1 TeV-1"), min=0)
    assert p.unit == "1 / (TeV s cm2)" and float(p.value) == 2e-11
    assert repr(fitax.Parameter(2.0, min=1, frozen=True)) == "Parameter(2, min=1.0, frozen=True)"


def test_internal_transform_round_trip_and_bounds():
    model = _model()
    space = ParameterSpace.from_params(model)
    v0 = space.values(model)
    state = space.transform_state(v0, jnp.array([4.0, 1e22, 9.0]))
    np.testing.assert_allclose(space.to_physical(jnp.zeros(3), state), v0, rtol=1e-12)
    u = jnp.array([0.3, -2.0, 5.0])
    np.testing.assert_allclose(space.to_internal(space.to_physical(u, state), state), u, rtol=1e-9)
    # one internal unit is one "sigma" (1/sqrt(curvature)) at the start
    slopes = jax.jacfwd(lambda x: space.to_physical(x, state))(jnp.zeros(3)).diagonal()
    np.testing.assert_allclose(slopes, [0.5, 1e-11, 1 / 3], rtol=1e-9)
    # any internal point maps inside the bounds
    far = space.to_physical(jnp.array([0.0, -1e3, 1e3]), state)
    assert float(far[1]) >= 0 and 1 <= float(far[2]) <= 4


def test_tie_shares_value_and_removes_free_parameter():
    model = fitax.tie(_model(), "crab.index", to="bkg.1")
    assert "crab.index" not in fitax.free_parameter_names(model)
    space = ParameterSpace.from_params(model)
    updated = space.with_values(model, jnp.array([0.7, 5e-11]))
    assert float(updated["crab"].index.value) == pytest.approx(0.7)


def test_tie_errors_name_the_parameters():
    with pytest.raises(KeyError, match="no parameter named 'crab.idx'"):
        fitax.tie(_model(), "crab.idx", to="bkg.1")
    with pytest.raises(ValueError, match="units differ"):
        fitax.tie(_model(), "crab.amplitude", to="bkg.1")


def test_bad_parameter_definitions():
    with pytest.raises(ValueError, match="min < max"):
        fitax.Parameter(1.0, min=2.0, max=1.0)
    with pytest.raises(ValueError, match="sigma must be > 0"):
        fitax.GaussianPrior(0.0, 0.0)


def test_mismatched_structure_names_the_parameter():
    space = ParameterSpace.from_params(_model())
    other = _model()
    other["crab"] = Spectrum(fitax.Parameter(3e-11, min=0, unit="cm-2 s-1 TeV-1"), fitax.Parameter(2.5, min=0, max=4))
    with pytest.raises(ValueError, match=r"'crab.index' differs.*min=0.0 \(expected 1.0\)"):
        space.values(other)
    del other["bkg"]
    with pytest.raises(ValueError, match=r"missing \['bkg.0', 'bkg.1'\]"):
        space.values(other)
