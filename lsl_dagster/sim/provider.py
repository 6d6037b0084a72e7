"""The sim as a provider, beside the HTTP ones (`lsl_dagster.llm.http`): the same interface, offline."""

from __future__ import annotations

from typing import Any

from lsl_dagster.llm.provider import ConfigError, Provider, TaskLoader
from lsl_dagster.sim.engine import SimEngine
from lsl_dagster.sim.keys import answer_key
from lsl_dagster.sim.tiers import TIERS, tier_name, unknown_tier
from lsl_dagster.spec.experiment import ModelSpec, Price


class SimProvider(Provider):
    """The offline simulator (a test double): given the experiment's task, it reads the gold labels."""

    def check_name(self, model: str) -> None:
        if model.split("/", 1)[1] not in TIERS:
            raise unknown_tier(model)

    def price(self, spec: ModelSpec) -> Price | None:
        if spec.price is not None:
            return spec.price
        rate = TIERS[tier_name(spec.model)].price
        return Price(input_per_mtok=rate.input_per_mtok, output_per_mtok=rate.output_per_mtok)

    def engine(self, spec: ModelSpec, seed: int, task: TaskLoader | None = None) -> Any:
        return SimEngine(spec.model, seed, answer_key(task()) if task is not None else None)

    def check(self, spec: ModelSpec, *, need_price: bool) -> None:
        try:
            self.check_name(spec.model)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        super().check(spec, need_price=need_price)
