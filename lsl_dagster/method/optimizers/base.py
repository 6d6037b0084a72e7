"""What every optimizer shares: the budget it is sized to, what a run gives it, and the interface."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import dspy

from lsl_dagster.llm.ledger import Meter
from lsl_dagster.method.optimizers.callbacks import BestSoFar

# Demo limits of the optimizers that bootstrap demos; the forecast sizes the largest prompt with them.
MAX_BOOTSTRAPPED_DEMOS = 3
MAX_LABELED_DEMOS = 2


@dataclass(frozen=True)
class Budget:
    """A stage's call limit and the sizes that decide what it buys."""

    stage: str
    max_calls: int | None
    calls_per_run: int  # one run of the program calls each of its predictors
    n_train: int
    n_val: int

    @property
    def runs(self) -> int:
        """Program runs the whole budget buys: the whole, not what is left, so a resumed stage plans as it
        first did."""
        return (self.max_calls or 10**6) // self.calls_per_run


@dataclass(frozen=True)
class Plan:
    """An optimizer's settings for a budget; each optimizer adds its own."""

    runs: int  # the program runs it plans


@dataclass(frozen=True)
class Setting:
    """What a run gives its optimizer besides the data: the metrics, the models, the meter and seed."""

    metric: Callable[..., float]
    feedback_metric: Callable[..., dspy.Prediction]
    task_lm: dspy.LM
    prompt_lm: dspy.LM
    meter: Meter
    best: BestSoFar
    seed: int
    threads: int
    keep_demos: bool  # instructions only: the student's demos stay


P = TypeVar("P", bound=Plan)


class Optimizer(ABC, Generic[P]):
    """One of DSPy's optimizers, sized to a stage's call budget when constructed. A budget that cannot
    buy one step is refused then (ConfigError), before any call."""

    def __init__(self, budget: Budget):
        self.budget = budget
        self.plan: P = self.sized(budget)

    @abstractmethod
    def sized(self, budget: Budget) -> P:
        """The settings this budget buys."""

    @property
    def planned_calls(self) -> int:
        return self.plan.runs * self.budget.calls_per_run

    @abstractmethod
    def compile(
        self, student: dspy.Module, trainset: list[dspy.Example], valset: list[dspy.Example], setting: Setting
    ) -> dspy.Module:
        """The optimized program; runs inside the stage's DSPy context (task model, callbacks)."""

    def activity(self) -> str | None:
        """What the optimizer did, when it can say more than its result (to explain an unchanged prompt)."""
        return None
