"""Aperture photometry against photutils, the aperture correction and the zero point against
simulations with known truth, and ``fitax phot run --apertures --reference`` over many images."""

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from fitax.cli import main
from fitax.photometry.aperture import APER_MASKED, APER_OFF_IMAGE, aperture_photometry
from fitax.photometry.pipeline import ImageData, process_image
from fitax.photometry.psf import GaussianPSF
from fitax.photometry.simulate import simulate_image
from fitax.photometry.zeropoint import fit_zero_point

TRUE_PSF = GaussianPSF(1.5, 1.5, 0.0)
MAGZP, COLOUR_TERM = 26.30, 0.08


def test_aperture_sums_equal_photutils_exact():
    photutils_aperture = pytest.importorskip("photutils.aperture")
    from astropy.stats import SigmaClip

    rng = np.random.default_rng(1)
    image = rng.normal(100.0, 10.0, (120, 130))
    variance = rng.uniform(50.0, 150.0, image.shape)
    mask = np.zeros(image.shape, bool)
    mask[40:43, 60:90] = True
    x = np.r_[rng.uniform(-0.4, 129.4, 200), 75.2]  # edges included, one aperture over the masked rows
    y = np.r_[rng.uniform(-0.4, 119.4, 200), 41.7]
    radii = (2.5, 3.0, 5.0, 8.0)
    ours = aperture_photometry(image, x, y, radii=radii, annulus=(10.0, 15.0), variance=variance, mask=mask)
    clipped = photutils_aperture.ApertureStats(image, photutils_aperture.CircularAnnulus(np.c_[x, y], 10.0, 15.0), mask=mask,
                                               sigma_clip=SigmaClip(3.0, maxiters=5))
    np.testing.assert_allclose(ours["aper_bkg"], clipped.median, rtol=1e-12)
    for r in radii:
        aperture = photutils_aperture.CircularAperture(np.c_[x, y], r)
        ref = photutils_aperture.aperture_photometry(image, aperture, error=np.sqrt(variance),
                                                     mask=mask, method="exact")
        area = photutils_aperture.aperture_photometry(np.ones(image.shape), aperture, mask=mask, method="exact")["aperture_sum"]
        label = f"{r:g}".replace(".", "p")
        expected = np.asarray(ref["aperture_sum"]) - np.asarray(clipped.median) * np.asarray(area)
        np.testing.assert_allclose(ours[f"aper_sum_{label}"], expected, rtol=1e-10, atol=1e-10 * np.abs(expected).max())
        # the error: pixel variances plus the background's uncertainty times the area
        pixel_part = np.asarray(ours[f"aper_sum_err_{label}"]) ** 2 - np.asarray(ours["aper_bkg_err"]) ** 2 * np.asarray(area) ** 2
        np.testing.assert_allclose(pixel_part, np.asarray(ref["aperture_sum_err"]) ** 2, rtol=1e-9)
    assert ours["aper_flags"][-1] & APER_MASKED
    edge = (x - 8 < -0.5) | (x + 8 > 129.5) | (y - 8 < -0.5) | (y + 8 > 119.5)  # the largest radius crosses the border
    np.testing.assert_array_equal((np.asarray(ours["aper_flags"]) & APER_OFF_IMAGE) != 0, edge)


@pytest.fixture(scope="module")
def field():
    """A quadrant with a celestial WCS and a reference catalogue: true magnitudes on a known
    zero point and colour term, 0.005 mag noise, 5% outliers."""
    image, truth = simulate_image((300, 300), 250, psf=TRUE_PSF, flux_range=(2e4, 1e6), edge=10, seed=11)
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [210.0, -5.0]
    wcs.wcs.crpix = [150.0, 150.0]
    wcs.wcs.cdelt = [-1.0 / 3600, 1.0 / 3600]
    header = wcs.to_header()
    header.update(GAIN=1.0, BUNIT="electron", READNOI=10.0)
    rng = np.random.default_rng(3)
    ra, dec = wcs.all_pix2world(truth["x"], truth["y"], 0)
    colour = rng.uniform(-0.2, 1.6, len(truth))
    r_mag = MAGZP - 2.5 * np.log10(truth["flux"]) + COLOUR_TERM * colour + rng.normal(0, 0.005, len(truth))
    outliers = rng.random(len(truth)) < 0.05
    r_mag[outliers] += rng.choice([-1, 1], outliers.sum()) * rng.uniform(0.2, 1.0, outliers.sum())
    reference = Table({"ra": ra, "dec": dec, "g_mag": r_mag + colour, "r_mag": r_mag, "r_mag_err": np.full(len(truth), 0.005)})
    return image, header, truth, reference


