"""An on-off map dataset (Gammapy's ``MapDatasetOnOff``, as ``RingBackgroundMaker`` makes
it): the background of each pixel is measured in OFF regions, ``counts_off`` of them with
the acceptance ratio ``alpha = acceptance / acceptance_off``.

fitax reads these files for excess and significance maps (WStat, Li & Ma with the
background measured: :func:`fitax.gamma.estimators.excess_map`). Fitting models to them
(WStat per pixel) is not supported: the likelihood refuses them by name.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .io import MapDatasetFile, read_map_dataset
from .mapdataset import MapDataset

__all__ = ["MapDatasetOnOff"]


@dataclasses.dataclass(frozen=True, repr=False, eq=False)
class MapDatasetOnOff:
    """``on``: the counts, exposure, IRFs and masks (a :class:`MapDataset` without a
    background template, whose predicted counts are the models' signal); ``counts_off``,
    ``acceptance`` and ``acceptance_off`` ``(energy, ny, nx)`` as Gammapy stores them.

    Example:
        >>> onoff = MapDatasetOnOff.read("ring/onoff.fits")  # doctest: +SKIP
        >>> onoff.background.sum()  # alpha x counts_off  # doctest: +SKIP
    """

    on: MapDataset
    counts_off: np.ndarray
    acceptance: np.ndarray
    acceptance_off: np.ndarray

    @classmethod
    def read(cls, path, name: str | None = None) -> "MapDatasetOnOff":
        """Read a Gammapy ``MapDatasetOnOff`` FITS file (no Gammapy needed)."""
        return cls.from_file_contents(read_map_dataset(path), name)

    @classmethod
    def from_file_contents(cls, contents: MapDatasetFile, name: str | None = None) -> "MapDatasetOnOff":
        if contents.counts_off is None:
            raise ValueError(f"{contents.path}: not an on-off map dataset (no COUNTS_OFF, ACCEPTANCE and ACCEPTANCE_OFF HDUs)")
        plain = dataclasses.replace(contents, counts_off=None, acceptance=None, acceptance_off=None, background=None)
        return cls(MapDataset.from_file_contents(plain, name), contents.counts_off, contents.acceptance, contents.acceptance_off)

    @property
    def name(self) -> str:
        return self.on.name

    @property
    def alpha(self) -> np.ndarray:
        """``acceptance / acceptance_off``, 0 where that is not finite (Gammapy's ``alpha``)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.nan_to_num(self.acceptance / self.acceptance_off)

    @property
    def background(self) -> np.ndarray:
        """The measured background in each ON pixel, ``alpha x counts_off``."""
        return self.alpha * self.counts_off

    @property
    def source_files(self) -> tuple:
        return self.on.source_files

    @staticmethod
    def check_models(datasets: list["MapDatasetOnOff"], sources: list) -> None:
        """Fitting on-off maps is not supported: an error naming the datasets."""
        raise ValueError(f"datasets {[d.name for d in datasets]} are on-off maps (MapDatasetOnOff): fitax makes their excess and "
                         "significance maps (fitax gamma estimate excess-map), but does not fit models to them (WStat per pixel)")

    def __repr__(self) -> str:
        ne, ny, nx = self.counts_off.shape
        return (f"MapDatasetOnOff({self.name!r}: {ne} energies, {ny}x{nx} pixels, {self.on.counts[self.on.mask].sum():.0f} ON counts, "
                f"background {self.background[self.on.mask].sum():.1f})")
