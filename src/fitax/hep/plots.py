"""Plots of HistFactory inference results (matplotlib is imported only when a plot is made)."""

from __future__ import annotations

import numpy as np

__all__ = ["brazil_plot"]


def brazil_plot(limit, path=None, ax=None):
    """CLs against the POI for an :class:`~fitax.hep.limits.UpperLimit`: observed, expected
    median with its 1 and 2 sigma bands, the CLs level and the limits; saved to ``path`` (PNG)
    when given. Returns the axes."""
    import matplotlib

    if ax is None and path is not None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure = None
    if ax is None:
        figure, ax = plt.subplots(figsize=(6, 4.5))
    mu, exp = limit.scan, limit.cls_exp
    ax.fill_between(mu, exp[:, 0], exp[:, 4], color="yellow", label=r"expected $\pm 2\sigma$")
    ax.fill_between(mu, exp[:, 1], exp[:, 3], color="limegreen", label=r"expected $\pm 1\sigma$")
    ax.plot(mu, exp[:, 2], "k--", label="expected")
    ax.plot(mu, limit.cls_obs, "k-o", ms=3, label="observed")
    ax.axhline(limit.level, color="red", lw=1, label=f"CLs = {limit.level:g}")
    ax.axvline(limit.observed, color="k", lw=0.8, ls=":")
    ax.set_xlabel("POI")
    ax.set_ylabel(r"CL$_s$")
    ax.set_ylim(0, 1.05)
    ax.set_xlim(float(np.min(mu)), float(np.max(mu)))
    title = f"observed limit {limit.observed:.4g}, expected {limit.expected[2]:.4g}"
    if not limit.converged:
        title += " (a fit did not converge)"
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    if figure is not None and path is not None:
        figure.tight_layout()
        figure.savefig(path, dpi=120)
        plt.close(figure)
    return ax
