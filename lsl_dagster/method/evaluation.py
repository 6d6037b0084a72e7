"""Evaluate a program with dspy.Evaluate, streaming per-example rows to JSONL in bounded chunks."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dspy

from lsl_dagster.llm import replies as formats
from lsl_dagster.method.optimizers.metrics import metric_for
from lsl_dagster.method.progress import StageProgress
from lsl_dagster.records import FormatCounts
from lsl_dagster.storage import outputs as storage
from lsl_dagster.storage.files import atomic_writer
from lsl_dagster.tasks.task import Example, Task, to_dspy

# Examples in flight per dspy.Evaluate call: large enough to keep every thread busy, small enough that
# memory does not grow with the test set.
CHUNK = 512
# Rows that say nothing about the prompt, right or wrong: recorded and counted, never scored (so also left
# out of the paired comparison). A provider failure (e.g. a prompt too long for the context window); an
# exception raised by the task's own program code.
UNSCORED = ("provider_failure", "program_error")
# Above this share of program errors an evaluation fails: the task's code, not the prompt, decides the score.
PROGRAM_ERROR_SHARE = 0.2


class ProgramErrors(ValueError):
    """Too many examples raised in the task's program; the message names one and its error."""


class Guarded(dspy.Module):
    """Turns a failed example (e.g. output that cannot be parsed) into a row that says why, and keeps what
    happened to the example's replies (truncation, adapter fallback) on the prediction.

    Only Exception is caught: a BudgetExhausted must stop the evaluation, not become a zero.
    """

    def __init__(self, program: dspy.Module, progress: StageProgress | None = None):
        super().__init__()
        self.program = program
        self.progress = progress

    def forward(self, **inputs: Any) -> dspy.Prediction:
        try:
            return self._forward(**inputs)
        finally:
            if self.progress is not None:
                self.progress.example_done()

    def _forward(self, **inputs: Any) -> dspy.Prediction:
        with formats.trace_example() as trace:
            try:
                prediction = self.program(**inputs)
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"[:500]
                return dspy.Prediction(error=error, dspy_lsl_trace=trace, dspy_lsl_exc=exc)
        if isinstance(prediction, dspy.Example):
            # DSPy hides "dspy_" keys from keys(), items() and len(): a user's metric does not see it.
            prediction["dspy_lsl_trace"] = trace
        return prediction


@dataclass(frozen=True)
class Totals:
    """n rows; score is the mean over the rows that were scored (all but UNSCORED ones)."""

    n: int
    score: float
    n_errors: int
    kinds: Counter[str]
    n_adapter_fallbacks: int

    def format_counts(self) -> FormatCounts:
        unparseable, truncated = self.kinds["unparseable"], self.kinds["truncated"]
        return FormatCounts(
            n_wrong=self.kinds["wrong"],
            n_unparseable=unparseable,
            n_truncated=truncated,
            n_adapter_fallbacks=self.n_adapter_fallbacks,
            n_provider_failures=self.kinds["provider_failure"],
            n_program_errors=self.kinds["program_error"],
            format_warning=formats.warning(self.n, unparseable, truncated),
        )


def evaluate(
    program: dspy.Module,
    task: Task,
    examples: Iterable[Example],
    *,
    threads: int,
    out: Path,
    progress: StageProgress | None = None,
) -> Totals:
    """Score `program` (run under the current dspy.context LM) on `examples`; rows go to `out` (JSONL).
    Raises ProgramErrors, once every row is written, when more than PROGRAM_ERROR_SHARE of the examples
    raised in the task's program."""
    task_metric = metric_for(task)

    def metric(example: dspy.Example, prediction: Any, trace: Any = None) -> float:
        # An example whose program raised has no outputs for the task's metric to read (a user's metric
        # would raise in turn, and dspy.Evaluate would drop the row's error): its error_kind says why.
        if isinstance(prediction, dspy.Prediction) and prediction.get("dspy_lsl_exc") is not None:
            return 0.0
        return task_metric(example, prediction, trace)

    guarded = Guarded(program, progress)
    first_program_error: tuple[str, str] | None = None
    n = errors = fallbacks = 0
    total = 0.0
    kinds: Counter[str] = Counter()
    callbacks = [*dspy.settings.get("callbacks", []), formats.FormatWatch()]
    with (
        atomic_writer(out) as sink,
        dspy.context(disable_history=True, max_errors=10**9, callbacks=callbacks),
    ):
        for chunk in _batched(examples, CHUNK):
            devset = [to_dspy(example, task) for example in chunk]
            result = dspy.Evaluate(devset=devset, metric=metric, num_threads=threads, max_errors=10**9)(
                guarded
            )
            for example, (_, prediction, value) in zip(chunk, result.results, strict=True):
                get = prediction.get if hasattr(prediction, "get") else {}.get
                error, trace = get("error"), get("dspy_lsl_trace") or formats.ExampleTrace()
                kind = formats.error_kind(get("dspy_lsl_exc"), float(value), trace)
                scored = None if kind in UNSCORED else float(value)
                if kind == "program_error" and first_program_error is None:
                    first_program_error = (example.id, error or "")
                row = {
                    "example_id": example.id,
                    "inputs": example.inputs,
                    "gold": example.labels,
                    "prediction": {f: _text(prediction, f) for f in task.prediction_fields},
                    "score": scored,
                    "error": error,
                    "error_kind": kind,
                    "truncated": trace.truncated,
                    "adapter_fallback": trace.adapter_fallback,
                }
                sink.write(json.dumps(row) + "\n")
                n += 1
                total += scored or 0.0
                errors += error is not None
                kinds[kind or "ok"] += 1
                fallbacks += trace.adapter_fallback
    if n == 0:
        raise ValueError(f"no examples to evaluate for task {task.name!r}")
    if first_program_error is not None and kinds["program_error"] / n > PROGRAM_ERROR_SHARE:
        example_id, error = first_program_error
        raise ProgramErrors(
            f"{kinds['program_error']} of {n} examples ({kinds['program_error'] / n:.0%}) raised an error in "
            f"the program of task {task.name!r} ({task.path}), more than the {PROGRAM_ERROR_SHARE:.0%} an "
            f"evaluation tolerates; e.g. example {example_id!r}: {error}. The rows are in {out}; the calls "
            "made replay from the cache once the program is fixed."
        )
    scored = n - sum(kinds[kind] for kind in UNSCORED)
    return Totals(
        n=n,
        score=total / scored if scored else 0.0,
        n_errors=errors,
        kinds=kinds,
        n_adapter_fallbacks=fallbacks,
    )


def scores(location: str | Path) -> dict[str, float | None]:
    """Per-example scores of an evaluation (its predictions file or object, lsl_dagster.storage.outputs), by
    example id; None for a row not scored (a provider failure or a program error)."""
    return {row["example_id"]: row["score"] for row in map(json.loads, storage.read_lines(str(location)))}


def _text(prediction: Any, field: str) -> str | None:
    value = prediction.get(field) if hasattr(prediction, "get") else None
    return None if value is None else str(value)


def _batched(items: Iterable[Example], size: int) -> Iterator[list[Example]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk
