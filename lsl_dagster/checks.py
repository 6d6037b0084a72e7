"""Asset checks a researcher wants green before trusting an experiment's numbers."""

import json

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    PartitionsDefinition,
    asset_check,
)

from lsl_dagster import storage
from lsl_dagster.models import Comparison, EvaluationResult, PromptCandidate
from lsl_dagster.workspace import Workspace

EVALUATIONS = ("baseline_evaluation", "stage3_evaluation", "budget_matched_evaluation")
PROMPTS = ("stage1_prompt", "stage2_hardened_prompt", "budget_matched_prompt")


def _rows(workspace: Workspace, result: EvaluationResult) -> list[dict]:
    return [json.loads(line) for line in storage.read_lines(workspace.located(result.predictions_path))]


def _evaluation_checks(asset: str, partitions: PartitionsDefinition) -> list[AssetChecksDefinition]:
    @asset_check(asset=asset, name="all_examples_evaluated", partitions_def=partitions)
    def all_examples_evaluated(
        context: AssetCheckExecutionContext, workspace: Workspace, result: EvaluationResult
    ) -> AssetCheckResult:
        """Every example the experiment asked for has exactly one row, in order; none silently dropped
        (failed examples are rows with an error and score 0)."""
        spec = workspace.experiment(context.partition_key)
        task = workspace.task(spec.task)
        expected = [e.id for e in task.examples(spec.evaluation.split, spec.evaluation.limit)]
        got = [row["example_id"] for row in _rows(workspace, result)]
        return AssetCheckResult(
            passed=got == expected and result.n == len(expected),
            metadata={
                "expected": len(expected),
                "rows": len(got),
                "missing": len(set(expected) - set(got)),
                "unexpected_or_repeated": len(got) - len(set(got) & set(expected)),
                "errors": result.n_errors,
            },
        )

    @asset_check(asset=asset, name="scores_in_range", partitions_def=partitions)
    def scores_in_range(workspace: Workspace, result: EvaluationResult) -> AssetCheckResult:
        """Every per-example score is in [0, 1] and the reported score is their mean."""
        scores = [row["score"] for row in _rows(workspace, result)]
        in_range = all(0.0 <= s <= 1.0 for s in scores)
        mean = sum(scores) / len(scores) if scores else float("nan")
        return AssetCheckResult(
            passed=in_range and abs(mean - result.score) < 1e-9,
            metadata={"out_of_range": sum(not 0.0 <= s <= 1.0 for s in scores), "mean_of_rows": mean},
        )

    return [all_examples_evaluated, scores_in_range]


def _prompt_checks(asset: str, partitions: PartitionsDefinition) -> list[AssetChecksDefinition]:
    @asset_check(asset=asset, name="no_test_leakage", partitions_def=partitions)
    def no_test_leakage(
        context: AssetCheckExecutionContext, workspace: Workspace, candidate: PromptCandidate
    ) -> AssetCheckResult:
        """No few-shot demo is an evaluation example (compared by input content, not by id)."""
        spec = workspace.experiment(context.partition_key)
        task = workspace.task(spec.task)
        fields = task.input_fields
        held_out = {
            tuple(e.inputs[f] for f in fields)
            for e in task.examples(spec.evaluation.split, spec.evaluation.limit)
        }
        demos = [d for p in candidate.predictors.values() for d in p.demos]
        leaked = [d.get("example_id", "?") for d in demos if tuple(str(d.get(f)) for f in fields) in held_out]
        return AssetCheckResult(
            passed=not leaked, metadata={"demos": len(demos), "leaked": ", ".join(leaked)}
        )

    @asset_check(asset=asset, name="within_call_budget", partitions_def=partitions)
    def within_call_budget(candidate: PromptCandidate) -> AssetCheckResult:
        """The stage used no more calls than its max_calls."""
        ledger = candidate.ledger
        return AssetCheckResult(
            passed=ledger.max_calls is None or ledger.budget_used <= ledger.max_calls,
            metadata={"budget_used": ledger.budget_used, "max_calls": ledger.max_calls or -1},
        )

    return [no_test_leakage, within_call_budget]


def build_checks(partitions: PartitionsDefinition) -> list[AssetChecksDefinition]:
    @asset_check(asset="comparison", name="within_cost_budget", partitions_def=partitions)
    def within_cost_budget(
        context: AssetCheckExecutionContext, workspace: Workspace, comparison: Comparison
    ) -> AssetCheckResult:
        """All stages together spent no more than the experiment's max_cost_usd."""
        cap = workspace.experiment(context.partition_key).max_cost_usd
        costs = [ledger.cost_usd for ledger in comparison.usage.values()]
        known = None not in costs
        total = sum(c for c in costs if c is not None)
        return AssetCheckResult(
            passed=cap is None or (known and total <= cap),
            metadata={
                "total_cost_usd": total,
                "max_cost_usd": cap if cap is not None else -1.0,
                "all_priced": known,
            },
        )

    checks = [within_cost_budget]
    for asset in EVALUATIONS:
        checks += _evaluation_checks(asset, partitions)
    for asset in PROMPTS:
        checks += _prompt_checks(asset, partitions)
    return checks
