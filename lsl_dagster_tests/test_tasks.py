"""Tasks as a program, a metric and data: every data format, splits, bad input, every metric and feedback
path, and the per-predictor prompt capture of any program."""

import csv
import itertools
import json
from pathlib import Path

import dspy
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from lsl_dagster.method.optimizers.metrics import feedback_metric_for, metric_for
from lsl_dagster.method.prompts import ProgramMismatch, capture, rebuild, render
from lsl_dagster.records import Ledger, PredictorPrompt, Provenance
from lsl_dagster.tasks.metrics import call_metric, neutral_feedback
from lsl_dagster.tasks.task import TaskDataError, load_task, to_dspy

# A user's two-predictor program and metric, as a researcher would write them in program.py.
PROGRAM = """
import dspy


class Pipeline(dspy.Module):
    def __init__(self):
        super().__init__()
        self.draft = dspy.Predict("question -> draft")
        self.finish = dspy.ChainOfThought("question, draft -> answer")

    def forward(self, question):
        draft = self.draft(question=question).draft
        return self.finish(question=question, draft=draft)


def build():
    return Pipeline()


def metric(example, prediction, trace=None):
    right = str(getattr(prediction, "answer", "")).strip() == example.answer
    return dspy.Prediction(score=float(right), feedback="spot on" if right else "not it")


def plain_metric(example, prediction, trace=None):
    return str(getattr(prediction, "answer", "")).strip() == example.answer


def per_predictor_metric(example, prediction, trace=None, pred_name=None, pred_trace=None):
    return dspy.Prediction(score=0.0, feedback=f"about {pred_name}")


def silent_metric(example, prediction, trace=None):
    return dspy.Prediction(score=0.5, feedback=None)


def raising_metric(example, prediction, trace=None):
    return example.no_such_field


def no_predictors():
    return dspy.Module()
"""

ROWS = [(f"r{i}", f"What is {i} plus {i}?", str(2 * i)) for i in range(12)]
SPLIT_OF = {"train": ROWS[:6], "dev": ROWS[6:9], "test": ROWS[9:]}


def make_task(
    tasks_dir: Path, name: str = "qa", *, source: str = PROGRAM, write_data: bool = True, **overrides
) -> Path:
    """A task directory: program.py, task.yaml (with `overrides`) and CSV splits with renamed columns."""
    directory = tasks_dir / name
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "program.py").write_text(source)
    definition = {
        "name": name,
        "program": "program:build",
        "metric": "program:metric",
        "inputs": ["question"],
        "outputs": ["answer"],
        "data": {
            "train": "train.csv",
            "dev": "dev.csv",
            "test": "test.csv",
            "id": "key",
            "columns": {"question": "q", "answer": "a"},
        },
        **overrides,
    }
    (directory / "task.yaml").write_text(yaml.safe_dump(definition))
    if write_data:
        for split, rows in SPLIT_OF.items():
            with (directory / f"{split}.csv").open("w", newline="") as out:
                writer = csv.writer(out)
                writer.writerow(["key", "q", "a"])
                writer.writerows(rows)
    return directory


def examples(task, split):
    return [(e.id, e.inputs, e.labels) for e in task.examples(split)]


