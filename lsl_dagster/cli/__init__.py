"""`lsl`: experiment status, results, exports and plots, read from the Dagster instance (the registry).
One module per command; this one wires them into one parser."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Sequence

import dagster as dg

from lsl_dagster.cli import campaign, export, plan, plot, results, status, validate
from lsl_dagster.cli.code_location import CliError
from lsl_dagster.results.instance import ReportError
from lsl_dagster.spec.campaign_files import CampaignError


class _NoMissingConfigWarning(logging.Filter):
    """An instance without dagster.yaml is a valid one (Dagster's defaults); Dagster still warns about it
    on every load, which is noise in `lsl` output."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No dagster instance configuration file")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lsl", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for register in (
        campaign.register_cancel,
        validate.register,
        plan.register,
        campaign.register,
        status.register,
        results.register,
        export.register,
        plot.register,
    ):
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.getLogger("dagster").addFilter(_NoMissingConfigWarning())
    try:
        with warnings.catch_warnings():
            # Loading the code location warns about the beta and preview APIs it uses: news for its authors.
            warnings.simplefilter("ignore", dg.BetaWarning)
            warnings.simplefilter("ignore", dg.PreviewWarning)
            return args.func(args)
    except (CliError, CampaignError, ReportError) as exc:
        print(f"lsl: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
