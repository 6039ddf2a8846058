"""fitax.fit_batch: many small fits in one call, against scipy and known answers."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fitax
from fitax.photometry.simulate import simulate_stamps, stamp_model


def test_lagrangian_box_problem_finds_volume_8_from_100_random_starts():
    # maximise xyz subject to 2(xy + xz + yz) = 24: stationary points of the Lagrangian are
    # minima (zeros) of its squared gradient.
    def lagrangian(x, y, z, lam):
        return x * y * z - lam * (2 * (x * y + x * z + y * z) - 24)

    def objective(p):
        args = (p["x"].value, p["y"].value, p["z"].value, p["lam"].value)
        grad = jax.grad(lambda a: lagrangian(*a))(jnp.stack(args))
        return jnp.sum(grad**2)

    rng = np.random.default_rng(0)
    starts = {k: fitax.Parameter(rng.uniform(0.5, 4.0, 100)) for k in ("x", "y", "z")}
    starts["lam"] = fitax.Parameter(rng.uniform(0.0, 1.0, 100))
    result = fitax.fit_batch(objective, starts, tol=1e-14)  # the minimum is 0: ask for it exactly
    # Some starts run away along the asymptotic valley x -> inf, y, z -> 0 (the squared
    # gradient tends to 0 only at infinity): they must say so, not claim convergence.
    assert result.converged.sum() >= 75
    lost = ~result.converged
    assert np.all(result.status[lost] == 1) and np.all(result.stat[lost] > 1e-4)
    best = result.best()
    xyz = np.array([result.values[k][best] for k in ("x", "y", "z")])
    np.testing.assert_allclose(xyz, 2.0, atol=1e-7)
    assert np.prod(xyz) == pytest.approx(8.0, abs=1e-5)
    # every converged start found a constrained stationary point (all of which are +-(2,2,2))
    ok = result.converged
    volume = result.values["x"][ok] * result.values["y"][ok] * result.values["z"][ok]
    np.testing.assert_allclose(np.abs(volume), 8.0, atol=1e-6)


def _moffat_problem(n):
    stamps, truth, noise = simulate_stamps(n, seed=1)
    params = {
        "flux": fitax.Parameter(truth["flux"] * 0.8, min=0.0),
        "x": fitax.Parameter(truth["x"] + 0.3),
        "y": fitax.Parameter(truth["y"] - 0.3),
        "bkg": fitax.Parameter(np.full(n, 5.0)),
    }
    return stamps, truth, noise, params


def _moffat_chi2(p, data):
    stamp, variance = data
    model = stamp_model(p["flux"].value, p["x"].value, p["y"].value, p["bkg"].value, stamp.shape[-1])
    return fitax.stats.chi2(stamp, model, jnp.sqrt(variance))


def test_moffat_stamp_fits_match_scipy_least_squares():
    from scipy.optimize import least_squares

    n = 40
    stamps, truth, variance, params = _moffat_problem(n)
    result = fitax.fit_batch(_moffat_chi2, params, (stamps, variance))
    assert result.converged.all()
    for i in range(n):
        def residuals(q, i=i):
            model = stamp_model(q[0], q[1], q[2], q[3], stamps.shape[-1])
            return np.asarray((stamps[i] - model) / np.sqrt(variance[i])).ravel()

        start = [params[k].value[i] for k in ("flux", "x", "y", "bkg")]
        ref = least_squares(residuals, start, x_scale="jac", xtol=1e-12, ftol=1e-12, gtol=1e-12)
        cov = np.linalg.inv(ref.jac.T @ ref.jac)
        for j, k in enumerate(("flux", "x", "y", "bkg")):
            # 2e-3 sigma: fits stop at EDM < 1e-6, i.e. ~1.4e-3 sigma from the exact minimum
            assert result.values[k][i] == pytest.approx(ref.x[j], abs=2e-3 * np.sqrt(cov[j, j])), (i, k)
        # exact Hessian vs Gauss-Newton: equal up to the (small) residual curvature term
        assert result.errors["flux"][i] == pytest.approx(np.sqrt(cov[0, 0]), rel=0.02)
    pulls = (result.values["flux"] - truth["flux"]) / result.errors["flux"]
    assert np.abs(np.mean(pulls)) < 0.5 and 0.6 < np.std(pulls) < 1.5


def test_map_and_vmap_give_identical_results():
    stamps, truth, variance, params = _moffat_problem(16)
    by_map = fitax.fit_batch(_moffat_chi2, params, (stamps, variance), vectorize="map")
    by_vmap = fitax.fit_batch(_moffat_chi2, params, (stamps, variance), vectorize="vmap")
    np.testing.assert_allclose(by_map.values["flux"], by_vmap.values["flux"], rtol=1e-9)
    np.testing.assert_allclose(by_map.errors["x"], by_vmap.errors["x"], rtol=1e-9)


def test_shared_data_and_result_table():
    rng = np.random.default_rng(3)
    data = jnp.asarray(rng.normal(2.0, 1.0, (5, 30)))

    def nll(p, x, scale):
        return fitax.stats.chi2(x, p["mu"].value, scale)

    result = fitax.fit_batch(nll, {"mu": fitax.Parameter(jnp.zeros(5))}, data, shared=jnp.asarray(1.0))
    sigma = 1 / np.sqrt(30)
    np.testing.assert_allclose(result.values["mu"], data.mean(axis=1), atol=1e-3 * sigma)  # EDM tolerance
    np.testing.assert_allclose(result.errors["mu"], sigma, rtol=1e-10)
    table = result.to_table()
    assert len(table) == 5 and {"mu", "mu_err", "stat", "converged"} <= set(table.colnames)
    assert "5 problems, 5 converged" in repr(result)


def test_bad_problem_is_flagged_without_stopping_the_batch():
    data = jnp.array([[1.0, 2.0], [jnp.nan, 1.0], [3.0, 3.0]])
    result = fitax.fit_batch(lambda p, x: jnp.sum((x - p["m"].value) ** 2), {"m": fitax.Parameter(jnp.zeros(3))}, data)
    assert result.converged.tolist() == [True, False, True]
    assert "non-finite" in result.message(1)


def test_mismatched_batch_sizes_name_the_leaf():
    params = {"a": fitax.Parameter(jnp.zeros(4)), "b": fitax.Parameter(jnp.zeros(3))}
    with pytest.raises(ValueError, match=r"inconsistent batch sizes.*\['b'\] has 3"):
        fitax.fit_batch(lambda p: p["a"].value ** 2 + p["b"].value ** 2, params)
    with pytest.raises(ValueError, match="params_batch has 4 problems but args has 2"):
        fitax.fit_batch(lambda p, x: (p["a"].value - x) ** 2, {"a": fitax.Parameter(jnp.zeros(4))}, jnp.zeros(2))


def test_invalid_starts_are_flagged_per_problem():
    """A bad start value fails its own problem only; the others are solved as if alone
    (the analytic minimum of (a - x)^2 + (b - 2)^2 over a >= 0 is a = x, b = 2)."""
    x = jnp.array([1.0, 2.0, 3.0, 4.0])
    params = {"a": fitax.Parameter(jnp.array([1.0, -1.0, jnp.nan, 0.5]), min=0), "b": fitax.Parameter(jnp.zeros(4))}
    result = fitax.fit_batch(lambda p, x: (p["a"].value - x) ** 2 + (p["b"].value - 2) ** 2, params, x, tol=1e-14)
    assert result.converged.tolist() == [True, False, False, True]
    assert "parameter 'a' starts at -1, outside its bounds [0, inf]" in result.message(1)
    assert "parameter 'a' has a non-finite start value nan" in result.message(2)
    np.testing.assert_allclose(result.values["a"][[0, 3]], [1.0, 4.0], atol=1e-6)
    assert result.values["a"][1] == -1.0 and np.isnan(result.stat[1]) and np.isnan(result.errors["b"][1])
    assert "2 with invalid starts" in repr(result)
    nothing = fitax.fit_batch(lambda p: p["a"].value ** 2, {"a": fitax.Parameter(jnp.array([-1.0, -2.0]), min=0)})
    assert not nothing.converged.any() and "outside its bounds" in nothing.message(1)


def test_multi_device_split_gives_the_same_answers():
    code = (
        "import sys; sys.path.insert(0, 'tests'); import jax, numpy as np, fitax;"
        "from test_batch import _moffat_problem, _moffat_chi2;"
        "s, t, v, p = _moffat_problem(10);"
        "r = fitax.fit_batch(_moffat_chi2, p, (s, v));"
        "print(jax.device_count(), repr(np.asarray(r.values['flux']).tolist()))"
    )
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    n_devices, fluxes = out.stdout.strip().split(" ", 1)
    assert n_devices == "4"
    stamps, truth, variance, params = _moffat_problem(10)
    single = fitax.fit_batch(_moffat_chi2, params, (stamps, variance))
    np.testing.assert_allclose(eval(fluxes), single.values["flux"], rtol=1e-9)


def _bounded_quadratic(p, centre):
    """chi2 with a correlated pair: minimum at ``centre`` when it lies inside the box."""
    x, y = p["x"].value, p["y"].value
    return (x - centre[0]) ** 2 + (y - x - centre[1] + centre[0]) ** 2 + 0.5 * (y - centre[1]) ** 2


def test_projected_newton_reaches_a_bound_exactly_with_the_kkt_conditions():
    """Minima on the lower bound x >= 0 (centres with x < 0): projected Newton ends on the
    bound exactly, converged, with y at its conditional minimum; damped Newton approaches the
    bound only geometrically. Errors come from the whole (positive-definite) Hessian, as
    damped Newton's (not the smaller ones conditional on x held at its bound). Interior
    minima equal damped Newton's."""
    centre = np.array([[-1.0, 0.5], [-0.2, -1.0], [0.7, 0.3], [2.0, -1.5]])
    starts = {"x": fitax.Parameter(np.full(4, 0.5), min=0.0, max=5.0), "y": fitax.Parameter(np.zeros(4))}
    projected = fitax.fit_batch(_bounded_quadratic, starts, jnp.asarray(centre), tol=1e-12, method="projected")
    damped = fitax.fit_batch(_bounded_quadratic, starts, jnp.asarray(centre), tol=1e-12)
    assert projected.converged.all()
    on_bound = centre[:, 0] < 0
    assert np.all(projected.values["x"][on_bound] == 0.0)
    # conditional minimum in y at x = 0: d/dy [(y - c1 + c0)^2 + 0.5 (y - c1)^2] = 0
    c0, c1 = centre[on_bound, 0], centre[on_bound, 1]
    np.testing.assert_allclose(projected.values["y"][on_bound], (3 * c1 - 2 * c0) / 3, atol=1e-9)
    assert np.all(damped.values["x"][on_bound] > 0.0)  # the internal coordinates never reach the bound
    # H = [[4, -2], [-2, 3]] everywhere: covariance 2 H^-1 = [[0.75, 0.5], [0.5, 1]]
    np.testing.assert_allclose(projected.errors["x"], np.sqrt(0.75), rtol=1e-9)
    np.testing.assert_allclose(projected.errors["y"], 1.0, rtol=1e-9)  # conditional on x it would be sqrt(2/3)
    inside = ~on_bound
    for name in ("x", "y"):
        np.testing.assert_allclose(projected.values[name][inside], centre[inside, 0 if name == "x" else 1], atol=1e-9)
        np.testing.assert_allclose(projected.errors[name], damped.errors[name], rtol=1e-7)


