"""Derivatives of fitted minima and of asymptotic CLs (fitax.implicit, fitax.hep.gradients)
against analytic results and central finite differences of complete re-fits."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fitax.hep import Workspace
from fitax.hep.calculators import hypotest
from fitax.hep.gradients import differentiable_cls
from fitax.implicit import implicit_minimum
from test_hep_infer import simple_spec

# Finite-difference steps: 1e-3 on yields ~10-60 (truncation ~1e-9 relative, fit noise ~1e-8);
# the normsys log-factors are ~0.08, where 1e-3 leaves a 3e-5 truncation error: 1e-4 there.
STEPS = {"normsys_log_hi": 1e-4}
STEP = 1e-3


def test_implicit_minimum_of_least_squares_is_the_analytic_derivative():
    """``v* = (X^T X)^-1 X^T y`` so ``dv*/dy = (X^T X)^-1 X^T``; with the last entry held at
    its value, the others are the least-squares fit of ``y - X[:, -1] v_last``."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 3)), rng.normal(size=12)
    objective = lambda v, y: jnp.sum((jnp.asarray(x) @ v - y) ** 2)  # noqa: E731
    solution = np.linalg.lstsq(x, y, rcond=None)[0]
    jacobian = jax.jacobian(lambda y: implicit_minimum(objective, solution, y))(jnp.asarray(y))
    np.testing.assert_allclose(jacobian, np.linalg.solve(x.T @ x, x.T), rtol=1e-12, atol=1e-14)
    held = solution.copy()
    held[:2] = np.linalg.lstsq(x[:, :2], y - x[:, 2] * held[2], rcond=None)[0]
    jacobian = jax.jacobian(lambda y: implicit_minimum(objective, held, y, np.array([True, True, False])))(jnp.asarray(y))
    np.testing.assert_allclose(jacobian[:2], np.linalg.solve(x[:, :2].T @ x[:, :2], x[:, :2].T), rtol=1e-12, atol=1e-14)
    assert np.all(jacobian[2] == 0)


def test_implicit_minimum_refuses_a_point_that_is_not_a_minimum():
    with pytest.raises(ValueError, match="not positive definite"):
        implicit_minimum(lambda v, a: jnp.sum(v**2 * a), np.zeros(2), jnp.array([1.0, -1.0]))


def _workspace(obs):
    """Signal + background with shapesys, a normsys and a histosys on the background."""
    spec = simple_spec(obs=obs)
    background = spec["channels"][0]["samples"][1]
    background["modifiers"].append({"name": "norm", "type": "normsys", "data": {"hi": 1.08, "lo": 0.95}})
    background["modifiers"].append({"name": "shape", "type": "histosys", "data": {"hi_data": [53.0, 54.0], "lo_data": [48.0, 51.0]}})
    workspace = Workspace(spec)
    model = workspace.model()
    return model, jnp.asarray(workspace.data(model))


def _finite_difference(function, model, data, field: str | None):
    """Central differences of ``function(model, data)`` in every entry of ``model.<field>``
    (or of ``data`` when ``field`` is None)."""
    base = data if field is None else getattr(model, field)
    step = STEPS.get(field, STEP)
    out = np.zeros(base.shape)
    for index in np.ndindex(base.shape):
        values = []
        for sign in (1, -1):
            moved = base.at[index].add(sign * step)
            if field is None:
                values.append(function(model, moved))
            else:
                values.append(function(eqx.tree_at(lambda m: getattr(m, field), model, moved), data))
        out[index] = (values[0] - values[1]) / (2 * step)
    return out


@pytest.mark.parametrize(("obs", "test_stat"), [((60.0, 64.0), "qtilde"), ((45.0, 44.0), "qtilde"), ((75.0, 70.0), "q0")])
def test_cls_gradients_match_finite_differences_of_refits(obs, test_stat):
    """d(CLs_obs) and d(median expected CLs) with respect to the nominal yields, the histosys
    templates, the normsys factors and the observed and auxiliary data, against central
    differences of whole hypotests (every fit redone), within 1e-5 of the largest derivative.
    The second case fits mu_hat at its bound 0 (held there); the third is the discovery p0."""
    model, data = _workspace(obs)
    result = hypotest(1.0, data, model, test_stat)
    assert result.converged
    if obs == (45.0, 44.0):
        assert result.fits["free_data"].bestfit[model.poi_index] == 0.0
    value, band = differentiable_cls(result, data, model)
    assert float(value) == pytest.approx(result.cls_obs, rel=1e-12)
    np.testing.assert_allclose(band, result.cls_exp, rtol=1e-12)

    for pick, reference in ((lambda out: out[0], lambda r: r.cls_obs), (lambda out: out[1][2], lambda r: r.cls_exp[2])):
        by_model = eqx.filter_grad(lambda m: pick(differentiable_cls(result, data, m)))(model)
        by_data = jax.grad(lambda d: pick(differentiable_cls(result, d, model)))(data)
        refit = lambda m, d: reference(hypotest(1.0, d, m, test_stat))  # noqa: E731
        for field in ("nominal", "histosys_hi", "normsys_log_hi", None):
            numeric = _finite_difference(refit, model, data, field)
            exact = np.asarray(by_data if field is None else getattr(by_model, field))
            scale = max(np.abs(numeric).max(), 1e-12)
            np.testing.assert_allclose(exact, numeric, atol=1e-5 * scale, rtol=0, err_msg=f"d/d{field or 'data'}")


def test_cls_gradient_refuses_toys_and_failed_fits():
    model, data = _workspace((60.0, 64.0))
    toys = hypotest(1.0, data, model, calctype="toybased", ntoys=50)
    with pytest.raises(ValueError, match="asymptotic"):
        differentiable_cls(toys, data, model)


def test_bestfit_gradient_matches_finite_differences_of_refits():
    """d(mu_hat) and d(background shapesys gammas) of the free fit with respect to the
    nominal yields and the data, against central differences of refits, within 1e-4 of the
    largest: the refitted values themselves are reproducible to ~1e-10, which a 1e-3 step
    turns into ~1e-7 of noise on derivatives of ~4e-3 (CLs, smoother in the fits'
    residuals, agrees to 1e-5 above)."""
    from fitax.hep.gradients import differentiable_bestfit
    from fitax.hep.teststat import mle_fit

    model, data = _workspace((60.0, 64.0))
    fit = mle_fit(data, model)
    assert fit.converged and fit.bestfit[model.poi_index] > 0.1
    np.testing.assert_array_equal(differentiable_bestfit(fit, data, model), fit.bestfit)
    jac_model = eqx.filter_jacfwd(lambda m: differentiable_bestfit(fit, data, m))(model)
    jac_data = jax.jacfwd(lambda d: differentiable_bestfit(fit, d, model))(data)
    for k in range(model.n_parameters):
        refit = lambda m, d: mle_fit(d, m).bestfit[k]  # noqa: E731
        for field, exact in (("nominal", jac_model.nominal[k]), (None, jac_data[k])):
            numeric = _finite_difference(refit, model, data, field)
            np.testing.assert_allclose(exact, numeric, atol=1e-4 * max(np.abs(numeric).max(), 1e-12), rtol=0)
