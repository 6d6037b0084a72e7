"""The task's metric as DSPy's optimizers and Evaluate call it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dspy

from lsl_dagster.tasks.metrics import MetricValueError, Scored, call_metric, neutral_feedback
from lsl_dagster.tasks.task import Task


class MetricFailed(BaseException):
    """The task's metric gave no usable score. A BaseException because dspy.Evaluate and the optimizers
    would score the example 0 and go on: the stage must stop, naming the metric and the example."""


def _scored(task: Task, *args: Any) -> Scored:
    try:
        return call_metric(task.metric, *args)
    except MetricValueError as exc:
        raise MetricFailed(f"{task.path}: metric {task.definition.metric!r}: {exc}") from None


def metric_for(task: Task) -> Callable[..., float]:
    """The task's metric as a number."""

    def metric(example: dspy.Example, prediction: Any, trace: Any = None) -> float:
        return _scored(task, example, prediction, trace).score

    return metric


def feedback_metric_for(task: Task) -> Callable[..., dspy.Prediction]:
    """GEPA's and SIMBA's metric: the score plus the text their proposal model reads, per predictor when
    GEPA asks (pred_name). The feedback is the task metric's own; when it gives none, a task-agnostic
    account of the inputs and of expected vs got per output field."""

    def metric(
        gold: dspy.Example, pred: Any, trace: Any = None, pred_name: Any = None, pred_trace: Any = None
    ) -> dspy.Prediction:
        result = _scored(task, gold, pred, trace, pred_name, pred_trace)
        feedback = result.feedback or neutral_feedback(
            gold,
            pred,
            inputs=task.input_fields,
            labels=task.label_fields,
            score_value=result.score,
            pred_name=pred_name,
            pred_trace=pred_trace,
        )
        return dspy.Prediction(score=result.score, feedback=feedback)

    return metric
