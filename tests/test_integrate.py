"""Quadrature against scipy and exact results."""

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate as si, special

from fitax import integrate


def test_simpson_matches_scipy_for_power_times_exponential():
    exponents = np.arange(200) / 10.0  # x**(n/10) e**-x, n < 200
    a, b = 0.0, 10.0
    ours = integrate.simpson(lambda x: x ** exponents[:, None] * jnp.exp(-x), np.zeros(200), np.full(200, b), 100)
    x = np.linspace(a, b, 101)
    reference = np.array([si.simpson(x**p * np.exp(-x), x=x) for p in exponents])
    np.testing.assert_allclose(ours, reference, rtol=1e-10)
    # and the rule itself is accurate where the integrand is smooth: vs the incomplete gamma
    # function (x**p with p < 4 has a singular 4th derivative at 0, which limits Simpson there)
    exact = special.gamma(exponents + 1) * special.gammainc(exponents + 1, b)
    np.testing.assert_allclose(ours[40:], exact[40:], rtol=1e-6)
    np.testing.assert_allclose(ours[10:], exact[10:], rtol=2e-4)


def test_gauss_legendre_is_exact_for_polynomials_of_degree_2n_minus_1():
    coeffs = np.random.default_rng(0).normal(size=16)  # degree 15 = 2*8 - 1
    poly = np.polynomial.Polynomial(coeffs)
    edges = np.linspace(-2, 3, 6)
    ours = integrate.integrate_bins(lambda x: jnp.polyval(jnp.asarray(coeffs[::-1]), x), edges, "gauss_legendre", 8)
    anti = poly.integ()
    np.testing.assert_allclose(ours, anti(edges[1:]) - anti(edges[:-1]), rtol=1e-12)


def test_gauss_legendre_matches_scipy_quad_on_power_law_bins():
    edges = np.geomspace(0.1, 100.0, 25)
    ours = integrate.integrate_bins(lambda e: e**-2.3 * jnp.exp(-e / 30.0), edges, "gauss_legendre", 12)
    reference = [si.quad(lambda e: e**-2.3 * np.exp(-e / 30.0), lo, hi, epsabs=0, epsrel=1e-13)[0] for lo, hi in zip(edges[:-1], edges[1:])]
    np.testing.assert_allclose(ours, reference, rtol=1e-9)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="even number"):
        integrate.simpson(jnp.sin, 0.0, 1.0, 5)
    with pytest.raises(ValueError, match="unknown method"):
        integrate.integrate_bins(jnp.sin, [0.0, 1.0], "trapezoid")
