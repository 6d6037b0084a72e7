"""The benchmark tasks (HotpotQA distractor, GSM8K, AIME, IFEval) by Hugging Face dataset name: read from a
`save_to_disk` copy in each dataset's own schema, run end to end on the sim models, their metrics and
feedback on hand-worked examples, and GEPA's model pair planned at OpenRouter's prices."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dspy
import pytest

from lsl_dagster.records import Comparison
from lsl_dagster.spec.experiment_files import campaigns
from lsl_dagster.tasks.task import load_task
from lsl_dagster_tests.benchmark_fixtures import HUB_PATHS, save_copy
from lsl_dagster_tests.conftest import PROJECT, Lab

BENCHMARKS = sorted(HUB_PATHS)
# Calls per program run: hotpotqa two queries and an answer, ifeval a draft and its rewrite.
CALLS_PER_RUN = {"hotpotqa": 3, "gsm8k": 1, "aime": 1, "ifeval": 2}
LIMIT = 4


@pytest.mark.parametrize("name", BENCHMARKS)
def test_each_benchmark_runs_end_to_end_on_a_saved_copy_of_its_dataset(lab: Lab, name: str):
    task_dir = lab.data_dir / "tasks" / name
    before = {p.name: p.read_bytes() for p in task_dir.iterdir() if p.is_file()}
    save_copy(task_dir)
    lab.write(
        f"{name}-1",
        task=name,
        stage1={"max_calls": 60},
        stage2={"max_calls": 40},
        data={"train": 3, "val": 3},
        evaluation={"limit": LIMIT},
    )
    assert lab.run(f"{name}-1").success
    # The shipped task file and program ran unchanged.
    assert {p.name: p.read_bytes() for p in task_dir.iterdir() if p.is_file()} == before
    task = load_task(name, lab.data_dir / "tasks")
    comparison = Comparison.model_validate(lab.output(f"{name}-1", "comparison"))
    assert comparison.simulated
    assert {a.arm: a.n for a in comparison.arms} == {"baseline": LIMIT, "lsl": LIMIT, "budget_matched": LIMIT}
    assert all(0.0 <= a.score <= 1.0 for a in comparison.arms)
    stage3 = lab.output(f"{name}-1", "stage3_evaluation")
    rows = [json.loads(line) for line in lab.read(stage3["predictions_path"]).splitlines()]
    assert [r["example_id"] for r in rows] == [e.id for e in task.examples("test", LIMIT)]
    assert all(set(r["prediction"]) == set(task.prediction_fields) for r in rows)
    assert all(r["score"] is None or 0.0 <= r["score"] <= 1.0 for r in rows)
    by_model = stage3["ledger"]["by_model"]
    assert sum(u["calls"] + u["cache_hits"] for u in by_model.values()) == CALLS_PER_RUN[name] * LIMIT
    assert lab.calls(f"{name}-1", "stage2"), "Stage 2 made no call"
