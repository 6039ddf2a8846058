"""Plots of a gamma-ray fit: counts, npred and residual maps; counts spectrum and SEDs.

Host-side (matplotlib, Agg); every plot is written atomically.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ..fit import FitResult
from ..io import atomic_write
from ..parameters import ParameterSpace
from .datasets import Datasets
from .models import Models, SkyModel

__all__ = ["plot_excess_map", "plot_flux_points", "plot_light_curve", "plot_maps", "plot_spectrum", "sed_band"]


def _save(figure, path: Path) -> Path:
    import matplotlib.pyplot as plt

    atomic_write(path, lambda tmp: figure.savefig(tmp, dpi=110, format="png"))
    plt.close(figure)
    return path


def _smooth(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian smoothing (zero outside the image)."""
    half = int(np.ceil(4 * sigma))
    weights = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma) ** 2)
    weights /= weights.sum()
    rows = np.apply_along_axis(lambda r: np.convolve(r, weights, mode="same"), 1, image)
    return np.apply_along_axis(lambda c: np.convolve(c, weights, mode="same"), 0, rows)


def plot_maps(datasets: Datasets, models: Models, path, smoothing: float = 2.0) -> Path:
    """Counts, npred and the residual significance, summed over energy (inside the fit
    mask) and over the datasets that share the first one's sky grid. The residual is
    ``(n - mu) / sqrt(var)`` after Gaussian smoothing of ``smoothing`` pixels (for Poisson
    counts smoothed with weights w, ``var = sum w^2 mu``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import PowerNorm

    npreds = datasets.npred(models)
    first = datasets[0]
    same = [i for i, d in enumerate(datasets) if d.shape == first.shape and np.allclose(d.wcs.wcs.crval, first.wcs.wcs.crval)]
    counts = sum(np.where(datasets[i].mask, datasets[i].counts, 0).sum(axis=0) for i in same)
    npred = sum(np.where(datasets[i].mask, npreds[i], 0).sum(axis=0) for i in same)
    half = int(np.ceil(4 * smoothing))
    weights = np.exp(-0.5 * (np.arange(-half, half + 1) / smoothing) ** 2)
    squared_norm = float((weights / weights.sum()) @ (weights / weights.sum()))
    # w^2 of the 2-d weights is a Gaussian of width sigma/sqrt(2) times (sum of 1-d w^2)^2
    variance = _smooth(npred, smoothing / np.sqrt(2)) * squared_norm**2
    with np.errstate(divide="ignore", invalid="ignore"):
        residual = np.where(variance > 0, (_smooth(counts, smoothing) - _smooth(npred, smoothing)) / np.sqrt(variance), 0.0)
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.6), subplot_kw={"projection": first.wcs.celestial})
    limit = max(np.percentile(np.abs(residual), 99.5), 3.0)
    for ax, image, title, options in (
        (axes[0], counts, "counts", {"cmap": "viridis", "norm": PowerNorm(0.5)}),
        (axes[1], npred, "npred (fitted models + background)", {"cmap": "viridis", "norm": PowerNorm(0.5)}),
        (axes[2], residual, f"residual significance (smoothed, {smoothing:g} px)", {"cmap": "RdBu_r", "vmin": -limit, "vmax": limit}),
    ):
        shown = ax.imshow(image, origin="lower", **options)
        ax.set_title(title)
        ax.coords[0].set_axislabel("lon")
        ax.coords[1].set_axislabel("lat")
        figure.colorbar(shown, ax=ax, fraction=0.046)
    for model in models.sky_models:
        position = model.spatial.position
        if position is not None:
            axes[0].scatter(position.spherical.lon.deg, position.spherical.lat.deg, transform=axes[0].get_transform(
                position.frame.name), marker="+", color="white", s=60)
            axes[0].text(position.spherical.lon.deg, position.spherical.lat.deg, f" {model.name}", color="white",
                         transform=axes[0].get_transform(position.frame.name), fontsize=8)
    figure.suptitle(f"{len(same)} dataset(s) summed over energy")
    figure.tight_layout()
    return _save(figure, Path(path))


def sed_band(model: SkyModel, result: FitResult, energy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``E^2 dN/dE`` [TeV cm-2 s-1] of a fitted source and the 1-sigma error of its
    logarithm, propagated from the fit covariance through the exact Jacobian of ``log dN/dE``
    (the band is ``sed x exp(+-error)``)."""
    prefix = f"{model.name}.spectral."
    free = [i for i, name in enumerate(result.free_names) if name.startswith(prefix)]
    values = np.asarray(model.spectral(jnp.asarray(energy)))
    if not free:
        return energy**2 * values, np.zeros_like(values)
    space = ParameterSpace.from_params(model.spectral)
    start = space.values(model.spectral)
    log_dnde = lambda v: jnp.log(space.with_values(model.spectral, v)(jnp.asarray(energy)))  # noqa: E731
    jacobian = np.asarray(jax.jacfwd(log_dnde)(start))
    names = [prefix + name for name in space.names]
    index = [result.free_names.index(name) for name in names]
    covariance = np.asarray(result.covariance)[np.ix_(index, index)]
    sigma = np.sqrt(np.einsum("ei,ij,ej->e", jacobian, covariance, jacobian))
    return energy**2 * values, sigma


