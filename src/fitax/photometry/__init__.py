"""Survey-image photometry: pixel-integrated PSF models and (to come) calibration and
batched star fitting, built on the fitax core.

Pixel convention everywhere: 0-based pixel centres, ``x`` is the column and ``y`` the row,
pixel ``(row i, column j)`` covers ``[j - 0.5, j + 0.5] x [i - 0.5, i + 0.5]``.
"""

from .psf import gaussian_prf, moffat_fwhm, moffat_prf

__all__ = ["gaussian_prf", "moffat_prf", "moffat_fwhm"]
