"""Real HTTP client path against the sim server: faults, hard budgets, exact accounting, no leaked keys."""

import json
from pathlib import Path

import pytest

from lsl_dagster.defs.resources import Workspace
from lsl_dagster.method.plan import forecast
from lsl_dagster.records import Comparison, EvaluationResult, PromptCandidate
from lsl_dagster.sim.server import SimServer
from lsl_dagster.sim.tiers import TIERS
from lsl_dagster_tests.conftest import Lab, shipped_keys

SECRET = "sk-test-4f1c2a9e7d3b-do-not-leak"


def _http(server: SimServer, tier: str, **extra) -> dict:
    price = TIERS[tier].price
    return {
        "model": f"openai/sim-{tier}",
        "api_base": server.url,
        "api_key_env": "SIM_SERVER_KEY",
        "timeout_s": 2.0,
        "max_concurrency": 4,
        "price": {"input_per_mtok": price.input_per_mtok, "output_per_mtok": price.output_per_mtok},
        **extra,
    }


@pytest.fixture
def keyed_server(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SIM_SERVER_KEY", SECRET)
    with SimServer(api_key=SECRET, latency_s=0.002, answer_keys=shipped_keys()).start() as server:
        yield server


def test_full_experiment_over_http_accounts_exactly_and_leaks_no_key(
    lab: Lab, keyed_server: SimServer, capfd: pytest.CaptureFixture
):
    lab.write("http-1", large_model=_http(keyed_server, "large"), small_model=_http(keyed_server, "small"))
    assert lab.run("http-1").success

    stats = keyed_server.stats()
    calls = lab.calls("http-1")
    # The ledger's totals are what the server counted: calls, tokens and provider-reported cost.
    assert sum(r["ok"] for r in calls) == stats["served"]
    assert len(calls) == stats["requests"]
    assert sum(r["input_tokens"] for r in calls) == stats["prompt_tokens"]
    assert sum(r["cost_usd"] for r in calls if r["ok"]) == pytest.approx(stats["cost_usd"])
    assert {r["cost_source"] for r in calls if r["ok"]} == {"provider"}
    comparison = Comparison.model_validate(lab.output("http-1", "comparison"))
    assert sum(ledger.calls for ledger in comparison.usage.values()) == stats["served"]
    assert sum(ledger.cost_usd for ledger in comparison.usage.values()) == pytest.approx(stats["cost_usd"])
    # Per-model concurrency held (4 each, two models at most in one stage).
    assert stats["max_in_flight"] <= 8

    secret = SECRET.encode()
    for root in (lab.data_dir, lab.runs_dir, Path(lab.instance.root_directory)):
        for path in root.rglob("*"):
            if path.is_file():
                assert secret not in path.read_bytes(), f"the key leaked into {path}"
    out, err = capfd.readouterr()
    assert SECRET not in out and SECRET not in err


@pytest.mark.parametrize(
    "fault", ["429", "500", "502", "503", "malformed", "reset", "hang", "empty_choices", "null_content"]
)
def test_every_fault_kind_is_survived(lab: Lab, fault: str):
    # Every 7th request fails with `fault`; DSPy retries (honouring Retry-After) and the run completes.
    # A hang outlasts the run (stop() ends it unanswered): with 5 s, a slow machine saw a hung request
    # answered after its client had given up, and the server counted it served.
    with SimServer(fault_rate=1 / 7, fault_kinds=[fault], retry_after_s=0.05, hang_s=120).start() as server:
        spec = {"model": "openai/sim-small", "api_base": server.url, "timeout_s": 0.5, "max_concurrency": 4}
        lab.write("faulty", small_model=spec, stage2={"max_calls": 40})
        assert lab.run("faulty", ["experiment_file", "stage1_prompt", "stage2_hardened_prompt"]).success
        stats = server.stats()
    assert stats["faults"].get(fault, 0) > 0
    stage2 = PromptCandidate.model_validate(lab.output("faulty", "stage2_hardened_prompt"))
    usage = stage2.ledger.by_model["openai/sim-small"]
    assert usage.failed_attempts == stats["requests"] - stats["served"]
    assert usage.calls == stats["served"]
    assert stage2.ledger.requests <= 40


def test_a_provider_that_keeps_failing_fails_the_step_with_its_ledger(lab: Lab):
    with SimServer(fault_rate=1.0, fault_kinds=["503"]).start() as server:
        lab.write("down", small_model={"model": "openai/sim-small", "api_base": server.url})
        result = lab.run(
            "down",
            ["experiment_file", "stage1_prompt", "stage2_hardened_prompt"],
            raise_on_error=False,
            num_retries=1,
        )
        requests = server.stats()["requests"]
    assert not result.success
    failure = result.failure_data_for_node("stage2_hardened_prompt")
    assert "provider kept failing after retries" in failure.error.message
    assert failure.user_failure_data.metadata["requests"].value == requests > 0
    ledger = json.loads((lab.runs_dir / "down" / "ledgers" / "stage2.json").read_text())
    assert ledger["by_model"]["openai/sim-small"]["failed_attempts"] == requests
    assert not (lab.runs_dir / "down" / "stage2_hardened_prompt.json").exists()


def test_max_calls_is_never_exceeded_and_the_best_candidate_is_kept(lab: Lab, sim_server: SimServer):
    # A budget the planned MIPROv2 run does not fit in: it stops mid-search with what it validated.
    lab.write(
        "tight",
        large_model={"model": "openai/sim-large", "api_base": sim_server.url},
        stage1={"max_calls": 40},
        data={"val": 20},
    )
    assert lab.run("tight", ["experiment_file", "stage1_prompt"]).success
    stage1 = PromptCandidate.model_validate(lab.output("tight", "stage1_prompt"))
    assert stage1.ledger.requests == sim_server.stats()["requests"] == 40
    assert "max_calls=40 reached" in stage1.ledger.stop_reason
    assert stage1.provenance.val_score is not None
    assert "max_calls=40 reached" in lab.metadata("tight", "stage1_prompt")["stop_reason"]


def test_a_budget_too_small_for_any_candidate_fails_clearly(lab: Lab):
    lab.write("tiny", stage1={"max_calls": 10})
    result = lab.run("tiny", ["experiment_file", "stage1_prompt"], raise_on_error=False)
    failure = result.failure_data_for_node("stage1_prompt")
    assert "max_calls=10 reached before stage1 had a result to keep" in failure.error.message
    assert failure.user_failure_data.metadata["requests"].value == 10


def test_max_cost_usd_is_never_exceeded(lab: Lab, sim_server: SimServer):
    spec = {"large_model": _http(sim_server, "large", api_key_env=None), "evaluation": {"limit": 200}}
    lab.write("capped", **spec)
    workspace = Workspace(data_dir=str(lab.data_dir))
    plan = forecast(workspace.experiment("capped"), workspace.task("arithmetic"))
    # The evaluations' worst case is reserved up front; the optimizers get a sliver of the cap.
    cap = plan.evaluations_worst_usd + 0.12
    lab.write("capped", **spec, max_cost_usd=cap)
    result = lab.run("capped", raise_on_error=False)
    calls = [r for r in lab.calls("capped") if r["ok"]]
    over_http = sum(r["cost_usd"] for r in calls if r["model"] == "openai/sim-large")
    assert over_http == pytest.approx(sim_server.stats()["cost_usd"])
    # Both models' spend (the small one runs in process) stays within the experiment's cap.
    assert 0 < sum(r["cost_usd"] for r in calls) <= cap
    # A capped experiment still ends with a comparison, and the stage the cap stopped says so.
    assert result.success
    reasons = {
        a: PromptCandidate.model_validate(lab.output("capped", a)).ledger.stop_reason or ""
        for a in ("stage1_prompt", "stage2_hardened_prompt", "budget_matched_prompt")
    }
    assert [a for a, why in reasons.items() if "max_cost_usd" in why], reasons
    assert lab.output("capped", "comparison")["arms"]


def test_the_budget_matched_arm_gets_what_stage1_and_stage2_used(lab: Lab):
    lab.write("matched")
    assert lab.run("matched").success
    stage1 = PromptCandidate.model_validate(lab.output("matched", "stage1_prompt"))
    stage2 = PromptCandidate.model_validate(lab.output("matched", "stage2_hardened_prompt"))
    matched = PromptCandidate.model_validate(lab.output("matched", "budget_matched_prompt"))
    assert matched.ledger.max_calls == stage1.ledger.budget_used + stage2.ledger.budget_used
    assert matched.ledger.budget_used <= matched.ledger.max_calls
    comparison = Comparison.model_validate(lab.output("matched", "comparison"))
    budgets = {arm.arm: arm.optimization_calls for arm in comparison.arms}
    assert budgets == {
        "baseline": stage1.ledger.budget_used,
        "lsl": stage1.ledger.budget_used + stage2.ledger.budget_used,
        "budget_matched": matched.ledger.budget_used,
    }
    evaluation = EvaluationResult.model_validate(lab.output("matched", "budget_matched_evaluation"))
    assert evaluation.arm == "budget_matched" and evaluation.n == 40
