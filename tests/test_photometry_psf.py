"""Pixel-integrated PSF models against direct numerical integration (scipy dblquad)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

from fitax.photometry import gaussian_prf, moffat_fwhm, moffat_points, moffat_prf

PIXELS = [(0.0, 0.0), (0.3, -0.7), (1.6, 2.2), (-3.1, 0.4)]


def _pixel_integral(density, dx, dy):
    value, _ = integrate.dblquad(lambda y, x: density(x, y), dx - 0.5, dx + 0.5, dy - 0.5, dy + 0.5, epsabs=1e-13, epsrel=1e-11)
    return value


@pytest.mark.parametrize("rho", [0.0, 0.45, -0.8])
def test_gaussian_prf_matches_dblquad(rho):
    sx, sy = 1.15, 0.95
    cov_inv = np.linalg.inv([[sx**2, rho * sx * sy], [rho * sx * sy, sy**2]])
    norm = 1 / (2 * np.pi * sx * sy * np.sqrt(1 - rho**2))

    def density(x, y):
        r = np.array([x, y])
        return norm * np.exp(-0.5 * r @ cov_inv @ r)

    for dx, dy in PIXELS:
        expected = _pixel_integral(density, dx, dy)
        assert float(gaussian_prf(dx, dy, sx, sy, rho)) == pytest.approx(expected, rel=1e-7, abs=1e-12)


@pytest.mark.parametrize("ellipticity,theta", [(0.0, 0.0), (0.2, 0.5)])
def test_moffat_prf_matches_dblquad(ellipticity, theta):
    gamma, alpha = 2.45, 3.0
    g1, g2 = gamma, gamma * (1 - ellipticity)

    def density(x, y):
        u = np.cos(theta) * x + np.sin(theta) * y
        v = -np.sin(theta) * x + np.cos(theta) * y
        return (alpha - 1) / (np.pi * g1 * g2) * (1 + (u / g1) ** 2 + (v / g2) ** 2) ** -alpha

    for dx, dy in PIXELS:
        expected = _pixel_integral(density, dx, dy)
        assert float(moffat_prf(dx, dy, gamma, alpha, ellipticity, theta)) == pytest.approx(expected, rel=2e-5)


@pytest.mark.parametrize("gamma", [0.8, 1.2, 1.7, 2.3, 3.5])
def test_moffat_points_keep_flux_weighted_error_below_1e5(gamma):
    # the quadrature order star fits use: the flux a PSF fit would get wrong, sum(P dP)/sum(P^2),
    # against dblquad on the central 7x7 pixels (a star centred on a pixel corner and off-centre)
    alpha = 3.0
    density = lambda x, y: (alpha - 1) / (np.pi * gamma**2) * (1 + (x * x + y * y) / gamma**2) ** -alpha  # noqa: E731
    for cx, cy in [(0.5, 0.5), (0.1, -0.3)]:
        grid = np.arange(-3, 4, dtype=float)
        exact = np.array([[_pixel_integral(density, gx - cx, gy - cy) for gx in grid] for gy in grid])
        approx = np.asarray(moffat_prf(grid[None, :] - cx, grid[:, None] - cy, gamma, alpha, points=moffat_points(gamma)))
        assert abs(np.sum(exact * (approx - exact)) / np.sum(exact**2)) < 1e-5


def test_point_sampling_would_bias_the_flux():
    # why PRFs: the centre pixel of a 2.5-pixel-FWHM Moffat differs from its point sample by >1%
    gamma, alpha = 2.45, 3.0
    sampled = (alpha - 1) / (np.pi * gamma**2)
    assert abs(float(moffat_prf(0.0, 0.0, gamma, alpha)) / sampled - 1) > 0.01
    assert float(moffat_fwhm(gamma, alpha)) == pytest.approx(2.50, abs=0.01)


def test_fwhm_of_a_moffat_fitted_to_a_gaussian_psf():
    # A Moffat fitted to a Gaussian star runs to alpha ~ 1e18 with gamma ~ sigma sqrt(2 alpha):
    # its FWHM is the Gaussian's 2 sqrt(2 ln 2) sigma, not the 0 that 2**(1/alpha) - 1 rounds to.
    from fitax.photometry import MoffatPSF
    from fitax.photometry.varying import VaryingPSF

    sigma, alpha = 1.5, 1.7e18
    gamma = sigma * np.sqrt(2 * alpha)
    gaussian_fwhm = 2 * np.sqrt(2 * np.log(2)) * sigma
    assert float(moffat_fwhm(gamma, alpha)) == pytest.approx(gaussian_fwhm, rel=1e-9)
    assert MoffatPSF(gamma, alpha).fwhm == pytest.approx(gaussian_fwhm, rel=1e-9)
    low, high = VaryingPSF.constant(MoffatPSF(gamma, alpha), 1, (100, 100)).fwhm_range((100, 100))
    assert low == pytest.approx(gaussian_fwhm, rel=1e-6) and high == pytest.approx(gaussian_fwhm, rel=1e-6)


def test_total_flux_and_gradients():
    yy, xx = jnp.mgrid[-15:16, -15:16].astype(float)
    total = gaussian_prf(xx - 0.2, yy, 1.2, 0.9, 0.3).sum()
    assert float(total) == pytest.approx(1.0, abs=1e-10)
    # the centroid gradient of a symmetric star at a pixel centre vanishes; finite elsewhere
    flux_in_centre = lambda x0: moffat_prf(0.0 - x0, 0.0, 2.45, 3.0)  # noqa: E731
    assert abs(float(jax.grad(flux_in_centre)(0.0))) < 1e-12
    # The gradient off-centre against central finite differences (step 1e-5: truncation
    # ~1e-10, round-off ~1e-11 of a sum of O(1) values).
    energy = lambda p: jnp.sum(gaussian_prf(xx - p[0], yy - p[1], p[2], p[3], p[4]) ** 2)  # noqa: E731
    point = jnp.array([0.3, -0.2, 1.1, 1.0, 0.2])
    step = 1e-5
    finite_differences = [(energy(point.at[i].add(step)) - energy(point.at[i].add(-step))) / (2 * step) for i in range(5)]
    np.testing.assert_allclose(jax.grad(energy)(point), finite_differences, rtol=1e-6, atol=1e-9)


def test_correlation_gradient_at_zero_is_not_lost():
    # d/d rho of the flux in the (1, 1) pixel is positive (mass moves onto the diagonal)
    grad_at_zero = jax.grad(lambda r: gaussian_prf(1.0, 1.0, 1.0, 1.0, r))(0.0)
    step = 1e-4
    numeric = (float(gaussian_prf(1.0, 1.0, 1.0, 1.0, step)) - float(gaussian_prf(1.0, 1.0, 1.0, 1.0, -step))) / (2 * step)
    assert float(grad_at_zero) == pytest.approx(numeric, rel=1e-5) and numeric > 0


def test_psf_objects_match_the_kernels():
    from fitax.photometry import GaussianPSF, MoffatPSF

    yy, xx = np.mgrid[-5:6, -5:6]
    dx, dy = xx - 0.3, yy + 0.2
    circular = MoffatPSF(2.45, 3.0)
    np.testing.assert_allclose(circular.prf(dx, dy), moffat_prf(dx, dy, 2.45, 3.0, points=circular.points), rtol=1e-12)
    elliptical = MoffatPSF(2.45, 3.0, ellipticity=0.2, theta=0.5)
    np.testing.assert_allclose(elliptical.prf(dx, dy), moffat_prf(dx, dy, 2.45, 3.0, 0.2, 0.5, points=elliptical.points), rtol=1e-12)
    assert not np.allclose(elliptical.prf(dx, dy), circular.prf(dx, dy), atol=1e-4)
    np.testing.assert_allclose(GaussianPSF(1.2, 0.9, 0.3).prf(dx, dy), gaussian_prf(dx, dy, 1.2, 0.9, 0.3), rtol=1e-12)
