"""Spatial models against Gammapy 2.1's evaluate_geom on a Galactic WCS grid."""

import numpy as np
import pytest

from fitax.gamma import spatial

CASES = [
    ("GaussianSpatialModel", dict(lon_0=0.2, lat_0=0.1, sigma=0.2)),
    ("GaussianSpatialModel", dict(lon_0=-0.3, lat_0=-0.2, sigma=0.3, e=0.7, phi=35.0)),
    ("DiskSpatialModel", dict(lon_0=0.1, lat_0=-0.1, r_0=0.3)),
    ("DiskSpatialModel", dict(lon_0=0.1, lat_0=-0.1, r_0=0.4, e=0.6, phi=120.0, edge_width=0.1)),
    ("ShellSpatialModel", dict(lon_0=0.0, lat_0=0.05, radius=0.3, width=0.1)),
    ("ConstantSpatialModel", dict(value=3.0)),
]


@pytest.mark.parametrize("name,values", CASES)
def test_brightness_matches_gammapy(name, values):
    pytest.importorskip("gammapy", reason="Gammapy (test extra) not installed")
    from gammapy.maps import WcsGeom
    from gammapy.modeling import models

    geom = WcsGeom.create(skydir=(0, 0), frame="galactic", binsz=0.02, width=(1.6, 1.2))
    theirs = getattr(models, name)(frame="galactic")
    for key, value in values.items():
        getattr(theirs, key).value = value
    lon, lat = (c.to_value("deg") for c in (geom.get_coord().lon, geom.get_coord().lat))
    expected = theirs.evaluate_geom(geom).to_value("sr-1")
    ours = np.asarray(getattr(spatial, name)(**values, frame="galactic").evaluate(lon, lat))
    np.testing.assert_allclose(ours, expected, rtol=1e-9, atol=1e-9 * expected.max())


def test_normalised_on_the_sphere_and_differentiable():
    import jax

    # a fine grid around each model sums to one (solid angle of each cell ~ cos(lat) dlon dlat)
    step = 0.005
    lon, lat = np.meshgrid(np.arange(-2, 2, step), np.arange(-2, 2, step))
    cell = np.deg2rad(step) ** 2 * np.cos(np.deg2rad(lat))
    for name, values in CASES[:-1]:
        model = getattr(spatial, name)(**values)
        assert float(np.sum(model.evaluate(lon, lat) * cell)) == pytest.approx(1.0, abs=3e-3), name
    gauss = spatial.GaussianSpatialModel(lon_0=0.2, lat_0=0.1, sigma=0.2)
    grads = jax.grad(lambda m: m.evaluate(0.3, 0.15))(gauss)
    step = 1e-6
    for key in ("lon_0", "lat_0", "sigma"):
        shifted = lambda d: float(spatial.GaussianSpatialModel(**{"lon_0": 0.2, "lat_0": 0.1, "sigma": 0.2, key: getattr(gauss, key).value + d}).evaluate(0.3, 0.15))  # noqa: E731
        assert float(getattr(grads, key).value) == pytest.approx((shifted(step) - shifted(-step)) / (2 * step), rel=1e-5)


@pytest.mark.parametrize("oversampling", [1, 4])
def test_pixel_integration_matches_gammapy_integrate_geom(oversampling):
    pytest.importorskip("gammapy", reason="Gammapy (test extra) not installed")
    import astropy.units as u
    from gammapy.maps import WcsGeom
    from gammapy.modeling import models

    from fitax.gamma.geometry import SkyGrid, integrate_spatial

    geom = WcsGeom.create(skydir=(0, 0), frame="galactic", binsz=0.02, width=(1.6, 1.2))
    theirs = models.GaussianSpatialModel(lon_0=0.2 * u.deg, lat_0=0.1 * u.deg, sigma=0.03 * u.deg, frame="galactic")
    expected = theirs.integrate_geom(geom, oversampling_factor=oversampling).data
    grid = SkyGrid.from_wcs(geom.wcs, geom.data_shape, oversampling)
    ours = np.asarray(integrate_spatial(spatial.GaussianSpatialModel(0.2, 0.1, 0.03, frame="galactic"), grid))
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-5 * expected.max())


def test_oversampling_converges_for_a_source_smaller_than_a_pixel():
    from astropy.wcs import WCS

    from fitax.gamma.geometry import SkyGrid, integrate_spatial

    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["GLON-CAR", "GLAT-CAR"]
    wcs.wcs.cdelt = [-0.02, 0.02]
    wcs.wcs.crpix = [20.5, 20.5]
    model = spatial.GaussianSpatialModel(0.004, -0.003, 0.006, frame="galactic")  # sigma = 0.3 pixel
    exact = np.asarray(integrate_spatial(model, SkyGrid.from_wcs(wcs, (40, 40), 40)))
    coarse = np.asarray(integrate_spatial(model, SkyGrid.from_wcs(wcs, (40, 40), 1)))
    fine = np.asarray(integrate_spatial(model, SkyGrid.from_wcs(wcs, (40, 40), 10)))
    assert np.abs(coarse - exact).max() > 0.05 * exact.max()  # why oversampling is needed
    assert np.abs(fine - exact).max() < 5e-3 * exact.max()
    assert exact.sum() == pytest.approx(1.0, abs=1e-4)
