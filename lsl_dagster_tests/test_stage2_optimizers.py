"""Stage 2's optimizer is selectable (GEPA by default, MIPROv2, SIMBA), with Stage 1's budget semantics:
max_calls is a hard limit, a budget stop keeps the best validated candidate, and the budget-matched arm
gets what Stage 1 + Stage 2 used."""

from typing import get_args

import pytest
import yaml

from lsl_dagster.defs.resources import Workspace
from lsl_dagster.llm.language_models import LanguageModels
from lsl_dagster.method import stages
from lsl_dagster.method.optimizers import OPTIMIZERS, simba
from lsl_dagster.method.optimizers.base import Budget
from lsl_dagster.method.plan import forecast, render
from lsl_dagster.method.prompts import capture
from lsl_dagster.records import Ledger, PromptCandidate, Provenance
from lsl_dagster.sim.server import SimServer
from lsl_dagster.spec.campaign_files import CampaignError, cell_of, expand, load_campaign
from lsl_dagster.spec.experiment import SIMULATED, HardeningOptimizer, Optimizer
from lsl_dagster_tests.conftest import Lab

STAGE2_CALLS = 60


@pytest.mark.parametrize("optimizer", ["miprov2", "simba"])
def test_stage2_hardens_with_the_chosen_optimizer_within_its_calls(lab: Lab, optimizer: str):
    experiment_id = f"harden-{optimizer}"
    lab.write(experiment_id, stage2={"optimizer": optimizer, "max_calls": STAGE2_CALLS})
    assert lab.run(experiment_id).success

    stage1 = PromptCandidate.model_validate(lab.output(experiment_id, "stage1_prompt"))
    stage2 = PromptCandidate.model_validate(lab.output(experiment_id, "stage2_hardened_prompt"))
    assert stage2.provenance.optimizer == optimizer
    assert lab.metadata(experiment_id, "stage2_hardened_prompt")["optimizer"] == optimizer
    assert (stage2.provenance.stage, stage2.provenance.parent, stage2.provenance.model) == (
        "stage2",
        "stage1",
        "sim/small",
    )
    # Whether hardening changed the prompt is recorded as it is, and said why when it did not.
    assert stage2.provenance.unchanged is (stage2.predictors == stage1.predictors)
    if stage2.provenance.unchanged:
        assert stage2.provenance.stop_reason.startswith("unchanged: ")
    if optimizer == "miprov2":
        # Instructions only: Stage 1's demos, chosen on the large model, stay as they were.
        assert {n: p.demos for n, p in stage2.predictors.items()} == {
            n: p.demos for n, p in stage1.predictors.items()
        }
    # The dev-set scores of the starting and the returned program, both measured.
    assert stage2.provenance.start_val_score is not None and stage2.provenance.val_score is not None
    assert stage2.provenance.val_score >= stage2.provenance.start_val_score

    # max_calls is a hard limit: what the call log and the ledger say the stage sent.
    sent = len(lab.calls(experiment_id, "stage2"))
    assert 0 < sent <= stage2.ledger.budget_used <= STAGE2_CALLS == stage2.ledger.max_calls
    # The budget-matched arm: Stage 1's optimizer with what Stage 1 and this Stage 2 used.
    matched = PromptCandidate.model_validate(lab.output(experiment_id, "budget_matched_prompt"))
    assert matched.provenance.optimizer == "miprov2"
    assert matched.ledger.max_calls == stage1.ledger.budget_used + stage2.ledger.budget_used
    assert matched.ledger.budget_used <= matched.ledger.max_calls


