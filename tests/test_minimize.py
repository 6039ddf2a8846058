"""The Newton solver (fitax._minimize) against references that do not use it: the exact
autodiff Hessian (jax.hessian), analytic minima, and the step equations themselves."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fitax
from fitax import _minimize
from fitax.examples import blob_cube, blob_cube_stat


def _physical_hessian(objective, params, args, values):
    """``jax.hessian`` of the objective in the free parameters' physical values: an
    independent reference (no Hessian plan, no BFGS, no internal coordinates)."""
    space = fitax.ParameterSpace.from_params(params)
    return np.asarray(jax.hessian(lambda v: objective(space.with_values(params, v), args))(space.values(values)))


@pytest.mark.parametrize("max_steps", [pytest.param(1, marks=pytest.mark.slow), 3])  # max_steps=1 takes 35 s
def test_errors_come_from_the_exact_hessian_when_the_step_limit_stops_a_quasi_newton_fit(max_steps):
    # hessian_every = 5 with a budget of 1 or 3 steps: the fit stops on quasi-Newton (BFGS)
    # Hessians, whose covariance differed from the exact one by up to 2 sigma_i sigma_j
    # before the fix. The covariance must be 2 * errordef * H^-1 with the exact H at the
    # returned point. Both are exact autodiff Hessians of the same function, so they agree to
    # rounding: 1e-8 in units of sigma_i sigma_j.
    _, start, data = blob_cube(3, n_energy=8, n_pix=40, seed=1)
    result = fitax.fit(blob_cube_stat, start, args=data, hessian_every=5, max_steps=max_steps)
    assert not result.converged and "maximum number of steps" in result.message
    reference = 2.0 * np.linalg.inv(_physical_hessian(blob_cube_stat, start, data, result.params))
    sigma = np.sqrt(np.diag(reference))
    np.testing.assert_allclose(result.covariance / np.outer(sigma, sigma), reference / np.outer(sigma, sigma), atol=1e-8)
    assert result.n_hessians >= 2  # the start, and the one at the returned point


def test_damped_step_on_an_indefinite_hessian_is_the_saddle_free_newton_step():
    # Reference: numpy's eigendecomposition; with negligible damping the step is
    # -(Q |Lambda| Q^T)^-1 g, a descent direction even though H has a negative eigenvalue.
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    hessian = (q * np.array([2.0, 1.0, 0.5, -0.7])) @ q.T
    grad = rng.normal(size=4)
    step, damping, solvable = _minimize.damped_newton.damped_step(jnp.asarray(grad), jnp.asarray(hessian), jnp.asarray(1e-12))
    assert solvable and float(damping) == 1e-12  # no damping was needed to factor the system
    # the model works in coordinates scaled by the diagonal; in those, |Lambda| is taken
    scale = 1 / np.sqrt(np.abs(np.diag(hessian)))
    eigenvalues, eigenvectors = np.linalg.eigh(hessian * np.outer(scale, scale))
    model = (eigenvectors * np.abs(eigenvalues)) @ eigenvectors.T / np.outer(scale, scale)
    np.testing.assert_allclose(np.asarray(step), -np.linalg.solve(model, grad), rtol=1e-9)
    assert grad @ np.asarray(step) < 0


def test_newton_leaves_a_saddle_start_without_evaluations_spent_on_damping():
    # f = (x^2 - 1)^2 + (y - 2)^2 starts at x = 0.05, where d2f/dx2 = 12 x^2 - 4 < 0. Minimum
    # (analytic): x = 1, y = 2, f = 0, errors sqrt(2 / H) = (sqrt(2/8), 1). Before the
    # damping was raised inside the step, the first ~3 evaluations only raised it.
    params = {"x": fitax.Parameter(0.05), "y": fitax.Parameter(0.0)}

    def objective(p):
        return (p["x"].value ** 2 - 1) ** 2 + (p["y"].value - 2) ** 2

    result = fitax.fit(objective, params)
    assert result.converged, result.message
    # EDM < 1e-6 puts each value within sigma * sqrt(2 EDM) < 1.5e-3 sigma of the minimum
    assert result.values["x"] == pytest.approx(1.0, abs=1e-3) and result.values["y"] == pytest.approx(2.0, abs=1e-3)
    assert result.errors["x"] == pytest.approx(0.5, rel=1e-3) and result.errors["y"] == pytest.approx(1.0, rel=1e-3)
    assert result.n_evaluations <= 9


def _hard_start(truth, seed):
    """The truth perturbed by more than ``blob_cube``'s own start: positions by ~0.7 pixel,
    log-widths by ~0.15, log-amplitudes by ~0.3, indices by ~0.2 (normal draws)."""
    rng = np.random.default_rng(seed)
    blobs = tuple(
        type(b)(
            amplitude=fitax.Parameter(float(b.amplitude.value) * np.exp(0.3 * rng.normal()), min=0.0),
            index=fitax.Parameter(float(b.index.value) + 0.2 * rng.normal()),
            x=fitax.Parameter(float(b.x.value) + 0.7 * rng.normal(), min=b.x.min, max=b.x.max),
            y=fitax.Parameter(float(b.y.value) + 0.7 * rng.normal(), min=b.y.min, max=b.y.max),
            sigma=fitax.Parameter(float(b.sigma.value) * np.exp(0.15 * rng.normal()), min=b.sigma.min),
        )
        for b in truth.blobs
    )
    return type(truth)(blobs=blobs, bkg_norm=fitax.Parameter(1.2, min=0.0))


def test_quasi_newton_from_a_hard_start_needs_only_the_first_and_the_last_exact_hessian():
    # 51 parameters from a start where the exact Hessian is indefinite. Reference: pure
    # Newton (exact Hessian at every step) from the truth. The solver before this one took 6
    # exact Hessians here: raising the damping cost evaluations, and every rejected step
    # forced an exact Hessian at the next trial point.
    truth, _, data = blob_cube(10, n_energy=10, n_pix=60, seed=4)
    start = _hard_start(truth, seed=4)
    result = fitax.fit(blob_cube_stat, start, args=data, hessian_every=1000)
    reference = fitax.fit(blob_cube_stat, truth, args=data, hessian_every=1)
    assert result.converged and reference.converged, result.message
    assert result.stat == pytest.approx(reference.stat, abs=1e-3)
    assert result.n_hessians <= 3
