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
    from .gamma.cli import add_parser as add_gamma_parser
    from .photometry.cli import add_parser as add_phot_parser

    add_gamma_parser(commands)
    add_phot_parser(commands)
    return parser


def _enable_compilation_cache() -> None:
    """Keep compiled XLA programs on disk between runs, so a command-line user pays the
    compile time once per machine, not once per call (``FITAX_CACHE_DIR`` moves it; an
    empty value turns it off)."""
    import os
    from pathlib import Path

    import jax

    location = os.environ.get("FITAX_CACHE_DIR", str(Path.home() / ".cache" / "fitax" / "xla"))
    if location:
        jax.config.update("jax_compilation_cache_dir", location)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    _enable_compilation_cache()
    if args.command == "demo":
        if args.sources < 1:
            parser.error("--sources must be at least 1")
        from .demo import run_demo

        run_demo(args.out, n_sources=args.sources, seed=args.seed)
        return 0
    if args.command == "gamma":
        from .gamma.cli import run as run_gamma

        return run_gamma(args)
    if args.command == "phot":
        from .photometry.cli import run as run_phot

        return run_phot(args, sys.argv[1:] if argv is None else argv)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
