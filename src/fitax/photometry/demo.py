"""``fitax phot demo``: the photometry pipeline end to end on simulated raw frames.

Simulates raw science, bias and flat frames (ZTF-like: bias pattern, vignetted flat, sky,
cosmic rays, saturation), calibrates them, detects and fits every star, compares with the
truth, and writes the catalog and plots.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..io import atomic_write

__all__ = ["run_phot_demo"]


def run_phot_demo(out: str | Path = "results/photometry", n_stars: int = 2000, seed: int = 0) -> dict:
    """Run the demo; writes ``out/raw/*.fits``, ``out/catalog.fits`` and ``out/phot_*.png``."""
    from .calibrate import calibrate, master_bias, master_flat
    from .io import read_image, write_catalog
    from .pipeline import ImageData, process_image, residual_image
    from .simulate import simulate_raw_frames

    out = Path(out)
    raw = simulate_raw_frames(out / "raw", (1024, 1024), n_stars, seed=seed)
    print(f"Simulated raw frames in {out / 'raw'}: a 1024x1024 science frame with {n_stars} stars, "
          f"{len(raw['bias'])} biases, {len(raw['flat'])} flats.")
    start = time.perf_counter()
    bias = master_bias(raw["bias"])
    flat = master_flat(raw["flat"], bias)
    science, header = read_image(raw["science"])
    image, _, mask = calibrate(science, bias, flat, gain=header["GAIN"], read_noise=header["READNOI"], saturation=header["SATURATE"])
    header["GAIN"], header["BUNIT"] = 1.0, "electron"
    data = ImageData(image=image, mask=mask, header=header, read_noise=float(header["READNOI"]), name="science.fits")
    catalog, shape = process_image(data)
    seconds = time.perf_counter() - start
    print(f"Calibrated, detected and fitted {len(catalog)} stars in {seconds:.1f} s (compilation included); PSF: {shape}")

    truth = raw["truth"]
    distance = np.hypot(np.asarray(catalog["x"])[:, None] - truth["x"][None], np.asarray(catalog["y"])[:, None] - truth["y"][None])
    nearest, matched = distance.argmin(axis=1), distance.min(axis=1) < 1.0
    true_flux = np.asarray(truth["flux"])[nearest]
    from .starfit import FAILURE_FLAGS

    good = matched & ((np.asarray(catalog["flags"]) & FAILURE_FLAGS) == 0)
    bright = good & (true_flux > 1e4)
    relative = (np.asarray(catalog["flux"]) - true_flux) / true_flux
    pulls = (np.asarray(catalog["flux"]) - true_flux) / np.asarray(catalog["flux_err"])
    print(f"Matched {matched.sum()} of {len(truth)} true stars; {int((~good & matched).sum())} flagged. Stars above 1e4 e-: "
          f"median flux error {np.median(relative[bright]):+.3%}; flux pulls std {np.std(pulls[good]):.2f} (robust "
          f"{1.4826 * np.median(np.abs(pulls[good] - np.median(pulls[good]))):.2f}).")
    write_catalog(catalog, out / "catalog.fits")
    _plot(out, image, residual_image(data, catalog, shape.psf), true_flux[good], np.asarray(catalog["flux"])[good], pulls[good])
    print(f"Wrote {out / 'catalog.fits'}, {out / 'phot_images.png'} and {out / 'phot_fluxes.png'}.")
    return {"catalog": catalog, "psf": shape, "relative": relative[bright], "pulls": pulls[good]}


def _plot(out: Path, image, residual, true_flux, flux, pulls) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    low, high = np.percentile(image, [5, 99.5])
    fig, axes = plt.subplots(1, 2, figsize=(11, 5), constrained_layout=True)
    for ax, data, title in [(axes[0], image, "calibrated image [e-]"), (axes[1], residual, "image - fitted stars [e-]")]:
        im = ax.imshow(data[:256, :256], origin="lower", vmin=low, vmax=high, cmap="gray_r")
        ax.set_title(title + " (256x256 corner)")
        ax.set_xlabel("x [pix]")
        fig.colorbar(im, ax=ax, shrink=0.8)
    atomic_write(out / "phot_images.png", lambda tmp: fig.savefig(tmp, dpi=100))
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    axes[0].loglog(true_flux, flux, ".", ms=3)
    axes[0].plot([true_flux.min(), true_flux.max()], [true_flux.min(), true_flux.max()], "k-", lw=0.8)
    axes[0].set_xlabel("true flux [e-]")
    axes[0].set_ylabel("fitted flux [e-]")
    grid = np.linspace(-5, 5, 200)
    axes[1].hist(np.clip(pulls, -5, 5), bins=np.linspace(-5, 5, 41), density=True, alpha=0.7, label=f"{pulls.size} stars")
    axes[1].plot(grid, np.exp(-0.5 * grid**2) / np.sqrt(2 * np.pi), "k-", label="N(0, 1)")
    axes[1].set_xlabel("(fitted - true flux) / flux_err")
    axes[1].legend()
    atomic_write(out / "phot_fluxes.png", lambda tmp: fig.savefig(tmp, dpi=100))
    plt.close(fig)
