"""Profile likelihoods, intervals and TS against analytic results."""

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize, stats as sps

import fitax


def _poisson_single_bin():
    n = jnp.array([7.0])
    params = {"mu": fitax.Parameter(3.0, min=0.0)}
    return (lambda p: fitax.stats.cash(n, p["mu"].value)), params


def test_poisson_interval_matches_analytic_likelihood_ratio_interval():
    objective, params = _poisson_single_bin()
    interval = fitax.confidence_interval(objective, params, "mu", tol=1e-12)
    # analytic: 2 (mu - n + n log(n/mu)) = 1
    deviance = lambda mu: 2 * (mu - 7 + 7 * np.log(7 / mu)) - 1  # noqa: E731
    lower, upper = optimize.brentq(deviance, 1, 7), optimize.brentq(deviance, 7, 20)
    assert interval.value == pytest.approx(7.0, rel=1e-6)
    assert interval.lower == pytest.approx(lower, rel=1e-5) and interval.upper == pytest.approx(upper, rel=1e-5)
    assert not interval.lower_at_bound and not interval.upper_at_bound
    assert interval.errors[1] > interval.errors[0]  # Poisson intervals are asymmetric


def test_profile_of_correlated_gaussian_is_the_marginal_chi2():
    # f = chi2 of a bivariate normal with correlation 0.8: the profile over b is (a/sigma_a)^2
    cov = np.array([[1.0, 0.8 * 2.0], [0.8 * 2.0, 4.0]])
    inv = jnp.asarray(np.linalg.inv(cov))
    params = {"a": fitax.Parameter(0.3), "b": fitax.Parameter(-0.2)}

    def chi2(p):
        x = jnp.stack([p["a"].value, p["b"].value])
        return x @ inv @ x

    prof = fitax.profile(chi2, params, "a", np.linspace(-2, 2, 9), tol=1e-12)
    np.testing.assert_allclose(prof.delta_stat, np.linspace(-2, 2, 9) ** 2, atol=1e-6)
    np.testing.assert_allclose(prof.fitted["b"], 0.8 * 2.0 * np.linspace(-2, 2, 9), atol=1e-4)
    ci = fitax.confidence_interval(chi2, params, "b", n_sigma=2, tol=1e-12)
    assert ci.lower == pytest.approx(-4.0, rel=1e-4) and ci.upper == pytest.approx(4.0, rel=1e-4)


def test_interval_open_at_bound_reports_a_limit():
    n = jnp.array([0.0])
    params = {"mu": fitax.Parameter(1.0, min=0.0)}
    interval = fitax.confidence_interval(lambda p: fitax.stats.cash(n, p["mu"].value), params, "mu")
    assert interval.lower_at_bound and interval.lower == 0.0
    assert interval.upper == pytest.approx(0.5, rel=1e-4)  # 2 mu = 1


def test_ts_of_a_source_matches_wilks_significance_and_simulation_truth():
    rng = np.random.default_rng(5)
    x = np.arange(40)
    shape = np.exp(-0.5 * ((x - 20) / 2.0) ** 2)
    counts = jnp.asarray(rng.poisson(5.0 + 6.0 * shape).astype(float))
    params = {"amp": fitax.Parameter(3.0, min=0.0), "bkg": fitax.Parameter(4.0, min=0.0)}
    objective = lambda p: fitax.stats.cash(counts, p["bkg"].value + p["amp"].value * shape)  # noqa: E731
    result = fitax.ts(objective, params, {"amp": 0.0}, tol=1e-12)
    # null: flat background, whose MLE is the mean count
    null_stat = float(fitax.stats.cash(counts, jnp.full(40, counts.mean())))
    assert result.result_null.stat == pytest.approx(null_stat, abs=1e-6)
    assert result.ts == pytest.approx(null_stat - result.result_alt.stat, abs=1e-9)
    assert result.significance == pytest.approx(np.sqrt(result.ts), rel=1e-12)  # Gammapy's convention
    fitted = result.result_alt
    assert abs(fitted.values["amp"] - 6.0) < 3 * fitted.errors["amp"] and result.ts > 9


