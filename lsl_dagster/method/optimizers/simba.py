"""SIMBA: samples the program on minibatches and appends rules (or demos) where its outputs vary."""

from __future__ import annotations

from dataclasses import dataclass

import dspy

from lsl_dagster.llm.provider import ConfigError
from lsl_dagster.method.optimizers.base import (
    MAX_BOOTSTRAPPED_DEMOS,
    MAX_LABELED_DEMOS,
    Budget,
    Optimizer,
    Plan,
    Setting,
)


@dataclass(frozen=True)
class SimbaPlan(Plan):
    """SIMBA's settings for a budget (in program runs) and the runs they take at most."""

    bsize: int
    num_candidates: int
    max_steps: int
    train: int  # training examples SIMBA gets: it samples its minibatches from them and validates on all


def simba_runs(bsize: int, candidates: int, steps: int, train: int, val: int) -> int:
    """Program runs (and rule-writing calls) SIMBA takes at most: per step `candidates` sampled runs of
    each minibatch example, a rule or demo for up to candidates + 1 new programs and their runs on the
    minibatch; then its best programs (at most one per step, plus the start) on its training examples;
    and, ours, the starting and the returned program on the dev set."""
    per_step = bsize * candidates + (candidates + 1) * (bsize + 1)
    return steps * per_step + min(candidates + 1, steps + 1) * train + 2 * val


def simba_plan(stage: str, max_calls: int | None, calls_per_run: int, n_train: int, n_val: int) -> SimbaPlan:
    """The largest SIMBA (most steps, then the largest minibatch) whose planned calls fit the budget,
    so it is not cut off before its own validation. A budget that fits no step is refused before any call."""
    budget = (max_calls or 10**6) // calls_per_run
    left = budget - 2 * n_val
    candidates = max(2, min(6, left // 150))
    for steps in range(min(8, max(1, left // 40)), 0, -1):
        for bsize in range(min(32, n_train), 1, -1):
            train = min(n_train, 2 * bsize)
            runs = simba_runs(bsize, candidates, steps, train, n_val)
            if runs <= budget and (bsize >= 3 or steps == 1):
                return SimbaPlan(
                    bsize=bsize, num_candidates=candidates, max_steps=steps, train=train, runs=runs
                )
    needed = simba_runs(2, 2, 1, min(n_train, 4), n_val) * calls_per_run
    raise ConfigError(
        f"{stage}: max_calls={max_calls} cannot buy one SIMBA step: evaluating the starting and the final "
        f"program on the {n_val} dev examples and one step on a minibatch of 2 take {needed} calls. Raise "
        f"{stage}.max_calls to at least {needed} or lower data.val; nothing was called."
    )


class SIMBA(Optimizer[SimbaPlan]):
    def sized(self, budget: Budget) -> SimbaPlan:
        return simba_plan(budget.stage, budget.max_calls, budget.calls_per_run, budget.n_train, budget.n_val)

    def compile(
        self, student: dspy.Module, trainset: list[dspy.Example], valset: list[dspy.Example], setting: Setting
    ) -> dspy.Module:
        evaluate = dspy.Evaluate(
            devset=valset, metric=setting.metric, num_threads=setting.threads, max_errors=10**9
        )
        # SIMBA validates on its own training examples only: the dev set scores the starting program (what
        # a budget stop falls back to) and SIMBA's pick, and the better of the two is kept, as with MIPROv2.
        evaluate(student)
        optimizer = dspy.SIMBA(
            metric=setting.feedback_metric,  # its rules read the metric's feedback (`worse_reward_info`)
            bsize=self.plan.bsize,
            num_candidates=self.plan.num_candidates,
            max_steps=self.plan.max_steps,
            max_demos=MAX_BOOTSTRAPPED_DEMOS + MAX_LABELED_DEMOS,
            prompt_model=setting.prompt_lm,
            num_threads=setting.threads,
        )
        evaluate(optimizer.compile(student, trainset=trainset[: self.plan.train], seed=setting.seed))
        return setting.best.program