def test_a_simba_cut_off_by_its_budget_keeps_the_validated_starting_prompt(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
):
    # A SIMBA planned far past the budget (its own sizing never plans that): the meter stops it mid-way.
    monkeypatch.setattr(
        simba,
        "simba_plan",
        lambda *_: simba.SimbaPlan(bsize=8, num_candidates=4, max_steps=8, train=12, runs=10**4),
    )
    lab.write("cut", stage2={"optimizer": "simba", "max_calls": 40})
    workspace = Workspace(data_dir=str(lab.data_dir), runs_dir=str(lab.runs_dir))
    spec = workspace.experiment("cut")
    task = workspace.task(spec.task)
    provenance = Provenance(stage="stage1", optimizer="none", model="sim/large", seed=0, spec_hash="x")
    stage1 = capture(task.program(), task, "cut", provenance, Ledger(stage="stage1"), True)
    with workspace.stage(spec, "stage2", LanguageModels(), spec.stage2.max_calls) as run:
        hardened = stages.stage2_harden(spec, task, stage1, run)
    assert hardened.ledger.budget_used == 40 == hardened.ledger.max_calls
    assert len(lab.calls("cut", "stage2")) == 40
    assert "max_calls" in hardened.provenance.stop_reason
    # The starting prompt was scored on the dev set first; nothing validated beat it before the stop.
    assert hardened.predictors == stage1.predictors and hardened.provenance.unchanged is True
    assert hardened.provenance.val_score == hardened.provenance.start_val_score is not None


def test_a_stage2_budget_too_small_for_one_simba_step_is_refused_before_any_call(lab: Lab):
    # 8 dev examples: scoring the starting and the final program takes 16 runs, one step on 2 more.
    lab.write("thin-simba", stage2={"optimizer": "simba", "max_calls": 25})
    result = lab.run(
        "thin-simba", ["experiment_file", "stage1_prompt", "stage2_hardened_prompt"], raise_on_error=False
    )
    # Refused before Stage 1 spends anything.
    failure = result.failure_data_for_node("stage1_prompt")
    assert "stage2: max_calls=25 cannot buy one SIMBA step" in failure.error.message
    assert "at least 37" in failure.error.message
    assert len(lab.calls("thin-simba", "stage1")) == len(lab.calls("thin-simba", "stage2")) == 0


def test_simba_is_sized_to_fit_its_budget():
    for max_calls, calls_per_run, n_train, n_val in [(60, 1, 12, 8), (200, 1, 40, 30), (150, 3, 20, 10)]:
        plan = simba.simba_plan("stage2", max_calls, calls_per_run, n_train, n_val)
        assert plan.runs * calls_per_run <= max_calls
        assert plan.bsize <= plan.train <= n_train
        assert plan.runs == simba.simba_runs(
            plan.bsize, plan.num_candidates, plan.max_steps, plan.train, n_val
        )
    # A larger budget buys more steps or larger minibatches.
    small, large = (simba.simba_plan("stage2", c, 1, 40, 30) for c in (200, 2000))
    assert large.max_steps * large.bsize > small.max_steps * small.bsize


def test_the_optimizers_files_may_name_are_the_ones_the_table_runs():
    assert set(get_args(Optimizer)) == set(OPTIMIZERS) >= set(get_args(HardeningOptimizer))


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_plans_its_calls_within_a_roomy_budget(name: str):
    for max_calls, calls_per_run in [(200, 1), (1000, 1), (600, 2)]:
        optimizer = OPTIMIZERS[name](Budget("stage1", max_calls, calls_per_run, n_train=40, n_val=30))
        # Planned so the meter's hard limit does not cut it off before it has validated what it found.
        assert 0.8 * max_calls <= optimizer.planned_calls <= max_calls


