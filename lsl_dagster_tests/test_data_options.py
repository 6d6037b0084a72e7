"""Data options of an experiment and a task: the test examples fixed or resampled by the data seed."""

import json

from lsl_dagster.models import ExperimentSpec
from lsl_dagster.stages import evaluation_examples
from lsl_dagster.tasks import SPLITS, load_task
from lsl_dagster_tests.conftest import FAST, PROJECT, Lab


def _spec(**overrides) -> ExperimentSpec:
    return ExperimentSpec.model_validate({"experiment_id": "x", **FAST, **overrides})


def test_the_test_examples_are_fixed_unless_the_experiment_resamples_them():
    task = load_task("hop_qa", PROJECT / "data" / "tasks")
    ids = {split: {e.id for e in task.examples(split)} for split in SPLITS}
    limit = 30
    assert task.sizes["test"] > limit

    def evaluated(**overrides) -> list[str]:
        return [e.id for e in evaluation_examples(_spec(task="hop_qa", **overrides), task)]

    fixed = [e.id for e in task.examples("test", limit)]
    # By default every seed (experiment or data) evaluates the same first `limit` test examples.
    for seed, data_seed in [(0, None), (1, None), (0, 7)]:
        assert evaluated(seed=seed, data={"seed": data_seed}, evaluation={"limit": limit}) == fixed
    # resample: the data seed draws them, always from the test split only.
    drawn = {seed: evaluated(seed=seed, evaluation={"limit": limit, "resample": True}) for seed in (0, 1, 2)}
    for sample in drawn.values():
        assert len(sample) == len(set(sample)) == limit
        assert set(sample) <= ids["test"] and not set(sample) & (ids["train"] | ids["dev"])
    assert drawn[0] != drawn[1] != drawn[2] != drawn[0]
    assert set(drawn[1]) != set(fixed)
    # The same seed draws the same examples; data.seed overrides the experiment's seed.
    again = evaluated(seed=5, data={"seed": 1}, evaluation={"limit": limit, "resample": True})
    assert again == drawn[1]
    # Asking for the whole split evaluates all of it, in file order.
    whole = evaluated(evaluation={"limit": None, "resample": True})
    assert whole == [e.id for e in task.examples("test")]


def test_a_resampled_test_set_is_what_every_arm_is_evaluated_on(lab: Lab):
    lab.write("resampled", seed=3, evaluation={"limit": 20, "resample": True})
    result = lab.run("resampled")
    assert result.success
    task = load_task("arithmetic", lab.data_dir / "tasks")
    expected = [
        e.id for e in evaluation_examples(_spec(seed=3, evaluation={"limit": 20, "resample": True}), task)
    ]
    assert expected != [f"test-{i}" for i in range(20)]  # not the fixed first 20
    for arm in ("baseline_evaluation", "stage3_evaluation", "budget_matched_evaluation"):
        path = lab.runs_dir / lab.output("resampled", arm)["predictions_path"]
        assert [json.loads(line)["example_id"] for line in path.read_text().splitlines()] == expected
    checks = {(e.asset_key.path[-1], e.check_name): e.passed for e in result.get_asset_check_evaluations()}
    assert checks[("stage3_evaluation", "all_examples_evaluated")] is True
    assert checks[("stage2_hardened_prompt", "no_test_leakage")] is True
    assert len(checks) > 10 and all(checks.values())