def _plot_excess(ax, datasets: Datasets, models: Models) -> None:
    """Excess counts of 1D spectra against the predicted signal: ``n_on - alpha n_off`` for
    on-off spectra, counts minus the (fitted) background spectrum otherwise."""
    from .spectrum import SpectrumDatasetOnOff

    npreds = datasets.npred(models)
    for index, (dataset, npred) in enumerate(zip(datasets, npreds)):
        edges, mask = dataset.energy_edges, dataset.mask
        centres = np.sqrt(edges[1:] * edges[:-1])
        if isinstance(dataset, SpectrumDatasetOnOff):
            background, variance = dataset.alpha * dataset.counts_off, dataset.counts + dataset.alpha**2 * dataset.counts_off
        else:
            model = models.background_model(dataset.name)
            scale = 1.0 if model is None else np.asarray(model(centres))
            background, variance = dataset.background * scale, dataset.counts
        color = f"C{index % 10}"
        ax.errorbar(centres[mask], (dataset.counts - background)[mask], yerr=np.sqrt(variance)[mask], fmt="o", ms=3, color=color,
                    label=dataset.name)
        ax.stairs(np.where(mask, npred, np.nan), edges, color=color)
    ax.set(xscale="log", xlabel="reconstructed energy [TeV]", ylabel="excess counts per bin",
           title="excess (points) and predicted signal (lines), safe range")
    ax.legend(fontsize=7, ncol=2)


def plot_spectrum(datasets: Datasets, models: Models, result: FitResult, path) -> Path:
    """Counts per reconstructed-energy bin (all datasets, fit mask) with npred of the
    background and of each source (for 1D spectra: excess against predicted signal),
    and the fitted SEDs with their 1-sigma bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .mapdataset import MapDataset

    if not all(isinstance(d, MapDataset) for d in datasets):
        figure, (ax_counts, ax_sed) = plt.subplots(1, 2, figsize=(13, 4.8))
        _plot_excess(ax_counts, Datasets([d for d in datasets if not isinstance(d, MapDataset)]), models)
        low = min(d.energy_edges[:-1][d.mask].min() for d in datasets if d.mask.any())
        high = max(d.energy_edges[1:][d.mask].max() for d in datasets if d.mask.any())
        ax_counts.set_xlim(low, high)
        _plot_seds(ax_sed, models, result, np.geomspace(low, high, 100))
        figure.tight_layout()
        return _save(figure, Path(path))
    total = datasets.npred(models)
    edges = datasets[0].energy_edges
    same_axis = [i for i, d in enumerate(datasets) if np.allclose(d.energy_edges, edges)]

    def spectrum(arrays):
        return sum(np.where(datasets[i].mask, arrays[i], 0).sum(axis=(1, 2)) for i in same_axis)

    counts = spectrum([d.counts for d in datasets])
    figure, (ax_counts, ax_sed) = plt.subplots(1, 2, figsize=(13, 4.8))
    centres = np.sqrt(edges[1:] * edges[:-1])
    ax_counts.errorbar(centres, counts, yerr=np.sqrt(counts), fmt="o", color="black", label="counts")
    ax_counts.stairs(spectrum(total), edges, label="npred (total)", color="C3", linewidth=2)
    for model in models.sky_models:
        without = datasets.npred(models.without(model.name))
        ax_counts.stairs(spectrum(total) - spectrum(without), edges, label=f"npred {model.name}")
    sources_removed = Models([m for m in models if not isinstance(m, SkyModel)])
    ax_counts.stairs(spectrum(datasets.npred(sources_removed)), edges, label="npred background", linestyle="--")
    ax_counts.set(xscale="log", yscale="log", xlabel="reconstructed energy [TeV]", ylabel="counts per bin",
                  title="counts spectrum (fit mask, all datasets)")
    ax_counts.legend(fontsize=8)
    _plot_seds(ax_sed, models, result, np.geomspace(edges[0], edges[-1], 100))
    figure.tight_layout()
    return _save(figure, Path(path))


def _plot_seds(ax, models: Models, result: FitResult, energy: np.ndarray) -> None:
    for model in models.sky_models:
        sed, log_error = sed_band(model, result, energy)
        ax.plot(energy, sed, label=model.name)
        ax.fill_between(energy, sed * np.exp(-log_error), sed * np.exp(log_error), alpha=0.3)
    ax.set(xscale="log", yscale="log", xlabel="true energy [TeV]", ylabel="E² dN/dE [TeV cm⁻² s⁻¹]",
           title="fitted spectra (1σ bands from the covariance)")
    ax.legend(fontsize=8)


def plot_flux_points(points, model: SkyModel, path) -> Path:
    """The SED ``E^2 dN/dE`` of flux points (``n_sigma`` error bars; upper limits, arrows,
    where ``is_ul``) over the model they were computed with (its spectrum as given: the
    covariance is not in ``models.yaml``, so no band)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = points.table
    figure, ax = plt.subplots(figsize=(6.5, 4.8))
    energy = np.geomspace(float(table["e_min"][0]), float(table["e_max"][-1]), 100)
    ax.plot(energy, np.asarray(model.spectral(energy)) * energy**2, color="C0", label=f"{model.name} (model)")
    e_ref, ref = np.asarray(table["e_ref"]), np.asarray(table["ref_e2dnde"])
    x_error = [e_ref - np.asarray(table["e_min"]), np.asarray(table["e_max"]) - e_ref]
    points_mask = ~np.asarray(table["is_ul"]) & np.isfinite(np.asarray(table["norm"]))
    ax.errorbar(e_ref[points_mask], (table["norm"] * ref)[points_mask],
                xerr=[x[points_mask] for x in x_error],
                yerr=[(table["norm_errn"] * ref)[points_mask], (table["norm_errp"] * ref)[points_mask]],
                fmt="o", color="black", label="flux points")
    limits = np.asarray(table["is_ul"]) & np.isfinite(np.asarray(table["norm_ul"]))
    if limits.any():
        ax.errorbar(e_ref[limits], (table["norm_ul"] * ref)[limits], xerr=[x[limits] for x in x_error],
                    yerr=0.3 * (table["norm_ul"] * ref)[limits], uplims=True, fmt="v", color="grey", label="upper limits")
    ax.set(xscale="log", yscale="log", xlabel="energy [TeV]", ylabel="E² dN/dE [TeV cm⁻² s⁻¹]",
           title=f"{model.name}: flux points")
    ax.legend(fontsize=8)
    figure.tight_layout()
    return _save(figure, Path(path))


