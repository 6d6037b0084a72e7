"""Bad input, tried one by one: each ends in a clear error naming the file and field, or the example, and
loses nothing already paid (the call log keeps every request; its responses replay from the cache)."""

import csv
import json

import pytest

from lsl_dagster.cli import main
from lsl_dagster.records import Comparison, EvaluationResult
from lsl_dagster.sim.server import SimServer
from lsl_dagster.spec.experiment_files import ExperimentError, load_experiment, problems, scan_campaigns
from lsl_dagster.tasks.task import TaskDataError, load_task
from lsl_dagster_tests.conftest import Lab

# The task's own program raises on a question with BOOM in it; its metric returns what METRIC_OF says for
# a question with that word in it (a NaN, a string), else exact match.
PROGRAM = """
import dspy


class Answer(dspy.Module):
    def __init__(self):
        super().__init__()
        self.answer = dspy.Predict("question -> answer")

    def forward(self, question):
        if "BOOM" in question:
            raise ValueError("this program cannot add " + question.split()[2])
        return self.answer(question=question)


def build():
    return Answer()


def metric(example, prediction, trace=None):
    if "NAN" in example.question:
        return float("nan")
    if "WORDY" in example.question:
        return "yes"
    return float(example.answer == prediction.answer)
"""


def _own_task(lab: Lab, test_marks: dict[int, str], n_test: int = 10) -> None:
    """data/tasks/adder: the program above over JSONL splits; test question i carries test_marks[i]."""
    directory = lab.data_dir / "tasks" / "adder"
    directory.mkdir()
    (directory / "program.py").write_text(PROGRAM)
    (directory / "task.yaml").write_text(
        "name: adder\nprogram: program:build\nmetric: program:metric\ninputs: [question]\n"
        "outputs: [answer]\ndata: {train: train.jsonl, dev: dev.jsonl, test: test.jsonl}\n"
    )
    for split, start, count in (("train", 0, 12), ("dev", 100, 8), ("test", 200, n_test)):
        lines = []
        for i in range(count):
            mark = test_marks.get(i, "") if split == "test" else ""
            row = {
                "question": f"What is {start + i} plus {start + i}? {mark}".strip(),
                "answer": str(2 * (start + i)),
            }
            lines.append(json.dumps(row) + "\n")
        (directory / f"{split}.jsonl").write_text("".join(lines))


def _rows(lab: Lab, experiment_id: str, evaluation: str) -> list[dict]:
    stored = lab.output(experiment_id, evaluation)["predictions_path"]
    return [json.loads(line) for line in lab.read(stored).splitlines()]


