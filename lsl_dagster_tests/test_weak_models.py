"""Weak real models: limits that reach the server, failures explained, no silent no-ops, format failures
visible. Servers here are the sim server (a simulated test double) in real local servers' dialects."""

from __future__ import annotations

import dspy
import httpx
import pytest
from dspy.clients.cache import Cache

from lsl_dagster.ledger import Meter
from lsl_dagster.lm import LanguageModels
from lsl_dagster.models import ModelSpec
from lsl_dagster.sim_server import SimServer


@pytest.fixture(autouse=True)
def no_response_cache(monkeypatch: pytest.MonkeyPatch):
    """Calls made outside a stage would land in DSPy's global cache and be replayed by the next run."""
    off = Cache(enable_disk_cache=False, enable_memory_cache=False, disk_cache_dir="")
    monkeypatch.setattr(dspy, "cache", off)


QUESTION = "[[ ## question ## ]]\nSam has 5 apples. He buys 3 more. How many apples does Sam have?"


def test_llama_cpp_server_without_a_limit_fills_its_context():
    # The double itself: like llama-cpp-python with a small model, it ignores max_completion_tokens and,
    # with no max_tokens, generates until the context window is full.
    with SimServer(dialect="llama-cpp", context_tokens=1024).start() as server:
        body = {
            "model": "sim-small",
            "messages": [{"role": "user", "content": QUESTION}],
            "max_completion_tokens": 50,
        }
        reply = httpx.post(f"{server.url}/chat/completions", json=body, timeout=5).json()
    usage = reply["usage"]
    assert reply["choices"][0]["finish_reason"] == "length"
    assert usage["prompt_tokens"] + usage["completion_tokens"] == 1024
    assert server.token_limits == {None: 1}


def test_max_tokens_reaches_a_server_that_reads_only_max_tokens():
    with SimServer(dialect="llama-cpp", context_tokens=4096).start() as server:
        spec = ModelSpec(model="openai/sim-small", api_base=server.url, max_tokens=64, timeout_s=5)
        meter = Meter("test", max_calls=None, cost_allowance_usd=None)
        lm = LanguageModels(num_retries=0).lm(spec, meter, seed=0)
        predict = dspy.Predict("question -> answer")
        with dspy.context(lm=lm):
            for n in range(3):
                predict(question=f"What is {n} + 2?")
        stats = server.stats()
    # Every request carried the limit in the field this server reads, and every reply stayed within it.
    assert server.token_limits == {64: stats["served"]}
    assert stats["served"] >= 3
    assert stats["completion_tokens"] <= 64 * stats["served"]
    assert meter.ledger().by_model["openai/sim-small"].output_tokens == stats["completion_tokens"]
