"""`lsl`: experiment status, results, exports and plots, read from the Dagster instance (the registry)."""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import dagster as dg

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
from lsl_dagster.defs.metadata import interval_text
from lsl_dagster.method.evaluation import scores
from lsl_dagster.records import (
    ArmSummary,
    CampaignSummary,
    Comparison,
    EvaluationResult,
    FormatCounts,
    PairedDifference,
    TransferMatrix,
)
from lsl_dagster.results import reports
from lsl_dagster.results.instance import NEEDS_WORK, Stage, latest_materializations, stage_status, stages_of
from lsl_dagster.results.stats import paired_bootstrap_ci
from lsl_dagster.spec.campaigns import CampaignError
from lsl_dagster.spec.experiment import SIMULATED
from lsl_dagster.spec.files import problems, scan_campaigns, spec_versions
from lsl_dagster.storage import outputs as storage
from lsl_dagster.storage.files import atomic_writer

T = TypeVar("T", Comparison, EvaluationResult)
Stored = dict[str, tuple[Comparison, str]]  # experiment id -> its latest comparison and where it is stored

# The stage assets in pipeline order, with their column headers in `lsl status`.
STAGES = {
    "stage1_prompt": "stage1",
    "stage2_hardened_prompt": "stage2",
    "budget_matched_prompt": "budget_prompt",
    "baseline_evaluation": "baseline_eval",
    "stage3_evaluation": "stage3_eval",
    "budget_matched_evaluation": "budget_eval",
    "comparison": "comparison",
}
EVALUATION_OF = {"baseline": "baseline_evaluation", "lsl": "stage3_evaluation"}  # else <arm>_evaluation
# Export columns with their Parquet types, explicit so that a column empty in every row keeps its type.
COLUMNS = {
    **dict.fromkeys(["experiment_id", "task", "large_model", "small_model"], "string"),
    **{"simulated": "bool", "arm": "string", "score": "float64"},
    **dict.fromkeys(["n", "optimization_calls", "evaluation_calls"], "int64"),
    **dict.fromkeys(["evaluation_cost_usd", "diff_vs_baseline", "ci_low", "ci_high"], "float64"),
    **{"test": "string", "p_value": "float64", "p_holm": "float64"},
    **{"verdict": "string", "total_calls": "int64", "total_cost_usd": "float64"},
    **dict.fromkeys(
        ["n_wrong", "n_unparseable", "n_truncated", "n_adapter_fallbacks", "n_provider_failures"], "int64"
    ),
    "format_warning": "string",
    "stage2_unchanged": "string",
}


DIFFERENCE_FIELDS = {"ci_low", "ci_high", "test", "p_value", "p_holm", "verdict"}


# Materialized per campaign after its experiments: the summary across seeds and the transfer matrix.
CAMPAIGN_ASSETS = ("campaign_summary", "transfer_matrix")


class CliError(Exception):
    pass


class _NoMissingConfigWarning(logging.Filter):
    """An instance without dagster.yaml is a valid one (Dagster's defaults); Dagster still warns about it
    on every load, which is noise in `lsl` output."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No dagster instance configuration file")


def _instance() -> dg.DagsterInstance:
    if not os.environ.get("DAGSTER_HOME"):
        raise CliError("DAGSTER_HOME is not set: point it at the Dagster instance the experiments ran in")
    try:
        return dg.DagsterInstance.get()
    except dg.DagsterInvariantViolationError as exc:  # not a directory, not absolute, bad dagster.yaml
        raise CliError(str(exc)) from None


@dataclass
class CodeLocation:
    """What `lsl` needs of the code location, built now rather than imported, so that it follows
    LSL_DATA_DIR / LSL_RUNS_DIR as they are set now."""

    data_dir: Path
    runs_dir: Path
    experiments: list[str]
    stages: dict[str, Stage]


def _code_location() -> CodeLocation:
    from lsl_dagster.definitions import build_definitions

    defs = build_definitions()
    specs = defs.resolve_all_asset_specs()
    (stage1,) = [s for s in specs if s.key == dg.AssetKey("stage1_prompt")]
    workspace = defs.resources["workspace"]
    return CodeLocation(
        data_dir=Path(workspace.data_dir),
        runs_dir=Path(workspace.runs_dir),
        experiments=list(stage1.partitions_def.get_partition_keys()),
        stages=stages_of(specs),
    )


def _check_known(requested: Sequence[str], known: Sequence[str]) -> None:
    if unknown := [e for e in requested if e not in known]:
        raise CliError(f"unknown experiment(s): {', '.join(unknown)} (known: {', '.join(known) or 'none'})")


def _runs_dir() -> Path:
    from lsl_dagster.definitions import directories

    return directories()[1]


def _load(model: type[T], record: dg.EventLogRecord, what: str) -> tuple[T, str]:
    """An asset value from where its materialization says it is (the IO manager's `path` metadata: an
    s3:// object, or a file relative to the runs directory: the one LSL_RUNS_DIR names now, wherever the
    runs directory was then)."""
    location = reports.located(str(record.asset_materialization.metadata["path"].value))
    try:
        return model.model_validate_json(storage.read_text(location)), location
    except (OSError, ValueError) as exc:  # a missing, unreadable or invalid file
        raise CliError(f"cannot read {what} of {record.partition_key} named in the instance: {exc}") from None


def spec_hashes(data_dir: Path, ids: Sequence[str]) -> dict[str, str | None]:
    """Each experiment's current spec hash; None for an invalid file."""
    return {e: None if v.startswith("invalid-") else v for e, v in spec_versions(data_dir, ids).items()}


