"""DSPy's optimizers, sized to a call budget, stopping cleanly with their best candidate when it runs out."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dspy
from dspy.utils.callback import BaseCallback
from dspy.utils.exceptions import AdapterParseError

from lsl_dagster.llm.ledger import BudgetExhausted, Meter
from lsl_dagster.llm.provider import ConfigError
from lsl_dagster.llm.replies import FormatWatch
from lsl_dagster.tasks.metrics import call_metric, neutral_feedback
from lsl_dagster.tasks.task import Task

MAX_BOOTSTRAPPED_DEMOS = 3
MAX_LABELED_DEMOS = 2
REFLECTION_MINIBATCH = 3


def metric_for(task: Task) -> Callable[..., float]:
    """The task's metric as DSPy's optimizers and Evaluate call it: a number."""

    def metric(example: dspy.Example, prediction: Any, trace: Any = None) -> float:
        return call_metric(task.metric, example, prediction, trace).score

    return metric


def feedback_metric_for(task: Task) -> Callable[..., dspy.Prediction]:
    """GEPA's metric: the score plus the text its reflection model reads, per predictor when GEPA asks
    (pred_name). The feedback is the task metric's own; when it gives none, a task-agnostic account of
    the inputs and of expected vs got per output field."""

    def metric(
        gold: dspy.Example, pred: Any, trace: Any = None, pred_name: Any = None, pred_trace: Any = None
    ) -> dspy.Prediction:
        result = call_metric(task.metric, gold, pred, trace, pred_name, pred_trace)
        feedback = result.feedback or neutral_feedback(
            gold,
            pred,
            inputs=task.input_fields,
            labels=task.label_fields,
            score_value=result.score,
            pred_name=pred_name,
            pred_trace=pred_trace,
        )
        return dspy.Prediction(score=result.score, feedback=feedback)

    return metric


class BestSoFar(BaseCallback):
    """Remembers the best program evaluated on the full validation set, from dspy.Evaluate (MIPROv2,
    random search, SIMBA) or GEPA's valset events, so a budget stop still returns the best candidate found."""

    def __init__(self, student: dspy.Module, valset_size: int):
        self.student = student
        self.valset_size = valset_size
        self.program: dspy.Module | None = None
        self.score: float | None = None
        self.first_score: float | None = None
        self._started: dict[str, tuple[dspy.Module, int]] = {}

    def _offer(self, program: dspy.Module, value: float) -> None:
        if self.first_score is None:  # MIPROv2, GEPA and our SIMBA run evaluate the starting program first
            self.first_score = value
        if self.score is None or value > self.score:
            self.program, self.score = program.deepcopy(), value

    def on_evaluate_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        devset = inputs.get("devset") or instance.devset
        self._started[call_id] = (inputs["program"], len(devset))

    def on_evaluate_end(self, call_id: str, outputs: Any, exception: BaseException | None = None) -> None:
        program, size = self._started.pop(call_id, (None, 0))
        if exception is None and program is not None and size == self.valset_size and outputs is not None:
            # From the per-example scores: dspy.Evaluate's own score is a percentage rounded to 2 places.
            self._offer(program, sum(score for *_, score in outputs.results) / size)

    def on_valset_evaluated(self, event: dict[str, Any]) -> None:
        if event["num_examples_evaluated"] == event["total_valset_size"]:
            self._offer(with_instructions(self.student, event["candidate"]), event["average_score"])


