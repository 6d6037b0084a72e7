"""The comparison pairs only arms made from the same spec version, and its p-values are Holm-adjusted."""

import pytest
from statsmodels.stats.multitest import multipletests

from lsl_dagster.cli import main
from lsl_dagster.records import Comparison, PromptCandidate
from lsl_dagster.results.stats import verdict
from lsl_dagster_tests.conftest import STAGE_ASSETS, Lab

BEFORE_EDIT = ["stage1_prompt", "stage2_hardened_prompt", "baseline_evaluation"]
AFTER_EDIT = ["budget_matched_prompt", "stage3_evaluation", "budget_matched_evaluation", "comparison"]


def _failure(result, step: str) -> str:
    (event,) = [e for e in result.get_step_failure_events() if e.step_key == step]
    return event.step_failure_data.error.message


def test_an_edit_between_stage1_and_stage3_is_refused_naming_what_to_rerun(lab: Lab):
    lab.write("edited")
    assert lab.run("edited", BEFORE_EDIT).success
    lab.write("edited", stage1={"max_calls": 90})  # the experiment file is edited mid-way
    result = lab.run("edited", AFTER_EDIT, raise_on_error=False)

    assert not result.success
    assert lab.materializations("edited", "stage3_evaluation") == 1  # made from the edited spec
    assert lab.materializations("edited", "comparison") == 0
    message = _failure(result, "comparison")
    assert "refuses to pair arms made from different versions" in message
    # Stage 1, and everything made from it, predates the edit or was made from what does.
    rerun = message.split("Re-materialize ")[1].split(" and then comparison")[0].split(", ")
    assert rerun == [a for a in STAGE_ASSETS if a != "comparison"]  # in pipeline order
    assert "stage1_prompt: made from spec " in message
    assert "stage3_evaluation: made from an asset that must be re-run" in message
    assert "--partition edited" in message

    # Doing what the message says gives a comparison whose arms all come from the edited spec.
    assert lab.run("edited", [*rerun, "comparison"]).success
    comparison = Comparison.model_validate(lab.output("edited", "comparison"))
    stage1 = lab.output("edited", "stage1_prompt")
    assert comparison.version.spec_hash == stage1["provenance"]["spec_hash"]
    assert stage1["ledger"]["max_calls"] == 90


def test_an_edit_after_every_stage_is_refused_too(lab: Lab):
    lab.write("late")
    assert lab.run("late", BEFORE_EDIT + AFTER_EDIT[:-1]).success
    lab.write("late", evaluation={"limit": 30})
    result = lab.run("late", ["comparison"], raise_on_error=False)
    message = _failure(result, "comparison")
    assert "Re-materialize stage1_prompt, stage2_hardened_prompt, budget_matched_prompt" in message


def test_comparison_p_values_are_holm_adjusted_and_the_verdict_uses_them(lab: Lab):
    lab.write("holm")
    assert lab.run("holm").success
    comparison = Comparison.model_validate(lab.output("holm", "comparison"))
    raw = [d.p_value for d in comparison.differences]
    assert all(d.test == "mcnemar_exact" for d in comparison.differences)  # arithmetic scores 0/1
    assert [d.p_holm for d in comparison.differences] == pytest.approx(
        list(multipletests(raw, method="holm")[1])
    )
    for d in comparison.differences:  # the verdict is made from the adjusted p, not the raw one
        assert d.verdict == verdict(d.diff, d.ci_low, d.ci_high, d.p_holm, label=d.arm, baseline=d.baseline)
    rows = lab.metadata("holm", "comparison")["differences"].records
    assert [(r.data["p"], r.data["p_holm"]) for r in rows] == [
        (f"{d.p_value:.4g}", f"{d.p_holm:.4g}") for d in comparison.differences
    ]


def test_stage2_metadata_and_lsl_results_show_what_hardening_changed(
    lab: Lab, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
):
    lab.write("diff", stage2={"max_calls": 200}, small_model={"model": "sim/tiny"})
    assert lab.run("diff").success
    stage1 = PromptCandidate.model_validate(lab.output("diff", "stage1_prompt"))
    stage2 = PromptCandidate.model_validate(lab.output("diff", "stage2_hardened_prompt"))
    (name,) = stage1.predictors
    before, after = stage1.predictors[name], stage2.predictors[name]
    assert before.instructions != after.instructions  # GEPA rewrote the instructions on the small model
    metadata = lab.metadata("diff", "stage2_hardened_prompt")
    assert metadata["predictors_changed"] == 1
    changes = metadata["changes"]
    for line in before.instructions.splitlines():
        assert f"\n-{line}\n" in changes or f"\n {line}\n" in changes
    for line in after.instructions.splitlines():
        assert f"\n+{line}\n" in changes or f"\n {line}\n" in changes
    assert before.demos == after.demos  # Stage 2 keeps the Stage 1 demos: no demo line changes
    assert not any(line.startswith(("-demo", "+demo", "-[demos", "+[demos")) for line in changes.splitlines())

    for variable, value in lab.env().items():
        if variable in ("DAGSTER_HOME", "LSL_DATA_DIR", "LSL_RUNS_DIR"):
            monkeypatch.setenv(variable, value)
    capsys.readouterr()
    assert main(["results", "diff", "--prompts"]) == 0
    out = capsys.readouterr().out
    assert "== diff (sim): what Stage 2 changed in the Stage 1 prompt" in out
    assert f"--- stage1/{name}" in out and f"+++ stage2/{name}" in out
    assert f"+{after.instructions.splitlines()[0]}" in out
