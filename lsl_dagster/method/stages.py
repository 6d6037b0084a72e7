"""The experiment, one function per stage. Dagster wiring lives in assets.py; this is the method."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import dspy

from lsl_dagster import graph
from lsl_dagster.llm.structured import ModelAdapter
from lsl_dagster.method import signal
from lsl_dagster.method.evaluation import evaluate
from lsl_dagster.method.optimizers.run import run_optimizer
from lsl_dagster.method.prompts import capture, rebuild
from lsl_dagster.method.run import StageRun
from lsl_dagster.records import (
    EvaluationResult,
    PromptCandidate,
    Provenance,
    SequentialDecision,
    SmallModelSignal,
)
from lsl_dagster.spec.experiment import ExperimentSpec
from lsl_dagster.tasks.task import Example, Task, to_dspy


def data_seed(spec: ExperimentSpec) -> int:
    return spec.seed if spec.data.seed is None else spec.data.seed


def optimizer_sets(spec: ExperimentSpec, task: Task) -> tuple[list[dspy.Example], list[dspy.Example]]:
    """Optimizers train on the train split and validate on the dev split; the test split is never seen.
    Which train and dev examples is drawn by the experiment's seed, so that variance across seeds includes
    the data's."""
    train = [to_dspy(e, task) for e in task.sample("train", spec.data.train, data_seed(spec))]
    val = [to_dspy(e, task) for e in task.sample("dev", spec.data.val, data_seed(spec))]
    return train, val


def evaluation_size(spec: ExperimentSpec, task: Task) -> int:
    """How many examples every arm is evaluated on (experiment_files.check_fits refuses a larger limit)."""
    size = task.sizes[spec.evaluation.split]
    return size if spec.evaluation.limit is None else min(spec.evaluation.limit, size)


def evaluation_examples(spec: ExperimentSpec, task: Task) -> Iterable[Example]:
    """The examples every arm is evaluated on, in one order: the split's first `limit`, the same whatever
    the seed; with `evaluation.resample`, `limit` of them drawn by the data seed (only those are held)."""
    split, limit = spec.evaluation.split, spec.evaluation.limit
    if not spec.evaluation.resample or limit is None or limit >= task.sizes[split]:
        return task.examples(split, limit)
    return task.sample(split, limit, data_seed(spec))


def sequential_order(spec: ExperimentSpec, task: Task) -> list[Example]:
    """A sequential evaluation's examples: the fixed design's, in one random order (the data seed's)."""
    examples = list(evaluation_examples(spec, task))
    random.Random(data_seed(spec)).shuffle(examples)
    return examples


