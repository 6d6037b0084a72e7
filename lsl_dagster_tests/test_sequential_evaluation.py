"""Sequential evaluation (`evaluation.sequential`): the arms in rounds, stopped when every paired difference
is settled by its confidence sequence, or when the examples or the money run out."""

import pytest
import yaml

from lsl_dagster.cli import main
from lsl_dagster.defs.resources import Workspace
from lsl_dagster.llm.language_models import LanguageModels
from lsl_dagster.llm.ledger import spent_usd
from lsl_dagster.method import sequential
from lsl_dagster.method.plan import forecast
from lsl_dagster.method.stages import decision_key
from lsl_dagster.records import Comparison, EvaluationResult, PairedDifference, PromptCandidate
from lsl_dagster.spec.experiment_files import ExperimentError, load_experiment
from lsl_dagster_tests.conftest import PROJECT, Lab, merge

# On the sim, Stage 2 lifts a weak Stage 1 prompt by ~0.10 on arithmetic, and the budget-matched arm stays
# level with the baseline.
LARGE_ADVANTAGE = {
    "stage1": {"optimizer": "bootstrap_rs", "max_calls": 20},
    "stage2": {"max_calls": 150},
    "evaluation": {"limit": 300},
}
EVALUATIONS = ("baseline_evaluation", "stage3_evaluation", "budget_matched_evaluation")


def _comparison(lab: Lab, experiment_id: str) -> Comparison:
    return Comparison.model_validate(lab.output(experiment_id, "comparison"))


def _claims(comparison: Comparison) -> list[int]:
    """Per difference: +1 or -1 where the comparison claims one (its CI excludes 0 and, in the fixed
    design, Holm p < 0.05), 0 where it claims none."""

    def claim(d: PairedDifference) -> int:
        significant = d.p_holm is None or d.p_holm < 0.05
        return int(significant and d.ci_low > 0) - int(significant and d.ci_high < 0)

    return [claim(d) for d in comparison.differences]


