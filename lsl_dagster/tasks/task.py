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
import importlib
import importlib.util
import json
import random
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import dspy
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lsl_dagster.tasks.data import DataFileError, Format, HubSource, Row, file_format, hub_rows, rows
from lsl_dagster.tasks.metrics import BUILTIN_METRICS, builtin_metric, call_metric

SPLITS = ("train", "dev", "test")


class TaskDataError(ValueError):
    """A task file, its program or metric, or a data row is malformed; the message says where."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Generator(_Strict):
    name: Literal["arithmetic"]
    seed: int = 0
    sizes: dict[str, int] = Field(default_factory=lambda: {"train": 500, "dev": 500, "test": 100_000})


DataFiles = str | list[str] | dict[str, str | list[str]]


class Hub(_Strict):
    """A dataset `datasets.load_dataset` reads: a Hub name (where the network allows), a dataset directory
    or script (relative to the task directory), or a builder ("csv", "parquet", "json") over data_files."""

    path: str
    name: str | None = None  # the dataset's configuration
    data_files: DataFiles | None = None  # relative to the task directory
    revision: str | None = None


class DataDef(_Strict):
    """Where a task's examples come from: one file per split, or one pool split by `seed`. With `hub`, the
    split names (train, dev, test, pool) are the dataset's splits, e.g. "validation[:500]"."""

    format: Format | None = None  # from the file name when omitted (.jsonl, .csv, .parquet, a directory)
    hub: Hub | None = None
    train: str | None = None
    dev: str | None = None
    test: str | None = None
    pool: str | None = None
    # Fractions of the pool per split (summing to 1); each row's split is a hash of (seed, its id), so the
    # assignment is stable, streamable and independent of the experiment's seed: the test set stays fixed.
    split: dict[Literal["train", "dev", "test"], float] | None = None
    seed: int = 0
    # Program field -> column, for columns named differently from the program's fields.
    columns: dict[str, str] = {}
    id: str = "id"  # the id column; rows without one get "<split>-<row>" (stable: predictions pair by id)

    @model_validator(mode="after")
    def _one_layout(self) -> DataDef:
        if self.hub is not None and self.format is not None:
            raise ValueError("data.format applies to files; a hub dataset's format is load_dataset's")
        files = [self.train, self.dev, self.test]
        if self.pool is None:
            if None in files:
                raise ValueError("data needs train, dev and test files, or a pool with a split")
            if self.split is not None:
                raise ValueError("data.split applies to a pool")
        else:
            if any(f is not None for f in files):
                raise ValueError("data has either train/dev/test files or a pool, not both")
            if not self.split or set(self.split) != set(SPLITS):
                raise ValueError("data.split must give a fraction for each of train, dev and test")
            if any(v <= 0 for v in self.split.values()) or abs(sum(self.split.values()) - 1) > 1e-9:
                raise ValueError("data.split fractions must be positive and sum to 1 (no row is dropped)")
        return self


class TaskDef(_Strict):
    """data/tasks/<task>/task.yaml."""

    name: str
    # "module:function" returning a dspy.Module; omitted for a declarative task.
    program: str | None = None
    # A built-in metric name, or "module:function" (example, prediction, trace=None) -> float or
    # dspy.Prediction(score=..., feedback=...).
    metric: str
    instructions: str | None = None
    inputs: dict[str, str] = Field(min_length=1)
    # The gold output fields (labels): `outputs` for several, `output` (+ description) for one.
    outputs: dict[str, str] = {}
    output: str | None = None
    output_description: str = ""
    data: DataDef = DataDef(train="train.jsonl", dev="dev.jsonl", test="test.jsonl")
    generator: Generator | None = None

    @field_validator("inputs", "outputs", mode="before")
    @classmethod
    def _names_or_descriptions(cls, value: Any) -> Any:
        # A list of names is enough for a program task: its own signatures describe the fields.
        return dict.fromkeys(value, "") if isinstance(value, list) else value

    @model_validator(mode="after")
    def _consistent(self) -> TaskDef:
        if (self.output is None) == (not self.outputs):
            raise ValueError("give the label fields as `outputs` (a list or mapping) or as one `output`")
        if self.program is None and not self.instructions:
            raise ValueError("a declarative task (no `program`) needs `instructions`")
        if self.program is not None and self.instructions:
            raise ValueError("`instructions` apply to declarative tasks; a program carries its own")
        if ":" not in self.metric and self.metric not in BUILTIN_METRICS:
            raise ValueError(
                f"metric {self.metric!r} is neither built in ({', '.join(BUILTIN_METRICS)}) "
                "nor an import path module:function"
            )
        overlap = set(self.inputs) & set(self.labels)
        if overlap:
            raise ValueError(f"fields {sorted(overlap)} are both inputs and outputs")
        return self

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.outputs) if self.outputs else {self.output: self.output_description}  # type: ignore[dict-item]


@dataclass(frozen=True)
class Example:
    id: str
    inputs: dict[str, str]
    labels: dict[str, str]  # the gold output fields