def cmd_status(args: argparse.Namespace) -> int:
    """Reads the instance, never writes to it (see registry.stage_status for how staleness is derived)."""
    with _instance() as instance:
        location = _code_location()
        _check_known(args.experiments, location.experiments)
        if not any(instance.has_asset_key(dg.AssetKey(asset)) for asset in STAGES):
            raise CliError(
                f"no stage has been materialized yet in the instance at {os.environ['DAGSTER_HOME']}"
            )
        if not (experiments := list(args.experiments) or location.experiments):
            raise CliError(f"no experiment files in {location.data_dir / 'experiments'}")
        table = stage_status(instance, location.stages, spec_hashes(location.data_dir, experiments))
    errors = problems(location.data_dir)
    widths = [max(len("experiment"), *map(len, experiments)), *(max(len(h), 12) for h in STAGES.values())]
    for cells in [["experiment", *STAGES.values()], *([e, *row.values()] for e, row in table.items())]:
        print("  ".join(f"{cell:<{width}}" for cell, width in zip(cells, widths, strict=True)).rstrip())
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


def cmd_validate(args: argparse.Namespace) -> int:
    """Every experiment and campaign file, without running anything: 0 when all are valid."""
    from lsl_dagster.definitions import directories

    data_dir = directories()[0]
    errors = problems(data_dir)
    for file, error in errors.items():
        print(error if error.startswith(file) else f"{file}: {error}")
    valid, _ = scan_campaigns(data_dir)
    files = sorted((data_dir / "experiments").glob("*.yaml"))
    ok = [p for p in files if str(p) not in errors]
    print(
        f"{len(ok)} of {len(files)} experiment files and {len(valid)} of "
        f"{len(list((data_dir / 'campaigns').glob('*.yaml')))} campaign files are valid"
    )
    return 1 if errors else 0


def latest_comparisons(instance: dg.DagsterInstance, experiments: Sequence[str] = ()) -> Stored:
    """The latest materialized comparison of each experiment asked for (default: all) and its file."""
    filter_ = dg.AssetRecordsFilter(dg.AssetKey("comparison"), asset_partitions=list(experiments) or None)
    found: Stored = {}
    for record in instance.fetch_materializations(filter_, limit=10_000).records:  # newest first
        if record.partition_key not in found:
            found[record.partition_key] = _load(Comparison, record, "the comparison")
    if missing := [e for e in experiments if e not in found]:
        _check_known(missing, _code_location().experiments)
        raise CliError(f"no comparison has been materialized for {', '.join(missing)} yet (see `lsl status`)")
    if not found:
        raise CliError("no comparison has been materialized yet in this instance")
    return dict(sorted(found.items()))


def _cost(value: float | None) -> str:
    return "unknown" if value is None else f"${value:.4f}"


