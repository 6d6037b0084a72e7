"""The experiment end to end: every asset materializes as JSON, with the metadata the UI shows."""

import json
import shutil
import socket

import dspy
import pytest
from dagster import (
    AssetSelection,
    DagsterInstance,
    Definitions,
    ReexecutionOptions,
    define_asset_job,
    execute_job,
    reconstructable,
)

from lsl_dagster.definitions import build_definitions
from lsl_dagster.llm.language_models import LanguageModels
from lsl_dagster.records import Comparison, EvaluationResult, PromptCandidate
from lsl_dagster.sim.server import SimServer
from lsl_dagster.spec.experiment import SIMULATED as LABEL
from lsl_dagster_tests.conftest import PROJECT, STAGE_ASSETS, Lab, shipped_keys


def test_experiment_materializes_every_asset_as_json(lab: Lab):
    lab.write("exp-a")
    assert lab.run("exp-a").success

    stage1 = PromptCandidate.model_validate(lab.output("exp-a", "stage1_prompt"))
    stage2 = PromptCandidate.model_validate(lab.output("exp-a", "stage2_hardened_prompt"))
    comparison = Comparison.model_validate(lab.output("exp-a", "comparison"))
    assert stage2.provenance.parent == "stage1" and stage2.provenance.model == "sim/small"
    # Hardening starts from the Stage 1 candidate and keeps its demos.
    assert stage2.predictors["predict"].demos == stage1.predictors["predict"].demos
    assert [arm.arm for arm in comparison.arms] == ["baseline", "lsl", "budget_matched"]
    assert {(d.arm, d.baseline) for d in comparison.differences} == {
        ("lsl", "baseline"),
        ("budget_matched", "baseline"),
        ("lsl", "budget_matched"),
    }
    for arm in ("baseline_evaluation", "stage3_evaluation", "budget_matched_evaluation"):
        result = EvaluationResult.model_validate(lab.output("exp-a", arm))
        assert result.predictions_path == f"exp-a/predictions/{result.arm}.jsonl"  # relative to the runs dir
        rows = [
            json.loads(line) for line in (lab.runs_dir / result.predictions_path).read_text().splitlines()
        ]
        assert result.n == len(rows) == 40
        assert [row["example_id"] for row in rows] == [f"test-{i}" for i in range(40)]
        assert result.score == pytest.approx(sum(row["score"] for row in rows) / 40)
    # Every file under the experiment's directory is text (JSON, JSONL) or the response cache.
    for path in (lab.runs_dir / "exp-a").rglob("*"):
        if path.is_file() and "cache" not in path.parts:
            path.read_text(encoding="utf-8")
            assert path.suffix in {".json", ".jsonl", ""}, path

    stage1_meta = lab.metadata("exp-a", "stage1_prompt")
    assert LABEL in stage1_meta["prompt"] and "[[ ## question ## ]]" in stage1_meta["prompt"]
    assert isinstance(stage1_meta["val_score"], float)
    assert stage1_meta["calls"] == stage1.ledger.calls > 0
    assert stage1_meta["simulated"] == LABEL
    evaluation_meta = lab.metadata("exp-a", "stage3_evaluation")
    assert evaluation_meta["score"] == pytest.approx(
        EvaluationResult.model_validate(lab.output("exp-a", "stage3_evaluation")).score
    )
    comparison_meta = lab.metadata("exp-a", "comparison")
    assert LABEL in comparison_meta["verdicts"]
    assert len(comparison_meta["differences"].records) == 3


def test_shipped_example_shows_a_capability_gap_and_a_stage1_gain(lab: Lab):
    shutil.copy(PROJECT / "data" / "experiments" / "arith-sim-01.yaml", lab.data_dir / "experiments")
    assert lab.run("arith-sim-01").success
    stage1 = PromptCandidate.model_validate(lab.output("arith-sim-01", "stage1_prompt"))
    stage2 = PromptCandidate.model_validate(lab.output("arith-sim-01", "stage2_hardened_prompt"))
    # Stage 1 improved on the unoptimized program (validation scores on the large model).
    assert stage1.provenance.val_score > stage1.provenance.start_val_score
    # The same Stage 1 prompt: large model vs small model on the same validation set.
    assert stage1.provenance.val_score - stage2.provenance.start_val_score > 0.3
    comparison = Comparison.model_validate(lab.output("arith-sim-01", "comparison"))
    assert all(arm.n == 300 for arm in comparison.arms)
    assert sum(ledger.cost_usd for ledger in comparison.usage.values()) <= 5.0


