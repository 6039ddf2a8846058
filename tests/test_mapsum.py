"""fitax.mapsum.map_sum: per-item derivatives equal those of the plain sum."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fitax.mapsum import map_sum


def _term(shared, item):
    """A nonlinear per-item term of shared parameters and per-item data and parameters."""
    amplitude, slope = shared["amplitude"], shared["slope"]
    x, y, offset = item["x"], item["y"], item["offset"]
    model = amplitude * jnp.exp(-slope * x) + offset
    return jnp.sum((y - model) ** 2 * (1 + model**2))


def _problem():
    rng = np.random.default_rng(5)
    x = jnp.asarray(np.tile(np.linspace(0, 2, 30), (4, 1)))
    items = {"x": x, "y": jnp.asarray(2 * np.exp(-0.6 * np.asarray(x)) + rng.normal(0, 0.1, x.shape)),
             "offset": jnp.asarray(rng.normal(0, 0.1, 4))}
    shared = {"amplitude": jnp.asarray(1.7), "slope": jnp.asarray(0.5)}
    return shared, items


def _flat(shared, items):
    return jnp.concatenate([jnp.stack([shared["amplitude"], shared["slope"]]), items["offset"]])


def _objective(summing):
    shared, items = _problem()

    def f(v):
        return summing({"amplitude": v[0], "slope": v[1]}, {**items, "offset": v[2:]})

    return f, _flat(shared, items)


def _plain(shared, items):
    return sum(_term(shared, jax.tree_util.tree_map(lambda a: a[i], items)) for i in range(4))


def test_value_gradient_and_hessian_equal_the_plain_sum():
    mapped, v = _objective(lambda s, i: map_sum(_term, s, i))
    plain, _ = _objective(_plain)
    assert float(mapped(v)) == pytest.approx(float(plain(v)), rel=1e-14)
    np.testing.assert_allclose(jax.grad(mapped)(v), jax.grad(plain)(v), rtol=1e-12)
    np.testing.assert_allclose(jax.jit(jax.hessian(mapped))(v), jax.hessian(plain)(v), rtol=1e-11, atol=1e-11)
    tangent = jnp.arange(1.0, 7.0)
    hvp = jax.jvp(jax.grad(mapped), (v,), (tangent,))[1]
    np.testing.assert_allclose(hvp, jax.hessian(plain)(v) @ tangent, rtol=1e-11)


def test_derivatives_with_respect_to_a_subset_hold_the_rest_constant():
    """Differentiating only the slope (the other inputs closed over, symbolically zero
    tangents) gives the plain sum's derivatives with respect to it."""
    shared, items = _problem()

    def along_slope(summing):
        return lambda slope: summing({"amplitude": shared["amplitude"], "slope": slope}, items)

    mapped, plain = along_slope(lambda s, i: map_sum(_term, s, i)), along_slope(_plain)
    assert float(jax.grad(mapped)(0.8)) == pytest.approx(float(jax.grad(plain)(0.8)), rel=1e-12)
    assert float(jax.grad(jax.grad(mapped))(0.8)) == pytest.approx(float(jax.grad(jax.grad(plain))(0.8)), rel=1e-12)


def _item_sum_problem():
    """Shared amplitude and slope, one offset per item (as parameters), plus a Gaussian prior."""
    import fitax

    shared, items = _problem()
    params = {"amplitude": fitax.Parameter(1.7), "slope": fitax.Parameter(0.5, prior=fitax.GaussianPrior(0.6, 0.2)),
              "offset": [fitax.Parameter(float(o)) for o in items["offset"]]}
    data = {"x": items["x"], "y": items["y"], "index": jnp.arange(4)}

    def term(p, item):
        offsets = jnp.stack([fitax.value_of(o) for o in p["offset"]])
        values = {"amplitude": fitax.value_of(p["amplitude"]), "slope": fitax.value_of(p["slope"])}
        return _term(values, {"x": item["x"], "y": item["y"], "offset": offsets[item["index"]]})

    def plain(p, d):
        return sum(term(p, jax.tree_util.tree_map(lambda a: a[i], d)) for i in range(4))

    return params, data, term, plain


def test_item_sum_hessians_item_by_item_equal_the_plain_sum():
    """With an ItemSum, fitax.fit's objective computes value, gradient and Hessian item by
    item (and the prior as its own term); they equal those of the plain sum, with and
    without a Hessian plan, and so does the whole fit."""
    import fitax
    from fitax import _minimize
    from fitax.fit import physical_objective
    from fitax.mapsum import ItemSum

    params, data, term, plain = _item_sum_problem()
    summed = ItemSum(lambda d: [(term, d)])
    space = fitax.ParameterSpace.from_params(params)
    v = space.values(params) * 1.1
    by_item = physical_objective(summed, space, params, 1.0)
    assert isinstance(by_item, ItemSum)
    reference = jax.hessian(physical_objective(plain, space, params, 1.0))(v, data)
    is_offset = np.array([name.startswith("offset") for name in space.names])
    pattern = ~(is_offset[:, None] & is_offset[None, :]) | np.eye(6, dtype=bool)  # offsets of two items never meet
    for plan in (None, _minimize.hessian_plan(6, pattern, np.array([name == "slope" for name in space.names]))):
        value, grad, hessian = jax.jit(lambda v, d, plan=plan: _minimize.value_grad_hessian(by_item, v, d, plan))(v, data)
        assert float(value) == pytest.approx(float(physical_objective(plain, space, params, 1.0)(v, data)), rel=1e-13)
        np.testing.assert_allclose(hessian, reference, rtol=1e-10, atol=1e-10)
    fitted, expected = fitax.fit(summed, params, args=data), fitax.fit(plain, params, args=data)
    assert fitted.converged and fitted.stat == pytest.approx(expected.stat, rel=1e-12)
    for name in fitted.values:
        assert fitted.values[name] == pytest.approx(expected.values[name], rel=1e-8, abs=1e-10)
        assert fitted.errors[name] == pytest.approx(expected.errors[name], rel=1e-8)
