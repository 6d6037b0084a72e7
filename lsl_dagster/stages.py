"""The experiment, one function per stage. Dagster wiring lives in assets.py; this is the method."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dspy

from lsl_dagster import stats
from lsl_dagster.evaluation import evaluate, scores
from lsl_dagster.models import (
    ArmSummary,
    Comparison,
    EvaluationResult,
    ExperimentSpec,
    FormatCounts,
    PairedDifference,
    PromptCandidate,
    Provenance,
)
from lsl_dagster.optimizers import run_optimizer
from lsl_dagster.program import capture, rebuild
from lsl_dagster.tasks import Task, to_dspy
from lsl_dagster.workspace import StageRun


def optimizer_sets(spec: ExperimentSpec, task: Task) -> tuple[list[dspy.Example], list[dspy.Example]]:
    """Optimizers train on the train split and validate on the dev split; the test split is never seen.
    Which train and dev examples is drawn by the experiment's seed, so that variance across seeds includes
    the data's."""
    seed = spec.seed if spec.data.seed is None else spec.data.seed
    train = [to_dspy(e, task) for e in task.sample("train", spec.data.train, seed)]
    val = [to_dspy(e, task) for e in task.sample("dev", spec.data.val, seed)]
    return train, val


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
    )
    provenance = Provenance(
        stage=stage,
        optimizer=optimizer,
        model=spec.model(role).model,
        seed=spec.seed,
        spec_hash=spec.spec_hash,
        parent=None if parent is None else parent.provenance.stage,
        start_val_score=result.start_val_score,
        val_score=result.val_score,
        stop_reason=result.stop_reason,
        unparseable_replies=result.unparseable_replies,
    )
    ledger = run.meter.ledger()
    candidate = capture(result.program, task, spec.experiment_id, provenance, ledger, spec.simulated)
    if parent is None:
        return candidate
    unchanged = candidate.predictors == parent.predictors
    update: dict[str, Any] = {"unchanged": unchanged}
    if unchanged:
        # Never silent: a hardened prompt equal to its parent makes LSL the baseline by construction.
        why = result.stop_reason or "no proposal beat the starting prompt on the dev set"
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
    """Stage 2 — weak-agent hardening: GEPA, seeded with the Stage 1 prompt (its demos kept), lets the
    small model run the program and rewrites the instructions from its failures."""
    return _optimize(
        spec,
        task,
        run,
        stage="stage2",
        optimizer="gepa",
        student=rebuild(stage1, task),
        role="small",
        reflection=spec.stage2.reflection,
        parent=stage1,
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


def matched_budget(stage1: PromptCandidate, stage2: PromptCandidate) -> int:
    return stage1.ledger.budget_used + stage2.ledger.budget_used


def evaluate_on_large(
    spec: ExperimentSpec, task: Task, candidate: PromptCandidate, arm: str, run: StageRun, out: Path
) -> EvaluationResult:
    """Stage 3 and the baselines — a prompt on the large model, on the held-out split; every arm sees the
    same examples in the same order, so differences are paired."""
    with dspy.context(lm=run.lm("large")):
        totals = evaluate(
            rebuild(candidate, task),
            task,
            task.examples(spec.evaluation.split, spec.evaluation.limit),
            threads=run.threads("large"),
            out=out,
        )
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
        ledger=run.meter.ledger(),
        simulated=spec.simulated,
    )


def compare(
    spec: ExperimentSpec,
    *,
    stage1: PromptCandidate,
    stage2: PromptCandidate,
    budget_matched: PromptCandidate,
    baseline_evaluation: EvaluationResult,
    stage3_evaluation: EvaluationResult,
    budget_matched_evaluation: EvaluationResult,
) -> Comparison:
    """The consolidated result: each arm's score and optimization budget, every stage's usage, and paired
    differences with a 95% bootstrap CI and an exact McNemar p-value (binary metrics), LSL against both
    baselines."""
    evaluations = {
        "baseline": baseline_evaluation,
        "lsl": stage3_evaluation,
        "budget_matched": budget_matched_evaluation,
    }
    usage = {
        "stage1": stage1.ledger,
        "stage2": stage2.ledger,
        "budget_matched": budget_matched.ledger,
        "baseline_evaluation": baseline_evaluation.ledger,
        "stage3_evaluation": stage3_evaluation.ledger,
        "budget_matched_evaluation": budget_matched_evaluation.ledger,
    }
    optimization_calls = {
        "baseline": stage1.ledger.budget_used,
        "lsl": matched_budget(stage1, stage2),
        "budget_matched": budget_matched.ledger.budget_used,
    }
    per_example = {arm: scores(Path(result.predictions_path)) for arm, result in evaluations.items()}
    arms = [
        ArmSummary(
            arm=arm,
            score=result.score,
            n=result.n,
            calls=result.ledger.calls,
            cost_usd=result.ledger.cost_usd,
            optimization_calls=optimization_calls.get(arm),
            **result.model_dump(include=set(FormatCounts.model_fields)),
        )
        for arm, result in evaluations.items()
    ]
    differences = []
    for arm, baseline in (("lsl", "baseline"), ("budget_matched", "baseline"), ("lsl", "budget_matched")):
        base, other = per_example[baseline], per_example[arm]
        if base.keys() != other.keys():
            raise ValueError(f"{arm} and {baseline} were evaluated on different examples; cannot pair them")
        # Paired over the examples both arms scored: a provider failure is no answer, right or wrong.
        ids = sorted(i for i in base if base[i] is not None and other[i] is not None)
        a, b = [base[i] for i in ids], [other[i] for i in ids]
        diff, low, high = stats.paired_bootstrap_ci(a, b, seed=spec.seed)
        p = (
            stats.mcnemar_exact_p([x == 1 for x in a], [x == 1 for x in b])
            if stats.is_binary(a + b)
            else None
        )
        differences.append(
            PairedDifference(
                arm=arm,
                baseline=baseline,
                n=len(ids),
                diff=diff,
                ci_low=low,
                ci_high=high,
                mcnemar_p=p,
                verdict=stats.verdict(diff, low, high, p, label=arm, baseline=baseline),
            )
        )
    return Comparison(
        experiment_id=spec.experiment_id,
        task=spec.task,
        large_model=spec.large_model.model,
        small_model=spec.small_model.model,
        arms=arms,
        differences=differences,
        usage=usage,
        simulated=spec.simulated,
        stage2_unchanged=stage2.provenance.stop_reason if stage2.provenance.unchanged else None,
    )
