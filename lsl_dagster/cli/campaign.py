"""`lsl campaign run|matrix NAME` and `lsl cancel`: a campaign's runs, its summary and transfer matrix."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

import dagster as dg

from lsl_dagster import graph
from lsl_dagster.cli.code_location import CliError, code_location, open_instance, runs_dir, spec_hashes
from lsl_dagster.cli.launch import (
    CAMPAIGN_TAG,
    LAUNCH_TAG,
    cancel_runs,
    dead_runs,
    new_launch_id,
    run_experiments,
    run_summary,
    workers,
)
from lsl_dagster.llm.ledger import spent_usd
from lsl_dagster.llm.state import experiment_state
from lsl_dagster.records import CampaignSummary, TransferMatrix
from lsl_dagster.results import reports
from lsl_dagster.results.instance import ReportError, campaign_needs, latest_value, stage_status
from lsl_dagster.results.text import interval_text, table, usd
from lsl_dagster.spec.experiment import SIMULATED
from lsl_dagster.spec.experiment_files import scan_campaigns
from lsl_dagster.storage import outputs as storage


def register_cancel(sub: argparse._SubParsersAction) -> None:
    cancel = sub.add_parser("cancel", help="end runs whose process was killed and free their pool slots")
    cancel.add_argument("run_ids", nargs="+", help="run ids (the UI's run list, or `lsl status`)")
    cancel.set_defaults(func=run_cancel)


def register(sub: argparse._SubParsersAction) -> None:
    campaign = sub.add_parser("campaign", help="run a campaign (data/campaigns/NAME.yaml) or show its matrix")
    campaign.add_argument(
        "action",
        choices=["run", "matrix"],
        help="run: what it still needs, then its summary and matrix; matrix: the transfer matrix",
    )
    campaign.add_argument("name", help="the campaign's name")
    campaign.add_argument(
        "--workers", type=int, default=4, help="experiments run at once, each in a worker process (default 4)"
    )
    campaign.set_defaults(func=lambda args: (run_matrix if args.action == "matrix" else run_campaign)(args))


def campaign_table(summary: CampaignSummary) -> str:
    """Per cell: each arm's mean score and LSL's differences, with 95% CIs over seeds and examples, and
    the method that made them."""
    cell = summary.cells[0]
    header = ["cell", "seeds", *cell.arms, *cell.differences]
    rows = [
        [
            f"{c.task}/{c.pair}/{c.optimizer}",
            str(len(c.experiments)),
            *(f"{v.mean:.3f}" for v in c.arms.values()),
            *map(interval_text, c.differences.values()),
        ]
        for c in summary.cells
    ]
    note = f"\nintervals: {summary.method}"
    return table([header, *rows]) + note + (f"\n{SIMULATED}" if summary.simulated else "")


def _campaign_ids(name: str, data_dir: Path) -> list[str]:
    valid, errors = scan_campaigns(data_dir)
    if name in errors:
        raise CliError(f"campaign {name} is invalid: {errors[name]}")
    if name not in valid:
        raise CliError(f"unknown campaign {name!r} (known: {', '.join(valid) or 'none'})")
    return sorted(valid[name][1])


def _spent(runs_dir: Path, ids: list[str]) -> Callable[[], str]:
    """What the campaign's experiments have paid so far, from their call logs (earlier launches included)."""
    cache_url = dg.EnvVar("LSL_CACHE_URL").get_value() or None
    state = experiment_state(runs_dir, cache_url)

    def spent() -> str:
        records = [r for e in ids for r in state.calls(e) if "event" not in r]
        calls = sum(bool(r["ok"]) for r in records)
        simulated = " (simulated)" if any(r.get("simulated") for r in records) else ""
        return f"{calls} calls, {usd(spent_usd(records))} so far{simulated}"

    return spent


def _print_matrix(name: str, matrix: TransferMatrix, path: str) -> None:
    print(reports.matrix_table(matrix))
    print(f"{name}: transfer matrix in {path}, heat map in {storage.located(matrix.plot_path, runs_dir())}")


