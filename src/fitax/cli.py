"""The ``fitax`` command line."""

from __future__ import annotations

import argparse
import sys


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fitax",
        description="Fast, differentiable likelihood analysis of physics data (JAX, float64, CPU or GPU).",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser("demo", help="simulate a counts cube, fit it, write a results table and plots")
    demo.add_argument("--out", default="results", help="output folder (default: results)")
    demo.add_argument("--sources", type=int, default=10, help="number of simulated sources (default: 10)")
    demo.add_argument("--seed", type=int, default=0, help="random seed of the simulation (default: 0)")
    commands.add_parser("gamma", help="gamma-ray analyses of Gammapy datasets (not yet in this release)")
    commands.add_parser("phot", help="survey-image calibration and PSF photometry (not yet in this release)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "demo":
        if args.sources < 1:
            parser.error("--sources must be at least 1")
        from .demo import run_demo

        run_demo(args.out, n_sources=args.sources, seed=args.seed)
        return 0
    print(f"fitax {args.command}: not available in this release yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
