"""Weak real models: limits that reach the server, failures explained, no silent no-ops, format failures
visible. Servers here are the sim server (a simulated test double) in real local servers' dialects."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dspy
import httpx
import pytest
from dspy.clients.cache import Cache

from lsl_dagster.defs.resources import Workspace
from lsl_dagster.llm.language_models import LanguageModels
from lsl_dagster.llm.ledger import Meter
from lsl_dagster.method.comparison import compare
from lsl_dagster.method.evaluation import Totals, evaluate, scores
from lsl_dagster.method.plan import forecast
from lsl_dagster.records import Comparison, EvaluationResult, Ledger, PromptCandidate
from lsl_dagster.sim.server import SimServer
from lsl_dagster.spec.experiment import ExperimentSpec, ModelSpec
from lsl_dagster.tasks.task import load_task
from lsl_dagster_tests.conftest import PROJECT, Lab
from lsl_dagster_tests.test_cli import run_cli


@pytest.fixture(autouse=True)
def no_response_cache(monkeypatch: pytest.MonkeyPatch):
    """Calls made outside a stage would land in DSPy's global cache and be replayed by the next run."""
    off = Cache(enable_disk_cache=False, enable_memory_cache=False, disk_cache_dir="")
    monkeypatch.setattr(dspy, "cache", off)


QUESTION = "[[ ## question ## ]]\nSam has 5 apples. He buys 3 more. How many apples does Sam have?"


def test_llama_cpp_server_without_a_limit_fills_its_context():
    # The double itself: like llama-cpp-python with a small model, it ignores max_completion_tokens and,
    # with no max_tokens, generates until the context window is full.
    with SimServer(dialect="llama-cpp", context_tokens=1024).start() as server:
        body = {
            "model": "sim-small",
            "messages": [{"role": "user", "content": QUESTION}],
            "max_completion_tokens": 50,
        }
        reply = httpx.post(f"{server.url}/chat/completions", json=body, timeout=5).json()
    usage = reply["usage"]
    assert reply["choices"][0]["finish_reason"] == "length"
    assert usage["prompt_tokens"] + usage["completion_tokens"] == 1024
    assert server.token_limits == {None: 1}


def test_max_tokens_reaches_a_server_that_reads_only_max_tokens():
    with SimServer(dialect="llama-cpp", context_tokens=4096).start() as server:
        spec = ModelSpec(model="openai/sim-small", api_base=server.url, max_tokens=64, timeout_s=5)
        meter = Meter("test", max_calls=None, cost_allowance_usd=None)
        lm = LanguageModels(num_retries=0).lm(spec, meter, seed=0)
        predict = dspy.Predict("question -> answer")
        with dspy.context(lm=lm):
            for n in range(3):
                predict(question=f"What is {n} + 2?")
        stats = server.stats()
    # Every request carried the limit in the field this server reads, and every reply stayed within it.
    assert server.token_limits == {64: stats["served"]}
    assert stats["served"] >= 3
    assert stats["completion_tokens"] <= 64 * stats["served"]
    assert meter.ledger().by_model["openai/sim-small"].output_tokens == stats["completion_tokens"]


def _evaluate(server: SimServer, tmp_path: Path, **spec: Any) -> tuple[Totals, list[dict]]:
    task = load_task("arithmetic", PROJECT / "data" / "tasks")
    model = ModelSpec(model="openai/sim-large", api_base=server.url, timeout_s=5, **spec)
    lm = LanguageModels(num_retries=0).lm(model, Meter("t", max_calls=None, cost_allowance_usd=None), 0)
    out = tmp_path / "predictions.jsonl"
    with dspy.context(lm=lm):
        totals = evaluate(task.program(), task, task.examples("test", 12), threads=2, out=out)
    return totals, [json.loads(line) for line in out.read_text().splitlines()]