class GepaLog:
    """GEPA's own events, counted: enough to say why a run ended without changing the prompt."""

    def __init__(self) -> None:
        self.iterations = self.proposals = self.reflections = self.accepted = self.rejected = 0
        self.skipped: dict[str, int] = {}

    def on_iteration_start(self, event: Any) -> None:
        self.iterations += 1

    def on_proposal_start(self, event: Any) -> None:
        self.reflections += 1

    def on_proposal_end(self, event: Any) -> None:
        self.proposals += 1

    def on_candidate_accepted(self, event: Any) -> None:
        self.accepted += 1

    def on_candidate_rejected(self, event: Any) -> None:
        self.rejected += 1

    def on_evaluation_skipped(self, event: Any) -> None:
        self.skipped[event["reason"]] = self.skipped.get(event["reason"], 0) + 1

    def summary(self) -> str:
        if self.iterations == 0:
            return "GEPA evaluated the starting prompt and ran no iteration"
        parts = [
            f"GEPA ran {self.iterations} iteration(s)",
            f"{self.proposals} proposal(s) from {self.reflections} reflection(s)",
            f"{self.accepted} accepted, {self.rejected} rejected on the minibatch",
        ]
        if failed := self.reflections - self.proposals:
            parts.append(f"{failed} reflection(s) gave no usable instruction")
        if perfect := self.skipped.get("all_scores_perfect"):
            parts.append(f"{perfect} minibatch(es) already scored perfectly, so nothing to reflect on")
        return ", ".join(parts)


def check_gepa_budget(stage: str, max_calls: int | None, valset_size: int, calls_per_run: int = 1) -> None:
    """Refuse, before any call, a GEPA budget that cannot produce one validated proposal: GEPA first
    evaluates the starting prompt on the dev set, then per proposal runs a minibatch with the current
    prompt, one reflection call and the minibatch with the proposal, and adopts a proposal only after it
    is evaluated on the whole dev set. Anything less is a run that cannot change the prompt. One run of
    the program calls each of its predictors (`calls_per_run`)."""
    proposal = 2 * REFLECTION_MINIBATCH * calls_per_run + 1
    valset_calls = valset_size * calls_per_run
    needed = 2 * valset_calls + proposal
    if max_calls is not None and max_calls < needed:
        raise ConfigError(
            f"{stage}: max_calls={max_calls} cannot buy one GEPA proposal: evaluating the starting prompt on "
            f"the {valset_size} dev examples takes {valset_calls} calls, one proposal {proposal} (2 "
            f"minibatches of {REFLECTION_MINIBATCH} + 1 reflection) and validating it {valset_calls} more, "
            f"{needed} in all. Raise {stage}.max_calls to at least {needed} (a few proposals need "
            f"~{needed + 3 * (proposal + valset_calls)}) or lower data.val; nothing was called."
        )


class OptimizerOutputError(Exception):
    """An optimizer step could not parse the model's output, even after DSPy's retries and fallbacks."""


class BudgetStopper:
    """Stops GEPA between iterations when the stage's calls cannot cover one more typical iteration."""

    def __init__(self, meter: Meter, valset_size: int, calls_per_run: int = 1):
        self.meter = meter
        # Two minibatch runs of the program and one on the valset, plus a reflection call per predictor.
        self.iteration_calls = (2 * REFLECTION_MINIBATCH + valset_size + 1) * calls_per_run

    def __call__(self, gepa_state: Any) -> bool:
        remaining = self.meter.remaining_calls()
        return remaining is not None and remaining < self.iteration_calls


def with_instructions(program: dspy.Module, instructions: dict[str, str]) -> dspy.Module:
    copy = program.deepcopy()
    for name, predictor in copy.named_predictors():
        if name in instructions:
            predictor.signature = predictor.signature.with_instructions(instructions[name])
    return copy


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


