"""One optimizer run within a stage's meter: the best validated candidate when the budget runs out."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import dspy
from dspy.utils.exceptions import AdapterParseError

from lsl_dagster.llm.ledger import BudgetExhausted, Meter
from lsl_dagster.llm.replies import FormatWatch, ModelReplies
from lsl_dagster.llm.structured import ModelAdapter
from lsl_dagster.method.optimizers import OPTIMIZERS
from lsl_dagster.method.optimizers.base import Budget, Setting
from lsl_dagster.method.optimizers.callbacks import BestSoFar
from lsl_dagster.method.optimizers.metrics import feedback_metric_for, metric_for
from lsl_dagster.method.optimizers.unparseable import unparseable
from lsl_dagster.method.progress import StageProgress
from lsl_dagster.tasks.task import Task


@dataclass
class Optimized:
    program: dspy.Module
    start_val_score: float | None
    val_score: float | None
    stop_reason: str | None
    # What the optimizer did (GEPA's iterations and proposals), to explain an unchanged prompt.
    activity: str | None = None
    # Per model, how many of its replies DSPy's adapters could not parse (None: all parsed).
    unparseable_replies: str | None = None
    # Per model, its replies the adapters parsed or could not parse.
    replies: dict[str, ModelReplies] = field(default_factory=dict)


def run_optimizer(
    name: str,
    student: dspy.Module,
    trainset: list[dspy.Example],
    valset: list[dspy.Example],
    *,
    task: Task,
    task_lm: dspy.LM,
    prompt_lm: dspy.LM,
    meter: Meter,
    seed: int,
    threads: int,
    stage: str = "optimizer",
    keep_demos: bool = False,
    progress: StageProgress | None = None,
) -> Optimized:
    """Run one of DSPy's optimizers within the meter's call budget.

    When the budget runs out mid-way the best fully validated candidate so far is returned with the
    reason; with none yet, BudgetExhausted propagates and the stage fails saying so. A step that cannot
    parse a model's output (e.g. MIPROv2's instruction proposals) returns the best candidate so far, or
    fails with OptimizerOutputError naming the stage, the model, its unparseable share and what to change.
    With `keep_demos` MIPROv2 proposes instructions only and the student keeps its demos (GEPA always does).
    """
    calls_per_run = max(1, len(student.named_predictors()))
    optimizer = OPTIMIZERS[name](Budget(stage, meter.max_calls, calls_per_run, len(trainset), len(valset)))
    best = BestSoFar(student, len(valset), progress)
    watch = FormatWatch()
    shuffled = list(trainset)
    random.Random(seed).shuffle(shuffled)
    setting = Setting(
        metric=metric_for(task),
        feedback_metric=feedback_metric_for(task),
        task_lm=task_lm,
        prompt_lm=prompt_lm,
        meter=meter,
        best=best,
        seed=seed,
        threads=threads,
        keep_demos=keep_demos,
    )
    try:
        with dspy.context(lm=task_lm, adapter=ModelAdapter(), callbacks=[best, watch], max_errors=10**9):
            program = optimizer.compile(student, shuffled, valset, setting)
    except BudgetExhausted:
        meter.wait_idle()
        if best.program is None:
            if meter.cost_stopped:
                # A capped experiment always ends with a comparison: a stage whose share of the cap ran
                # out before any candidate was validated keeps the program it started from.
                reason = f"{meter.stop_reason}; no candidate validated yet, kept the starting program"
                return Optimized(student, None, None, reason)
            raise
        program, stop_reason = best.program, meter.stop_reason
    except AdapterParseError as exc:
        meter.wait_idle()
        error = unparseable(stage, name, watch, exc)
        if best.program is None:
            raise error from exc
        program, stop_reason = best.program, f"stopped early: {error}"
    else:
        meter.wait_idle()
        stop_reason = meter.stop_reason
    return Optimized(
        program,
        best.first_score,
        best.score,
        stop_reason,
        optimizer.activity(),
        watch.summary(),
        watch.by_model,
    )
