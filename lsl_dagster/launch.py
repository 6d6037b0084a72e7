"""`lsl campaign run`: what a campaign still needs, as one Dagster asset backfill, executed by Dagster's
daemon and run queue (max_concurrent_runs, concurrency pools): the same thing the UI launches."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
from dagster._core.definitions.selector import (
    PartitionRangeSelector,
    PartitionsByAssetSelector,
    PartitionsSelector,
)
from dagster._core.execution.backfill import (
    BULK_ACTION_TERMINAL_STATUSES,
    BulkActionStatus,
    PartitionBackfill,
)
from dagster._core.storage.runs.sqlite import SqliteRunStorage
from dagster._core.utils import make_new_backfill_id


def daemon_alive(instance: dg.DagsterInstance) -> bool:
    """Whether a Dagster daemon serves this instance. A daemon heartbeats every 30 s, and one killed a
    moment ago looks alive until its last heartbeat is stale: so wait (< 35 s) for the next one."""

    def newest() -> float:
        return max((beat.timestamp for beat in instance.get_daemon_heartbeats().values()), default=0.0)

    seen = newest()
    while time.time() - seen < 35:
        time.sleep(1)
        if newest() > seen:
            return True
    return False


def _pid_alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def unfinished_backfills(instance: dg.DagsterInstance, title: str) -> list[PartitionBackfill]:
    return [b for b in instance.get_backfills(status=BulkActionStatus.REQUESTED) if b.title == title]


def cancel_orphaned_backfills(instance: dg.DagsterInstance, title: str) -> list[str]:
    """Backfills a killed launch left requested, to call when no daemon is alive to carry them on: so
    the relaunch's backfill is the only one launching runs."""
    orphans = unfinished_backfills(instance, title)
    for orphan in orphans:
        instance.update_backfill(
            orphan.with_status(BulkActionStatus.CANCELED).with_end_timestamp(time.time())
        )
    return [orphan.backfill_id for orphan in orphans]


def reap_dead_runs(instance: dg.DagsterInstance, daemon_is_alive: bool) -> list[str]:
    """Runs left started by a process that is gone (kill -9) are marked failed and their concurrency
    slots freed: otherwise they show as running forever and hold their pool slots, and later runs wait.
    Also runs left starting (no process yet) when no daemon is alive to start them. Only on an instance
    kept in local SQLite: a run's recorded pid means something only on the machine it ran on."""
    if not isinstance(instance.run_storage, SqliteRunStorage):
        return []
    reaped = []
    running = dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED])
    for run in instance.get_runs(running):
        starts = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_START)
        pid = starts[0].dagster_event.pid if starts else None
        if _pid_alive(pid) or (pid is None and daemon_is_alive):
            continue
        instance.report_run_failed(run, "its process is gone (killed?); marked failed by lsl")
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        reaped.append(run.run_id)
    return reaped


@contextmanager
def daemon(alive: bool) -> Iterator[None]:
    """Dagster's daemon (run queue, backfills): the one `dagster dev` runs if `alive`, else our own for
    the duration."""
    if alive:
        yield
        return
    binary = Path(sys.executable).with_name("dagster-daemon")
    command = [str(binary), "run", "-m", "lsl_dagster.definitions"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        process.terminate()
        process.wait(60)


def backfill(instance: dg.DagsterInstance, graph, todo: Mapping[str, Sequence[str]], title: str) -> str:
    """Submit one asset backfill of `todo` (asset -> partitions); Dagster orders it by the asset graph."""
    selectors = [
        PartitionsByAssetSelector(
            asset_key=dg.AssetKey(asset),
            partitions=PartitionsSelector(
                ranges=[PartitionRangeSelector(start=p, end=p) for p in partitions]
            ),
        )
        for asset, partitions in todo.items()
        if partitions
    ]
    request = PartitionBackfill.from_partitions_by_assets(
        backfill_id=make_new_backfill_id(),
        asset_graph=graph,
        backfill_timestamp=time.time(),
        tags={},
        dynamic_partitions_store=instance,
        partitions_by_assets=selectors,
        title=title,
        description=None,
        run_config=None,
    )
    instance.add_backfill(request)
    return request.backfill_id


def wait(instance: dg.DagsterInstance, backfill_id: str, say: Callable[[str], None]) -> BulkActionStatus:
    """Until the backfill is done, saying how its runs stand whenever that changes."""
    last = None
    while True:
        status = instance.get_backfill(backfill_id).status
        runs = instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
        counts = {s.value.lower(): sum(r.status == s for r in runs) for s in {r.status for r in runs}}
        line = f"backfill {backfill_id}: {status.value.lower()}; runs " + (
            ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none yet"
        )
        if line != last:
            say(line)
            last = line
        if status in BULK_ACTION_TERMINAL_STATUSES:
            return status
        time.sleep(2)