def test_frozen_parameter_interval_is_refused_by_name():
    objective, params = _poisson_single_bin()
    params = {"mu": fitax.Parameter(3.0, min=0.0, frozen=True), "other": fitax.Parameter(1.0)}
    with pytest.raises(ValueError, match="parameter 'mu' is frozen"):
        fitax.confidence_interval(lambda p: (p["mu"].value - 1) ** 2 + p["other"].value ** 2, params, "mu")
    with pytest.raises(ValueError, match="parameter 'mu' is frozen"):
        fitax.profile(lambda p: p["other"].value ** 2, params, "mu", [1.0])
    with pytest.raises(KeyError, match="no parameter named 'nu'"):
        fitax.profile(lambda p: p["other"].value ** 2, params, "nu", [1.0])


def test_wilks_significance_for_large_ts_and_several_dof():
    from fitax.profile import wilks_significance

    assert wilks_significance(1809.0, 1) == pytest.approx(np.sqrt(1809.0))
    for df, value in [(1, 15.5), (2, 30.0), (4, 100.0), (3, 1200.0)]:
        expected = sps.norm.isf(0.5 * sps.chi2.sf(value, df))  # gammapy.stats.ts_to_sigma
        assert wilks_significance(value, df) == pytest.approx(expected, rel=2e-3)
    # Beyond double-precision p-values (p ~ 1e-1085): against the exact chi2(3) tail,
    # sf(x) = erfc(sqrt(x/2)) + sqrt(2x/pi) exp(-x/2), summed in logarithms; the asymptotic
    # series that fitax uses there is good to 1e-6 relative at z = 70.
    from scipy import optimize, special

    log_p = np.log(0.5) + np.logaddexp(np.log(2) + special.log_ndtr(-np.sqrt(5000.0)), 0.5 * np.log(2 * 5000.0 / np.pi) - 2500.0)
    exact = optimize.brentq(lambda z: sps.norm.logsf(z) - log_p, 1.0, 200.0, xtol=1e-12)
    assert wilks_significance(5000.0, 3) == pytest.approx(exact, rel=1e-6)


def test_ts_with_no_free_parameter_under_the_null_keeps_the_prior():
    """f = (a - 2)^2 with a N(0, 1) prior: the fit minimises (a - 2)^2 + a^2 (a = 1, stat 2);
    under the null a = 1 the statistic is again 1 + 1 = 2, so TS = 0 exactly."""
    params = {"a": fitax.Parameter(0.5, prior=fitax.GaussianPrior(0.0, 1.0))}
    result = fitax.ts(lambda p: (p["a"].value - 2) ** 2, params, {"a": 1.0}, tol=1e-12)
    assert result.result_alt.stat == pytest.approx(2.0, abs=1e-9)
    assert result.ts == pytest.approx(0.0, abs=1e-9)


def _flat_when_a_is_zero(p):
    # b is constrained only while a != 0: with a fixed at 0 its refit has a singular Hessian.
    return (p["a"].value - 1) ** 2 + p["a"].value ** 2 * (p["b"].value - 2) ** 2


def test_ts_and_profile_warn_when_a_refit_does_not_converge():
    params = {"a": fitax.Parameter(0.5), "b": fitax.Parameter(1.0)}
    with pytest.warns(RuntimeWarning, match=r"the null fit .* did not converge"):
        result = fitax.ts(_flat_when_a_is_zero, params, {"a": 0.0})
    assert result.result_alt.converged and not result.converged
    with pytest.warns(RuntimeWarning, match=r"profile of 'a': .* at a = 0 did not converge"):
        scan = fitax.profile(_flat_when_a_is_zero, params, "a", [0.5, 0.0, 1.0])
    assert scan.converged.tolist() == [True, False, True]
