"""`lsl export`: one row per experiment and arm (results.export's schema), as CSV, JSON or Parquet."""

from __future__ import annotations

import argparse
from pathlib import Path

from lsl_dagster.cli.code_location import comparisons, open_instance
from lsl_dagster.results.export import FORMATS, export_rows, write_rows

HELP = "one row per experiment and arm, as CSV, JSON or Parquet"


def register(sub: argparse._SubParsersAction) -> None:
    command = sub.add_parser("export", help=HELP, description=HELP)
    command.add_argument("experiments", nargs="*", help="experiment ids (default: all)")
    command.add_argument("--format", choices=FORMATS, required=True)
    command.add_argument("-o", "--output", type=Path, required=True, help="file to write")
    command.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with open_instance() as instance:
        stored = comparisons(instance, args.experiments)
    rows = export_rows([comparison for comparison, _ in stored.values()])
    write_rows(rows, args.format, args.output)
    print(f"{len(rows)} rows written to {args.output}")
    return 0
