"""The AGC plots: stacked histograms per region, the post-fit model, the optimisation history.

matplotlib is imported only when a plot is made; each function saves a PNG and returns its path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...io import atomic_write
from .histograms import Histograms
from .model import CHANNELS, SAMPLE_NAMES

__all__ = ["optimisation_plot", "postfit_plot", "stacked_plot"]

_OBSERVABLES = {"4j1b": r"$H_T$ [GeV]", "4j2b": r"$m_{bjj}$ [GeV]"}


def _figure(columns: int, size: tuple[float, float]):
    """A figure with ``columns`` axes, made without pyplot: a notebook's backend is left alone."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=size)
    return figure, np.atleast_1d(figure.subplots(1, columns))


def _save(figure, path) -> Path:
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, dpi=110, format="png"))
    return Path(path)


def stacked_plot(histograms: Histograms, path) -> Path:
    """The nominal samples stacked in each region, with the pseudodata (AGC's first plot)."""
    figure, axes = _figure(len(CHANNELS), (11, 4.2))
    edges = histograms.edges
    for ax, region in zip(axes, CHANNELS):
        names = [p for p in SAMPLE_NAMES if f"{region}_{p}" in histograms]
        values = [histograms[f"{region}_{p}"] for p in names]
        ax.hist([edges[:-1]] * len(values), bins=edges, weights=values, stacked=True, label=[SAMPLE_NAMES[p] for p in names])
        data = f"{region}_pseudodata"
        if data in histograms:
            centres = 0.5 * (edges[1:] + edges[:-1])
            ax.errorbar(centres, histograms[data], yerr=np.sqrt(np.maximum(histograms[data], 0)), fmt="ko", ms=3, label="pseudodata")
        ax.set_xlabel(_OBSERVABLES[region])
        ax.set_ylabel("events")
        ax.set_title(f"{region} ({CHANNELS[region]})")
        ax.legend(fontsize=8)
    return _save(figure, path)


def postfit_plot(yields: dict, edges: np.ndarray, path, title: str = "post-fit") -> Path:
    """Stacked fitted yields per channel (from :func:`fitax.hep.infer.yields`) with their
    uncertainty band and the data."""
    figure, axes = _figure(len(yields), (11, 4.2))
    centres = 0.5 * (edges[1:] + edges[:-1])
    for ax, (channel, entry) in zip(axes, yields.items()):
        names = list(entry["samples"])
        values = [np.asarray(entry["samples"][n]) for n in names]
        ax.hist([edges[:-1]] * len(values), bins=edges, weights=values, stacked=True, label=names)
        total, error = np.asarray(entry["total"]), np.asarray(entry["uncertainty"])
        ax.stairs(total + error, edges, baseline=total - error, fill=True, color="gray", alpha=0.4, label="uncertainty")
        if "data" in entry:
            ax.errorbar(centres, entry["data"], yerr=np.sqrt(np.maximum(entry["data"], 0)), fmt="ko", ms=3, label="data")
        ax.set_title(f"{channel}: {title}")
        ax.set_xlabel("observable [GeV]")
        ax.legend(fontsize=8)
    return _save(figure, path)


def optimisation_plot(history: list[dict], path) -> Path:
    """The soft expected uncertainty of ttbar_norm and the thresholds at each step."""
    figure, (left, right) = _figure(2, (10, 4))
    steps = np.arange(len(history))
    left.plot(steps, [h["uncertainty"] for h in history], "o-")
    left.set_xlabel("step")
    left.set_ylabel(r"expected $\sigma$(ttbar_norm), soft cuts")
    for name in [k for k in history[0] if k != "uncertainty"]:
        start = history[0][name]
        right.plot(steps, [h[name] / start for h in history], "o-", label=f"{name} (start {start:g})")
    right.set_xlabel("step")
    right.set_ylabel("threshold / start")
    right.legend(fontsize=8)
    return _save(figure, path)