def _p(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _ci(d: PairedDifference, sep: str = " ") -> str:
    return f"{d.diff:+.3f}{sep}[{d.ci_low:+.3f}, {d.ci_high:+.3f}]"


def _format_share(arm: ArmSummary) -> str:
    """Share of the arm's rows that were unparseable or truncated."""
    return f"{(arm.n_unparseable + arm.n_truncated) / arm.n:.0%}" if arm.n else "-"


def _format_lines(arm: ArmSummary) -> list[str]:
    """How the arm's rows failed, when any failed other than by a wrong answer, and its format warning."""
    counts = {
        "wrong": arm.n_wrong,
        "unparseable": arm.n_unparseable,
        "truncated": arm.n_truncated,
        "adapter fallbacks": arm.n_adapter_fallbacks,
        "provider failures (not scored)": arm.n_provider_failures,
    }
    if not any(counts[k] for k in counts if k != "wrong"):
        return []
    lines = [f"    {arm.arm} ({arm.n} rows): " + ", ".join(f"{v} {k}" for k, v in counts.items())]
    return lines + ([f"    WARNING {arm.arm}: {arm.format_warning}"] if arm.format_warning else [])


def results_table(comparisons: Sequence[Comparison]) -> str:
    lines = [
        f"{'experiment':<24} {'arm':<15} {'score':>6} {'n':>5}  {'vs baseline [95% CI]':<27} {'p':>8} "
        f"{'Holm p':>8}  {'opt calls':>9} {'eval cost':>10} {'fmt fail':>8}"
    ]
    for comparison in comparisons:
        label = comparison.experiment_id + (" (sim)" if comparison.simulated else "")
        diffs = {d.arm: d for d in comparison.differences if d.baseline == "baseline"}
        for arm in comparison.arms:
            d = diffs.get(arm.arm)
            delta = _ci(d) if d else "-"
            p, p_holm = (_p(d.p_value), _p(d.p_holm)) if d else ("-", "-")
            calls = "-" if arm.optimization_calls is None else str(arm.optimization_calls)
            lines.append(
                f"{label:<24} {arm.arm:<15} {arm.score:>6.3f} {arm.n:>5}  {delta:<27} {p:>8} {p_holm:>8}  "
                f"{calls:>9} {_cost(arm.cost_usd):>10} {_format_share(arm):>8}"
            )
        lines += [f"    {d.verdict}" for d in comparison.differences]
        if comparison.stage2_unchanged:
            lines.append(
                "    NOTE lsl: LSL equals the baseline by construction: Stage 2 left the Stage 1 prompt "
                f"{comparison.stage2_unchanged}"
            )
        lines += [line for arm in comparison.arms for line in _format_lines(arm)]
    if any(c.simulated for c in comparisons):
        lines.append(f"(sim) = {SIMULATED}")
    return "\n".join(lines)


def cmd_results(args: argparse.Namespace) -> int:
    with _instance() as instance:
        stored = latest_comparisons(instance, args.experiments)
        changes = reports.prompt_changes(instance, list(stored)) if args.prompts else None
    print(results_table([comparison for comparison, _ in stored.values()]))
    for experiment_id, (_, location) in stored.items():
        if storage.is_remote(location):
            print(f"{experiment_id}: assets and predictions in {storage.parent(location)}")
        else:
            print(f"{experiment_id}: assets, predictions and call log in {storage.parent(location)}")
    if changes is not None:
        print(f"\n{changes}")
    return 0


def export_rows(comparisons: Sequence[Comparison]) -> list[dict[str, Any]]:
    """One row per (experiment, arm): the arm, its difference to the baseline, the experiment's totals."""
    rows = []
    for c in comparisons:
        diffs = {d.arm: d for d in c.differences if d.baseline == "baseline"}
        costs = [ledger.cost_usd for ledger in c.usage.values()]
        for arm in c.arms:
            d = diffs.get(arm.arm)
            rows.append(
                {
                    **c.model_dump(exclude={"arms", "differences", "usage"}),
                    **arm.model_dump(include={"arm", "score", "n", "optimization_calls"}),
                    **arm.model_dump(include=set(FormatCounts.model_fields)),
                    "evaluation_calls": arm.calls,
                    "evaluation_cost_usd": arm.cost_usd,
                    "diff_vs_baseline": None if d is None else d.diff,
                    **(d.model_dump(include=DIFFERENCE_FIELDS) if d else {}),
                    "total_calls": sum(ledger.calls for ledger in c.usage.values()),
                    "total_cost_usd": None if None in costs else sum(costs),
                }
            )
    return [{column: row.get(column) for column in COLUMNS} for row in rows]


def cmd_export(args: argparse.Namespace) -> int:
    with _instance() as instance:
        stored = latest_comparisons(instance, args.experiments)
    rows = export_rows([comparison for comparison, _ in stored.values()])
    if args.format == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.schema([(column, pa.type_for_alias(kind)) for column, kind in COLUMNS.items()])
        table = pa.Table.from_pylist(rows, schema=schema)
        with atomic_writer(args.output, "wb") as out:
            pq.write_table(table, out)
    else:
        with atomic_writer(args.output) as out:
            if args.format == "json":
                json.dump(rows, out, indent=2)
            else:  # None becomes an empty field; floats are written in full (repr) precision
                writer = csv.DictWriter(out, fieldnames=list(COLUMNS))
                writer.writeheader()
                writer.writerows(rows)
    print(f"{len(rows)} rows written to {args.output}")
    return 0


def arm_cis(instance: dg.DagsterInstance, comparison: Comparison) -> dict[str, tuple[float, float]]:
    """95% CI of each arm's mean score: a percentile bootstrap over its per-example scores. stats has only
    the paired bootstrap; paired with zeros, each example's difference is its score, so
    paired_bootstrap_ci(zeros, scores) is exactly the bootstrap CI of the mean score."""
    cis = {}
    for arm in comparison.arms:
        asset = EVALUATION_OF.get(arm.arm, f"{arm.arm}_evaluation")
        filter_ = dg.AssetRecordsFilter(dg.AssetKey(asset), asset_partitions=[comparison.experiment_id])
        records = instance.fetch_materializations(filter_, limit=1).records
        result, _ = _load(EvaluationResult, records[0], asset)
        try:
            rows = list(scores(reports.located(result.predictions_path)).values())
        except OSError as exc:
            raise CliError(f"cannot read the predictions of {asset}: {exc}") from None
        per_example = [score for score in rows if score is not None]  # provider failures are not scored
        mean = sum(per_example) / len(per_example) if per_example else 0.0
        if len(rows) != arm.n or abs(mean - arm.score) > 1e-9:
            raise CliError(f"{asset} of {comparison.experiment_id} changed after its comparison was made")
        cis[arm.arm] = paired_bootstrap_ci([0.0] * len(per_example), per_example)[1:]
    return cis


def cmd_plot(args: argparse.Namespace) -> int:
    from lsl_dagster.results.plots import experiments_figure  # matplotlib only for the command that draws

    with _instance() as instance:
        stored = {e: c for e, (c, _) in latest_comparisons(instance, args.experiments).items()}
        cis = {e: arm_cis(instance, comparison) for e, comparison in stored.items()}
    experiments_figure(stored, cis, args.output)
    print(f"plot of {', '.join(stored)} written to {args.output}")
    return 0


def campaign_table(summary: CampaignSummary) -> str:
    """Per cell: each arm's mean score and LSL's differences, with 95% CIs across seeds."""

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
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(f"{cell:<{w}}" for cell, w in zip(row, widths, strict=True)) for row in [header, *rows]
    ]
    if summary.simulated:
        lines.append(SIMULATED)
    return "\n".join(lines)


