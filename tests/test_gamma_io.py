"""Reading Gammapy MapDataset files without Gammapy, checked against Gammapy's own reader."""

import numpy as np
import pytest
from astropy.io import fits
from conftest import shared_data

from fitax.gamma.io import read_map_dataset


@pytest.fixture(scope="module")
def obs000():
    return shared_data("gamma", "sim", "obs000.fits.gz")


def test_contents_match_gammapy(obs000):
    pytest.importorskip("gammapy", reason="Gammapy (test extra) not installed")
    from gammapy.datasets import MapDataset

    theirs = MapDataset.read(obs000)
    ours = read_map_dataset(obs000)
    np.testing.assert_array_equal(ours.counts, theirs.counts.data)
    np.testing.assert_allclose(ours.exposure, theirs.exposure.quantity.to_value("m2 s"), rtol=1e-12)
    np.testing.assert_allclose(ours.background, theirs.background.data, rtol=1e-12)
    np.testing.assert_array_equal(ours.mask_safe, theirs.mask_safe.data)
    np.testing.assert_allclose(ours.energy_edges, theirs.counts.geom.axes["energy"].edges.to_value("TeV"), rtol=1e-12)
    np.testing.assert_allclose(ours.energy_true_edges, theirs.exposure.geom.axes["energy_true"].edges.to_value("TeV"), rtol=1e-12)
    np.testing.assert_allclose(ours.psf, theirs.psf.psf_map.quantity.to_value("deg-2"), rtol=1e-12)
    np.testing.assert_allclose(ours.psf_rad, theirs.psf.psf_map.geom.axes["rad"].center.to_value("deg"), rtol=1e-12)
    np.testing.assert_allclose(ours.edisp, theirs.edisp.edisp_map.data, rtol=1e-12)
    assert ours.livetime == pytest.approx(theirs.gti.time_sum.to_value("s"))
    lon, lat = ours.wcs.pixel_to_world_values(3.0, 7.0)
    coord = theirs.counts.geom.to_image().pix_to_coord((3.0, 7.0))
    their_lon, their_lat = (float(np.asarray(getattr(c, "value", c))) for c in coord)
    assert (lon - their_lon + 180) % 360 - 180 == pytest.approx(0, abs=1e-10)
    assert lat == pytest.approx(their_lat)


def _modified(source, target, edit):
    with fits.open(source) as hdul:
        hdul = fits.HDUList([h.copy() for h in hdul])
    edit(hdul)
    hdul.writeto(target)
    return target


def test_bad_files_are_clear_errors(obs000, tmp_path):
    def drop_exposure(hdul):
        del hdul["EXPOSURE"]

    def nan_exposure(hdul):
        hdul["EXPOSURE"].data[3, 10, 10] = np.nan

    def negative_exposure(hdul):
        hdul["EXPOSURE"].data[0, 0, 0] = -1.0

    def shifted_exposure(hdul):
        hdul["EXPOSURE"].header["CRVAL1"] = 1.0

    def cropped_exposure(hdul):
        hdul["EXPOSURE"].data = hdul["EXPOSURE"].data[:, :90, :]

    cases = {
        drop_exposure: "missing HDU EXPOSURE",
        nan_exposure: "[EXPOSURE]: 1 pixels are NaN or negative",
        negative_exposure: "[EXPOSURE]: 1 pixels are NaN or negative",
        shifted_exposure: "[EXPOSURE]: sky geometry",
        cropped_exposure: "[EXPOSURE]: sky geometry",
    }
    for edit, message in cases.items():
        path = _modified(obs000, tmp_path / f"{edit.__name__}.fits", edit)
        with pytest.raises(ValueError, match=None) as error:
            read_map_dataset(path)
        assert message in str(error.value) and path.name in str(error.value), edit.__name__
    truncated = tmp_path / "truncated.fits"
    truncated.write_bytes(open(obs000, "rb").read()[:200_000])
    with pytest.raises(ValueError, match="truncated.fits"):
        read_map_dataset(truncated)
    truncated_gzip = tmp_path / "truncated.fits.gz"  # decompressed in memory, not by astropy
    truncated_gzip.write_bytes(open(obs000, "rb").read()[:200_000])
    with pytest.raises(ValueError, match="truncated.fits.gz: not a readable FITS file"):
        read_map_dataset(truncated_gzip)
    with pytest.raises(FileNotFoundError, match="nowhere.fits"):
        read_map_dataset(tmp_path / "nowhere.fits")
