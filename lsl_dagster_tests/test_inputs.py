"""Bad input gets a clear error, before any LLM call, and loses nothing."""

import logging
from pathlib import Path

import pytest

from lsl_dagster import graph
from lsl_dagster.cli.code_location import spec_hashes
from lsl_dagster.results.instance import stage_status, stages_of
from lsl_dagster.spec.experiment_files import ExperimentError, experiment_ids, load_experiment
from lsl_dagster.spec.strict import check_slug
from lsl_dagster.tasks.task import TaskDataError, load_task
from lsl_dagster_tests.conftest import Lab


@pytest.mark.parametrize("bad", ["", "../x", "a/b", "..", "Upper", "has space", "x" * 65, "-lead", "trail-"])
def test_unsafe_experiment_ids_are_refused(lab: Lab, bad: str):
    with pytest.raises(ValueError, match="not a safe experiment id"):
        check_slug(bad)
    with pytest.raises(ExperimentError, match="not a safe experiment id"):
        load_experiment(lab.data_dir, bad)


def test_experiment_files_with_unsafe_names_are_reported_and_skipped(
    lab: Lab, caplog: pytest.LogCaptureFixture
):
    lab.write("good-1")
    (lab.data_dir / "experiments" / "Not Safe.yaml").write_text("experiment_id: x\n")
    with caplog.at_level(logging.WARNING):
        assert experiment_ids(lab.data_dir) == ["good-1"]
    assert "Not Safe.yaml" in caplog.text


def test_invalid_experiment_file_names_file_and_field(lab: Lab):
    path = lab.write("bad-1", stage1={"optimizer": "adam"}, colour="blue")
    with pytest.raises(ExperimentError) as error:
        load_experiment(lab.data_dir, "bad-1")
    message = str(error.value)
    assert str(path) in message and "stage1.optimizer" in message and "colour" in message


def test_experiment_id_must_match_file_name(lab: Lab):
    lab.write("name-a", experiment_id="name-b")
    with pytest.raises(ExperimentError, match="does not match the file name"):
        load_experiment(lab.data_dir, "name-a")


def test_a_pasted_key_in_api_key_env_is_refused_without_echoing_it(lab: Lab):
    secret = "sk-or-v1-0123456789abcdef"
    lab.write("key-1", large_model={"model": "openrouter/openai/gpt-4o-mini", "api_key_env": secret})
    with pytest.raises(ExperimentError, match="NAME of an environment variable") as error:
        load_experiment(lab.data_dir, "key-1")
    assert secret not in str(error.value)


def test_malformed_dataset_lines_are_reported_with_file_and_line(lab: Lab):
    task_dir = lab.data_dir / "tasks" / "qa"
    task_dir.mkdir()
    (task_dir / "task.yaml").write_text(
        "name: qa\ninstructions: Answer.\ninputs: {question: A question.}\n"
        "output: answer\nmetric: exact_match\n"
    )

    def good(q: str) -> str:
        return f'{{"question": "{q}", "answer": "a"}}\n'

    (task_dir / "train.jsonl").write_text(good("q1") + good("q2") + good("q3"))
    (task_dir / "dev.jsonl").write_text(good("d1") + '{"question": "q2"}\n')
    (task_dir / "test.jsonl").write_text(good("t1") + "{not json\n")
    with pytest.raises(TaskDataError, match=r"dev\.jsonl:2: missing field\(s\) \['answer'\]"):
        load_task("qa", lab.data_dir / "tasks")
    (task_dir / "dev.jsonl").write_text(good("d1") + '{"id": "dev-x", "question": "d2", "answer": "b"}\n')
    with pytest.raises(TaskDataError, match=r"test\.jsonl:2: invalid JSON"):
        load_task("qa", lab.data_dir / "tasks")
    (task_dir / "test.jsonl").write_text(good("t1") + "\n" + good("t2"))
    with pytest.raises(TaskDataError, match=r"test\.jsonl:2: empty line"):
        load_task("qa", lab.data_dir / "tasks")

    # Through the pipeline: the stage fails naming the line, and no call is made.
    (task_dir / "test.jsonl").write_text(good("t1") + "[1, 2]\n")
    lab.write("qa-1", task="qa")
    result = lab.run("qa-1", raise_on_error=False)
    assert not result.success
    failure = result.failure_data_for_node("stage1_prompt")
    assert "test.jsonl:2: expected a JSON object" in failure.error.message
    assert not (lab.runs_dir / "qa-1" / "calls.jsonl").exists()


