"""An experiment's call log, response cache and stage lock in PostgreSQL (LSL_CACHE_URL): workers on any
host reach them, so a step retried on another worker replays what the first one paid for, and budgets
hold across hosts. Usually the instance's own database; the tables are ours (prefix lsl_), beside Dagster's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg2
import psycopg2.extensions

from lsl_dagster.llm.campaign_budget import allowance
from lsl_dagster.llm.ledger import CallLog, spent_usd
from lsl_dagster.llm.slots import first_free

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS lsl_responses (
    experiment TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (experiment, key));
CREATE TABLE IF NOT EXISTS lsl_calls (
    id BIGSERIAL PRIMARY KEY, experiment TEXT NOT NULL, record TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS lsl_calls_experiment ON lsl_calls (experiment, id);
CREATE TABLE IF NOT EXISTS lsl_campaign_holds (
    campaign TEXT NOT NULL, holder TEXT NOT NULL, usd DOUBLE PRECISION NOT NULL, backend INTEGER NOT NULL,
    PRIMARY KEY (campaign, holder));
"""


def described(url: str) -> str:
    """The database a URL names, as it may be shown (metadata, errors): no password, no other parameters."""
    dsn = psycopg2.extensions.parse_dsn(url)
    user = f"{dsn['user']}@" if "user" in dsn else ""
    port = f":{dsn['port']}" if "port" in dsn else ""
    return f"postgresql://{user}{dsn.get('host', '')}{port}/{dsn.get('dbname', '')}"