def test_csv_parquet_jsonl_and_hf_datasets_load_the_same_examples(tmp_path: Path):
    import datasets

    directory = make_task(tmp_path)
    expected = {split: examples(load_task("qa", tmp_path), split) for split in SPLIT_OF}
    assert expected["dev"] == [
        (key, {"question": q}, {"answer": a}) for key, q, a in SPLIT_OF["dev"]
    ]  # ids from the id column, fields through the column mapping
    columns = ("key", "q", "a")
    for split, rows in SPLIT_OF.items():
        records = [dict(zip(columns, row, strict=True)) for row in rows]
        pq.write_table(pa.Table.from_pylist(records), directory / f"{split}.parquet")
        (directory / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        datasets.Dataset.from_list(records).save_to_disk(str(directory / "hf" / split))
    layouts = {
        "parquet": {s: f"{s}.parquet" for s in SPLIT_OF},
        "jsonl": {s: f"{s}.jsonl" for s in SPLIT_OF},
        "hf": {s: f"hf/{s}" for s in SPLIT_OF},
    }
    for fmt, files in layouts.items():
        make_task(
            tmp_path,
            write_data=False,
            data={**files, "id": "key", "columns": {"question": "q", "answer": "a"}},
        )
        task = load_task("qa", tmp_path)
        assert {split: examples(task, split) for split in SPLIT_OF} == expected, fmt


def test_a_pool_is_split_by_its_own_seed_and_the_experiment_seed_resamples_train_and_dev(tmp_path: Path):
    directory = make_task(
        tmp_path, data={"pool": "all.jsonl", "split": {"train": 0.5, "dev": 0.25, "test": 0.25}}
    )
    pool = [{"id": f"p{i}", "question": f"Question number {i}?", "answer": str(i)} for i in range(400)]
    (directory / "all.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pool))
    task = load_task("qa", tmp_path)
    ids = {split: [e.id for e in task.examples(split)] for split in SPLIT_OF}
    assert sum(task.sizes.values()) == 400 and sorted(itertools.chain(*ids.values())) == sorted(
        r["id"] for r in pool
    )
    assert 150 < task.sizes["train"] < 250 and 60 < task.sizes["test"] < 140
    assert ids == {split: [e.id for e in load_task("qa", tmp_path).examples(split)] for split in SPLIT_OF}

    first, again, other = (task.sample("train", 20, seed) for seed in (0, 0, 1))
    assert [e.id for e in first] == [e.id for e in again]
    assert {e.id for e in first} != {e.id for e in other} and len(other) == 20
    assert {e.id for e in first} <= set(ids["train"])
    assert len(task.sample("dev", 10_000, 3)) == task.sizes["dev"]  # all of it when it has no more


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda d: (d / "dev.csv").write_text("key,q,a\nd1,fine,1\nd2,too few\n"),
            r"dev\.csv:3: fewer cells",
        ),
        (lambda d: (d / "dev.csv").write_text("key,q,a\nd1,fine,1,extra\n"), r"dev\.csv:2: more cells"),
        (
            lambda d: (d / "test.csv").write_text("key,b\nt1,x\n"),
            r"test\.csv:2: missing field\(s\) \['q', 'a'\]",
        ),
        (lambda d: (d / "test.csv").write_text("key,q,a\nr0,new,1\n"), r"test\.csv:2: duplicate id 'r0'"),
        (
            lambda d: (d / "test.csv").write_text(f"key,q,a\nfresh,{ROWS[0][1]},0\n"),
            r"test\.csv:2: the same inputs as train .*train\.csv:2",
        ),
        (lambda d: (d / "train.csv").write_text("key,q,a\n"), r"the train split is empty"),
        (lambda d: (d / "dev.csv").unlink(), r"dev\.csv: data file not found"),
    ],
)
def test_malformed_rows_and_overlapping_splits_name_the_file_and_row(tmp_path: Path, damage, message):
    damage(make_task(tmp_path))
    with pytest.raises(TaskDataError, match=message):
        load_task("qa", tmp_path)


