"""What every LM provider answers: its price for a model, an engine for DSPy, and what would make the first
call fail, checked before any call. `providers.PROVIDERS` says which exist."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import dspy
from dspy.utils.exceptions import LMConfigurationError

from lsl_dagster.spec.experiment import ModelSpec, Price
from lsl_dagster.spec.providers import api_key, key_variable
from lsl_dagster.tasks.task import Task

# Loads the experiment's task; only a provider that reads answer keys (the sim) calls it, when it is used.
TaskLoader = Callable[[], Task]


class ConfigError(ValueError):
    """The experiment cannot run as written (missing key, unknown price for a cost budget...)."""


class Provider(ABC):
    @abstractmethod
    def check_name(self, model: str) -> None:
        """Raise ValueError when this provider has no model of that name (asked when a file is read)."""

    @abstractmethod
    def price(self, spec: ModelSpec) -> Price | None: ...

    @abstractmethod
    def engine(self, spec: ModelSpec, seed: int, task: TaskLoader | None = None) -> Any: ...

    def check(self, spec: ModelSpec, *, need_price: bool) -> None:
        """Everything that would make the first call fail, checked before any call."""
        var = key_variable(spec, os.environ)
        if var is not None and not api_key(spec, os.environ):
            raise ConfigError(f"{spec.model} needs an API key: set the environment variable {var}")
        if need_price and self.price(spec) is None:
            raise ConfigError(
                f"max_cost_usd is set but no price is known for {spec.model}: add "
                "`price: {input_per_mtok: ..., output_per_mtok: ...}` to its model entry"
            )
        try:
            # DSPy itself refuses settings its model cannot take (e.g. a reasoning model's temperature and
            # max_tokens) when the LM is built, without calling it: say what to write before anything runs.
            dspy.LM(spec.model, temperature=spec.temperature, max_tokens=spec.max_tokens)
        except LMConfigurationError as exc:
            raise ConfigError(
                f"{spec.model} cannot run with temperature {spec.temperature} and max_tokens "
                f"{spec.max_tokens}; change them in its model entry. DSPy said: {exc}"
            ) from None