def test_a_large_advantage_stops_early_with_the_fixed_designs_verdict(
    lab: Lab, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    lab.write("fixed", **LARGE_ADVANTAGE)
    settings = {"min_examples": 20, "margin": 0.1, "finite": True}
    lab.write("seq", **merge(LARGE_ADVANTAGE, {"evaluation": {"sequential": settings}}))
    assert lab.run("fixed").success
    result = lab.run("seq")
    assert result.success
    # The evaluations' checks hold on the prefix they used.
    checks = result.get_asset_check_evaluations()
    assert len(checks) >= 6 and all(c.passed for c in checks)

    fixed, seq = _comparison(lab, "fixed"), _comparison(lab, "seq")
    decision = seq.sequential
    assert decision is not None and fixed.sequential is None
    assert decision.reason == "settled" and 20 <= decision.examples < 300
    assert [a.n for a in seq.arms] == [decision.examples] * 3
    assert _claims(fixed) == _claims(seq) == [1, 0, 1]
    assert [s.settled for s in decision.sequences] == ["excludes_zero", "equivalent", "excludes_zero"]
    assert all(d.test == "confidence_sequence" and d.p_holm is None for d in seq.differences)
    assert "sequential: 98.3% anytime-valid CS" in seq.differences[0].verdict

    # The rounds paid for every arm's examples, once: the evaluations replayed theirs from the cache.
    rounds = lab.calls("seq", "evaluation_rounds")
    assert len(rounds) == decision.ledger.calls > 0
    for evaluation in EVALUATIONS:
        assert lab.calls("seq", evaluation) == []
        stored = EvaluationResult.model_validate(lab.output("seq", evaluation))
        assert stored.ledger.cache_hits >= decision.examples and stored.sequential == decision
    fixed_calls = sum(len(lab.calls("fixed", e)) for e in EVALUATIONS)
    assert len(rounds) < fixed_calls
    assert decision.requests < decision.fixed_requests
    assert seq.usage["evaluation_rounds"].calls == len(rounds)

    for name, value in lab.env().items():
        monkeypatch.setenv(name, value)
    capsys.readouterr()
    assert main(["results", "seq"]) == 0
    out = capsys.readouterr().out
    assert f"Sequential evaluation: stopped at {decision.examples} of 300 examples per arm" in out
    assert "every paired difference was settled" in out


@pytest.mark.parametrize(("margin", "reason"), [(0.0, "examples"), (0.1, "settled")])
def test_equal_arms_run_to_the_limit_unless_a_margin_settles_them(lab: Lab, margin: float, reason: str):
    # On the sim's reviews task the three arms' prompts score alike on every example.
    sequential_settings = {"min_examples": 20, "margin": margin}
    lab.write("equal", task="reviews", evaluation={"limit": 150, "sequential": sequential_settings})
    assert lab.run("equal").success
    comparison = _comparison(lab, "equal")
    decision = comparison.sequential
    assert decision is not None and decision.reason == reason
    if margin == 0:
        assert decision.examples == 150
        assert [s.settled for s in decision.sequences] == ["open"] * 3
        assert all(d.verdict.startswith("No significant difference") for d in comparison.differences)
    else:
        assert decision.examples < 150
        assert [s.settled for s in decision.sequences] == ["equivalent"] * 3
        assert all("practically equivalent" in d.verdict for d in comparison.differences)


def _shipped(lab: Lab, name: str, **overrides: object) -> None:
    spec = yaml.safe_load((PROJECT / "data" / "experiments" / "arith-sim-01.yaml").read_text())
    path = lab.data_dir / "experiments" / f"{name}.yaml"
    path.write_text(yaml.safe_dump(merge(spec, {"experiment_id": name, **overrides})))


def test_the_shipped_experiment_under_a_5_dollar_cap_runs_sequentially_within_it(lab: Lab):
    _shipped(lab, "fixed-5", max_cost_usd=5.0)
    _shipped(lab, "seq-5", max_cost_usd=5.0, evaluation={"sequential": {}})
    task = Workspace(data_dir=str(lab.data_dir)).task("arithmetic")
    refused = forecast(load_experiment(lab.data_dir, "fixed-5"), task)
    assert refused.refusal is not None and "cannot cover the three evaluations" in refused.refusal
    plan = forecast(load_experiment(lab.data_dir, "seq-5"), task)
    assert plan.refusal is None and all(
        s.share_usd is None for s in plan.stages if s.stage.endswith("evaluation")
    )
    # The plan's expected examples fall as the true difference grows.
    expected = list(plan.sequential_examples.values())
    assert len(expected) == 3 and expected == sorted(expected, reverse=True) and expected[-1] < 300

    assert lab.run("seq-5").success
    comparison = _comparison(lab, "seq-5")
    assert comparison.sequential is not None
    # What the provider was paid, every request of the experiment, from its call log.
    assert 0 < spent_usd(lab.calls("seq-5")) <= 5.0


def test_money_ends_the_rounds_and_the_comparison_says_so(lab: Lab):
    # Arms that never settle (margin 0, the budget-matched prompt equals the baseline's) on many examples,
    # under a cap that covers min_examples at their worst case ($2.10 here) and not many more rounds.
    lab.write("tight", evaluation={"limit": 2000, "sequential": {"min_examples": 30}}, max_cost_usd=3.0)
    plan = forecast(
        load_experiment(lab.data_dir, "tight"), Workspace(data_dir=str(lab.data_dir)).task("arithmetic")
    )
    assert plan.refusal is None
    assert lab.run("tight").success
    comparison = _comparison(lab, "tight")
    decision = comparison.sequential
    assert decision is not None and decision.reason == "budget"
    assert 30 <= decision.examples < 2000
    assert spent_usd(lab.calls("tight")) <= 3.0
    assert any("max_cost_usd could not pay for another round" in d.verdict for d in comparison.differences)
    metadata = lab.metadata("tight", "comparison")
    assert "money, not evidence, ended it" in metadata["verdicts"]
    assert (metadata["sequential_stop"], metadata["sequential_examples"]) == ("budget", decision.examples)


def test_rounds_run_again_replay_to_the_same_stop_without_paying(lab: Lab):
    lab.write("again", task="reviews", evaluation={"limit": 150, "sequential": {"min_examples": 20}})
    assert lab.run("again").success
    first = _comparison(lab, "again").sequential
    assert first is not None
    workspace = Workspace(data_dir=str(lab.data_dir), runs_dir=str(lab.runs_dir))
    spec = workspace.experiment("again")
    task = workspace.task(spec.task)
    prompts = {
        arm: PromptCandidate.model_validate(lab.output("again", asset))
        for arm, asset in (
            ("baseline", "stage1_prompt"),
            ("lsl", "stage2_hardened_prompt"),
            ("budget_matched", "budget_matched_prompt"),
        )
    }
    key = decision_key(spec, prompts)
    assert key == first.key
    paid = len(lab.calls("again"))
    with workspace.stage(spec, "evaluation_rounds", LanguageModels(), None) as run:
        again = sequential.evaluate_in_rounds(spec, task, prompts, run, key, None)
    assert again.model_dump(exclude={"ledger", "requests", "fixed_requests"}) == first.model_dump(
        exclude={"ledger", "requests", "fixed_requests"}
    )
    assert len(lab.calls("again")) == paid and again.ledger.calls == 0


def test_an_invalid_sequential_setting_is_refused_naming_it_before_any_call(lab: Lab):
    lab.write("bad", evaluation={"sequential": {"alpha": 1.5}})
    with pytest.raises(ExperimentError, match=r"evaluation\.sequential\.alpha"):
        load_experiment(lab.data_dir, "bad")
    result = lab.run("bad", raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error
    assert "evaluation.sequential.alpha" in failure.message
    assert lab.calls("bad") == []


def test_a_sequential_evaluation_without_every_prompt_fails_naming_them_before_any_call(lab: Lab):
    lab.write("partial", evaluation={"limit": 40, "sequential": {"min_examples": 20}})
    result = lab.run(
        "partial", ["experiment_file", "stage1_prompt", "baseline_evaluation"], raise_on_error=False
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error
    assert "stage2_hardened_prompt, budget_matched_prompt is not materialized" in failure.message
    assert (
        "--select 'stage2_hardened_prompt,budget_matched_prompt,baseline_evaluation' --partition partial"
        in failure.message
    )
    assert lab.calls("partial", "evaluation_rounds") == lab.calls("partial", "baseline_evaluation") == []
