"""A researcher's own program, metric and data, end to end: the shipped tasks whose program.py lives in
their task directory run through every stage, on the sim models in process and over HTTP."""

import json

import yaml

from lsl_dagster.cli.campaign import campaign_table
from lsl_dagster.method.prompts import capture, rebuild
from lsl_dagster.records import Comparison, PromptCandidate
from lsl_dagster.results.summary import example_scores, summarize
from lsl_dagster.sim.server import SimServer
from lsl_dagster.spec.experiment_files import campaigns
from lsl_dagster.tasks.task import load_task
from lsl_dagster_tests.conftest import PROJECT, Lab

REVIEWS = {
    "task": "reviews",
    "stage1": {"max_calls": 120},
    "stage2": {"max_calls": 100},
    "data": {"train": 12, "val": 8},
    "evaluation": {"limit": 30},
}
PROMPTS = ("stage1_prompt", "stage2_hardened_prompt", "budget_matched_prompt")


def _check_prompts_and_comparison(
    lab: Lab, experiment_id: str, predictors: set[str], limit: int
) -> Comparison:
    task = load_task(lab.output(experiment_id, "comparison")["task"], lab.data_dir / "tasks")
    fresh = task.program()
    for asset in PROMPTS:
        candidate = PromptCandidate.model_validate(lab.output(experiment_id, asset))
        assert set(candidate.predictors) == predictors, asset
        for name, predictor in fresh.named_predictors():
            stored = candidate.predictors[name]
            # Every field of each predictor's signature, with its description, and instructions to show.
            assert list(stored.field_descriptions) == list(predictor.signature.fields), (asset, name)
            assert stored.instructions.strip(), (asset, name)
        # What is stored is exactly what runs: rebuilding it and capturing again changes nothing.
        again = capture(
            rebuild(candidate, task),
            task,
            experiment_id,
            candidate.provenance,
            candidate.ledger,
            candidate.simulated,
        )
        assert again == candidate, asset
        shown = lab.metadata(experiment_id, asset)["prompt"]
        assert all(f"### Predictor `{name}`" in shown for name in predictors)

    comparison = Comparison.model_validate(lab.output(experiment_id, "comparison"))
    assert {a.arm: a.n for a in comparison.arms} == {"baseline": limit, "lsl": limit, "budget_matched": limit}
    assert [d.n for d in comparison.differences] == [limit] * 3
    expected_ids = [e.id for e in task.examples("test", limit)]
    for arm in ("baseline", "stage3", "budget_matched"):
        evaluation = lab.output(experiment_id, f"{arm}_evaluation")
        predictions = lab.runs_dir / evaluation["predictions_path"]  # stored relative to the runs dir
        rows = [json.loads(line) for line in predictions.read_text().splitlines()]
        assert [r["example_id"] for r in rows] == expected_ids
        gold = {e.id: e.labels for e in task.examples("test", limit)}
        assert all(r["gold"] == gold[r["example_id"]] for r in rows)
        assert all(set(r["prediction"]) == set(task.label_fields) for r in rows)
        assert sum(r["score"] for r in rows) / limit == evaluation["score"]
    return comparison


def test_a_csv_task_with_its_own_program_and_metric_runs_end_to_end_on_the_sim(lab: Lab):
    lab.write("reviews-1", **REVIEWS)
    assert lab.run("reviews-1").success
    _check_prompts_and_comparison(lab, "reviews-1", {"extract_aspect", "judge_sentiment.predict"}, 30)
    # Two predictors: each program run is two calls, and every call went through the ledger.
    stage3 = lab.output("reviews-1", "stage3_evaluation")
    assert sum(u["calls"] + u["cache_hits"] for u in stage3["ledger"]["by_model"].values()) == 2 * 30


def test_the_same_task_runs_against_the_sim_http_server(lab: Lab, sim_server: SimServer):
    models = {"model": "openai/sim-large", "api_base": sim_server.url}
    small = {"model": "openai/sim-small", "api_base": sim_server.url}
    lab.write("reviews-http", **REVIEWS, large_model=models, small_model=small)
    assert lab.run("reviews-http").success
    comparison = _check_prompts_and_comparison(
        lab, "reviews-http", {"extract_aspect", "judge_sentiment.predict"}, 30
    )
    # Every request the ledgers counted reached the server, and nothing else did.
    assert sim_server.stats()["requests"] == sum(ledger.requests for ledger in comparison.usage.values()) > 0


