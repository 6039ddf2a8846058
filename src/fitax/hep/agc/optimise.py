"""Optimise AGC cut thresholds by gradient descent on the analysis' expected sensitivity.

With soft cuts (:class:`~fitax.hep.agc.selection.Softness`) every bin of every histogram is a
differentiable function of the thresholds; :class:`~fitax.hep.agc.differentiable.ModelFromHistograms`
turns the histograms into the HistFactory model, and
:func:`~fitax.hep.agc.differentiable.expected_poi_uncertainty` into the expected precision of
``ttbar_norm``. :func:`optimise_cuts` minimises that uncertainty with optax's Adam over the
thresholds named in ``free`` (in units of their default values, so one learning rate serves
GeV and dimensionless cuts alike), then confirms the result with hard cuts: the same pipeline
as ``fitax hep agc`` (exact histograms, the JSON workspace) at the first and the last cuts.

Events are loaded once and kept on the device, so this is for samples that fit in memory
(a few hundred thousand events: the example and the CLI's ``--optimise``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from ...device import to_device
from .differentiable import ModelFromHistograms, expected_poi_uncertainty
from .histograms import fill_histograms, histogram_names, kernel, read_agc_chunks, rebin_for_fit, rebin_values, resolution_key
from .inputs import Sample
from .model import build_workspace
from .selection import BINNING, REGIONS, Cuts, Softness

__all__ = ["LoadedSamples", "OptimisationResult", "hard_uncertainty", "optimise_cuts", "soft_histograms"]

SOFT_TRIJET_CAP = 10
"""Soft cuts take the trijets of this many leading jets, whatever the thresholds (hard cuts take
the selected jets, up to :data:`~fitax.hep.agc.histograms.TRIJET_CAP`, the rest recomputed)."""


class LoadedSamples(eqx.Module):
    """Every chunk of every sample on the device, with its weight and resolution key."""

    chunks: tuple
    weights: tuple
    keys: tuple
    names: tuple = eqx.field(static=True)

    @classmethod
    def load(cls, samples: Sequence[Sample], seed: int = 0, step_size: int = 200_000) -> LoadedSamples:
        chunks, weights, keys, names = [], [], [], []
        for sample in samples:
            for index, path in enumerate(sample.files):
                for chunk in read_agc_chunks(path, step_size):
                    chunks.append(chunk)
                    weights.append(to_device(np.float64(sample.event_weight)))
                    keys.append(resolution_key(seed, sample, index))
                    names.append(tuple(histogram_names(sample)))
        return cls(tuple(chunks), tuple(weights), tuple(keys), tuple(names))


def soft_histograms(loaded: LoadedSamples, cuts: Cuts, softness: Softness) -> tuple[dict, dict]:
    """Rebinned soft histograms (``sumw``, ``sumw2`` by AGC name) as JAX functions of ``cuts``."""
    sumw: dict = {}
    sumw2: dict = {}
    for chunk, weight, key, names in zip(loaded.chunks, loaded.weights, loaded.keys, loaded.names):
        cap = min(SOFT_TRIJET_CAP, chunk.collections["Jet"].cap)
        w, w2, _, _ = kernel(chunk.collections, chunk.valid, chunk.scalars["event"], weight, key, cuts, softness, trijet_cap=cap, binning=BINNING)
        for row, suffix in names:
            for r, region in enumerate(REGIONS):
                name = f"{region}_{suffix}"
                sumw[name] = sumw.get(name, 0.0) + rebin_values(w[row, r, 1:-1])  # under/overflow dropped
                sumw2[name] = sumw2.get(name, 0.0) + rebin_values(w2[row, r, 1:-1])
    return sumw, sumw2


def hard_uncertainty(samples: Sequence[Sample], cuts: Cuts, seed: int = 0) -> float:
    """Expected uncertainty of ``ttbar_norm`` with hard cuts, through the JSON workspace."""
    from ..workspace import Workspace

    spec, _ = build_workspace(rebin_for_fit(fill_histograms(samples, cuts, seed=seed, progress=False)))
    return float(expected_poi_uncertainty(Workspace(spec).model()))


@dataclasses.dataclass(frozen=True)
class OptimisationResult:
    """History of an :func:`optimise_cuts` run and its hard-cut confirmation.

    Attributes:
        history: per step, the thresholds (``{name: value}``) and the soft expected uncertainty.
        hard_before, hard_after: expected uncertainty of ``ttbar_norm`` with hard cuts at the
            first and the final thresholds.
        cuts: the final thresholds.
    """

    history: list[dict]
    hard_before: float
    hard_after: float
    cuts: Cuts

    @property
    def improved(self) -> bool:
        return self.hard_after < self.hard_before

    def to_dict(self) -> dict:
        return {
            "history": self.history,
            "hard_cut_uncertainty_before": self.hard_before,
            "hard_cut_uncertainty_after": self.hard_after,
            "improved": self.improved,
            "cuts": {f.name: float(getattr(self.cuts, f.name)) for f in dataclasses.fields(Cuts)},
        }


def optimise_cuts(
    samples: Sequence[Sample],
    free: Sequence[str] = ("jet_pt", "btag", "lepton_pt"),
    *,
    steps: int = 25,
    learning_rate: float = 0.03,
    softness: Softness = Softness(),
    start: Cuts = Cuts(),
    seed: int = 0,
    progress: bool = True,
) -> OptimisationResult:
    """Minimise the soft-cut expected uncertainty of ``ttbar_norm`` over the thresholds ``free``
    (fields of :class:`Cuts`), then measure it with hard cuts before and after.

    Example:
        >>> result = optimise_cuts(read_inputs("inputs.json"), steps=20)  # doctest: +SKIP
        >>> result.hard_before, result.hard_after  # doctest: +SKIP
    """
    unknown = [name for name in free if name not in {f.name for f in dataclasses.fields(Cuts)}]
    if unknown:
        raise ValueError(f"unknown cut {unknown}; the cuts are {[f.name for f in dataclasses.fields(Cuts)]}")
    loaded = LoadedSamples.load(samples, seed)
    scales = {name: float(getattr(start, name)) for name in free}
    spec, _ = build_workspace(rebin_for_fit(fill_histograms(samples, start, seed=seed, progress=False)))
    mapping = ModelFromHistograms(spec)

    def cuts_of(x):
        return eqx.tree_at(lambda c: tuple(getattr(c, n) for n in free), start, tuple(x[n] * scales[n] for n in free))

    def objective(x):
        return expected_poi_uncertainty(mapping(*soft_histograms(loaded, cuts_of(x), softness)))

    x = {name: jnp.asarray(1.0) for name in free}
    optimiser = optax.adam(learning_rate)
    state = optimiser.init(x)
    history = []
    for _ in tqdm(range(steps), desc="optimising cuts", disable=not progress):
        value, grad = jax.value_and_grad(objective)(x)
        if not np.isfinite(float(value)) or not all(np.isfinite(float(g)) for g in grad.values()):
            raise FloatingPointError(
                f"the soft-cut expected uncertainty or its gradient is not finite at step {len(history)} "
                f"(cuts {({n: float(x[n]) * scales[n] for n in free})}): a template of the model emptied"
            )
        history.append({"uncertainty": float(value), **{n: float(x[n]) * scales[n] for n in free}})
        updates, state = optimiser.update(grad, state)
        x = optax.apply_updates(x, updates)
    final = cuts_of({n: float(v) for n, v in x.items()})
    history.append({"uncertainty": float(objective(x)), **{n: float(x[n]) * scales[n] for n in free}})
    return OptimisationResult(history, hard_uncertainty(samples, start, seed), hard_uncertainty(samples, final, seed), final)
