"""Star fitting and forced photometry on simulated images with known truth."""

import numpy as np
import pytest

from fitax.photometry import FAILURE_FLAGS, GaussianPSF, MoffatPSF
from fitax.photometry.simulate import simulate_image
from fitax.photometry.starfit import (
    FLAG_MASKED,
    FLAG_NONPOSITIVE_FLUX,
    fit_stars,
    forced_photometry,
)

PSF = dict(psf=MoffatPSF(2.45, 3.0), read_noise=10.0)


@pytest.fixture(scope="module")
def scene():
    image, truth = simulate_image((600, 600), 300, flux_range=(1e3, 1e6), seed=1)
    rng = np.random.default_rng(0)
    x0 = np.asarray(truth["x"]) + rng.normal(0, 0.3, len(truth))
    y0 = np.asarray(truth["y"]) + rng.normal(0, 0.3, len(truth))
    return image, truth, x0, y0


def _isolated(truth, radius=8.0):
    xy = np.c_[truth["x"], truth["y"]]
    distance = np.hypot(*(xy[:, None, :] - xy[None, :, :]).transpose(2, 0, 1))
    np.fill_diagonal(distance, np.inf)
    return distance.min(axis=1) > radius


def _robust_std(a):
    return 1.4826 * np.median(np.abs(a - np.median(a)))


@pytest.mark.parametrize("method", ["free", "forced"])
def test_fluxes_are_unbiased_with_calibrated_errors(scene, method):
    image, truth, x0, y0 = scene
    if method == "free":
        catalog = fit_stars(image, x0, y0, **PSF)
    else:
        catalog = forced_photometry(image, truth["x"], truth["y"], **PSF)
    ok = _isolated(truth) & ((catalog["flags"] & FAILURE_FLAGS) == 0)
    flux, true_flux, error = (np.asarray(c)[ok] for c in (catalog["flux"], truth["flux"], catalog["flux_err"]))
    bright = true_flux > 1e4
    assert bright.sum() > 20
    assert abs(np.median((flux - true_flux)[bright] / true_flux[bright])) < 0.002  # issue 4: within 0.2%
    assert 0.9 < _robust_std((flux - true_flux) / error) < 1.1
    assert np.all(np.isfinite(error))


def test_positions_of_bright_isolated_stars(scene):
    image, truth, x0, y0 = scene
    catalog = fit_stars(image, x0, y0, **PSF)
    ok = _isolated(truth) & (np.asarray(truth["flux"]) > 1e4)
    dx = np.asarray(catalog["x"] - truth["x"])[ok]
    dy = np.asarray(catalog["y"] - truth["y"])[ok]
    assert np.sqrt(np.mean(dx**2 + dy**2) / 2) < 0.03  # photutils reference: 0.020 px
    assert 0.7 < _robust_std(dx / np.asarray(catalog["x_err"])[ok]) < 1.3


def test_masked_pixels_and_edges_are_flagged_not_crashing():
    image, truth = simulate_image((120, 120), 6, flux_range=(2e4, 5e4), seed=3)
    x = np.r_[np.asarray(truth["x"]), 1.0]  # the last star is cut by the image edge
    y = np.r_[np.asarray(truth["y"]), 60.0]
    mask = np.zeros(image.shape, dtype=bool)
    mask[:, int(round(x[0]))] = True  # a bad column through the first star
    catalog = fit_stars(image, x, y, mask=mask, **PSF)
    assert catalog["flags"][0] & FLAG_MASKED and catalog["flags"][-1] & FLAG_MASKED
    assert np.all(np.isfinite(catalog["flux"]))
    # the masked star is still measured, from its other pixels
    assert abs(catalog["flux"][0] / truth["flux"][0] - 1) < 5 * catalog["flux_err"][0] / truth["flux"][0]


def test_empty_position_gives_flagged_zero_flux():
    image, truth = simulate_image((100, 100), 1, flux_range=(1e4, 2e4), seed=4)
    # sky only at these positions: fluxes scatter around 0, and exactly the non-positive
    # ones carry flag 4
    grid = np.arange(12.0, 90.0, 13.0)
    xs, ys = (a.ravel() for a in np.meshgrid(grid, grid))
    far = np.hypot(xs - truth["x"][0], ys - truth["y"][0]) > 15
    catalog = forced_photometry(image, xs[far], ys[far], **PSF)
    flux = np.asarray(catalog["flux"])
    assert np.all(np.abs(flux) < 4 * np.asarray(catalog["flux_err"]))
    assert np.array_equal((np.asarray(catalog["flags"]) & FLAG_NONPOSITIVE_FLUX) > 0, flux <= 0)


