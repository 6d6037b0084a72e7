"""`lsl plot`: each arm's score with its CI, one panel per experiment (PNG)."""

from __future__ import annotations

import argparse
from pathlib import Path

from lsl_dagster.cli.code_location import comparisons, open_instance, runs_dir
from lsl_dagster.results.arms import arm_cis

HELP = "each arm's score with its CI, one panel per experiment (PNG)"


def register(sub: argparse._SubParsersAction) -> None:
    command = sub.add_parser("plot", help=HELP, description=HELP)
    command.add_argument("experiments", nargs="*", help="experiment ids (default: all)")
    command.add_argument("-o", "--output", type=Path, required=True, help="file to write")
    command.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lsl_dagster.results.plots import experiments_figure  # matplotlib only for the command that draws

    with open_instance() as instance:
        stored = {e: c for e, (c, _) in comparisons(instance, args.experiments).items()}
        cis = {e: arm_cis(instance, comparison, runs_dir()) for e, comparison in stored.items()}
    experiments_figure(stored, cis, args.output)
    print(f"plot of {', '.join(stored)} written to {args.output}")
    return 0