def decision_key(spec: ExperimentSpec, prompts: dict[str, PromptCandidate]) -> str:
    """What a sequential decision holds for: the spec version and each arm's prompt (by arm name)."""
    payload = {
        "version": spec.version.model_dump(mode="json"),
        "prompts": {arm: prompts[arm].digest for arm in sorted(prompts)},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _optimize(
    spec: ExperimentSpec,
    task: Task,
    run: StageRun,
    *,
    stage: str,
    optimizer: str,
    student: dspy.Module,
    role: str,
    reflection: str,
    parent: PromptCandidate | None,
    signal: SmallModelSignal | None = None,
) -> PromptCandidate:
    trainset, valset = optimizer_sets(spec, task)
    result = run_optimizer(
        optimizer,
        student,
        trainset,
        valset,
        task=task,
        task_lm=run.lm(role),
        prompt_lm=run.lm(reflection),
        meter=run.meter,
        seed=spec.seed,
        threads=run.threads(role),
        stage=stage,
        # Hardening changes the parent's instructions; its demos were chosen on the large model.
        keep_demos=parent is not None,
        progress=run.progress,
    )
    provenance = Provenance(
        stage=stage,
        optimizer=optimizer,
        model=spec.model(role).model,
        seed=spec.seed,
        spec_hash=spec.spec_hash,
        code_version=spec.version.code_version,
        parent=None if parent is None else parent.provenance.stage,
        start_val_score=result.start_val_score,
        val_score=result.val_score,
        stop_reason=result.stop_reason,
        unparseable_replies=result.unparseable_replies,
    )
    if signal is not None:
        replies = result.replies.get(signal.model)
        if replies is not None:
            signal = signal.model_copy(
                update={"replies": replies.replies, "unparseable": replies.unparseable}
            )
        reason = "; ".join(r for r in (signal.no_signal, provenance.stop_reason) if r) or None
        provenance = provenance.model_copy(update={"small_model_signal": signal, "stop_reason": reason})
    ledger = run.meter.ledger()
    simulated = spec.simulated or ledger.simulated
    candidate = capture(result.program, task, spec.experiment_id, provenance, ledger, simulated)
    if parent is None:
        return candidate
    unchanged = candidate.predictors == parent.predictors
    update: dict[str, Any] = {"unchanged": unchanged}
    if unchanged:
        # Never silent: a hardened prompt equal to its parent makes LSL the baseline by construction.
        why = provenance.stop_reason or "no proposal beat the starting prompt on the dev set"
        update["stop_reason"] = f"unchanged: {why}" + (f"; {result.activity}" if result.activity else "")
    return candidate.model_copy(update={"provenance": provenance.model_copy(update=update)})


def stage1_optimize(spec: ExperimentSpec, task: Task, run: StageRun) -> PromptCandidate:
    """Stage 1 — baseline optimization: the chosen optimizer tunes the task program on the large model."""
    return _optimize(
        spec,
        task,
        run,
        stage="stage1",
        optimizer=spec.stage1.optimizer,
        student=task.program(),
        role="large",
        reflection=spec.stage1.prompt_model,
        parent=None,
    )


def stage2_harden(
    spec: ExperimentSpec, task: Task, stage1: PromptCandidate, run: StageRun
) -> PromptCandidate:
    """Stage 2 — weak-agent hardening: starting from the Stage 1 program (instructions and demos), the
    small model runs it and `stage2.optimizer` changes the prompt from how it fares, with proposals from
    the `stage2.reflection` model:

    - gepa (default): rewrites each predictor's instructions from the small model's failures and the
      metric's feedback; Stage 1's demos are kept.
    - miprov2: proposes new instructions (Stage 1's are candidate 0 of each predictor) and searches them
      on the dev set; instructions only, so Stage 1's demos are kept (the demo sets it bootstraps with
      the small model only inform its proposals).
    - simba: appends rules (advice contrasting the small model's better and worse runs) to Stage 1's
      instructions, and by its own design may add demos from the small model's successful runs or drop
      some of Stage 1's. Its pick and the starting program are scored on the dev set; the better is kept.

    First the small model is probed on `stage2.probe_examples` dev examples (method.signal): with
    mostly unparseable replies or every score 0 there is nothing to optimize on, and the stage stops
    (NoSignal) or, with `stage2.on_no_signal: warn`, goes on with the reason in its stop_reason.
    """
    examples = list(task.sample("dev", spec.data.val, data_seed(spec)))[: spec.stage2.probe_examples]
    found = signal.probe(rebuild(stage1, task), task, examples, run)
    if found.no_signal and spec.stage2.on_no_signal == "stop":
        raise signal.NoSignal(found.no_signal)
    return _optimize(
        spec,
        task,
        run,
        stage="stage2",
        optimizer=spec.stage2.optimizer,
        student=rebuild(stage1, task),
        role="small",
        reflection=spec.stage2.reflection,
        parent=stage1,
        signal=found,
    )


def budget_matched_optimize(spec: ExperimentSpec, task: Task, run: StageRun) -> PromptCandidate:
    """FR-006 — the Stage 1 optimizer again on the large model, with the budget Stage 1 + Stage 2 used
    (`matched_budget`, the run's max_calls), so a gain of LSL cannot be just "more optimization"."""
    return _optimize(
        spec,
        task,
        run,
        stage="budget_matched",
        optimizer=spec.stage1.optimizer,
        student=task.program(),
        role="large",
        reflection=spec.stage1.prompt_model,
        parent=None,
    )


def small_optimize(spec: ExperimentSpec, task: Task, run: StageRun) -> PromptCandidate:
    """The small-optimized arm (GEPA's Table 2 setting): Stage 1's optimizer with Stage 1's budget, on the
    small model alone (it runs the program and writes the proposals); evaluated on the large model like
    every arm, it tells whether hardening adds anything over simply optimizing on the small model."""
    return _optimize(
        spec,
        task,
        run,
        stage=graph.SMALL_OPTIMIZED.stage,
        optimizer=spec.stage1.optimizer,
        student=task.program(),
        role="small",
        reflection="small",
        parent=None,
    )


def matched_budget(*prompts: PromptCandidate) -> int:
    """The calls the optimizations that made these prompts used."""
    return sum(prompt.ledger.budget_used for prompt in prompts)


def evaluate_on_large(
    spec: ExperimentSpec,
    task: Task,
    candidate: PromptCandidate,
    arm: str,
    run: StageRun,
    out: Path,
    decision: SequentialDecision | None = None,
) -> EvaluationResult:
    """Stage 3 and the baselines — a prompt on the large model, on the held-out split; every arm sees the
    same examples in the same order, so differences are paired. With a sequential `decision`, the prefix
    of the sequential order it stopped at (its requests replay from the cache)."""
    examples = (
        evaluation_examples(spec, task)
        if decision is None
        else sequential_order(spec, task)[: decision.examples]
    )
    run.progress.examples_total = evaluation_size(spec, task) if decision is None else decision.examples
    with dspy.context(lm=run.lm("large"), adapter=ModelAdapter()):
        totals = evaluate(
            rebuild(candidate, task),
            task,
            examples,
            threads=run.threads("large"),
            out=out,
            progress=run.progress,
        )
    ledger = run.meter.ledger()
    return EvaluationResult(
        experiment_id=spec.experiment_id,
        arm=arm,
        model=spec.large_model.model,
        split=spec.evaluation.split,
        n=totals.n,
        score=totals.score,
        n_errors=totals.n_errors,
        **totals.format_counts().model_dump(),
        predictions_path=str(out),
        ledger=ledger,
        simulated=spec.simulated or candidate.simulated or ledger.simulated,
        version=spec.version,
        prompt_digest=candidate.digest,
        sequential=decision,
    )
