"""``fitax gamma reduce``, ``fitax gamma fit``, ``fitax gamma estimate``, ``fitax gamma
npred``, ``fitax gamma simulate`` and ``fitax gamma demo``: Gammapy-style data reduction, 3D fits, estimators and
predicted counts from the shell."""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_parser", "run"]


# fitax.gamma.models.PSF_MODES, spelled out: the parser is built without importing JAX
_PSF_MODES = ("centre", "position")
_PSF_MODE_HELP = ("how extended sources meet the PSF, for every model: centre (the PSF at the model's centre, Gammapy's "
                 "way) or position (the PSF of each pixel); default: each model's psf_mode in models.yaml, else centre")


def add_parser(commands) -> None:
    gamma = commands.add_parser("gamma", help="gamma-ray likelihood fits of Gammapy datasets and models")
    sub = gamma.add_subparsers(dest="gamma_command", metavar="STEP", required=True)
    reduce = sub.add_parser("reduce", help="reduce DL3 runs to MapDatasets as a Gammapy AnalysisConfig YAML says")
    reduce.add_argument("config", help="Gammapy AnalysisConfig YAML (its observations and datasets sections; type 3d)")
    reduce.add_argument("--out", required=True, help="output folder: one MapDataset file per run, datasets.yaml, models.yaml")
    estimate = sub.add_parser("estimate", help="flux points, a light curve, an excess map or a TS map from fitted models (Gammapy's estimators)")
    estimate.add_argument("kind", choices=["flux-points", "light-curve", "excess-map", "ts-map"], help="what to estimate")
    estimate.add_argument("--datasets", required=True, help="Gammapy datasets.yaml")
    estimate.add_argument("--models", default=None, help="Gammapy models.yaml with the fitted models (fitax gamma fit's DIR/models.yaml); "
                                                         "excess maps without it: no sources, background templates as they are")
    estimate.add_argument("--out", required=True, help="output folder: flux_points.fits (Gammapy's gadf-sed) and flux_points.png, "
                                                       "light_curve.fits (Gammapy's lightcurve format) and light_curve.png, "
                                                       "excess_map.fits and excess_map.png, or ts_map.fits (Gammapy's FluxMaps) and ts_map.png")
    estimate.add_argument("--source", default=None, help="name of the source model (flux points, light curves)")
    estimate.add_argument("--correlation-radius", default="0.1deg", help="excess maps: top-hat radius (default 0.1deg)")
    estimate.add_argument("--kernel", default="point", help="TS maps: the test source, point or gaussian:WIDTH (e.g. gaussian:0.1deg)")
    estimate.add_argument("--index", type=float, default=2.0, help="TS maps: power-law index of the test source (default 2)")
    estimate.add_argument("--kernel-width", default="1deg", help="TS maps: full width of the kernel (default 1deg)")
    estimate.add_argument("--errors", action="store_true", help="TS maps: also norm_errn/norm_errp (1 sigma) and norm_ul (2 sigma)")
    estimate.add_argument("--energy-edges", default=None,
                          help="comma-separated energy bin edges in TeV, e.g. 1,3,10 (required for flux points; light curves: 1,10)")
    estimate.add_argument("--time-bins", default=None,
                          help="light curves: comma-separated time bin edges [MJD, TT] (default: one bin per run's good time interval)")
    estimate.add_argument("--reoptimize", action="store_true", help="flux points and light curves: refit the other models' free "
                                                                     "parameters in each energy bin (Gammapy's reoptimize=True)")
    estimate.add_argument("--no-plots", action="store_true", help="skip the plot")
    fit = sub.add_parser("fit", help="fit models.yaml to the datasets of datasets.yaml (jointly)")
    fit.add_argument("--datasets", required=True, help="Gammapy datasets.yaml (MapDataset, SpectrumDataset or SpectrumDatasetOnOff files)")
    fit.add_argument("--models", required=True, help="Gammapy models.yaml with the start values")
    fit.add_argument("--out", required=True, help="output folder: models.yaml, results.ecsv, maps.png, spectrum.png")
    fit.add_argument("--ts", nargs="*", default=[], metavar="SOURCE", help="also compute the TS of these sources")
    fit.add_argument("--no-plots", action="store_true", help="skip the plots")
    fit.add_argument("--sample", type=int, default=0, metavar="N",
                     help="after the fit, draw N posterior samples per chain (NUTS, 4 chains, N warm-up iterations): "
                          "posterior.ecsv and corner.png")
    fit.add_argument("--seed", type=int, default=0, help="random seed of the sampler (default: 0)")
    fit.add_argument("--psf-mode", choices=_PSF_MODES, default=None, help=_PSF_MODE_HELP)
    simulate = sub.add_parser("simulate", help="simulate a survey: observations x event types as Gammapy datasets, true and start models")
    simulate.add_argument("--n-obs", type=int, required=True, help="number of observations")
    simulate.add_argument("--event-types", type=int, default=1, help="event types per observation, 1-4 (default: 1, all events)")
    simulate.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    simulate.add_argument("--npix", type=int, default=60, help="map width in 0.03 deg pixels (default: 60)")
    simulate.add_argument("--out", required=True, help="output folder: datasets, datasets.yaml, models_true.yaml, models_start.yaml")
    simulate.add_argument("--psf-mode", choices=_PSF_MODES, default="position",
                          help="how the extended sources meet the PSF, in the simulation and the models (default: position)")
    simulate.add_argument("--psf-elongation", type=float, default=1.0,
                          help="ratio of the PSF's major to minor width, its major axis away from the pointing; above 1 the "
                               "datasets carry an asymmetric PSF kernel map (default: 1, a round PSF)")
    npred = sub.add_parser("npred", help="write each map dataset's predicted counts cube (Gammapy map FITS)")
    npred.add_argument("--datasets", required=True, help="Gammapy datasets.yaml")
    npred.add_argument("--models", required=True, help="Gammapy models.yaml")
    npred.add_argument("--out", required=True, help="output folder: <dataset>_npred.fits per map dataset")
    npred.add_argument("--psf-mode", choices=_PSF_MODES, default=None, help=_PSF_MODE_HELP)
    demo = sub.add_parser("demo", help="simulate datasets, fit them, write the results and plots")
    demo.add_argument("--out", default="results/gamma", help="output folder (default: results/gamma)")
    demo.add_argument("--datasets", type=int, default=3, help="number of simulated observations (default: 3)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")


