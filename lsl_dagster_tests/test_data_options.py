"""Data options of an experiment and a task: the test examples fixed or resampled by the data seed, and
a Hugging Face dataset named for `datasets.load_dataset`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lsl_dagster.method.stages import evaluation_examples
from lsl_dagster.spec.experiment import ExperimentSpec
from lsl_dagster.tasks.task import SPLITS, TaskDataError, load_task
from lsl_dagster_tests.conftest import FAST, PROJECT, Lab
from lsl_dagster_tests.test_pipeline import _checks
from lsl_dagster_tests.test_tasks import SPLIT_OF, examples, make_task


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

    # The leakage check compares demos with the examples drawn, not with the split's first `limit`.
    drawn = next(e for e in task.examples("test") if e.id in set(expected) - {f"test-{i}" for i in range(20)})
    prompt_path = lab.runs_dir / "resampled" / "stage1_prompt.json"
    prompt = json.loads(prompt_path.read_text())
    prompt["predictors"]["predict"]["demos"].append({**drawn.inputs, **drawn.labels, "example_id": "train-x"})
    prompt_path.write_text(json.dumps(prompt))
    failed = {check for check, passed in _checks(lab, "resampled").items() if not passed}
    assert failed == {"stage1_prompt:no_test_leakage"}


HUB = {
    "train": "train",
    "dev": "validation",
    "test": "test",
    "id": "key",
    "columns": {"question": "q", "answer": "a"},
}


def test_a_dataset_load_dataset_reads_gives_the_same_examples_as_its_files(tmp_path: Path):
    directory = make_task(tmp_path)  # train.csv, dev.csv and test.csv
    expected = {split: examples(load_task("qa", tmp_path), split) for split in SPLITS}
    # A packaged builder over the task's files, by split name.
    files = {"train": "train.csv", "validation": "dev.csv", "test": "test.csv"}
    make_task(tmp_path, write_data=False, data={**HUB, "hub": {"path": "csv", "data_files": files}})
    assert {split: examples(load_task("qa", tmp_path), split) for split in SPLITS} == expected
    # A dataset directory (what a Hub dataset's repository looks like), with split expressions.
    (directory / "hub").mkdir()
    for name, file in files.items():
        (directory / "hub" / f"{name}.csv").write_text((directory / file).read_text())
    make_task(tmp_path, write_data=False, data={**HUB, "test": "test[:2]", "hub": {"path": "hub"}})
    task = load_task("qa", tmp_path)
    assert examples(task, "train") == expected["train"] and examples(task, "dev") == expected["dev"]
    assert examples(task, "test") == expected["test"][:2] and len(SPLIT_OF["test"]) > 2
    # Malformed rows name the dataset, the split and the row.
    (directory / "hub" / "validation.csv").write_text("key,q,a\nd1,fine,1\nd2,,2\n")
    with pytest.raises(TaskDataError, match=r"hub\[validation\] row 2: field 'q' must be a string"):
        load_task("qa", tmp_path)


def test_an_unreachable_hub_dataset_is_a_clear_error_naming_it(tmp_path: Path):
    make_task(tmp_path, data={**HUB, "hub": {"path": "someorg/some_qa", "name": "distractor"}})
    # As on a machine without the network (this one has none to the Hub either): datasets' offline mode.
    load = "import sys, pathlib, lsl_dagster.tasks.task as t; t.load_task('qa', pathlib.Path(sys.argv[1]))"
    done = subprocess.run(
        [sys.executable, "-c", load, str(tmp_path)],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith(
        "lsl_dagster.tasks.TaskDataError: Hugging Face dataset 'someorg/some_qa', config "
    )
    assert "'distractor', split 'train': the Hugging Face Hub could not be reached" in error
    assert "offline" in error and "HF_HUB_OFFLINE" in error
    assert ".save_to_disk(" in error and "load_from_disk" in error