def plot_light_curve(curve, path) -> Path:
    """Integral flux per time interval, one series per energy bin (``n_sigma`` error bars from
    the profile; upper limits, arrows, where ``is_ul``), against time [MJD]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = curve.table
    figure, ax = plt.subplots(figsize=(7.5, 4.5))
    middle = 0.5 * (np.asarray(table["time_min"]) + np.asarray(table["time_max"]))
    half = 0.5 * (np.asarray(table["time_max"]) - np.asarray(table["time_min"]))
    for k in range(np.asarray(table["norm"]).shape[1]):
        ref = np.asarray(table["ref_flux"])[:, k]
        norm, limit = np.asarray(table["norm"])[:, k], np.asarray(table["is_ul"])[:, k].astype(bool)
        label = f"{table['e_min'][0][k]:.3g}-{table['e_max'][0][k]:.3g} TeV"
        shown = ~limit & np.isfinite(norm)
        ax.errorbar(middle[shown], (norm * ref)[shown], xerr=half[shown],
                    yerr=[(np.asarray(table["norm_errn"])[:, k] * ref)[shown], (np.asarray(table["norm_errp"])[:, k] * ref)[shown]],
                    fmt="o", color=f"C{k}", label=label)
        upper = limit & np.isfinite(np.asarray(table["norm_ul"])[:, k])
        if upper.any():
            values = (np.asarray(table["norm_ul"])[:, k] * ref)[upper]
            ax.errorbar(middle[upper], values, xerr=half[upper], yerr=0.3 * values, uplims=True, fmt="v", color=f"C{k}")
    ax.set(xlabel="time [MJD]", ylabel="flux [cm⁻² s⁻¹]", title=f"{table.meta.get('SOURCE', '')}: light curve")
    ax.legend(fontsize=8)
    figure.tight_layout()
    return _save(figure, Path(path))


def plot_excess_map(maps, path) -> Path:
    """The significance (``sqrt_ts``) and excess maps side by side, in sky coordinates."""
    title = f"correlation radius {maps.meta['CORR_RAD'][0]:.3g} deg"
    return _significance_and(maps.wcs, maps.maps["sqrt_ts"][0], maps.maps["npred_excess"][0], "excess counts", title, path)


def plot_ts_map(maps, path) -> Path:
    """The significance (``sqrt_ts``) and the amplitude (``norm``) maps of the first energy bin
    side by side, in sky coordinates."""
    title = f"TS map {maps.energy_edges[0]:.3g}-{maps.energy_edges[1]:.3g} TeV"
    return _significance_and(maps.wcs, maps.maps["sqrt_ts"][0], maps.maps["norm"][0], "norm (x reference flux)", title, path)


def _significance_and(wcs, significance: np.ndarray, other: np.ndarray, label: str, title: str, path) -> Path:
    """A significance image (symmetric diverging colours) beside another, on ``wcs``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure = plt.figure(figsize=(12, 5))
    limit = float(np.nanmax(np.abs(significance))) if np.isfinite(significance).any() else 1.0
    panels = ((significance, "significance (sqrt TS)", "RdBu_r", -limit, limit), (other, label, "viridis", None, None))
    for index, (data, name, cmap, low, high) in enumerate(panels):
        ax = figure.add_subplot(1, 2, index + 1, projection=wcs)
        image = ax.imshow(data, origin="lower", cmap=cmap, vmin=low, vmax=high)
        figure.colorbar(image, ax=ax, label=name)
        ax.set_title(f"{name}, {title}")
    figure.tight_layout()
    return _save(figure, Path(path))