def _true_aperture_fraction(radius):
    """Fraction of a star's light inside the aperture, for the true PSF rendered on pixels,
    averaged over sub-pixel positions (noiseless: the exact ratio the correction estimates)."""
    grid = np.arange(41.0)
    fractions = []
    for cx, cy in np.random.default_rng(0).uniform(19.5, 20.5, (40, 2)):
        star = np.asarray(TRUE_PSF.prf(grid[None, :] - cx, grid[:, None] - cy))
        fractions.append(aperture_photometry(star, [cx], [cy], radii=(radius,), annulus=None)[f"aper_sum_{radius:g}"][0])
    return float(np.mean(fractions))


@pytest.mark.slow  # 76 s; make test keeps the other aperture and zero-point checks
def test_aperture_correction_recovers_the_true_ratio(field):
    image, header, truth, _ = field
    data = ImageData(image, np.zeros(image.shape, bool), header, 10.0)
    catalog, _ = process_image(data, positions=(truth["x"], truth["y"]), psf="gaussian", apertures=(2.0, 3.0, 4.0))
    true_ratio = _true_aperture_fraction(4.0)
    assert 0.95 < true_ratio < 0.99
    assert catalog.meta["APCORN"] >= 20 and catalog.meta["APCORERR"] < 0.005
    assert abs(catalog.meta["APCOR"] - true_ratio) < 3 * catalog.meta["APCORERR"]
    assert {"aper_sum_2", "aper_sum_err_3", "aper_bkg", "aper_flags"} <= set(catalog.colnames)


def test_zero_point_with_colour_term_and_outliers(field):
    image, header, truth, reference = field
    data = ImageData(image, np.zeros(image.shape, bool), header, 10.0)
    catalog, _ = process_image(data, positions=(truth["x"], truth["y"]), psf="gaussian", reference=reference,
                               reference_magnitude="r_mag", reference_colour="g_mag-r_mag")
    meta = catalog.meta
    assert abs(meta["MAGZP"] - MAGZP) < 1e-3 and abs(meta["MAGZP"] - MAGZP) < 3 * meta["MAGZPUNC"]
    assert abs(meta["CLRCOEFF"] - COLOUR_TERM) < 3 * meta["CLRCOUNC"] < 0.01
    assert meta["NMATCHES"] > 150 and meta["NZPUSED"] < meta["NMATCHES"]  # the outliers were clipped
    assert meta["PCOLOR"] == "g_mag-r_mag" and meta["MAGZPRMS"] < 0.02
    used = np.asarray(catalog["zp_used"])
    np.testing.assert_allclose(catalog["mag"], MAGZP - 2.5 * np.log10(catalog["flux"]), atol=2e-3)
    assert np.isfinite(np.asarray(catalog["ref_mag"])[used]).all()


def test_zero_point_fit_without_clipping_is_pulled_by_outliers():
    """The clipping is what makes the 1 mmag: a plain weighted mean of the same matches is off
    by several mmag (the check above can fail)."""
    rng = np.random.default_rng(5)
    m_inst = rng.uniform(-13, -8, 300)
    m_ref = MAGZP + m_inst + rng.normal(0, 0.005, 300)
    m_ref[:15] += 0.5  # 5% one-sided outliers
    robust = fit_zero_point(m_inst, np.full(300, 0.005), m_ref)
    plain = fit_zero_point(m_inst, np.full(300, 0.005), m_ref, clip_sigma=np.inf)
    assert abs(robust.magzp - MAGZP) < 1e-3 < abs(plain.magzp - MAGZP)


def _write(path, image, header):
    fits.PrimaryHDU(image.astype(np.float32), header).writeto(path)
    return str(path)


def _mirrored_wcs(header):
    """The header of the image flipped in y: pixel y' = ny - 1 - y sees the same sky."""
    mirrored = header.copy()
    mirrored["CDELT2"], mirrored["CRPIX2"] = -header["CDELT2"], 301.0 - header["CRPIX2"]
    return mirrored


