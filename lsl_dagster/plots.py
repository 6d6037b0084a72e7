"""Figures: arms with confidence intervals, per experiment and per campaign cell (PNG, written atomically)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.container import BarContainer
from matplotlib.figure import Figure  # not pyplot: no global state; a Figure renders with Agg

from lsl_dagster.files import atomic_writer
from lsl_dagster.models import CampaignSummary, Comparison, Interval, PairedDifference
from lsl_dagster.sim import LABEL

BAR = "#4c72b0"
# A bar shorter than this (in score units) cannot hold its label inside: the label goes above it.
_INSIDE = 0.12


def label_bars(ax: Axes, bars: BarContainer, values: list[float]) -> None:
    """Each bar's value, readable for any score: white inside a tall bar, dark above a short or empty one
    (a score of 0 has no bar to be white on)."""
    for bar, value in zip(bars, values, strict=True):
        inside = value >= _INSIDE
        ax.annotate(
            f"{value:.3f}",
            (bar.get_x() + bar.get_width() / 2, value / 2 if inside else value),
            xytext=(0, 0 if inside else 3),
            textcoords="offset points",
            ha="center",
            va="center" if inside else "bottom",
            color="white" if inside else "#222222",
        )


def _ci(d: PairedDifference, sep: str = " ") -> str:
    return f"{d.diff:+.3f}{sep}[{d.ci_low:+.3f}, {d.ci_high:+.3f}]"


def _save(fig: Figure, path: Path, simulated: bool) -> None:
    if simulated:
        fig.suptitle(LABEL, color="#b00000")
    with atomic_writer(path, "wb") as out:
        fig.savefig(out, format="png", dpi=120)


def experiments_figure(
    comparisons: dict[str, Comparison], cis: dict[str, dict[str, tuple[float, float]]], path: Path
) -> None:
    """One panel per experiment: each arm's score with its 95% CI, the paired difference under each bar."""
    fig = Figure(figsize=(4.8 * len(comparisons), 5), layout="constrained")
    axes = fig.subplots(1, len(comparisons), squeeze=False)[0]
    for ax, (experiment_id, c) in zip(axes, comparisons.items(), strict=True):
        diffs = {d.arm: d for d in c.differences if d.baseline == "baseline"}
        # The paired difference under each bar: overlapping CIs of two arms do not mean "no difference".
        labels = [a.arm + ("\nΔ " + _ci(diffs[a.arm], sep="\n") if a.arm in diffs else "") for a in c.arms]
        low = [max(0.0, a.score - cis[experiment_id][a.arm][0]) for a in c.arms]
        high = [max(0.0, cis[experiment_id][a.arm][1] - a.score) for a in c.arms]
        bars = ax.bar(labels, [a.score for a in c.arms], yerr=[low, high], capsize=6, color=BAR)
        label_bars(ax, bars, [a.score for a in c.arms])
        ax.set(ylim=(0, 1.05), ylabel="score, 95% bootstrap CI")  # every task metric is in [0, 1]
        ax.tick_params(axis="x", labelsize=8)
        simulated = " - SIMULATED" if c.simulated else ""
        ax.set_title(f"{experiment_id}{simulated}\n{c.large_model} / {c.small_model}")
    _save(fig, path, any(c.simulated for c in comparisons.values()))


def _errors(intervals: list[Interval]) -> list[list[float]]:
    low = [0.0 if i.ci_low is None else i.mean - i.ci_low for i in intervals]
    high = [0.0 if i.ci_high is None else i.ci_high - i.mean for i in intervals]
    return [low, high]


def campaign_figure(summary: CampaignSummary, path: Path) -> None:
    """Per grid cell: the arms' mean scores and the paired differences, with 95% t-CIs across seeds."""
    cells = summary.cells
    labels = [f"{c.task}\n{c.pair}\n{c.optimizer}" for c in cells]
    fig = Figure(figsize=(max(6.0, 2.2 * len(cells)), 8), layout="constrained")
    scores_ax, diffs_ax = fig.subplots(2, 1)
    for ax, series, ylabel in (
        (scores_ax, "arms", "mean score across seeds, 95% CI"),
        (diffs_ax, "differences", "mean paired difference, 95% CI"),
    ):
        names = list(getattr(cells[0], series))
        width = 0.8 / len(names)
        for i, name in enumerate(names):
            intervals = [getattr(c, series)[name] for c in cells]
            positions = [x + (i - (len(names) - 1) / 2) * width for x in range(len(cells))]
            ax.bar(
                positions, [v.mean for v in intervals], width, yerr=_errors(intervals), capsize=4, label=name
            )
        ax.set_xticks(range(len(cells)), labels, fontsize=8)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
    scores_ax.set_ylim(0, 1.05)
    diffs_ax.axhline(0, color="black", linewidth=0.8)
    scores_ax.set_title(f"campaign {summary.campaign} ({len(cells[0].experiments)} seeds per cell)")
    _save(fig, path, summary.simulated)
