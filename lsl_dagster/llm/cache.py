"""DSPy's response cache, one per experiment, shared by all its stages and arms: one SQLite file by
default, or a PostgreSQL table every worker host reaches (lsl_dagster.llm.pg_state).

A request already answered anywhere in the experiment (another stage, another arm, an earlier attempt
killed half-way, a run before an edit) is never paid again, and one still in flight is not sent twice
(`ExperimentCache.single_flight`). The key is DSPy's: the full request (model, messages, sampling settings,
DSPy's rollout id, so a resample stays a request of its own) plus the model's endpoint (see
`endpoint_scope`), never the key.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Protocol

import dspy
from dspy.clients.cache import Cache
from dspy.clients.execution import IGNORED_CACHE_KEYS

from lsl_dagster.llm.ledger import Meter

log = logging.getLogger(__name__)

# DSPy keys a request on the dict it builds from the LM's kwargs, and a custom engine (ours) may not carry
# api_base there. The LM making the call sets its endpoint here for the duration of the call; the cache
# adds it to the key, so the same model name on two servers never shares answers.
_ENDPOINT: ContextVar[str | None] = ContextVar("lsl_endpoint", default=None)


@contextmanager
def endpoint_scope(endpoint: str) -> Iterator[None]:
    token = _ENDPOINT.set(endpoint)
    try:
        yield
    finally:
        _ENDPOINT.reset(token)


# The output schema of the call in flight (llm.structured), when its model has structured_outputs: the
# adapter sets it, the engine sends it, and the cache keys on it.
_SCHEMA: ContextVar[dict[str, Any] | None] = ContextVar("lsl_output_schema", default=None)


def current_schema() -> dict[str, Any] | None:
    return _SCHEMA.get()


@contextmanager
def schema_scope(schema: dict[str, Any] | None) -> Iterator[None]:
    token = _SCHEMA.set(schema)
    try:
        yield
    finally:
        _SCHEMA.reset(token)


class Responses(Protocol):
    """Where an experiment's responses are kept, as JSON by request key: a SQLite file (ResponseStore) or a
    PostgreSQL table (lsl_dagster.llm.pg_state). An answer is durable once `set` returns."""

    def get(self, key: str) -> Any | None: ...

    def __contains__(self, key: str) -> bool: ...

    def set(self, key: str, value: Any) -> None: ...


class ResponseStore:
    """Responses as JSON in one SQLite file, through ONE connection behind a lock.

    diskcache (DSPy's default) opens a connection per thread and per shard: 16 shards x 8-64 threads held
    hundreds of file descriptors during an evaluation. One connection holds three (db, WAL, shm) whatever
    the concurrency; a lookup is tens of microseconds, far below any provider's latency. WAL mode with
    autocommit: each answer is durable once `set` returns, across processes and a kill -9.
    """

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._con = sqlite3.connect(path, timeout=60, check_same_thread=False, isolation_level=None)
        self._con.execute("PRAGMA journal_mode=WAL")
        self._con.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives a process crash
        self._con.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, value TEXT NOT NULL)")

    def get(self, key: str) -> Any | None:
        with self._lock:
            row = self._con.execute("SELECT value FROM responses WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return self._con.execute("SELECT 1 FROM responses WHERE key = ?", (key,)).fetchone() is not None

    def set(self, key: str, value: Any) -> None:
        text = json.dumps(value)
        with self._lock:
            self._con.execute("INSERT OR REPLACE INTO responses (key, value) VALUES (?, ?)", (key, text))

    def __len__(self) -> int:
        with self._lock:
            return self._con.execute("SELECT count(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._con.close()

    def __enter__(self) -> ResponseStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ExperimentCache(Cache):
    """The experiment's cache as one stage sees it. A hit is never paid.

    A hit on an entry this attempt of the stage wrote is an ordinary repeat: free and not counted. Any other
    hit (written by another stage or arm, or by an earlier attempt of this one) is a replay: free, but the
    same work the optimizer would otherwise have paid for, so it counts against the stage's max_calls. So
    the budget-matched arm retraces Stage 1 for nothing but within the same budget, and a resumed stage
    makes the same decisions as an uninterrupted one.
    """

    def __init__(self, store: Responses, meter: Meter):
        super().__init__(
            enable_disk_cache=False,  # the store below replaces DSPy's diskcache
            enable_memory_cache=True,
            disk_cache_dir=None,
            memory_max_entries=1024,  # bounded, so memory does not grow with the test set
        )
        self.store = store
        self.meter = meter
        self._written: set[str] = set()
        self._written_lock = threading.Lock()
        # Requests in flight: key -> (the lock its sender holds, how many threads hold or wait for it).
        self._flights: dict[str, tuple[threading.Lock, int]] = {}
        self._flights_lock = threading.Lock()

    def cache_key(self, request: dict[str, Any], ignored_args_for_cache_key: list[str] | None = None) -> str:
        endpoint, schema = _ENDPOINT.get(), current_schema()
        keyed = request if endpoint is None else {**request, "_lsl_endpoint": endpoint}
        # A constrained reply is another answer than a free one (keys without it are as they were).
        keyed = keyed if schema is None else {**keyed, "_lsl_output_schema": schema}
        return super().cache_key(keyed, ignored_args_for_cache_key)

    def __contains__(self, key: str) -> bool:
        return key in self.memory_cache or key in self.store

    @contextmanager
    def single_flight(self, request: dict[str, Any]) -> Iterator[None]:
        """Around a lookup and the call it may lead to: a thread asking what another thread is already
        asking waits for that answer, which it then finds here (free), instead of sending it again. Other
        processes cannot be asking it meanwhile: one stage of an experiment runs at a time, across
        processes and hosts (the stage lock, lsl_dagster.llm.state)."""
        key = self.cache_key(request, IGNORED_CACHE_KEYS)
        with self._flights_lock:
            lock, holders = self._flights.get(key, (threading.Lock(), 0))
            self._flights[key] = (lock, holders + 1)
        try:
            with lock:
                yield
        finally:
            with self._flights_lock:
                lock, holders = self._flights[key]
                if holders == 1:
                    del self._flights[key]
                else:
                    self._flights[key] = (lock, holders - 1)

    def get(self, request: dict[str, Any], ignored_args_for_cache_key: list[str] | None = None) -> Any:
        key = self.cache_key(request, ignored_args_for_cache_key)
        with self._lock:
            value = self.memory_cache.get(key)
        if value is None:
            value = self.store.get(key)
            if value is None:
                return None
            with self._lock:
                self.memory_cache[key] = value
        model = str(request.get("model", "unknown"))
        with self._written_lock:
            repeat = key in self._written
            self._written.add(key)  # from now on a repeat in this attempt
        if repeat:
            self.meter.cache_hit(model)
        else:
            self.meter.replay(model)
        return self._prepare_cached_response(value)

    def put(
        self,
        request: dict[str, Any],
        value: Any,
        ignored_args_for_cache_key: list[str] | None = None,
        enable_memory_cache: bool = True,
    ) -> None:
        key = self.cache_key(request, ignored_args_for_cache_key)
        with self._written_lock:
            self._written.add(key)
        with self._lock:
            self.memory_cache[key] = value
        try:
            self.store.set(key, value)
        except (TypeError, ValueError) as exc:
            # Only DSPy's plain-data records are kept (never pickle); anything else stays in memory.
            log.debug("response not stored on disk: %s", exc)


def cache_path(run_dir: Path) -> Path:
    return run_dir / "cache" / "responses.sqlite"


@contextmanager
def experiment_cache(store: Responses, meter: Meter) -> Iterator[ExperimentCache]:
    """Point DSPy's global cache at the experiment's store for the duration of one stage."""
    previous = dspy.cache
    cache = ExperimentCache(store, meter)
    dspy.cache = cache
    try:
        yield cache
    finally:
        dspy.cache = previous
