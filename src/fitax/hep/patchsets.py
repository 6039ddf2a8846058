"""CLs hypotests for every signal point of a pyhf patchset: the input of an exclusion contour.

A patchset (pyhf's format, HEPData's ``patchset.json``) holds one JSON patch per signal point
of a search, each labelled with the point's coordinates (e.g. two sparticle masses), and the
digest of the background-only workspace it applies to. :func:`hypotest_patchset` checks the
digest, applies each patch and runs the same hypotest on every point. Points with the same
model structure (the usual case: only the signal yields change) are stacked and tested
together, every fit of every point in two :func:`fitax.fit_batch` calls
(:func:`fitax.hep.stacked.hypotest_stacked`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .calculators import HypotestResult
from .stacked import hypotest_stacked, same_structure
from .workspace import Patch, Workspace, patchset_labels, read_patchset

__all__ = ["PatchsetResult", "hypotest_patchset"]


@dataclasses.dataclass(frozen=True, repr=False)
class PatchsetResult:
    """Hypotests of every point of a patchset, in the patchset's order.

    Attributes:
        labels: names of the coordinates of each point (the patchset's ``labels``).
        names: patch names.
        values: ``(n_points, n_labels)`` coordinates of each point.
        results: the :class:`~fitax.hep.calculators.HypotestResult` of each point.
    """

    labels: tuple[str, ...]
    names: list[str]
    values: np.ndarray
    results: list[HypotestResult]

    @property
    def cls_obs(self) -> np.ndarray:
        return np.array([r.cls_obs for r in self.results])

    @property
    def cls_exp(self) -> np.ndarray:
        """``(n_points, 5)`` expected band, pyhf's order."""
        return np.array([r.cls_exp for r in self.results])

    @property
    def converged(self) -> np.ndarray:
        return np.array([r.converged for r in self.results], dtype=bool)

    def excluded(self, level: float = 0.05) -> np.ndarray:
        """Points whose observed CLs is below ``level`` (excluded at ``1 - level`` CL)."""
        return self.cls_obs < level

    def to_dict(self) -> dict:
        """``{"labels": [...], "converged": bool, "points": [...]}``, each point with its name,
        values, ``CLs_obs``, ``CLs_exp``, ``converged`` and warnings."""
        points = []
        for name, values, result in zip(self.names, self.values.tolist(), self.results):
            entry = result.to_dict()
            points.append({"name": name, "values": values, **{k: entry[k] for k in ("CLs_obs", "CLs_exp", "converged", "warnings")}})
        return {"labels": list(self.labels), "converged": bool(self.converged.all()), "points": points}

    def __repr__(self) -> str:
        return (
            f"PatchsetResult({len(self.names)} points over {list(self.labels)}, {int(self.excluded().sum())} excluded at 95% CL, "
            f"converged={bool(self.converged.all())})"
        )


def hypotest_patchset(
    workspace: Workspace,
    patchset: str | Path | Sequence[Patch],
    poi_test: float = 1.0,
    test_stat: str = "qtilde",
    *,
    measurement: str | None = None,
    modifier_settings: dict | None = None,
    labels: Sequence[str] | None = None,
    progress: bool = True,
) -> PatchsetResult:
    """The asymptotic CLs hypotest of ``poi_test`` on every point of a patchset.

    Args:
        workspace: the background-only workspace.
        patchset: a pyhf patchset file (its digest must match ``workspace``) or patches
            already read (:func:`~fitax.hep.workspace.read_patchset`).
        poi_test, test_stat: as :func:`~fitax.hep.calculators.hypotest`.
        measurement, modifier_settings: as :meth:`~fitax.hep.workspace.Workspace.model`.
        labels: coordinate names (default: the file's ``labels``, else ``x0, x1, ...``).
        progress: show a progress bar (on stderr).

    Example:
        >>> result = hypotest_patchset(Workspace.read("BkgOnly.json"), "patchset.json")  # doctest: +SKIP
        >>> result.values[result.excluded()]  # doctest: +SKIP
    """
    if isinstance(patchset, (str, Path)):
        patches = read_patchset(patchset, workspace=workspace)
        labels = labels if labels is not None else patchset_labels(patchset)
    else:
        patches = list(patchset)
    if not patches:
        raise ValueError("the patchset has no patches")
    n_values = len(patches[0].values)
    labels = tuple(labels) if labels is not None else tuple(f"x{i}" for i in range(n_values))
    from tqdm.auto import tqdm

    models, data = [], []
    for patch in tqdm(patches, desc="models", unit="point", disable=not progress):
        patched = workspace.patch(patch)
        models.append(patched.model(measurement=measurement, modifier_settings=modifier_settings))
        data.append(patched.data(models[-1]))
    results: list[HypotestResult | None] = [None] * len(patches)
    for group in tqdm(same_structure(models), desc="hypotests", unit="group", disable=not progress):
        for i, result in zip(group, hypotest_stacked(poi_test, [data[i] for i in group], [models[i] for i in group], test_stat)):
            results[i] = result
    values = np.array([list(p.values) for p in patches], dtype=float).reshape(len(patches), -1)
    return PatchsetResult(labels=labels, names=[p.name for p in patches], values=values, results=results)
