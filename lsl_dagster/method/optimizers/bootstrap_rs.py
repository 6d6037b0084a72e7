"""Bootstrap few-shot with random search: demo sets bootstrapped from the training examples, each scored
on the dev set; no instructions are written."""

from __future__ import annotations

from dataclasses import dataclass

import dspy

from lsl_dagster.method.optimizers.base import (
    MAX_BOOTSTRAPPED_DEMOS,
    MAX_LABELED_DEMOS,
    Budget,
    Optimizer,
    Plan,
    Setting,
)

# Besides the random candidates DSPy scores three fixed programs: zero-shot, labeled demos only, and an
# unshuffled bootstrap.
FIXED_CANDIDATES = 3


@dataclass(frozen=True)
class RandomSearchPlan(Plan):
    candidates: int


class BootstrapRandomSearch(Optimizer[RandomSearchPlan]):
    def sized(self, budget: Budget) -> RandomSearchPlan:
        per_candidate = budget.n_val + MAX_BOOTSTRAPPED_DEMOS + 2
        candidates = max(1, budget.runs // per_candidate - FIXED_CANDIDATES)
        return RandomSearchPlan(runs=(candidates + FIXED_CANDIDATES) * per_candidate, candidates=candidates)

    def compile(
        self, student: dspy.Module, trainset: list[dspy.Example], valset: list[dspy.Example], setting: Setting
    ) -> dspy.Module:
        optimizer = dspy.BootstrapFewShotWithRandomSearch(
            metric=setting.metric,
            max_bootstrapped_demos=MAX_BOOTSTRAPPED_DEMOS,
            max_labeled_demos=MAX_LABELED_DEMOS,
            num_candidate_programs=self.plan.candidates,
            num_threads=setting.threads,
            max_errors=10**9,
        )
        return optimizer.compile(student, trainset=trainset, valset=valset)
