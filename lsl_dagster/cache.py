"""DSPy's response cache, kept on disk with each experiment and stage, counting replays as cache hits."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dspy
from dspy.clients.cache import Cache

from lsl_dagster.ledger import Meter


class StageCache(Cache):
    """One stage's cache. A replay is free: it is counted as a cache hit, never as a call.

    Per stage (not per experiment) on purpose: the budget-matched arm re-runs Stage 1's optimizer with
    the same seed and would otherwise replay Stage 1's requests for free, getting more than its budget.
    """

    def __init__(self, directory: Path, meter: Meter):
        super().__init__(
            enable_disk_cache=True,
            enable_memory_cache=True,
            disk_cache_dir=str(directory),
            disk_size_limit_bytes=2**40,  # never evict: an evicted entry would be paid for again
            memory_max_entries=4096,  # bounded, so memory does not grow with the test set
            restrict_pickle=True,
        )
        self.meter = meter

    def get(self, request: dict[str, Any], ignored_args_for_cache_key: list[str] | None = None) -> Any:
        value = super().get(request, ignored_args_for_cache_key)
        if value is not None:
            self.meter.cache_hit(str(request.get("model", "unknown")))
        return value


@contextmanager
def stage_cache(directory: Path, meter: Meter) -> Iterator[StageCache]:
    """Point DSPy's global cache at this stage's directory for the duration of the stage."""
    directory.mkdir(parents=True, exist_ok=True)
    previous = dspy.cache
    cache = StageCache(directory, meter)
    dspy.cache = cache
    try:
        yield cache
    finally:
        dspy.cache = previous
        cache.disk_cache.close()
