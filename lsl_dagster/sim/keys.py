"""The sim's answer keys from the project's tasks: the one place that knows both (a test double's fixture).

The sim (`sim.engine`) reads (inputs, labels) pairs and nothing else; here a task's examples become
those pairs, every split, streamed. One key per task and process, read lazily as lookups need it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

from lsl_dagster.sim.answer_key import AnswerKey
from lsl_dagster.tasks.task import Task, hub_only, load_task

_KEYS: dict[tuple[str, str, str], AnswerKey] = {}
_LOCK = threading.Lock()


def task_pairs(task: Task) -> Iterator[tuple[Mapping[str, str], Mapping[str, str]]]:
    """A task's examples as (inputs, labels) pairs."""
    for split in task.sizes:
        for example in task.examples(split):
            labels = getattr(example, "labels", None)
            yield example.inputs, labels if labels is not None else {task.definition.output: example.answer}


def answer_key(task: Task) -> AnswerKey:
    ident = (str(task.directory.resolve()), task.name, task.definition.model_dump_json())
    with _LOCK:
        if ident not in _KEYS:
            _KEYS[ident] = AnswerKey(task_pairs(task), name=task.name)
        return _KEYS[ident]


def data_dir_keys(data_dir: Path) -> list[AnswerKey]:
    """Keys for every task under `data_dir`/tasks whose data is on this machine (what the sim server is
    started with). A benchmark task read from the Hub by name, with no saved copy here, has no key: its
    examples are ones the sim does not know, and it answers them as such."""
    tasks_dir = data_dir / "tasks"
    names = sorted(p.parent.name for p in tasks_dir.glob("*/task.yaml"))
    if not names:
        raise ValueError(f"no tasks under {tasks_dir} (expected <task>/task.yaml)")
    return [answer_key(load_task(name, tasks_dir)) for name in names if not hub_only(name, tasks_dir)]
