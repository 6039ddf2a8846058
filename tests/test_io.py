"""Atomic writes keep what the user set on the files they replace, and updating an image header
in place (``fitax phot run --update-header``) is refused where the user may not write."""

import os
import stat

import numpy as np
import pytest
from astropy.io import fits

from fitax.io import atomic_write
from fitax.photometry.io import update_image_header


def test_a_replaced_file_keeps_its_permissions_and_a_link_its_target(tmp_path):
    target = tmp_path / "data" / "result.txt"
    target.parent.mkdir()
    target.write_text("old")
    target.chmod(0o640)
    link = tmp_path / "result.txt"
    link.symlink_to(target)
    atomic_write(link, lambda tmp: tmp.write_text("new"))
    assert link.is_symlink() and target.read_text() == "new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    fresh = atomic_write(tmp_path / "fresh.txt", lambda tmp: tmp.write_text("x"))
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_header_update_removes_stale_cards_and_keeps_checksums_valid(tmp_path):
    path = tmp_path / "image.fits"
    hdu = fits.PrimaryHDU(np.arange(12, dtype=np.float32).reshape(3, 4), fits.Header({"CLRCOEFF": 0.1, "MAGZP": 25.0}))
    hdu.writeto(path, checksum=True)
    update_image_header(path, {"MAGZP": 26.5}, remove=["CLRCOEFF"])
    with fits.open(path, checksum=True) as hdul:  # astropy warns on a checksum that does not verify
        header = hdul[0].header
        assert header["MAGZP"] == 26.5 and "CLRCOEFF" not in header and "CHECKSUM" in header
        assert hdul[0]._checksum_valid and hdul[0]._datasum_valid
        np.testing.assert_array_equal(hdul[0].data, np.arange(12).reshape(3, 4))


def test_header_update_refuses_a_read_only_image(tmp_path):
    path = tmp_path / "image.fits"
    fits.PrimaryHDU(np.zeros((3, 4), np.float32), fits.Header({"MAGZP": 26.5})).writeto(path)
    path.chmod(0o444)
    if os.access(path, os.W_OK):
        pytest.skip("running as a user who may write read-only files (root)")
    with pytest.raises(PermissionError, match="image.fits: the image is not writable"):
        update_image_header(path, {"MAGZP": 27.0})
    assert fits.getheader(path)["MAGZP"] == 26.5
