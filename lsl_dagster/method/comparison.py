"""The comparison stage: every arm's score and the paired differences between them, from every prompt and
evaluation of an experiment."""

from __future__ import annotations

from collections.abc import Callable

from lsl_dagster import graph
from lsl_dagster.method.evaluation import scores
from lsl_dagster.method.stages import decision_key, matched_budget
from lsl_dagster.records import (
    ArmSummary,
    Comparison,
    EvaluationResult,
    FormatCounts,
    PairedDifference,
    PromptCandidate,
    SequentialDecision,
)
from lsl_dagster.results import stats
from lsl_dagster.spec.experiment import ExperimentSpec


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
    decision = _decision(spec, prompts, evaluations)
    if decision is None:
        adjusted = stats.holm([p for *_, p in raw])
        tested = [
            (low, high, test, p, p_holm, stats.verdict(diff, low, high, p_holm, label=arm, baseline=baseline))
            for (arm, baseline, _, _, diff, low, high, test, p), p_holm in zip(raw, adjusted, strict=True)
        ]
    else:
        # A sequential evaluation's intervals are its confidence sequences where the rounds stopped: valid
        # at a data-dependent stop, unlike a fixed-n test's p-value (so there is none).
        sequences = {(s.arm, s.baseline): s for s in decision.sequences}
        tested = [
            (s.lower, s.upper, "confidence_sequence", None, None, stats.sequential_verdict(s, decision))
            for s in (sequences[arm, baseline] for arm, baseline, *_ in raw)
        ]
        # The rounds paid for every arm's examples; the evaluations replayed theirs.
        usage = {**usage, graph.ROUNDS: decision.ledger}
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
            verdict=verdict + stats.exclusion_note(n, excluded),
        )
        for (arm, baseline, n, excluded, diff, *_), (low, high, test, p, p_holm, verdict) in zip(
            raw, tested, strict=True
        )
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
        sequential=decision,
    )


def _decision(
    spec: ExperimentSpec, prompts: dict[str, PromptCandidate], evaluations: dict[str, EvaluationResult]
) -> SequentialDecision | None:
    """The sequential decision every evaluation used, which must be the one for the current prompts."""
    if spec.evaluation.sequential is None:
        return None
    arms = graph.arms_of(spec.arms)
    key = decision_key(spec, {arm.name: prompts[arm.prompt] for arm in arms})
    stale = [
        arm.evaluation
        for arm in arms
        if (d := evaluations[arm.evaluation].sequential) is None or d.key != key
    ]
    if stale:
        raise InconsistentArms(
            f"comparison of {spec.experiment_id}: {', '.join(stale)} did not use the sequential decision for "
            "the current prompts (made before evaluation.sequential was set, or for other prompts). "
            f"Re-materialize them and then comparison (shell: dagster asset materialize -m "
            f"lsl_dagster.definitions --select '{','.join([*stale, graph.COMPARISON])}' --partition "
            f"{spec.experiment_id})."
        )
    return evaluations[arms[0].evaluation].sequential
