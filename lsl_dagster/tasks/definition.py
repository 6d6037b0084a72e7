"""What a task file says: the schema of data/tasks/<task>/task.yaml, its data layout, its examples."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lsl_dagster.tasks.data import Format
from lsl_dagster.tasks.metrics import BUILTIN_METRICS

SPLITS = ("train", "dev", "test")


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
    # With `test` given too, the pool is split into train and dev only.
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
            if self.train is not None or self.dev is not None:
                raise ValueError("data has either train/dev/test files or a pool, not both")
            # With its own test file or slice, the pool holds train and dev only (the test set stays fixed).
            if self.test is not None and (not self.split or set(self.split) != {"train", "dev"}):
                raise ValueError("data.split must give a fraction for each of train and dev (test: its own)")
            if self.test is None and (not self.split or set(self.split) != set(SPLITS)):
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
    # Program outputs with no gold in the data (a free-form response the metric checks, as in IFEval):
    # recorded in the predictions beside the labelled ones.
    free_outputs: list[str] = []
    # Closed label sets of a declarative task, e.g. {sentiment: [positive, negative]}: Literal types in the
    # built signature, so the prompt lists them and structured_outputs' schema carries them as an enum.
    choices: dict[str, list[str]] = {}
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
        if self.choices and self.program is not None:
            raise ValueError("`choices` apply to declarative tasks; a program types its own fields")
        unknown = set(self.choices) - set(self.labels)
        if unknown:
            raise ValueError(f"choices name fields that are not outputs: {sorted(unknown)}")
        if any(len(set(values)) < 2 or len(set(values)) != len(values) for values in self.choices.values()):
            raise ValueError("each field's choices must be at least two distinct values")
        overlap = set(self.inputs) & set(self.labels)
        if overlap:
            raise ValueError(f"fields {sorted(overlap)} are both inputs and outputs")
        if self.free_outputs and self.program is None:
            raise ValueError("`free_outputs` apply to program tasks; a declarative task's outputs are labels")
        named = set(self.free_outputs) & (set(self.inputs) | set(self.labels))
        if named:
            raise ValueError(f"free_outputs {sorted(named)} are already inputs or labelled outputs")
        return self

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.outputs) if self.outputs else {self.output: self.output_description}  # type: ignore[dict-item]


@dataclass(frozen=True)
class Example:
    id: str
    inputs: dict[str, str]
    labels: dict[str, str]  # the gold output fields