def test_materializing_missing_assets_does_not_recompute_upstream(lab: Lab):
    lab.write("exp-b")
    assert lab.run("exp-b", ["experiment_file", "stage1_prompt"]).success
    stage1_file = lab.runs_dir / "exp-b" / "stage1_prompt.json"
    before = stage1_file.stat().st_mtime_ns
    calls_before = (lab.runs_dir / "exp-b" / "calls.jsonl").read_text().count("\n")

    assert lab.run("exp-b", STAGE_ASSETS[1:]).success
    assert lab.materializations("exp-b", "stage1_prompt") == 1
    assert stage1_file.stat().st_mtime_ns == before
    later = [json.loads(line) for line in (lab.runs_dir / "exp-b" / "calls.jsonl").read_text().splitlines()]
    assert not [r for r in later[calls_before:] if r["stage"] == "stage1"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def experiment_job():
    """Loaded again by Dagster for re-execution (reconstructable), from the LSL_* variables."""
    return build_definitions(language_models=LanguageModels(num_retries=0, step_retries=0)).resolve_job_def(
        "lsl_experiment"
    )


def test_reexecution_from_failure_keeps_finished_assets(lab: Lab, monkeypatch: pytest.MonkeyPatch):
    port = _free_port()  # nothing listens here until the "provider" comes back
    lab.write("exp-c", small_model={"model": "openai/sim-small", "api_base": f"http://127.0.0.1:{port}/v1"})
    monkeypatch.setenv("LSL_DATA_DIR", str(lab.data_dir))
    monkeypatch.setenv("LSL_RUNS_DIR", str(lab.runs_dir))
    instance: DagsterInstance = lab.instance
    job = reconstructable(experiment_job)

    with execute_job(job, instance=instance, tags={"dagster/partition": "exp-c"}) as first:
        assert not first.success
        failed = {event.step_key for event in first.all_events if event.event_type_value == "STEP_FAILURE"}
        assert failed == {"stage2_hardened_prompt"}
        stage1_mtime = (lab.runs_dir / "exp-c" / "stage1_prompt.json").stat().st_mtime_ns
        first_run_id = first.run_id

    with SimServer(port=port, answer_keys=shipped_keys()).start() as server:
        options = ReexecutionOptions.from_failure(first_run_id, instance)
        with execute_job(
            job, instance, tags={"dagster/partition": "exp-c"}, reexecution_options=options
        ) as second:
            assert second.success
            executed = {
                event.step_key for event in second.all_events if event.event_type_value == "STEP_SUCCESS"
            }
        assert "stage1_prompt" not in executed
        # The evaluations wait for every prompt (graph.waits_for), so they run only now.
        assert {"stage2_hardened_prompt", "baseline_evaluation", "comparison"} <= executed
        assert server.stats()["served"] > 0
    assert lab.materializations("exp-c", "stage1_prompt") == 1
    assert (lab.runs_dir / "exp-c" / "stage1_prompt.json").stat().st_mtime_ns == stage1_mtime


def test_same_seed_same_results_and_the_seed_is_honoured(lab: Lab, monkeypatch: pytest.MonkeyPatch):
    # MIPROv2.compile(seed=0) alone silently falls back to seed 9: record the seed it really uses.
    used: list[int] = []
    original = dspy.MIPROv2._set_random_seeds
    monkeypatch.setattr(
        dspy.MIPROv2, "_set_random_seeds", lambda self, seed: used.append(seed) or original(self, seed)
    )
    for name, seed in (("seed-0", 0), ("seed-0-again", 0), ("seed-9", 9)):
        lab.write(name, seed=seed)
        assert lab.run(name, ["experiment_file", "stage1_prompt"]).success

    def prompt(name: str) -> dict:
        return lab.output(name, "stage1_prompt")["predictors"]

    assert used == [0, 0, 9]
    assert prompt("seed-0") == prompt("seed-0-again")
    assert prompt("seed-0") != prompt("seed-9")


def _checks(lab: Lab, experiment_id: str) -> dict[str, bool]:
    """Run only the asset checks of an experiment (the UI's "Execute checks"); check -> passed."""
    defs = lab.defs()
    partitions = defs.resolve_assets_def("stage1_prompt").partitions_def
    job = define_asset_job("checks", selection=AssetSelection.all_asset_checks(), partitions_def=partitions)
    result = (
        Definitions.merge(defs, Definitions(jobs=[job]))
        .resolve_job_def("checks")
        .execute_in_process(tags={"dagster/partition": experiment_id}, instance=lab.instance)
    )
    return {
        f"{e.asset_key.to_user_string()}:{e.check_name}": e.passed
        for e in result.get_asset_check_evaluations()
    }


def test_asset_checks_pass_on_a_sound_experiment_and_catch_tampering(lab: Lab):
    lab.write("checked")
    assert lab.run("checked").success
    assert all(_checks(lab, "checked").values())

    # A dropped prediction row, an out-of-range score, a test example smuggled into the demos.
    predictions = lab.runs_dir / lab.output("checked", "baseline_evaluation")["predictions_path"]
    predictions.write_text("".join(predictions.read_text().splitlines(keepends=True)[:-1]))
    stage3 = lab.runs_dir / lab.output("checked", "stage3_evaluation")["predictions_path"]
    rows = [json.loads(line) for line in stage3.read_text().splitlines()]
    rows[0]["score"] = 1.5
    stage3.write_text("".join(json.dumps(row) + "\n" for row in rows))
    prompt_path = lab.runs_dir / "checked" / "stage1_prompt.json"
    prompt = json.loads(prompt_path.read_text())
    leaked = {
        "question": rows[1]["inputs"]["question"],
        "answer": rows[1]["gold"]["answer"],
        "example_id": "train-x",
    }
    prompt["predictors"]["predict"]["demos"].append(leaked)
    prompt_path.write_text(json.dumps(prompt))

    failed = {check for check, passed in _checks(lab, "checked").items() if not passed}
    assert failed == {
        "baseline_evaluation:all_examples_evaluated",
        "baseline_evaluation:scores_in_range",  # the reported score is no longer the rows' mean
        "stage3_evaluation:scores_in_range",
        "stage1_prompt:no_test_leakage",
    }
