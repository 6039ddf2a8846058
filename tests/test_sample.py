"""fitax.sample against analytic posteriors, ArviZ's diagnostics and the Laplace approximation.

Monte Carlo tolerances: with ``ess`` effective draws, a posterior mean is off by about
``std / sqrt(ess)`` (its MC error); tests allow 4 MC errors (a false alarm about once in
16 000 per comparison). Each distinct model compiles the sampler once (~3 s idle, 10-15 s
on a loaded 2-core machine), so the tests share a few module-scoped runs.
"""

from __future__ import annotations

import os
import warnings

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import fitax
from conftest import shared_data
from fitax.sample import effective_sample_size, split_r_hat

MC_ERRORS = 4.0


# --------------------------------------------------------------------------------- helpers
def mean_tolerance(draws: np.ndarray, ess: float) -> float:
    """MC_ERRORS standard errors of the mean of ``draws`` (chains, draws)."""
    return MC_ERRORS * draws.std() / np.sqrt(ess)


def std_tolerance(draws: np.ndarray) -> float:
    """MC_ERRORS standard errors of the standard deviation. For a near-Gaussian posterior
    ``var(s^2) = 2 sigma^4 / n_eff`` with ``n_eff`` the ESS of ``(x - mean)^2``, and
    ``s = sigma + (s^2 - sigma^2) / (2 sigma)``, so the standard error of ``s`` is
    ``sigma / sqrt(2 n_eff)``."""
    return MC_ERRORS * draws.std() / np.sqrt(2 * effective_sample_size((draws - draws.mean()) ** 2))


def quantile_tolerance(draws: np.ndarray, x_q: float, q: float, density: float) -> float:
    """MC_ERRORS standard errors of the q-quantile: ``sqrt(q (1 - q) / n_eff) / f(x_q)``
    with ``n_eff`` the ESS of the indicator ``x <= x_q`` and ``f`` the true density."""
    n_eff = effective_sample_size((draws <= x_q).astype(float))
    return MC_ERRORS * np.sqrt(q * (1 - q) / n_eff) / density


# ------------------------------------------------------------- (a) linear-Gaussian model
X = np.linspace(0.0, 10.0, 20)
SIGMA = np.linspace(0.3, 0.8, 20)
Y = 1.0 + 0.5 * X + SIGMA * np.random.default_rng(1).normal(size=20)
SLOPE_PRIOR = fitax.GaussianPrior(0.45, 0.05)


def chi2_line(params, data):
    x, y, sigma = data
    return jnp.sum(((y - params["a"].value - params["b"].value * x) / sigma) ** 2)


def line_params():
    return {"a": fitax.Parameter(0.0), "b": fitax.Parameter(1.0, prior=SLOPE_PRIOR)}


def analytic_line_posterior():
    """Gaussian posterior of (a, b): precision ``A^T W A`` plus the slope prior's."""
    design = np.stack([np.ones_like(X), X], axis=1)
    weights = 1 / SIGMA**2
    precision = design.T @ (weights[:, None] * design) + np.diag([0.0, 1 / SLOPE_PRIOR.sigma**2])
    rhs = design.T @ (weights * Y) + np.array([0.0, SLOPE_PRIOR.mu / SLOPE_PRIOR.sigma**2])
    covariance = np.linalg.inv(precision)
    return covariance @ rhs, covariance


@pytest.fixture(scope="module")
def line_fit():
    return fitax.fit(chi2_line, line_params(), args=(X, Y, SIGMA))


@pytest.fixture(scope="module")
def line_result(line_fit):
    return fitax.sample(chi2_line, line_params(), args=(X, Y, SIGMA), init=line_fit, seed=3)


def test_gaussian_posterior_mean_std_and_correlation(line_result):
    mean, covariance = analytic_line_posterior()
    a, b = (np.asarray(line_result.samples[n]) for n in ("a", "b"))
    for j, draws in enumerate((a, b)):
        name = "ab"[j]
        assert abs(draws.mean() - mean[j]) < mean_tolerance(draws, line_result.ess[name]), name
        assert abs(draws.std() - np.sqrt(covariance[j, j])) < std_tolerance(draws), name
    # The slope prior matters: without it the posterior std of b would be 26 % larger, many
    # MC errors away, so a sampler that dropped the prior would fail above.
    std_without_prior = np.sqrt(np.linalg.inv(np.linalg.inv(covariance) - np.diag([0, 1 / SLOPE_PRIOR.sigma**2]))[1, 1])
    assert abs(b.std() - std_without_prior) > 2 * std_tolerance(b)  # 8 MC errors; measured 18
    # a and b are strongly anti-correlated (x is not centred): the dense mass matrix's job.
    # The MC error of a correlation coefficient is (1 - rho^2) / sqrt(n_eff).
    rho = covariance[0, 1] / np.sqrt(covariance[0, 0] * covariance[1, 1])
    n_eff = min(line_result.ess.values())
    assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1] - rho) < MC_ERRORS * (1 - rho**2) / np.sqrt(n_eff)
    assert rho < -0.5


