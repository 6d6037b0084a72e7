"""LM providers behind one Dagster resource; every call goes through `MeteredEngine` (budgets + usage).

The model string of an experiment picks the provider: `sim/<tier>` (offline simulator),
`openrouter/<org>/<model>` and `openai/<name>` + `api_base` (any OpenAI-compatible server). The HTTP
providers use DSPy's native engine; DSPy's LM layer owns caching and retries with backoff.
"""

from __future__ import annotations

import math
import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import dspy
from dagster import ConfigurableResource
from dspy.clients.engines.lm15_engine import LM15Engine, timeouts_for
from dspy.clients.execution import execute, finalize, prepare
from dspy.lm15 import ProviderError, Request, Response, RouterConfig, TransportError
from dspy.utils.callback import with_callbacks
from dspy.utils.exceptions import (
    LMAuthError,
    LMBillingError,
    LMConfigurationError,
    LMRateLimitError,
    LMServerError,
    LMTimeoutError,
    LMTransportError,
)

from lsl_dagster.llm.cache import endpoint_scope
from lsl_dagster.llm.ledger import Meter
from lsl_dagster.llm.replies import note_finish_reasons
from lsl_dagster.sim import engine as sim
from lsl_dagster.sim.keys import answer_key
from lsl_dagster.spec.experiment import ExperimentSpec, ModelSpec, Price
from lsl_dagster.spec.providers import FAMILIES, api_key, key_variable
from lsl_dagster.tasks.task import Task

# Loads the experiment's task; only the sim reads it (its answer key), and only when it is used.
TaskLoader = Callable[[], Task]

# Prices come from the price map packaged with DSPy; never fetched over the network at run time.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "true")


class ConfigError(ValueError):
    """The experiment cannot run as written (missing key, unknown price for a cost budget...)."""


class ProviderUnavailable(BaseException):
    """The provider kept failing after DSPy's retries. A BaseException because optimizers and
    dspy.Evaluate score a failed example as 0: an outage must stop the stage, not read as wrong answers."""


class AccessDenied(ProviderUnavailable):
    """401/402/403: a wrong key or an exhausted account. Retrying cannot help and may cost: the step
    stops at once, with no retry by DSPy or Dagster."""


# Errors that mean "the provider is not serving us" once DSPy's retries are spent. Others (a request
# too long for the context window, unparseable output) stay failures of that one example.
_OUTAGES = (LMRateLimitError, LMServerError, LMTimeoutError, LMTransportError)
_DENIED = (LMAuthError, LMBillingError)


class MeteredLM(dspy.LM):
    """dspy.LM whose exhausted retries end the stage (ProviderUnavailable) instead of one example, and
    whose calls are cached under its endpoint as well as the request (see cache.endpoint_scope), and
    which notes each reply's finish_reason (fresh or cached) for the evaluation's format accounting."""

    endpoint: str = ""

    def __call__(self, prompt: Any = None, *, messages: Any = None, **kwargs: Any) -> Any:
        try:
            with endpoint_scope(self.endpoint):
                return self._call(prompt, messages=messages, **kwargs)
        except _DENIED as exc:
            denied = AccessDenied(f"access denied by {self.model}: {type(exc).__name__}: {exc}")
            self.engine.meter.halt(denied)
            raise denied from exc
        except _OUTAGES as exc:
            unavailable = ProviderUnavailable(
                f"provider unavailable: {self.model}: {type(exc).__name__}: {exc}"
            )
            self.engine.meter.halt(unavailable)
            raise unavailable from exc

    @with_callbacks
    def _call(self, prompt: Any = None, *, messages: Any = None, **kwargs: Any) -> Any:
        # dspy.BaseLM.__call__'s three steps; the finish_reasons are only on the intermediate result.
        call = prepare(self, prompt, messages, kwargs)
        result = execute(self, call)
        note_finish_reasons(response.finish_reason for response in result.responses)
        return finalize(self, call, result)


class MeteredEngine:
    """Wraps a provider engine: reserve budget, cap concurrency, send, record usage and cost."""

    def __init__(self, inner: Any, spec: ModelSpec, meter: Meter, price: Price | None):
        self.inner = inner
        self.spec = spec
        self.meter = meter
        self.price = price
        self._slots = threading.BoundedSemaphore(spec.max_concurrency)

    def _worst_cost(self, request: Request) -> float | None:
        if self.price is None:
            return None
        system = request.system if isinstance(request.system, str) else ""
        chars = len(system) + sum(len(m.text or "") for m in request.messages)
        # Two characters per token over-estimates every mainstream tokenizer: the bound must not undershoot.
        input_tokens = math.ceil(chars / 2) + 16
        return self.price.cost(input_tokens, request.config.max_tokens or self.spec.max_tokens)

    def _cost(self, response: Response) -> tuple[float | None, str]:
        usage = (response.provider_data or {}).get("usage") or {}
        reported = usage.get("cost") if isinstance(usage, dict) else None
        if isinstance(reported, int | float) and not isinstance(reported, bool) and reported >= 0:
            return float(reported), "provider"
        tokens_in, tokens_out = response.usage.input_tokens, response.usage.output_tokens
        if self.price is not None and tokens_in is not None and tokens_out is not None:
            return self.price.cost(tokens_in, tokens_out), "price_table"
        return None, "unknown"

    def complete(self, request: Request) -> Response:
        worst = self._worst_cost(request)
        model = self.spec.model
        with self._slots:
            self.meter.reserve(model, worst)
            start = time.perf_counter()
            try:
                response = self.inner.complete(request)
            except ProviderError as exc:
                garbled = type(exc) is ProviderError and getattr(exc, "status", None) == 200
                self.meter.settle(
                    model,
                    worst,
                    ok=False,
                    latency_s=time.perf_counter() - start,
                    error=str(exc)[:200],
                    **_maybe_billed(worst, garbled or isinstance(exc, TimeoutError)),
                )
                if garbled:
                    # HTTP 200 with a body that is not a completion (truncated, garbled): a transport
                    # fault, which DSPy retries; unclassified provider errors it would not.
                    raise TransportError(f"malformed response body from {model}") from exc
                raise
            except BaseException as exc:
                self.meter.settle(
                    model,
                    worst,
                    ok=False,
                    latency_s=time.perf_counter() - start,
                    error=type(exc).__name__,
                    **_maybe_billed(worst, isinstance(exc, TimeoutError)),
                )
                raise
            cost, source = self._cost(response)
            # A simulator says so in its reply, whatever the model is called or however it is served.
            simulated = (response.provider_data or {}).get("system_fingerprint") == sim.FINGERPRINT
            self.meter.settle(
                model,
                worst,
                ok=True,
                input_tokens=response.usage.input_tokens or 0,
                output_tokens=response.usage.output_tokens or 0,
                cost_usd=cost,
                cost_source=source,
                latency_s=time.perf_counter() - start,
                simulated=simulated,
            )
        return response

    def stream(self, request: Request) -> Any:
        raise NotImplementedError("lsl_dagster does not stream")

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()


