"""The per-predictor diff of two prompts: instructions, field descriptions and demos."""

from lsl_dagster.records import Ledger, PredictorPrompt, PromptCandidate, Provenance
from lsl_dagster.results.prompt_diff import diff_markdown, predictor_diffs


def _candidate(stage: str, **predictors: PredictorPrompt) -> PromptCandidate:
    return PromptCandidate(
        experiment_id="x",
        task="arithmetic",
        predictors=predictors,
        provenance=Provenance(stage=stage, optimizer="gepa", model="sim/large", seed=0, spec_hash="h"),
        ledger=Ledger(stage=stage),
        simulated=True,
    )


def test_diff_shows_changed_instructions_and_demos_per_predictor():
    demo = {"question": "2 + 2?", "answer": "4"}
    before = _candidate(
        "stage1",
        solve=PredictorPrompt(
            instructions="Solve it.\nBe brief.", demos=[demo, {"question": "1+1?", "answer": "2"}]
        ),
        check=PredictorPrompt(instructions="Check it.", field_descriptions={"answer": "a number"}),
    )
    after = _candidate(
        "stage2",
        solve=PredictorPrompt(instructions="Solve it step by step.\nBe brief.", demos=[demo]),
        check=PredictorPrompt(instructions="Check it.", field_descriptions={"answer": "a number"}),
    )
    diffs = predictor_diffs(before, after)
    assert diffs["check"] == ""
    solve = diffs["solve"].splitlines()
    assert solve[:2] == ["--- stage1/solve", "+++ stage2/solve"]
    assert "-Solve it." in solve and "+Solve it step by step." in solve
    assert " Be brief." in solve  # unchanged context
    assert "-[demos: 2]" in solve and "+[demos: 1]" in solve
    assert '-demo 2: {"answer": "2", "question": "1+1?"}' in solve
    assert not any(line.startswith(("-demo 1", "+demo 1")) for line in solve)  # the kept demo
    markdown = diff_markdown(diffs)
    assert "### Predictor `check`\n\n_unchanged_" in markdown
    assert "```diff\n--- stage1/solve" in markdown


def test_a_predictor_only_on_one_side_is_all_added():
    before = _candidate("stage1")
    after = _candidate("stage2", extra=PredictorPrompt(instructions="New."))
    lines = predictor_diffs(before, after)["extra"].splitlines()
    assert "+New." in lines and not any(line.startswith("-") and not line.startswith("---") for line in lines)
