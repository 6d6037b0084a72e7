"""Rows of a task's data, streamed one at a time: JSONL, CSV, Parquet, Hugging Face datasets saved with
`save_to_disk`, and Hugging Face datasets by name (`datasets.load_dataset`). Each row comes with where it
is (file and row/line, or dataset, split and row) for error messages."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

Format = Literal["jsonl", "csv", "parquet", "hf"]
_SUFFIXES: dict[str, Format] = {".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet"}
# Parquet and Arrow rows are read in batches of this many: bounded memory however big the file.
BATCH = 1024


class DataFileError(ValueError):
    """A data file or row is malformed; the message names the file and the row or line."""


@dataclass(frozen=True)
class Row:
    number: int  # 1-based data row (JSONL line, CSV record after the header, Parquet/Arrow row)
    where: str  # "file:line" for text files, "file row N" for columnar ones
    record: dict[str, Any]


def file_format(path: Path, declared: Format | None) -> Format:
    if declared is not None:
        return declared
    if path.is_dir():
        return "hf"
    if path.suffix in _SUFFIXES:
        return _SUFFIXES[path.suffix]
    raise DataFileError(f"{path}: cannot tell the format from the name; set data.format in task.yaml")


def rows(path: Path, fmt: Format) -> Iterator[Row]:
    if not path.exists():
        raise DataFileError(f"{path}: data file not found")
    yield from {"jsonl": _jsonl, "csv": _csv, "parquet": _parquet, "hf": _hf}[fmt](path)


def _jsonl(path: Path) -> Iterator[Row]:
    with path.open("rb") as handle:
        for lineno, line in enumerate(_text_lines(path, handle), start=1):
            where = f"{path}:{lineno}"
            if not line.strip():
                raise DataFileError(f"{where}: empty line (every line must be one JSON object)")
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataFileError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(record, dict):
                raise DataFileError(f"{where}: expected a JSON object, got {type(record).__name__}")
            yield Row(lineno, where, record)


def _text_lines(path: Path, handle: BinaryIO) -> Iterator[str]:
    """The file's lines as UTF-8 text (a leading BOM dropped); a byte that is not UTF-8 is an error naming
    the file, its line and the byte, not a UnicodeDecodeError from somewhere in a read-ahead buffer."""
    for lineno, raw in enumerate(handle, start=1):
        try:
            yield raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            byte = raw[exc.start]
            raise DataFileError(
                f"{path}:{lineno}: byte 0x{byte:02x} at column {exc.start + 1} is not UTF-8; save the file "
                "as UTF-8"
            ) from None


def _csv(path: Path) -> Iterator[Row]:
    with path.open("rb") as handle:
        reader = csv.DictReader(_text_lines(path, handle))
        if not reader.fieldnames:
            raise DataFileError(f"{path}: empty CSV file (no header row)")
        start = 2  # the line the next record starts on
        for number, record in enumerate(reader, start=1):
            where = f"{path}:{start}"
            start = reader.line_num + 1
            if None in record:
                raise DataFileError(f"{where}: more cells than the header has columns")
            missing = [column for column, value in record.items() if value is None]
            if missing:
                raise DataFileError(f"{where}: fewer cells than the header has columns (no {missing})")
            yield Row(number, where, record)


def _parquet(path: Path) -> Iterator[Row]:
    import pyarrow.parquet as pq

    try:
        reader = pq.ParquetFile(path)
    except Exception as exc:
        raise DataFileError(f"{path}: not a readable Parquet file ({exc})") from None
    number = 0
    for batch in reader.iter_batches(batch_size=BATCH):
        for record in batch.to_pylist():
            number += 1
            yield Row(number, f"{path} row {number}", record)


def _hf(path: Path) -> Iterator[Row]:
    import datasets

    try:
        dataset = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise DataFileError(f"{path}: not a dataset saved with save_to_disk ({exc})") from None
    if isinstance(dataset, datasets.DatasetDict):
        raise DataFileError(
            f"{path}: a DatasetDict with splits {sorted(dataset)}; name one split's directory, "
            f"e.g. {path / next(iter(dataset))}"
        )
    yield from _arrow_rows(dataset, str(path))


def _arrow_rows(dataset: Any, where: str) -> Iterator[Row]:
    number = 0
    # Memory-mapped Arrow, read in batches: nothing is loaded whole.
    for batch in dataset.iter(batch_size=BATCH):
        columns = list(batch)
        for values in zip(*(batch[c] for c in columns), strict=True):
            number += 1
            yield Row(number, f"{where} row {number}", dict(zip(columns, values, strict=True)))


@dataclass(frozen=True)
class HubSource:
    """`datasets.load_dataset(path, name, split=..., data_files=..., revision=...)`: a dataset on the Hugging
    Face Hub by name, a dataset script or directory on disk, or a packaged builder ("csv", "parquet", "json")
    over `data_files`."""

    path: str
    name: str | None = None
    data_files: Any = None
    revision: str | None = None

    def describe(self, split: str) -> str:
        config = f", config {self.name!r}" if self.name else ""
        return f"Hugging Face dataset {self.path!r}{config}, split {split!r}"


def saved_copy(path: Path) -> bool:
    """Whether `path` holds a dataset written by `save_to_disk` (rather than files load_dataset reads)."""
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def saved_split_rows(path: Path, split: str) -> Iterator[Row]:
    """Rows of a split expression ("train[:67%]", "validation[:300]+test") of a DatasetDict saved with
    `save_to_disk`: the slices `load_dataset` would cut from the Hub's splits, so a task file naming the
    Hub dataset reads a saved copy of it unchanged."""
    import datasets

    try:
        saved = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise DataFileError(f"{path}: not a dataset saved with save_to_disk ({exc})") from None
    if not isinstance(saved, datasets.DatasetDict):
        raise DataFileError(
            f"{path}: one split saved on its own; save the DatasetDict (load_dataset without split=), "
            "so the task's split names find their splits"
        )
    try:
        parts = datasets.ReadInstruction.from_spec(split).to_absolute({n: len(d) for n, d in saved.items()})
    except (ValueError, KeyError, AssertionError) as exc:
        raise DataFileError(f"{path}: split {split!r} ({exc}); the copy has splits {sorted(saved)}") from None
    selected = [saved[p.splitname].select(range(p.from_, p.to)) for p in parts]
    yield from _arrow_rows(datasets.concatenate_datasets(selected), f"{path}[{split}]")


def hub_rows(source: HubSource, split: str, local: bool, copy_at: Path) -> Iterator[Row]:
    """Rows of one split (any split expression, e.g. "validation[:500]") of a dataset `load_dataset` reads.
    `local`: the path is on disk, so a failure is not the network's. `copy_at`: where a saved copy of the
    dataset would be read from instead (what the error says when the Hub cannot be reached)."""
    import datasets

    described = source.describe(split)
    try:
        dataset = datasets.load_dataset(
            source.path, source.name, split=split, data_files=source.data_files, revision=source.revision
        )
    except ConnectionError as exc:
        # datasets raises ConnectionError both without a network and with HF_HUB_OFFLINE=1.
        raise DataFileError(
            f"{described}: the Hugging Face Hub could not be reached (this machine is offline, behind a "
            f"firewall or has HF_HUB_OFFLINE set: {exc}). Load it where the network allows and save it: "
            f"datasets.load_dataset({source.path!r}, {source.name!r}).save_to_disk('{copy_at}') (the whole "
            "DatasetDict), and copy that directory here: the task file then reads it unchanged, with "
            "load_from_disk and the same split slices; nothing was called."
        ) from None
    except Exception as exc:
        hint = "" if local else " (is the name right, and is the dataset public or your HF_TOKEN set?)"
        raise DataFileError(f"{described}: cannot load it ({type(exc).__name__}: {exc}){hint}") from None
    yield from _arrow_rows(dataset, f"{source.path}[{split}]")
