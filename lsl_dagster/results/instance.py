"""Reading the results registry (the Dagster instance) through Dagster's public API only; nothing here
writes to the instance.

Where each stage of an experiment stands is derived from what the materializations recorded: the spec
hash in their metadata, the code version in their tags, and when they happened. A stage is stale when
its experiment file or code changed since, or when an upstream stage was materialized after it or is
stale itself. (Not Dagster's recorded input versions: on SQLite, concurrent runs record event pointers
into their own run shards, which do not match the asset index.) This needs no observation of the
experiment files, so `lsl status` only reads.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import dagster as dg
from pydantic import BaseModel

from lsl_dagster import graph
from lsl_dagster.records import Comparison
from lsl_dagster.storage import outputs as storage

M = TypeVar("M", bound=BaseModel)

CODE_VERSION_TAG = "dagster/code_version"
FILE = dg.AssetKey(graph.FILE)
NEEDS_WORK = ("missing", "stale", "failed")


class ReportError(Exception):
    """What was asked for is not in the instance, or cannot be read; the message says what to do."""


@dataclass(frozen=True)
class Stage:
    """What the code location says about a stage: its code version and its upstream stages."""

    code_version: str | None
    upstream: tuple[str, ...]


def stages_of(specs: Iterable[dg.AssetSpec]) -> dict[str, Stage]:
    by_key = {spec.key: spec for spec in specs}
    return {
        name: Stage(
            code_version=by_key[dg.AssetKey(name)].code_version,
            upstream=tuple(
                d.asset_key.to_user_string() for d in by_key[dg.AssetKey(name)].deps if d.asset_key != FILE
            ),
        )
        for name in graph.ALL_STAGES
    }


def latest_materializations(
    instance: dg.DagsterInstance, asset: str, partitions: Sequence[str] | None = None
) -> dict[str, dg.EventLogRecord]:
    """partition -> its newest materialization of `asset`, for the partitions asked for (default: every
    partition it has); partitions never materialized are absent. Every reader of the instance uses this."""
    wanted = None if partitions is None else set(partitions)
    filter_ = dg.AssetRecordsFilter(
        dg.AssetKey(asset), asset_partitions=None if wanted is None else list(partitions)
    )
    found: dict[str, dg.EventLogRecord] = {}
    # One partition's newest record is the first; more take pages until each has been seen.
    limit = 1 if wanted is not None and len(wanted) == 1 else 1000
    cursor = None
    while True:  # newest first, a page at a time, until every partition asked for has its newest record
        result = instance.fetch_materializations(filter_, limit=limit, cursor=cursor)
        for record in result.records:
            found.setdefault(record.partition_key, record)
        if not result.has_more or (wanted is not None and wanted <= found.keys()):
            break
        cursor = result.cursor
    return found if partitions is None else {key: found[key] for key in partitions if key in found}


def stored_value(record: dg.EventLogRecord, model: type[M], what: str, runs_dir: Path) -> tuple[M, str]:
    """An asset value and where it is now, from where its materialization says it is (the IO manager's
    `path` metadata: an s3:// object, or a file relative to the runs directory `runs_dir`)."""
    location = storage.located(str(record.asset_materialization.metadata["path"].value), runs_dir)
    try:
        return model.model_validate_json(storage.read_text(location)), location
    except (OSError, ValueError) as exc:  # a missing, unreadable or invalid file
        raise ReportError(
            f"cannot read {what} of {record.partition_key} named in the instance: {exc}"
        ) from None


def latest_value(
    instance: dg.DagsterInstance, asset: str, partition: str, model: type[M], runs_dir: Path
) -> tuple[M, str]:
    """The latest materialized value of one asset partition and where it is."""
    record = latest_materializations(instance, asset, [partition]).get(partition)
    if record is None:
        raise ReportError(f"{asset} has not been materialized for {partition} yet")
    return stored_value(record, model, asset, runs_dir)


def latest_comparisons(
    instance: dg.DagsterInstance, experiments: Sequence[str] | None, runs_dir: Path
) -> dict[str, tuple[Comparison, str]]:
    """The latest comparison of each experiment asked for (None: every one) that has one, and where it is."""
    records = latest_materializations(instance, graph.COMPARISON, experiments)
    return {
        e: stored_value(record, Comparison, "the comparison", runs_dir)
        for e, record in sorted(records.items())
    }


def _metadata_text(record: dg.EventLogRecord, key: str) -> str | None:
    entry = record.asset_materialization.metadata.get(key)
    return None if entry is None else str(entry.value)


FAILED_RUN = (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED, dg.DagsterRunStatus.CANCELING)
FINISHED_RUN = (*FAILED_RUN, dg.DagsterRunStatus.SUCCESS)


def _last_runs(instance: dg.DagsterInstance, partition: str) -> list[dg.DagsterRun]:
    records = instance.get_run_records(dg.RunsFilter(tags={"dagster/partition": partition}), limit=50)
    return [r.dagster_run for r in records]  # newest first


def _last_run_of(runs: Sequence[dg.DagsterRun], asset: str) -> dg.DagsterRun | None:
    """The newest run that set out to materialize `asset` (a run with no selection runs its whole job)."""
    key = dg.AssetKey(asset)
    return next((r for r in runs if not r.asset_selection or key in r.asset_selection), None)


def stage_status(
    instance: dg.DagsterInstance,
    stages: Mapping[str, Stage],
    spec_hashes: Mapping[str, str | None],
    arms: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, dict[str, str]]:
    """experiment -> stage asset -> materialized | stale | failed | in progress | missing | invalid, for
    the stage assets of each experiment (graph.stages_of the optional arms `arms` says it lists).

    `spec_hashes` holds each experiment's current spec hash, None when its file is invalid. The newest run
    that set out to materialize a stage decides whether it is in progress or failed, unless that very run
    materialized it (a run killed after the stage finished). A stage whose upstream stages are not all
    materialized did not fail itself: it is missing."""
    ids = list(spec_hashes)
    runs = {e: _last_runs(instance, e) for e in ids}
    table: dict[str, dict[str, str]] = {e: {} for e in ids}
    own_stages = {e: set(graph.stages_of((arms or {}).get(e, ()))) for e in ids}
    for asset, stage in stages.items():
        records = latest_materializations(instance, asset, ids)
        upstream = {name: latest_materializations(instance, name, ids) for name in stage.upstream}
        for e in ids:
            if asset not in own_stages[e]:
                continue
            # An optional arm's evaluation is upstream of only the comparisons of the experiments listing it.
            before = [table[e][name] for name in stage.upstream if name in own_stages[e]]
            record = records.get(e)
            last = _last_run_of(runs[e], asset)
            own = last is not None and record is not None and record.run_id == last.run_id
            if spec_hashes[e] is None:
                status = "invalid"
            elif last is not None and not own and last.status not in FINISHED_RUN:
                status = "in progress"
            elif (
                last is not None
                and not own
                and last.status in FAILED_RUN
                and all(s == "materialized" for s in before)
            ):
                status = "failed"
            elif record is None:
                status = "missing"
            elif (
                _metadata_text(record, "spec_hash") != spec_hashes[e]
                or record.asset_materialization.tags.get(CODE_VERSION_TAG) != stage.code_version
                or any(s != "materialized" for s in before)
                or any(
                    e not in upstream[name] or upstream[name][e].timestamp > record.timestamp
                    for name in stage.upstream
                    if name in own_stages[e]
                )
            ):
                status = "stale"
            else:
                status = "materialized"
            table[e][asset] = status
    return table


def campaign_needs(
    instance: dg.DagsterInstance, table: Mapping[str, Mapping[str, str]], campaign: str
) -> tuple[dict[str, list[str]], bool]:
    """What a campaign still needs, from the status `table` of its experiments: the stage assets of each
    experiment that are missing, stale or failed, and whether its summary and matrix are to be redone
    (either is missing or older than a comparison of its experiments)."""
    todo = {e: [a for a, status in row.items() if status in NEEDS_WORK] for e, row in table.items()}
    comparisons = latest_materializations(instance, graph.COMPARISON, list(table))
    stale = False
    for asset in graph.CAMPAIGN_ASSETS:
        record = latest_materializations(instance, asset, [campaign]).get(campaign)
        stale |= record is None or any(r.storage_id > record.storage_id for r in comparisons.values())
    return {e: assets for e, assets in todo.items() if assets}, stale
