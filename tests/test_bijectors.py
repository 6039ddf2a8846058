"""Bound transforms: each bijector against its closed form and autodiff, and the parameter
vector's transforms free of 0 * inf in reverse mode at large values and extreme coordinates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fitax
from fitax.bijectors import Blockwise, Identity, Interval, Lower, Upper
from fitax.parameters import ParameterSpace

BIJECTORS = {
    "identity": Identity(),
    "lower": Lower((2.0, -6e4)),
    "upper": Upper((2.0, 1e6)),
    "interval": Interval((-1.0, 5.9e4), (3.0, 6.1e4)),
}


@pytest.mark.parametrize("kind", sorted(BIJECTORS))
def test_bijector_round_trip_and_log_jacobian(kind):
    """inverse(forward(z)) = z, and log|dv/dz| equals the log of the autodiff derivative of
    forward (an independent reference for the closed forms)."""
    bijector = BIJECTORS[kind]
    z = jnp.array([-3.0, 1.7])
    np.testing.assert_allclose(bijector.inverse(bijector.forward(z)), z, rtol=1e-9)
    slopes = jax.vmap(jax.grad(lambda x, i: bijector.forward(jnp.full(2, x))[i]), (0, 0))(z, jnp.arange(2))
    # rtol: log of a derivative evaluated in float64 in two ways
    np.testing.assert_allclose(bijector.log_abs_det_jacobian(z), np.log(np.abs(slopes)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", sorted(BIJECTORS))
def test_bijector_derivatives_are_finite_at_extreme_coordinates(kind):
    """Far along the unconstrained line (z = +-700, where exp(z) is still a float64 and the
    bounded values saturate) values and reverse-mode derivatives of forward and of
    log|dv/dz| stay finite."""
    bijector = BIJECTORS[kind]
    for z in (jnp.array([-700.0, 700.0]), jnp.array([700.0, -700.0])):
        if kind in ("lower", "upper"):
            z = -jnp.abs(z)  # exp(+700) is finite, but the value it adds to a bound is astronomically far
        assert np.all(np.isfinite(bijector.forward(z)))
        assert np.all(np.isfinite(jax.grad(lambda x: jnp.sum(bijector.forward(x)))(z)))
        assert np.all(np.isfinite(jax.grad(lambda x: jnp.sum(bijector.log_abs_det_jacobian(x)))(z)))


def test_blockwise_puts_each_kind_on_its_own_entries():
    mins = (-np.inf, 0.0, -np.inf, 1.0, 2.0)
    maxs = (np.inf, np.inf, 4.0, 3.0, np.inf)
    blockwise = Blockwise.from_bounds(mins, maxs)
    assert [type(b).__name__ for _, b in blockwise.blocks] == ["Identity", "Lower", "Upper", "Interval"]
    z = jnp.array([0.5, 0.1, -0.2, 0.3, 1.0])
    sigmoid = 1 / (1 + np.exp(-0.3))
    expected = [0.5, np.exp(0.1), 4.0 - np.exp(-0.2), 1.0 + 2.0 * sigmoid, 2.0 + np.exp(1.0)]
    np.testing.assert_allclose(blockwise.forward(z), expected, rtol=1e-15)
    np.testing.assert_allclose(blockwise.inverse(blockwise.forward(z)), z, rtol=1e-12)
    # batched vectors (fit_batch) keep their leading axis
    assert blockwise.forward(jnp.stack([z, z])).shape == (2, 5)


def _space_of_every_kind(start):
    params = {
        "free": fitax.Parameter(start),
        "min": fitax.Parameter(start, min=0.0),
        "max": fitax.Parameter(start, max=2 * start),
        "both": fitax.Parameter(start, min=0.5 * start, max=2 * start),
    }
    return params, ParameterSpace.from_params(params)


@pytest.mark.parametrize("start", [6e4, 1e6])
def test_reverse_mode_through_to_physical_at_large_values(start):
    """An unbounded MJD-like value used to make exp(6e4) = inf in the discarded branches of
    the other kinds, and their zero cotangent times inf made the gradient NaN. Reference:
    the forward-mode derivative, which never mixed branches."""
    params, space = _space_of_every_kind(start)
    v0 = space.values(params)
    state = space.transform_state(v0)
    for u in (jnp.zeros(4), jnp.array([3.0, -2.0, 2.5, -4.0])):
        reverse = jax.grad(lambda x: jnp.sum(space.to_physical(x, state)))(u)
        forward = jax.jvp(lambda x: space.to_physical(x, state), (u,), (jnp.ones(4),))[1]
        assert np.all(np.isfinite(reverse)), reverse
        np.testing.assert_allclose(reverse, forward, rtol=1e-15)


def test_reverse_mode_through_to_physical_at_extreme_coordinates():
    """Internal coordinates thousands of scales away: bounded values saturate at their
    bounds, unbounded ones are large; every value and derivative is finite."""
    params, space = _space_of_every_kind(6e4)
    state = space.transform_state(space.values(params))
    for sign in (1.0, -1.0):
        # a one-sided bound's exp(z) overflows for large positive z: that value is meant to
        # be unreachable, only its approach to the bound is taken to the extreme
        coordinates = {"free": sign * 1e5, "min": -1e4, "max": -1e4, "both": sign * 1e4}
        u = jnp.array([coordinates[name] for name in space.names])
        assert np.all(np.isfinite(space.to_physical(u, state)))
        assert np.all(np.isfinite(jax.grad(lambda x: jnp.sum(space.to_physical(x, state)))(u)))
        assert np.all(np.isfinite(jax.grad(lambda x: space.log_abs_det_jacobian(x, state))(u)))


def test_log_abs_det_jacobian_matches_autodiff_determinant():
    """Reference: log |det| of the full autodiff Jacobian of to_physical."""
    params, space = _space_of_every_kind(3.0)
    state = space.transform_state(space.values(params), jnp.array([4.0, 0.5, 2.0, 9.0]))
    u = jnp.array([0.4, -1.2, 2.0, -0.7])
    _, expected = jnp.linalg.slogdet(jax.jacfwd(lambda x: space.to_physical(x, state))(u))
    assert float(space.log_abs_det_jacobian(u, state)) == pytest.approx(float(expected), rel=1e-13)
    batch = jnp.stack([u, 2 * u])
    assert space.log_abs_det_jacobian(batch, state).shape == (2,)