def test_diagnostics_of_a_good_run_are_sane(line_result):
    assert line_result.samples["a"].shape == (4, 1000)
    assert line_result.divergences.tolist() == [0, 0, 0, 0]
    # Warm-up aims at a mean acceptance of 0.8; on a Gaussian NUTS ends near or above it.
    assert np.all((line_result.acceptance > 0.6) & (line_result.acceptance < 1.0))
    for name in line_result.names:
        assert 1.0 - 1e-3 < line_result.r_hat[name] < 1.01
        # NUTS on a Gaussian gives nearly independent draws: ESS of order the 4000 draws.
        assert 1000 < line_result.ess[name] < 3 * 4000
    assert np.all(line_result.n_leapfrog >= 1000)


def test_same_seed_gives_same_draws_and_new_data_reuse(line_fit, line_result):
    again = fitax.sample(chi2_line, line_params(), args=(X, Y, SIGMA), init=line_fit, seed=3)
    np.testing.assert_array_equal(again.samples["b"], line_result.samples["b"])
    other = fitax.sample(chi2_line, line_params(), args=(X, Y, SIGMA), init=line_fit, seed=4)
    assert not np.array_equal(other.samples["b"], line_result.samples["b"])


def test_start_from_params_without_init():
    """No fit first: the chains start at the values of params with a unit mass matrix; the
    posterior is the same."""
    result = fitax.sample(chi2_line, line_params(), args=(X, Y, SIGMA), seed=5)
    mean, covariance = analytic_line_posterior()
    for j, name in enumerate(("a", "b")):
        draws = np.asarray(result.samples[name])
        assert abs(draws.mean() - mean[j]) < mean_tolerance(draws, result.ess[name]), name
        assert result.r_hat[name] < 1.01


# ------------------------------------------------------------------ (b) bounded posteriors
COUNTS, EXPOSURE = np.array([0.0, 2.0, 1.0]), np.ones(3)
GAMMA_SHAPE, GAMMA_RATE = 2.0, 1.0  # the Gamma prior on lam
SUCCESSES, TRIALS = 3.0, 10.0
NEG_COUNTS, NEG_EXPOSURE = np.array([1.0, 4.0]), np.full(2, 0.5)


def bounded_neg_log_likelihood(params, data):
    """-log L + -log prior (errordef 0.5) of three independent posteriors, one per bound kind:
    Poisson counts with rate lam >= 0 and a Gamma(2, 1) prior inside the objective;
    a binomial probability p in [0, 1]; and minus a Poisson rate, neg <= 0, flat prior."""
    counts, exposure, neg_counts, neg_exposure = data
    lam, p, neg = params["lam"].value, params["p"].value, params["neg"].value
    poisson = jnp.sum(lam * exposure - counts * jnp.log(lam * exposure))
    gamma_prior = -((GAMMA_SHAPE - 1) * jnp.log(lam) - GAMMA_RATE * lam)
    binomial = -(SUCCESSES * jnp.log(p) + (TRIALS - SUCCESSES) * jnp.log1p(-p))
    rate = -neg
    mirrored = jnp.sum(rate * neg_exposure - neg_counts * jnp.log(rate * neg_exposure))
    return poisson + gamma_prior + binomial + mirrored


BOUNDED_POSTERIORS = {
    "lam": stats.gamma(GAMMA_SHAPE + COUNTS.sum(), scale=1 / (GAMMA_RATE + EXPOSURE.sum())),
    "p": stats.beta(SUCCESSES + 1, TRIALS - SUCCESSES + 1),
    "neg": stats.gamma(NEG_COUNTS.sum() + 1, scale=1 / NEG_EXPOSURE.sum()),  # of -neg
}