def _lock_key(name: str) -> int:
    """A stable 64-bit advisory-lock key for a name (Python's hash() differs between processes)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


_READY: set[str] = set()  # databases this process has created the tables in


def connect(url: str) -> Any:
    """An autocommit connection with our tables in place (created once per process and database, under a
    lock: processes starting together on a fresh database would otherwise race on CREATE TABLE)."""
    con = psycopg2.connect(url, connect_timeout=30)
    if url not in _READY:
        with con, con.cursor() as cursor:  # one transaction
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key("lsl_schema"),))
            cursor.execute(SCHEMA)
        _READY.add(url)
    con.autocommit = True
    return con


class ThreadConnections:
    """One autocommit connection per thread, opened by its first statement, so that a stage's threads (up
    to max_concurrency per model) look answers up, log and store them side by side rather than queuing
    behind one connection: each statement is a round trip to the server. A thread's connection closes
    when the thread ends (its thread-local value goes) or at `close`."""

    def __init__(self, url: str):
        self._url = url
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: weakref.WeakSet[Any] = weakref.WeakSet()

    def cursor(self) -> Any:
        con = getattr(self._local, "con", None)
        if con is None or con.closed:  # closed: by `close`, or broken (the server restarted)
            con = self._local.con = connect(self._url)
            with self._lock:
                self._open.add(con)
        return con.cursor()

    def close(self) -> None:
        with self._lock:
            for con in list(self._open):
                con.close()


class PgResponseStore:
    """One experiment's responses, as JSON text by request key. Each answer is committed before `set`
    returns (a round trip, far below a provider's latency), so a worker killed right after cannot lose
    it."""

    def __init__(self, connections: ThreadConnections, experiment_id: str):
        self._experiment = experiment_id
        self._connections = connections

    def get(self, key: str) -> Any | None:
        with self._connections.cursor() as cursor:
            cursor.execute(
                "SELECT value FROM lsl_responses WHERE experiment = %s AND key = %s", (self._experiment, key)
            )
            row = cursor.fetchone()
        return None if row is None else json.loads(row[0])

    def __contains__(self, key: str) -> bool:
        with self._connections.cursor() as cursor:
            cursor.execute(
                "SELECT 1 FROM lsl_responses WHERE experiment = %s AND key = %s", (self._experiment, key)
            )
            return cursor.fetchone() is not None

    def set(self, key: str, value: Any) -> None:
        text = json.dumps(value)
        with self._connections.cursor() as cursor:
            cursor.execute(
                "INSERT INTO lsl_responses (experiment, key, value) VALUES (%s, %s, %s) "
                "ON CONFLICT (experiment, key) DO UPDATE SET value = EXCLUDED.value",
                (self._experiment, key, text),
            )

    def __len__(self) -> int:
        with self._connections.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM lsl_responses WHERE experiment = %s", (self._experiment,))
            return cursor.fetchone()[0]

    def close(self) -> None:
        self._connections.close()

    def __enter__(self) -> PgResponseStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PgCallLog(CallLog):
    """The experiment's call log as rows of a table. Like the file, each record is committed before the
    response it records can reach the response cache (a round trip per request)."""

    def __init__(self, connections: ThreadConnections, experiment_id: str):
        self._experiment = experiment_id
        self._connections = connections

    def append(self, record: dict[str, Any]) -> None:
        with self._connections.cursor() as cursor:
            cursor.execute(
                "INSERT INTO lsl_calls (experiment, record) VALUES (%s, %s)",
                (self._experiment, json.dumps(record)),
            )

    def close(self) -> None:
        self._connections.close()


def _records(con: Any, experiments: list[str]) -> list[dict[str, Any]]:
    """The call-log records of these experiments, each experiment's in the order they were written."""
    with con.cursor() as cursor:
        cursor.execute(
            "SELECT record FROM lsl_calls WHERE experiment = ANY(%s) ORDER BY experiment, id", (experiments,)
        )
        return [json.loads(record) for (record,) in cursor.fetchall()]


class PostgresState:
    """Experiments' shared state in one PostgreSQL database."""

    def __init__(self, url: str):
        self.url = url
        # Shared by this state's call log and response store: a request is logged and its answer stored
        # by the same thread, on its one connection.
        self._connections = ThreadConnections(url)

    @property
    def where(self) -> str:
        return described(self.url)

    @contextmanager
    def exclusive(self, experiment_id: str) -> Iterator[None]:
        """One stage of an experiment at a time, across hosts: a session advisory lock, which PostgreSQL
        releases by itself when the holder's connection goes (a worker killed -9, a host lost)."""
        con = connect(self.url)
        try:
            with con.cursor() as cursor:
                key = _lock_key(f"experiment:{experiment_id}")
                cursor.execute("SELECT pg_try_advisory_lock(%s)", (key,))
                if not cursor.fetchone()[0]:
                    log.info("waiting for another stage of %s to finish", experiment_id)
                    cursor.execute("SELECT pg_advisory_lock(%s)", (key,))
            yield
        finally:
            con.close()  # releases the lock

    @contextmanager
    def slot(self, pool: str, limit: int) -> Iterator[int]:
        """As LocalState.slot, across hosts: session advisory locks, released by PostgreSQL when the
        holder's connection goes."""
        con = connect(self.url)
        try:
            with con.cursor() as cursor:

                def take(i: int) -> bool:
                    cursor.execute("SELECT pg_try_advisory_lock(%s)", (_lock_key(f"slot:{pool}:{i}"),))
                    return cursor.fetchone()[0]

                taken = first_free(take, pool, limit)
            yield taken
        finally:
            con.close()  # releases the lock

    def calls(self, experiment_id: str) -> Iterator[dict[str, Any]]:
        con = connect(self.url)
        try:
            rows = _records(con, [experiment_id])
        finally:
            con.close()
        return iter(rows)

    def call_log(self, experiment_id: str) -> PgCallLog:
        return PgCallLog(self._connections, experiment_id)

    def responses(self, experiment_id: str) -> PgResponseStore:
        return PgResponseStore(self._connections, experiment_id)

    @contextmanager
    def campaign_allowance(
        self, campaign: str, cap: float, experiments: list[str], holder: str, wanted: float | None
    ) -> Iterator[float]:
        """As lsl_dagster.llm.campaign_budget, across hosts: what the experiments' calls spent and what stages
        still running hold, taken under the campaign's lock. A hold lives as long as the connection that
        made it; one whose connection is gone (its worker died) no longer counts."""
        con = connect(self.url)
        try:
            con.autocommit = False
            with con, con.cursor() as cursor:  # one transaction, under the campaign's lock
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key(f"campaign:{campaign}"),))
                spent = spent_usd(_records(con, experiments))
                cursor.execute(
                    "SELECT coalesce(sum(usd), 0) FROM lsl_campaign_holds WHERE campaign = %s"
                    " AND holder <> %s AND backend IN (SELECT pid FROM pg_stat_activity)",
                    (campaign, holder),
                )
                granted = allowance(cap, spent, cursor.fetchone()[0], wanted)
                cursor.execute(
                    "INSERT INTO lsl_campaign_holds VALUES (%s, %s, %s, pg_backend_pid()) "
                    "ON CONFLICT (campaign, holder) DO UPDATE"
                    " SET usd = EXCLUDED.usd, backend = EXCLUDED.backend",
                    (campaign, holder, granted),
                )
            con.autocommit = True
            yield granted
        finally:
            if not con.closed:
                with con.cursor() as cursor:
                    forget = "DELETE FROM lsl_campaign_holds WHERE campaign = %s AND holder = %s"
                    cursor.execute(forget, (campaign, holder))
                con.close()
