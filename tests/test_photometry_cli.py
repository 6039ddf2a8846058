"""``fitax phot calibrate`` and ``fitax phot run`` end to end on simulated raw frames."""

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from fitax.cli import main
from fitax.photometry.simulate import simulate_raw_frames

SHAPE = (300, 320)


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    """Raw science frame (with WCS and MAGZP), 5 biases and 5 flats, and the truth."""
    folder = tmp_path_factory.mktemp("raw")
    raw = simulate_raw_frames(folder, SHAPE, 60, cosmic_rays=5, flux_range=(2e3, 5e5), seed=9)
    return folder, str(raw["science"]), [str(p) for p in raw["bias"]], [str(p) for p in raw["flat"]], raw["truth"]


def test_calibrate_then_run_recovers_the_truth(frames, tmp_path):
    folder, science, biases, flats, truth = frames
    calibrated = tmp_path / "cal.fits"
    # the documented form: the raw frame follows the --flat list
    assert main(["phot", "calibrate", "--bias", *biases, "--flat", *flats, science, "-o", str(calibrated)]) == 0
    with fits.open(calibrated) as hdul:
        assert hdul[0].header["BUNIT"] == "electron" and hdul[0].header["GAIN"] == 1.0
        assert hdul["MASK"].data.shape == SHAPE
    catalog_path = tmp_path / "cat.fits"
    assert main(["phot", "run", str(calibrated), "--psf", "moffat", "-o", str(catalog_path), "--residual", "--model"]) == 0
    catalog = Table.read(catalog_path)
    assert {"id", "x", "y", "ra", "dec", "flux", "flux_err", "local_bkg", "reduced_chi2", "flags", "mag", "mag_err"} <= set(catalog.colnames)
    image = fits.getdata(calibrated)
    residual, model = fits.getdata(tmp_path / "cat_residual.fits"), fits.getdata(tmp_path / "cat_model.fits")
    np.testing.assert_allclose(residual + model, image, atol=1e-2)
    assert model.max() > 1e3 and np.abs(residual).max() < image.max()
    # match detections to the truth
    distance = np.hypot(np.asarray(catalog["x"])[:, None] - truth["x"][None], np.asarray(catalog["y"])[:, None] - truth["y"][None])
    nearest = distance.argmin(axis=1)
    matched = distance.min(axis=1) < 0.5
    assert matched.sum() >= 50
    true_flux = np.asarray(truth["flux"])[nearest]
    good = matched & ((catalog["flags"] & 63) == 0) & (true_flux > 1e4)
    relative = (np.asarray(catalog["flux"]) - true_flux)[good] / true_flux[good]
    # through bias, flat, gain and detection; ~20 stars with ~1.2% scatter each give a median
    # uncertain by ~0.3%, so 1% is a 3-sigma bound (measured -0.47%)
    assert good.sum() >= 10 and abs(np.median(relative)) < 0.01
    np.testing.assert_allclose(catalog["mag"][good], 26.0 - 2.5 * np.log10(catalog["flux"][good]))
    # ra/dec use the 0-based pixel convention: the reference pixel (1-based CRPIX) is (159, 149)
    from astropy.wcs import WCS

    ra, dec = WCS(fits.getheader(science)).all_pix2world(catalog["x"], catalog["y"], 0)
    np.testing.assert_allclose(catalog["ra"], ra, atol=1e-9)
    np.testing.assert_allclose(catalog["dec"], dec, atol=1e-9)