@pytest.fixture(scope="module")
def bounded_result():
    params = {"lam": fitax.Parameter(1.0, min=0), "p": fitax.Parameter(0.5, min=0, max=1),
              "neg": fitax.Parameter(-3.0, max=0)}
    data = (COUNTS, EXPOSURE, NEG_COUNTS, NEG_EXPOSURE)
    return fitax.sample(bounded_neg_log_likelihood, params, args=data, errordef=0.5, seed=1)


@pytest.mark.parametrize("name", ["lam", "p", "neg"])
def test_bounded_posteriors_match_scipy(bounded_result, name):
    """Mean and q16/q50/q84 of Gamma(5, 4), Beta(4, 8) and -Gamma(6, 2) within 4 MC errors.
    These skewed posteriors need the log-Jacobian of the bound transforms: without it lam's
    mean would be that of Gamma(6, 4), 1.50 instead of 1.25, 9 MC errors away."""
    sign = -1.0 if name == "neg" else 1.0
    draws = sign * np.asarray(bounded_result.samples[name])
    truth = BOUNDED_POSTERIORS[name]
    assert abs(draws.mean() - truth.mean()) < mean_tolerance(draws, bounded_result.ess[name])
    table = bounded_result.summary()
    row = table[list(table["name"]).index(name)]
    for column, q in zip(("q16", "q50", "q84"), (0.16, 0.50, 0.84)):
        # for neg the q-quantile of -neg is minus the (1-q)-quantile of neg
        estimate = row[column] if sign > 0 else -row[{"q16": "q84", "q50": "q50", "q84": "q16"}[column]]
        x_q = truth.ppf(q)
        assert abs(estimate - x_q) < quantile_tolerance(draws, x_q, q, truth.pdf(x_q)), (column, estimate, x_q)
    assert np.all(draws > 0) and (name != "p" or np.all(draws < 1))
    assert bounded_result.r_hat[name] < 1.01


# ----------------------------------------------------------------- (d) diagnostics, warnings
def _ar1_chains(phi: float, shape, offsets, seed=0):
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=shape)
    draws = np.empty(shape)
    draws[:, 0] = noise[:, 0]
    for t in range(1, shape[1]):
        draws[:, t] = phi * draws[:, t - 1] + np.sqrt(1 - phi**2) * noise[:, t]
    return draws + np.asarray(offsets)[:, None]


@pytest.mark.parametrize("phi, offsets, draws, seed", [
    (0.0, [0, 0, 0, 0], 500, 0), (0.9, [0, 0, 0, 0], 1001, 0), (0.95, [0, 0], 300, 1), (0.5, [0, 0.3, 0, -0.3], 400, 2),
    (-0.3, [0.0], 200, 2),
])
def test_r_hat_and_ess_match_arviz(phi, offsets, draws, seed):
    """Against ArviZ's rank-normalised R-hat and bulk ESS on AR(1) chains (independent,
    correlated, shifted chains; an antithetic single chain whose ESS hits the n log10(n)
    cap). R-hat is the same formula (agrees to 1e-10); ESS differs in where the
    autocorrelation sum is truncated (NumPyro's Geyer sum vs ArviZ's): measured within
    2.1 % on 18 such cases, so 3 % is allowed."""
    az = pytest.importorskip("arviz")
    chains = _ar1_chains(phi, (len(offsets), draws), offsets, seed)
    if len(offsets) > 1:  # ArviZ gives no R-hat for one chain (fitax splits it in two)
        assert split_r_hat(chains) == pytest.approx(float(az.rhat(chains, method="rank")), abs=1e-10)
    assert effective_sample_size(chains) == pytest.approx(float(az.ess(chains, method="bulk")), rel=0.03)


def test_r_hat_flags_chains_that_disagree():
    chains = _ar1_chains(0.5, (4, 400), [0, 0, 0, 1.0])
    assert split_r_hat(chains) > 1.1
    assert split_r_hat(_ar1_chains(0.5, (4, 400), [0, 0, 0, 0])) < 1.01


def test_draws_shape_is_checked():
    with pytest.raises(ValueError, match="chains, draws >= 4"):
        split_r_hat(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="non-finite"):
        effective_sample_size(np.full((2, 10), np.nan))


