"""The experiment, one function per stage. Dagster wiring lives in assets.py; this is the method."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import dspy

from lsl_dagster import graph
from lsl_dagster.llm.structured import ModelAdapter
from lsl_dagster.method import signal
from lsl_dagster.method.evaluation import evaluate, scores
from lsl_dagster.method.optimizers.run import run_optimizer
from lsl_dagster.method.prompts import capture, rebuild
from lsl_dagster.method.run import StageRun
from lsl_dagster.records import (
    ArmSummary,
    Comparison,
    EvaluationResult,
    FormatCounts,
    PairedDifference,
    PromptCandidate,
    Provenance,
    SmallModelSignal,
)
from lsl_dagster.results import stats
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
    spec: ExperimentSpec, task: Task, candidate: PromptCandidate, arm: str, run: StageRun, out: Path
) -> EvaluationResult:
    """Stage 3 and the baselines — a prompt on the large model, on the held-out split; every arm sees the
    same examples in the same order, so differences are paired."""
    run.progress.examples_total = evaluation_size(spec, task)
    with dspy.context(lm=run.lm("large"), adapter=ModelAdapter()):
        totals = evaluate(
            rebuild(candidate, task),
            task,
            evaluation_examples(spec, task),
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
    )


class InconsistentArms(ValueError):
    """The comparison's inputs were not all made from the current experiment spec and code."""


# Each stage asset and the stage assets it was made from (the asset graph, as far as consistency goes).
MADE_FROM = {asset: reads for asset, reads in graph.ALL_READS.items() if asset != graph.COMPARISON}
EVALUATED = {arm.evaluation: arm.prompt for arm in graph.ALL_ARMS}  # evaluation -> the prompt it scores


def check_consistent(
    spec: ExperimentSpec, prompts: dict[str, PromptCandidate], evaluations: dict[str, EvaluationResult]
) -> None:
    """Refuse to pair arms that were not all made from the current spec version (spec hash + code
    version), or an evaluation of a prompt other than the current one; name every asset to re-run."""
    current = spec.version
    problems: dict[str, str] = {}
    for name, prompt in prompts.items():
        if prompt.version != current:
            problems[name] = f"made from {prompt.version or 'an unrecorded version'}"
    for name, result in evaluations.items():
        if result.version != current:
            problems[name] = f"made from {result.version or 'an unrecorded version'}"
        elif result.prompt_digest != prompts[EVALUATED[name]].digest:
            problems[name] = f"evaluated another {EVALUATED[name]} than the current one"
    if not problems:
        return
    # Whatever was made from an asset that must be re-run must be re-run too (MADE_FROM is in order).
    rerun: list[str] = []
    for asset, upstream in MADE_FROM.items():
        if asset in problems or any(u in rerun for u in upstream):
            problems.setdefault(asset, "made from an asset that must be re-run")
            rerun.append(asset)
    lines = "\n".join(f"  - {asset}: {problems[asset]}" for asset in rerun)
    raise InconsistentArms(
        f"comparison of {spec.experiment_id} refuses to pair arms made from different versions of the "
        f"experiment (current: {current}):\n{lines}\n"
        f"Re-materialize {', '.join(rerun)} and then comparison (UI: Materialize stale; shell: dagster "
        f"asset materialize -m lsl_dagster.definitions --select '{','.join([*rerun, graph.COMPARISON])}' "
        f"--partition {spec.experiment_id})."
    )


def compare(
    spec: ExperimentSpec,
    prompts: dict[str, PromptCandidate],
    evaluations: dict[str, EvaluationResult],
    located: Callable[[str], str] = str,
) -> Comparison:
    """The consolidated result, from every prompt and evaluation of the experiment (graph.prompts_of and
    graph.arms_of its `arms:`) by asset key: each arm's score and optimization budget, every stage's usage,
    and the paired differences of graph.differences_of (LSL against both baselines, the two baselines, then
    each optional arm against every other) with a 95% bootstrap CI, a paired
    test (exact McNemar for binary metrics) and its Holm adjustment across them, which the verdict uses.
    Refuses (InconsistentArms) unless every input was made from the current spec version. `located` says
    where a stored predictions location is read from (Workspace.located)."""
    check_consistent(spec, prompts, evaluations)
    all_arms = graph.arms_of(spec.arms)
    by_arm = {arm.name: evaluations[arm.evaluation] for arm in all_arms}
    usage = {
        **{p.stage: prompts[p.asset].ledger for p in graph.prompts_of(spec.arms)},
        **{arm.evaluation: evaluations[arm.evaluation].ledger for arm in all_arms},
    }
    optimization_calls = {
        arm.name: matched_budget(*(prompts[p] for p in arm.optimized_by)) for arm in all_arms
    }
    per_example = {arm: scores(located(result.predictions_path)) for arm, result in by_arm.items()}
    arms = [
        ArmSummary(
            arm=arm,
            score=result.score,
            n=result.n,
            calls=result.ledger.calls,
            cost_usd=result.ledger.cost_usd,
            optimization_calls=optimization_calls[arm],
            predictions_path=result.predictions_path,
            **result.model_dump(include=set(FormatCounts.model_fields)),
        )
        for arm, result in by_arm.items()
    ]
    raw = []
    for arm, baseline in graph.differences_of(spec.arms):
        base, other = per_example[baseline], per_example[arm]
        if base.keys() != other.keys():
            raise ValueError(f"{arm} and {baseline} were evaluated on different examples; cannot pair them")
        # Paired over the examples both arms scored: a provider failure or a program error is no answer,
        # right or wrong.
        ids = sorted(i for i in base if base[i] is not None and other[i] is not None)
        a, b = [base[i] for i in ids], [other[i] for i in ids]
        diff, low, high = stats.paired_bootstrap_ci(a, b, seed=spec.seed)
        test, p = stats.paired_test(a, b)
        raw.append((arm, baseline, len(ids), len(base) - len(ids), diff, low, high, test, p))
    adjusted = stats.holm([p for *_, p in raw])
    differences = [
        PairedDifference(
            arm=arm,
            baseline=baseline,
            n=n,
            n_excluded=excluded,
            diff=diff,
            ci_low=low,
            ci_high=high,
            test=test,
            p_value=p,
            p_holm=p_holm,
            verdict=stats.verdict(diff, low, high, p_holm, label=arm, baseline=baseline)
            + stats.exclusion_note(n, excluded),
        )
        for (arm, baseline, n, excluded, diff, low, high, test, p), p_holm in zip(raw, adjusted, strict=True)
    ]
    inputs = [*prompts.values(), *evaluations.values()]
    stage2 = prompts[graph.STAGE2.asset]
    return Comparison(
        experiment_id=spec.experiment_id,
        task=spec.task,
        large_model=spec.large_model.model,
        small_model=spec.small_model.model,
        arms=arms,
        differences=differences,
        usage=usage,
        simulated=spec.simulated or any(i.simulated for i in inputs),
        version=spec.version,
        stage2_unchanged=stage2.provenance.stop_reason if stage2.provenance.unchanged else None,
        stage2_signal=stage2.provenance.small_model_signal,
        stage2_start_val_score=stage2.provenance.start_val_score,
        stage2_val_score=stage2.provenance.val_score,
    )