@pytest.mark.slow  # ~2 min (workers, many images); CI runs it with `make test-slow`
def test_run_with_a_catalog_and_a_gaussian_psf_on_many_images(frames, tmp_path, capsys):
    folder, science, biases, flats, truth = frames
    out = tmp_path / "cal"
    out.mkdir()
    assert main(["phot", "calibrate", science, science, "--bias", *biases, "--flat", *flats, "-o", str(out)]) != 0  # names collide
    first = tmp_path / "a.fits"
    assert main(["phot", "calibrate", science, "--bias", *biases, "--flat", *flats, "-o", str(first)]) == 0
    second = tmp_path / "b.fits"
    second.write_bytes(first.read_bytes())
    positions = tmp_path / "positions.fits"
    Table({"x": truth["x"], "y": truth["y"]}).write(positions)
    catalogs = tmp_path / "catalogs"
    catalogs.mkdir()
    corrupt = tmp_path / "c.fits"
    corrupt.write_bytes(first.read_bytes()[:4000])
    # a constant PSF (--psf-degree 0): each fresh worker process then compiles one shape fit, not three
    args = ["phot", "run", str(first), str(second), str(corrupt), "--catalog", str(positions), "--psf", "gaussian", "--psf-degree", "0",
            "-o", str(catalogs)]
    assert main([*args, "--workers", "2"]) == 1  # two spawned processes; one image failed, the others were measured
    err = capsys.readouterr().err
    assert "c.fits: FAILED:" in err and "1 of 3 image(s) failed" in err
    assert not (catalogs / "c_cat.fits").exists()
    for name in ("a_cat.fits", "b_cat.fits"):
        catalog = Table.read(catalogs / name)
        assert len(catalog) == len(truth) and catalog.meta["PSFKIND"] == "gaussian"
        # the fitted shape is recorded, each parameter under its own keyword
        assert {"PSFSIGX", "PSFSIGY", "PSFRHO"} <= set(catalog.meta)


def test_bad_inputs_are_clear_errors(frames, tmp_path, capsys):
    folder, science, biases, flats, truth = frames
    truncated = tmp_path / "truncated.fits"
    truncated.write_bytes(open(science, "rb").read()[:5000])
    assert main(["phot", "calibrate", str(truncated), "--bias", *biases, "--flat", *flats, "-o", str(tmp_path / "x.fits")]) == 2
    assert "truncated.fits" in capsys.readouterr().err
    # the output may never be one of the inputs
    assert main(["phot", "calibrate", science, "--bias", *biases, "--flat", *flats, "-o", science]) == 2
    assert "refusing to write" in capsys.readouterr().err
    calibrated = tmp_path / "cal.fits"
    assert main(["phot", "calibrate", science, "--bias", *biases, "--flat", *flats, "-o", str(calibrated)]) == 0
    bad_catalog = tmp_path / "bad.fits"
    Table({"mag": [1.0]}).write(bad_catalog)
    assert main(["phot", "run", str(calibrated), "--catalog", str(bad_catalog), "-o", str(tmp_path / "c.fits")]) == 2
    assert "bad.fits: no position columns; expected one of x/y" in capsys.readouterr().err
    assert main(["phot", "run", str(calibrated), "--mask-bits", "3,x", "-o", str(tmp_path / "c.fits")]) == 2
    assert "--mask-bits '3,x': expected comma-separated bit numbers" in capsys.readouterr().err
    assert main(["phot", "run", str(calibrated), "--mask-bits", "12-2", "-o", str(tmp_path / "c.fits")]) == 2  # not silently no bits
    assert "--mask-bits '12-2': expected comma-separated bit numbers 0-63 or increasing ranges" in capsys.readouterr().err
    outside = tmp_path / "outside.fits"
    Table({"x": [10.0, 5000.0, 50.0, -80.0], "y": [10.0, 20.0, 60.0, 90.0]}).write(outside)
    assert main(["phot", "run", str(calibrated), "--catalog", str(outside), "-o", str(tmp_path / "d.fits")]) == 2
    assert "only 2 of the 4 catalog sources fall on the image; need at least 3" in capsys.readouterr().err
    # a raw (uncalibrated) frame given to 'run'
    assert main(["phot", "run", science, "-o", str(tmp_path / "e.fits")]) == 2
    assert "run 'fitax phot calibrate' first" in capsys.readouterr().err


@pytest.mark.slow  # `make demo` runs it too; CI runs it with `make test-slow`
def test_demo_writes_a_catalog_and_plots(tmp_path):
    out = tmp_path / "demo"
    assert main(["phot", "demo", "--out", str(out), "--stars", "300", "--seed", "3"]) == 0
    catalog = Table.read(out / "catalog.fits")
    assert len(catalog) > 100 and {"ra", "dec", "mag"} <= set(catalog.colnames)
    for name in ("phot_images.png", "phot_fluxes.png"):
        assert (out / name).stat().st_size > 10_000
