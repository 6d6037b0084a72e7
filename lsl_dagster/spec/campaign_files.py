"""Campaigns: a grid file loaded and expanded into experiments with readable ids, and back."""

from __future__ import annotations

import itertools
from pathlib import Path

import yaml
from pydantic import ValidationError

from lsl_dagster.settings import Settings
from lsl_dagster.spec.campaign import CampaignSpec
from lsl_dagster.spec.experiment import ExperimentSpec
from lsl_dagster.spec.strict import check_slug
from lsl_dagster.spec.yaml_files import load_yaml

SEPARATOR = "--"


class CampaignError(ValueError):
    """A campaign file is invalid or does not expand; nothing of it runs."""


def _problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(map(str, e['loc'])) or 'file'}: {e['msg']}" for e in exc.errors(include_url=False)
    )


def load_campaign(path: Path) -> CampaignSpec:
    try:
        raw = load_yaml(path.read_text(encoding="utf-8"))
        campaign = CampaignSpec.model_validate(raw, context=Settings.from_env().validation_context())
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
                },
                context=Settings.from_env().validation_context(),
            )
        except ValidationError as exc:
            raise CampaignError(f"{path}: cell {experiment_id_}: {_problems(exc)}") from None
    return specs


def cell_of(experiment_id_: str) -> tuple[str, str, str, str]:
    """(task, pair, optimizer, seed) back from an expanded experiment id; the optimizer part is Stage 1's,
    or "<stage1>-<stage2>" in a campaign with stage2_optimizers."""
    _, task, pair, optimizer, seed = experiment_id_.split(SEPARATOR)
    return task, pair, optimizer, seed