def _miprov2(
    student, trainset, valset, *, metric, prompt_lm, task_lm, budget, seed, threads, keep_demos, **_: Any
) -> dspy.Module:
    # keep_demos: instructions only; the demo sets MIPROv2 bootstraps are discarded, the student's stay.
    bootstrapped, labeled = (0, 0) if keep_demos else (MAX_BOOTSTRAPPED_DEMOS, MAX_LABELED_DEMOS)
    candidates = max(2, min(8, budget // 40))
    minibatch = min(len(valset), max(5, len(valset) // 3))
    # Bootstrapping and proposals first, then per trial a minibatch plus every fifth trial a full eval.
    # (Instructions only still bootstraps demo sets: MIPROv2's proposer reads them.)
    fixed = candidates * (MAX_BOOTSTRAPPED_DEMOS + 3) + candidates + 8 + len(valset)
    trials = max(2, int((budget - fixed) / (minibatch + len(valset) / 5)))
    optimizer = dspy.MIPROv2(
        metric=metric,
        prompt_model=prompt_lm,
        task_model=task_lm,
        auto=None,
        num_candidates=candidates,
        max_bootstrapped_demos=bootstrapped,
        max_labeled_demos=labeled,
        num_threads=threads,
        max_errors=10**9,
        seed=seed,  # also on the instance: compile(seed=0) alone falls back to the default 9
        verbose=False,
    )
    return optimizer.compile(
        student,
        trainset=trainset,
        valset=valset,
        num_trials=trials,
        seed=seed,
        minibatch=len(valset) > minibatch,
        minibatch_size=minibatch,
    )


def _bootstrap_rs(student, trainset, valset, *, metric, budget, threads, **_: Any) -> dspy.Module:
    per_candidate = len(valset) + MAX_BOOTSTRAPPED_DEMOS + 2
    optimizer = dspy.BootstrapFewShotWithRandomSearch(
        metric=metric,
        max_bootstrapped_demos=MAX_BOOTSTRAPPED_DEMOS,
        max_labeled_demos=MAX_LABELED_DEMOS,
        num_candidate_programs=max(1, budget // per_candidate - 3),
        num_threads=threads,
        max_errors=10**9,
    )
    return optimizer.compile(student, trainset=trainset, valset=valset)


def _gepa(
    student,
    trainset,
    valset,
    *,
    feedback_metric,
    prompt_lm,
    budget,
    seed,
    threads,
    meter,
    best,
    calls_per_run,
    gepa_log,
    **_: Any,
):
    optimizer = dspy.GEPA(
        metric=feedback_metric,
        max_metric_calls=budget,
        reflection_lm=prompt_lm,
        reflection_minibatch_size=REFLECTION_MINIBATCH,
        add_format_failure_as_feedback=True,
        num_threads=threads,
        seed=seed,
        gepa_kwargs={
            "stop_callbacks": [BudgetStopper(meter, len(valset), calls_per_run)],
            "callbacks": [best, gepa_log],
        },
    )
    return optimizer.compile(student, trainset=trainset, valset=valset)


@dataclass(frozen=True)
class SimbaPlan:
    """SIMBA's settings for a budget (in program runs) and the runs they take at most."""

    bsize: int
    num_candidates: int
    max_steps: int
    train: int  # training examples SIMBA gets: it samples its minibatches from them and validates on all
    runs: int


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
                return SimbaPlan(bsize, candidates, steps, train, runs)
    needed = simba_runs(2, 2, 1, min(n_train, 4), n_val) * calls_per_run
    raise ConfigError(
        f"{stage}: max_calls={max_calls} cannot buy one SIMBA step: evaluating the starting and the final "
        f"program on the {n_val} dev examples and one step on a minibatch of 2 take {needed} calls. Raise "
        f"{stage}.max_calls to at least {needed} or lower data.val; nothing was called."
    )


def _simba(
    student, trainset, valset, *, metric, feedback_metric, prompt_lm, seed, threads, best, plan, **_: Any
) -> dspy.Module:
    evaluate = dspy.Evaluate(devset=valset, metric=metric, num_threads=threads, max_errors=10**9)
    # SIMBA validates on its own training examples only: the dev set scores the starting program (what
    # a budget stop falls back to) and SIMBA's pick, and the better of the two is kept, as with MIPROv2.
    evaluate(student)
    optimizer = dspy.SIMBA(
        metric=feedback_metric,  # its rules read the metric's feedback (`worse_reward_info`)
        bsize=plan.bsize,
        num_candidates=plan.num_candidates,
        max_steps=plan.max_steps,
        max_demos=MAX_BOOTSTRAPPED_DEMOS + MAX_LABELED_DEMOS,
        prompt_model=prompt_lm,
        num_threads=threads,
    )
    evaluate(optimizer.compile(student, trainset=trainset[: plan.train], seed=seed))
    return best.program


OPTIMIZERS = {"miprov2": _miprov2, "bootstrap_rs": _bootstrap_rs, "gepa": _gepa, "simba": _simba}


def _what_to_change(stage: str, name: str) -> str:
    """The settings that help when `name`'s proposals in `stage` could not be parsed (the budget-matched
    arm runs with Stage 1's settings)."""
    if stage == "stage2":
        # GEPA's reflection is plain text with the instruction in a ``` block: no adapter parses it.
        section, model_key, fallback, kind = "stage2", "reflection", "gepa", "plain-text proposals"
    else:
        section, model_key, fallback, kind = "stage1", "prompt_model", "bootstrap_rs", "no instructions"
    advice = f"a stronger model for proposals (`{section}: {{{model_key}: large}}`)"
    if name != fallback:
        advice += f", an optimizer that writes {kind} (`{section}: {{optimizer: {fallback}}}`)"
    return advice


def _unparseable(stage: str, name: str, watch: FormatWatch, exc: AdapterParseError) -> OptimizerOutputError:
    """The message a user can act on when an optimizer step could not parse a model's reply."""
    model = watch.last_failure[0] if watch.last_failure else "the model"
    counts = watch.by_model.get(model)
    rate = f"{counts.unparseable} of its {counts.replies} replies" if counts else "its replies"
    dspy_said = str(exc).strip().splitlines()[0]
    return OptimizerOutputError(
        f"{stage} ({name}): {model} wrote output DSPy could not parse ({rate} in this stage could not be "
        "parsed, DSPy's ChatAdapter -> JSONAdapter fallback included), so the optimizer could not go on. "
        f"What to change: {_what_to_change(stage, name)}, or a larger max_tokens on the model entry if "
        f"its replies are cut off. DSPy said: {dspy_said}"
    )


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
) -> Optimized:
    """Run one of DSPy's optimizers within the meter's call budget.

    When the budget runs out mid-way the best fully validated candidate so far is returned with the
    reason; with none yet, BudgetExhausted propagates and the stage fails saying so. A step that cannot
    parse a model's output (e.g. MIPROv2's instruction proposals) returns the best candidate so far, or
    fails with OptimizerOutputError naming the stage, the model, its unparseable share and what to change.
    With `keep_demos` MIPROv2 proposes instructions only and the student keeps its demos (GEPA always does).
    """
    calls_per_run = max(1, len(student.named_predictors()))
    if name == "gepa":
        check_gepa_budget(stage, meter.max_calls, len(valset), calls_per_run)
    plan = (
        simba_plan(stage, meter.max_calls, calls_per_run, len(trainset), len(valset))
        if name == "simba"
        else None
    )
    best = BestSoFar(student, len(valset))
    watch = FormatWatch()
    gepa_log = GepaLog()
    shuffled = list(trainset)
    random.Random(seed).shuffle(shuffled)
    try:
        with dspy.context(lm=task_lm, callbacks=[best, watch], max_errors=10**9):
            program = OPTIMIZERS[name](
                student,
                shuffled,
                valset,
                metric=metric_for(task),
                feedback_metric=feedback_metric_for(task),
                prompt_lm=prompt_lm,
                task_lm=task_lm,
                # The whole budget, not what is left: a resumed stage must plan as it first did. The
                # optimizers plan in program runs, and one run of the program calls each predictor.
                budget=(meter.max_calls or 10**6) // calls_per_run,
                seed=seed,
                threads=threads,
                meter=meter,
                best=best,
                calls_per_run=calls_per_run,
                gepa_log=gepa_log,
                plan=plan,
                keep_demos=keep_demos,
            )
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
        error = _unparseable(stage, name, watch, exc)
        if best.program is None:
            raise error from exc
        program, stop_reason = best.program, f"stopped early: {error}"
    else:
        meter.wait_idle()
        stop_reason = meter.stop_reason
    activity = gepa_log.summary() if name == "gepa" else None
    return Optimized(program, best.first_score, best.score, stop_reason, activity, watch.summary())
