"""Metrics: the built-in string metrics of declarative tasks, calling a user's metric whatever it returns,
and the task-agnostic feedback GEPA reads when a metric gives none."""

from __future__ import annotations

import inspect
import math
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import dspy

BuiltinMetric = Literal["exact_match", "numeric", "contains", "f1"]
BUILTIN_METRICS: tuple[str, ...] = ("exact_match", "numeric", "contains", "f1")
# How much of one field value the neutral feedback quotes: enough to judge, bounded for long inputs.
QUOTE = 600


def _normalize(text: str) -> str:
    text = text.lower().strip()
    text = text.translate(str.maketrans("", "", string.punctuation))
    return " ".join(text.split())


_NUMBER = re.compile(r"-?\d+(?:[.,]\d+)*")


def _number(text: str) -> float | None:
    found = _NUMBER.findall(text.replace(",", ""))
    if not found:
        return None
    try:
        return float(found[-1])
    except ValueError:
        return None


def score(metric: BuiltinMetric, gold: str, prediction: str) -> float:
    """A built-in metric on one field, in [0, 1]."""
    if metric == "exact_match":
        return float(_normalize(gold) == _normalize(prediction))
    if metric == "numeric":
        want, got = _number(gold), _number(prediction)
        return float(want is not None and got is not None and abs(want - got) < 1e-6)
    if metric == "contains":
        return float(_normalize(gold) in _normalize(prediction))
    gold_tokens, pred_tokens = _normalize(gold).split(), _normalize(prediction).split()
    common = sum(min(gold_tokens.count(t), pred_tokens.count(t)) for t in set(gold_tokens))
    if not common:
        return 0.0
    precision, recall = common / len(pred_tokens), common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def builtin_metric(metric: BuiltinMetric, labels: Sequence[str]) -> Callable[..., float]:
    """A declarative task's metric: the built-in score averaged over its output fields."""

    def task_metric(example: dspy.Example, prediction: Any, trace: Any = None) -> float:
        values = [score(metric, str(example[f]), str(getattr(prediction, f, "") or "")) for f in labels]
        return sum(values) / len(values)

    task_metric.__name__ = metric
    return task_metric


class MetricValueError(TypeError):
    """A metric returned something that is not a score; the message names the metric and the example."""


@dataclass(frozen=True)
class Scored:
    score: float
    feedback: str | None


def takes_pred_name(metric: Callable[..., Any]) -> bool:
    """Whether the metric wants GEPA's (pred_name, pred_trace) to write per-predictor feedback."""
    try:
        parameters = inspect.signature(metric).parameters
    except (TypeError, ValueError):
        return False
    return "pred_name" in parameters or any(p.kind is p.VAR_POSITIONAL for p in parameters.values())


def call_metric(
    metric: Callable[..., Any],
    example: dspy.Example,
    prediction: Any,
    trace: Any = None,
    pred_name: str | None = None,
    pred_trace: Any = None,
) -> Scored:
    """Call a user's metric and read its answer: a number, a bool, or a dspy.Prediction(score, feedback)."""
    if takes_pred_name(metric):
        result = metric(example, prediction, trace, pred_name, pred_trace)
    else:
        result = metric(example, prediction, trace)
    feedback = None
    on = f" on example {example.get('example_id')!r}" if example.get("example_id") is not None else ""
    if isinstance(result, dspy.Prediction | dict):
        if "score" not in result:
            raise MetricValueError(
                f"metric {_name(metric)} returned a prediction without a score{on}: {result!r}"[:500]
            )
        feedback = result.get("feedback")
        result = result["score"]
    if isinstance(result, bool):
        result = float(result)
    if not isinstance(result, int | float):
        raise MetricValueError(
            f"metric {_name(metric)} returned {type(result).__name__}{on}, not a number: {result!r}"[:500]
        )
    if not math.isfinite(result):
        # A NaN would turn the arm's mean, every CI and every test into NaN.
        raise MetricValueError(f"metric {_name(metric)} returned {result}{on}, not a number a mean can use")
    return Scored(float(result), None if feedback is None else str(feedback))


def _name(metric: Callable[..., Any]) -> str:
    return f"{getattr(metric, '__module__', '?')}.{getattr(metric, '__qualname__', repr(metric))}"


def _quote(value: Any) -> str:
    text = str(value)
    return repr(text if len(text) <= QUOTE else text[:QUOTE] + "…")


def neutral_feedback(
    example: dspy.Example,
    prediction: Any,
    *,
    inputs: Sequence[str],
    labels: Sequence[str],
    score_value: float,
    pred_name: str | None = None,
    pred_trace: Any = None,
) -> str:
    """What GEPA reads when the metric says nothing: the score, the inputs, and expected vs got per output
    field (and, for one predictor of a larger program, what that predictor saw and produced). It states
    facts only; no guess about the cause, so it cannot mislead the reflection model on any task."""
    lines = [f"Score: {score_value:.3g}."]
    lines += ["Program inputs:", *(f"- {f}: {_quote(example.get(f, ''))}" for f in inputs)]
    lines.append("Program outputs, expected and got:")
    for field in labels:
        got = getattr(prediction, field, None) if prediction is not None else None
        shown = "(no value)" if got is None else _quote(got)
        lines.append(f"- {field}: expected {_quote(example.get(field, ''))}, got {shown}")
    if pred_name and pred_trace:
        _, predictor_inputs, predictor_outputs = pred_trace[0]
        produced = predictor_outputs.items() if hasattr(predictor_outputs, "items") else []
        lines.append(f"Predictor `{pred_name}` received:")
        lines += [f"- {k}: {_quote(v)}" for k, v in predictor_inputs.items()]
        lines.append("and produced:")
        lines += [f"- {k}: {_quote(v)}" for k, v in produced]
    return "\n".join(lines)