def cmd_campaign(args: argparse.Namespace) -> int:
    """Run what the campaign still needs (missing, failed or stale assets) right away, then its summary."""
    with _instance() as instance:
        location = _code_location()
        valid, errors = scan_campaigns(location.data_dir)
        if args.name in errors:
            raise CliError(f"campaign {args.name} is invalid: {errors[args.name]}")
        if args.name not in valid:
            raise CliError(f"unknown campaign {args.name!r} (known: {', '.join(valid) or 'none'})")
        ids = sorted(valid[args.name][1])
        if dead := dead_runs(instance, args.name):  # a killed launch left them "started" forever
            cancel_runs(dead)
            print(f"canceled {len(dead)} run(s) a killed launch left unfinished: {', '.join(dead)}")
        table = stage_status(instance, location.stages, spec_hashes(location.data_dir, ids))
        if busy := [e for e in ids if "in progress" in table[e].values()]:
            raise CliError(f"experiment(s) {', '.join(busy)} are being run right now; try again when done")
        todo = {e: [a for a in STAGES if table[e][a] in NEEDS_WORK] for e in ids}
        todo = {e: assets for e, assets in todo.items() if assets}
        comparisons = latest_materializations(instance, "comparison", ids)
        # The summary and the matrix are redone when either is missing or older than a comparison.
        stale_campaign = False
        for asset in CAMPAIGN_ASSETS:
            record = latest_materializations(instance, asset, [args.name]).get(args.name)
            stale_campaign |= record is None or any(
                r.storage_id > record.storage_id for r in comparisons.values()
            )
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
                outcomes = run_experiments(pool, todo, tags, print)
                if failed := [o for o in outcomes if not o.success]:
                    raise CliError(
                        f"campaign {args.name}: {len(failed)} experiment(s) failed: "
                        + ", ".join(f"{o.experiment_id} (run {o.run_id})" for o in failed)
                        + f"; see `lsl status` and {log}. Run this command again to retry only what is left."
                    )
            run_id, success = run_summary(pool, args.name, CAMPAIGN_ASSETS, tags)
        if not success:
            raise CliError(
                f"campaign {args.name}: the campaign run {run_id} ({', '.join(CAMPAIGN_ASSETS)}) "
                f"failed; see {log}"
            )
    with _instance() as instance:
        (record,) = latest_materializations(instance, "campaign_summary", [args.name]).values()
        summary_model, path = _load(CampaignSummary, record, "the campaign summary")
        matrix, matrix_path = reports.latest(instance, "transfer_matrix", args.name, TransferMatrix)
    print(campaign_table(summary_model))
    print(f"{args.name}: summary in {path}, plot in {reports.located(summary_model.plot_path)}")
    print(f"\n{reports.matrix_table(matrix)}")
    print(f"{args.name}: transfer matrix in {matrix_path}, heat map in {reports.located(matrix.plot_path)}")
    return 0


