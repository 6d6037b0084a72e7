"""Format failures of model replies, made visible: small models break DSPy's output formats.

Per evaluation row, the kind of failure (`error_kind`); per stage and model, how many replies the adapters
could not parse. Both come from DSPy's own signals: the adapters' parse callbacks (a ChatAdapter parse
failure is what triggers its JSONAdapter fallback) and each reply's finish_reason ("length": cut off at
max_tokens), noted by `lsl_dagster.llm.engine.MeteredLM` for fresh and cached replies alike.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import dspy
from dspy.adapters import ChatAdapter, JSONAdapter
from dspy.utils.callback import BaseCallback
from dspy.utils.exceptions import AdapterParseError, LMError

# Above this share of unparseable or truncated rows, an arm's score measures format compliance, not the task.
WARNING_SHARE = 0.2


@dataclass
class ExampleTrace:
    """What happened to the replies of one evaluated example."""

    truncated: bool = False
    adapter_fallback: bool = False


_current: ContextVar[ExampleTrace | None] = ContextVar("lsl_example_trace", default=None)


@contextmanager
def trace_example() -> Iterator[ExampleTrace]:
    """Collect the reply signals of one example (DSPy runs each example's LM calls in its own thread)."""
    trace = ExampleTrace()
    token = _current.set(trace)
    try:
        yield trace
    finally:
        _current.reset(token)


def note_finish_reasons(reasons: Iterable[str | None]) -> None:
    trace = _current.get()
    if trace is not None and "length" in reasons:
        trace.truncated = True


def error_kind(exception: BaseException | None, score: float, trace: ExampleTrace) -> str | None:
    """wrong | unparseable | truncated | provider_failure | program_error, or None for a full score.

    A reply cut off at max_tokens explains a parse failure or a wrong answer better than either.
    """
    if isinstance(exception, AdapterParseError):
        return "truncated" if trace.truncated else "unparseable"
    if isinstance(exception, LMError):
        return "provider_failure"  # e.g. the prompt does not fit the model's context window
    if exception is not None:
        return "program_error"
    if score < 1:
        return "truncated" if trace.truncated else "wrong"
    return None


def warning(n: int, n_unparseable: int, n_truncated: int) -> str | None:
    """The warning an arm's results carry when format failures, not answers, dominate its score."""
    failed = n_unparseable + n_truncated
    if n == 0 or failed / n <= WARNING_SHARE:
        return None
    return (
        f"{failed} of {n} replies ({failed / n:.0%}) were unparseable ({n_unparseable}) or truncated at "
        f"max_tokens ({n_truncated}): this score measures format compliance more than the task. Try a "
        "larger max_tokens, a model with a proper chat template, or a stronger model."
    )


@dataclass
class ModelReplies:
    replies: int = 0
    unparseable: int = 0
    adapter_fallbacks: int = 0


class FormatWatch(BaseCallback):
    """Counts, per model, the replies DSPy's adapters parsed and those they could not; marks the current
    example when a ChatAdapter failure sent it to the JSONAdapter fallback."""

    def __init__(self) -> None:
        self.by_model: dict[str, ModelReplies] = {}
        self.last_failure: tuple[str, str] | None = None  # (model, message) of the latest parse failure
        self._lock = threading.Lock()
        self._started: dict[str, tuple[str, bool]] = {}

    def on_adapter_parse_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        lm = dspy.settings.lm
        falls_back = (
            isinstance(instance, ChatAdapter)
            and not isinstance(instance, JSONAdapter)
            and instance.use_json_adapter_fallback
        )
        with self._lock:
            self._started[call_id] = (getattr(lm, "model", "unknown"), falls_back)

    def on_adapter_parse_end(
        self, call_id: str, outputs: Any, exception: BaseException | None = None
    ) -> None:
        with self._lock:
            model, falls_back = self._started.pop(call_id, ("unknown", False))
            counts = self.by_model.setdefault(model, ModelReplies())
            counts.replies += 1
            if exception is None:
                return
            counts.unparseable += 1
            counts.adapter_fallbacks += falls_back
            self.last_failure = (model, f"{type(exception).__name__}: {exception}".splitlines()[0][:300])
        trace = _current.get()
        if trace is not None and falls_back:
            trace.adapter_fallback = True

    def summary(self) -> str | None:
        """'<model>: k of n replies unparseable' for each model with any, else None."""
        failed = [(m, c) for m, c in self.by_model.items() if c.unparseable]
        text = "; ".join(f"{m}: {c.unparseable} of {c.replies} replies unparseable" for m, c in failed)
        return text or None
