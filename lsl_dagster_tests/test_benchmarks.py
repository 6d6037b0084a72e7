"""The benchmark tasks (HotpotQA distractor, GSM8K, AIME, IFEval) by Hugging Face dataset name: read from a
`save_to_disk` copy in each dataset's own schema, run end to end on the sim models, their metrics and
feedback on hand-worked examples, and GEPA's model pair planned at OpenRouter's prices."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dspy
import pytest

from lsl_dagster.records import Comparison
from lsl_dagster.spec.experiment_files import campaigns
from lsl_dagster.tasks.task import load_task
from lsl_dagster_tests.benchmark_fixtures import HUB_PATHS, save_copy
from lsl_dagster_tests.conftest import PROJECT, Lab, without_saved_datasets

BENCHMARKS = sorted(HUB_PATHS)
# Calls per program run: hotpotqa two queries and an answer, ifeval a draft and its rewrite.
CALLS_PER_RUN = {"hotpotqa": 3, "gsm8k": 1, "aime": 1, "ifeval": 2}
LIMIT = 4


@pytest.mark.parametrize("name", BENCHMARKS)
def test_each_benchmark_runs_end_to_end_on_a_saved_copy_of_its_dataset(lab: Lab, name: str):
    task_dir = lab.data_dir / "tasks" / name
    before = {p.name: p.read_bytes() for p in task_dir.iterdir() if p.is_file()}
    save_copy(task_dir)
    lab.write(
        f"{name}-1",
        task=name,
        stage1={"max_calls": 60},
        stage2={"max_calls": 40},
        data={"train": 3, "val": 3},
        evaluation={"limit": LIMIT},
    )
    assert lab.run(f"{name}-1").success
    # The shipped task file and program ran unchanged.
    assert {p.name: p.read_bytes() for p in task_dir.iterdir() if p.is_file()} == before
    task = load_task(name, lab.data_dir / "tasks")
    comparison = Comparison.model_validate(lab.output(f"{name}-1", "comparison"))
    assert comparison.simulated
    assert {a.arm: a.n for a in comparison.arms} == {"baseline": LIMIT, "lsl": LIMIT, "budget_matched": LIMIT}
    assert all(0.0 <= a.score <= 1.0 for a in comparison.arms)
    stage3 = lab.output(f"{name}-1", "stage3_evaluation")
    rows = [json.loads(line) for line in lab.read(stage3["predictions_path"]).splitlines()]
    assert [r["example_id"] for r in rows] == [e.id for e in task.examples("test", LIMIT)]
    assert all(set(r["prediction"]) == set(task.prediction_fields) for r in rows)
    assert all(r["score"] is None or 0.0 <= r["score"] <= 1.0 for r in rows)
    by_model = stage3["ledger"]["by_model"]
    assert sum(u["calls"] + u["cache_hits"] for u in by_model.values()) == CALLS_PER_RUN[name] * LIMIT
    assert lab.calls(f"{name}-1", "stage2"), "Stage 2 made no call"


# --- the data: a saved copy in the Hub's schema, read with the task file's own slices -------------------


@pytest.fixture
def copies(tmp_path: Path) -> Path:
    """A data dir with the shipped tasks and campaigns, every benchmark's dataset saved where it is read."""
    data = tmp_path / "data"
    shutil.copytree(PROJECT / "data" / "tasks", data / "tasks", ignore=without_saved_datasets)
    shutil.copytree(PROJECT / "data" / "campaigns", data / "campaigns")
    (data / "experiments").mkdir()
    for name in BENCHMARKS:
        save_copy(data / "tasks" / name)
    return data


