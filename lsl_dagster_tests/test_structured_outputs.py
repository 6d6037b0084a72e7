"""Constrained decoding per model entry: the output schema goes out in each server dialect's field, a
server that refuses the field stops the stage with the setting to change, and Stage 2 stops before it
spends its budget when the small model gives no signal."""

import tempfile
from pathlib import Path
from typing import Any, Literal

import dspy
import pytest
from dspy.clients.cache import Cache

from lsl_dagster.llm.cache import ExperimentCache, ResponseStore, experiment_cache, schema_scope
from lsl_dagster.llm.engine import StructuredOutputsRejected
from lsl_dagster.llm.language_models import LanguageModels
from lsl_dagster.llm.ledger import Meter
from lsl_dagster.llm.structured import ModelAdapter, output_schema
from lsl_dagster.method.run import StageRun
from lsl_dagster.records import PromptCandidate
from lsl_dagster.sim.server import SimServer
from lsl_dagster.spec.experiment import ExperimentSpec, ModelSpec
from lsl_dagster.tasks.task import load_task
from lsl_dagster_tests.conftest import Lab, shipped_keys

TASKS = Path(__file__).resolve().parents[1] / "data" / "tasks"
SENTIMENT = Literal["positive", "negative"]


class Review(dspy.Signature):
    """Is the review positive or negative?"""

    review: str = dspy.InputField()
    sentiment: SENTIMENT = dspy.OutputField()


def _run(server: SimServer, **small: Any) -> StageRun:
    spec = ExperimentSpec.model_validate(
        {
            "experiment_id": "structured",
            "task": "sentiment",
            "large_model": {"model": "sim/large"},
            "small_model": {"model": "openai/sim-small", "api_base": server.url, **small},
        }
    )
    return StageRun(
        spec, Meter("stage2", max_calls=20, cost_allowance_usd=None), LanguageModels(num_retries=0)
    )


def _ask(run: StageRun, signature: type[dspy.Signature] | str = Review) -> dspy.Prediction:
    # A cache of its own (as a stage has): a reply cached elsewhere would send nothing.
    with (
        tempfile.TemporaryDirectory() as scratch,
        ResponseStore(Path(scratch) / "responses.sqlite") as store,
        experiment_cache(store, run.meter),
        dspy.context(lm=run.lm("small"), adapter=ModelAdapter()),
    ):
        return dspy.Predict(signature)(review="I love this kettle.")


SCHEMA = {
    "type": "object",
    "properties": {"sentiment": {"enum": ["positive", "negative"], "title": "Sentiment", "type": "string"}},
    "required": ["sentiment"],
    "additionalProperties": False,
}
OPENAI_SHAPE = {"type": "json_schema", "json_schema": {"name": "outputs", "schema": SCHEMA, "strict": True}}
SENT = {
    "openai": {"response_format": OPENAI_SHAPE},
    "llama.cpp": {"response_format": OPENAI_SHAPE},
    "vllm": {"response_format": OPENAI_SHAPE},
    "llama-cpp-python": {"response_format": {"type": "json_object", "schema": SCHEMA}},
    "ollama": {"response_format": OPENAI_SHAPE, "format": SCHEMA},
}


def test_output_schema_carries_names_types_and_choices():
    assert output_schema(Review) == SCHEMA


@pytest.mark.parametrize("dialect", list(SENT))
def test_each_dialect_gets_the_schema_in_its_own_field_and_a_reply_that_fits(dialect: str):
    sim_dialect = "llama-cpp" if dialect == "llama-cpp-python" else "openai"
    with SimServer(dialect=sim_dialect).start() as server:
        run = _run(server, structured_outputs=True, dialect=dialect, max_tokens=64)
        prediction = _ask(run)
        assert server.schemas_seen == [SENT[dialect]]
    # A constrained reply always parses, and only to one of the choices.
    assert prediction.sentiment in ("positive", "negative")
    assert run.meter.ledger().by_model["openai/sim-small"].calls == 1


@pytest.mark.parametrize("dialect", list(SENT))
def test_a_server_that_refuses_the_field_stops_with_the_setting_to_change(dialect: str):
    with SimServer(reject_structured=True).start() as server:
        run = _run(server, structured_outputs=True, dialect=dialect)
        with pytest.raises(StructuredOutputsRejected) as raised:
            _ask(run)
        served = server.stats()["served"]
    message = str(raised.value)
    assert "rejected `response_format`" in message and f"dialect {dialect}" in message
    assert "structured_outputs: false" in message and "`dialect:`" in message
    # The first refusal is final: nothing retried, nothing served, every later call refused.
    assert served == 0
    assert run.meter.ledger().by_model["openai/sim-small"].failed_attempts == 1
    with pytest.raises(BaseException, match="rejected"):
        _ask(run)


