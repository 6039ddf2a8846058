"""A PSF that changes across the quadrant: the polynomial shape fit, its degree chosen by the
data, and star fits with the PSF at each star's position, against a simulation with known
truth (and the constant PSF that a pipeline without it would use)."""

import numpy as np
import pytest
from astropy.io import fits

from fitax.photometry.pipeline import ImageData, process_image
from fitax.photometry.psf import GaussianPSF, MoffatPSF
from fitax.photometry.simulate import simulate_image
from fitax.photometry.starfit import fit_stars
from fitax.photometry.varying import PerStarPSF, VaryingPSF, polynomial_terms, take_stars

SHAPE = (600, 600)
TRUE_PSF = VaryingPSF.from_function(
    "gaussian", lambda u, v: {"sigma_x": 1.4 + 0.14 * u + 0.05 * v, "sigma_y": 1.35 + 0.12 * v + 0.03 * u * u, "rho": 0.08 * u},
    degree=2, shape=SHAPE)


def _cell_biases(catalog, truth, cells=4):
    """Median relative flux error of unflagged stars in each cell of a cells x cells grid."""
    x, y, true_flux = np.asarray(truth["x"]), np.asarray(truth["y"]), np.asarray(truth["flux"])
    error = np.asarray(catalog["flux"]) / true_flux - 1
    ok = np.asarray(catalog["flags"]) == 0
    column, row = (x * cells // SHAPE[1]).astype(int), (y * cells // SHAPE[0]).astype(int)
    return np.array([[np.median(error[ok & (row == i) & (column == j)]) for j in range(cells)] for i in range(cells)])


@pytest.fixture(scope="module")
def quadrant():
    low, high = TRUE_PSF.fwhm_range(SHAPE)
    assert high / low - 1 > 0.15  # the floor: FWHM varying by >= 15% across the field
    image, truth = simulate_image(SHAPE, 700, psf=TRUE_PSF, flux_range=(2e4, 1e6), flux_slope=1.3, seed=1)
    return image, truth


@pytest.mark.slow
def test_varying_psf_fluxes_are_unbiased_in_every_cell(quadrant):
    image, truth = quadrant
    data = ImageData(image, np.zeros(image.shape, bool), fits.Header(), 10.0)
    catalog, shape = process_image(data, positions=(truth["x"], truth["y"]), psf="gaussian")
    assert shape.degree == 2 and catalog.meta["PSFDEG"] == 2  # chosen by the data
    assert catalog.meta["PSFFWMAX"] / catalog.meta["PSFFWMIN"] - 1 > 0.15
    # fitted shape within 0.5% of the truth over the field
    xs, ys = np.meshgrid(np.linspace(0, 599, 7), np.linspace(0, 599, 7))
    for name, values in TRUE_PSF.values_at(xs.ravel(), ys.ravel()).items():
        fitted = shape.psf.values_at(xs.ravel(), ys.ravel())[name]
        np.testing.assert_allclose(fitted, values, atol=0.005 * 1.4 if name != "rho" else 0.005)
    varying = _cell_biases(catalog, truth)
    constant, _ = process_image(data, positions=(truth["x"], truth["y"]), psf="gaussian", psf_degree=0)
    fixed = _cell_biases(constant, truth)
    # ~30 stars of 2e4-1e6 e- per cell, 0.1-0.7% each: a cell's median is uncertain by ~0.07%
    assert np.abs(varying).max() < 0.003 and abs(np.median(varying)) < 0.001
    assert np.abs(fixed).max() > 0.03  # the constant PSF: several percent off at the corners


def test_per_star_psfs_reproduce_a_constant_psf():
    """The per-star path (a VaryingPSF of degree 1 with no variation) gives the constant PSF's
    fits exactly, and a PerStarPSF indexes like its stars."""
    image, truth = simulate_image((200, 200), 60, psf=MoffatPSF(2.4, 3.0), flux_range=(1e4, 1e5), seed=2)
    constant = MoffatPSF(2.4, 3.2)
    flat = VaryingPSF.constant(constant, 1, image.shape)
    a = fit_stars(image, truth["x"], truth["y"], psf=constant, read_noise=10.0)
    b = fit_stars(image, truth["x"], truth["y"], psf=flat, read_noise=10.0)
    for name in ("flux", "x", "y", "flux_err"):
        np.testing.assert_allclose(b[name], a[name], rtol=1e-9)
    stars = flat.at(np.array([1.0, 2.0, 3.0]), np.array([5.0, 5.0, 5.0]))
    assert isinstance(stars, PerStarPSF) and stars.n == 3 and take_stars(stars, [0, 2]).n == 2
    assert len(polynomial_terms(2)) == 6 and polynomial_terms(1) == ((0, 0), (1, 0), (0, 1))
    np.testing.assert_allclose(flat.at_point(10.0, 150.0).gamma, 2.4)


def test_constant_image_keeps_degree_zero():
    image, truth = simulate_image((300, 300), 200, psf=GaussianPSF(1.5, 1.4, 0.05), flux_range=(1e4, 1e6), flux_slope=1.3, seed=4)
    data = ImageData(image, np.zeros(image.shape, bool), fits.Header(), 10.0)
    catalog, shape = process_image(data, positions=(truth["x"], truth["y"]), psf="gaussian")
    assert shape.degree == 0 and catalog.meta["PSFDEG"] == 0 and "PSFSIGX" in catalog.meta


@pytest.mark.slow  # 43 s; make test keeps the degree-selection checks
def test_field_curvature_without_linear_terms_is_found():
    """Widths growing towards every edge (focus, field curvature: sigma = 1.4 + 0.03 (u^2 + v^2),
    no linear term, 4% wider in the corners): degree 1 does not pay for its parameters (chi2
    16 lower for a BIC price of 53, measured), degree 2 does (1556 for 133), and is chosen; a
    choice that stopped at the first degree not paying for itself kept the constant PSF."""
    from fitax.photometry.psfshape import choose_psf_degree, fit_psf_shape, select_psf_stars

    shape = (400, 400)
    curved = VaryingPSF.from_function("gaussian", lambda u, v: {"sigma_x": 1.4 + 0.03 * (u * u + v * v), "sigma_y": 1.4 + 0.03 * (u * u + v * v),
                                                               "rho": 0.0 * u}, degree=2, shape=shape)
    image, truth = simulate_image(shape, 250, psf=curved, flux_range=(2e4, 1e6), flux_slope=1.3, seed=5)
    x, y = np.asarray(truth["x"]), np.asarray(truth["y"])
    chosen = select_psf_stars(image, x, y, n_max=32)
    constant = fit_psf_shape(image, x[chosen], y[chosen], read_noise=10.0, kind="gaussian")
    best = choose_psf_degree(image, constant, read_noise=10.0)
    assert best.degree == 2
    low, high = best.psf.fwhm_range(shape)
    true_low, true_high = curved.fwhm_range(shape)
    assert abs(low / true_low - 1) < 0.01 and abs(high / true_high - 1) < 0.01


@pytest.mark.parametrize("kind, function", [
    ("gaussian", lambda u, v: {"sigma_x": 1.4 + 0.14 * u, "sigma_y": 1.35 + 0.12 * v * u, "rho": 0.08 * u}),
    ("moffat", lambda u, v: {"gamma": 2.0 + 0.2 * u * v, "alpha": 2.5 + 0.3 * v}),
])
def test_host_positions_give_the_jax_values_without_tracing(kind, function):
    """The shape at host (NumPy) positions is computed with NumPy, as the JAX path computes
    it for traced ones (to 1e-14), and traces no program."""
    import jax.numpy as jnp
    from conftest import traced_programs

    psf = VaryingPSF.from_function(kind, function, degree=2, shape=SHAPE)
    x, y = np.random.default_rng(3).uniform(0, 599, (2, 23))
    with traced_programs() as traced:
        host = psf.values_at(x, y)
    on_device = psf.values_at(jnp.asarray(x), jnp.asarray(y))
    assert traced == []
    for name in host:
        assert isinstance(host[name], np.ndarray)
        np.testing.assert_allclose(host[name], np.asarray(on_device[name]), rtol=1e-14)