def test_positions_outside_the_image_are_a_clear_error():
    image = np.zeros((50, 60))
    with pytest.raises(ValueError, match=r"outside the 60x50 image, e.g. row 1: x=70.00, y=10.00"):
        fit_stars(image, [10.0, 70.0], [10.0, 10.0], **PSF)
    with pytest.raises(ValueError, match="fit_shape must be an odd number"):
        forced_photometry(image, [10.0], [10.0], fit_shape=10, **PSF)


def test_psf_shape_is_recovered_from_bright_isolated_stars():
    from fitax.photometry.psfshape import fit_psf_shape, select_psf_stars

    image, truth = simulate_image((400, 400), 80, gamma=2.1, alpha=3.4, flux_range=(2e4, 3e5), seed=6)
    chosen = select_psf_stars(image, truth["x"], truth["y"], n_max=25)
    assert len(chosen) >= 10
    shape = fit_psf_shape(image, np.asarray(truth["x"])[chosen], np.asarray(truth["y"])[chosen], read_noise=10.0)
    assert abs(shape.values["gamma"] - 2.1) < 4 * shape.errors["gamma"]
    assert abs(shape.values["alpha"] - 3.4) < 4 * shape.errors["alpha"]
    assert "FWHM" in repr(shape)


@pytest.mark.slow  # ~95 s
def test_ghost_stars_that_pad_the_shape_fit_change_nothing(monkeypatch):
    """The joint shape fits pad their stars to a multiple of STAR_BUCKET with masked ghost
    stars (so that images share compiled fits): values, errors and chi2 of the constant and
    the degree-1 fit equal those without ghosts (measured: 1e-12 relative)."""
    from fitax.photometry import psfshape

    image, truth = simulate_image((300, 300), 60, psf=GaussianPSF(1.5, 1.4, 0.05), flux_range=(2e4, 3e5), seed=6)
    chosen = psfshape.select_psf_stars(image, truth["x"], truth["y"], n_max=13)
    x, y = np.asarray(truth["x"])[chosen], np.asarray(truth["y"])[chosen]
    assert len(chosen) % psfshape.STAR_BUCKET != 0  # so that ghosts are added

    def fits():
        constant = psfshape.fit_psf_shape(image, x, y, read_noise=10.0, kind="gaussian")
        varying = psfshape.fit_varying_psf_shape(image, constant, degree=1, read_noise=10.0)
        return [(shape.values, shape.errors, float(shape.result.stat)) for shape in (constant, varying)]

    padded = fits()
    monkeypatch.setattr(psfshape, "STAR_BUCKET", 1)
    for (values, errors, stat), (values_1, errors_1, stat_1) in zip(padded, fits()):
        for name in values:
            assert values[name] == pytest.approx(values_1[name], rel=1e-9, abs=1e-12)
            assert errors[name] == pytest.approx(errors_1[name], rel=1e-7)
        assert stat == pytest.approx(stat_1, rel=1e-10)


def test_blended_pair_is_separated_by_neighbour_subtraction():
    from fitax.photometry.starfit import render_stars

    results = {}
    for seed in range(6):
        image, truth = simulate_image((60, 60), 1, flux_range=(5e4, 5e4 + 1), seed=seed)
        # a second star of a third the flux, 4.5 pixels away, added with its own noise
        x2, y2 = float(truth["x"][0]) + 3.2, float(truth["y"][0]) + 3.2
        if not (6 < x2 < 54 and 6 < y2 < 54):
            continue
        extra = render_stars(image.shape, [1.7e4], [x2], [y2], psf=MoffatPSF(2.45, 3.0))
        image = image + np.random.default_rng(seed).poisson(extra)
        x, y = np.r_[truth["x"][0], x2], np.r_[truth["y"][0], y2]
        for passes in (0, 6):
            cat = fit_stars(image, x + 0.2, y - 0.2, neighbour_passes=passes, **PSF)
            results.setdefault(passes, []).append((cat["flux"][1] - 1.7e4) / cat["flux_err"][1])
    with_sub = np.abs(results[6])
    without = np.nan_to_num(np.abs(results[0]), nan=np.inf)  # NaN: no covariance, flagged
    assert len(with_sub) >= 3
    assert np.all(with_sub < 3) and np.all(with_sub < without)


def test_cosmic_ray_next_to_a_star_is_rejected():
    from fitax.photometry.starfit import FLAG_OUTLIER_PIXELS

    offsets = {}
    for outlier_sigma in (6.0, np.inf):
        shifts, flags = [], []
        for seed in range(4):
            image, truth = simulate_image((40, 40), 1, flux_range=(2e4, 2e4 + 1), seed=seed)
            x, y = float(truth["x"][0]), float(truth["y"][0])
            # a two-pixel cosmic-ray track 3 pixels from the centre, as on the shared quadrant
            row, col = int(round(y)) - 3, int(round(x)) - 1
            image[row : row + 2, col] += 3000.0
            cat = fit_stars(image, [x + 0.2], [y - 0.2], outlier_sigma=outlier_sigma, **PSF)
            shifts.append(np.hypot(cat["x"][0] - x, cat["y"][0] - y))
            flags.append(int(cat["flags"][0]))
        offsets[outlier_sigma] = (np.array(shifts), flags)
    rejected, flags = offsets[6.0]
    assert np.all(rejected < 0.05) and all(f == FLAG_OUTLIER_PIXELS for f in flags)
    assert np.all(offsets[np.inf][0] > 0.1)  # without rejection the fit chases the cosmic ray


