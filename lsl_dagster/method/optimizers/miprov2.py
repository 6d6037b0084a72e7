"""MIPROv2: proposes instructions (and demo sets) with the prompt model, then searches their combinations
with minibatch trials and a full evaluation every fifth trial."""

from __future__ import annotations

import math
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


@dataclass(frozen=True)
class MiproPlan(Plan):
    candidates: int
    trials: int
    minibatch_size: int
    minibatch: bool  # False when the minibatch would be the whole dev set


class MIPROv2(Optimizer[MiproPlan]):
    def sized(self, budget: Budget) -> MiproPlan:
        candidates = max(2, min(8, budget.runs // 40))
        minibatch = min(budget.n_val, max(5, budget.n_val // 3))
        # Bootstrapping and proposals first, then per trial a minibatch plus every fifth trial a full eval.
        # (Instructions only still bootstraps demo sets: MIPROv2's proposer reads them.)
        fixed = candidates * (MAX_BOOTSTRAPPED_DEMOS + 3) + candidates + 8 + budget.n_val
        per_trial = minibatch + budget.n_val / 5
        trials = max(2, int((budget.runs - fixed) / per_trial))
        return MiproPlan(
            runs=fixed + math.ceil(trials * per_trial),
            candidates=candidates,
            trials=trials,
            minibatch_size=minibatch,
            minibatch=budget.n_val > minibatch,
        )

    def compile(
        self, student: dspy.Module, trainset: list[dspy.Example], valset: list[dspy.Example], setting: Setting
    ) -> dspy.Module:
        # keep_demos: instructions only; the demo sets MIPROv2 bootstraps are discarded, the student's stay.
        bootstrapped, labeled = (0, 0) if setting.keep_demos else (MAX_BOOTSTRAPPED_DEMOS, MAX_LABELED_DEMOS)
        optimizer = dspy.MIPROv2(
            metric=setting.metric,
            prompt_model=setting.prompt_lm,
            task_model=setting.task_lm,
            auto=None,
            num_candidates=self.plan.candidates,
            max_bootstrapped_demos=bootstrapped,
            max_labeled_demos=labeled,
            num_threads=setting.threads,
            max_errors=10**9,
            seed=setting.seed,  # also on the instance: compile(seed=0) alone falls back to the default 9
            verbose=False,
        )
        return optimizer.compile(
            student,
            trainset=trainset,
            valset=valset,
            num_trials=self.plan.trials,
            seed=setting.seed,
            minibatch=self.plan.minibatch,
            minibatch_size=self.plan.minibatch_size,
        )
