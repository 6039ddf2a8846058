"""Datasets fitted jointly (:class:`Datasets`), read from Gammapy's ``datasets.yaml``.

The dataset kinds live in their own modules (:mod:`fitax.gamma.mapdataset`,
:mod:`fitax.gamma.spectrum`) and meet in the likelihood through one protocol
(:mod:`fitax.gamma.likelihood`); this module names them for users. ``bind``,
``npred_groups`` and ``stat_sum_groups`` are re-exported from there.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from ._common import load_yaml
from .likelihood import bind, npred, npred_groups, stat_sum, stat_sum_groups
from .mapdataset import MapDataset
from .mapdataset_onoff import MapDatasetOnOff
from .models import Models
from .spectrum import SpectrumDataset, SpectrumDatasetOnOff

__all__ = ["Datasets", "MapDataset", "read_datasets", "bind", "npred_groups", "stat_sum_groups"]

_KINDS = {"MapDataset": MapDataset, "MapDatasetOnOff": MapDatasetOnOff, "SpectrumDataset": SpectrumDataset,
          "SpectrumDatasetOnOff": SpectrumDatasetOnOff}


class Datasets(Sequence):
    """Datasets fitted jointly: their Cash statistics add up.

    Example:
        >>> from fitax.gamma import Datasets
        >>> datasets = Datasets.read("../shared/data/gamma/sim/datasets_n1.yaml")  # doctest: +SKIP
    """

    def __init__(self, datasets: Iterable[MapDataset]):
        self._datasets = list(datasets)
        names = [d.name for d in self._datasets]
        if len(set(names)) != len(names):
            raise ValueError(f"dataset names must be unique, got {names}")

    @classmethod
    def read(cls, path) -> "Datasets":
        """Read a Gammapy ``datasets.yaml`` and the dataset files it lists."""
        return read_datasets(path)

    def __getitem__(self, index):
        if isinstance(index, str):
            for dataset in self._datasets:
                if dataset.name == index:
                    return dataset
            raise KeyError(f"no dataset named {index!r}; datasets: {self.names}")
        return self._datasets[index]

    def __len__(self) -> int:
        return len(self._datasets)

    @property
    def names(self) -> list[str]:
        return [d.name for d in self._datasets]

    def npred(self, models: Models) -> list[np.ndarray]:
        """Predicted counts of every dataset (host arrays, in order; for on-off spectra
        the signal counts, ``npred_signal``)."""
        return npred(self, models)

    def stat_sum(self, models: Models) -> float:
        """Total Cash statistic in Gammapy's convention, ``sum 2 (mu - n log mu)``."""
        return stat_sum(self, models)

    def __repr__(self) -> str:
        return "Datasets([\n" + "".join(f"  {d!r},\n" for d in self._datasets) + "])"


def read_datasets(path, progress: bool = False) -> Datasets:
    """Read a Gammapy ``datasets.yaml``: each entry's ``filename`` relative to the file
    (``progress``: show a progress bar over the files)."""
    path = Path(path)
    content = load_yaml(path)
    entries = content.get("datasets")
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: expected a non-empty list under 'datasets'")
    datasets = []
    if progress:
        from tqdm import tqdm

        entries = tqdm(entries, desc="reading datasets", unit="file", leave=False)
    for index, entry in enumerate(entries):
        where = f"{path}: dataset {entry.get('name', index)!r}"
        kind = entry.get("type", "MapDataset")
        if kind not in _KINDS:
            raise ValueError(f"{where}: dataset type {kind!r}; fitax reads {', '.join(_KINDS)} entries")
        if "filename" not in entry:
            raise ValueError(f"{where}: no 'filename'")
        filename = Path(entry["filename"])
        if not filename.is_absolute():
            filename = path.parent / filename
        datasets.append(_KINDS[kind].read(filename, name=entry.get("name")))
    return Datasets(datasets)
