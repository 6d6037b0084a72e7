"""A campaign file's schema: a grid of tasks x model pairs x optimizers x seeds."""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field

from lsl_dagster.spec.experiment import HardeningOptimizer, ModelSpec, Optimizer
from lsl_dagster.spec.strict import Slug, Strict


class ModelPair(Strict):
    large_model: ModelSpec
    small_model: ModelSpec
    name: Slug | None = None

    @property
    def label(self) -> str:
        """The pair's part of an experiment id: its name, else the two model names."""
        if self.name:
            return self.name
        short = [
            re.sub(r"[^a-z0-9]+", "-", m.model.rsplit("/", 1)[-1].lower()).strip("-") for m in self.models
        ]
        return "_".join(short)

    @property
    def models(self) -> tuple[ModelSpec, ModelSpec]:
        return self.large_model, self.small_model


class CampaignSpec(Strict):
    """data/campaigns/<campaign>.yaml: a grid of tasks x model pairs x optimizers x seeds."""

    campaign: Slug
    tasks: list[Slug] = Field(min_length=1)
    model_pairs: list[ModelPair] = Field(min_length=1)
    # Stage 1's optimizer (the budget-matched arm's too).
    optimizers: list[Optimizer] = Field(default=["miprov2"], min_length=1)
    # Stage 2's, as a grid axis: each cell's optimizer then reads "<stage1>-<stage2>". Omitted: every cell
    # uses `experiment.stage2.optimizer` (GEPA by default) and reads as Stage 1's alone.
    stage2_optimizers: list[HardeningOptimizer] | None = Field(default=None, min_length=1)
    seeds: list[int] = Field(min_length=1)
    # Every other experiment setting, shared by all cells (validated when the grid is expanded).
    experiment: dict[str, Any] = Field(default_factory=dict)
    # A hard cap on what all the campaign's experiments together may spend (each may have its own too).
    max_cost_usd: float | None = Field(default=None, gt=0)