@pytest.mark.slow  # ~70 s
def test_run_over_many_images_with_apertures_and_a_reference(field, tmp_path, capsys):
    image, header, truth, reference = field
    first = _write(tmp_path / "q1.fits", image, header)
    second = _write(tmp_path / "q2.fits", image[::-1], _mirrored_wcs(header))  # same stars, mirrored, and a WCS that says so
    corrupt = tmp_path / "q3.fits"
    corrupt.write_bytes(open(first, "rb").read()[:4000])
    reference_path = tmp_path / "refcat.csv"
    reference.write(reference_path, format="ascii.csv")
    out = tmp_path / "catalogs"
    out.mkdir()
    args = ["phot", "run", first, second, str(corrupt), "--psf", "gaussian", "--psf-degree", "0", "--apertures", "3,5", "--reference", str(reference_path),
            "--ref-mag", "r_mag", "--ref-colour", "g_mag-r_mag", "--update-header", "-o", str(out)]
    assert main(args) == 1  # one image failed; the others were processed
    err = capsys.readouterr().err
    assert "q3.fits: FAILED:" in err and "1 of 3 image(s) failed" in err
    catalog = Table.read(out / "q1_cat.fits")
    assert abs(catalog.meta["MAGZP"] - MAGZP) < 2e-3 and "aper_sum_5" in catalog.colnames and "APCOR" in catalog.meta
    assert abs(fits.getheader(first)["MAGZP"] - catalog.meta["MAGZP"]) < 1e-9  # written into the image, atomically
    assert fits.getdata(first).shape == image.shape
    # a re-run skips finished catalogs made with the same options, and redoes changed ones
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "q2.fits: skipped" in err
    assert main([*args[:-2], "--match-radius", "1.5", "-o", str(out)]) == 1
    assert ": skipped" not in capsys.readouterr().err
    # a re-run asking for more outputs (a residual image) is not skipped; one without a colour
    # term leaves no colour-term cards of the earlier run in the image header
    assert "CLRCOEFF" in fits.getheader(first)
    no_colour = [a for a in args if a not in ("--ref-colour", "g_mag-r_mag")]
    assert main([*no_colour, "--residual"]) == 1
    assert ": skipped" not in capsys.readouterr().err and (out / "q1_cat_residual.fits").exists()
    assert "CLRCOEFF" not in fits.getheader(first) and fits.getheader(first)["MAGZP"] == Table.read(out / "q1_cat.fits").meta["MAGZP"]
    assert main([*no_colour, "--residual"]) == 1
    assert "q1.fits: skipped" in capsys.readouterr().err


def test_zero_point_inputs_that_cannot_work_are_clear_errors(field, tmp_path, capsys):
    image, header, truth, reference = field
    path = _write(tmp_path / "q.fits", image, header)
    far = reference.copy()
    far["dec"] += 1.0
    far_path = tmp_path / "far.fits"
    far.write(far_path)
    assert main(["phot", "run", path, "--reference", str(far_path), "--ref-mag", "r_mag", "-o", str(tmp_path / "c.fits")]) == 2
    assert "far.fits: no reference star within 2 arcsec of any of the" in capsys.readouterr().err
    ambiguous = tmp_path / "ambiguous.fits"
    reference.write(ambiguous)
    assert main(["phot", "run", path, "--reference", str(ambiguous), "-o", str(tmp_path / "c.fits")]) == 2
    assert "several magnitude column(s) ['g_mag', 'r_mag']; name one with --ref-mag" in capsys.readouterr().err
    plain = fits.Header({"GAIN": 1.0, "BUNIT": "electron", "READNOI": 10.0})
    no_wcs = _write(tmp_path / "nowcs.fits", image, plain)
    assert main(["phot", "run", no_wcs, "--reference", str(ambiguous), "--ref-mag", "r_mag", "-o", str(tmp_path / "d.fits")]) == 2
    assert "the image header has no celestial WCS" in capsys.readouterr().err
    assert main(["phot", "run", path, "--apertures", "3,x", "-o", str(tmp_path / "e.fits")]) == 2
    assert "--apertures '3,x': expected one or more comma-separated radii" in capsys.readouterr().err
    # the image flipped, its WCS not: 250 stars on 250 reference stars still pair up by chance
    wrong_wcs = _write(tmp_path / "flipped.fits", image[::-1], header)
    assert main(["phot", "run", wrong_wcs, "--reference", str(ambiguous), "--ref-mag", "r_mag", "-o", str(tmp_path / "f.fits")]) == 2
    assert "no more than chance gives with these star densities" in capsys.readouterr().err
