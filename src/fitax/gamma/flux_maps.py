"""Maps of flux-point quantities per pixel (Gammapy's ``FluxMaps``): what TS maps and excess
maps produce, and their FITS format, so that Gammapy reads fitax's files.

Example:
    >>> maps = ts_map(dataset)  # doctest: +SKIP
    >>> maps.write("ts_map.fits")  # Gammapy: FluxMaps.read("ts_map.fits")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from ..io import atomic_write
from .io import bands_hdu, map_image_hdu
from .modelio import write_models
from .models import Models, SkyModel

__all__ = ["FluxMaps"]

_QUANTITIES = ("norm", "norm_err", "norm_errn", "norm_errp", "norm_ul", "ts", "sqrt_ts", "npred", "npred_excess",
               "stat", "stat_null", "niter", "is_ul", "success", "counts")
"""The quantities written, in Gammapy's order."""


@dataclasses.dataclass(frozen=True)
class FluxMaps:
    """Gammapy's ``FluxMaps`` of ``sed_type="likelihood"``: maps ``(energy, ny, nx)`` of
    ``norm`` (the amplitude over ``reference_model``'s), ``norm_err`` (``n_sigma``),
    ``norm_errn``/``norm_errp``/``norm_ul`` (when asked for), ``ts``, ``sqrt_ts`` (signed by the
    norm), ``npred``/``npred_excess``, ``is_ul`` and, as the estimator provides them,
    ``stat``/``stat_null``, ``niter``, ``success``, ``counts``; on ``wcs`` with energy bins
    ``energy_edges`` [TeV]; NaN where no energy bin is used or nothing is predicted."""

    maps: dict[str, np.ndarray]
    energy_edges: np.ndarray
    wcs: WCS
    reference_model: SkyModel
    meta: dict  # FITS keyword -> (value, comment), written to the primary header

    def write(self, path) -> Path:
        """Write as Gammapy's ``FluxMaps.write`` does: one image HDU per quantity, each with its
        ``<NAME>_BANDS`` energy table, and the reference model in ``<stem>_model.yaml`` beside
        it, named (absolute) in the primary header's ``MODEL`` so that ``FluxMaps.read(path)``
        finds it from any folder. The FITS file is complete before the model is written, and
        only then takes its name."""
        path = Path(path)
        stem = path.name.removesuffix(".gz").removesuffix(".fits")
        model_path = path.with_name(stem + "_model.yaml").resolve()
        primary = fits.PrimaryHDU()
        primary.header["SED_TYPE"] = "likelihood"
        primary.header["MODEL"] = model_path.as_posix()
        for key, (value, comment) in self.meta.items():
            primary.header[key] = (value, comment)
        hdus = [primary]
        for name in _QUANTITIES:
            if name in self.maps:
                bands = bands_hdu(name.upper(), [("ENERGY", self.energy_edges, "log")])
                data = self.maps[name]
                data = data.astype(np.int64) if name in ("is_ul", "success") else np.asarray(data, float)
                hdus += [map_image_hdu(name.upper(), data, self.wcs, bands), bands]
        hdulist = fits.HDUList(hdus)

        def write(tmp):
            hdulist.writeto(tmp, overwrite=True)
            write_models(Models([self.reference_model]), model_path)

        return atomic_write(path, write)

    def __repr__(self) -> str:
        ts = self.maps["ts"]
        return (f"FluxMaps({ts.shape[2]}x{ts.shape[1]} pixels, {ts.shape[0]} energy bin(s) "
                f"{self.energy_edges[0]:.3g}-{self.energy_edges[-1]:.3g} TeV, max TS {np.nanmax(ts):.1f})")
