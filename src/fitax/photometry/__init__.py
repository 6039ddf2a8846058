"""Survey-image photometry: CCD calibration, pixel-integrated PSF models, PSF-shape fits,
batched star fits and forced photometry, built on the fitax core.

Pixel convention everywhere: 0-based pixel centres, ``x`` is the column and ``y`` the row,
pixel ``(row i, column j)`` covers ``[j - 0.5, j + 0.5] x [i - 0.5, i + 0.5]``.
"""

from .calibrate import calibrate, master_bias, master_flat
from .detect import detect_stars
from .pipeline import process_image
from .psf import GaussianPSF, ImagePSF, MoffatPSF, gaussian_prf, moffat_fwhm, moffat_points, moffat_prf
from .psfshape import PSFShape, fit_psf_shape, select_psf_stars
from .simulate import simulate_image
from .starfit import FAILURE_FLAGS, fit_stars, forced_photometry, render_stars

__all__ = [
    "calibrate", "master_bias", "master_flat", "detect_stars", "process_image",
    "GaussianPSF", "ImagePSF", "MoffatPSF", "gaussian_prf", "moffat_fwhm", "moffat_points", "moffat_prf",
    "PSFShape", "fit_psf_shape", "select_psf_stars", "simulate_image",
    "FAILURE_FLAGS", "fit_stars", "forced_photometry", "render_stars",
]
