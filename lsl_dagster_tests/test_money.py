"""Never pay twice: one response cache per experiment, keyed by the request and the endpoint, counted at
the server."""

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dagster import AssetKey, AssetRecordsFilter

from lsl_dagster.defs.resources import Workspace
from lsl_dagster.llm.language_models import LanguageModels
from lsl_dagster.method import stages
from lsl_dagster.method.plan import ASSUMED_DISCORDANCE, forecast
from lsl_dagster.method.prompts import capture
from lsl_dagster.records import Comparison, Ledger, PromptCandidate, Provenance
from lsl_dagster.results import stats
from lsl_dagster.sim.server import SimServer
from lsl_dagster.sim.tiers import TIERS
from lsl_dagster.tasks.task import load_task
from lsl_dagster_tests.conftest import FAST, Lab


def _http(server: SimServer, tier: str, **extra) -> dict:
    price = TIERS[tier].price
    return {
        "model": f"openai/sim-{tier}",
        "api_base": server.url,
        "max_concurrency": 4,
        "price": {"input_per_mtok": price.input_per_mtok, "output_per_mtok": price.output_per_mtok},
        **extra,
    }


def test_no_request_is_paid_twice_across_stages_and_arms(lab: Lab, sim_server: SimServer):
    lab.write("once", large_model=_http(sim_server, "large"), small_model=_http(sim_server, "small"))
    assert lab.run("once").success

    served, distinct = sim_server.served, len(sim_server.served_requests)
    repeats = sim_server.repeats_by_temperature
    assert served - distinct == sum(repeats.values())
    # A repeated body is only ever one of DSPy's deliberate resamples: a new rollout_id at temperature 1
    # (MIPROv2 asking for another instruction proposal), which DSPy keys apart on purpose. Everything
    # else the experiment asks, in every stage and arm, reached the server exactly once.
    assert all(float(temperature) > 0 for temperature in repeats), repeats
    resampled = sum(repeats.values())
    assert resampled <= 8, repeats

    comparison = Comparison.model_validate(lab.output("once", "comparison"))
    paid = sum(ledger.calls for ledger in comparison.usage.values())
    assert paid == served
    # The budget-matched arm retraced Stage 1 for free, and those replays still counted against its budget.
    matched = PromptCandidate.model_validate(lab.output("once", "budget_matched_prompt"))
    replayed = sum(u.replayed for u in matched.ledger.by_model.values())
    assert replayed > 0
    assert matched.ledger.budget_used >= replayed + matched.ledger.requests
    assert matched.ledger.budget_used <= matched.ledger.max_calls


def test_rerunning_an_experiment_after_deleting_its_outputs_pays_nothing(lab: Lab, sim_server: SimServer):
    lab.write("again", large_model=_http(sim_server, "large"), small_model=_http(sim_server, "small"))
    assert lab.run("again").success
    first = lab.output("again", "comparison")
    served = sim_server.served
    for path in (lab.runs_dir / "again").glob("*.json"):
        path.unlink()  # the assets, not the response cache
    assert lab.run("again").success
    assert sim_server.served == served  # every request replayed from the experiment's cache
    again = lab.output("again", "comparison")
    assert [a["score"] for a in again["arms"]] == [a["score"] for a in first["arms"]]


def test_the_same_model_name_on_another_server_is_not_served_from_the_cache(lab: Lab):
    with SimServer().start() as first, SimServer().start() as second:
        lab.write("moved", large_model=_http(first, "large"), small_model=_http(first, "small"))
        assert lab.run("moved", ["experiment_file", "stage1_prompt"]).success
        assert first.served > 0
        lab.write("moved", large_model=_http(second, "large"), small_model=_http(second, "small"))
        assert lab.run("moved", ["experiment_file", "stage1_prompt"]).success
        # The endpoint is part of the cache key: the second server answered everything itself.
        assert second.served == first.served
    calls = [json.loads(line) for line in (lab.runs_dir / "moved" / "calls.jsonl").read_text().splitlines()]
    assert sum(1 for c in calls if c.get("ok")) == first.served + second.served


@pytest.mark.parametrize("threads", [8, 64])
def test_an_evaluation_holds_few_file_descriptors(lab: Lab, threads: int):
    lab.write(
        "fds", large_model={"model": "sim/large", "max_concurrency": threads}, evaluation={"limit": 300}
    )
    workspace = Workspace(data_dir=str(lab.data_dir), runs_dir=str(lab.runs_dir))
    spec = workspace.experiment("fds")
    task = workspace.task(spec.task)
    provenance = Provenance(stage="t", optimizer="none", model="sim/large", seed=0, spec_hash=spec.spec_hash)
    candidate = capture(task.program(), task, "fds", provenance, Ledger(stage="t"), True)
    with workspace.stage(spec, "baseline_evaluation", LanguageModels(), None) as run:
        result = stages.evaluate_on_large(spec, task, candidate, "baseline", run, lab.runs_dir / "p.jsonl")
        held = [path for path in _open_files() if "responses.sqlite" in path]
    assert result.n == 300
    assert len(held) <= 3, held  # one SQLite connection: the database, its WAL and shared-memory files


def _open_files() -> list[str]:
    paths = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # closed since listed
            paths.append(os.readlink(f"/proc/self/fd/{fd}"))
    return paths


