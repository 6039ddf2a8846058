"""Statistics against Gammapy's implementations and against direct numerical profiling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize, stats as sps

import fitax
from fitax import stats

RNG = np.random.default_rng(1)


def test_cash_matches_gammapy_up_to_data_constant():
    gstats = pytest.importorskip("gammapy.stats")
    n = RNG.poisson(3.0, 500).astype(float)
    mu = RNG.uniform(0.1, 8.0, 500)
    ours = float(stats.cash(n, mu))
    # Gammapy's Cash is 2(mu - n log mu); the deviance adds the data-only 2(n log n - n).
    constant = 2 * np.sum(np.where(n > 0, n * np.log(np.where(n > 0, n, 1)), 0.0) - n)
    assert ours == pytest.approx(float(np.sum(gstats.cash(n, mu))) + constant, rel=1e-12)


def test_cash_is_exact_at_zero_counts_and_finite_at_zero_prediction():
    assert float(stats.cash(np.zeros(2), np.array([0.5, 2.0]))) == pytest.approx(5.0, rel=1e-15)
    value = float(stats.cash(np.array([3.0]), np.array([0.0])))
    assert np.isfinite(value) and value > 100
    grad = jax.grad(lambda m: stats.cash(jnp.array([0.0, 4.0]), m))(jnp.array([1.0, 2.0]))
    np.testing.assert_allclose(grad, [2.0, 2.0 * (1 - 4.0 / 2.0)], rtol=1e-14)


def test_cash_mask_excludes_bins():
    n, mu = np.array([1.0, 5.0, 2.0]), np.array([2.0, 1.0, 2.0])
    mask = np.array([True, False, True])
    assert float(stats.cash(n, mu, mask)) == pytest.approx(float(stats.cash(n[mask], mu[mask])), rel=1e-15)


def test_wstat_matches_numerical_profile_over_background():
    cases = [(RNG.poisson(RNG.uniform(0, 20)), RNG.poisson(RNG.uniform(0, 30)), RNG.uniform(0.05, 1.0), RNG.uniform(0, 15)) for _ in range(30)]
    cases += [(0, 7, 0.3, 2.0), (0, 0, 0.3, 2.0), (6, 0, 0.2, 0.5), (6, 0, 0.2, 5.0), (4, 9, 0.5, 0.0)]  # corner cases
    for n_on, n_off, alpha, mu_sig in cases:

        def joint(mu_bkg):
            return float(stats.cash_terms(n_on, mu_sig + alpha * mu_bkg) + stats.cash_terms(n_off, mu_bkg))

        best = optimize.minimize_scalar(joint, bounds=(0.0, 200.0), method="bounded", options={"xatol": 1e-10})
        reference = min(best.fun, joint(0.0))
        assert float(stats.wstat(n_on, n_off, alpha, mu_sig)) == pytest.approx(reference, abs=1e-6)


def test_wstat_matches_gammapy():
    gstats = pytest.importorskip("gammapy.stats")
    n_on = RNG.poisson(5.0, 300).astype(float)
    n_off = RNG.poisson(8.0, 300).astype(float)
    alpha = RNG.uniform(0.1, 0.9, 300)
    mu_sig = RNG.uniform(0.0, 6.0, 300)
    reference = gstats.wstat(n_on=n_on, n_off=n_off, alpha=alpha, mu_sig=mu_sig)
    np.testing.assert_allclose(stats.wstat_terms(n_on, n_off, alpha, mu_sig), reference, rtol=1e-9, atol=1e-9)


def test_wstat_gradient_is_finite_in_corner_cases():
    grad = jax.grad(lambda m: stats.wstat(jnp.array([0.0, 5.0, 3.0]), jnp.array([4.0, 0.0, 0.0]), 0.25, m))
    assert np.all(np.isfinite(grad(jnp.array([1.0, 2.0, 0.6]))))


def test_loglikes_and_chi2_match_scipy():
    n = RNG.poisson(4.0, 50).astype(float)
    mu = RNG.uniform(1, 7, 50)
    assert float(stats.poisson_loglike(n, mu)) == pytest.approx(np.sum(sps.poisson.logpmf(n, mu)), rel=1e-12)
    x, m, s = RNG.normal(size=40), RNG.normal(size=40), RNG.uniform(0.5, 2, 40)
    assert float(stats.gaussian_loglike(x, m, s)) == pytest.approx(np.sum(sps.norm.logpdf(x, m, s)), rel=1e-12)
    assert float(stats.chi2(x, m, s)) == pytest.approx(np.sum(((x - m) / s) ** 2), rel=1e-12)


def test_cash_sparse_is_cash_minus_its_data_constant():
    """Bins without counts enter only through the total prediction; padding entries
    (counts 0) add nothing, and the gradient with respect to mu is the same."""
    rng = np.random.default_rng(3)
    mu = rng.uniform(0.01, 2.0, size=500)
    n = rng.poisson(mu * 0.3).astype(float)
    mask = rng.uniform(size=500) > 0.1
    index = np.flatnonzero(mask & (n > 0))
    padded_index = np.concatenate([index, [0, 0, 0]])
    padded_counts = np.concatenate([n[index], [0.0, 0.0, 0.0]])
    constant = 2 * np.sum(np.where(mask & (n > 0), n * np.log(np.where(n > 0, n, 1.0)), 0.0) - np.where(mask, n, 0.0))

    def sparse(m):
        return stats.cash_sparse(jnp.sum(jnp.where(mask, m, 0.0)), m[padded_index], padded_counts) + constant

    def dense(m):
        return stats.cash(n, m, mask)

    assert float(stats.cash_data_term(n, mask)) == pytest.approx(constant, rel=1e-14)
    assert float(sparse(mu)) == pytest.approx(float(dense(mu)), rel=1e-13)
    np.testing.assert_allclose(jax.grad(sparse)(jnp.asarray(mu)), jax.grad(dense)(jnp.asarray(mu)), rtol=1e-12, atol=1e-14)


# Bins 1 and 4 are masked out and hold what real data put there: NaN pixels, zero errors,
# no off exposure (alpha = 0), negative or NaN predictions.
MASK = np.array([True, False, True, True, False])
KEPT = np.flatnonzero(MASK)
POISONED = {
    "chi2": (stats.chi2, [[3.0, np.nan, 1.5, -0.5, 2.0], [2.5, 1.0, 1.0, 0.5, 2.0], [1.0, 1.0, 0.5, 2.0, 0.0]]),
    "gaussian_loglike": (stats.gaussian_loglike, [[3.0, np.nan, 1.5, -0.5, 2.0], [2.5, 1.0, 1.0, 0.5, 2.0], [1.0, 0.0, 0.5, 2.0, 0.0]]),
    "cash": (stats.cash, [[3.0, np.nan, 0.0, 7.0, 2.0], [2.5, 1.0, 0.4, 5.0, np.nan]]),
    "poisson_loglike": (stats.poisson_loglike, [[3.0, np.nan, 0.0, 7.0, 2.0], [2.5, 1.0, 0.4, 5.0, np.nan]]),
    "wstat": (
        stats.wstat,
        [[3.0, 4.0, 0.0, 9.0, 2.0], [5.0, np.nan, 4.0, 0.0, 3.0], [0.2, 0.0, 0.5, 0.3, 0.0], [1.5, 2.0, 0.7, 4.0, -1.0]],
    ),
}


@pytest.mark.parametrize("name", sorted(POISONED))
def test_masked_bins_leak_nothing_into_gradients(name):
    """The value and the gradient with respect to every argument are those of the kept bins
    alone (reference: the same statistic on the sliced arrays), zero in the masked bins.
    Masking only the terms leaves NaN in the gradient ('0 * inf' in the backward pass)."""
    statistic, arguments = POISONED[name]
    arguments = [jnp.asarray(a) for a in arguments]
    kept = [a[KEPT] for a in arguments]
    assert float(statistic(*arguments, mask=MASK)) == pytest.approx(float(statistic(*kept)), rel=1e-14)
    for position in range(len(arguments)):
        def on_all(x):
            return statistic(*arguments[:position], x, *arguments[position + 1 :], mask=MASK)

        def on_kept(x):
            return statistic(*kept[:position], x, *kept[position + 1 :])

        grad = np.asarray(jax.grad(on_all)(arguments[position]))
        expected = np.zeros(len(MASK))
        expected[KEPT] = jax.grad(on_kept)(kept[position])
        assert np.all(np.isfinite(grad)), f"argument {position}: {grad}"
        np.testing.assert_allclose(grad, expected, rtol=1e-14, atol=0, err_msg=f"argument {position}")


def test_wstat_masked_bin_without_off_exposure_with_scalar_arguments():
    """The issue's case: alpha = 0 in a masked bin, the gradient with respect to mu_sig
    (broadcast scalar) is the kept bins' one."""
    n_on, n_off, alpha = np.array([4.0, 2.0, 6.0]), np.array([3.0, 5.0, 8.0]), np.array([0.25, 0.0, 0.25])
    mask = np.array([True, False, True])
    grad = jax.grad(lambda m: stats.wstat(n_on, n_off, alpha, m, mask))(2.0)
    expected = jax.grad(lambda m: stats.wstat(n_on[mask], n_off[mask], 0.25, m))(2.0)
    assert float(grad) == pytest.approx(float(expected), rel=1e-14)
