"""A lab for tests: a temp data dir (the shipped tasks plus test experiments), a temp runs dir and
a temp Dagster instance; experiments run through the real job, in process."""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DagsterInstance,
    Definitions,
    ExecuteInProcessResult,
    instance_for_test,
)
from moto.server import ThreadedMotoServer

from lsl_dagster import graph
from lsl_dagster.definitions import build_definitions
from lsl_dagster.llm.language_models import LanguageModels
from lsl_dagster.llm.ledger import CallLog
from lsl_dagster.sim.answer_key import AnswerKey
from lsl_dagster.sim.keys import data_dir_keys
from lsl_dagster.sim.server import SimServer
from lsl_dagster.storage import outputs as storage
from lsl_dagster.tasks.data import saved_copy
from lsl_dagster_tests.cluster import ServiceMissing, postgres_database

PROJECT = Path(__file__).resolve().parent.parent

# A job run in this process (execute_in_process) points SIGTERM at whatever handles SIGINT. Tests launched
# in the background by a script (`make test &`) start with SIGINT ignored: SIGTERM would be ignored from
# the first run on, here and in every server a test starts, which then could not be stopped. With Python's
# own SIGINT handler, the children those tests start get SIGTERM's default action back.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# The stage assets of one experiment in pipeline order, as a user sees them in the UI and `lsl status`.
STAGE_ASSETS = list(graph.STAGES)

# Small enough to run in a few seconds, large enough for every optimizer to do real work.
FAST: dict[str, Any] = {
    "task": "arithmetic",
    "large_model": {"model": "sim/large"},
    "small_model": {"model": "sim/small"},
    "stage1": {"optimizer": "miprov2", "max_calls": 80},
    # sim/small scores 0 on these 8 arithmetic dev examples (no signal): the tests built on FAST exercise
    # the optimizers anyway; the no-signal stop has its own tests (test_structured_outputs).
    "stage2": {"max_calls": 60, "on_no_signal": "warn"},
    "data": {"train": 12, "val": 8},
    "evaluation": {"split": "test", "limit": 40},
    "seed": 0,
}


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@dataclass
class Lab:
    data_dir: Path
    runs_dir: Path
    instance: DagsterInstance
    outputs_url: str | None = None  # where its runs' asset outputs are when not in runs_dir (LSL_OUTPUTS_URL)

    def write(self, name: str, **overrides: Any) -> Path:
        """data/experiments/<name>.yaml: the FAST experiment with `overrides` merged in."""
        path = self.data_dir / "experiments" / f"{name}.yaml"
        path.write_text(yaml.safe_dump(merge({"experiment_id": name, **FAST}, overrides)))
        return path

    def defs(self, **models: Any) -> Definitions:
        return build_definitions(
            self.data_dir, self.runs_dir, LanguageModels(**{"step_retries": 0, **models})
        )

    def run(
        self,
        experiment_id: str,
        assets: list[str] | None = None,
        *,
        raise_on_error: bool = True,
        **models: Any,
    ) -> ExecuteInProcessResult:
        job = self.defs(**models).resolve_job_def("lsl_experiment")
        selection = None if assets is None else [AssetKey(name) for name in assets]
        return job.execute_in_process(
            partition_key=experiment_id,
            instance=self.instance,
            asset_selection=selection,
            raise_on_error=raise_on_error,
        )

    def env(self, **overrides: str) -> dict[str, str]:
        """The environment of a command run against this lab: its instance, data and runs directories."""
        return {
            **os.environ,
            "DAGSTER_HOME": self.instance.root_directory,
            "LSL_DATA_DIR": str(self.data_dir),
            "LSL_RUNS_DIR": str(self.runs_dir),
            **overrides,
        }

    @staticmethod
    def materialize_command(experiment_id: str) -> list[str]:
        """What a user runs to materialize one experiment from a shell."""
        dagster = str(Path(sys.executable).with_name("dagster"))
        select = ["--select", "group:lsl", "--partition", experiment_id]
        return [dagster, "asset", "materialize", "-m", "lsl_dagster.definitions", *select]

    def output(self, experiment_id: str, asset: str) -> dict[str, Any]:
        outputs = self.outputs_url or str(self.runs_dir)
        return json.loads(storage.read_text(storage.join(outputs, experiment_id, f"{asset}.json")))

    def calls(self, experiment_id: str, stage: str | None = None) -> list[dict[str, Any]]:
        """The requests the experiment's call log records (of one stage, or all); none before the first."""
        records = CallLog.read(self.runs_dir / experiment_id / "calls.jsonl")
        return [r for r in records if "event" not in r and stage in (None, r["stage"])]

    def read(self, stored: str) -> str:
        """A file an output points to (predictions): an object's URL, or a path relative to runs_dir."""
        return storage.read_text(stored if storage.is_remote(stored) else str(self.runs_dir / stored))

    def metadata(self, experiment_id: str, asset: str) -> dict[str, Any]:
        records = self._records(experiment_id, asset)
        assert records, f"{asset} was not materialized for {experiment_id}"
        return {key: value.value for key, value in records[0].asset_materialization.metadata.items()}

    def materializations(self, experiment_id: str, asset: str) -> int:
        return len(self._records(experiment_id, asset))

    def _records(self, experiment_id: str, asset: str) -> list:
        filter_ = AssetRecordsFilter(asset_key=AssetKey(asset), asset_partitions=[experiment_id])
        return list(self.instance.fetch_materializations(filter_, limit=100).records)


def without_saved_datasets(directory: str, names: list[str]) -> list[str]:
    return [name for name in names if saved_copy(Path(directory) / name)]


@contextmanager
def make_lab(tmp_path: Path, instance_settings: dict[str, Any] | None = None) -> Iterator[Lab]:
    data_dir = tmp_path / "data"
    # Not the Hub datasets a developer may have saved in a benchmark task's directory: tests write their own.
    shutil.copytree(PROJECT / "data" / "tasks", data_dir / "tasks", ignore=without_saved_datasets)
    (data_dir / "experiments").mkdir()
    (tmp_path / "dagster_home").mkdir()
    with instance_for_test(temp_dir=str(tmp_path / "dagster_home"), overrides=instance_settings) as instance:
        yield Lab(data_dir, tmp_path / "runs", instance)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with make_lab(tmp_path) as lab:
        yield lab


def shipped_keys() -> list[AnswerKey]:
    """The sim's answer keys for the shipped tasks (the labs copy them): what a sim server plays."""
    return data_dir_keys(PROJECT / "data")


@pytest.fixture
def sim_server() -> Iterator[SimServer]:
    with SimServer(answer_keys=shipped_keys()).start() as server:
        yield server


S3_BUCKET = "lsl-test"


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """An S3-compatible server on 127.0.0.1 (moto's server mode) with an empty bucket S3_BUCKET; the
    standard AWS variables point at it (commands run with lab.env() inherit them)."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    # moto keeps its buckets in the process, across servers: start from none, not an earlier test's.
    urllib.request.urlopen(urllib.request.Request(f"http://{host}:{port}/moto-api/reset", method="POST"))
    for key, value in {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    client = boto3.client("s3")
    client.create_bucket(Bucket=S3_BUCKET)
    try:
        yield client
    finally:
        server.stop()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh database on the machine's PostgreSQL server for one test, dropped after it. A server that
    cannot be reached fails the test that needs it: nothing is skipped."""
    try:
        with postgres_database() as url:
            yield url
    except ServiceMissing as exc:
        pytest.fail(str(exc))
