"""Figures: arms with confidence intervals, per experiment and per campaign cell (PNG, written atomically)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import Normalize, to_rgb
from matplotlib.container import BarContainer
from matplotlib.figure import Figure  # not pyplot: no global state; a Figure renders with Agg

from lsl_dagster import graph
from lsl_dagster.records import CampaignSummary, Comparison, Interval, TransferMatrix
from lsl_dagster.results.text import bounds, difference_text, p_text
from lsl_dagster.spec.experiment import SIMULATED
from lsl_dagster.storage.files import atomic_writer

BAR = "#4c72b0"
# A bar shorter than this (in score units) cannot hold its label inside: the label goes above it.
_INSIDE = 0.12


def luminance(color: Any) -> float:
    """WCAG 2 relative luminance of a matplotlib colour."""
    channels = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in to_rgb(color)]
    return 0.2126 * channels[0] + 0.7152 * channels[1] + 0.0722 * channels[2]


def contrast(a: Any, b: Any) -> float:
    """WCAG 2 contrast ratio of two colours (1 to 21; 4.5 is the minimum for normal text)."""
    la, lb = sorted((luminance(a), luminance(b)))
    return (lb + 0.05) / (la + 0.05)


def text_color(background: Any) -> str:
    """Black or white, whichever contrasts more with the background: at least 4.58:1 on any colour."""
    return "black" if contrast("black", background) >= contrast("white", background) else "white"


def label_bars(ax: Axes, bars: BarContainer, values: list[float], tops: list[float]) -> None:
    """Each bar's value, readable for any score: white inside a tall bar, dark above a short or empty one
    (a score of 0 has no bar to be white on), clear of its error bar (`tops`)."""
    for bar, value, top in zip(bars, values, tops, strict=True):
        inside = value >= _INSIDE
        ax.annotate(
            f"{value:.3f}",
            (bar.get_x() + bar.get_width() / 2, value / 2 if inside else top),
            xytext=(0, 0 if inside else 3),
            textcoords="offset points",
            ha="center",
            va="center" if inside else "bottom",
            color=text_color(bar.get_facecolor() if inside else ax.get_facecolor()),
        )


def _save(fig: Figure, path: Path, simulated: bool) -> None:
    if simulated:
        fig.suptitle(SIMULATED, color="#b00000", fontsize="medium", wrap=True)
    with atomic_writer(path, "wb") as out:
        fig.savefig(out, format="png", dpi=120)


def experiments_figure(
    comparisons: dict[str, Comparison], cis: dict[str, dict[str, tuple[float, float]]], path: Path
) -> None:
    """One panel per experiment: each arm's score with its 95% CI, the paired difference under each bar."""
    fig = Figure(figsize=(4.8 * len(comparisons), 5), layout="constrained")
    axes = fig.subplots(1, len(comparisons), squeeze=False)[0]
    for ax, (experiment_id, c) in zip(axes, comparisons.items(), strict=True):
        diffs = {d.arm: d for d in c.differences if d.baseline == graph.BASELINE.name}
        # The paired difference under each bar: overlapping CIs of two arms do not mean "no difference".
        labels = [
            a.arm + ("\nΔ " + difference_text(diffs[a.arm], sep="\n") if a.arm in diffs else "")
            for a in c.arms
        ]
        low = [max(0.0, a.score - cis[experiment_id][a.arm][0]) for a in c.arms]
        high = [max(0.0, cis[experiment_id][a.arm][1] - a.score) for a in c.arms]
        bars = ax.bar(labels, [a.score for a in c.arms], yerr=[low, high], capsize=6, color=BAR)
        label_bars(
            ax, bars, [a.score for a in c.arms], tops=[a.score + h for a, h in zip(c.arms, high, strict=True)]
        )
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
    """Per grid cell: the arms' mean scores and the paired differences, with 95% cluster-bootstrap CIs
    over seeds and examples (inside the metric's range by construction)."""
    cells = summary.cells
    labels = [f"{c.task}\n{c.pair}\n{c.optimizer}" for c in cells]
    fig = Figure(figsize=(max(6.0, 2.2 * len(cells)), 8), layout="constrained")
    scores_ax, diffs_ax = fig.subplots(2, 1)
    for ax, series, ylabel in (
        (scores_ax, "arms", "mean score, 95% cluster-bootstrap CI"),
        (diffs_ax, "differences", "mean paired difference, 95% cluster-bootstrap CI"),
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


def matrix_figure(matrix: TransferMatrix, path: Path) -> None:
    """One heat map per difference: rows = large models, columns = small models, each cell its mean
    difference (colour, symmetric around 0) with the 95% CI and Holm p written in it."""
    names = list(dict.fromkeys(name for cell in matrix.cells for name in cell.differences))
    rows, cols = matrix.large_models, matrix.small_models
    size = (max(5.0, 2.6 * len(cols) + 1.5) * len(names), 1.5 * len(rows) + 2.2)
    fig = Figure(figsize=size, layout="constrained")
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    cmap = colormaps["RdBu"]
    means = [v.mean for cell in matrix.cells for v in cell.differences.values()]
    limit = max(0.05, *(abs(m) for m in means))  # symmetric: white is "no difference"
    norm = Normalize(-limit, limit)
    for ax, name in zip(axes, names, strict=True):
        grid = np.full((len(rows), len(cols)), np.nan)
        for cell in matrix.cells:
            if name in cell.differences:
                grid[rows.index(cell.large_model), cols.index(cell.small_model)] = cell.differences[name].mean
        image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, norm=norm, aspect="auto")
        ax.set_facecolor("#d9d9d9")  # a pair the campaign did not run
        for i, large in enumerate(rows):
            for j, small in enumerate(cols):
                cell = matrix.cell(large, small)
                value = cell.differences.get(name) if cell else None
                if value is None:
                    ax.text(j, i, "not run", ha="center", va="center", color="black", fontsize=8)
                    continue
                ci = "no CI" if value.ci_low is None else bounds(value.ci_low, value.ci_high)
                p = "" if value.p_holm is None else f"\nHolm p={p_text(value.p_holm)}"
                ax.text(
                    j,
                    i,
                    f"{value.mean:+.3f}\n{ci}{p}\nn={value.n}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color=text_color(cmap(norm(value.mean))),
                )
        ax.set_xticks(range(len(cols)), cols, fontsize=8)
        ax.set_yticks(range(len(rows)), rows, fontsize=8)
        ax.set(xlabel="small model (hardening)", ylabel="large model (optimization, evaluation)", title=name)
        fig.colorbar(image, ax=ax, shrink=0.8, label="mean paired difference")
    _save(fig, path, matrix.simulated)
