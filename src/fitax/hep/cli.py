"""``fitax hep cls | fit | limit | ranking | patchset | demo``: pyhf's command-line habits on fitax fits.

As ``pyhf cls``, the workspace is read from a file (or ``-`` for stdin), patches are applied
in order with ``-p``, the model uses pyhf's command-line interpolation codes (normsys code4,
histosys code4p; ``--modifier-settings`` overrides them), and the result is printed as JSON
(or written with ``--output-file``). fitax adds ``"converged"`` (true only if every fit of the
computation converged), its warnings, and the fitted minima.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

__all__ = ["add_parser", "run", "PYHF_CLI_MODIFIER_SETTINGS"]

PYHF_CLI_MODIFIER_SETTINGS = {"normsys": {"interpcode": "code4"}, "histosys": {"interpcode": "code4p"}}
"""The interpolation codes ``pyhf cls`` builds its models with."""


def _common(parser) -> None:
    parser.add_argument("workspace", help="pyhf JSON workspace ('-' reads stdin)")
    parser.add_argument("-p", "--patch", action="append", default=[], help="JSON patch to apply (repeatable, applied in order)")
    parser.add_argument("--measurement", default=None, help="measurement name (default: the first)")
    parser.add_argument(
        "--modifier-settings",
        default=json.dumps(PYHF_CLI_MODIFIER_SETTINGS),
        help="JSON interpolation settings (default: pyhf's command line, normsys code4 and histosys code4p)",
    )
    parser.add_argument("--output-file", default=None, help="write the JSON here instead of printing it")


def add_parser(commands) -> None:
    hep = commands.add_parser("hep", help="HistFactory inference on pyhf JSON workspaces (CLs, fits, limits)")
    sub = hep.add_subparsers(dest="hep_command", metavar="STEP", required=True)
    cls = sub.add_parser("cls", help="CLs hypothesis test, as 'pyhf cls'")
    _common(cls)
    cls.add_argument("--test-poi", type=float, default=1.0, help="POI value tested (default 1)")
    cls.add_argument("--test-stat", choices=["q", "qtilde"], default="qtilde")
    cls.add_argument("--calctype", choices=["asymptotics", "toybased"], default="asymptotics")
    cls.add_argument("--ntoys", type=int, default=2000, help="toys per hypothesis for --calctype toybased (default 2000)")
    cls.add_argument("--seed", type=int, default=0, help="random seed of the toys")
    fit = sub.add_parser("fit", help="maximum-likelihood fit, as 'pyhf fit'")
    _common(fit)
    limit = sub.add_parser("limit", help="observed and expected upper limits on the POI (asymptotic CLs)")
    _common(limit)
    limit.add_argument("--level", type=float, default=0.05, help="CLs level (default 0.05: 95%% CL)")
    limit.add_argument("--test-stat", choices=["q", "qtilde"], default="qtilde")
    limit.add_argument("--plot", default=None, help="write a Brazil plot (PNG) of the CLs scan here")
    ranking = sub.add_parser("ranking", help="pre- and post-fit impacts of the nuisance parameters on the POI")
    _common(ranking)
    ranking.add_argument("--plot", default=None, help="write the ranking (impact) plot (PNG) here")
    ranking.add_argument("--top", type=int, default=20, help="parameters shown in the plot (default 20)")
    patchset = sub.add_parser("patchset", help="CLs hypotest of every signal point of a pyhf patchset")
    _common(patchset)
    patchset.add_argument("patchset", help="pyhf patchset JSON (its digest must match the workspace)")
    patchset.add_argument("--test-poi", type=float, default=1.0, help="POI value tested (default 1)")
    patchset.add_argument("--test-stat", choices=["q", "qtilde"], default="qtilde")
    patchset.add_argument("--plot", default=None, help="write the exclusion plot (PNG) here")
    agc = sub.add_parser("agc", help="the AGC ttbar analysis: NanoAOD -> histograms.root, workspace, fit, plots")
    agc.add_argument("--inputs", required=True, help="inputs JSON (AGC's nanoaod_inputs.json format)")
    agc.add_argument("--out", required=True, help="output folder")
    agc.add_argument("--max-files", type=int, default=None, help="use the first N files of each sample (AGC's N_FILES_MAX_PER_SAMPLE)")
    agc.add_argument("--step-size", type=int, default=200_000, help="events per chunk (default 200000)")
    agc.add_argument("--seed", type=int, default=0, help="seed of the jet resolution variation (default 0)")
    agc.add_argument("--optimise", type=int, default=0, metavar="STEPS", help="also optimise the cuts by gradient descent for STEPS steps")
    agc.add_argument("--workers", type=int, default=1, help="files processed in parallel by this many Dask worker processes (default 1)")
    agc.add_argument("--quiet", action="store_true", help="no progress bars")
    generate = sub.add_parser("generate", help="write NanoAOD-like files of the AGC samples and their inputs.json")
    generate.add_argument("--out", required=True, help="output folder")
    generate.add_argument("--events", type=int, default=100_000, help="events per nominal sample (default 100000)")
    generate.add_argument("--files", type=int, default=1, help="files per sample (default 1)")
    generate.add_argument("--processes", nargs="+", default=None, help="only these processes (default: all five)")
    generate.add_argument("--seed", type=int, default=0)
    demo = sub.add_parser("demo", help="fit, CLs, limit, ranking and a patchset on the shared ATLAS sbottom workspace")
    demo.add_argument("--out", default="results/hep", help="output folder (default: results/hep)")


def _read_workspace(args):
    from .workspace import Workspace

    if args.workspace == "-":
        workspace = Workspace(json.load(sys.stdin))
    else:
        workspace = Workspace.read(args.workspace)
    for path in args.patch:
        with open(path, encoding="utf-8") as stream:
            workspace = workspace.patch(json.load(stream))
    return workspace


def _load(args):
    workspace = _read_workspace(args)
    model = workspace.model(measurement=args.measurement, modifier_settings=_settings(args))
    return model, workspace.data(model)


def _emit(result: dict, output_file) -> None:
    text = json.dumps(result, indent=4, sort_keys=True)
    if output_file is None:
        print(text)
    else:
        Path(output_file).write_text(text + "\n", encoding="utf-8")


def _settings(args) -> dict:
    try:
        return json.loads(args.modifier_settings)
    except json.JSONDecodeError as error:
        raise ValueError(f"--modifier-settings is not valid JSON: {error}") from None


def _patchset(args) -> tuple[dict, bool]:
    from .patchsets import hypotest_patchset

    result = hypotest_patchset(
        _read_workspace(args), args.patchset, args.test_poi, args.test_stat, measurement=args.measurement, modifier_settings=_settings(args)
    )
    if args.plot:
        from .plots import exclusion_plot

        exclusion_plot(result, args.plot)
    return result.to_dict(), bool(result.converged.all())


def run(args) -> int:
    """Run ``fitax hep <step>``; returns the exit status (1 when a fit did not converge)."""
    if args.hep_command == "demo":
        from .demo import run_hep_demo

        try:
            summary = run_hep_demo(args.out)
        except OSError as error:
            print(f"fitax hep demo: {error}", file=sys.stderr)
            return 2
        print(json.dumps(summary, indent=2, sort_keys=True))
        return 0 if summary["converged"] else 1
    if args.hep_command in ("agc", "generate"):
        return _run_agc(args)
    try:
        if args.hep_command == "patchset":
            output, converged = _patchset(args)
            _emit(output, args.output_file)
            return _exit_status(converged)
        model, data = _load(args)
    except (OSError, ValueError, KeyError) as error:
        print(f"fitax hep: {error}", file=sys.stderr)
        return 2
    if args.hep_command == "ranking":
        from .infer import ranking

        try:
            result = ranking(data, model)
        except RuntimeError as error:  # the free fit did not converge
            print(f"fitax hep: {error}", file=sys.stderr)
            return 1
        if args.plot:
            from .plots import impact_plot

            impact_plot(result, args.plot, top=args.top)
        _emit({"ranking": result.to_dict(), "converged": result.converged}, args.output_file)
        return _exit_status(result.converged)
    if args.hep_command == "cls":
        from .calculators import hypotest

        result = hypotest(args.test_poi, data, model, args.test_stat, args.calctype, ntoys=args.ntoys, seed=args.seed)
        output = result.to_dict()
        converged = result.converged
    elif args.hep_command == "fit":
        from .teststat import mle_fit

        fit = mle_fit(data, model)
        output = {
            "mle_parameters": {name: fit.bestfit[model.par_slice(name)].tolist() for name in model.parameter_names},
            "uncertainties": {name: fit.uncertainty[model.par_slice(name)].tolist() for name in model.parameter_names},
            "twice_nll": fit.twice_nll,
            "converged": fit.converged,
            "warnings": list(fit.warnings),
        }
        converged = fit.converged
    else:
        from .limits import upper_limit

        limit = upper_limit(data, model, level=args.level, test_stat=args.test_stat)
        output = limit.to_dict()
        converged = limit.converged
        if args.plot:
            from .plots import brazil_plot

            brazil_plot(limit, args.plot)
    _emit(output, args.output_file)
    return _exit_status(converged)


def _run_agc(args) -> int:
    from .agc import InvalidInputs
    from .nanoaod import InvalidEvents

    try:
        if args.hep_command == "generate":
            from .generate import write_agc_inputs

            path = write_agc_inputs(args.out, args.events, files=args.files, seed=args.seed, processes=args.processes)
            print(json.dumps({"inputs": path}, indent=2))
            return 0
        from .agc.run import run_agc

        summary = run_agc(
            args.inputs, args.out, max_files=args.max_files, step_size=args.step_size, seed=args.seed,
            optimise_steps=args.optimise, progress=not args.quiet, workers=args.workers,
        )  # fmt: skip
    except (InvalidInputs, InvalidEvents, OSError, ValueError) as error:
        print(f"fitax hep {args.hep_command}: {error}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2, sort_keys=True, default=str))
    return 0 if summary["converged"] in (True, None) else 1


def _exit_status(converged: bool) -> int:
    if not converged:
        print("fitax hep: warning: a fit did not converge; see 'warnings' in the output", file=sys.stderr)
        return 1
    return 0
