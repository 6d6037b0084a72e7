"""Weak real models: limits that reach the server, failures explained, no silent no-ops, format failures
visible. Servers here are the sim server (a simulated test double) in real local servers' dialects."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dspy
import httpx
import pytest
from dspy.clients.cache import Cache

from lsl_dagster.evaluation import Totals, evaluate
from lsl_dagster.ledger import Meter
from lsl_dagster.lm import LanguageModels
from lsl_dagster.models import ModelSpec
from lsl_dagster.program import task_program
from lsl_dagster.sim_server import SimServer
from lsl_dagster.tasks import load_task
from lsl_dagster_tests.conftest import PROJECT


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


def _evaluate(server: SimServer, tmp_path: Path, **spec: Any) -> tuple[Totals, list[dict]]:
    task = load_task("arithmetic", PROJECT / "data" / "tasks")
    model = ModelSpec(model="openai/sim-large", api_base=server.url, timeout_s=5, **spec)
    lm = LanguageModels(num_retries=0).lm(model, Meter("t", max_calls=None, cost_allowance_usd=None), 0)
    out = tmp_path / "predictions.jsonl"
    with dspy.context(lm=lm):
        totals = evaluate(task_program(task), task, task.examples("test", 12), threads=2, out=out)
    return totals, [json.loads(line) for line in out.read_text().splitlines()]


def test_truncated_replies_are_counted_as_truncated_not_as_wrong_answers(tmp_path: Path):
    with SimServer().start() as server:
        totals, rows = _evaluate(server, tmp_path, max_tokens=16)
        stats = server.stats()
    counts = totals.format_counts()
    # Every reply was cut off at 16 tokens; none of the failed rows is reported as a wrong answer.
    assert stats["truncated"] == stats["served"] > 0
    assert all(row["truncated"] for row in rows)
    assert counts.n_wrong == 0
    assert counts.n_truncated == sum(row["score"] < 1 for row in rows) > 0
    # A ChatAdapter parse failure is retried with the JSONAdapter: one more request for that row.
    assert counts.n_adapter_fallbacks == sum(row["adapter_fallback"] for row in rows) > 0
    assert stats["served"] == len(rows) + counts.n_adapter_fallbacks
    assert counts.format_warning is not None and "truncated" in counts.format_warning


def test_complete_replies_have_no_format_failures(tmp_path: Path):
    with SimServer().start() as server:
        totals, rows = _evaluate(server, tmp_path)
    counts = totals.format_counts()
    assert counts.n_truncated == counts.n_unparseable == counts.n_provider_failures == 0
    assert counts.n_wrong == sum(row["score"] < 1 for row in rows)
    assert counts.format_warning is None