def test_truncated_replies_are_counted_as_truncated_not_as_wrong_answers(tmp_path: Path):
    with SimServer().start() as server:
        totals, rows = _evaluate(server, tmp_path, max_tokens=16)
        stats = server.stats()
    counts = totals.format_counts()
    # Every reply was cut off at 16 tokens; none of the failed rows is reported as a wrong answer.
    assert stats["truncated"] == stats["served"] > 0
    assert all(row["truncated"] for row in rows)
    assert counts.n_wrong == 0
    assert counts.n_truncated == sum(row["score"] < 1 for row in rows) > 0
    # A ChatAdapter parse failure is retried with the JSONAdapter: one more request for that row.
    assert counts.n_adapter_fallbacks == sum(row["adapter_fallback"] for row in rows) > 0
    assert stats["served"] == len(rows) + counts.n_adapter_fallbacks
    assert counts.format_warning is not None and "truncated" in counts.format_warning


def test_complete_replies_have_no_format_failures(tmp_path: Path):
    with SimServer().start() as server:
        totals, rows = _evaluate(server, tmp_path)
    counts = totals.format_counts()
    assert counts.n_truncated == counts.n_unparseable == counts.n_provider_failures == 0
    assert counts.n_wrong == sum(row["score"] < 1 for row in rows)
    assert counts.format_warning is None


def test_provider_failures_are_recorded_and_not_scored_as_wrong_answers(tmp_path: Path):
    # A context window the longer prompts do not fit in: the server refuses them (400), DSPy does not retry.
    with SimServer(context_tokens=215).start() as server:
        totals, rows = _evaluate(server, tmp_path)
        refused = server.stats()["rejected"]
    failed = [row for row in rows if row["error_kind"] == "provider_failure"]
    scored = [row["score"] for row in rows if row["error_kind"] != "provider_failure"]
    assert 0 < len(failed) == refused < len(rows)
    assert all(row["score"] is None and "ContextWindowExceeded" in row["error"] for row in failed)
    counts = totals.format_counts()
    assert counts.n_provider_failures == len(failed)
    assert counts.n_wrong == sum(score < 1 for score in scored)
    assert totals.score == pytest.approx(sum(scored) / len(scored))  # the mean over the answered rows
    assert scores(tmp_path / "predictions.jsonl") == {row["example_id"]: row["score"] for row in rows}


def test_a_stage2_budget_too_small_for_one_proposal_is_refused_before_any_call(lab: Lab):
    # 8 dev examples: the starting prompt's evaluation (8), one proposal (3 + 1 + 3) and its validation (8).
    lab.write("thin", stage2={"max_calls": 20})
    result = lab.run(
        "thin", ["experiment_file", "stage1_prompt", "stage2_hardened_prompt"], raise_on_error=False
    )
    # Refused before Stage 1 spends anything, not when Stage 2 starts.
    failure = result.failure_data_for_node("stage1_prompt")
    assert "stage2: max_calls=20 cannot buy one GEPA proposal" in failure.error.message
    assert "at least 23" in failure.error.message
    assert len(lab.calls("thin", "stage1")) == len(lab.calls("thin", "stage2")) == 0
    assert not (lab.runs_dir / "thin" / "stage1_prompt.json").exists()
    workspace = Workspace(data_dir=str(lab.data_dir))
    plan = forecast(workspace.experiment("thin"), workspace.task("arithmetic"))
    assert plan.refusal is not None and "cannot buy one GEPA proposal" in plan.refusal


def test_miprov2_with_an_always_unparseable_proposer_fails_with_what_to_change(lab: Lab):
    # The small model writes the proposals, in prose that ignores the output format: none can be parsed.
    with SimServer(unformatted_rate=1.0).start() as server:
        small = {"model": "openai/sim-small", "api_base": server.url, "timeout_s": 5}
        lab.write(
            "weak-proposer", small_model=small, stage1={"optimizer": "miprov2", "prompt_model": "small"}
        )
        result = lab.run("weak-proposer", ["experiment_file", "stage1_prompt"], raise_on_error=False)
        served = server.stats()["served"]
    failure = result.failure_data_for_node("stage1_prompt")
    message = failure.error.message
    assert served > 0
    assert "stage1 (miprov2): openai/sim-small wrote output DSPy could not parse" in message
    # Every reply it wrote, DSPy's JSONAdapter fallback included.
    assert f"{served} of its {served} replies in this stage could not be parsed" in message
    assert (
        "stage1: {prompt_model: large}" in message and "bootstrap_rs" in message and "max_tokens" in message
    )
    assert failure.user_failure_data.metadata["calls"].value == len(lab.calls("weak-proposer", "stage1"))


def test_weak_models_everywhere_unchanged_stage2_and_format_failures_are_flagged(
    lab: Lab, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
):
    # The story: every model reply is cut off (max_tokens 16), bootstrap_rs materializes everything.
    for name, value in lab.env().items():
        if name in ("DAGSTER_HOME", "LSL_DATA_DIR", "LSL_RUNS_DIR"):
            monkeypatch.setenv(name, value)
    with SimServer().start() as server:
        cut = {"api_base": server.url, "max_tokens": 16, "timeout_s": 5}
        lab.write(
            "weak",
            large_model={"model": "openai/sim-large", **cut},
            small_model={"model": "openai/sim-small", **cut},
            stage1={"optimizer": "bootstrap_rs"},
        )
        assert lab.run("weak").success
    stage2 = PromptCandidate.model_validate(lab.output("weak", "stage2_hardened_prompt"))
    stage1 = PromptCandidate.model_validate(lab.output("weak", "stage1_prompt"))
    assert stage2.predictors == stage1.predictors
    assert stage2.provenance.unchanged is True
    assert stage2.provenance.stop_reason.startswith("unchanged: ")
    assert "GEPA" in stage2.provenance.stop_reason
    metadata = lab.metadata("weak", "stage2_hardened_prompt")
    assert metadata["prompt_change"] == "unchanged"
    assert "openai/sim-small: " in metadata["unparseable_replies"]  # its cut-off replies
    assert metadata["stop_reason"] == stage2.provenance.stop_reason

    # Stage 2's own view of the small model: no signal (every probe reply cut off), continued under warn.
    signal = stage2.provenance.small_model_signal
    assert signal is not None and signal.probe_failed == signal.probe_n == 8
    assert signal.no_signal is not None and stage2.provenance.stop_reason.startswith(
        f"unchanged: {signal.no_signal}"
    )
    assert metadata["no_signal"] == signal.no_signal

    comparison = Comparison.model_validate(lab.output("weak", "comparison"))
    assert comparison.stage2_unchanged == stage2.provenance.stop_reason
    assert comparison.stage2_signal == signal
    assert comparison.stage2_start_val_score == stage2.provenance.start_val_score
    for arm in comparison.arms:
        rows = [
            json.loads(line)
            for line in (lab.runs_dir / lab.output("weak", _EVALUATION[arm.arm])["predictions_path"])
            .read_text()
            .splitlines()
        ]
        assert arm.n_truncated == sum(row["error_kind"] == "truncated" for row in rows) == arm.n
        assert arm.n_wrong == 0 and arm.format_warning is not None
    evaluation = lab.metadata("weak", "baseline_evaluation")
    assert evaluation["n_truncated"] == comparison.arms[0].n_truncated
    assert "format compliance" in evaluation["format_warning"]

    code, out, _ = run_cli(capsys, "results", "weak")
    assert code == 0
    assert "LSL equals the baseline by construction" in out
    assert (
        f"Stage 2 small model openai/sim-small: {signal.parse_share:.0%} of {signal.replies} replies" in out
    )
    assert f"WARNING stage2: {signal.no_signal}" in out
    for arm in comparison.arms:
        assert f"WARNING {arm.arm}: {arm.n} of {arm.n} replies (100%)" in out
        assert f"{arm.arm} ({arm.n} rows): 0 wrong, 0 unparseable, {arm.n} truncated" in out
    export = lab.runs_dir / "weak.json"
    assert run_cli(capsys, "export", "weak", "--format", "json", "-o", str(export))[0] == 0
    rows = json.loads(export.read_text())
    assert {row["arm"]: row["n_truncated"] for row in rows} == {a.arm: a.n_truncated for a in comparison.arms}
    assert all(row["stage2_unchanged"] == comparison.stage2_unchanged for row in rows)
    assert [(row["stage2_parse_share"], row["stage2_no_signal"]) for row in rows] == [
        (signal.parse_share, signal.no_signal)
    ] * len(comparison.arms)