def run_campaign(args: argparse.Namespace) -> int:
    """Run what the campaign still needs (missing, failed or stale assets) right away, then its summary."""
    with open_instance() as instance:
        location = code_location()
        ids = _campaign_ids(args.name, location.data_dir)
        if dead := dead_runs(instance, args.name):  # a killed launch left them "started" forever
            cancel_runs(dead)
            print(f"canceled {len(dead)} run(s) a killed launch left unfinished: {', '.join(dead)}")
        status = stage_status(instance, location.stages, spec_hashes(location.data_dir, ids), location.arms)
        if busy := [e for e in ids if "in progress" in status[e].values()]:
            raise CliError(f"experiment(s) {', '.join(busy)} are being run right now; try again when done")
        todo, stale_campaign = campaign_needs(instance, status, args.name)
    launch = new_launch_id()
    tags = {CAMPAIGN_TAG: args.name, LAUNCH_TAG: launch}
    log = location.runs_dir / args.name / f"launch-{launch}.log"
    if todo or stale_campaign:
        # One pool for the experiments and then the summary: its workers are started once, warm.
        with workers(max(1, min(args.workers, len(todo))), log) as pool:
            if todo:
                print(
                    f"campaign {args.name}: {len(todo)} of {len(ids)} experiments to run "
                    f"(tag {LAUNCH_TAG}={launch})"
                )
                outcomes = run_experiments(pool, todo, tags, print, _spent(location.runs_dir, ids))
                if failed := [o for o in outcomes if not o.success]:
                    raise CliError(
                        f"campaign {args.name}: {len(failed)} experiment(s) failed: "
                        + ", ".join(f"{o.experiment_id} (run {o.run_id})" for o in failed)
                        + f"; see `lsl status` and {log}. Run this command again to retry only what is left."
                    )
            run_id, success = run_summary(pool, args.name, graph.CAMPAIGN_ASSETS, tags)
        if not success:
            raise CliError(
                f"campaign {args.name}: the campaign run {run_id} ({', '.join(graph.CAMPAIGN_ASSETS)}) "
                f"failed; see {log}"
            )
    with open_instance() as instance:
        summary, path = latest_value(
            instance, graph.CAMPAIGN_SUMMARY, args.name, CampaignSummary, location.runs_dir
        )
        matrix, matrix_path = latest_value(
            instance, graph.TRANSFER_MATRIX, args.name, TransferMatrix, location.runs_dir
        )
    print(campaign_table(summary))
    print(f"{args.name}: summary in {path}, plot in {storage.located(summary.plot_path, location.runs_dir)}")
    print()
    _print_matrix(args.name, matrix, matrix_path)
    return 0


def run_matrix(args: argparse.Namespace) -> int:
    """The campaign's transfer matrix (large x small models) as materialized by `lsl campaign run`."""
    with open_instance() as instance:
        _campaign_ids(args.name, code_location().data_dir)
        try:
            matrix, path = latest_value(
                instance, graph.TRANSFER_MATRIX, args.name, TransferMatrix, runs_dir()
            )
        except ReportError as exc:
            raise CliError(f"{exc}: run `lsl campaign run {args.name}` first") from None
    _print_matrix(args.name, matrix, path)
    return 0


def run_cancel(args: argparse.Namespace) -> int:
    """Runs whose process is gone (killed) stay "started" and keep their pool slots: end them as the UI's
    force termination does."""
    with open_instance() as instance:
        for run_id in args.run_ids:
            record = instance.get_run_record_by_id(run_id)
            if record is None:
                raise CliError(f"no run {run_id} in the instance at {os.environ['DAGSTER_HOME']}")
            if record.dagster_run.is_finished:
                raise CliError(f"run {run_id} already ended ({record.dagster_run.status.value.lower()})")
    cancel_runs(args.run_ids)
    print(f"canceled {', '.join(args.run_ids)} and freed their pool slots")
    return 0