def test_llama_cpp_python_refuses_openai_json_schema_and_the_error_names_the_dialect():
    """llama-cpp-python's server takes only text or json_object: the OpenAI shape is a clear error."""
    with (
        SimServer(dialect="llama-cpp").start() as server,
        pytest.raises(StructuredOutputsRejected, match=r"dialect openai .*Input should be 'text'"),
    ):
        _ask(_run(server, structured_outputs=True))


def test_without_structured_outputs_nothing_is_sent_and_json_adapter_is_a_choice():
    with SimServer().start() as server:
        _ask(_run(server, adapter="json"), "review -> summary")
        assert server.schemas_seen == []


def test_the_cache_key_includes_the_schema_and_is_unchanged_without_it(tmp_path: Path):
    request = {"model": "openai/x", "messages": [{"role": "user", "content": "hi"}]}
    cache = Cache(enable_disk_cache=False, enable_memory_cache=False, disk_cache_dir=None)
    with ResponseStore(tmp_path / "responses.sqlite") as store:
        ours = ExperimentCache(store, Meter("s", max_calls=None, cost_allowance_usd=None))
        plain = ours.cache_key(request)
        with schema_scope(SCHEMA):
            constrained = ours.cache_key(request)
    assert plain == cache.cache_key(request)
    assert constrained != plain


def test_settings_that_cannot_work_together_are_refused_when_the_file_is_read():
    with pytest.raises(ValueError, match="only adapter: json parses"):
        ModelSpec(model="openai/x", api_base="http://127.0.0.1:1/v1", structured_outputs=True, adapter="chat")
    with pytest.raises(ValueError, match="in-process simulator has no constrained decoding"):
        ModelSpec(model="sim/small", structured_outputs=True)
    assert ModelSpec(model="openai/x", structured_outputs=True).output_adapter == "json"
    assert ModelSpec(model="ollama_chat/llama3").wire_dialect == "ollama"


def test_declared_choices_become_a_literal_type_in_the_built_signature():
    task = load_task("sentiment", TASKS)
    (_, predictor), *_ = task.program().named_predictors()
    assert predictor.signature.output_fields["sentiment"].annotation == SENTIMENT
    assert output_schema(predictor.signature)["properties"]["sentiment"]["enum"] == ["positive", "negative"]


def _sentiment_lab(lab: Lab, experiment_id: str, server: SimServer, **stage2: Any) -> None:
    lab.write(
        experiment_id,
        task="sentiment",
        large_model={"model": "sim/large"},
        # sim-small behind a server whose small model writes prose instead of the format (as SmolLM2 did).
        small_model={"model": "openai/sim-small", "api_base": server.url, "max_tokens": 128},
        stage1={"optimizer": "miprov2", "max_calls": 60},
        stage2={"max_calls": 60, "probe_examples": 6, **stage2},
        data={"train": 8, "val": 8},
        evaluation={"split": "test", "limit": 30},  # the whole sentiment test split
    )


def test_stage2_stops_before_its_budget_when_the_small_model_gives_no_signal(lab: Lab):
    with SimServer(unformatted_rate=1.0, answer_keys=shipped_keys()).start() as server:
        _sentiment_lab(lab, "no-signal", server, on_no_signal="stop")
        result = lab.run("no-signal", ["stage1_prompt", "stage2_hardened_prompt"], raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error
    assert (
        "no signal for Stage 2: small model openai/sim-small: 6 of 6 replies unparseable" in failure.message
    )
    assert "set structured_outputs: true" in failure.message
    # The probe's calls, and nothing more: 6 examples, each retried once as JSON by ChatAdapter.
    assert len(lab.calls("no-signal", "stage2")) == 12


def test_on_no_signal_warn_continues_and_says_so_everywhere(lab: Lab):
    with SimServer(unformatted_rate=1.0, answer_keys=shipped_keys()).start() as server:
        _sentiment_lab(lab, "warned", server, on_no_signal="warn")
        assert lab.run("warned", ["stage1_prompt", "stage2_hardened_prompt"]).success
    stage2 = PromptCandidate.model_validate(lab.output("warned", "stage2_hardened_prompt"))
    signal = stage2.provenance.small_model_signal
    assert signal is not None and (signal.probe_n, signal.probe_failed) == (6, 6)
    assert signal.replies > 0 and signal.parse_share == 0
    assert stage2.provenance.stop_reason.startswith("unchanged: no signal for Stage 2")
    metadata = lab.metadata("warned", "stage2_hardened_prompt")
    assert metadata["no_signal"] == signal.no_signal
    assert metadata["small_model_parse_share"] == 0