def neg2_log_pathological(params):
    """A bimodal x (modes at +-4, sigma 0.3: chains cannot cross) beside Neal's funnel in
    (y, z): y ~ N(0, 3), z ~ N(0, exp(y / 2)), whose neck makes NUTS diverge."""
    x, y, z = (params[n].value for n in ("x", "y", "z"))
    bimodal = -2 * jnp.logaddexp(-0.5 * ((x - 4) / 0.3) ** 2, -0.5 * ((x + 4) / 0.3) ** 2)
    funnel = (y / 3) ** 2 + z**2 * jnp.exp(-y) + y
    return bimodal + funnel


def test_unmixed_chains_and_divergences_warn():
    params = {name: fitax.Parameter(value) for name, value in (("x", 0.0), ("y", 0.0), ("z", 0.1))}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fitax.sample(neg2_log_pathological, params, num_samples=300, num_warmup=200, num_chains=8, seed=2)
    messages = [str(w.message) for w in caught]
    assert result.r_hat["x"] > 1.5  # chains split between the modes
    assert any("R-hat > 1.01" in m and "'x'" in m for m in messages), messages
    assert result.divergences.sum() > 0
    assert any("divergent transitions" in m for m in messages), messages


# ------------------------------------------------------------------------ (e) bad input
@pytest.mark.parametrize("kwargs, match", [
    ({"num_chains": 0}, "num_chains must be an integer >= 1"),
    ({"num_chains": 2.0}, "num_chains must be an integer >= 1"),
    ({"num_samples": 3}, "num_samples must be an integer >= 4"),
    ({"num_warmup": -1}, "num_warmup must be an integer >= 0"),
    ({"errordef": 0.0}, "errordef must be > 0"),
    ({"target_accept": 1.0}, "target_accept must be in"),
])
def test_bad_settings_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fitax.sample(chi2_line, line_params(), args=(X, Y, SIGMA), **kwargs)


def test_bad_start_values_raise():
    with pytest.raises(ValueError, match="parameter 'b' has a non-finite start value"):
        fitax.sample(chi2_line, {"a": fitax.Parameter(0.0), "b": fitax.Parameter(np.nan, prior=SLOPE_PRIOR)},
                     args=(X, Y, SIGMA))
    with pytest.raises(ValueError, match="parameter 'a' starts at -1, outside its bounds"):
        fitax.sample(chi2_line, {"a": fitax.Parameter(-1.0, min=0), "b": fitax.Parameter(1.0)}, args=(X, Y, SIGMA))
    with pytest.raises(ValueError, match="no free parameters"):
        fitax.sample(chi2_line, fitax.freeze(line_params(), "a", "b"), args=(X, Y, SIGMA))


def test_non_finite_log_density_at_start_raises():
    """Data with a NaN make the objective NaN: the same compiled sampler (new data of the
    same shapes) stops before drawing and says so."""
    y = Y.copy()
    y[3] = np.nan
    with pytest.raises(ValueError, match="log posterior is nan at the start of chain 0"):
        fitax.sample(chi2_line, line_params(), args=(X, y, SIGMA))


def test_bad_init_raises(line_fit):
    other = {"a": fitax.Parameter(0.0), "c": fitax.Parameter(1.0)}
    with pytest.raises(ValueError, match=r"init was fitted with free parameters \['a', 'b'\]"):
        fitax.sample(lambda p: p["a"].value ** 2 + p["c"].value ** 2, other, init=line_fit)
    with pytest.raises(TypeError, match="init must be a fitax.FitResult"):
        fitax.sample(chi2_line, line_params(), args=(X, Y, SIGMA), init={"a": 1.0})
    import dataclasses

    singular = dataclasses.replace(line_fit, covariance=np.full((2, 2), np.nan))
    with pytest.raises(ValueError, match="positive-definite covariance"):
        fitax.sample(chi2_line, line_params(), args=(X, Y, SIGMA), init=singular)


