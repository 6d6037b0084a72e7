"""DSPy's response cache, kept on disk with each experiment and stage, counting replays as cache hits."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dspy
from dspy.clients.cache import Cache

from lsl_dagster.ledger import Meter


class StageCache(Cache):
    """One stage's cache. A hit is free: counted as a cache hit, never as a paid call.

    A hit on an entry an earlier attempt of the stage wrote (a resumed crash) replays that attempt's
    work and counts against the stage's max_calls as it did then; a hit on an entry written in this
    attempt is an ordinary repeat. Per stage (not per experiment) on purpose: the budget-matched arm
    re-runs Stage 1's optimizer with the same seed and would otherwise get Stage 1's calls for free.
    """

    def __init__(self, directory: Path, meter: Meter):
        super().__init__(
            enable_disk_cache=True,
            enable_memory_cache=True,
            disk_cache_dir=str(directory),
            disk_size_limit_bytes=2**40,  # never evict: an evicted entry would be paid for again
            memory_max_entries=1024,  # bounded, so memory does not grow with the test set
            restrict_pickle=True,
        )
        self.meter = meter
        self._written: set[str] = set()
        self._written_lock = threading.Lock()

    def put(
        self,
        request: dict[str, Any],
        value: Any,
        ignored_args_for_cache_key: list[str] | None = None,
        enable_memory_cache: bool = True,
    ) -> None:
        with self._written_lock:
            self._written.add(self.cache_key(request, ignored_args_for_cache_key))
        super().put(request, value, ignored_args_for_cache_key, enable_memory_cache)

    def get(self, request: dict[str, Any], ignored_args_for_cache_key: list[str] | None = None) -> Any:
        value = super().get(request, ignored_args_for_cache_key)
        if value is not None:
            model = str(request.get("model", "unknown"))
            key = self.cache_key(request, ignored_args_for_cache_key)
            with self._written_lock:
                repeat = key in self._written
                self._written.add(key)  # from now on a repeat in this attempt, as it was in the first
            if repeat:
                self.meter.cache_hit(model)
            else:
                self.meter.replay(model)
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