def test_a_null_in_a_parquet_file_names_the_row(tmp_path: Path):
    directory = make_task(
        tmp_path,
        data={
            "train": "train.csv",
            "dev": "dev.parquet",
            "test": "test.csv",
            "id": "key",
            "columns": {"question": "q", "answer": "a"},
        },
    )
    pq.write_table(
        pa.table({"key": ["d1", "d2"], "q": ["x?", "y?"], "a": ["1", None]}), directory / "dev.parquet"
    )
    with pytest.raises(
        TaskDataError, match=r"dev\.parquet row 2: field 'a' must be a string or number, not empty"
    ):
        load_task("qa", tmp_path)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"program": "nowhere:build"}, r"program 'nowhere:build': cannot import 'nowhere'"),
        ({"program": "program:missing"}, r"program 'program:missing': program has no function 'missing'"),
        ({"program": "build"}, r"must be an import path module:function"),
        ({"program": "program:no_predictors"}, r"the program has no predictors"),
        ({"metric": "program:raising_metric"}, r"metric 'program:raising_metric' failed on dev example 'r6'"),
        ({"metric": "bleu"}, r"neither built in"),
        ({"instructions": "Answer."}, r"apply to declarative tasks"),
    ],
)
def test_a_broken_program_or_metric_is_refused_when_the_task_loads(tmp_path: Path, overrides, message):
    make_task(tmp_path, **overrides)
    with pytest.raises(TaskDataError, match=message):
        load_task("qa", tmp_path)


def test_two_tasks_may_each_have_their_own_program_py(tmp_path: Path):
    make_task(tmp_path, "one")
    make_task(tmp_path, "two", source=PROGRAM.replace('"question -> draft"', '"question -> sketch"'))
    one, two = load_task("one", tmp_path), load_task("two", tmp_path)
    assert "draft" in one.program().draft.signature.output_fields
    assert "sketch" in two.program().draft.signature.output_fields


def test_an_installed_module_works_as_a_program(tmp_path: Path):
    make_task(tmp_path, source="", program="lsl_dagster_tests.user_program:build", metric="exact_match")
    task = load_task("qa", tmp_path)
    assert [name for name, _ in task.program().named_predictors()] == ["respond"]


# --- metrics and feedback -------------------------------------------------------------------------
@pytest.fixture
def task(tmp_path: Path):
    make_task(tmp_path)
    return load_task("qa", tmp_path)


def gold_and_wrong(task):
    example = to_dspy(next(task.examples("dev", 1)), task)
    return example, dspy.Prediction(answer="13", draft="six and six")


def test_a_metric_may_return_a_number_a_bool_or_a_prediction_with_feedback(task):
    example, wrong = gold_and_wrong(task)
    right = dspy.Prediction(answer=example.answer)
    assert call_metric(task.metric, example, right).score == 1.0
    assert call_metric(task.metric, example, wrong).feedback == "not it"
    assert call_metric(lambda e, p, t=None: True, example, wrong).score == 1.0
    assert call_metric(lambda e, p, t=None: 0.25, example, wrong).score == 0.25
    assert call_metric(lambda e, p, t=None: {"score": 0.5, "feedback": "x"}, example, wrong).feedback == "x"
    with pytest.raises(TypeError, match="not a number"):
        call_metric(lambda e, p, t=None: "good", example, wrong)
    with pytest.raises(TypeError, match="without a score"):
        call_metric(lambda e, p, t=None: dspy.Prediction(feedback="x"), example, wrong)
    assert metric_for(task)(example, right) == 1.0 and metric_for(task)(example, wrong) == 0.0


def test_gepa_reads_the_metric_s_own_feedback(task):
    example, wrong = gold_and_wrong(task)
    result = feedback_metric_for(task)(example, wrong, None, "finish.predict", None)
    assert (result.score, result.feedback) == (0.0, "not it")


def test_a_metric_that_takes_pred_name_writes_per_predictor_feedback(tmp_path: Path):
    make_task(tmp_path, metric="program:per_predictor_metric")
    task = load_task("qa", tmp_path)
    example, wrong = gold_and_wrong(task)
    gepa = feedback_metric_for(task)
    assert gepa(example, wrong, None, "draft", None).feedback == "about draft"
    assert gepa(example, wrong, None, "finish.predict", None).feedback == "about finish.predict"


