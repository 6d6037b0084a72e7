"""A campaign's results across its grid: per cell, and per model pair (the transfer matrix), each
difference with a 95% t-interval across replicates and Holm's adjustment over the whole family."""

from __future__ import annotations

from collections import defaultdict

from lsl_dagster.records import CampaignSummary, CellSummary, Comparison, Interval, MatrixCell, TransferMatrix
from lsl_dagster.results import stats
from lsl_dagster.spec.campaign_files import cell_of


def _interval(values: list[float], *, test: bool = False) -> Interval:
    """Mean with its 95% t-interval across replicates; for a difference also the t-test of mean 0."""
    mean, low, high = stats.mean_ci95(values)
    p = stats.one_sample_p(values) if test else None
    return Interval(mean=mean, ci_low=low, ci_high=high, n=len(values), p_value=p)


def difference(comparison: Comparison, name: str) -> float:
    """A comparison's paired difference by its name, "<arm> - <baseline>"."""
    return next(d.diff for d in comparison.differences if f"{d.arm} - {d.baseline}" == name)


def holm_adjusted(families: list[dict[str, Interval]]) -> list[dict[str, Interval]]:
    """The same intervals with `p_holm`: Holm's adjustment over every p-value in all of them (one family:
    every difference of every cell of a campaign)."""
    keys = [(i, name) for i, family in enumerate(families) for name in family]
    adjusted = stats.holm([families[i][name].p_value for i, name in keys])
    out: list[dict[str, Interval]] = [dict(family) for family in families]
    for (i, name), p_holm in zip(keys, adjusted, strict=True):
        out[i][name] = out[i][name].model_copy(update={"p_holm": p_holm})
    return out


def summarize(campaign: str, comparisons: dict[str, Comparison], plot_path: str) -> CampaignSummary:
    """Per grid cell: each arm's mean score and each paired difference, with 95% CIs across seeds."""
    cells: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for experiment in sorted(comparisons):
        task, pair, optimizer, _ = cell_of(experiment)
        cells[(task, pair, optimizer)].append(experiment)
    summaries = []
    grid = sorted(cells.items())
    all_differences = holm_adjusted(
        [
            {
                f"{d.arm} - {d.baseline}": _interval(
                    [difference(comparisons[e], f"{d.arm} - {d.baseline}") for e in experiments], test=True
                )
                for d in comparisons[experiments[0]].differences
            }
            for _, experiments in grid
        ]
    )
    for ((task, pair, optimizer), experiments), differences in zip(grid, all_differences, strict=True):
        results = [comparisons[e] for e in experiments]
        arms = {
            arm.arm: _interval([next(a.score for a in r.arms if a.arm == arm.arm) for r in results])
            for arm in results[0].arms
        }
        summaries.append(
            CellSummary(
                task=task,
                pair=pair,
                large_model=results[0].large_model,
                small_model=results[0].small_model,
                optimizer=optimizer,
                experiments=experiments,
                arms=arms,
                differences=differences,
            )
        )
    return CampaignSummary(
        campaign=campaign,
        cells=summaries,
        plot_path=plot_path,
        simulated=any(c.simulated for c in comparisons.values()),
    )


# The matrix shows whether hardening transfers: LSL against the plain Stage 1 prompt and against the
# optimizer given the same budget.
MATRIX_DIFFERENCES = ("lsl - baseline", "lsl - budget_matched")


def transfer_matrix(campaign: str, comparisons: dict[str, Comparison], plot_path: str) -> TransferMatrix:
    """Rows = large models, columns = small models. Each cell pools the experiments of that pair (every
    task, optimizer and seed is one replicate): mean paired difference with a 95% t-interval and t-test,
    Holm-adjusted over every cell and difference of the matrix."""
    pairs: dict[tuple[str, str], list[str]] = defaultdict(list)
    for experiment in sorted(comparisons):
        c = comparisons[experiment]
        pairs[(c.large_model, c.small_model)].append(experiment)
    keys = sorted(pairs)
    families = holm_adjusted(
        [
            {
                name: _interval([difference(comparisons[e], name) for e in pairs[key]], test=True)
                for name in MATRIX_DIFFERENCES
            }
            for key in keys
        ]
    )
    return TransferMatrix(
        campaign=campaign,
        large_models=sorted({large for large, _ in keys}),
        small_models=sorted({small for _, small in keys}),
        cells=[
            MatrixCell(large_model=large, small_model=small, experiments=pairs[(large, small)], differences=d)
            for (large, small), d in zip(keys, families, strict=True)
        ],
        plot_path=plot_path,
        simulated=any(c.simulated for c in comparisons.values()),
    )
