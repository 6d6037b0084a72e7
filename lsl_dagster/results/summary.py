"""A campaign's results across its grid: per cell, and per model pair (the transfer matrix), each arm's
score and each paired difference pooled over the paired examples of its experiments, seeds as clusters
(stats.cluster_bootstrap), with Holm's adjustment over the whole family."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

from lsl_dagster.method.evaluation import scores as read_scores
from lsl_dagster.records import CampaignSummary, CellSummary, Comparison, Interval, MatrixCell, TransferMatrix
from lsl_dagster.results import stats
from lsl_dagster.spec.campaign_files import cell_of

# Per experiment, per arm: its evaluation's score of each example, None where it scored none (a provider
# failure or a program error), as `method.evaluation.scores` reads them.
ExampleScores = dict[str, dict[str, dict[str, float | None]]]


def example_scores(comparisons: dict[str, Comparison], located: Callable[[str], str]) -> ExampleScores:
    """The per-example scores each comparison was made from, read where `located` says its arms'
    predictions are; refused (ValueError) when they are not there or no longer match the comparison."""
    out: ExampleScores = {}
    for experiment, comparison in sorted(comparisons.items()):
        out[experiment] = {}
        for arm in comparison.arms:
            if arm.predictions_path is None:
                raise ValueError(
                    f"the comparison of {experiment} records no predictions to pool (made by an older "
                    "version): materialize it again (`lsl campaign run` does)"
                )
            rows = read_scores(located(arm.predictions_path))
            scored = [s for s in rows.values() if s is not None]
            if len(rows) != arm.n or abs(sum(scored) / max(1, len(scored)) - arm.score) > 1e-9:
                raise ValueError(f"the {arm.arm} predictions of {experiment} changed after its comparison")
            out[experiment][arm.arm] = rows
    return out


def _pooled(clusters: list[list[float]], *, test: bool = False) -> Interval:
    """The mean over clusters (experiments) with its cluster-bootstrap 95% interval; for a difference also
    the bootstrap p of mean 0."""
    mean, low, high, p = stats.cluster_bootstrap(clusters)
    return Interval(
        mean=mean,
        ci_low=low,
        ci_high=high,
        n=len(clusters),
        n_examples=sum(map(len, clusters)),
        p_value=p if test else None,
    )


def _scored(scores: dict[str, float | None]) -> list[float]:
    return [s for s in scores.values() if s is not None]


def paired_differences(scores: dict[str, dict[str, float | None]], name: str) -> list[float]:
    """One experiment's per-example differences "<arm> - <baseline>", over the examples both arms scored
    (the comparison's pairs)."""
    arm, baseline = name.split(" - ")
    other, base = scores[arm], scores[baseline]
    return [other[i] - base[i] for i in sorted(base) if base[i] is not None and other.get(i) is not None]


def holm_adjusted(families: list[dict[str, Interval]]) -> list[dict[str, Interval]]:
    """The same intervals with `p_holm`: Holm's adjustment over every p-value in all of them (one family:
    every difference of every cell of a campaign)."""
    keys = [(i, name) for i, family in enumerate(families) for name in family]
    adjusted = stats.holm([families[i][name].p_value for i, name in keys])
    out: list[dict[str, Interval]] = [dict(family) for family in families]
    for (i, name), p_holm in zip(keys, adjusted, strict=True):
        out[i][name] = out[i][name].model_copy(update={"p_holm": p_holm})
    return out


def _names(comparisons: list[Comparison]) -> list[str]:
    """The differences every one of these comparisons has, in the first one's (Holm) order."""
    have = [{f"{d.arm} - {d.baseline}" for d in c.differences} for c in comparisons]
    return [
        f"{d.arm} - {d.baseline}"
        for d in comparisons[0].differences
        if all(f"{d.arm} - {d.baseline}" in h for h in have)
    ]


def _differences(experiments: list[str], names: Sequence[str], scores: ExampleScores) -> dict[str, Interval]:
    return {
        name: _pooled([paired_differences(scores[e], name) for e in experiments], test=True) for name in names
    }


def summarize(
    campaign: str, comparisons: dict[str, Comparison], scores: ExampleScores, plot_path: str
) -> CampaignSummary:
    """Per grid cell: each arm's mean score and each paired difference, pooled over the examples of the
    cell's seeds with seeds as clusters."""
    cells: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for experiment in sorted(comparisons):
        task, pair, optimizer, _ = cell_of(experiment)
        cells[(task, pair, optimizer)].append(experiment)
    grid = sorted(cells.items())
    all_differences = holm_adjusted(
        [
            _differences(experiments, _names([comparisons[e] for e in experiments]), scores)
            for _, experiments in grid
        ]
    )
    summaries = []
    for ((task, pair, optimizer), experiments), differences in zip(grid, all_differences, strict=True):
        first = comparisons[experiments[0]]
        summaries.append(
            CellSummary(
                task=task,
                pair=pair,
                large_model=first.large_model,
                small_model=first.small_model,
                optimizer=optimizer,
                experiments=experiments,
                arms={
                    a.arm: _pooled([_scored(scores[e][a.arm]) for e in experiments])
                    for a in first.arms
                    if all(a.arm in scores[e] for e in experiments)
                },
                differences=differences,
            )
        )
    return CampaignSummary(
        campaign=campaign,
        cells=summaries,
        plot_path=plot_path,
        simulated=any(c.simulated for c in comparisons.values()),
        method=stats.CLUSTER_METHOD,
    )


# The matrix shows whether hardening transfers: LSL against the plain Stage 1 prompt and against the
# optimizer given the same budget; where the experiments have the small-optimized arm, also that arm
# against the baseline (GEPA's transfer setting) and against LSL (does hardening add to it?).
MATRIX_DIFFERENCES = (
    "lsl - baseline",
    "lsl - budget_matched",
    "small_optimized - baseline",
    "small_optimized - lsl",
)


def transfer_matrix(
    campaign: str, comparisons: dict[str, Comparison], scores: ExampleScores, plot_path: str
) -> TransferMatrix:
    """Rows = large models, columns = small models. Each cell pools the paired examples of that pair's
    experiments (every task, optimizer and seed is one cluster), Holm-adjusted over every cell and
    difference of the matrix."""
    pairs: dict[tuple[str, str], list[str]] = defaultdict(list)
    for experiment in sorted(comparisons):
        c = comparisons[experiment]
        pairs[(c.large_model, c.small_model)].append(experiment)
    keys = sorted(pairs)
    families = holm_adjusted(
        [
            _differences(
                pairs[key],
                [n for n in _names([comparisons[e] for e in pairs[key]]) if n in MATRIX_DIFFERENCES],
                scores,
            )
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
        method=stats.CLUSTER_METHOD,
    )