def _maybe_billed(worst: float | None, billed: bool) -> dict[str, Any]:
    """A call that timed out or came back garbled may still have been billed: it counts at its
    worst-case cost (as spend, so budgets hold), flagged as an estimate."""
    if not billed:
        return {}
    return {"cost_usd": worst, "cost_source": "worst_case" if worst is not None else "unknown"}


class Provider(ABC):
    @abstractmethod
    def price(self, spec: ModelSpec) -> Price | None: ...

    @abstractmethod
    def engine(self, spec: ModelSpec, seed: int, task: TaskLoader | None = None) -> Any: ...

    def check(self, spec: ModelSpec, *, need_price: bool) -> None:
        """Everything that would make the first call fail, checked before any call."""
        var = key_variable(spec, os.environ)
        if var is not None and not api_key(spec, os.environ):
            raise ConfigError(f"{spec.model} needs an API key: set the environment variable {var}")
        if need_price and self.price(spec) is None:
            raise ConfigError(
                f"max_cost_usd is set but no price is known for {spec.model}: add "
                "`price: {input_per_mtok: ..., output_per_mtok: ...}` to its model entry"
            )
        try:
            # DSPy itself refuses settings its model cannot take (e.g. a reasoning model's temperature and
            # max_tokens) when the LM is built, without calling it: say what to write before anything runs.
            dspy.LM(spec.model, temperature=spec.temperature, max_tokens=spec.max_tokens)
        except LMConfigurationError as exc:
            raise ConfigError(
                f"{spec.model} cannot run with temperature {spec.temperature} and max_tokens "
                f"{spec.max_tokens}; change them in its model entry. DSPy said: {exc}"
            ) from None


class SimProvider(Provider):
    """The offline simulator (a test double): given the experiment's task, it reads the gold labels."""

    def price(self, spec: ModelSpec) -> Price | None:
        if spec.price is not None:
            return spec.price
        rate = sim.TIERS[sim.tier_name(spec.model)].price
        return Price(input_per_mtok=rate.input_per_mtok, output_per_mtok=rate.output_per_mtok)

    def engine(self, spec: ModelSpec, seed: int, task: TaskLoader | None = None) -> Any:
        return sim.SimEngine(spec.model, seed, answer_key(task()) if task is not None else None)

    def check(self, spec: ModelSpec, *, need_price: bool) -> None:
        try:
            sim.tier_name(spec.model)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        super().check(spec, need_price=need_price)


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
        engine = LM15Engine(config, model_type="chat")
        if family.lm15 == "openai-chat" and urlsplit(spec.endpoint).hostname != "api.openai.com":
            return BothTokenLimits(engine)
        return engine


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


PROVIDERS: dict[str, Provider] = {"sim": SimProvider(), **{name: HttpProvider() for name in FAMILIES}}


class LanguageModels(ConfigurableResource):
    """Builds the metered `dspy.LM`s of an experiment. DSPy retries each failed call (429 honouring
    Retry-After, 5xx, timeouts, dropped connections) `num_retries` times with backoff; a step whose
    provider still fails is retried `step_retries` times by Dagster, replaying paid calls from the cache."""

    num_retries: int = 4
    step_retries: int = 1
    step_retry_delay_s: float = 30.0

    def check(self, spec: ExperimentSpec) -> None:
        for model in (spec.large_model, spec.small_model):
            self.check_model(model, need_price=spec.max_cost_usd is not None)

    def check_model(self, spec: ModelSpec, *, need_price: bool) -> None:
        PROVIDERS[spec.provider].check(spec, need_price=need_price)

    def lm(self, spec: ModelSpec, meter: Meter, seed: int, task: TaskLoader | None = None) -> dspy.LM:
        provider = PROVIDERS[spec.provider]
        engine = MeteredEngine(provider.engine(spec, seed, task), spec, meter, provider.price(spec))
        lm = MeteredLM(
            spec.model,
            engine=engine,
            temperature=spec.temperature,
            max_tokens=spec.max_tokens,
            num_retries=self.num_retries,
            cache=True,
        )
        lm.endpoint = spec.endpoint
        return lm