def cmd_matrix(args: argparse.Namespace) -> int:
    """The campaign's transfer matrix (large x small models) as materialized by `lsl campaign run`."""
    with _instance() as instance:
        valid, errors = scan_campaigns(_code_location().data_dir)
        if args.name in errors:
            raise CliError(f"campaign {args.name} is invalid: {errors[args.name]}")
        if args.name not in valid:
            raise CliError(f"unknown campaign {args.name!r} (known: {', '.join(valid) or 'none'})")
        try:
            matrix, path = reports.latest(instance, "transfer_matrix", args.name, TransferMatrix)
        except reports.ReportError as exc:
            raise CliError(f"{exc}: run `lsl campaign run {args.name}` first") from None
    print(reports.matrix_table(matrix))
    print(f"{args.name}: transfer matrix in {path}, heat map in {reports.located(matrix.plot_path)}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    """Runs whose process is gone (killed) stay "started" and keep their pool slots: end them as the UI's
    force termination does."""
    with _instance() as instance:
        for run_id in args.run_ids:
            record = instance.get_run_record_by_id(run_id)
            if record is None:
                raise CliError(f"no run {run_id} in the instance at {os.environ['DAGSTER_HOME']}")
            if record.dagster_run.is_finished:
                raise CliError(f"run {run_id} already ended ({record.dagster_run.status.value.lower()})")
    cancel_runs(args.run_ids)
    print(f"canceled {', '.join(args.run_ids)} and freed their pool slots")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    """Forecast each experiment's calls, tokens and cost; calls no model."""
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lsl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    commands = {
        "status": (cmd_status, "which stages of each experiment are materialized, stale, failed or missing"),
        "results": (cmd_results, "scores, paired differences with CIs, calls and cost"),
        "export": (cmd_export, "one row per experiment and arm, as CSV, JSON or Parquet"),
        "plot": (cmd_plot, "each arm's score with its CI, one panel per experiment (PNG)"),
    }
    cancel = sub.add_parser("cancel", help="end runs whose process was killed and free their pool slots")
    cancel.add_argument("run_ids", nargs="+", help="run ids (the UI's run list, or `lsl status`)")
    cancel.set_defaults(func=cmd_cancel)
    validate = sub.add_parser("validate", help="check every experiment and campaign file; run nothing")
    validate.set_defaults(func=cmd_validate)
    plan = sub.add_parser("plan", help="forecast calls, tokens and cost per stage, without calling a model")
    plan.add_argument("experiments", nargs="+", help="experiment ids")
    plan.set_defaults(func=cmd_plan)
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
    campaign.set_defaults(func=lambda args: (cmd_matrix if args.action == "matrix" else cmd_campaign)(args))
    for name, (func, text) in commands.items():
        command = sub.add_parser(name, help=text, description=text)
        command.add_argument("experiments", nargs="*", help="experiment ids (default: all)")
        command.set_defaults(func=func)
        if name == "export":
            command.add_argument("--format", choices=["csv", "json", "parquet"], required=True)
        if name == "results":
            command.add_argument(
                "--prompts", action="store_true", help="also show what Stage 2 changed in the Stage 1 prompt"
            )
        if name in ("export", "plot"):
            command.add_argument("-o", "--output", type=Path, required=True, help="file to write")
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
    except (CliError, CampaignError, reports.ReportError) as exc:
        print(f"lsl: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
