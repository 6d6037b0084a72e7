"""GEPA: reflects on minibatch failures in plain text and rewrites the instructions; demos stay."""

from __future__ import annotations

from dataclasses import dataclass

import dspy

from lsl_dagster.llm.provider import ConfigError
from lsl_dagster.method.optimizers.base import Budget, Optimizer, Plan, Setting
from lsl_dagster.method.optimizers.callbacks import BudgetStopper, GepaLog

REFLECTION_MINIBATCH = 3


@dataclass(frozen=True)
class GepaPlan(Plan):
    iteration_calls: int  # a typical iteration's calls: GEPA stops when fewer are left


class GEPA(Optimizer[GepaPlan]):
    def __init__(self, budget: Budget):
        super().__init__(budget)
        self.log = GepaLog()

    def sized(self, budget: Budget) -> GepaPlan:
        """Refuse a budget that cannot produce one validated proposal: GEPA first evaluates the starting
        prompt on the dev set, then per proposal runs a minibatch with the current prompt, one reflection
        call and the minibatch with the proposal, and adopts a proposal only after it is evaluated on the
        whole dev set. Anything less is a run that cannot change the prompt."""
        stage, max_calls = budget.stage, budget.max_calls
        calls_per_run, n_val = budget.calls_per_run, budget.n_val
        proposal = 2 * REFLECTION_MINIBATCH * calls_per_run + 1
        valset_calls = n_val * calls_per_run
        needed = 2 * valset_calls + proposal
        if max_calls is not None and max_calls < needed:
            raise ConfigError(
                f"{stage}: max_calls={max_calls} cannot buy one GEPA proposal: evaluating the starting "
                f"prompt on the {n_val} dev examples takes {valset_calls} calls, one proposal {proposal} (2 "
                f"minibatches of {REFLECTION_MINIBATCH} + 1 reflection) and validating it {valset_calls} "
                f"more, {needed} in all. Raise {stage}.max_calls to at least {needed} (a few proposals need "
                f"~{needed + 3 * (proposal + valset_calls)}) or lower data.val; nothing was called."
            )
        # Two minibatch runs of the program and one on the valset, plus a reflection call per predictor.
        iteration_calls = (2 * REFLECTION_MINIBATCH + n_val + 1) * calls_per_run
        return GepaPlan(runs=budget.runs, iteration_calls=iteration_calls)

    def compile(
        self, student: dspy.Module, trainset: list[dspy.Example], valset: list[dspy.Example], setting: Setting
    ) -> dspy.Module:
        optimizer = dspy.GEPA(
            metric=setting.feedback_metric,
            max_metric_calls=self.plan.runs,
            reflection_lm=setting.prompt_lm,
            reflection_minibatch_size=REFLECTION_MINIBATCH,
            add_format_failure_as_feedback=True,
            num_threads=setting.threads,
            seed=setting.seed,
            gepa_kwargs={
                "stop_callbacks": [BudgetStopper(setting.meter, self.plan.iteration_calls)],
                "callbacks": [setting.best, self.log],
            },
        )
        return optimizer.compile(student, trainset=trainset, valset=valset)

    def activity(self) -> str | None:
        return self.log.summary()