def test_stage2_with_miprov2_and_an_unparseable_proposer_says_what_to_change(lab: Lab):
    # The small model both runs the program and writes the proposals, in prose DSPy cannot parse.
    with SimServer(unformatted_rate=1.0).start() as server:
        small = {"model": "openai/sim-small", "api_base": server.url, "timeout_s": 5}
        lab.write(
            "weak-hardener",
            small_model=small,
            stage2={"optimizer": "miprov2", "reflection": "small", "max_calls": STAGE2_CALLS},
        )
        result = lab.run(
            "weak-hardener",
            ["experiment_file", "stage1_prompt", "stage2_hardened_prompt"],
            raise_on_error=False,
        )
    message = result.failure_data_for_node("stage2_hardened_prompt").error.message
    assert "stage2 (miprov2): openai/sim-small wrote output DSPy could not parse" in message
    assert "`stage2: {reflection: large}`" in message and "`stage2: {optimizer: gepa}`" in message
    assert "stage1:" not in message


def test_lsl_plan_names_each_stages_optimizer(lab: Lab):
    lab.write("planned-simba", stage1={"optimizer": "gepa"}, stage2={"optimizer": "simba"})
    workspace = Workspace(data_dir=str(lab.data_dir), runs_dir=str(lab.runs_dir))
    spec = workspace.experiment("planned-simba")
    plan = forecast(spec, workspace.task(spec.task))
    assert {s.stage: s.optimizer for s in plan.stages} == {
        "stage1": "gepa",
        "stage2": "simba",
        "budget_matched": "gepa",
        "baseline_evaluation": None,
        "stage3_evaluation": None,
        "budget_matched_evaluation": None,
    }
    text = render(plan)
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.strip()}
    assert rows["stage2"][1] == "60" and rows["stage2"][-1] == "simba"
    assert f"{SIMULATED}: the sim's prices are made up" in text  # sim/large and sim/small
    assert rows["budget_matched"][1] == str(80 + 60) and rows["budget_matched"][-1] == "gepa"


def test_a_campaign_grid_may_vary_the_stage2_optimizer(lab: Lab):
    path = lab.data_dir / "campaigns" / "hardeners.yaml"
    path.parent.mkdir(exist_ok=True)
    campaign = {
        "campaign": "hardeners",
        "tasks": ["arithmetic"],
        "model_pairs": [
            {"name": "l-s", "large_model": {"model": "sim/large"}, "small_model": {"model": "sim/small"}}
        ],
        "optimizers": ["miprov2", "simba"],
        "stage2_optimizers": ["gepa", "simba"],
        "seeds": [0],
        "experiment": {"stage2": {"max_calls": 90}},
    }
    path.write_text(yaml.safe_dump(campaign))
    specs = expand(load_campaign(path), path, lab.data_dir / "tasks")
    assert {e: (s.stage1.optimizer, s.stage2.optimizer, s.stage2.max_calls) for e, s in specs.items()} == {
        "hardeners--arithmetic--l-s--miprov2-gepa--s0": ("miprov2", "gepa", 90),
        "hardeners--arithmetic--l-s--miprov2-simba--s0": ("miprov2", "simba", 90),
        "hardeners--arithmetic--l-s--simba-gepa--s0": ("simba", "gepa", 90),
        "hardeners--arithmetic--l-s--simba-simba--s0": ("simba", "simba", 90),
    }
    assert cell_of("hardeners--arithmetic--l-s--simba-gepa--s0")[2] == "simba-gepa"
    # Without the axis, the campaign's shared stage2 settings choose it and ids name Stage 1's alone.
    del campaign["stage2_optimizers"]
    campaign["experiment"]["stage2"]["optimizer"] = "miprov2"
    path.write_text(yaml.safe_dump(campaign))
    specs = expand(load_campaign(path), path, lab.data_dir / "tasks")
    assert {e: s.stage2.optimizer for e, s in specs.items()} == {
        "hardeners--arithmetic--l-s--miprov2--s0": "miprov2",
        "hardeners--arithmetic--l-s--simba--s0": "miprov2",
    }
    # bootstrap_rs writes no instructions: it cannot harden a prompt.
    campaign["stage2_optimizers"] = ["bootstrap_rs"]
    path.write_text(yaml.safe_dump(campaign))
    with pytest.raises(CampaignError, match="stage2_optimizers"):
        load_campaign(path)
