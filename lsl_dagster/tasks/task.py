"""Tasks: a DSPy program, a metric and data. data/tasks/<task>/task.yaml names them.

A task is either declarative (input fields, output fields, instructions and a built-in metric: the program
is a ChainOfThought over that signature) or a researcher's own program and metric, named by import path
(`program: program:build`, `metric: program:metric`) and resolved with the task directory importable.
Data comes from JSONL, CSV, Parquet or a saved Hugging Face dataset, one file per split or one pool split
by seed, mapped onto the program's fields by `columns`. Everything is checked when the task loads, before
any paid call: every row, split disjointness (by id and by input content), the program and the metric.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import dspy
import yaml
from pydantic import ValidationError

from lsl_dagster.tasks import TaskDataError
from lsl_dagster.tasks.data import (
    DataFileError,
    Format,
    HubSource,
    Row,
    file_format,
    hub_rows,
    rows,
    saved_copy,
    saved_split_rows,
)
from lsl_dagster.tasks.definition import SPLITS, DataFiles, Example, TaskDef
from lsl_dagster.tasks.generated import arithmetic_example
from lsl_dagster.tasks.metrics import builtin_metric, call_metric
from lsl_dagster.tasks.user_code import resolve


class Task:
    """A validated task: sizes are known up front and splits stream lazily, so memory stays flat."""

    def __init__(self, definition: TaskDef, directory: Path):
        self.definition = definition
        self.directory = directory
        self.path = directory / "task.yaml"
        self.input_fields = list(definition.inputs)
        self.label_fields = list(definition.labels)
        # What each prediction row records: the labelled outputs, then those without gold.
        self.prediction_fields = [*self.label_fields, *definition.free_outputs]
        self._build = resolve(self.path, "program", definition.program) if definition.program else None
        self.metric: Callable[..., Any] = (
            resolve(self.path, "metric", definition.metric)
            if ":" in definition.metric
            else builtin_metric(definition.metric, self.label_fields)  # type: ignore[arg-type]
        )
        self.sizes = self._validate()
        self._check_program()

    @property
    def name(self) -> str:
        return self.definition.name

    # --- the program -------------------------------------------------------------------------------
    def program(self) -> dspy.Module:
        """A fresh, unoptimized instance of the task's program."""
        if self._build is not None:
            return self._build()
        definition = self.definition
        fields: dict[str, Any] = {
            name: dspy.InputField(desc=desc) for name, desc in definition.inputs.items()
        }
        for name, desc in definition.labels.items():
            choices = definition.choices.get(name)
            # A closed label set is a Literal type: DSPy lists the values and parses only them.
            fields[name] = (
                (Literal[tuple(choices)], dspy.OutputField(desc=desc))
                if choices
                else dspy.OutputField(desc=desc)
            )
        return dspy.ChainOfThought(dspy.Signature(fields, definition.instructions))

    def _check_program(self) -> None:
        """Build the program once and run the metric on the first dev example against its own gold labels:
        no model is called, so a broken program or metric fails here, before anything is spent."""
        where = f"{self.path}: program {self.definition.program or '(declarative)'}"
        try:
            program = self.program()
        except Exception as exc:
            raise TaskDataError(f"{where}: build failed ({type(exc).__name__}: {exc})") from None
        if not isinstance(program, dspy.Module):
            raise TaskDataError(f"{where}: returned {type(program).__name__}, not a dspy.Module")
        if not program.named_predictors():
            raise TaskDataError(f"{where}: the program has no predictors, so there is no prompt to optimize")
        first = next(self.examples("dev", 1))
        gold = dspy.Prediction(**first.labels)
        try:
            call_metric(self.metric, to_dspy(first, self), gold)
        except Exception as exc:
            raise TaskDataError(
                f"{self.path}: metric {self.definition.metric!r} failed on dev example {first.id!r} "
                f"scored against its own labels ({type(exc).__name__}: {exc})"
            ) from None

    # --- the data ------------------------------------------------------------------------------------
    def examples(self, split: str, limit: int | None = None) -> Iterator[Example]:
        """The split's examples in file order (the first `limit`), streamed."""
        count = self.sizes[split] if limit is None else min(limit, self.sizes[split])
        if count <= 0:
            return
        gen = self.definition.generator
        if gen is not None:
            for index in range(count):
                yield arithmetic_example(gen.seed, split, index)
            return
        for yielded, (_, example) in enumerate(self._split_examples(split), start=1):
            yield example
            if yielded >= count:
                return

    def sample(self, split: str, n: int, seed: int) -> list[Example]:
        """`n` examples of the split drawn by `seed` (all of them, shuffled, when it has no more): the
        experiment seed resamples the data, so variance across seeds includes the data's."""
        size = self.sizes[split]
        order = random.Random(f"{self.name}|{split}|{seed}").sample(range(size), min(n, size))
        gen = self.definition.generator
        if gen is not None:  # a pure function of the index: generate just those
            return [arithmetic_example(gen.seed, split, index) for index in order]
        wanted = {index: position for position, index in enumerate(order)}
        picked: list[Example | None] = [None] * len(order)
        source = (example for _, example in self._split_examples(split))
        for index, example in enumerate(source):
            if index in wanted:
                picked[wanted[index]] = example
        return [e for e in picked if e is not None]

    def _file(self, name: str) -> tuple[Path, Format]:
        path = self.directory / name
        try:
            return path, file_format(path, self.definition.data.format)
        except DataFileError as exc:
            raise TaskDataError(str(exc)) from None

    def _rows(self, name: str) -> Iterator[Row]:
        """The rows of a data file, or of a split of the hub dataset."""
        hub = self.definition.data.hub
        if hub is None:
            path, fmt = self._file(name)
            return rows(path, fmt)
        local = self.directory / hub.path
        if saved_copy(local):  # the Hub dataset saved with save_to_disk at its name: read it, slices and all
            return saved_split_rows(local, name)
        source = HubSource(
            path=str(local) if local.exists() else hub.path,
            name=hub.name,
            data_files=_under(self.directory, hub.data_files),
            revision=hub.revision,
        )
        return hub_rows(source, name, local=local.exists() or hub.data_files is not None, copy_at=local)

    def _split_examples(self, split: str) -> Iterator[tuple[Row, Example]]:
        data = self.definition.data
        own = data.pool is None or split not in data.split  # type: ignore[operator]
        if own:  # a split of its own (a pool may leave the test split to its own file or slice)
            source = self._rows(getattr(data, split))
        else:
            source = (row for row in self._rows(data.pool) if self._pool_split(row) == split)
        try:
            for row in source:
                yield row, self._parse(split if own else "pool", row)
        except DataFileError as exc:
            raise TaskDataError(str(exc)) from None

    def _pool_split(self, row: Row) -> str:
        data = self.definition.data
        draw = _uniform(f"{data.seed}|{self._id('pool', row)}")
        pooled = [s for s in SPLITS if s in data.split]  # type: ignore[operator]
        cumulative = 0.0
        for split in pooled:
            cumulative += data.split[split]  # type: ignore[index]
            if draw < cumulative:
                return split
        return pooled[-1]

    def _id(self, prefix: str, row: Row) -> str:
        value = row.record.get(self.definition.data.id)
        return f"{prefix}-{row.number}" if value is None or value == "" else str(value)

    def _parse(self, prefix: str, row: Row) -> Example:
        columns = self.definition.data.columns
        wanted = [*self.input_fields, *self.label_fields]
        missing = [columns.get(f, f) for f in wanted if columns.get(f, f) not in row.record]
        if missing:
            raise TaskDataError(f"{row.where}: missing field(s) {missing}")
        values = {}
        for name in wanted:
            column = columns.get(name, name)
            value = row.record[column]
            if isinstance(value, list | dict):
                # A nested column (HotpotQA's paragraphs, IFEval's constraint arguments) reaches the
                # program and metric as its JSON text: fields are strings, and nothing is flattened away.
                values[name] = json.dumps(value, ensure_ascii=False)
                continue
            if value is None or isinstance(value, bool) or not isinstance(value, str | int | float):
                shown = "empty" if value is None else type(value).__name__
                raise TaskDataError(f"{row.where}: field {column!r} must be a string or number, not {shown}")
            values[name] = str(value)
        return Example(
            id=self._id(prefix, row),
            inputs={f: values[f] for f in self.input_fields},
            labels={f: values[f] for f in self.label_fields},
        )

    def _validate(self) -> dict[str, int]:
        """Read every split once: rows well formed, ids unique, and no example (by id or by input content)
        in two splits."""
        gen = self.definition.generator
        if gen is not None:
            return {split: gen.sizes.get(split, 0) for split in SPLITS}
        ids: dict[str, str] = {}
        contents: dict[str, str] = {}
        sizes = {}
        for split in SPLITS:
            count = 0
            for row, example in self._split_examples(split):
                count += 1
                if example.id in ids:
                    raise TaskDataError(
                        f"{row.where}: duplicate id {example.id!r} (first at {ids[example.id]})"
                    )
                key = _content_key(example)
                if key in contents and not contents[key].startswith(f"{split} "):
                    raise TaskDataError(
                        f"{row.where}: the same inputs as {contents[key]}: splits must be disjoint"
                    )
                # Test ids need remembering only to catch duplicates inside the test split itself.
                ids[example.id] = row.where
                if split != "test":
                    contents.setdefault(key, f"{split} {row.where}")
            if count == 0:
                raise TaskDataError(f"{self.path}: the {split} split is empty")
            sizes[split] = count
        return sizes


