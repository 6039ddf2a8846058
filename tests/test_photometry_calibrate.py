"""Calibration: masters from simulated frames with known structure, and bad input."""

import tracemalloc

import numpy as np
import pytest
from astropy.io import fits

from fitax.photometry.calibrate import calibrate, master_bias, master_flat
from fitax.photometry.io import read_image, write_catalog

RNG = np.random.default_rng(11)
SHAPE = (200, 150)
BIAS = 1000.0 + 3.0 * RNG.normal(size=SHAPE[1])[None, :] + np.linspace(0, 4, SHAPE[0])[:, None]
FLAT = 1.0 + 0.05 * np.cos(np.linspace(0, 3, SHAPE[1]))[None, :] + 0.008 * RNG.normal(size=SHAPE)
FLAT /= np.median(FLAT)
GAIN, READ_NOISE = 6.2, 10.0


def _bias_frames(n):
    return [BIAS + READ_NOISE / GAIN * RNG.normal(size=SHAPE) for _ in range(n)]


def _flat_frames(n):
    frames = []
    for _ in range(n):
        electrons = RNG.poisson(25000.0 * RNG.uniform(0.97, 1.03) * FLAT)
        frames.append(BIAS + (electrons + READ_NOISE * RNG.normal(size=SHAPE)) / GAIN)
    return frames


def test_master_bias_and_flat_recover_the_truth(tmp_path):
    bias_frames = _bias_frames(15)
    paths = []
    for i, frame in enumerate(bias_frames):  # half as files (tile-compressed), half as arrays
        if i % 2:
            path = tmp_path / f"bias{i}.fits.fz"
            fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(frame.astype(np.float32))]).writeto(path)
            paths.append(path)
        else:
            paths.append(frame)
    bias = master_bias(paths, block_rows=37)
    # median of 15 frames of 1.6 ADU noise: ~0.5 ADU scatter
    assert np.std(bias - BIAS) < 0.6 and abs(np.mean(bias - BIAS)) < 0.05
    flat = master_flat(_flat_frames(15), bias, sigma_clip=5.0)
    assert np.median(flat) == pytest.approx(1.0, abs=1e-6)
    assert np.std(flat / FLAT - 1) < 0.004  # pixel response (0.8%) recovered to ~0.2%


def test_calibrate_gives_electrons_variance_and_mask():
    sky = 200.0
    electrons = RNG.poisson(sky * FLAT) + READ_NOISE * RNG.normal(size=SHAPE)
    raw = BIAS + electrons / GAIN
    raw[10, 20] = 65535.0
    bad_flat = FLAT.copy()
    bad_flat[5, 5] = 0.0
    image, variance, mask = calibrate(raw, BIAS, bad_flat, gain=GAIN, read_noise=READ_NOISE, saturation=65535.0)
    assert mask[10, 20] and mask[5, 5] and mask.sum() == 2
    assert np.median(image[~mask]) == pytest.approx(sky, rel=0.01)
    pulls = (image[~mask] - sky) / np.sqrt(variance[~mask])
    assert np.std(pulls) == pytest.approx(1.0, abs=0.05)


def test_calibration_bad_input_is_named():
    with pytest.raises(ValueError, match=r"different shapes: frame 0: \(200, 150\), frame 1: \(10, 10\)"):
        master_bias([np.zeros(SHAPE), np.zeros((10, 10))])
    with pytest.raises(ValueError, match="no positive pixel"):
        calibrate(np.zeros(SHAPE), np.zeros(SHAPE), np.zeros(SHAPE), gain=1.0, read_noise=1.0)
    with pytest.raises(ValueError, match=r"master flat has shape \(10, 10\), the raw frame \(200, 150\)"):
        calibrate(np.zeros(SHAPE), np.zeros(SHAPE), np.ones((10, 10)), gain=1.0, read_noise=1.0)
    with pytest.raises(ValueError, match="flat frame 0 has median level"):
        master_flat([np.zeros(SHAPE)], np.ones(SHAPE))


def test_truncated_fits_is_a_clear_error_and_outputs_never_overwrite_inputs(tmp_path):
    path = tmp_path / "image.fits"
    fits.PrimaryHDU(np.zeros((64, 64), dtype=np.float32)).writeto(path)
    truncated = tmp_path / "cut.fits"
    truncated.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ValueError, match="cut.fits: not a readable FITS image"):
        read_image(truncated)
    from astropy.table import Table

    with pytest.raises(ValueError, match="it is an input of this run"):
        write_catalog(Table({"a": [1]}), path, inputs=[path])
    assert read_image(path)[0].shape == (64, 64)


def test_streaming_masters_keep_memory_bounded(tmp_path):
    shape = (1000, 1000)
    paths = []
    for i in range(10):
        path = tmp_path / f"f{i}.fits"
        fits.PrimaryHDU(np.full(shape, 1000.0 + i, dtype=np.float32)).writeto(path)
        paths.append(path)
    tracemalloc.start()
    bias = master_bias(paths, block_rows=100)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert np.all(bias == 1004.5)
    # 10 full frames in float64 would be 80 MB; blocks of 100 rows need ~8 MB plus the output
    assert peak < 30e6
