"""Where an experiment's call log, response cache and stage lock live, and the slots that bound how many
steps call LLMs at once: files in its run directory (the default, for one machine or a shared disk), or
tables and advisory locks in PostgreSQL when LSL_CACHE_URL names a database (lsl_dagster.llm.pg_state:
workers on several hosts, sharing no disk)."""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from lsl_dagster.llm.cache import ResponseStore, cache_path
from lsl_dagster.llm.campaign_budget import campaign_allowance
from lsl_dagster.llm.ledger import CallLog
from lsl_dagster.llm.pg_state import PostgresState
from lsl_dagster.llm.slots import first_free

log = logging.getLogger(__name__)


class LocalState:
    """Files under <runs_dir>/<experiment_id>/: calls.jsonl, cache/responses.sqlite, .lock."""

    def __init__(self, runs_dir: Path):
        self.runs_dir = runs_dir

    @property
    def where(self) -> str:
        return f"local:{self.runs_dir.resolve()}"

    @contextmanager
    def exclusive(self, experiment_id: str) -> Iterator[None]:
        """One stage of an experiment at a time, across processes: a file lock, released by the kernel
        when its holder dies."""
        run_dir = self.runs_dir / experiment_id
        run_dir.mkdir(parents=True, exist_ok=True)
        with (run_dir / ".lock").open("w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("waiting for another stage of %s to finish", experiment_id)
                fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    @contextmanager
    def slot(self, pool: str, limit: int) -> Iterator[int]:
        """One of `limit` slots of `pool` (which one is yielded, from 0) for as long as the step calls
        LLMs, across processes: file locks under <runs_dir>/.slots, released by the kernel when their
        holder dies. With none free (Dagster let one step too many through), it waits for any of them."""
        slots = self.runs_dir / ".slots"
        slots.mkdir(parents=True, exist_ok=True)
        files = [(slots / f"{pool}-{i}.lock").open("w") for i in range(limit)]
        try:
            taken = first_free(lambda i: _try_lock(files[i].fileno()), pool, limit)
            for i, file in enumerate(files):
                if i != taken:
                    file.close()
            yield taken
        finally:
            for file in files:
                file.close()  # closing releases the lock

    def calls(self, experiment_id: str) -> Iterator[dict[str, Any]]:
        return CallLog.read(self.runs_dir / experiment_id / "calls.jsonl")

    def call_log(self, experiment_id: str) -> CallLog:
        return CallLog(self.runs_dir / experiment_id / "calls.jsonl")

    def responses(self, experiment_id: str) -> ResponseStore:
        return ResponseStore(cache_path(self.runs_dir / experiment_id))

    def campaign_allowance(
        self, campaign: str, cap: float, experiments: list[str], holder: str, wanted: float | None
    ) -> AbstractContextManager[float]:
        return campaign_allowance(self.runs_dir, campaign, cap, experiments, holder, wanted)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def experiment_state(runs_dir: Path, cache_url: str | None) -> LocalState | PostgresState:
    if cache_url is None:
        return LocalState(runs_dir)
    if not cache_url.startswith(("postgresql://", "postgres://")):
        raise ValueError("LSL_CACHE_URL must be a postgresql:// URL (the instance's database will do)")
    return PostgresState(cache_url)
