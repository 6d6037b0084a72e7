"""Tasks: definitions, JSONL splits validated line by line, the generated arithmetic task, metrics."""

from __future__ import annotations

import hashlib
import json
import random
import re
import string
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

SPLITS = ("train", "dev", "test")
Metric = Literal["exact_match", "numeric", "contains", "f1"]


class TaskDataError(ValueError):
    """A task file or dataset line is malformed; the message names file and line."""


class Generator(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Literal["arithmetic"]
    seed: int = 0
    sizes: dict[str, int] = Field(default_factory=lambda: {"train": 500, "dev": 500, "test": 100_000})


class TaskDef(BaseModel):
    """data/tasks/<task>/task.yaml: the program's signature and how answers are scored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    instructions: str
    inputs: dict[str, str] = Field(min_length=1)
    output: str
    output_description: str = ""
    metric: Metric
    generator: Generator | None = None


@dataclass(frozen=True)
class Example:
    id: str
    inputs: dict[str, str]
    answer: str


class Task:
    """A validated task: sizes are known up front and splits stream lazily, so memory stays flat."""

    def __init__(self, definition: TaskDef, directory: Path):
        self.definition = definition
        self.directory = directory
        self.sizes = {split: self._validate(split) for split in SPLITS}

    @property
    def name(self) -> str:
        return self.definition.name

    def examples(self, split: str, limit: int | None = None) -> Iterator[Example]:
        count = self.sizes[split] if limit is None else min(limit, self.sizes[split])
        gen = self.definition.generator
        if gen is not None:
            for index in range(count):
                yield arithmetic_example(gen.seed, split, index)
            return
        with self._path(split).open(encoding="utf-8") as lines:
            for lineno, line in enumerate(lines, start=1):
                if lineno > count:
                    return
                yield self._parse(split, lineno, line)

    def _path(self, split: str) -> Path:
        return self.directory / f"{split}.jsonl"

    def _validate(self, split: str) -> int:
        gen = self.definition.generator
        if gen is not None:
            return gen.sizes.get(split, 0)
        path = self._path(split)
        if not path.is_file():
            raise TaskDataError(f"{path}: missing split file for task {self.name!r}")
        seen: dict[str, int] = {}
        count = 0
        with path.open(encoding="utf-8") as lines:
            for lineno, line in enumerate(lines, start=1):
                example = self._parse(split, lineno, line)
                if example.id in seen:
                    raise TaskDataError(
                        f"{path}:{lineno}: duplicate id {example.id!r} (first at line {seen[example.id]})"
                    )
                seen[example.id] = lineno
                count = lineno
        if count == 0:
            raise TaskDataError(f"{path}: the split is empty")
        return count

    def _parse(self, split: str, lineno: int, line: str) -> Example:
        where = f"{self._path(split)}:{lineno}"
        if not line.strip():
            raise TaskDataError(f"{where}: empty line (every line must be one JSON object)")
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TaskDataError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(record, dict):
            raise TaskDataError(f"{where}: expected a JSON object, got {type(record).__name__}")
        fields = [*self.definition.inputs, self.definition.output]
        missing = [name for name in fields if name not in record]
        if missing:
            raise TaskDataError(f"{where}: missing field(s) {missing}")
        values = {}
        for name in fields:
            value = record[name]
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                raise TaskDataError(f"{where}: field {name!r} must be a string or number")
            values[name] = str(value)
        example_id = str(record.get("id", f"{split}-{lineno}"))
        answer = values.pop(self.definition.output)
        return Example(id=example_id, inputs=values, answer=answer)


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
    except (yaml.YAMLError, ValidationError) as exc:
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
    return Example(id=f"{split}-{index}", inputs={"question": question}, answer=str(total))


# Metrics: each returns a score in [0, 1].
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


def score(metric: Metric, gold: str, prediction: str) -> float:
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


def feedback(metric: Metric, gold: str, prediction: str) -> str:
    """Text GEPA's reflection reads: what went wrong, in the terms a prompt could fix."""
    if score(metric, gold, prediction) == 1.0:
        return "Correct."
    if not prediction.strip():
        return (
            f"The answer field was empty or could not be parsed (format error). The correct answer is {gold}."
        )
    if metric == "numeric" and _number(prediction) is None:
        return f"The answer {prediction!r} is not a number (format error). The correct answer is {gold}."
    if metric in ("exact_match", "f1"):
        gold_words, pred_words = _normalize(gold).split(), _normalize(prediction).split()
        if sorted(gold_words) != sorted(pred_words):
            return f"Wrong: some words are missing or extra. Expected {gold!r}, got {prediction!r}."
        return f"Wrong order: expected {gold!r}, got {prediction!r}."
    return f"Wrong answer: expected {gold}, got {prediction}. A calculation step went wrong."
