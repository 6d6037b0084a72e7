"""The experiment's language models as a Dagster resource: a metered `dspy.LM` per model entry, from its
provider (see `providers`), every call through `MeteredEngine` (budgets and usage)."""

from __future__ import annotations

import dspy
from dagster import ConfigurableResource

from lsl_dagster.llm.engine import MeteredEngine, MeteredLM
from lsl_dagster.llm.ledger import Meter
from lsl_dagster.llm.provider import TaskLoader
from lsl_dagster.llm.providers import PROVIDERS
from lsl_dagster.spec.experiment import ExperimentSpec, ModelSpec


class LanguageModels(ConfigurableResource):
    """Builds the metered `dspy.LM`s of an experiment. DSPy retries each failed call (429 honouring
    Retry-After, 5xx, timeouts, dropped connections) `num_retries` times with backoff; a step whose
    provider still fails is retried `step_retries` times by Dagster, replaying paid calls from the cache."""

    num_retries: int = 4
    step_retries: int = 1
    step_retry_delay_s: float = 30.0

    def check(self, spec: ExperimentSpec) -> None:
        for model in (spec.large_model, spec.small_model):
            self.check_model(model, need_price=spec.max_cost_usd is not None)

    def check_model(self, spec: ModelSpec, *, need_price: bool) -> None:
        PROVIDERS[spec.provider].check(spec, need_price=need_price)

    def lm(self, spec: ModelSpec, meter: Meter, seed: int, task: TaskLoader | None = None) -> dspy.LM:
        provider = PROVIDERS[spec.provider]
        engine = MeteredEngine(provider.engine(spec, seed, task), spec, meter, provider.price(spec))
        lm = MeteredLM(
            spec.model,
            engine=engine,
            temperature=spec.temperature,
            max_tokens=spec.max_tokens,
            num_retries=self.num_retries,
            cache=True,
        )
        lm.endpoint = spec.endpoint
        lm.structured = spec.structured_outputs
        return lm