def test_gaussian_psf_shape_and_fluxes_with_full_covariance():
    from fitax.photometry.psfshape import fit_psf_shape, select_psf_stars

    true_psf = GaussianPSF(1.25, 0.95, 0.3)
    image, truth = simulate_image((500, 500), 200, psf=true_psf, flux_range=(2e3, 5e5), seed=11)
    x, y = np.asarray(truth["x"]), np.asarray(truth["y"])
    chosen = select_psf_stars(image, x, y, n_max=25)
    shape = fit_psf_shape(image, x[chosen], y[chosen], read_noise=10.0, kind="gaussian")
    for name, value in (("sigma_x", 1.25), ("sigma_y", 0.95), ("rho", 0.3)):
        assert abs(shape.values[name] - value) < 4 * shape.errors[name], name
    catalog = fit_stars(image, x + 0.2, y - 0.2, psf=shape.psf, read_noise=10.0)
    ok = _isolated(truth) & ((catalog["flags"] & FAILURE_FLAGS) == 0) & (np.asarray(truth["flux"]) > 1e4)
    relative = (np.asarray(catalog["flux"]) - truth["flux"])[ok] / np.asarray(truth["flux"])[ok]
    assert ok.sum() > 15 and abs(np.median(relative)) < 0.002
    # the wrong PSF family (circular Moffat of the same FWHM) is measurably worse
    moffat = fit_psf_shape(image, x[chosen], y[chosen], read_noise=10.0, kind="moffat")
    assert moffat.result.stat > shape.result.stat + 100


def test_detection_finds_the_stars_above_threshold():
    from fitax.photometry import detect_stars

    image, truth = simulate_image((400, 400), 120, flux_range=(300, 1e6), seed=4)
    found = detect_stars(image, fwhm=2.5, read_noise=10.0, threshold=5.0)
    xy_true = np.c_[truth["x"], truth["y"]]
    distance = np.hypot(*(np.c_[found["x"], found["y"]][:, None, :] - xy_true[None]).transpose(2, 0, 1))
    matched = distance.min(axis=1) < 1.0
    assert matched.mean() > 0.97  # few spurious detections
    bright = np.asarray(truth["flux"]) > 3e3
    recovered = distance.min(axis=0) < 1.0
    assert recovered[bright & _isolated(truth, 6.0)].all()


def test_fully_masked_star_is_a_flagged_row_not_a_crash():
    image, truth = simulate_image((120, 120), 6, flux_range=(2e4, 5e4), seed=3)
    x, y = np.asarray(truth["x"]), np.asarray(truth["y"])
    mask = np.zeros(image.shape, dtype=bool)
    r, c = int(round(y[2])), int(round(x[2]))
    mask[r - 8 : r + 9, c - 8 : c + 9] = True  # e.g. a saturated star: its whole stamp
    for fit in (fit_stars, forced_photometry):
        catalog = fit(image, x, y, mask=mask, **PSF)
        assert catalog["flags"][2] & FLAG_MASKED
        others = np.arange(len(x)) != 2
        assert np.all(np.isfinite(catalog["flux"][others]))  # the rest of the batch is unaffected
        assert np.all((catalog["flags"][others] & FAILURE_FLAGS & ~FLAG_MASKED) == 0)


def test_empirical_image_psf_gives_the_same_photometry(scene):
    # a x4 oversampled table of the true PRF, as a survey's PSF model would provide
    from fitax.photometry import ImagePSF

    image, truth, x0, y0 = scene
    fine = (np.arange(161) - 80) / 4
    table = np.asarray(PSF["psf"].prf(fine[None, :], fine[:, None]))
    catalog = fit_stars(image, x0, y0, psf=ImagePSF(table, oversampling=4), read_noise=10.0)
    reference = fit_stars(image, x0, y0, **PSF)
    ok = _isolated(truth) & ((catalog["flags"] & FAILURE_FLAGS) == 0) & (np.asarray(truth["flux"]) > 1e4)
    relative = (np.asarray(catalog["flux"]) - truth["flux"])[ok] / np.asarray(truth["flux"])[ok]
    assert ok.sum() > 20 and abs(np.median(relative)) < 0.002
    # interpolating the table moves fluxes by far less than their errors
    difference = (catalog["flux"] - reference["flux"])[ok] / reference["flux_err"][ok]
    assert np.max(np.abs(difference)) < 0.2