class Task:
    """A validated task: sizes are known up front and splits stream lazily, so memory stays flat."""

    def __init__(self, definition: TaskDef, directory: Path):
        self.definition = definition
        self.directory = directory
        self.path = directory / "task.yaml"
        self.input_fields = list(definition.inputs)
        self.label_fields = list(definition.labels)
        self._build = self._resolve("program", definition.program) if definition.program else None
        self.metric: Callable[..., Any] = (
            self._resolve("metric", definition.metric)
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
            fields[name] = dspy.OutputField(desc=desc)
        return dspy.ChainOfThought(dspy.Signature(fields, definition.instructions))

    def _resolve(self, what: str, target: str) -> Callable[..., Any]:
        module_name, _, attr = target.partition(":")
        if not module_name or not attr:
            raise TaskDataError(f"{self.path}: {what} {target!r} must be an import path module:function")
        try:
            module = _import(module_name, self.directory)
        except Exception as exc:
            raise TaskDataError(
                f"{self.path}: {what} {target!r}: cannot import {module_name!r} ({type(exc).__name__}: {exc})"
            ) from None
        value = getattr(module, attr, None)
        if not callable(value):
            raise TaskDataError(f"{self.path}: {what} {target!r}: {module_name} has no function {attr!r}")
        return value

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
        source = HubSource(
            path=str(local) if local.exists() else hub.path,
            name=hub.name,
            data_files=_under(self.directory, hub.data_files),
            revision=hub.revision,
        )
        return hub_rows(source, name, local=local.exists() or hub.data_files is not None)

    def _split_examples(self, split: str) -> Iterator[tuple[Row, Example]]:
        data = self.definition.data
        if data.pool is None:
            source = self._rows(getattr(data, split))
        else:
            source = (row for row in self._rows(data.pool) if self._pool_split(row) == split)
        try:
            for row in source:
                yield row, self._parse(split if data.pool is None else "pool", row)
        except DataFileError as exc:
            raise TaskDataError(str(exc)) from None

    def _pool_split(self, row: Row) -> str:
        data = self.definition.data
        draw = _uniform(f"{data.seed}|{self._id('pool', row)}")
        cumulative = 0.0
        for split in SPLITS:
            cumulative += data.split[split]  # type: ignore[index]
            if draw < cumulative:
                return split
        return SPLITS[-1]

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


# Modules loaded from task directories, by file: two tasks may each have a program.py.
_MODULES: dict[tuple[str, int], ModuleType] = {}


def _import(module_name: str, directory: Path) -> ModuleType:
    """`module_name` from the task directory when it is there (under a name unique to its file, with the
    directory importable for its own imports), else as an installed module."""
    relative = Path(*module_name.split("."))
    local = next(
        (
            p
            for p in (directory / relative.with_suffix(".py"), directory / relative / "__init__.py")
            if p.is_file()
        ),
        None,
    )
    if local is None:
        return importlib.import_module(module_name)
    if str(directory) not in sys.path:
        sys.path.insert(0, str(directory))
    key = (str(local.resolve()), local.stat().st_mtime_ns)
    if key not in _MODULES:
        unique = (
            f"lsl_task_{hashlib.sha256(key[0].encode()).hexdigest()[:12]}_{module_name.replace('.', '_')}"
        )
        spec = importlib.util.spec_from_file_location(unique, local)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[unique] = module
        spec.loader.exec_module(module)
        _MODULES[key] = module
    return _MODULES[key]


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


# The generated task: multi-step arithmetic word problems, a pure function of (seed, split, index).
_NAMES = ("Mia", "Ravi", "Lena", "Tomas", "Aiko", "Sam", "Nora", "Omar", "Ines", "Kofi")
_ITEMS = ("apples", "stamps", "marbles", "books", "coins", "shells", "stickers", "pencils")


def arithmetic_example(seed: int, split: str, index: int) -> Example:
    digest = hashlib.sha256(f"arithmetic|{seed}|{split}|{index}".encode()).digest()
    rng = random.Random(digest)
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    # The starting amount's residue mod 3 encodes the split, so no problem can appear in two splits.
    start = rng.randrange(4, 40) * 3 + SPLITS.index(split)
    total = start
    sentences = [f"{name} has {start} {item}."]
    for _ in range(rng.randint(2, 4)):
        choices = ["add", "mul" if total < 500 else "add"]
        if total > 3:
            choices.append("sub")
        if total % 2 == 0:
            choices.append("div")
        op = rng.choice(choices)
        if op == "add":
            k = rng.randint(2, 30)
            total += k
            sentences.append(f"Then {name} buys {k} more.")
        elif op == "sub":
            k = rng.randint(1, total - 1)
            total -= k
            sentences.append(f"Then {name} gives away {k}.")
        elif op == "mul":
            k = rng.choice((2, 3))
            total *= k
            sentences.append(f"Then {name} {'doubles' if k == 2 else 'triples'} the collection.")
        else:
            total //= 2
            sentences.append(f"Then {name} gives half of them to a friend.")
    question = " ".join(sentences) + f" How many {item} does {name} have now?"
    return Example(id=f"{split}-{index}", inputs={"question": question}, labels={"answer": str(total)})