def test_the_task_files_slices_cut_the_saved_splits_as_load_dataset_would(copies: Path):
    tasks = copies / "tasks"
    aime = load_task("aime", tasks)
    # 12 rows: train[:67%] is rows 0-7 (pooled into train and dev by data.seed), train[67%:] rows 8-11.
    assert [e.id for e in aime.examples("test")] == ["8", "9", "10", "11"]
    pooled = sorted(int(e.id) for split in ("train", "dev") for e in aime.examples(split))
    assert pooled == list(range(8))
    assert aime.sizes["train"] > 0 and aime.sizes["dev"] > 0
    hotpot = load_task("hotpotqa", tasks)
    assert hotpot.sizes == {"train": 2, "dev": 7, "test": 4}  # train[:1500] of 9 rows, validation[:300] of 4
    example = next(hotpot.examples("test"))
    # Nested columns arrive as their JSON: the paragraphs and the supporting facts, nothing flattened away.
    context = json.loads(example.inputs["paragraphs"])
    assert len(context["title"]) == 10 and context["title"][:2] == ["Tower 9", "Mara Quill 9"]
    assert json.loads(example.labels["titles"]) == {"title": ["Tower 9", "Mara Quill 9"], "sent_id": [0, 1]}
    ifeval = load_task("ifeval", tasks)
    assert ifeval.prediction_fields == ["constraints", "arguments", "response"]
    # Row 8, the first of the second half: two constraints, each with its arguments (unused ones null).
    row = next(ifeval.examples("test"))
    assert json.loads(row.labels["constraints"]) == ["change_case:english_lowercase", "startend:end_checker"]
    arguments = json.loads(row.labels["arguments"])
    assert arguments[1]["end_phrase"] == "Any other questions?" and arguments[1]["num_words"] is None


def test_a_single_saved_split_is_refused_naming_the_fix(tmp_path: Path):
    from lsl_dagster.tasks import TaskDataError
    from lsl_dagster_tests.benchmark_fixtures import dataset_dict

    tasks = tmp_path / "tasks"
    shutil.copytree(PROJECT / "data" / "tasks" / "gsm8k", tasks / "gsm8k")
    dataset_dict("gsm8k")["train"].save_to_disk(str(tasks / "gsm8k" / "openai" / "gsm8k"))
    with pytest.raises(TaskDataError, match=r"one split saved on its own; save the DatasetDict"):
        load_task("gsm8k", tasks)


def test_a_pool_beside_its_own_test_split_holds_train_and_dev_only():
    from pydantic import ValidationError

    from lsl_dagster.tasks.definition import DataDef

    DataDef(pool="train[:10]", test="test", split={"train": 0.5, "dev": 0.5})
    with pytest.raises(ValidationError, match=r"fraction for each of train and dev \(test: its own\)"):
        DataDef(pool="train[:10]", test="test", split={"train": 0.4, "dev": 0.3, "test": 0.3})
    with pytest.raises(ValidationError, match=r"either train/dev/test files or a pool"):
        DataDef(pool="train[:10]", dev="validation", split={"train": 0.5, "dev": 0.5})


# --- GEPA's pair: the campaigns, and their plan before anything is spent ----------------------------------

PAIRS = {
    "gepa-table2": ("gpt41mini-qwen3-8b", "openrouter/openai/gpt-4.1-mini", "openrouter/qwen/qwen3-8b"),
    "gepa-table2-reverse": (
        "qwen3-8b-gpt41mini",
        "openrouter/qwen/qwen3-8b",
        "openrouter/openai/gpt-4.1-mini",
    ),
}


@pytest.mark.parametrize("campaign", sorted(PAIRS))
def test_the_gepa_campaigns_cross_the_benchmarks_with_three_seeds_at_openrouters_prices(campaign: str):
    from lsl_dagster.llm.http import packaged_price

    pair, large, small = PAIRS[campaign]
    _, specs = campaigns(PROJECT / "data")[campaign]
    assert sorted(specs) == sorted(
        f"{campaign}--{task}--{pair}--gepa--s{seed}" for task in BENCHMARKS for seed in (0, 1, 2)
    )
    for spec in specs.values():
        assert (spec.large_model.model, spec.small_model.model) == (large, small)
        assert spec.stage1.optimizer == "gepa" and spec.evaluation.limit is None
        assert spec.arms == ["small_optimized"]  # GEPA's own setting, beside LSL's three arms
        # The prices pinned in the file are the ones DSPy's packaged map (its comment's source) lists.
        for model in (spec.large_model, spec.small_model):
            listed = packaged_price(model.model_copy(update={"price": None}))
            assert model.price is not None and listed is not None
            pinned = (model.price.input_per_mtok, model.price.output_per_mtok)
            assert pinned == pytest.approx((listed.input_per_mtok, listed.output_per_mtok))


