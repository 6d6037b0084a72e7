"""`lsl results`: scores, paired differences with CIs, calls and cost, one table for all experiments."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from lsl_dagster import graph
from lsl_dagster.cli.code_location import comparisons, open_instance, runs_dir
from lsl_dagster.records import ArmSummary, Comparison
from lsl_dagster.results import reports
from lsl_dagster.results.text import difference_text, p_text, sequential_text, signal_text, usd
from lsl_dagster.spec.experiment import SIMULATED
from lsl_dagster.storage import outputs as storage

HELP = "scores, paired differences with CIs, calls and cost"


def register(sub: argparse._SubParsersAction) -> None:
    command = sub.add_parser("results", help=HELP, description=HELP)
    command.add_argument("experiments", nargs="*", help="experiment ids (default: all)")
    command.add_argument(
        "--prompts", action="store_true", help="also show what Stage 2 changed in the Stage 1 prompt"
    )
    command.set_defaults(func=run)


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
        "program errors (not scored)": arm.n_program_errors,
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
        diffs = {d.arm: d for d in comparison.differences if d.baseline == graph.BASELINE.name}
        for arm in comparison.arms:
            d = diffs.get(arm.arm)
            delta = difference_text(d) if d else "-"
            p, p_holm = (p_text(d.p_value), p_text(d.p_holm)) if d else ("-", "-")
            calls = "-" if arm.optimization_calls is None else str(arm.optimization_calls)
            lines.append(
                f"{label:<24} {arm.arm:<15} {arm.score:>6.3f} {arm.n:>5}  {delta:<27} {p:>8} {p_holm:>8}  "
                f"{calls:>9} {usd(arm.cost_usd):>10} {_format_share(arm):>8}"
            )
        lines += [f"    {d.verdict}" for d in comparison.differences]
        if comparison.sequential is not None:
            lines.append(f"    {sequential_text(comparison.sequential)}")
        if comparison.stage2_unchanged:
            lines.append(
                f"    NOTE {graph.LSL.name}: LSL equals the baseline by construction: Stage 2 left the "
                f"Stage 1 prompt {comparison.stage2_unchanged}"
            )
        signal = comparison.stage2_signal
        if signal is not None:
            lines.append(
                "    " + signal_text(signal, comparison.stage2_start_val_score, comparison.stage2_val_score)
            )
            if signal.no_signal:
                lines.append(f"    WARNING stage2: {signal.no_signal}")
        lines += [line for arm in comparison.arms for line in _format_lines(arm)]
    if any(c.simulated for c in comparisons):
        lines.append(f"(sim) = {SIMULATED}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    with open_instance() as instance:
        stored = comparisons(instance, args.experiments)
        changes = reports.prompt_changes(instance, list(stored), runs_dir()) if args.prompts else None
    print(results_table([comparison for comparison, _ in stored.values()]))
    for experiment_id, (_, location) in stored.items():
        if storage.is_remote(location):
            print(f"{experiment_id}: assets and predictions in {storage.parent(location)}")
        else:
            print(f"{experiment_id}: assets, predictions and call log in {storage.parent(location)}")
    if changes is not None:
        print(f"\n{changes}")
    return 0