# ------------------------------------------------------------------------------ outputs
def test_summary_write_and_repr(line_result, tmp_path):
    from astropy.table import Table

    table = line_result.summary()
    assert table.colnames == ["name", "mean", "std", "q16", "q50", "q84", "r_hat", "ess"]
    b = np.asarray(line_result.samples["b"]).ravel()
    row = table[1]
    assert row["name"] == "b" and row["mean"] == pytest.approx(b.mean(), rel=1e-12)
    assert row["q84"] == pytest.approx(np.quantile(b, 0.84), rel=1e-12)
    path = tmp_path / "posterior.ecsv"
    line_result.write(path)
    read = Table.read(path, format="ascii.ecsv")
    np.testing.assert_allclose(read["std"], table["std"], rtol=1e-15)
    assert read.meta["num_chains"] == 4 and read.meta["divergences"] == [0, 0, 0, 0]
    assert os.listdir(tmp_path) == ["posterior.ecsv"]  # the temporary file was renamed
    text = repr(line_result)
    assert text.startswith("SampleResult(num_chains=4, num_samples=1000, divergences=0")
    assert "r_hat" in text and "\n  b " in text
    with pytest.raises((TypeError, AttributeError)):
        line_result.samples["a"] = np.zeros((4, 1000))
    with pytest.raises(ValueError, match="read-only"):
        line_result.samples["a"][0, 0] = 1.0


def test_to_arviz(line_result):
    az = pytest.importorskip("arviz")
    data = line_result.to_arviz()
    assert isinstance(data, az.InferenceData)
    assert data.posterior["b"].shape == (4, 1000)
    np.testing.assert_array_equal(data.posterior["b"].values, line_result.samples["b"])
    assert int(data.sample_stats["diverging"].sum()) == 0


def test_to_arviz_without_arviz_says_how_to_install(line_result, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "arviz", None)
    with pytest.raises(ImportError, match="pip install arviz"):
        line_result.to_arviz()


def test_plot_corner(line_result, tmp_path):
    path = tmp_path / "corner.png"
    figure = line_result.plot_corner(path)
    assert path.stat().st_size > 10_000
    axes = np.reshape(figure.axes, (2, 2))
    assert not axes[0, 1].axison and axes[1, 0].get_xlabel() == "a" and axes[1, 0].get_ylabel() == "b"
    assert len(axes[1, 0].collections) >= 2  # the 2-d histogram and its contours


# --------------------------------------------------- (c) a gamma fit's Laplace approximation
@pytest.mark.slow
# 2 x 250 draws keep the test short (88 s); R-hat estimates from so few scatter by ~0.01, so the
# 1.01 warning may fire (it did for 3 of 10 parameters); the test asserts R-hat < 1.05.
@pytest.mark.filterwarnings("ignore:the chains have not mixed")
def test_gamma_posterior_agrees_with_laplace_approximation():
    """The N = 1 simulated gamma dataset (10 free parameters, ~1e4 counts): the posterior is
    nearly Gaussian, so NUTS must reproduce the fit's values and errors (the Laplace
    approximation) up to small genuine differences plus Monte Carlo error.

    Genuine differences, measured with 4 chains x 1000 draws (MC error 0.012 sigma): the
    posterior means sit 0.01-0.12 sigma above the best fit (largest for the Gaussian
    source's width, whose posterior is skewed as widths are), the stds within 2.3 % of the
    errors. Tolerances: means within 0.13 sigma plus 4 MC errors of the mean (about 0.28
    sigma with these 2 x 250 draws); stds within 3 % plus 4 MC errors of a std (about 14 %
    here; 2 x 300 draws gave 0.95-1.08 times the errors). A posterior in the wrong units
    (errordef) would be off by a factor sqrt(2) in every std.
    """
    from fitax.gamma import Datasets, fit, read_models, sample

    datasets = Datasets.read(shared_data("gamma", "sim", "datasets_n1.yaml"))
    best = fit(datasets, read_models(shared_data("gamma", "sim", "models_start_n1.yaml")))
    assert best.converged
    # fitax.gamma.sample: fitax.sample on the fit's Cash statistic, bound at the best fit, init=best
    result = sample(datasets, best, num_samples=250, num_warmup=150, num_chains=2, seed=0)
    assert result.names == best.free_names and len(result.names) == 10
    assert result.divergences.sum() == 0
    for name in result.names:
        draws, error = np.asarray(result.samples[name]), best.errors[name]
        # a stuck or badly adapted sampler gives an ESS of a few tens; the lowest here is 175 (amplitude)
        # (the tolerances below grow with 1/sqrt(ESS), so a low ESS loosens nothing silently)
        assert result.ess[name] > 150 and result.r_hat[name] < 1.05, name
        assert abs(draws.mean() - best.values[name]) < 0.13 * error + mean_tolerance(draws, result.ess[name]), name
        assert abs(draws.std() - error) < 0.03 * error + std_tolerance(draws), name
