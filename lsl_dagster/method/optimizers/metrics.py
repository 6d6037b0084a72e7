"""The task's metric as DSPy's optimizers and Evaluate call it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dspy

from lsl_dagster.tasks.metrics import call_metric, neutral_feedback
from lsl_dagster.tasks.task import Task


def metric_for(task: Task) -> Callable[..., float]:
    """The task's metric as a number."""

    def metric(example: dspy.Example, prediction: Any, trace: Any = None) -> float:
        return call_metric(task.metric, example, prediction, trace).score

    return metric


def feedback_metric_for(task: Task) -> Callable[..., dspy.Prediction]:
    """GEPA's and SIMBA's metric: the score plus the text their proposal model reads, per predictor when
    GEPA asks (pred_name). The feedback is the task metric's own; when it gives none, a task-agnostic
    account of the inputs and of expected vs got per output field."""

    def metric(
        gold: dspy.Example, pred: Any, trace: Any = None, pred_name: Any = None, pred_trace: Any = None
    ) -> dspy.Prediction:
        result = call_metric(task.metric, gold, pred, trace, pred_name, pred_trace)
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