@pytest.mark.parametrize("metric", ["program:plain_metric", "program:silent_metric"])
def test_without_feedback_from_the_metric_gepa_gets_expected_and_got_per_field(tmp_path: Path, metric: str):
    make_task(tmp_path, metric=metric)
    task = load_task("qa", tmp_path)
    example, wrong = gold_and_wrong(task)
    draft = task.program().draft
    trace = [(draft, {"question": example.question}, dspy.Prediction(draft="six and six"))]
    feedback = feedback_metric_for(task)(example, wrong, None, "draft", trace).feedback
    assert f"- question: {example.question!r}" in feedback
    assert f"- answer: expected {example.answer!r}, got '13'" in feedback
    assert "Predictor `draft` received:" in feedback and "- draft: 'six and six'" in feedback
    # Only facts: the same message shape on any task, with no guess at the cause.
    assert feedback.splitlines()[0] == ("Score: 0." if metric.endswith("plain_metric") else "Score: 0.5.")


def test_neutral_feedback_covers_every_output_field_and_missing_values():
    example = dspy.Example(review="great", aspect="price", sentiment="positive").with_inputs("review")
    text = neutral_feedback(
        example,
        dspy.Prediction(aspect="price"),
        inputs=["review"],
        labels=["aspect", "sentiment"],
        score_value=0.5,
    )
    assert "- aspect: expected 'price', got 'price'" in text
    assert "- sentiment: expected 'positive', got (no value)" in text


def test_declarative_builtin_metrics_average_over_output_fields(tmp_path: Path):
    directory = tmp_path / "multi"
    directory.mkdir()
    (directory / "task.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "multi",
                "instructions": "Do it.",
                "inputs": {"x": "in"},
                "outputs": {"a": "", "b": ""},
                "metric": "exact_match",
            }
        )
    )
    for i, split in enumerate(("train", "dev", "test")):
        (directory / f"{split}.jsonl").write_text(json.dumps({"x": f"x{i}", "a": "1", "b": "2"}) + "\n")
    task = load_task("multi", tmp_path)
    example = to_dspy(next(task.examples("dev")), task)
    assert metric_for(task)(example, dspy.Prediction(a="1", b="3")) == 0.5
    assert feedback_metric_for(task)(example, dspy.Prediction(a="1", b="3")).feedback.startswith(
        "Score: 0.5."
    )
    assert set(task.program().predict.signature.output_fields) == {"reasoning", "a", "b"}


# --- prompts of any program ------------------------------------------------------------------------
def test_every_predictor_s_prompt_is_captured_as_json_rebuilt_and_rendered(task):
    program = task.program()
    program.draft.signature = program.draft.signature.with_instructions("Sketch a first answer.")
    program.draft.signature = program.draft.signature.with_updated_fields("draft", desc="a rough answer")
    program.finish.predict.demos = [dspy.Example(question="1+1?", draft="2", reasoning="add", answer="2")]
    provenance = Provenance(stage="stage1", optimizer="miprov2", model="sim/large", seed=0, spec_hash="x")
    candidate = capture(program, task, "exp-1", provenance, Ledger(stage="stage1"), simulated=True)
    assert set(candidate.predictors) == {"draft", "finish.predict"}
    draft = candidate.predictors["draft"]
    assert (
        draft.instructions == "Sketch a first answer."
        and draft.field_descriptions["draft"] == "a rough answer"
    )
    assert candidate.predictors["finish.predict"].demos == [
        {"question": "1+1?", "draft": "2", "reasoning": "add", "answer": "2"}
    ]

    stored = type(candidate).model_validate_json(candidate.model_dump_json())
    rebuilt = rebuild(stored, task)
    assert capture(rebuilt, task, "exp-1", provenance, Ledger(stage="stage1"), True) == candidate
    text = render(stored, task)
    assert text.index("### Predictor `draft`") < text.index("### Predictor `finish.predict`")
    assert "Sketch a first answer." in text and "a rough answer" in text

    renamed = candidate.model_copy(
        update={"predictors": {"draft": draft, "other": PredictorPrompt(instructions="x")}}
    )
    with pytest.raises(ProgramMismatch, match=r"has predictors \['draft', 'other'\]"):
        rebuild(renamed, task)