def _cli(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in lab.env().items():
        if name in ("DAGSTER_HOME", "LSL_DATA_DIR", "LSL_RUNS_DIR"):
            monkeypatch.setenv(name, value)


# --- a program that raises on some examples ----------------------------------------------------------
def test_program_errors_are_counted_shown_and_left_out_of_the_pairs(
    lab: Lab, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    _own_task(lab, {3: "BOOM"})
    lab.write("errs", task="adder", evaluation={"limit": 10})
    assert lab.run("errs").success

    for evaluation in ("baseline_evaluation", "stage3_evaluation", "budget_matched_evaluation"):
        result = EvaluationResult.model_validate(lab.output("errs", evaluation))
        rows = _rows(lab, "errs", evaluation)
        failed = [r for r in rows if r["error_kind"] == "program_error"]
        assert [r["example_id"] for r in failed] == ["test-4"] and failed[0]["score"] is None
        assert "ValueError: this program cannot add 203" in failed[0]["error"]
        assert result.n == 10 and result.n_program_errors == 1
        # The arm's score is the mean over the 9 scored rows, not a zero for the failed one.
        assert result.score == pytest.approx(sum(r["score"] for r in rows if r["score"] is not None) / 9)
        assert lab.metadata("errs", evaluation)["n_program_errors"] == 1

    comparison = Comparison.model_validate(lab.output("errs", "comparison"))
    assert [a.n_program_errors for a in comparison.arms] == [1, 1, 1]
    for difference in comparison.differences:
        assert (difference.n, difference.n_excluded) == (9, 1)
        assert "paired over 9 of 10 examples, 1 left out" in difference.verdict

    _cli(lab, monkeypatch)
    capsys.readouterr()
    assert main(["results", "errs"]) == 0
    out = capsys.readouterr().out
    for arm in ("baseline", "lsl", "budget_matched"):
        assert f"    {arm} (10 rows): " in out
    assert out.count("1 program errors (not scored)") == 3
    assert main(["export", "errs", "--format", "csv", "--output", str(lab.runs_dir / "errs.csv")]) == 0
    with (lab.runs_dir / "errs.csv").open() as exported:
        assert [row["n_program_errors"] for row in csv.DictReader(exported)] == ["1", "1", "1"]


def test_too_many_program_errors_fail_the_evaluation_naming_one_example(lab: Lab):
    _own_task(lab, {1: "BOOM", 4: "BOOM", 7: "BOOM"})  # 30% of the 10 test examples
    lab.write("boom", task="adder", evaluation={"limit": 10})
    result = lab.run(
        "boom", ["experiment_file", "stage1_prompt", "baseline_evaluation"], raise_on_error=False
    )
    assert not result.success
    message = result.failure_data_for_node("baseline_evaluation").error.message
    assert "3 of 10 examples (30%) raised an error in the program of task 'adder'" in message
    assert "more than the 20%" in message
    assert "e.g. example 'test-2': ValueError: this program cannot add 201" in message
    # Nothing lost: every request the evaluation made is in the call log, for the cache to replay.
    paid = lab.calls("boom", "baseline_evaluation")
    assert len(paid) >= 7 and all(r["ok"] for r in paid)
    rows = (lab.runs_dir / "boom" / "predictions" / "baseline.jsonl").read_text().splitlines()
    assert len(rows) == 10


# --- a metric that returns a non-number or NaN --------------------------------------------------------
@pytest.mark.parametrize(("mark", "said"), [("NAN", "returned nan"), ("WORDY", "returned str")])
def test_a_metric_that_returns_no_number_fails_naming_the_metric_and_example(lab: Lab, mark: str, said: str):
    _own_task(lab, {5: mark})
    lab.write("nan", task="adder", evaluation={"limit": 10})
    result = lab.run("nan", ["experiment_file", "stage1_prompt", "baseline_evaluation"], raise_on_error=False)
    assert not result.success
    message = result.failure_data_for_node("baseline_evaluation").error.message
    assert str(lab.data_dir / "tasks" / "adder" / "task.yaml") in message
    assert "metric 'program:metric'" in message and said in message
    assert "on example 'test-6'" in message
    assert lab.calls("nan", "stage1")  # Stage 1 is kept, and so is what it paid
    assert lab.materializations("nan", "stage1_prompt") == 1


# --- a provider reply with no choices or no content ----------------------------------------------------
@pytest.mark.parametrize("fault", ["empty_choices", "null_content"])
def test_replies_that_are_always_empty_fail_cleanly_after_retries(lab: Lab, fault: str):
    # Now and then they are retried and the run completes (test_providers.test_every_fault_kind_is_survived).
    with SimServer(fault_rate=1.0, fault_kinds=[fault]).start() as server:
        lab.write("empty", small_model={"model": "openai/sim-small", "api_base": server.url})
        steps = ["experiment_file", "stage1_prompt", "stage2_hardened_prompt"]
        result = lab.run("empty", steps, raise_on_error=False, num_retries=1)
        requests = server.stats()["requests"]
    assert not result.success
    message = result.failure_data_for_node("stage2_hardened_prompt").error.message
    assert "provider kept failing after retries" in message and "empty reply" in message
    ledger = json.loads((lab.runs_dir / "empty" / "ledgers" / "stage2.json").read_text())
    assert ledger["by_model"]["openai/sim-small"]["failed_attempts"] == requests > 0
    assert lab.materializations("empty", "stage1_prompt") == 1


# --- data files ---------------------------------------------------------------------------------------
def test_a_non_utf8_byte_names_the_csv_and_its_line(lab: Lab, monkeypatch, capsys):
    path = lab.data_dir / "tasks" / "reviews" / "test.csv"
    lines = path.read_bytes().split(b"\n")
    lines[5] += b"\xff"  # the 5th review, on line 6
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(TaskDataError) as error:
        load_task("reviews", lab.data_dir / "tasks")
    assert str(error.value).startswith(f"{path}:6: byte 0xff at column ")
    assert "is not UTF-8" in str(error.value)

    experiment = lab.write("bytes", task="reviews", evaluation={"limit": 10})
    _cli(lab, monkeypatch)
    capsys.readouterr()
    assert main(["validate"]) == 1
    out = capsys.readouterr().out
    assert f"{experiment}: {path}:6: byte 0xff" in out


def test_a_byte_order_mark_is_not_part_of_the_first_column(lab: Lab):
    path = lab.data_dir / "tasks" / "reviews" / "train.csv"
    before = load_task("reviews", lab.data_dir / "tasks").sizes
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert load_task("reviews", lab.data_dir / "tasks").sizes == before


def test_a_label_column_missing_in_one_split_names_the_file_and_column(lab: Lab):
    path = lab.data_dir / "tasks" / "reviews" / "dev.csv"
    text = [line.rsplit(",", 1)[0] for line in path.read_text().splitlines()]  # drop `polarity`
    path.write_text("\n".join(text) + "\n")
    with pytest.raises(TaskDataError) as error:
        load_task("reviews", lab.data_dir / "tasks")
    assert str(error.value) == f"{path}:2: missing field(s) ['polarity']"


# --- experiment and campaign files --------------------------------------------------------------------
def test_a_duplicate_key_in_an_experiment_file_names_the_key_and_lines(lab: Lab):
    path = lab.write("twice")
    path.write_text(path.read_text() + "stage1: {optimizer: gepa, max_calls: 500}\n")
    first = next(i for i, line in enumerate(path.read_text().splitlines(), 1) if line.startswith("stage1:"))
    last = len(path.read_text().splitlines())
    with pytest.raises(ExperimentError) as error:
        load_experiment(lab.data_dir, "twice")
    message = str(error.value)
    assert message.startswith(f"{path}: not valid YAML")
    assert f"duplicate key 'stage1' on line {last} (first on line {first})" in message

    # Nested too, and in a campaign file.
    path.write_text("experiment_id: twice\nstage2: {max_calls: 10, max_calls: 20}\n")
    with pytest.raises(ExperimentError, match="duplicate key 'max_calls' on line 2"):
        load_experiment(lab.data_dir, "twice")
    campaign = lab.data_dir / "campaigns" / "dup.yaml"
    campaign.parent.mkdir(exist_ok=True)
    campaign.write_text("campaign: dup\ntasks: [arithmetic]\ntasks: [reviews]\nseeds: [0]\n")
    _, errors = scan_campaigns(lab.data_dir)
    assert errors["dup"].startswith(f"{campaign}: not valid YAML")
    assert "duplicate key 'tasks' on line 3 (first on line 2)" in errors["dup"]


def test_a_limit_larger_than_the_split_is_refused_before_any_call(lab: Lab):
    path = lab.write("toolong", task="reviews", evaluation={"limit": 500})
    expected = f"{path}: evaluation.limit=500 is larger than the test split of task 'reviews' (150 examples)"
    assert problems(lab.data_dir)[str(path)].startswith(expected)
    result = lab.run("toolong", ["experiment_file", "stage1_prompt"], raise_on_error=False)
    assert not result.success
    message = result.failure_data_for_node("stage1_prompt").error.message
    assert "evaluation.limit=500 is larger than the test split of task 'reviews' (150 examples)" in message
    assert lab.calls("toolong") == []
    # Without a limit in the file, the default takes what the split has.
    lab.write("fits", task="reviews", evaluation={"split": "test"})
    assert str(lab.data_dir / "experiments" / "fits.yaml") not in problems(lab.data_dir)