def _fit(args: argparse.Namespace) -> int:
    from .pipeline import fit_files

    if args.sample < 0:
        raise ValueError(f"--sample must be >= 0, got {args.sample}")
    result = fit_files(args.datasets, args.models, args.out, args.ts, plots=not args.no_plots, num_samples=args.sample,
                       seed=args.seed, psf_mode=args.psf_mode)
    if not result.converged:
        print(f"fitax gamma fit: the fit did not converge: {result.message}", file=sys.stderr)
        return 1
    return 0


def _estimate(args: argparse.Namespace) -> int:
    from .pipeline import excess_map_files, flux_points_files, light_curve_files

    if args.reoptimize and args.kind not in ("flux-points", "light-curve"):
        raise ValueError("--reoptimize is for flux points and light curves")
    if args.kind == "ts-map":
        from .pipeline import ts_map_files

        energy = None if args.energy_edges is None else _energy_edges(args.energy_edges)
        print(ts_map_files(args.datasets, args.models, args.out, args.kernel, args.index, _angle(args.kernel_width, "--kernel-width"),
                           energy, errors=args.errors, plots=not args.no_plots))
        return 0
    if args.kind != "excess-map" and args.models is None:
        raise ValueError(f"{args.kind} needs --models MODELS.yaml (the fitted models)")
    if args.kind == "excess-map":
        energy = None if args.energy_edges is None else _energy_edges(args.energy_edges)
        print(excess_map_files(args.datasets, args.models, args.out, _angle(args.correlation_radius, "--correlation-radius"), energy, plots=not args.no_plots))
        return 0
    if args.source is None:
        raise ValueError(f"{args.kind} needs --source NAME (the source model)")
    if args.kind == "flux-points":
        if args.energy_edges is None:
            raise ValueError("flux points need --energy-edges (TeV), e.g. --energy-edges 1,3,10")
        if args.time_bins is not None:
            raise ValueError("--time-bins is for light curves")
        print(flux_points_files(args.datasets, args.models, args.out, args.source, _energy_edges(args.energy_edges), plots=not args.no_plots,
                                reoptimize=args.reoptimize))
        return 0
    time_bins = None if args.time_bins is None else _edges(args.time_bins, "--time-bins", "MJD, e.g. 53343.9,53344.0,53344.1")
    energy = _energy_edges(args.energy_edges or "1,10")
    print(light_curve_files(args.datasets, args.models, args.out, args.source, energy, time_bins, plots=not args.no_plots,
                            reoptimize=args.reoptimize))
    return 0


def _angle(text: str, option: str) -> float:
    """An angle in degrees from ``0.1deg``, ``6arcmin``, ``0.1 deg`` or a bare number (deg)."""
    import astropy.units as u

    try:
        value = u.Quantity(text) if any(c.isalpha() for c in text) else u.Quantity(float(text), "deg")
        degrees = float(value.to_value("deg"))
    except (ValueError, TypeError, u.UnitsError) as error:
        raise ValueError(f"{option} {text!r}: expected an angle, e.g. 0.1deg") from error
    if not degrees > 0:
        raise ValueError(f"{option} {text!r}: must be positive")
    return degrees


def _edges(text: str, option: str, example: str) -> list[float]:
    try:
        edges = [float(value) for value in text.split(",")]
    except ValueError as error:
        raise ValueError(f"{option} {text!r}: expected comma-separated numbers in {example}") from error
    if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError(f"{option} {text!r}: expected at least two increasing values in {example}")
    return edges


def _energy_edges(text: str) -> list[float]:
    edges = _edges(text, "--energy-edges", "TeV, e.g. 1,3,10")
    if edges[0] <= 0:
        raise ValueError(f"--energy-edges {text!r}: energies must be positive (TeV)")
    return edges


def run(args: argparse.Namespace) -> int:
    try:
        if args.gamma_command == "demo":
            from .demo import run_gamma_demo

            run_gamma_demo(args.out, n_datasets=args.datasets, seed=args.seed)
            return 0
        if args.gamma_command == "estimate":
            return _estimate(args)
        if args.gamma_command == "simulate":
            from .simulate import simulate_files

            simulate_files(args.out, args.n_obs, args.event_types, args.seed, args.npix, args.psf_mode, args.psf_elongation)
            return 0
        if args.gamma_command == "npred":
            from .pipeline import npred_files

            npred_files(args.datasets, args.models, args.out, args.psf_mode)
            return 0
        if args.gamma_command == "reduce":
            from .pipeline import reduce_files

            print(reduce_files(args.config, args.out))
            return 0
        return _fit(args)
    except (ValueError, FileNotFoundError, KeyError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"fitax gamma {args.gamma_command}: error: {message}", file=sys.stderr)
        return 2
