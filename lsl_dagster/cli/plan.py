"""`lsl plan`: each experiment's calls, tokens and cost per stage, forecast without calling a model."""

from __future__ import annotations

import argparse

from lsl_dagster.cli.code_location import CliError


def register(sub: argparse._SubParsersAction) -> None:
    command = sub.add_parser(
        "plan", help="forecast calls, tokens and cost per stage, without calling a model"
    )
    command.add_argument("experiments", nargs="+", help="experiment ids")
    command.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """1 when the cap of any experiment cannot finish it (it would be refused)."""
    from lsl_dagster.definitions import build_definitions
    from lsl_dagster.method.plan import forecast, render

    workspace = build_definitions().resources["workspace"]
    refused = False
    for experiment_id in args.experiments:
        try:
            spec = workspace.experiment(experiment_id)
            plan = forecast(spec, workspace.task(spec.task))
        except ValueError as exc:  # unknown or invalid experiment, bad task data
            raise CliError(str(exc)) from None
        print(render(plan) + "\n")
        refused = refused or plan.refusal is not None
    return 1 if refused else 0