_EVALUATION = {
    "baseline": "baseline_evaluation",
    "lsl": "stage3_evaluation",
    "budget_matched": "budget_matched_evaluation",
}


def test_the_comparison_pairs_only_examples_both_arms_answered(tmp_path: Path):
    spec = ExperimentSpec.model_validate(
        {
            "experiment_id": "pairs",
            "task": "arithmetic",
            "large_model": {"model": "sim/large"},
            "small_model": {"model": "sim/small"},
        }
    )
    provenance = {
        "stage": "stage1",
        "optimizer": "miprov2",
        "model": "sim/large",
        "seed": 0,
        # Made from the current spec and code, so the comparison's version check lets them pair.
        "spec_hash": spec.spec_hash,
        "code_version": spec.version.code_version,
    }

    def candidate(stage: str, unchanged: bool | None = None) -> PromptCandidate:
        return PromptCandidate(
            experiment_id="pairs",
            task="arithmetic",
            predictors={},
            simulated=True,
            provenance={**provenance, "stage": stage, "unchanged": unchanged, "stop_reason": "unchanged: x"},
            ledger=Ledger(stage=stage, budget_used=10),
        )

    def arm(name: str, per_example: list[float | None], prompt: PromptCandidate) -> EvaluationResult:
        path = tmp_path / f"{name}.jsonl"
        path.write_text(
            "".join(json.dumps({"example_id": f"e{i}", "score": s}) + "\n" for i, s in enumerate(per_example))
        )
        scored = [s for s in per_example if s is not None]
        return EvaluationResult(
            experiment_id="pairs",
            arm=name,
            model="sim/large",
            split="test",
            n=len(per_example),
            score=sum(scored) / len(scored),
            n_errors=0,
            n_provider_failures=len(per_example) - len(scored),
            predictions_path=str(path),
            ledger=Ledger(stage=name),
            simulated=True,
            version=spec.version,
            prompt_digest=prompt.digest,
        )

    stage1, stage2 = candidate("stage1"), candidate("stage2", unchanged=True)
    budget_matched = candidate("budget_matched")
    baseline = arm("baseline", [1, 0, None, 1, 0, 1], stage1)
    lsl = arm("lsl", [1, 1, 1, None, 0, 1], stage2)  # e2 and e3 were answered by one arm only
    matched = arm("budget_matched", [0, 0, 1, 1, 0, 1], budget_matched)
    result = compare(
        spec,
        {"stage1_prompt": stage1, "stage2_hardened_prompt": stage2, "budget_matched_prompt": budget_matched},
        {"baseline_evaluation": baseline, "stage3_evaluation": lsl, "budget_matched_evaluation": matched},
    )
    lsl_vs_baseline = next(d for d in result.differences if (d.arm, d.baseline) == ("lsl", "baseline"))
    assert lsl_vs_baseline.n == 4  # e0, e1, e4, e5
    assert lsl_vs_baseline.diff == pytest.approx((0 + 1 + 0 + 0) / 4)
    assert {a.arm: a.n_provider_failures for a in result.arms} == {
        "baseline": 1,
        "lsl": 1,
        "budget_matched": 0,
    }
    assert result.stage2_unchanged == "unchanged: x"