def _under(directory: Path, files: DataFiles | None) -> DataFiles | None:
    """data_files with relative paths taken from the task directory (URLs such as hf://... as they are)."""
    if isinstance(files, str):
        return files if "://" in files else str(directory / files)
    if isinstance(files, list):
        return [_under(directory, f) for f in files]  # type: ignore[misc]
    if isinstance(files, dict):
        return {split: _under(directory, f) for split, f in files.items()}  # type: ignore[misc]
    return None


def _content_key(example: Example) -> str:
    return hashlib.blake2b(json.dumps(example.inputs, sort_keys=True).encode(), digest_size=12).hexdigest()


def _uniform(text: str) -> float:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2**64


def to_dspy(example: Example, task: Task) -> dspy.Example:
    record = {**example.inputs, **example.labels, "example_id": example.id}
    return dspy.Example(**record).with_inputs(*task.input_fields)


def load_task(name: str, tasks_dir: Path) -> Task:
    directory = tasks_dir / name
    path = directory / "task.yaml"
    if not path.is_file():
        known = (
            sorted(p.name for p in tasks_dir.iterdir() if (p / "task.yaml").is_file())
            if tasks_dir.is_dir()
            else []
        )
        raise TaskDataError(
            f"unknown task {name!r}: {path} does not exist (known tasks: {', '.join(known) or 'none'})"
        )
    try:
        definition = TaskDef.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'file'}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        raise TaskDataError(f"{path}: {problems}") from None
    except yaml.YAMLError as exc:
        raise TaskDataError(f"{path}: {exc}") from None
    if definition.name != name:
        raise TaskDataError(f"{path}: name {definition.name!r} does not match its directory {name!r}")
    return Task(definition, directory)


def hub_only(name: str, tasks_dir: Path) -> bool:
    """Whether the task reads a Hub dataset by name with no copy of it in its directory: loading it needs the
    network (or the Hub's cache). Read from task.yaml alone; a malformed file is load_task's to report."""
    try:
        hub = TaskDef.model_validate(yaml.safe_load((tasks_dir / name / "task.yaml").read_text())).data.hub
    except (ValidationError, yaml.YAMLError, OSError):
        return False
    return hub is not None and hub.data_files is None and not (tasks_dir / name / hub.path).exists()