def _lsl(data: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "LSL_DATA_DIR": str(data), "LSL_RUNS_DIR": str(data / "runs"), "HF_HUB_OFFLINE": "1"}
    lsl = str(Path(sys.executable).with_name("lsl"))
    return subprocess.run([lsl, *argv], env=env, capture_output=True, text=True, timeout=300)


def test_lsl_plan_forecasts_a_gepa_cell_from_a_saved_copy_without_a_call(copies: Path):
    cell = "gepa-table2--hotpotqa--gpt41mini-qwen3-8b--gepa--s0"
    done = _lsl(copies, "plan", cell)
    assert done.returncode == 0, done.stderr
    table = {line.split()[0]: line.split() for line in done.stdout.splitlines() if line[:1].isalpha()}
    assert table["stage1"][1] == "2000" and table["stage2"][1] == "2000"
    # Every test example (4 in the copy) through three predictors, per evaluated arm.
    assert table["baseline_evaluation"][1] == "12" and table["stage3_evaluation"][1] == "12"
    # The small-optimized arm: Stage 1's budget on the small model, evaluated like the others.
    assert table["small_optimized"][1] == "2000" and table["small_optimized_evaluation"][1] == "12"
    assert table["total"][-1] == "$60.0000"  # the experiment's cap, allocated to its stages
    assert f"Forecast for {cell}; no model was called." in done.stdout
    assert not (copies / "runs").exists()  # nothing ran, nothing was logged


def test_lsl_plan_without_the_dataset_says_which_and_how_to_save_it(tmp_path: Path):
    data = tmp_path / "data"
    shutil.copytree(PROJECT / "data" / "tasks", data / "tasks", ignore=without_saved_datasets)
    shutil.copytree(PROJECT / "data" / "campaigns", data / "campaigns")
    (data / "experiments").mkdir()
    done = _lsl(data, "plan", "gepa-table2--gsm8k--gpt41mini-qwen3-8b--gepa--s0")
    assert done.returncode != 0
    assert "Hugging Face dataset 'openai/gsm8k', config 'main', split 'train[:1500]'" in done.stderr
    copy = data / "tasks" / "gsm8k" / "openai" / "gsm8k"
    assert f"datasets.load_dataset('openai/gsm8k', 'main').save_to_disk('{copy}')" in done.stderr
    assert "nothing was called" in done.stderr


# --- the metrics and their feedback, on hand-worked examples ----------------------------------------------


def _metric(name: str):
    from lsl_dagster.tasks.user_code import resolve

    return resolve(PROJECT / "data" / "tasks" / name / "task.yaml", "metric", "program:metric")


def _hotpot_example() -> dspy.Example:
    facts = {"title": ["Tower 1", "Mara Quill 1", "Mara Quill 1"], "sent_id": [0, 0, 1]}
    return dspy.Example(question="q", answer="The Brisk 1", titles=json.dumps(facts)).with_inputs("question")


@pytest.mark.parametrize(
    ("answer", "first_hop", "titles", "score", "said"),
    [
        # Normalization drops case, punctuation and articles: an exact match.
        ("brisk 1.", "Tower 1 | X", "Tower 1 | X | Mara Quill 1 | Y", 1.0, "Correct: 'The Brisk 1'."),
        # Wrong answer, both supporting paragraphs found: the reading is at fault. F1: 1 of 2 tokens each way.
        (
            "Brisk 2",
            "Tower 1 | X",
            "Tower 1 | X | Mara Quill 1 | Y",
            0.0,
            "retrieved every supporting paragraph",
        ),
        ("Holm", "X | Y", "X | Y | Z | W", 0.0, "The first hop retrieved none of the supporting paragraphs"),
        ("Holm", "Tower 1 | X", "Tower 1 | X | Z | W", 0.0, "the second hop missed Mara Quill 1"),
    ],
)
def test_hotpotqa_scores_exact_match_and_names_the_hop_that_missed(answer, first_hop, titles, score, said):
    result = _metric("hotpotqa")(
        _hotpot_example(), dspy.Prediction(answer=answer, first_hop=first_hop, titles=titles)
    )
    assert result.score == score
    assert said in result.feedback
    if not score:
        assert result.feedback.startswith(f"Expected 'The Brisk 1', got {answer!r} (token F1 ")


