"""Every HTTP provider family through DSPy's native (lm15) engine, priced from DSPy's packaged price map."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

from dspy.clients.engines.lm15_engine import LM15Engine, timeouts_for
from dspy.lm15 import Request, Response, RouterConfig

from lsl_dagster.llm.provider import Provider, TaskLoader
from lsl_dagster.llm.structured import ConstrainedDecoding
from lsl_dagster.spec.experiment import ModelSpec, Price
from lsl_dagster.spec.providers import api_key

# Prices come from the price map packaged with DSPy; never fetched over the network at run time.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "true")


def packaged_price(spec: ModelSpec) -> Price | None:
    """The model's price from DSPy's packaged price snapshot (LiteLLM's map), never fetched at run time.
    Only for the provider's own endpoint: a model name on someone else's server has no list price."""
    if not spec.default_endpoint or spec.family.price_namespace is None:
        return None
    from dspy.clients.model_metadata import model_info

    info = model_info(spec.family.price_namespace, spec.model.split("/", 1)[1])
    prices = info.get("input_cost_per_token"), info.get("output_cost_per_token")
    if not all(isinstance(p, int | float) for p in prices):
        return None
    return Price(input_per_mtok=prices[0] * 1e6, output_per_mtok=prices[1] * 1e6)


class HttpProvider(Provider):
    """Every HTTP provider family, through DSPy's native (lm15) engine: OpenAI chat completions (OpenAI,
    OpenRouter, Ollama, any OpenAI-compatible server), Anthropic messages, Gemini generateContent."""

    def check_name(self, model: str) -> None:
        """Any name: only the server knows what it serves, and says so on the first call."""

    def price(self, spec: ModelSpec) -> Price | None:
        return spec.price or packaged_price(spec)

    def engine(self, spec: ModelSpec, seed: int, task: TaskLoader | None = None) -> Any:
        family = spec.family
        config = RouterConfig(
            # Only the key this endpoint may receive (api_key); a keyless server gets a placeholder,
            # never another provider's key. env={}: lm15 must not look keys up by itself.
            api_keys={family.lm15: api_key(spec, os.environ) or "not-needed"},
            base_urls={family.lm15: spec.endpoint},
            timeouts=timeouts_for(spec.timeout_s),
            env={},
        )
        engine: Any = LM15Engine(config, model_type="chat")
        if family.lm15 == "openai-chat" and urlsplit(spec.endpoint).hostname != "api.openai.com":
            engine = BothTokenLimits(engine)
        return ConstrainedDecoding(engine, spec) if spec.structured_outputs else engine


class BothTokenLimits:
    """Sends the output-token limit as `max_tokens` as well as `max_completion_tokens`.

    lm15's OpenAI dialect spells the limit `max_completion_tokens` only; llama.cpp's servers
    (llama-cpp-python, llama-server) read only `max_tokens` and, without it, generate until their
    context is full. vLLM, Ollama and SGLang read `max_tokens`. Only OpenAI itself is left out: its
    reasoning models reject `max_tokens`.
    """

    def __init__(self, inner: Any):
        self.inner = inner

    def complete(self, request: Request) -> Response:
        config = request.config
        if config.max_tokens is not None:
            extensions = {**(config.extensions or {}), "max_tokens": config.max_tokens}
            request = replace(request, config=replace(config, extensions=extensions))
        return self.inner.complete(request)

    def stream(self, request: Request) -> Any:
        raise NotImplementedError("lsl_dagster does not stream")

    def close(self) -> None:
        self.inner.close()
