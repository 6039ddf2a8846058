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


def test_public_layout_names():
    """What other modules need from a model's layout, without private names."""
    model = fitax.tie(_model(), "crab.index", to="bkg.1")
    space = ParameterSpace.from_params(model)
    assert space.all_names == ("bkg.0", "bkg.1", "crab.amplitude", "crab.index")
    assert space.ties == (("crab.index", "bkg.1"),)
    assert fitax.parameters.is_parameter(model["bkg"][0]) and not fitax.parameters.is_parameter(1.0)
    assert fitax.parameters.get_parameter(model, "crab.index").tied_to == "bkg.1"
    with pytest.raises(KeyError, match="no parameter named 'crab.idx'; the model has: bkg.0, bkg.1"):
        fitax.parameters.get_parameter(model, "crab.idx")
    # chains of ties resolve to their free end
    chained = fitax.tie(fitax.tie(_model(), "crab.index", to="bkg.1"), "bkg.1", to="bkg.0")
    chained = fitax.thaw(chained, "bkg.0")
    assert dict(ParameterSpace.from_params(chained).ties) == {"crab.index": "bkg.0", "bkg.1": "bkg.0"}


# Values of MJD times and of fluxes in electrons, with each kind of bound around them.
LARGE = {
    "none": {},
    "min": {"min": 0.0},
    "max": {"max": 1e7},
    "both": {"min": 5e4, "max": 1e7},
}


@pytest.mark.parametrize("method", ["newton", "bfgs"])
@pytest.mark.parametrize("bound", sorted(LARGE))
def test_fits_at_large_values_recover_the_analytic_answer(bound, method):
    """chi2 of N Gaussian measurements of a time (MJD ~ 6e4, sigma 0.02 d) and of a flux
    (~1e6 electrons, sigma 1e3): the minimum is each mean, the error sigma / sqrt(N), and
    the minimum chi2 the scatter about the means (closed forms). Starts ~20 sigma away."""
    rng = np.random.default_rng(7)
    n, sigma_t, sigma_f = 50, 0.02, 1e3
    times = 60123.4 + sigma_t * rng.normal(size=n)
    fluxes = 8.5e5 + sigma_f * rng.normal(size=n)
    params = {
        "t0": fitax.Parameter(times.mean() + 0.06, **LARGE[bound]),
        "flux": fitax.Parameter(fluxes.mean() + 3e3, **LARGE[bound]),
    }

    def chi2(p, data):
        t, f = data
        return jnp.sum(((t - p["t0"].value) / sigma_t) ** 2) + jnp.sum(((f - p["flux"].value) / sigma_f) ** 2)

    result = fitax.fit(chi2, params, method, args=(jnp.asarray(times), jnp.asarray(fluxes)))
    assert result.converged, result.message
    expected_errors = {"t0": sigma_t / np.sqrt(n), "flux": sigma_f / np.sqrt(n)}
    for name, data in (("t0", times), ("flux", fluxes)):
        # EDM < 1e-6 leaves the value within sqrt(2e-6) ~ 1.4e-3 of an error of the minimum
        assert result.values[name] == pytest.approx(data.mean(), abs=2e-3 * expected_errors[name])
        # a quadratic objective: the exact Hessian gives the error to rounding
        assert result.errors[name] == pytest.approx(expected_errors[name], rel=1e-6)
    chi2_min = np.sum((times - times.mean()) ** 2) / sigma_t**2 + np.sum((fluxes - fluxes.mean()) ** 2) / sigma_f**2
    assert result.stat == pytest.approx(chi2_min, abs=1e-5)
    # reverse-mode gradient of the objective in internal coordinates, at the start and at
    # the minimum: finite, and equal to the chain rule dchi2/dv * dv/du (forward mode)
    space = ParameterSpace.from_params(params)
    state = space.transform_state(space.values(params))
    data = (jnp.asarray(times), jnp.asarray(fluxes))
    for v in (space.values(params), space.values(result.params)):
        u = space.to_internal(v, state)

        def internal(x):
            return chi2(space.with_values(params, space.to_physical(x, state)), data)

        grad_u = jax.grad(internal)(u)
        grad_v = jax.grad(lambda x: chi2(space.with_values(params, x), data))(space.to_physical(u, state))
        slopes = jax.jvp(lambda x: space.to_physical(x, state), (u,), (jnp.ones_like(u),))[1]
        assert np.all(np.isfinite(grad_u)), grad_u
        np.testing.assert_allclose(grad_u, grad_v * slopes, rtol=1e-12, atol=1e-12 * float(jnp.max(jnp.abs(grad_u))))
