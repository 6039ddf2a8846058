"""``fitax hep cls | fit | limit``: pyhf's command-line habits on fitax fits.

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


def _load(args):
    from .workspace import Workspace

    if args.workspace == "-":
        workspace = Workspace(json.load(sys.stdin))
    else:
        workspace = Workspace.read(args.workspace)
    for path in args.patch:
        with open(path, encoding="utf-8") as stream:
            workspace = workspace.patch(json.load(stream))
    try:
        settings = json.loads(args.modifier_settings)
    except json.JSONDecodeError as error:
        raise ValueError(f"--modifier-settings is not valid JSON: {error}") from None
    model = workspace.model(measurement=args.measurement, modifier_settings=settings)
    return model, workspace.data(model)


def _emit(result: dict, output_file) -> None:
    text = json.dumps(result, indent=4, sort_keys=True)
    if output_file is None:
        print(text)
    else:
        Path(output_file).write_text(text + "\n", encoding="utf-8")


def run(args) -> int:
    """Run ``fitax hep <step>``; returns the exit status (1 when a fit did not converge)."""
    try:
        model, data = _load(args)
    except (OSError, ValueError, KeyError) as error:
        print(f"fitax hep: {error}", file=sys.stderr)
        return 2
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
    if not converged:
        print("fitax hep: warning: a fit did not converge; see 'warnings' in the output", file=sys.stderr)
        return 1
    return 0
