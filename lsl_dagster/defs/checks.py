"""Asset checks a researcher wants green before trusting an experiment's numbers.

All of an experiment's checks run in one step after its assets (`@multi_asset_check`): every step writes
its own events to the instance's event log, and 13 steps cost more than the checks themselves. Each
check still shows on its own asset, and any subset of them (one check, all of them: the UI's "Execute
checks") runs on the stored outputs without materializing anything.
"""

import json
from collections.abc import Callable, Iterator
from typing import Any

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckKey,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSpec,
    AssetKey,
    PartitionsDefinition,
    ResourceParam,
    multi_asset_check,
)
from pydantic import BaseModel

from lsl_dagster import graph
from lsl_dagster.defs.io_managers import PydanticJsonIOManager
from lsl_dagster.defs.resources import Workspace
from lsl_dagster.method.stages import evaluation_examples, sequential_order
from lsl_dagster.records import Comparison, EvaluationResult, PromptCandidate
from lsl_dagster.spec.experiment import ExperimentSpec
from lsl_dagster.storage import outputs as storage
from lsl_dagster.tasks.task import Example, Task

Verdict = tuple[bool, dict[str, Any]]  # passed, and what the check saw


class Checked:
    """What the checks of one experiment read: its spec, task and stored outputs, each loaded once."""

    def __init__(self, workspace: Workspace, outputs: PydanticJsonIOManager, experiment_id: str) -> None:
        self.workspace, self.outputs, self.experiment_id = workspace, outputs, experiment_id
        self.spec: ExperimentSpec = workspace.experiment(experiment_id)
        self._task: Task | None = None
        self._held_out: list[Example] | None = None
        self._rows: dict[str, list[dict]] = {}

    @property
    def task(self) -> Task:
        if self._task is None:
            self._task = self.workspace.task(self.spec.task)
        return self._task

    def held_out(self) -> list[Example]:
        """The examples the evaluations are over."""
        if self._held_out is None:
            self._held_out = list(evaluation_examples(self.spec, self.task))
        return self._held_out

    def sequential(self) -> list[Example]:
        """The same examples in a sequential evaluation's order."""
        return sequential_order(self.spec, self.task)

    def output(self, asset: str, model: type[BaseModel]) -> BaseModel:
        return self.outputs.load(AssetKey(asset), self.experiment_id, model)

    def rows(self, result: EvaluationResult) -> list[dict]:
        """The evaluation's prediction rows (a file, or an object under LSL_OUTPUTS_URL), read once for all
        the checks on it."""
        stored = result.predictions_path
        if stored not in self._rows:
            lines = storage.read_lines(self.workspace.located(stored))
            self._rows[stored] = [json.loads(line) for line in lines]
        return self._rows[stored]


def all_examples_evaluated(checked: Checked, result: EvaluationResult) -> Verdict:
    """Every example the experiment asked for has exactly one row, in order; none silently dropped
    (failed examples are rows with an error and score 0)."""
    # A sequential evaluation's are the prefix of the sequential order its decision stopped at.
    decision = result.sequential
    held_out = checked.held_out() if decision is None else checked.sequential()[: decision.examples]
    expected = [e.id for e in held_out]
    got = [row["example_id"] for row in checked.rows(result)]
    return got == expected and result.n == len(expected), {
        "expected": len(expected),
        "rows": len(got),
        "missing": len(set(expected) - set(got)),
        "unexpected_or_repeated": len(got) - len(set(got) & set(expected)),
        "errors": result.n_errors,
    }


def scores_in_range(checked: Checked, result: EvaluationResult) -> Verdict:
    """Every per-example score is in [0, 1] and the reported score is their mean (rows not scored, a
    provider failure or a program error, have none)."""
    scores = [row["score"] for row in checked.rows(result) if row["score"] is not None]
    in_range = all(0.0 <= s <= 1.0 for s in scores)
    mean = sum(scores) / len(scores) if scores else float("nan")
    return in_range and abs(mean - result.score) < 1e-9, {
        "out_of_range": sum(not 0.0 <= s <= 1.0 for s in scores),
        "mean_of_rows": mean,
    }


def no_test_leakage(checked: Checked, candidate: PromptCandidate) -> Verdict:
    """No few-shot demo is an example the arms are evaluated on (compared by input content, not by id)."""
    fields = checked.task.input_fields
    held_out = {tuple(e.inputs[f] for f in fields) for e in checked.held_out()}
    demos = [d for p in candidate.predictors.values() for d in p.demos]
    leaked = [d.get("example_id", "?") for d in demos if tuple(str(d.get(f)) for f in fields) in held_out]
    return not leaked, {"demos": len(demos), "leaked": ", ".join(leaked)}


def within_call_budget(checked: Checked, candidate: PromptCandidate) -> Verdict:
    """The stage used no more calls than its max_calls."""
    ledger = candidate.ledger
    passed = ledger.max_calls is None or ledger.budget_used <= ledger.max_calls
    return passed, {"budget_used": ledger.budget_used, "max_calls": ledger.max_calls or -1}


def within_cost_budget(checked: Checked, comparison: Comparison) -> Verdict:
    """All stages together spent no more than the experiment's max_cost_usd."""
    cap = checked.spec.max_cost_usd
    costs = [ledger.cost_usd for ledger in comparison.usage.values()]
    known = None not in costs
    total = sum(c for c in costs if c is not None)
    passed = cap is None or (known and total <= cap)
    return passed, {
        "total_cost_usd": total,
        "max_cost_usd": cap if cap is not None else -1.0,
        "all_priced": known,
    }


Check = Callable[[Checked, Any], Verdict]
# asset -> (the model its output is, the checks on it)
CHECKS: dict[str, tuple[type[BaseModel], list[Check]]] = {
    **{
        asset: (EvaluationResult, [all_examples_evaluated, scores_in_range])
        for asset in graph.ALL_EVALUATIONS
    },
    **{p.asset: (PromptCandidate, [no_test_leakage, within_call_budget]) for p in graph.ALL_PROMPTS},
    graph.COMPARISON: (Comparison, [within_cost_budget]),
}


def build_checks(partitions: PartitionsDefinition) -> list[AssetChecksDefinition]:
    specs = [
        AssetCheckSpec(check.__name__, asset=asset, description=check.__doc__, partitions_def=partitions)
        for asset, (_, checks) in CHECKS.items()
        for check in checks
    ]

    # The assets are dependencies, not inputs: a run of some stages checks just those (can_subset), and
    # each check loads only the output it reads.
    @multi_asset_check(specs=specs, can_subset=True, name="experiment_checks")
    def experiment_checks(
        context: AssetCheckExecutionContext,
        workspace: Workspace,
        io_manager: ResourceParam[PydanticJsonIOManager],
    ) -> Iterator[AssetCheckResult]:
        checked = Checked(workspace, io_manager, context.partition_key)
        selected = context.selected_asset_check_keys
        # An optional arm's assets are checked only for the experiments listing it (the others have none).
        own = set(graph.stages_of(checked.spec.arms))
        for asset, (model, checks) in CHECKS.items():
            if asset not in own:
                continue
            wanted = [c for c in checks if AssetCheckKey(AssetKey(asset), c.__name__) in selected]
            if wanted:
                value = checked.output(asset, model)
                for check in wanted:
                    passed, metadata = check(checked, value)
                    yield AssetCheckResult(
                        asset_key=asset, check_name=check.__name__, passed=passed, metadata=metadata
                    )

    return [experiment_checks]
