"""`lsl`: read experiment results from the Dagster instance (the asset catalog is the registry)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from dagster import AssetKey, AssetRecordsFilter, DagsterInstance

from lsl_dagster.models import Comparison
from lsl_dagster.sim import LABEL


class CliError(Exception):
    pass


def _instance() -> DagsterInstance:
    if not os.environ.get("DAGSTER_HOME"):
        raise CliError("DAGSTER_HOME is not set: point it at the Dagster instance the experiments ran in")
    return DagsterInstance.get()


def latest_comparisons(
    instance: DagsterInstance, experiments: Sequence[str] = ()
) -> dict[str, tuple[Comparison, Path]]:
    """The latest materialized comparison of each experiment and its file (named in the metadata)."""
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey("comparison"), asset_partitions=list(experiments) or None),
        limit=10_000,
    ).records
    found: dict[str, tuple[Comparison, Path]] = {}
    for record in records:  # newest first
        key = record.partition_key
        if key in found:
            continue
        path = Path(record.asset_materialization.metadata["path"].value)
        found[key] = (Comparison.model_validate_json(path.read_text(encoding="utf-8")), path)
    return dict(sorted(found.items()))


def _cost(value: float | None) -> str:
    return "unknown" if value is None else f"${value:.4f}"


def results_table(comparisons: Sequence[Comparison]) -> str:
    lines = [
        f"{'experiment':<24} {'arm':<15} {'score':>6} {'n':>5}  {'vs baseline [95% CI]':<27} {'p':>8}  "
        f"{'opt calls':>9} {'eval cost':>10}"
    ]
    for comparison in comparisons:
        experiment_id = comparison.experiment_id
        diffs = {d.arm: d for d in comparison.differences if d.baseline == "baseline"}
        for arm in comparison.arms:
            d = diffs.get(arm.arm)
            delta = f"{d.diff:+.3f} [{d.ci_low:+.3f}, {d.ci_high:+.3f}]" if d else "-"
            p = "-" if d is None or d.mcnemar_p is None else f"{d.mcnemar_p:.3g}"
            calls = "-" if arm.optimization_calls is None else str(arm.optimization_calls)
            label = experiment_id + (" (sim)" if comparison.simulated else "")
            lines.append(
                f"{label:<24} {arm.arm:<15} {arm.score:>6.3f} {arm.n:>5}  {delta:<27} {p:>8}  "
                f"{calls:>9} {_cost(arm.cost_usd):>10}"
            )
        for d in comparison.differences:
            lines.append(f"    {d.verdict}")
    if any(c.simulated for c in comparisons):
        lines.append(f"(sim) = {LABEL}")
    return "\n".join(lines)


def cmd_results(args: argparse.Namespace) -> int:
    stored = latest_comparisons(_instance(), args.experiments)
    if not stored:
        raise CliError("no comparison has been materialized yet in this instance")
    print(results_table([comparison for comparison, _ in stored.values()]))
    for experiment_id, (_, path) in stored.items():
        print(f"{experiment_id}: assets, predictions and call log in {path.parent}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lsl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    results = sub.add_parser("results", help="scores, paired differences with CIs, calls and cost")
    results.add_argument("experiments", nargs="*", help="experiment ids (default: all)")
    results.set_defaults(func=cmd_results)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CliError as exc:
        print(f"lsl: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
