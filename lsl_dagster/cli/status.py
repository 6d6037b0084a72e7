"""`lsl status`: which stages of each experiment are materialized, stale, failed or missing."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import dagster as dg

from lsl_dagster import graph
from lsl_dagster.cli.code_location import CliError, check_known, code_location, open_instance, spec_hashes
from lsl_dagster.results.instance import stage_status
from lsl_dagster.results.text import table as text_table
from lsl_dagster.spec.experiment_files import problems

HELP = "which stages of each experiment are materialized, stale, failed or missing"


def register(sub: argparse._SubParsersAction) -> None:
    command = sub.add_parser("status", help=HELP, description=HELP)
    command.add_argument("experiments", nargs="*", help="experiment ids (default: all)")
    command.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Reads the instance, never writes to it (see results.instance.stage_status for how staleness is
    derived)."""
    with open_instance() as instance:
        location = code_location()
        check_known(args.experiments, location.experiments)
        if not any(instance.has_asset_key(dg.AssetKey(asset)) for asset in graph.STAGES):
            raise CliError(
                f"no stage has been materialized yet in the instance at {os.environ['DAGSTER_HOME']}"
            )
        if not (experiments := list(args.experiments) or location.experiments):
            raise CliError(f"no experiment files in {location.data_dir / 'experiments'}")
        table = stage_status(
            instance, location.stages, spec_hashes(location.data_dir, experiments), location.arms
        )
    errors = problems(location.data_dir)
    # The optional arms' columns only when an experiment shown lists one ("-": an experiment without it).
    listed = {arm for e in table for arm in location.arms.get(e, ())}
    columns = graph.stages_of(sorted(listed))
    header = ["experiment", *(graph.COLUMNS[asset] for asset in columns)]
    rows = [[e, *(row.get(asset, "-") for asset in columns)] for e, row in table.items()]
    # Each stage column as wide as its longest status, so the table keeps its shape as stages finish.
    print(text_table([header, *rows], min_widths=[0, *(12 for _ in columns)]))
    for e, row in table.items():  # where each experiment stands is derived, never stored
        todo = next(((asset, status) for asset, status in row.items() if status != "materialized"), None)
        if todo and todo[1] == "invalid":
            file = str(location.data_dir / "experiments" / f"{e}.yaml")
            print(f"{e}: invalid: {errors.get(file, 'its experiment file does not load')}")
            continue
        where = f"next: {todo[0]} ({todo[1]})" if todo else "done: every stage is materialized and up to date"
        print(f"{e}: {where}")
    for file, error in errors.items():  # campaign files: the status of their experiments says nothing
        if "/campaigns/" in Path(file).as_posix():
            print(f"campaign {Path(file).stem}: invalid: {error}")
    return 0
