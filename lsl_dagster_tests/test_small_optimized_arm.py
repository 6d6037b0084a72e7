"""The optional small-optimized arm (`arms: [small_optimized]`): Stage 1's optimizer and budget on the small
model, evaluated on the large model, paired with every arm in the comparison."""

import json

import pytest
import yaml
from dagster import AssetKey, AssetSelection, Definitions, define_asset_job

from lsl_dagster import graph
from lsl_dagster.cli import main
from lsl_dagster.defs.campaign_assets import CAMPAIGN_GROUP
from lsl_dagster.records import CampaignSummary, Comparison, PromptCandidate, TransferMatrix
from lsl_dagster.spec.experiment_files import ExperimentError, experiment_ids, load_experiment
from lsl_dagster_tests.conftest import Lab


def _run_with_arms(lab: Lab, experiment_id: str, assets: list[str] | None = None):
    job = lab.defs().resolve_job_def("lsl_experiment_with_arms")
    selection = None if assets is None else [AssetKey(name) for name in assets]
    return job.execute_in_process(
        partition_key=experiment_id, instance=lab.instance, asset_selection=selection
    )


def test_the_arm_materializes_and_is_paired_with_the_three_arms(
    lab: Lab, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    lab.write("exp-small", arms=["small_optimized"])
    lab.write("exp-plain")
    result = _run_with_arms(lab, "exp-small")
    assert result.success
    # The arm's prompt and evaluation get the same asset checks as the others, and pass them.
    checks = {
        (e.asset_key.to_user_string(), e.check_name): e.passed for e in result.get_asset_check_evaluations()
    }
    assert checks[("small_optimized_prompt", "within_call_budget")]
    assert checks[("small_optimized_prompt", "no_test_leakage")]
    assert checks[("small_optimized_evaluation", "all_examples_evaluated")]

    prompt = PromptCandidate.model_validate(lab.output("exp-small", "small_optimized_prompt"))
    assert prompt.provenance.stage == "small_optimized" and prompt.provenance.model == "sim/small"
    assert prompt.provenance.optimizer == load_experiment(lab.data_dir, "exp-small").stage1.optimizer
    # Stage 1's budget, and its calls are counted on the small model only.
    stage1 = PromptCandidate.model_validate(lab.output("exp-small", "stage1_prompt"))
    assert 0 < prompt.ledger.budget_used <= stage1.ledger.max_calls == prompt.ledger.max_calls
    assert set(prompt.ledger.by_model) == {"sim/small"}
    assert len(lab.calls("exp-small", "small_optimized")) == prompt.ledger.calls

    comparison = Comparison.model_validate(lab.output("exp-small", "comparison"))
    assert [a.arm for a in comparison.arms] == ["baseline", "lsl", "budget_matched", "small_optimized"]
    assert [(d.arm, d.baseline) for d in comparison.differences] == [
        ("lsl", "baseline"),
        ("budget_matched", "baseline"),
        ("lsl", "budget_matched"),
        ("small_optimized", "baseline"),
        ("small_optimized", "lsl"),
        ("small_optimized", "budget_matched"),
    ]
    for d in comparison.differences:
        assert d.n == 40 and d.ci_low <= d.diff <= d.ci_high and 0 <= d.p_value <= d.p_holm <= 1
    arm = next(a for a in comparison.arms if a.arm == "small_optimized")
    assert arm.optimization_calls == prompt.ledger.budget_used
    assert "small_optimized" in comparison.usage and "small_optimized_evaluation" in comparison.usage

    # `lsl status` shows the arm's columns; an experiment without the arm has none to run ("-").
    for name, value in {
        "DAGSTER_HOME": lab.instance.root_directory,
        "LSL_DATA_DIR": str(lab.data_dir),
        "LSL_RUNS_DIR": str(lab.runs_dir),
    }.items():
        monkeypatch.setenv(name, value)
    capsys.readouterr()
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    header, *rows = [line.split() for line in out.splitlines() if line and ":" not in line]
    assert header[1:] == [graph.COLUMNS[a] for a in graph.ALL_STAGES]
    table = {row[0]: row[1:] for row in rows}
    assert table["exp-small"] == ["materialized"] * 9
    assert table["exp-plain"] == ["missing"] * 3 + ["-"] + ["missing"] * 3 + ["-", "missing"]
    assert main(["results", "exp-small"]) == 0
    assert "small_optimized" in capsys.readouterr().out
    # The export has a row for the arm, with its difference to the baseline.
    exported = lab.runs_dir / "export.json"
    assert main(["export", "exp-small", "--format", "json", "-o", str(exported)]) == 0
    row = next(r for r in json.loads(exported.read_text()) if r["arm"] == "small_optimized")
    versus = next(d for d in comparison.differences if (d.arm, d.baseline) == ("small_optimized", "baseline"))
    assert (row["score"], row["diff_vs_baseline"]) == (arm.score, versus.diff)


def test_the_arm_reuses_the_experiments_cache(lab: Lab):
    lab.write("exp-cache", arms=["small_optimized"])
    assert _run_with_arms(lab, "exp-cache").success
    paid = len(lab.calls("exp-cache"))
    first = PromptCandidate.model_validate(lab.output("exp-cache", "small_optimized_prompt"))

    # Materialized again, the arm asks the same requests: every one is answered by the cache, none paid.
    assert _run_with_arms(lab, "exp-cache", ["small_optimized_prompt"]).success
    again = PromptCandidate.model_validate(lab.output("exp-cache", "small_optimized_prompt"))
    assert len(lab.calls("exp-cache")) == paid
    assert again.ledger.calls == 0
    assert again.ledger.cache_hits == first.ledger.calls + first.ledger.cache_hits


def test_an_experiment_without_arms_builds_todays_assets(lab: Lab):
    lab.write("exp-plain")
    defs = lab.defs()
    job = defs.resolve_job_def("lsl_experiment")
    keys = {key.to_user_string() for key in job.asset_layer.executable_asset_keys}
    assert keys == {*graph.STAGES, "experiment_file"}
    assert lab.run("exp-plain").success
    comparison = Comparison.model_validate(lab.output("exp-plain", "comparison"))
    assert [a.arm for a in comparison.arms] == ["baseline", "lsl", "budget_matched"]
    assert len(comparison.differences) == 3
    assert not (lab.runs_dir / "exp-plain" / "small_optimized_prompt.json").exists()


def test_the_comparison_fails_naming_the_command_when_the_arm_is_missing(lab: Lab):
    lab.write("exp-missing", arms=["small_optimized"])
    result = lab.run("exp-missing", raise_on_error=False)  # the plain job: no arm assets
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = failure.step_failure_data.error.message
    assert "small_optimized_evaluation" in message and "--partition exp-missing" in message


@pytest.mark.parametrize(
    ("arms", "expected"),
    [(["large_optimized"], "unknown arm"), (["small_optimized", "small_optimized"], "listed twice")],
)
def test_bad_arms_are_refused_naming_the_file_and_field(lab: Lab, arms: list[str], expected: str):
    path = lab.write("exp-bad", arms=arms)
    with pytest.raises(ExperimentError, match=expected) as raised:
        load_experiment(lab.data_dir, "exp-bad")
    assert str(path) in str(raised.value) and "arms:" in str(raised.value)


def test_a_campaign_with_the_arm_pools_it_in_its_cells_and_its_transfer_matrix(
    lab: Lab, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    pair = {"name": "l-s", "large_model": {"model": "sim/large"}, "small_model": {"model": "sim/small"}}
    experiment = {
        "arms": ["small_optimized"],
        "stage1": {"max_calls": 30},
        "stage2": {"max_calls": 24, "on_no_signal": "warn"},
        "data": {"train": 6, "val": 4},
        "evaluation": {"split": "test", "limit": 16},
    }
    campaign = {"campaign": "arm", "tasks": ["arithmetic"], "model_pairs": [pair], "seeds": [0, 1]}
    (lab.data_dir / "campaigns").mkdir()
    (lab.data_dir / "campaigns" / "arm.yaml").write_text(
        yaml.safe_dump({**campaign, "experiment": experiment})
    )
    ids = experiment_ids(lab.data_dir)
    assert len(ids) == 2
    for experiment_id in ids:
        assert _run_with_arms(lab, experiment_id).success
    defs = lab.defs()
    job = define_asset_job("campaign", selection=AssetSelection.groups(CAMPAIGN_GROUP))
    campaign_defs = Definitions(assets=list(defs.assets), resources=defs.resources, jobs=[job])
    assert (
        campaign_defs.resolve_job_def("campaign")
        .execute_in_process(partition_key="arm", instance=lab.instance)
        .success
    )

    (cell,) = CampaignSummary.model_validate(lab.output("arm", "campaign_summary")).cells
    assert list(cell.arms) == ["baseline", "lsl", "budget_matched", "small_optimized"]
    assert len(cell.differences) == 6 and "small_optimized - lsl" in cell.differences
    (matrix_cell,) = TransferMatrix.model_validate(lab.output("arm", "transfer_matrix")).cells
    assert list(matrix_cell.differences) == [
        "lsl - baseline",
        "lsl - budget_matched",
        "small_optimized - baseline",
        "small_optimized - lsl",
    ]
    for value in [*cell.arms.values(), *cell.differences.values(), *matrix_cell.differences.values()]:
        assert value.n == 2 and value.n_examples == 32
        assert -1.0 <= value.ci_low <= value.mean <= value.ci_high <= 1.0
    for name, value in lab.env().items():
        if name in ("DAGSTER_HOME", "LSL_DATA_DIR", "LSL_RUNS_DIR"):
            monkeypatch.setenv(name, value)
    capsys.readouterr()
    assert main(["campaign", "matrix", "arm"]) == 0
    assert any(line.startswith("small_optimized - lsl") for line in capsys.readouterr().out.splitlines())
