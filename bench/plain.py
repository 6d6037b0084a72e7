"""The experiment without Dagster: the same stage functions, in the asset graph's order, one after another.

    LSL_DATA_DIR=... LSL_RUNS_DIR=... python bench/plain.py EXPERIMENT_ID [...] [--campaign NAME]

What a researcher would write by hand around `lsl_dagster.method.stages`: each stage inside `Workspace.stage`
(budgets, call log, cache), outputs saved as JSON. Used by overhead.py as the baseline; prints one JSON
line of timings.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time

START = time.perf_counter()

from pathlib import Path  # noqa: E402  (imports are part of what is timed)

from lsl_dagster.defs.resources import Workspace  # noqa: E402
from lsl_dagster.llm.language_models import LanguageModels  # noqa: E402
from lsl_dagster.method import comparison, stages  # noqa: E402
from lsl_dagster.records import Comparison, EvaluationResult, PromptCandidate  # noqa: E402


def run_experiment(workspace: Workspace, models: LanguageModels, experiment_id: str) -> Comparison:
    spec = workspace.experiment(experiment_id)
    task = workspace.task(spec.task)
    run_dir = workspace.run_dir(experiment_id)

    def save(name: str, value: PromptCandidate | EvaluationResult | Comparison) -> None:
        (run_dir / f"{name}.json").write_text(value.model_dump_json(indent=2))

    def optimize(name: str, max_calls: int, step, *upstream: PromptCandidate) -> PromptCandidate:
        with workspace.stage(spec, name, models, max_calls) as run:
            candidate = step(spec, task, *upstream, run)
        save(name, candidate)
        return candidate

    def evaluate(name: str, arm: str, candidate: PromptCandidate) -> EvaluationResult:
        with workspace.stage(spec, name, models, None) as run:
            out = run_dir / "predictions" / f"{arm}.jsonl"
            result = stages.evaluate_on_large(spec, task, candidate, arm, run, out)
        save(name, result)
        return result

    # The order the in-process Dagster executor runs the steps in.
    stage1 = optimize("stage1", spec.stage1.max_calls, stages.stage1_optimize)
    baseline = evaluate("baseline_evaluation", "baseline", stage1)
    stage2 = optimize("stage2", spec.stage2.max_calls, stages.stage2_harden, stage1)
    matched = optimize(
        "budget_matched", stages.matched_budget(stage1, stage2), stages.budget_matched_optimize
    )
    lsl = evaluate("stage3_evaluation", "lsl", stage2)
    matched_eval = evaluate("budget_matched_evaluation", "budget_matched", matched)
    result_of = comparison.compare(
        spec,
        {"stage1_prompt": stage1, "stage2_hardened_prompt": stage2, "budget_matched_prompt": matched},
        {
            "baseline_evaluation": baseline,
            "stage3_evaluation": lsl,
            "budget_matched_evaluation": matched_eval,
        },
    )
    save("comparison", result_of)
    return result_of


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("experiments", nargs="+")
    parser.add_argument(
        "--campaign", help="also summarize these experiments as this campaign (with its plot)"
    )
    args = parser.parse_args()
    data_dir = Path(os.environ["LSL_DATA_DIR"])
    workspace = Workspace(data_dir=str(data_dir), runs_dir=os.environ["LSL_RUNS_DIR"])
    models = LanguageModels()
    # As the code location does once loaded (lsl_dagster/definitions.py): what is imported lives as long
    # as the process, frozen out of the garbage collector's full scans; both sides run the same way.
    gc.freeze()
    imported = time.perf_counter()
    per_experiment = []
    comparisons = {}
    for experiment_id in args.experiments:
        began = time.perf_counter()
        comparisons[experiment_id] = run_experiment(workspace, models, experiment_id)
        per_experiment.append(time.perf_counter() - began)
    if args.campaign:
        from lsl_dagster.results.plots import campaign_figure
        from lsl_dagster.results.summary import example_scores, summarize

        plot = workspace.run_dir(args.campaign) / "campaign_summary.png"
        plot.parent.mkdir(parents=True, exist_ok=True)
        scores = example_scores(comparisons, workspace.located)
        campaign_figure(summarize(args.campaign, comparisons, scores, str(plot)), plot)
    print(
        json.dumps(
            {
                "imports_s": imported - START,
                "per_experiment_s": per_experiment,
                "total_s": time.perf_counter() - START,
            }
        )
    )


if __name__ == "__main__":
    main()
