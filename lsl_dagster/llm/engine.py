"""The metered engine every LM call goes through: budget reserved before, usage and cost recorded after,
concurrency capped; and the `dspy.LM` whose exhausted retries stop the stage instead of one example."""

from __future__ import annotations

import math
import threading
import time
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import dspy
from dspy.clients.execution import PreparedCall, execute, finalize, prepare
from dspy.lm15 import ProviderError, Request, Response, TextPart, TransportError
from dspy.utils.callback import with_callbacks
from dspy.utils.exceptions import (
    LMAuthError,
    LMBillingError,
    LMRateLimitError,
    LMServerError,
    LMTimeoutError,
    LMTransportError,
)

from lsl_dagster.llm.cache import ExperimentCache, endpoint_scope
from lsl_dagster.llm.ledger import Meter
from lsl_dagster.llm.replies import note_finish_reasons
from lsl_dagster.spec.experiment import ModelSpec, Price

# A simulator marks its replies with this `system_fingerprint`: they are counted as simulated, whatever
# the model is called or however it is served.
SIMULATED_FINGERPRINT = "lsl-sim"


def worst_input_tokens(chars: int) -> int:
    """The most input tokens a request of `chars` characters can count: two characters per token
    over-estimates every mainstream tokenizer, so a reservation (and a forecast) never undershoots."""
    return math.ceil(chars / 2) + 16


class ProviderUnavailable(BaseException):
    """The provider kept failing after DSPy's retries. A BaseException because optimizers and
    dspy.Evaluate score a failed example as 0: an outage must stop the stage, not read as wrong answers."""


class AccessDenied(ProviderUnavailable):
    """401/402/403: a wrong key or an exhausted account. Retrying cannot help and may cost: the step
    stops at once, with no retry by DSPy or Dagster."""


class StructuredOutputsRejected(ProviderUnavailable):
    """The server refused the constrained-decoding field (llm.structured): a setting to change, not an
    outage or a wrong answer. Stops the stage at its first call, with no retry by DSPy or Dagster."""


# Errors that mean "the provider is not serving us" once DSPy's retries are spent. Others (a request
# too long for the context window, unparseable output) stay failures of that one example.
_OUTAGES = (LMRateLimitError, LMServerError, LMTimeoutError, LMTransportError)
_DENIED = (LMAuthError, LMBillingError)


class MeteredLM(dspy.LM):
    """dspy.LM whose exhausted retries end the stage (ProviderUnavailable) instead of one example, and
    whose calls are cached under its endpoint as well as the request (see cache.endpoint_scope) and sent
    once however many threads ask them at the same time (cache.ExperimentCache.single_flight), and
    which notes each reply's finish_reason (fresh or cached) for the evaluation's format accounting."""

    endpoint: str = ""
    # The output format of every call to this model (see llm.structured.ModelAdapter).
    adapter: dspy.Adapter | None = None
    structured: bool = False

    def __call__(self, prompt: Any = None, *, messages: Any = None, **kwargs: Any) -> Any:
        try:
            with endpoint_scope(self.endpoint):
                return self._call(prompt, messages=messages, **kwargs)
        except StructuredOutputsRejected as exc:
            self.engine.meter.halt(exc)
            raise
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
        with self._single_flight(call):
            result = execute(self, call)
        note_finish_reasons(response.finish_reason for response in result.responses)
        return finalize(self, call, result)

    def _single_flight(self, call: PreparedCall) -> AbstractContextManager[None]:
        """The same request asked by two threads at once is sent once (see ExperimentCache.single_flight)."""
        if not call.cache or not isinstance(dspy.cache, ExperimentCache):
            return nullcontext()
        return dspy.cache.single_flight(call.key(self, False))


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
        return self.price.cost(worst_input_tokens(chars), request.config.max_tokens or self.spec.max_tokens)

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
            if _empty(response):
                # HTTP 200 with no reply in it (`choices: []`, `content: null`): malformed like a garbled
                # body, so retried; billed at what its usage says, else at its worst case.
                self.meter.settle(
                    model,
                    worst,
                    ok=False,
                    latency_s=time.perf_counter() - start,
                    error="empty reply: no choices or no content",
                    **(
                        {"cost_usd": cost, "cost_source": source}
                        if cost is not None
                        else _maybe_billed(worst, True)
                    ),
                )
                raise TransportError(f"empty reply from {model}: no choices or no content")
            simulated = (response.provider_data or {}).get("system_fingerprint") == SIMULATED_FINGERPRINT
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


def _empty(response: Response) -> bool:
    """A reply with nothing in it: lm15 reads `choices: []` and `content: null` as one empty text part. Not
    one cut off at max_tokens (finish_reason "length"), which the format accounting counts as truncated."""
    parts = response.message.parts
    return response.finish_reason != "length" and all(isinstance(p, TextPart) and not p.text for p in parts)


def _maybe_billed(worst: float | None, billed: bool) -> dict[str, Any]:
    """A call that timed out or came back garbled may still have been billed: it counts at its
    worst-case cost (as spend, so budgets hold), flagged as an estimate."""
    if not billed:
        return {}
    return {"cost_usd": worst, "cost_source": "worst_case" if worst is not None else "unknown"}