def _plan(lab: Lab, experiment_id: str) -> subprocess.CompletedProcess[str]:
    """`lsl plan <experiment_id>`, which must succeed."""
    done = subprocess.run(
        [str(Path(sys.executable).with_name("lsl")), "plan", experiment_id],
        env=lab.env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done


def test_lsl_plan_forecasts_every_stage_without_calling_a_model(lab: Lab, sim_server: SimServer):
    lab.write(
        "planned",
        large_model=_http(sim_server, "large"),
        small_model=_http(sim_server, "small"),
        max_cost_usd=50.0,
    )
    done = _plan(lab, "planned")
    rows = {line.split()[0]: line.split() for line in done.stdout.splitlines() if line.strip()}
    for stage in ("stage1", "stage2", "budget_matched", "baseline_evaluation", "stage3_evaluation"):
        assert stage in rows
    assert rows["stage1"][1] == "80" and rows["baseline_evaluation"][1] == "40"
    assert rows["total"][1] == str(80 + 60 + 140 + 3 * 40)
    # 40 examples cannot find even a difference of 0.2 with 80% power at 0.05/3 (that needs ~45).
    assert stats.detectable_difference(40, ASSUMED_DISCORDANCE, 0.05 / 3) is None
    assert "Power: 40 examples per arm are too few to find any paired difference" in done.stdout
    assert "raise evaluation.limit" in done.stdout
    lab.write("planned_larger", evaluation={"limit": 200})
    larger = _plan(lab, "planned_larger")
    detectable = stats.detectable_difference(200, ASSUMED_DISCORDANCE, 0.05 / 3)
    assert detectable is not None and 0.05 < detectable < 0.2
    assert f"with 200 examples per arm, a paired difference of {detectable:.3f} or more" in larger.stdout
    # The same numbers are metadata of the experiment file's observation.
    assert lab.run("planned", ["experiment_file"]).success
    filter_ = AssetRecordsFilter(asset_key=AssetKey("experiment_file"), asset_partitions=["planned"])
    observed = [
        r.asset_observation.metadata for r in lab.instance.fetch_observations(filter_, limit=10).records
    ]
    plan = next(m for m in observed if "plan_calls" in m)
    assert plan["plan_calls"].value == 400 and plan["plan_stage1_calls"].value == 80
    assert "plan_detectable_difference" not in plan  # no number to record
    assert sim_server.stats()["requests"] == 0  # a forecast, not a run


def test_a_cap_too_small_for_the_evaluations_is_refused_before_any_call(lab: Lab, sim_server: SimServer):
    lab.write(
        "broke",
        large_model=_http(sim_server, "large"),
        small_model=_http(sim_server, "small"),
        max_cost_usd=1.0,
    )
    plan = forecast(
        Workspace(data_dir=str(lab.data_dir)).experiment("broke"),
        load_task("arithmetic", lab.data_dir / "tasks"),
    )
    needed = plan.evaluations_worst_usd
    assert needed is not None and needed > 1.0
    result = lab.run("broke", raise_on_error=False)
    assert not result.success
    assert sim_server.stats()["requests"] == 0
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = failure.event_specific_data.error.message
    assert "cannot cover the three evaluations" in message and f"${needed:.4f}" in message


def test_a_tight_cap_still_ends_with_a_comparison(lab: Lab, sim_server: SimServer):
    spec = {"large_model": _http(sim_server, "large"), "small_model": _http(sim_server, "small")}
    lab.write("tight", **spec)
    plan = forecast(
        Workspace(data_dir=str(lab.data_dir)).experiment("tight"),
        load_task("arithmetic", lab.data_dir / "tasks"),
    )
    # Enough for the evaluations' worst case and a sliver of optimization: the optimizers must stop early.
    cap = plan.evaluations_worst_usd + 0.05
    lab.write("tight", **spec, max_cost_usd=cap)
    assert lab.run("tight").success

    comparison = Comparison.model_validate(lab.output("tight", "comparison"))
    assert {arm.arm: arm.n for arm in comparison.arms} == {"baseline": 40, "lsl": 40, "budget_matched": 40}
    stops = [comparison.usage[s].stop_reason or "" for s in ("stage1", "stage2", "budget_matched")]
    assert any("max_cost_usd reached" in reason for reason in stops), stops
    spent = sum(
        r["cost_usd"] or 0
        for r in map(json.loads, (lab.runs_dir / "tight" / "calls.jsonl").read_text().splitlines())
        if "event" not in r
    )
    assert 0 < spent <= cap
    assert spent == pytest.approx(sim_server.stats()["cost_usd"])


def test_a_campaign_cap_holds_across_its_experiments(lab: Lab):
    cap = 0.2
    path = lab.data_dir / "campaigns" / "capped.yaml"
    path.parent.mkdir(exist_ok=True)
    experiment = {k: v for k, v in FAST.items() if k not in ("task", "large_model", "small_model", "seed")}
    pair = {"name": "l-s", "large_model": {"model": "sim/large"}, "small_model": {"model": "sim/small"}}
    path.write_text(
        yaml.safe_dump(
            {
                "campaign": "capped",
                "tasks": ["arithmetic"],
                "model_pairs": [pair],
                "seeds": [0, 1],
                "experiment": experiment,
                "max_cost_usd": cap,
            }
        )
    )
    ids = [f"capped--arithmetic--l-s--miprov2--s{seed}" for seed in (0, 1)]
    for experiment_id in ids:
        lab.run(experiment_id, raise_on_error=False)
    spent = sum(
        record["cost_usd"] or 0.0
        for experiment_id in ids
        for record in map(json.loads, (lab.runs_dir / experiment_id / "calls.jsonl").read_text().splitlines())
        if "event" not in record
    )
    # One experiment costs about $0.14 on the sim prices: the second one ran out of what the first left.
    assert 0.1 < spent <= cap
    second = (lab.runs_dir / ids[1] / "ledgers").glob("*.json")
    assert any("max_cost_usd reached" in (json.loads(p.read_text())["stop_reason"] or "") for p in second)
    assert not (lab.runs_dir / "capped" / "budget").exists() or not list(
        (lab.runs_dir / "capped" / "budget").glob("*.json")
    )
