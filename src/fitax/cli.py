"""The ``fitax`` command line."""

from __future__ import annotations

import argparse
import sys

from .programs import enable_compilation_cache

__all__ = ["main", "enable_compilation_cache"]


_DOMAINS = ("gamma", "hep", "phot")


def _build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``command`` (the first word of the command line) only that domain's
    sub-commands are set up, so ``fitax phot ...`` does not import the gamma-ray package
    (astropy.coordinates alone takes ~1 s) and vice versa."""
    parser = argparse.ArgumentParser(
        prog="fitax",
        description="Fast, differentiable likelihood analysis of physics data (JAX, float64, CPU or GPU).",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser("demo", help="simulate a counts cube, fit it, write a results table and plots")
    demo.add_argument("--out", default="results", help="output folder (default: results)")
    demo.add_argument("--sources", type=int, default=10, help="number of simulated sources (default: 10)")
    demo.add_argument("--seed", type=int, default=0, help="random seed of the simulation (default: 0)")
    wanted = (command,) if command in _DOMAINS else _DOMAINS
    if "gamma" in wanted:
        from .gamma.cli import add_parser as add_gamma_parser

        add_gamma_parser(commands)
    if "hep" in wanted:
        from .hep.cli import add_parser as add_hep_parser

        add_hep_parser(commands)
    if "phot" in wanted:
        from .photometry.cli import add_parser as add_phot_parser

        add_phot_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    parser = _build_parser(words[0] if words else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    enable_compilation_cache()
    if args.command == "demo":
        if args.sources < 1:
            parser.error("--sources must be at least 1")
        from .demo import run_demo

        run_demo(args.out, n_sources=args.sources, seed=args.seed)
        return 0
    if args.command == "gamma":
        from .gamma.cli import run as run_gamma

        return run_gamma(args)
    if args.command == "hep":
        from .hep.cli import run as run_hep

        return run_hep(args)
    if args.command == "phot":
        from .photometry.cli import run as run_phot

        return run_phot(args, words)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
