"""Plots of HistFactory inference results (matplotlib is imported only when a plot is made)."""

from __future__ import annotations

import numpy as np

__all__ = ["brazil_plot", "impact_plot", "exclusion_plot"]


def _pyplot(path, ax):
    import matplotlib

    if ax is None and path is not None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, figure, path) -> None:
    if figure is not None and path is not None:
        figure.tight_layout()
        figure.savefig(path, dpi=120)
        plt.close(figure)


def brazil_plot(limit, path=None, ax=None):
    """CLs against the POI for an :class:`~fitax.hep.limits.UpperLimit`: observed, expected
    median with its 1 and 2 sigma bands, the CLs level and the limits; saved to ``path`` (PNG)
    when given. Returns the axes."""
    plt = _pyplot(path, ax)
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
    _save(plt, figure, path)
    return ax


def impact_plot(ranking, path=None, top: int = 20, ax=None):
    """The ranking plot of a :class:`~fitax.hep.infer.Ranking`: for the ``top`` parameters
    of largest post-fit impact, the POI shifts at ``theta_hat +- sigma`` (pre-fit hollow,
    post-fit filled; bottom axis) and the pulls ``(theta_hat - theta_0) / sigma_0`` with
    their constraints (top axis). Saved to ``path`` (PNG) when given; returns the axes."""
    plt = _pyplot(path, ax)
    n = min(top, len(ranking.labels))
    figure = None
    if ax is None:
        figure, ax = plt.subplots(figsize=(7, 1.2 + 0.32 * n))
    rows = np.arange(n)[::-1]
    for values, style in (
        (ranking.prefit_up[:n], dict(facecolor="none", edgecolor="tab:blue", label=r"pre-fit $+1\sigma$")),
        (ranking.prefit_down[:n], dict(facecolor="none", edgecolor="tab:orange", label=r"pre-fit $-1\sigma$")),
        (ranking.postfit_up[:n], dict(color="tab:blue", alpha=0.7, label=r"post-fit $+1\sigma$")),
        (ranking.postfit_down[:n], dict(color="tab:orange", alpha=0.7, label=r"post-fit $-1\sigma$")),
    ):
        ax.barh(rows, np.nan_to_num(values), height=0.7, **style)
    ax.axvline(0, color="k", lw=0.6)
    ax.set_yticks(rows, ranking.labels[:n], fontsize=7)
    ax.set_xlabel(r"$\Delta\hat\mu$")
    shifts = np.stack([ranking.prefit_up[:n], ranking.prefit_down[:n], ranking.postfit_up[:n], ranking.postfit_down[:n]])
    limit = 1.15 * max(float(np.nanmax(np.abs(shifts))), 1e-12)
    ax.set_xlim(-limit, limit)
    pulls = ax.twiny()
    pulls.errorbar(ranking.pulls[:n, 0], rows, xerr=ranking.pulls[:n, 1], fmt="ko", ms=3, lw=1, label="pull")
    pulls.set_xlim(-2, 2)
    pulls.set_xlabel(r"$(\hat\theta - \theta_0) / \Delta\theta$")
    handles = ax.get_legend_handles_labels()
    more = pulls.get_legend_handles_labels()
    ax.legend(handles[0] + more[0], handles[1] + more[1], fontsize=7, loc="lower right")
    if not ranking.converged:
        ax.set_title("a fit did not converge", fontsize=9, color="red")
    _save(plt, figure, path)
    return ax


def exclusion_plot(result, path=None, level: float = 0.05, ax=None):
    """Observed CLs of each point of a :class:`~fitax.hep.patchsets.PatchsetResult` over its
    first two coordinates, with the observed (solid) and expected (dashed) contours at
    ``level`` when there are enough points to triangulate. Saved to ``path`` (PNG) when
    given; returns the axes."""
    plt = _pyplot(path, ax)
    if result.values.shape[1] < 2:
        raise ValueError(f"an exclusion plot needs two coordinates per point, the patchset has {list(result.labels)}")
    figure = None
    if ax is None:
        figure, ax = plt.subplots(figsize=(6, 4.5))
    x, y = result.values[:, 0], result.values[:, 1]
    points = ax.scatter(x, y, c=result.cls_obs, cmap="viridis", vmin=0, vmax=1, s=30, edgecolors="k", linewidths=0.3)
    failed = ~result.converged
    if failed.any():
        ax.scatter(x[failed], y[failed], marker="x", color="red", s=40, label="fit did not converge")
    if len(x) >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0:
        ax.tricontour(x, y, result.cls_obs, levels=[level], colors="k")
        ax.tricontour(x, y, result.cls_exp[:, 2], levels=[level], colors="k", linestyles="--")
    ax.margins(0.06)
    ax.get_figure().colorbar(points, ax=ax, label=r"observed CL$_s$")
    ax.set_xlabel(result.labels[0])
    ax.set_ylabel(result.labels[1])
    ax.set_title(f"CLs = {level:g}: observed (solid), expected (dashed)", fontsize=10)
    if failed.any():
        ax.legend(fontsize=8)
    _save(plt, figure, path)
    return ax