def test_projected_newton_stops_at_a_stationary_point_that_is_no_minimum():
    """A saddle (x^2 - y^2 from the origin): the Newton step is zero; the solve stops at once
    as no progress, never converged, instead of spending every step."""
    starts = {"x": fitax.Parameter(np.array([0.0])), "y": fitax.Parameter(np.array([0.0]), min=-1.0, max=1.0)}
    result = fitax.fit_batch(lambda p: p["x"].value ** 2 - p["y"].value ** 2, starts, method="projected")
    assert not result.converged[0] and result.status[0] == 2 and result.n_iterations[0] <= 2


def test_projected_newton_says_when_it_does_not_converge():
    """A step limit too small for the start: not converged, status max_steps_reached."""
    starts = {"x": fitax.Parameter(np.array([4.0]), min=0.0, max=5.0), "y": fitax.Parameter(np.array([30.0]))}
    result = fitax.fit_batch(
        lambda p: jnp.cosh(p["x"].value - 1.0) + jnp.cosh(p["y"].value), starts, tol=1e-14, max_steps=2, method="projected"
    )
    assert not result.converged[0] and result.status[0] == 1


def test_bad_method_is_refused_by_name():
    starts = {"y": fitax.Parameter(np.array([30.0]))}
    with pytest.raises(ValueError, match="unknown method 'lbfgs'; expected 'newton' or 'projected'"):
        fitax.fit_batch(lambda p: p["y"].value ** 2, starts, method="lbfgs")