def test_hotpotqa_token_f1_is_hotpots():
    from lsl_dagster.tasks.user_code import resolve

    f1 = resolve(PROJECT / "data" / "tasks" / "hotpotqa" / "task.yaml", "metric", "program:f1")
    assert f1("The Brisk 1", "Brisk 2") == 0.5  # precision 1/2, recall 1/2
    assert f1("Brisk 1", "the city of Brisk 1") == pytest.approx(2 * (2 / 4) * 1 / (2 / 4 + 1))
    assert f1("yes", "no") == 0.0


GSM8K_GOLD = "1000 + 72 = 1072\n#### 1,072"


@pytest.mark.parametrize(
    ("gold", "got", "score", "feedback"),
    [
        (GSM8K_GOLD, "1,072", 1.0, "Correct: 1072."),
        (GSM8K_GOLD, "She earns $1072.", 1.0, "Correct: 1072."),
        (GSM8K_GOLD, "work... #### 1072", 1.0, "Correct: 1072."),
        # The number after "####" is the gold answer, not the last number before it.
        ("3 boxes of 24 is 72, plus 8\n#### 80", "72", 0.0, "Expected 80, got 72."),
        (GSM8K_GOLD, "1070", 0.0, "Expected 1072, got 1070. The gold solution: 1000 + 72 = 1072"),
        (
            GSM8K_GOLD,
            "about a thousand",
            0.0,
            "Expected 1072, got no number (the answer was 'about a thousand')",
        ),
    ],
)
def test_gsm8k_compares_the_number_after_the_gold_hashes(gold, got, score, feedback):
    example = dspy.Example(question="q", answer=gold).with_inputs("question")
    result = _metric("gsm8k")(example, dspy.Prediction(answer=got))
    assert (result.score, result.feedback[: len(feedback)]) == (score, feedback)


@pytest.mark.parametrize(
    ("gold", "got", "score", "feedback"),
    [
        ("023", "23", 1.0, "Correct: 23."),
        (204, "so the answer is \\boxed{204}, not 17", 1.0, "Correct: 204."),
        ("204", "210", 0.0, "Expected 204, got 210."),
        (
            "204",
            "1,204",
            0.0,
            "Expected 204, got 1204, which is outside 0-999: every AIME answer is in that range.",
        ),
        ("204", "", 0.0, "Expected 204, got no integer (the answer was '')."),
    ],
)
def test_aime_compares_integers_and_says_expected_and_got(gold, got, score, feedback):
    example = dspy.Example(problem="p", answer=gold).with_inputs("problem")
    result = _metric("aime")(example, dspy.Prediction(answer=got))
    assert (result.score, result.feedback) == (score, feedback)


def test_ifeval_scores_the_fraction_followed_and_lists_what_was_broken():
    ids = ["punctuation:no_comma", "length_constraints:number_words", "keywords:existence"]
    arguments = [{"num_words": None}, {"relation": "at least", "num_words": 5}, {"keywords": ["fog"]}]
    example = dspy.Example(prompt="p", constraints=json.dumps(ids), arguments=json.dumps(arguments))
    metric = _metric("ifeval")
    result = metric(example, dspy.Prediction(response="Grey fog, cold beam."))
    assert result.score == pytest.approx(1 / 3)
    assert result.feedback == (
        "2 of 3 constraints broken:\n"
        "- punctuation:no_comma: no commas (found 1)\n"
        "- length_constraints:number_words: at least 5 words (found 4)"
    )
    followed = metric(example, dspy.Prediction(response="Grey fog and a cold beam tonight."))
    assert (followed.score, followed.feedback) == (1.0, "Every constraint followed (3).")


def test_the_sim_server_plays_a_benchmark_only_once_its_dataset_is_on_this_machine(
    copies: Path, tmp_path: Path
):
    from lsl_dagster.sim.keys import data_dir_keys

    bare = tmp_path / "bare"
    shutil.copytree(PROJECT / "data" / "tasks", bare / "tasks", ignore=without_saved_datasets)
    keyed = {key.name for key in data_dir_keys(bare)}  # no Hub call, no error
    assert not keyed & set(BENCHMARKS) and {"arithmetic", "hop_qa"} <= keyed
    assert set(BENCHMARKS) <= {key.name for key in data_dir_keys(copies)}