def test_the_shipped_multi_hop_program_runs_end_to_end(lab: Lab):
    lab.write(
        "hop-1",
        task="hop_qa",
        stage1={"max_calls": 150},
        stage2={"max_calls": 150},
        data={"train": 10, "val": 6},
        evaluation={"limit": 20},
    )
    assert lab.run("hop-1").success
    _check_prompts_and_comparison(lab, "hop-1", {"generate_query", "generate_query2", "answer.predict"}, 20)


def test_campaign_intervals_move_when_only_the_data_seed_changes(lab: Lab):
    """Each seed draws its own train and dev examples: with everything else equal, another data seed gives
    other optimized prompts and so other intervals; the test examples stay the same."""
    summaries = []
    for data_seed in (100, 200):
        ids = [f"data{data_seed}--arithmetic--l-s--miprov2--s{seed}" for seed in (0, 1)]
        for experiment_id, seed in zip(ids, (0, 1), strict=True):
            lab.write(experiment_id, seed=seed, data={"train": 12, "val": 8, "seed": data_seed})
            assert lab.run(experiment_id).success
        comparisons = {e: Comparison.model_validate(lab.output(e, "comparison")) for e in ids}
        scores = example_scores(comparisons, lambda stored: str(lab.runs_dir / stored))
        summaries.append(summarize(f"data{data_seed}", comparisons, scores, "unused.png"))
        tested = {
            json.loads(line)["example_id"]
            for e in ids
            for line in (lab.runs_dir / lab.output(e, "baseline_evaluation")["predictions_path"])
            .read_text()
            .splitlines()
        }
        assert tested == {f"test-{i}" for i in range(40)}
    (first,), (second,) = (s.cells for s in summaries)
    assert first.arms != second.arms


def test_the_hop_qa_campaigns_intervals_move_when_only_the_data_seed_changes(lab: Lab):
    """The shipped hop-qa-seeds campaign (two seeds, 20 test examples) run twice, the second time with
    another data.seed only: each experiment draws other train and dev examples, with the same optimizer
    seed and the same test examples, and the campaign table's intervals move."""
    shipped = yaml.safe_load((PROJECT / "data" / "campaigns" / "hop-qa-seeds.yaml").read_text())
    (lab.data_dir / "campaigns").mkdir()
    for data_seed in (100, 200):
        campaign = {
            **shipped,
            "campaign": f"hop-d{data_seed}",
            "seeds": [0, 1],
            "experiment": {
                **shipped["experiment"],
                "data": {**shipped["experiment"]["data"], "seed": data_seed},
                # sim/small may score 0 on a data seed's dev draw: the intervals are what is tested here.
                "stage2": {**shipped["experiment"]["stage2"], "on_no_signal": "warn"},
                "evaluation": {"split": "test", "limit": 20},
            },
        }
        (lab.data_dir / "campaigns" / f"hop-d{data_seed}.yaml").write_text(yaml.safe_dump(campaign))
    grids = {name: specs for name, (_, specs) in campaigns(lab.data_dir).items()}
    assert sorted(grids) == ["hop-d100", "hop-d200"]
    summaries, tested = [], []
    for name, specs in sorted(grids.items()):
        for experiment_id in specs:
            assert lab.run(experiment_id).success
        comparisons = {e: Comparison.model_validate(lab.output(e, "comparison")) for e in specs}
        scores = example_scores(comparisons, lambda stored: str(lab.runs_dir / stored))
        summaries.append(summarize(name, comparisons, scores, "unused.png"))
        tested.append(
            {
                e: [
                    json.loads(line)["example_id"]
                    for line in (lab.runs_dir / lab.output(e, "baseline_evaluation")["predictions_path"])
                    .read_text()
                    .splitlines()
                ]
                for e in specs
            }
        )
    # Everything but the data seed is the same: optimizer seeds, models, budgets and the test examples.
    first_specs, second_specs = (list(grids[n].values()) for n in sorted(grids))
    for a, b in zip(first_specs, second_specs, strict=True):
        assert a.model_dump(exclude={"experiment_id", "data"}) == b.model_dump(
            exclude={"experiment_id", "data"}
        )
        assert (a.data.seed, b.data.seed) == (100, 200)
    assert list(tested[0].values()) == list(tested[1].values())
    (first,), (second,) = (s.cells for s in summaries)
    bounds = [{arm: (i.ci_low, i.ci_high) for arm, i in cell.arms.items()} for cell in (first, second)]
    moved = [arm for arm in bounds[0] if bounds[0][arm] != bounds[1][arm]]
    assert moved, bounds
    assert campaign_table(summaries[0]).splitlines()[1:] != campaign_table(summaries[1]).splitlines()[1:]
