"""Evaluate a program with dspy.Evaluate, streaming per-example rows to JSONL in bounded chunks."""

from __future__ import annotations

import gc
import itertools
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dspy

from lsl_dagster.files import atomic_writer
from lsl_dagster.optimizers import metric_for
from lsl_dagster.tasks import Example, Task, to_dspy

# Examples in flight per dspy.Evaluate call: large enough to keep every thread busy, small enough that
# memory does not grow with the test set.
CHUNK = 512


class Guarded(dspy.Module):
    """Turns a failed example (e.g. output that cannot be parsed) into a scored-zero row that says why.

    Only Exception is caught: a BudgetExhausted must stop the evaluation, not become a zero.
    """

    def __init__(self, program: dspy.Module):
        super().__init__()
        self.program = program

    def forward(self, **inputs: Any) -> dspy.Prediction:
        try:
            return self.program(**inputs)
        except Exception as exc:
            return dspy.Prediction(error=f"{type(exc).__name__}: {exc}"[:500])


@dataclass(frozen=True)
class Totals:
    n: int
    score: float
    n_errors: int


def evaluate(
    program: dspy.Module, task: Task, examples: Iterable[Example], *, threads: int, out: Path
) -> Totals:
    """Score `program` (run under the current dspy.context LM) on `examples`; rows go to `out` (JSONL)."""
    metric = metric_for(task)
    guarded = Guarded(program)
    n = errors = 0
    total = 0.0
    # Each dspy.Evaluate starts new threads, and the disk cache opens SQLite connections per thread;
    # those of finished threads sit in reference cycles until collected, so their native memory would
    # grow with the number of chunks. One collection per chunk frees them; freezing what existed before
    # the evaluation keeps that collection ~1 ms instead of ~100 ms (bench/memory.py, throughput.py).
    gc.freeze()
    try:
        with atomic_writer(out) as sink, dspy.context(disable_history=True, max_errors=10**9):
            for chunk in _batched(examples, CHUNK):
                devset = [to_dspy(example, task) for example in chunk]
                result = dspy.Evaluate(devset=devset, metric=metric, num_threads=threads, max_errors=10**9)(
                    guarded
                )
                for example, (_, prediction, value) in zip(chunk, result.results, strict=True):
                    error = prediction.get("error") if hasattr(prediction, "get") else None
                    row = {
                        "example_id": example.id,
                        "inputs": example.inputs,
                        "gold": example.labels,
                        "prediction": {f: _text(prediction, f) for f in task.label_fields},
                        "score": float(value),
                        "error": error,
                    }
                    sink.write(json.dumps(row) + "\n")
                    n += 1
                    total += float(value)
                    errors += error is not None
                gc.collect()
    finally:
        gc.unfreeze()
    if n == 0:
        raise ValueError(f"no examples to evaluate for task {task.name!r}")
    return Totals(n=n, score=total / n, n_errors=errors)


def scores(path: Path) -> dict[str, float]:
    """Per-example scores of an evaluation, by example id."""
    with path.open(encoding="utf-8") as rows:
        return {row["example_id"]: row["score"] for row in map(json.loads, rows)}


def _text(prediction: Any, field: str) -> str | None:
    value = prediction.get(field) if hasattr(prediction, "get") else None
    return None if value is None else str(value)


def _batched(items: Iterable[Example], size: int) -> Iterator[list[Example]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk
