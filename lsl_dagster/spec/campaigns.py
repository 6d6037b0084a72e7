"""Campaigns: a grid file expanded into experiments, and the grid's results summarized across seeds."""

from __future__ import annotations

import itertools
from collections import defaultdict
from pathlib import Path

import yaml
from pydantic import ValidationError

from lsl_dagster.records import CampaignSummary, CellSummary, Comparison, Interval, MatrixCell, TransferMatrix
from lsl_dagster.results import stats
from lsl_dagster.spec.campaign import CampaignSpec
from lsl_dagster.spec.experiment import ExperimentSpec
from lsl_dagster.spec.strict import check_slug

SEPARATOR = "--"


class CampaignError(ValueError):
    """A campaign file is invalid or does not expand; nothing of it runs."""


def _problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(map(str, e['loc'])) or 'file'}: {e['msg']}" for e in exc.errors(include_url=False)
    )


def load_campaign(path: Path) -> CampaignSpec:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        campaign = CampaignSpec.model_validate(raw)
    except yaml.YAMLError as exc:
        raise CampaignError(f"{path}: not valid YAML: {exc}") from None
    except ValidationError as exc:
        raise CampaignError(f"{path}: {_problems(exc)}") from None
    if campaign.campaign != path.stem:
        raise CampaignError(f"{path}: campaign {campaign.campaign!r} does not match the file name")
    return campaign


def experiment_id(campaign: CampaignSpec, task: str, pair: str, optimizer: str, seed: int) -> str:
    return SEPARATOR.join([campaign.campaign, task, pair, optimizer, f"s{seed}"])


def expand(campaign: CampaignSpec, path: Path, tasks_dir: Path) -> dict[str, ExperimentSpec]:
    """Every cell x seed as a validated experiment, with a deterministic, readable id."""
    for task in campaign.tasks:
        if not (tasks_dir / task / "task.yaml").is_file():
            raise CampaignError(f"{path}: unknown task {task!r} (no {tasks_dir / task / 'task.yaml'})")
    base = campaign.experiment
    specs: dict[str, ExperimentSpec] = {}
    hardeners: list[str | None] = list(campaign.stage2_optimizers or [None])
    grid = itertools.product(
        campaign.tasks, campaign.model_pairs, campaign.optimizers, hardeners, campaign.seeds
    )
    for task, pair, optimizer, hardener, seed in grid:
        label = optimizer if hardener is None else f"{optimizer}-{hardener}"
        experiment_id_ = experiment_id(campaign, task, pair.label, label, seed)
        try:
            check_slug(experiment_id_)
        except ValueError as exc:
            raise CampaignError(f"{path}: {exc} (shorten the campaign name or name the model pair)") from None
        if experiment_id_ in specs:
            raise CampaignError(f"{path}: two cells expand to the same experiment id {experiment_id_!r}")
        try:
            specs[experiment_id_] = ExperimentSpec.model_validate(
                {
                    **base,
                    "experiment_id": experiment_id_,
                    "task": task,
                    "large_model": pair.large_model,
                    "small_model": pair.small_model,
                    "stage1": {**base.get("stage1", {}), "optimizer": optimizer},
                    "stage2": {**base.get("stage2", {}), **({"optimizer": hardener} if hardener else {})},
                    "seed": seed,
                }
            )
        except ValidationError as exc:
            raise CampaignError(f"{path}: cell {experiment_id_}: {_problems(exc)}") from None
    return specs


def cell_of(experiment_id_: str) -> tuple[str, str, str, str]:
    """(task, pair, optimizer, seed) back from an expanded experiment id; the optimizer part is Stage 1's,
    or "<stage1>-<stage2>" in a campaign with stage2_optimizers."""
    _, task, pair, optimizer, seed = experiment_id_.split(SEPARATOR)
    return task, pair, optimizer, seed


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