def test_a_missing_key_fails_before_any_call(lab: Lab, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("OPENROUTER_API_KEY", raising=False)
    lab.write("or-1", large_model={"model": "openrouter/openai/gpt-4o-mini"})
    result = lab.run("or-1", raise_on_error=False)
    assert not result.success
    failure = result.failure_data_for_node("stage1_prompt")
    assert "set the environment variable OPENROUTER_API_KEY" in failure.error.message
    assert not Path(lab.runs_dir / "or-1" / "calls.jsonl").exists()


def test_a_cost_budget_needs_a_known_price(lab: Lab, sim_server):
    lab.write(
        "price-1", small_model={"model": "openai/sim-small", "api_base": sim_server.url}, max_cost_usd=1.0
    )
    result = lab.run("price-1", raise_on_error=False)
    failure = result.failure_data_for_node("stage1_prompt")
    assert "no price is known for openai/sim-small" in failure.error.message
    assert sim_server.stats()["requests"] == 0


def _status(lab: Lab, asset: str, experiment_id: str) -> str:
    """What `lsl status` shows for one stage (read from the instance's public records)."""
    stages = stages_of(lab.defs().resolve_all_asset_specs())
    table = stage_status(lab.instance, stages, spec_hashes(lab.data_dir, [experiment_id]))
    return table[experiment_id][asset]


def test_editing_an_experiment_file_marks_exactly_its_assets_stale(lab: Lab):
    for name in ("edit-a", "edit-b"):
        lab.write(name)
        # The baseline's evaluation with what it waits for: every prompt (graph.waits_for).
        assets = ["experiment_file", *graph.waits_for(), "baseline_evaluation"]
        assert lab.run(name, assets).success
    path = lab.data_dir / "experiments" / "edit-a.yaml"
    # A comment is not a change of the experiment.
    path.write_text("# a note\n" + path.read_text())
    lab.run("edit-a", ["experiment_file"])
    assert _status(lab, "stage1_prompt", "edit-a") == "materialized"

    path.write_text(path.read_text().replace("seed: 0", "seed: 1"))
    lab.run("edit-a", ["experiment_file"])
    assert _status(lab, "stage1_prompt", "edit-a") == "stale"
    assert _status(lab, "baseline_evaluation", "edit-a") == "stale"
    assert _status(lab, "stage1_prompt", "edit-b") == "materialized"
    assert _status(lab, "baseline_evaluation", "edit-b") == "materialized"


def test_the_sensor_observes_exactly_the_files_that_changed(lab: Lab):
    from dagster import build_sensor_context

    for name in ("watch-a", "watch-b"):
        lab.write(name)
    defs = lab.defs()
    sensor = defs.resolve_sensor_def("experiment_files")

    def tick(cursor: str | None):
        with build_sensor_context(instance=lab.instance, cursor=cursor, resources=defs.resources) as context:
            result = sensor(context)
        return sorted(e.partition for e in result.asset_events), result.cursor

    observed, cursor = tick(None)
    assert observed == ["watch-a", "watch-b"]
    assert tick(cursor)[0] == []
    path = lab.data_dir / "experiments" / "watch-b.yaml"
    path.write_text(path.read_text().replace("seed: 0", "seed: 2"))
    assert tick(cursor)[0] == ["watch-b"]
